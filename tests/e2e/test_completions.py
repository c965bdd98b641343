"""`/v1/completions` through the gateway with the real openai client: text prompts get the same
validation, queue, workers and error envelopes as chat, whole and streamed, and a batch may
target the endpoint."""

from __future__ import annotations

import json

import openai
import pytest

from e2e_util import poll

PROMPT = "<|im_start|>user\nHere is a detailed caption of an image: a red kite. Please answer.<|im_end|>\n<|im_start|>assistant\n"


def test_completions_whole_and_streamed(client, worker):
    r = client.completions.create(model="caprl", prompt=PROMPT, max_tokens=6)
    assert r.object == "text_completion" and r.model == "caprl"
    assert r.choices[0].text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert worker.last_request()["body"]["prompt"] == PROMPT

    chunks = list(client.completions.create(model="caprl", prompt=[PROMPT, "b"], max_tokens=3, stream=True))
    assert chunks and all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == 0)
    assert all(c.usage is None for c in chunks), "the usage chunk the client did not ask for is hidden"

    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="caprl", prompt="", max_tokens=3)
    assert info.value.body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")


def test_a_batch_of_text_completions(cluster, tmp_path):
    w = cluster.worker()
    data = tmp_path / "data"
    data.mkdir()
    g = cluster.gateway([w], "--data-dir", str(data))
    client = g.openai()
    lines = [{"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "caprl", "prompt": f"{PROMPT} {i}", "max_tokens": 2}} for i in range(5)]
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/completions",
                  "body": {"model": "caprl", "prompt": ""}})
    f = client.files.create(file=("p.jsonl", "".join(json.dumps(l) + "\n" for l in lines).encode()),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    b = poll(lambda: (x := client.batches.retrieve(b.id)).status in ("completed", "failed") and x, 20,
             what="the batch to end")
    assert b.status == "completed", b
    assert (b.request_counts.completed, b.request_counts.failed) == (5, 1)
    out = [json.loads(l) for l in client.files.content(b.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == [f"p{i}" for i in range(5)]
    assert all(o["response"]["body"]["object"] == "text_completion" for o in out)
    err = [json.loads(l) for l in client.files.content(b.error_file_id).text.splitlines()]
    assert err[0]["custom_id"] == "bad" and err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["param"] == "prompt"

    # A completions batch wants `prompt`, not `messages`, in every line.
    chat_line = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
                 "body": {"model": "caprl", "messages": [{"role": "user", "content": "hi"}]}}
    f2 = client.files.create(file=("c.jsonl", (json.dumps(chat_line) + "\n").encode()), purpose="batch")
    b2 = client.batches.create(input_file_id=f2.id, endpoint="/v1/completions", completion_window="24h")
    b2 = poll(lambda: (x := client.batches.retrieve(b2.id)).status == "failed" and x, 20, what="failed")
    assert [(e.line, e.code, e.param) for e in b2.errors.data] == [(1, "invalid_request", "body.prompt")]
