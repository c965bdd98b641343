"""The gateway in front of a real vLLM, talked to with the openai client."""

from __future__ import annotations

import base64
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from conftest import IMAGES
from e2e_util import caption_messages, data_url, image_bytes, image_part, poll

GRID = (IMAGES / "grid_56x84.png").read_bytes()


def client(gw, timeout=120.0) -> OpenAI:
    return OpenAI(api_key="EMPTY", base_url=gw.base_url, max_retries=0, timeout=timeout)


def test_caprl_readme_call(gw):
    b64 = base64.b64encode((IMAGES / "large_300x200.png").read_bytes()).decode()
    resp = client(gw).chat.completions.create(
        model="caprl",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image;base64,{b64}"}},
                {"type": "text", "text": "Please describe the image in detail."},
            ]},
        ],
        temperature=1.0,
        max_tokens=32,
        extra_body={"repetition_penalty": 1.0},
    )
    assert resp.choices[0].message.content is not None
    assert resp.usage.prompt_tokens == 68  # the fixture's `caprl` case
    assert 1 <= resp.usage.completion_tokens <= 32


def test_several_images_per_message(gw):
    urls = [data_url((IMAGES / f).read_bytes()) for f in
            ("grid_56x84.png", "odd_101x47.png", "tiny_20x30.png")]
    r = client(gw).chat.completions.create(model="caprl", messages=caption_messages(*urls),
                                           max_tokens=8, temperature=0, extra_body={"repetition_penalty": 1.0})
    # 6 + 8 + 6 image tokens, each image framed by vision_start/end
    one = client(gw).chat.completions.create(model="caprl", messages=caption_messages(urls[0]),
                                             max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens - one.usage.prompt_tokens == (8 + 2) + (6 + 2)


@pytest.mark.parametrize("fmt,media", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                       ("GIF", "image/gif"), ("BMP", "image/bmp")])
def test_image_formats(gw, fmt, media):
    url = data_url(image_bytes(fmt, (64, 48)), media)
    r = client(gw).chat.completions.create(model="caprl", messages=caption_messages(url), max_tokens=4,
                                           temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 30


def test_streaming_include_usage(gw):
    stream = client(gw).chat.completions.create(
        model="caprl", messages=caption_messages(data_url(GRID)), max_tokens=12, temperature=0,
        extra_body={"repetition_penalty": 1.0, "min_tokens": 12}, stream=True,
        stream_options={"include_usage": True})
    text, usage, n = "", None, 0
    for chunk in stream:
        n += 1
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert n >= 3
    assert usage is not None and usage.completion_tokens == 12
    direct = client(gw).chat.completions.create(
        model="caprl", messages=caption_messages(data_url(GRID)), max_tokens=12, temperature=0,
        extra_body={"repetition_penalty": 1.0, "min_tokens": 12})
    assert text == direct.choices[0].message.content


def test_n_stop_max_tokens_seed(gw):
    c = client(gw)
    msgs = caption_messages(data_url(GRID))
    r = c.chat.completions.create(model="caprl", messages=msgs, n=2, max_tokens=6, temperature=1.0, seed=7)
    assert len(r.choices) == 2 and {ch.index for ch in r.choices} == {0, 1}
    r2 = c.chat.completions.create(model="caprl", messages=msgs, n=2, max_tokens=6, temperature=1.0, seed=7)
    assert [ch.message.content for ch in r.choices] == [ch.message.content for ch in r2.choices]
    r = c.chat.completions.create(model="caprl", messages=msgs, max_completion_tokens=5, temperature=0,
                                  extra_body={"min_tokens": 5})
    assert r.usage.completion_tokens == 5
    r = c.chat.completions.create(model="caprl", messages=msgs, max_tokens=7, temperature=0,
                                  extra_body={"min_tokens": 7})
    assert r.usage.completion_tokens == 7
    full = r.choices[0].message.content
    # stop on a substring of the greedy text: it must end there
    stop = full[3:5] if len(full) >= 5 else None
    if stop and stop.strip():
        rs = c.chat.completions.create(model="caprl", messages=msgs, max_tokens=7, temperature=0,
                                       stop=[stop])
        assert rs.choices[0].finish_reason == "stop"
        assert stop not in rs.choices[0].message.content
        assert full.startswith(rs.choices[0].message.content)


def test_request_id_reaches_vllm(gw, vllm):
    rid = f"caprl-test-{uuid.uuid4().hex}"
    raw = client(gw).chat.completions.with_raw_response.create(
        model="caprl", messages=caption_messages(data_url(GRID)), max_tokens=3,
        extra_headers={"X-Request-Id": rid})
    assert raw.headers.get("x-request-id") == rid
    assert raw.parse().id == f"chatcmpl-{rid}"  # vLLM built the id from the header


def test_burst_100_concurrent(gw):
    c = client(gw, timeout=300.0)
    msgs = caption_messages(data_url(GRID))

    def one(i):
        raw = c.chat.completions.with_raw_response.create(model="caprl", messages=msgs, max_tokens=4,
                                                          temperature=0)
        return raw.http_response.status_code

    t0 = time.monotonic()
    with ThreadPoolExecutor(100) as ex:
        codes = list(ex.map(one, range(100)))
    print(f"burst of 100: {time.monotonic() - t0:.1f} s")
    assert codes == [200] * 100


def test_client_disconnect_mid_stream(gw, vllm):
    body = {"model": "caprl", "messages": caption_messages(data_url(GRID)), "max_tokens": 200,
            "min_tokens": 200, "stream": True}
    with httpx.Client(trust_env=False, timeout=60) as h:
        with h.stream("POST", f"{gw.base_url}/chat/completions", json=body) as r:
            assert r.status_code == 200
            for _line in r.iter_lines():
                break  # first chunk, then drop the connection
    # vLLM has nothing running once it notices the disconnect
    poll(lambda: vllm.metrics().value("vllm:num_requests_running", engine="0", model_name="caprl") == 0,
         30, interval=0.5, what="vLLM running == 0")
    assert httpx.get(f"{vllm.url}/health", timeout=5).status_code == 200
    assert gw.get("/health").status_code == 200
    r = client(gw).chat.completions.create(model="caprl", messages=caption_messages(data_url(GRID)),
                                           max_tokens=3)
    assert r.choices


def _msg(url):
    return caption_messages(url)


MALFORMED = {
    "bad_base64": lambda: {"model": "caprl", "messages": _msg("data:image/png;base64,@@@not base64@@@")},
    "not_an_image": lambda: {"model": "caprl",
                             "messages": _msg(data_url(b"this is plain text, not an image" * 4))},
    "file_url": lambda: {"model": "caprl", "messages": _msg("file:///etc/passwd")},
    "too_many_images": lambda: {"model": "caprl", "messages": caption_messages(*[data_url(GRID)] * 9)},
    "unknown_model": lambda: {"model": "no-such-model", "messages": _msg(data_url(GRID))},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_rejected_before_vllm(gw, vllm, case):
    before = vllm.chat_requests()
    body = {**MALFORMED[case](), "max_tokens": 4}
    r = gw.post("/v1/chat/completions", json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "error" in r.json()
    time.sleep(0.3)
    assert vllm.chat_requests() == before, "vLLM saw a request the gateway should have rejected"
