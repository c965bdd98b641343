"""A client that hangs up mid-stream: the gateway cancels the upstream request, frees the
worker's slot, counts it as cancelled, and keeps serving."""

from __future__ import annotations

import json

import httpx

from e2e_util import make_client, poll


def test_client_disconnect_mid_stream_cancels_upstream(cluster):
    w = cluster.worker(tokens_per_sec=20)
    g = cluster.gateway([w])
    body = {
        "model": "caprl",
        "stream": True,
        "max_tokens": 200,  # 10 s at 20 tokens/s: far longer than this test waits
        "messages": [{"role": "user", "content": "Describe a kite."}],
    }
    data_chunks = []
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(10.0, connect=2.0)) as c:
        with c.stream("POST", f"{g.base_url}/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    data_chunks.append(json.loads(line[len("data: "):]))
                if len(data_chunks) >= 2:
                    break
            # Leaving the block closes the response: the client hangs up.
    assert len(data_chunks) == 2
    assert data_chunks[1]["choices"][0]["delta"]["content"] == " The"

    stats = poll(lambda: (s := w.stats())["cancelled"] == 1 and s, 5.0, what="worker cancelled == 1")
    assert stats["completed"] == 0
    assert stats["in_flight"] == 0
    assert stats["requests"] == 1

    # The gateway counted it as cancelled and gave the slot back.
    def gateway_settled():
        m = g.metrics()
        return (
            m.value("caprl_gateway_requests_total", model_name="caprl", outcome="cancelled", streaming="true") == 1
            and m.sum("caprl_gateway_worker_in_flight") == 0
            and m
        )

    m = poll(gateway_settled, 5.0, what="requests_total{outcome=cancelled} == 1 and in-flight 0")
    assert m.value("caprl_gateway_requests_total", model_name="caprl", outcome="success", streaming="true") == 0

    # Both still serve.
    assert g.get("/health").status_code == 200
    assert g.get("/ready").status_code == 200
    assert httpx.get(f"{w.url}/health", trust_env=False).status_code == 200
    w.control(tokens_per_sec=0)
    client = make_client(g)
    try:
        r = client.chat.completions.create(model="caprl", messages=body["messages"], max_tokens=5)
        chunks = list(client.chat.completions.create(model="caprl", messages=body["messages"],
                                                     max_tokens=5, stream=True))
    finally:
        client.close()
    assert r.choices[0].message.content == " The image shows a red"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " The image shows a red"
    s = w.stats()
    assert (s["completed"], s["cancelled"], s["in_flight"]) == (2, 1, 0)
