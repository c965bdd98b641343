"""Fixtures for the real-vLLM suite: ONE vLLM (CPU, float32, tiny-qwen25vl-a, served as `caprl`,
--enable-request-id-headers) for the whole session, started with scripts/vllm/serve.sh, plus
gateways in front of it started with tests/e2e's helpers.

Environment:
  VLLM_VENV            venv holding vllm (default <repo>/.venv-vllm)
  CAPRL_VLLM_PORT      attach to a vLLM already started by serve.sh on this port (it is not
                       stopped at the end); otherwise one is started on a free port and stopped
  VLLM_START_TIMEOUT   passed to serve.sh (default here 400)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from e2e_util import GATEWAY_BIN, LIVE, Cluster, Samples, free_port, http, poll  # noqa: E402

SERVE = REPO / "scripts" / "vllm" / "serve.sh"
MODEL_A = REPO / "tests" / "fixtures" / "models" / "tiny-qwen25vl-a"
IMAGES = REPO / "tests" / "fixtures" / "images"
VENV = Path(os.environ.get("VLLM_VENV", str(REPO / ".venv-vllm")))
TIMINGS: dict[str, float] = {}


@dataclass
class Remote:
    """A worker spec for Cluster.gateway (it only needs `.url`): a real vLLM or `candle:DIR`."""
    url: str


@dataclass
class Vllm:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def metrics(self) -> Samples:
        r = http().get(f"{self.url}/metrics")
        assert r.status_code == 200, r.text
        return Samples.parse(r.text)

    def chat_requests(self) -> float:
        """Every HTTP request vLLM's API server received on /v1/chat/completions (all statuses)."""
        return self.metrics().sum("http_requests_total", handler="/v1/chat/completions")

    def detokenize(self, ids: list[int]) -> str:
        r = http().post(f"{self.url}/detokenize", json={"model": "caprl", "tokens": ids})
        assert r.status_code == 200, r.text
        return r.json()["prompt"]

    def openai(self):
        from openai import OpenAI
        return OpenAI(api_key="EMPTY", base_url=self.base_url, max_retries=0, timeout=120.0)


def pytest_sessionstart(session):
    if not GATEWAY_BIN.is_file():
        raise pytest.UsageError(f"missing {GATEWAY_BIN}: run `cargo build --bins`")


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k}: {v:.1f} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for p in list(LIVE):
            rep.sections.append((f"log tail: {p.name} ({p.log_path})", p.tail(40)))


@pytest.fixture(scope="session")
def vllm():
    attach = os.environ.get("CAPRL_VLLM_PORT")
    if attach:
        v = Vllm(int(attach))
        t0 = time.monotonic()
        env = {**os.environ, "VLLM_START_TIMEOUT": os.environ.get("VLLM_START_TIMEOUT", "400")}
        subprocess.run([str(SERVE), "wait", attach], check=True, env=env, timeout=420)
        TIMINGS["vllm wait (attached, started outside)"] = time.monotonic() - t0
        yield v
        return
    port = free_port()
    env = {**os.environ, "VLLM_START_TIMEOUT": os.environ.get("VLLM_START_TIMEOUT", "400")}
    t0 = time.monotonic()
    try:
        subprocess.run([str(SERVE), "start", str(VENV), str(MODEL_A), str(port)], check=True, env=env,
                       timeout=int(env["VLLM_START_TIMEOUT"]) + 30)
        TIMINGS["vllm start"] = time.monotonic() - t0
        yield Vllm(port)
    finally:
        subprocess.run([str(SERVE), "stop", str(port)], timeout=60)


@pytest.fixture(scope="session")
def session_cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("vllm-cluster"))
    try:
        yield c
    finally:
        c.close()


def start_gateway(cluster: Cluster, specs, *extra: str, ready_timeout: float = 120.0):
    g = cluster.gateway(specs, *extra, wait_ready=False)
    poll(lambda: g.get("/ready").status_code == 200, ready_timeout, interval=0.2, what="/ready == 200")
    return g


@pytest.fixture(scope="session")
def gw(session_cluster, vllm):
    """The gateway in front of the real vLLM only."""
    return start_gateway(session_cluster, [("caprl", Remote(vllm.url))], "--max-images-per-request", "8")


@pytest.fixture(scope="session")
def candle_gw(session_cluster):
    """A gateway serving the same fixture with the in-process Candle engine."""
    return start_gateway(session_cluster, [("caprl", Remote(f"candle:{MODEL_A}"))])
