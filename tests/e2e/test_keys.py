"""API keys through the real `openai` client and curl: the exception a revoked or unknown key
raises, a SIGHUP reload of the keys file on the real binary, the `x-ratelimit-*` headers as the
client's raw response shows them, and the client's own retry honouring `retry-after-ms`."""

from __future__ import annotations

import signal
import subprocess
import time

import openai
import pytest

from e2e_util import make_client, poll

KEYS = """
[[keys]]
name = "team-a"
secret = "sk-team-a"
requests_per_minute = 600
tokens_per_minute = 100000

[[keys]]
name = "team-b"
secret = "sk-team-b"
models = ["caprl"]
"""

MSG = [{"role": "user", "content": "Describe a kite."}]


@pytest.fixture
def keyed(cluster, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    w = cluster.worker(models=("caprl", "other"))
    # A long poll interval: only SIGHUP can make the reload happen within the test.
    g = cluster.gateway([("caprl", w), ("other", w)], "--keys-file", str(keys),
                        "--keys-reload-secs", "3600")
    return g, keys


def test_keys_authenticate_and_a_sighup_reload_revokes_one(keyed):
    g, keys = keyed
    a = make_client(g, api_key="sk-team-a")
    b = make_client(g, api_key="sk-team-b")
    assert a.chat.completions.create(model="caprl", messages=MSG, max_tokens=4).choices
    assert b.chat.completions.create(model="caprl", messages=MSG, max_tokens=4).choices
    with pytest.raises(openai.AuthenticationError) as e:
        make_client(g, api_key="sk-nobody").models.list()
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"

    # Revoke team-b: the file changes, nothing happens until the signal.
    tmp = keys.with_suffix(".new")
    tmp.write_text(KEYS.split("[[keys]]")[0] + "[[keys]]" + KEYS.split("[[keys]]")[1])
    tmp.replace(keys)
    assert b.models.list().data, "no reload without the signal (poll interval 1 h)"
    g.popen.send_signal(signal.SIGHUP)

    def revoked():
        try:
            b.models.list()
            return False
        except openai.AuthenticationError:
            return True

    poll(revoked, 10, what="team-b revoked after SIGHUP")
    assert g.alive(), "SIGHUP must not stop the gateway"
    assert a.chat.completions.create(model="caprl", messages=MSG, max_tokens=4).choices
    assert "keys reloaded" in g.log_text()
    assert "sk-team" not in g.log_text(), "a secret reached the log"
    a.close()
    b.close()


def test_the_raw_response_carries_the_rate_limit_headers(keyed):
    g, _ = keyed
    a = make_client(g, api_key="sk-team-a")
    first = a.chat.completions.with_raw_response.create(model="caprl", messages=MSG, max_tokens=50)
    second = a.chat.completions.with_raw_response.create(model="caprl", messages=MSG, max_tokens=50)
    for r in (first, second):
        assert r.headers["x-ratelimit-limit-requests"] == "600"
        assert r.headers["x-ratelimit-limit-tokens"] == "100000"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert int(second.headers["x-ratelimit-remaining-requests"]) < int(
        first.headers["x-ratelimit-remaining-requests"]
    )
    used = first.parse().usage.total_tokens
    # The estimate was settled from the usage before the headers were written; the bucket
    # refills ~1,700 tokens a second meanwhile, so a little more may be back.
    assert 100000 - used <= int(first.headers["x-ratelimit-remaining-tokens"]) <= 100000 - used + 100
    # A key without limits gets no such headers.
    b = make_client(g, api_key="sk-team-b")
    raw = b.chat.completions.with_raw_response.create(model="caprl", messages=MSG, max_tokens=4)
    assert "x-ratelimit-limit-requests" not in raw.headers
    a.close()
    b.close()


def test_the_openai_client_retries_a_429_after_the_wait_it_was_given(cluster, tmp_path):
    keys = tmp_path / "keys.toml"
    # 60 a minute: one back every second; a burst of 60.
    keys.write_text('[[keys]]\nname = "burst"\nsecret = "sk-burst"\nrequests_per_minute = 60\n')
    w = cluster.worker(models=("caprl",))
    g = cluster.gateway([w], "--keys-file", str(keys))
    strict = make_client(g, api_key="sk-burst")
    for _ in range(60):
        strict.models.list()
    with pytest.raises(openai.RateLimitError) as e:
        strict.models.list()
    assert e.value.body["code"] == "rate_limit_exceeded"
    assert e.value.body["type"] == "requests"
    wait_ms = int(e.value.response.headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    # The same call with the client's default retries goes through after the wait.
    patient = make_client(g, api_key="sk-burst", max_retries=2)
    started = time.monotonic()
    assert patient.models.list().data
    assert time.monotonic() - started < 10
    strict.close()
    patient.close()


def test_a_model_outside_the_keys_list_is_missing_to_it(keyed):
    g, _ = keyed
    models = lambda key: sorted(  # noqa: E731
        m["id"] for m in __import__("json").loads(subprocess.run(
            ["curl", "-sS", "-H", f"Authorization: Bearer {key}", f"{g.base_url}/models"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout)["data"]
    )
    assert models("sk-team-a") == ["caprl", "other"]
    assert models("sk-team-b") == ["caprl"]
    b = make_client(g, api_key="sk-team-b")
    with pytest.raises(openai.NotFoundError) as e:
        b.chat.completions.create(model="other", messages=MSG, max_tokens=4)
    assert e.value.body["code"] == "model_not_found"
    assert e.value.body["param"] == "model"
    b.close()
