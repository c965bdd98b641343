"""/v1/models with two served models routed to their own workers; /health and /ready."""

from __future__ import annotations

import openai
import pytest

from e2e_util import make_client, poll


def test_models_and_routing_by_model(cluster):
    a = cluster.worker(models=["caprl"])
    b = cluster.worker(models=["caprl-eval"])
    g = cluster.gateway([("caprl", a), ("caprl-eval", b)])
    client = make_client(g)
    try:
        models = client.models.list()
        ids = sorted(m.id for m in models)
        assert ids == ["caprl", "caprl-eval"]
        for m in models:
            assert m.object == "model"
        msgs = [{"role": "user", "content": "hi"}]
        for _ in range(3):
            r = client.chat.completions.create(model="caprl", messages=msgs, max_tokens=2)
            assert r.model == "caprl"
        for _ in range(2):
            r = client.chat.completions.create(model="caprl-eval", messages=msgs, max_tokens=2)
            assert r.model == "caprl-eval"
        stream = list(client.chat.completions.create(model="caprl-eval", messages=msgs, max_tokens=2, stream=True))
        assert {c.model for c in stream} == {"caprl-eval"}
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="caprl-other", messages=msgs, max_tokens=2)
    finally:
        client.close()
    assert a.requests() == 3, "caprl requests go to caprl's worker only"
    assert b.requests() == 3, "caprl-eval requests go to caprl-eval's worker only"
    assert a.last_request()["body"]["model"] == "caprl"
    assert b.last_request()["body"]["model"] == "caprl-eval"
    ready = g.get("/ready").json()
    assert ready["ready"] is True
    assert set(ready["pools"]) == {"caprl", "caprl-eval"}


def test_health_and_ready_follow_the_worker(cluster):
    w = cluster.worker()
    # Probe every 0.5 s (2 failures mark a worker down) so the test stays short.
    g = cluster.gateway([w], "--health-interval-secs", "0.5", "--health-timeout-secs", "0.5")
    assert g.get("/health").status_code == 200
    r = g.get("/ready")
    assert r.status_code == 200
    assert r.json()["ready"] is True

    assert w.control(healthy=False)["healthy"] is False
    r = poll(lambda: (x := g.get("/ready")).status_code == 503 and x, 10.0, what="/ready == 503")
    body = r.json()
    assert body["ready"] is False
    assert body["pools"]["caprl"]["reachable"] == 0
    assert g.get("/health").status_code == 200, "liveness does not depend on workers"
    m = g.metrics()
    assert m.value("caprl_gateway_worker_health", model_name="caprl", worker=w.url) == 0

    w.control(healthy=True)
    poll(lambda: g.get("/ready").status_code == 200, 10.0, what="/ready back to 200")
    client = make_client(g)
    try:
        r = client.chat.completions.create(model="caprl", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    finally:
        client.close()
    assert r.choices[0].message.content == " The image"
