"""The caption cache through the real `openai` client: a greedy caption request asked twice is
answered once by the worker, the second time from the cache (`x-cache: hit`), and a stream of
the same request is replayed from it as events the client parses."""

from __future__ import annotations

from e2e_util import data_url, image_bytes, make_client


def caption(img: bytes) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(img)}},
        {"type": "text", "text": "Please describe the image in detail."}]}]


def test_a_greedy_caption_is_served_from_the_cache_the_second_time(cluster):
    w = cluster.worker()
    g = cluster.gateway([w], "--cache-max-bytes", "8MiB")
    client = make_client(g)
    msgs = caption(image_bytes("png", (84, 56)))
    first = client.chat.completions.with_raw_response.create(
        model="caprl", messages=msgs, max_tokens=12, temperature=0)
    second = client.chat.completions.with_raw_response.create(
        model="caprl", messages=msgs, max_tokens=12, temperature=0)
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert w.requests() == 1
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="caprl", messages=msgs, max_tokens=12, temperature=0, stream=True)
        if c.choices
    )
    assert text == first.parse().choices[0].message.content
    assert w.requests() == 1, "the stream came from the cache"
    # A sampled request is not cached.
    raw = client.chat.completions.with_raw_response.create(
        model="caprl", messages=msgs, max_tokens=12, temperature=0.8)
    assert raw.headers["x-cache"] == "bypass"
    assert w.requests() == 2
    client.close()
