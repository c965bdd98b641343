"""Remote images fetched by the gateway (`--fetch-remote-images`) through the real openai client:
an `http://127.0.0.1` image URL behind one redirect reaches the worker as a data URL, and the
same URL without the test-only loopback switch is refused with 400 `image_url_refused` before
anything connects. (Every refusal class, the limits and the batch path: tests/fetch.rs.)"""

from __future__ import annotations

import http.server
import threading

import openai
import pytest

from e2e_util import data_url, elide, image_bytes, make_client

PARAM = "messages[1].content[0].image_url.url"


@pytest.fixture
def image_server():
    """A PNG at /kite.png and a 302 to it at /redirect, on 127.0.0.1; counts connections."""
    png = image_bytes("PNG", (96, 64))
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            seen.append(self.path)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/kite.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/kite.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], png, seen
    finally:
        server.shutdown()
        server.server_close()


def messages(url: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "Please describe the image in detail."},
        ]},
    ]


def test_a_remote_image_reaches_the_worker_as_a_data_url(cluster, image_server):
    port, png, seen = image_server
    worker = cluster.worker()
    gw = cluster.gateway([worker], "--fetch-remote-images", "--fetch-allow-loopback")
    client = make_client(gw)
    try:
        resp = client.chat.completions.with_raw_response.create(
            model="caprl", messages=messages(f"http://127.0.0.1:{port}/redirect"), max_tokens=8
        )
    finally:
        client.close()
    assert resp.parse().choices[0].message.content
    assert resp.headers["x-caprl-images"] == "1"
    assert seen == ["/redirect", "/kite.png"]
    got = worker.last_request()["body"]["messages"][1]["content"][0]["image_url"]["url"]
    assert got == elide(data_url(png, "image/png")), got


def test_a_loopback_url_is_refused_without_the_test_switch(cluster, image_server):
    port, _, seen = image_server
    worker = cluster.worker()
    gw = cluster.gateway([worker], "--fetch-remote-images")
    client = make_client(gw)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="caprl", messages=messages(f"http://127.0.0.1:{port}/kite.png"), max_tokens=8
            )
    finally:
        client.close()
    err = info.value.body
    assert info.value.status_code == 400
    assert err["code"] == "image_url_refused", err
    assert err["param"] == PARAM, err
    assert "loopback" in err["message"], err
    assert seen == [], "nothing was fetched"
    assert worker.requests() == 0
