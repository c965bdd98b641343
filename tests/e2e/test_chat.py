"""Chat completions through the gateway with the real openai client and curl: CapRL's README
snippet, streaming, images of every format, sampling fields passed through. (`x-request-id` echo
and generation: tests/http.rs.)"""

from __future__ import annotations

import json

from e2e_util import (
    b64,
    caption_messages,
    curl,
    data_url,
    elide,
    image_bytes,
    make_client,
)


def test_readme_snippet(gateway, worker):
    """CapRL's README snippet, verbatim, against the gateway."""
    from openai import OpenAI

    port = gateway.port
    b64_image = b64(image_bytes("PNG", (96, 64)))
    client = OpenAI(api_key="EMPTY", base_url=f"http://127.0.0.1:{port}/v1")
    try:
        response = client.chat.completions.create(
            model="caprl",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image;base64,{b64_image}"}},
                        {"type": "text", "text": "Please describe the image in detail."},
                    ],
                },
            ],
            temperature=1.0,
            max_tokens=24,
            extra_body={"repetition_penalty": 1.0},
        )
    finally:
        client.close()

    assert response.model == "caprl"
    text = response.choices[0].message.content
    assert text and text.startswith(" The image shows"), text
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 24
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + 24

    seen = worker.last_request()["body"]
    assert seen["model"] == "caprl"
    rp = seen["repetition_penalty"]
    assert isinstance(rp, float) and not isinstance(rp, bool) and rp == 1.0, rp
    assert seen["temperature"] == 1.0 and isinstance(seen["temperature"], float)
    assert seen["max_tokens"] == 24
    assert "stream_options" not in seen, "a non-streamed body gained fields"
    url = seen["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image;base64,"), url
    expected_len = len(f"data:image;base64,{b64_image}")
    assert url.endswith(f"({expected_len} chars)"), (url, expected_len)
    assert seen["messages"][1]["content"][1] == {
        "type": "text",
        "text": "Please describe the image in detail.",
    }


def test_openai_body_reaches_worker_byte_for_byte(gateway, worker):
    """Nothing must change in a non-streamed request: the worker gets the client's bytes."""
    client = make_client(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="caprl",
        messages=caption_messages(data_url(image_bytes("JPEG", (80, 60)), "image/jpeg")),
        temperature=0.7,
        max_tokens=8,
        extra_body={"repetition_penalty": 1.05, "top_k": 20},
    )
    assert raw.http_response.status_code == 200
    sent = raw.http_request.content
    last = worker.last_request()
    assert last["body_bytes"] == len(sent), (last["body_bytes"], len(sent))
    assert last["body"] == elide(json.loads(sent))
    completion = raw.parse()
    assert completion.model == "caprl"
    assert completion.usage.completion_tokens == 8


def test_curl_body_reaches_worker_unchanged(gateway, worker, tmp_path):
    """A known body sent with curl (odd spacing, key order, unicode escapes): the worker sees
    exactly that many bytes and the same JSON."""
    url = data_url(image_bytes("PNG", (40, 30)), "image/png")
    body = (
        '{ "messages" : [ {"role":"user","content":[{"type":"text","text":"caf\\u00e9 \\"quoted\\""},'
        '{"type":"image_url","image_url":{"url":"' + url + '","detail":"high"}}]} ],'
        '  "max_tokens":5, "model":"caprl", "repetition_penalty": 1.0, "temperature": 1.0 }'
    )
    f = tmp_path / "body.json"
    f.write_bytes(body.encode())
    r = curl(f"{gateway.base_url}/chat/completions", data_file=f)
    assert r.status == 200, r.body
    assert r.json()["usage"]["completion_tokens"] == 5
    last = worker.last_request()
    assert last["body_bytes"] == len(body.encode())
    assert last["body"] == elide(json.loads(body))


def _stream_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_streaming_matches_non_streamed(client, worker):
    messages = caption_messages(data_url(image_bytes("PNG")))
    whole = client.chat.completions.create(model="caprl", messages=messages, max_tokens=12)

    chunks = list(
        client.chat.completions.create(
            model="caprl",
            messages=messages,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) >= 12, len(chunks)
    assert all(c.model == "caprl" for c in chunks)
    assert _stream_text(chunks) == whole.choices[0].message.content
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, "exactly one usage chunk"
    assert usage_chunks[0] is chunks[-1], "the usage chunk is the last one"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    seen = worker.last_request()["body"]
    assert seen["stream"] is True
    assert seen["stream_options"] == {"include_usage": True}

    plain = list(
        client.chat.completions.create(model="caprl", messages=messages, max_tokens=12, stream=True)
    )
    assert _stream_text(plain) == whole.choices[0].message.content
    assert [c for c in plain if c.usage is not None] == [], "usage chunk leaked to the client"
    assert all(c.choices for c in plain), "an empty-choices chunk reached the client"
    # The gateway asked the worker for usage on the client's behalf (to count tokens).
    seen = worker.last_request()["body"]
    assert seen["stream_options"]["include_usage"] is True

    # include_usage explicitly false: same; the client's other stream options are kept.
    off = list(
        client.chat.completions.create(
            model="caprl", messages=messages, max_tokens=12, stream=True,
            stream_options={"include_usage": False}, extra_body={"top_k": 7},
        )
    )
    assert _stream_text(off) == whole.choices[0].message.content
    assert [c for c in off if c.usage is not None] == []
    seen = worker.last_request()["body"]
    assert seen["stream_options"]["include_usage"] is True
    assert seen["top_k"] == 7


def test_streaming_raw_sse_ends_with_done(gateway, tmp_path):
    """The SSE wire format as curl sees it: data lines, a [DONE] terminator, no usage."""
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"model": "caprl", "stream": True, "max_tokens": 4,
                             "messages": [{"role": "user", "content": "hi"}]}))
    r = curl(f"{gateway.base_url}/chat/completions", "-N", data_file=f)
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.body.decode().split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all("usage" not in p or p["usage"] is None for p in payloads), payloads[-1]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads)
    assert text == " The image shows a"


FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP"]
MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


def test_every_format_in_one_message(gateway, worker, client):
    urls = [data_url(image_bytes(f, (50 + 10 * i, 40)), MEDIA[f]) for i, f in enumerate(FORMATS)]
    r = client.chat.completions.create(model="caprl", messages=caption_messages(*urls), max_tokens=6)
    assert r.choices[0].message.content
    parts = worker.last_request()["body"]["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 5 + ["text"]
    for p, f, u in zip(parts, FORMATS, urls):
        assert p["image_url"]["url"] == elide(u), f
    m = gateway.metrics()
    for f in FORMATS:
        assert m.value("caprl_gateway_images_total", format=f.lower(), outcome="ok") == 1, f
    assert m.value("caprl_gateway_image_bytes_count", format="png") == 1


def test_declared_type_is_not_trusted_bytes_are_sniffed(gateway, worker, client):
    """`data:image/png` carrying JPEG bytes is accepted and counted as JPEG."""
    jpeg = image_bytes("JPEG", (64, 64))
    assert jpeg[:3] == b"\xff\xd8\xff"
    r = client.chat.completions.create(
        model="caprl", messages=caption_messages(data_url(jpeg, "image/png")), max_tokens=4
    )
    assert r.choices[0].message.content
    assert worker.requests() == 1
    m = gateway.metrics()
    assert m.value("caprl_gateway_images_total", format="jpeg", outcome="ok") == 1
    assert m.value("caprl_gateway_images_total", format="png", outcome="ok") == 0


def test_sampling_and_vllm_fields_pass_through(client, worker):
    extra = {
        "top_k": 20,
        "min_p": 0.05,
        "repetition_penalty": 1.0,
        "chat_template_kwargs": {"enable_thinking": False, "nested": {"a": [1, 2.5, None]}},
    }
    r = client.chat.completions.create(
        model="caprl",
        messages=caption_messages(data_url(image_bytes("PNG"))),
        n=2,
        stop=[" kite"],
        max_completion_tokens=40,
        seed=1234,
        temperature=0.6,
        top_p=0.9,
        extra_body=extra,
    )
    assert len(r.choices) == 2
    for c in r.choices:
        assert c.message.content == " The image shows a red"
        assert c.finish_reason == "stop"
    seen = worker.last_request()["body"]
    assert seen["n"] == 2
    assert seen["stop"] == [" kite"]
    assert seen["max_completion_tokens"] == 40
    assert "max_tokens" not in seen
    assert seen["seed"] == 1234
    assert seen["temperature"] == 0.6
    assert seen["top_p"] == 0.9
    for k, v in extra.items():
        assert seen[k] == v, k
    assert isinstance(seen["top_k"], int) and isinstance(seen["min_p"], float)


def test_priority_is_the_gateways_and_is_not_forwarded(client, worker):
    """`priority` steers the gateway's queue; vLLM refuses it unless started with priority
    scheduling, so only that field is dropped and everything else arrives as sent."""
    r = client.chat.completions.create(
        model="caprl",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        temperature=0.2,
        extra_body={"priority": -5, "top_k": 3, "repetition_penalty": 1.1},
    )
    assert r.usage.completion_tokens == 3
    seen = worker.last_request()["body"]
    assert "priority" not in seen
    assert seen == {
        "model": "caprl",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "temperature": 0.2,
        "top_k": 3,
        "repetition_penalty": 1.1,
    }
