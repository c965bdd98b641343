"""/metrics after a known set of real requests: parsed with prometheus_client's text parser,
every series asserted to exist and to have moved by exactly what the requests imply.
Names and labels: src/metrics.rs."""

from __future__ import annotations

import openai
import pytest

from e2e_util import Samples, caption_messages, data_url, image_bytes, make_client, poll

M = "caprl_gateway_"


def settled(g) -> Samples:
    """Scrape until nothing is in flight (bounded): a request's record finishes just after
    its last byte reaches the client."""
    return poll(
        lambda: (m := g.metrics()).sum(M + "worker_in_flight") == 0 and m.sum(M + "queue_depth") == 0 and m,
        5.0,
        what="worker_in_flight and queue_depth back to 0",
    )


def test_metrics_after_known_requests(cluster):
    w = cluster.worker()
    g = cluster.gateway([w])
    png = image_bytes("PNG", (84, 56))  # 84 wide, 56 high: 3x2 = 6 visual tokens
    client = make_client(g)
    usages = []
    try:
        r = client.chat.completions.create(model="caprl", messages=caption_messages(data_url(png)), max_tokens=5)
        usages.append(r.usage)
        for max_tokens in (7, 9):
            r = client.chat.completions.create(
                model="caprl", messages=[{"role": "user", "content": "Say something."}], max_tokens=max_tokens
            )
            usages.append(r.usage)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="caprl", messages=[])
    finally:
        client.close()
    k = len(usages)
    assert [u.completion_tokens for u in usages] == [5, 7, 9]

    m = settled(g)
    names = m.names()
    for family in ("requests_total", "images_total", "tokens_total", "rejections_total", "http_requests_total",
                   "worker_in_flight", "request_duration_seconds_count", "http_request_duration_seconds_count",
                   "image_tokens_total", "worker_responses_total", "worker_health"):
        assert M + family in names, f"{M}{family} missing from /metrics"

    assert m.get(M + "requests_total", model_name="caprl", outcome="success", streaming="false") == k
    assert m.sum(M + "requests_total") == k, "validation rejects are not chat requests"
    assert m.get(M + "images_total", format="png", outcome="ok") == 1
    assert m.sum(M + "images_total") == 1
    assert m.get(M + "image_tokens_total", model_name="caprl") == 6
    assert m.get(M + "image_pixels_count", format="png") == 1
    assert m.get(M + "image_pixels_sum", format="png") == 84 * 56
    assert m.get(M + "image_bytes_sum", format="png") == len(png)
    assert m.get(M + "tokens_total", model_name="caprl", kind="completion") == sum(u.completion_tokens for u in usages)
    assert m.get(M + "tokens_total", model_name="caprl", kind="prompt") == sum(u.prompt_tokens for u in usages)
    assert m.sum(M + "rejections_total", reason="bad_request") == 1
    assert m.sum(M + "rejections_total") == 1
    assert m.get(M + "http_requests_total", route="/v1/chat/completions", method="POST", status_code="200") == k
    assert m.get(M + "http_requests_total", route="/v1/chat/completions", method="POST", status_code="400") == 1
    assert m.value(M + "http_requests_total", route="/ready", method="GET", status_code="200") >= 1
    assert m.get(M + "worker_in_flight", model_name="caprl", worker=w.url) == 0
    assert m.get(M + "worker_health", model_name="caprl", worker=w.url) == 1
    assert m.get(M + "worker_responses_total", model_name="caprl", worker=w.url, status_code="200") == k
    assert m.get(M + "request_duration_seconds_count", model_name="caprl", streaming="false") == k
    assert m.get(M + "request_duration_seconds_bucket", model_name="caprl", streaming="false", le="+Inf") == k
    assert m.get(M + "request_duration_seconds_sum", model_name="caprl", streaming="false") > 0
    assert m.get(M + "http_request_duration_seconds_count", route="/v1/chat/completions") == k + 1
    assert m.value(M + "retries_total", model_name="caprl") == 0
    assert w.requests() == k

    # Counters only move forward, and /metrics scrapes move only their own route's counter.
    m2 = g.metrics()
    assert m2.get(M + "requests_total", model_name="caprl", outcome="success", streaming="false") == k
    assert m2.get(M + "http_requests_total", route="/metrics", method="GET", status_code="200") == \
        m.value(M + "http_requests_total", route="/metrics", method="GET", status_code="200") + 1


def test_metrics_streaming_counts_usage_the_client_did_not_ask_for(cluster):
    w = cluster.worker()
    g = cluster.gateway([w])
    msgs = [{"role": "user", "content": "Describe."}]
    client = make_client(g)
    try:
        plain = list(client.chat.completions.create(model="caprl", messages=msgs, max_tokens=7, stream=True))
        with_usage = list(client.chat.completions.create(
            model="caprl", messages=msgs, max_tokens=4, stream=True, stream_options={"include_usage": True}))
    finally:
        client.close()
    assert all(c.usage is None for c in plain)
    assert with_usage[-1].usage.completion_tokens == 4
    m = settled(g)
    assert m.get(M + "requests_total", model_name="caprl", outcome="success", streaming="true") == 2
    # The gateway asked the worker for usage on the first stream and counted it.
    assert m.get(M + "tokens_total", model_name="caprl", kind="completion") == 7 + 4
    assert m.get(M + "request_duration_seconds_count", model_name="caprl", streaming="true") == 2
    assert m.get(M + "time_to_first_token_seconds_count", model_name="caprl") == 2
    assert m.get(M + "time_per_output_token_seconds_count", model_name="caprl") == 2
    assert m.get(M + "worker_in_flight", model_name="caprl", worker=w.url) == 0


def test_metrics_rejected_image_is_counted(cluster):
    """images_total's `outcome` label is documented as `ok` or `rejected` (src/metrics.rs): an
    image refused for its pixel count (its format already sniffed) counts as rejected."""
    w = cluster.worker()
    g = cluster.gateway([w], "--max-image-pixels", "10000")
    png = image_bytes("PNG", (200, 200), color=(1, 2, 3))
    client = make_client(g)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="caprl", messages=caption_messages(data_url(png)), max_tokens=2)
    finally:
        client.close()
    assert info.value.status_code == 413
    m = settled(g)
    assert m.sum(M + "rejections_total", reason="too_large") == 1
    assert m.value(M + "images_total", format="png", outcome="ok") == 0
    assert m.get(M + "images_total", format="png", outcome="rejected") == 1
