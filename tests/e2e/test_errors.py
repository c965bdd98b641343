"""Bad input through the real openai client and curl: the exception class the client raises for
each status (400, 404, 413, 401), a body over the limit sent by the client and by curl (also
chunked, on the wire), and the API key. Each gets an OpenAI error envelope naming the right
param, the worker never sees it, and the next good request still succeeds.

Every other error envelope and `param` (each bad image URL, malformed bodies, image limits,
unknown routes, 405) is tested in-process in tests/http.rs."""

from __future__ import annotations

import json

import openai
import pytest

from e2e_util import caption_messages, curl, data_url, image_bytes

MAX_IMAGES = 2
MAX_IMAGE_BYTES = 64 * 1024
MAX_IMAGE_PIXELS = 1_000_000
MAX_BODY_BYTES = 1024 * 1024
API_KEY = "sk-e2e-secret"

GOOD_PNG = data_url(image_bytes("PNG"))


@pytest.fixture(scope="module")
def limited(module_cluster):
    """A gateway with small limits in front of one fake worker."""
    w = module_cluster.worker()
    g = module_cluster.gateway(
        [w],
        "--max-images-per-request", str(MAX_IMAGES),
        "--max-image-bytes", str(MAX_IMAGE_BYTES),
        "--max-image-pixels", str(MAX_IMAGE_PIXELS),
        "--max-body-bytes", str(MAX_BODY_BYTES),
    )
    return g, w


@pytest.fixture(scope="module")
def keyed(module_cluster):
    """A gateway that requires an API key."""
    w = module_cluster.worker()
    return module_cluster.gateway([w], api_key=API_KEY), w


def check_envelope(body: dict, *, param, code: str, type_: str = "invalid_request_error") -> None:
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["type"] == type_, err
    assert err["param"] == param, err
    assert err["code"] == code, err


def good_request_succeeds(gw, w, api_key: str = "EMPTY") -> None:
    before = w.requests()
    r = gw.openai(api_key).chat.completions.create(
        model="caprl", messages=caption_messages(GOOD_PNG), max_tokens=3
    )
    assert r.choices[0].message.content == " The image shows"
    assert w.requests() == before + 1


def expect_openai_error(gw, w, exc_type, status: int, *, param, code: str, **create_kw):
    """Send with the openai client; it must raise `exc_type` with `status`, the worker must not
    have been called, and a good request must succeed afterwards."""
    before = w.requests()
    with pytest.raises(exc_type) as info:
        gw.openai().chat.completions.create(**create_kw)
    err = info.value
    assert isinstance(err, openai.APIStatusError)
    assert err.status_code == status, (err.status_code, err.response.text)
    assert err.response.headers["content-type"].startswith("application/json")
    check_envelope(err.response.json(), param=param, code=code)
    assert w.requests() == before, "the worker saw a request the gateway should have refused"
    good_request_succeeds(gw, w)
    return err


def test_empty_messages(limited):
    g, w = limited
    expect_openai_error(g, w, openai.BadRequestError, 400, param="messages", code="invalid_request",
                        model="caprl", messages=[])


def test_unknown_model(limited):
    g, w = limited
    err = expect_openai_error(g, w, openai.NotFoundError, 404, param="model", code="model_not_found",
                              model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4o" in err.response.json()["error"]["message"]


def test_body_over_max_body_bytes_openai(limited):
    g, w = limited
    text = "x" * (MAX_BODY_BYTES + 10)
    expect_openai_error(g, w, openai.APIStatusError, 413, param=None, code="payload_too_large",
                        model="caprl", messages=[{"role": "user", "content": text}], max_tokens=3)


def test_body_over_max_body_bytes_curl(limited, tmp_path):
    g, w = limited
    before = w.requests()
    f = tmp_path / "big.json"
    f.write_text(json.dumps({"model": "caprl", "messages": [{"role": "user", "content": "y" * (2 * MAX_BODY_BYTES)}]}))
    r = curl(f"{g.base_url}/chat/completions", data_file=f)
    assert r.status == 413, r.body[:300]
    check_envelope(r.json(), param=None, code="payload_too_large")
    # Chunked upload (no Content-Length): refused while being read, same answer.
    r = curl(f"{g.base_url}/chat/completions", "-H", "transfer-encoding: chunked", data_file=f)
    assert r.status == 413, r.body[:300]
    check_envelope(r.json(), param=None, code="payload_too_large")
    assert w.requests() == before
    good_request_succeeds(g, w)


def test_api_key(keyed, tmp_path):
    g, w = keyed
    before = w.requests()
    msgs = [{"role": "user", "content": "hi"}]
    for key in ("EMPTY", API_KEY + "x", API_KEY[:-1]):
        client = g.openai(key)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="caprl", messages=msgs, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert info.value.status_code == 401
        check_envelope(info.value.response.json(), param=None, code="invalid_api_key", type_="authentication_error")
    # No key at all (curl sends no Authorization header).
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"model": "caprl", "messages": msgs, "max_tokens": 2}))
    r = curl(f"{g.base_url}/chat/completions", data_file=f)
    assert r.status == 401
    check_envelope(r.json(), param=None, code="invalid_api_key", type_="authentication_error")
    r = curl(f"{g.base_url}/chat/completions", "-H", "authorization: Basic " + API_KEY, data_file=f)
    assert r.status == 401
    assert w.requests() == before, "an unauthenticated request reached the worker"
    m = g.metrics()
    assert m.sum("caprl_gateway_rejections_total", reason="unauthorized") == 8  # 3 keys x 2 + 2 curl
    assert m.value("caprl_gateway_http_requests_total", route="/v1/chat/completions", method="POST",
                   status_code="401") == 5
    # Probes and scrapes need no key.
    assert g.get("/health").status_code == 200
    assert g.get("/ready").status_code == 200
    assert g.get("/metrics").status_code == 200
    # The right key works, with the openai client and with curl.
    good_request_succeeds(g, w, api_key=API_KEY)
    r = curl(f"{g.base_url}/chat/completions", "-H", f"authorization: Bearer {API_KEY}", data_file=f)
    assert r.status == 200, r.body
    assert w.requests() == before + 2
    assert [m.id for m in g.openai(API_KEY).models.list()] == ["caprl"]
