"""Fixtures for the end-to-end suite: the real gateway binary in front of real fake-worker
binaries, on 127.0.0.1 ephemeral ports, talked to with the real `openai` client and curl.

- `cluster` / `module_cluster`: a factory (`.worker(...)`, `.gateway(workers, *flags)`) whose
  processes log to files in a tmp dir and are always stopped at teardown.
- `worker`, `gateway`: one fake worker serving `caprl` and a gateway in front of it.
- `client`: an `openai.OpenAI` client for `gateway` (no retries, so counts stay exact).

On a failing test, the tails of every live process's log are attached to the report.
Binaries come from `$CAPRL_BIN_DIR` (default `<repo>/target/debug`; `cargo build --bins`).
"""

from __future__ import annotations

import pytest

from e2e_util import GATEWAY_BIN, LIVE, WORKER_BIN, Cluster, make_client


def pytest_sessionstart(session):
    missing = [str(p) for p in (GATEWAY_BIN, WORKER_BIN) if not p.is_file()]
    if missing:
        raise pytest.UsageError(
            f"missing binaries {missing}: run `cargo build --bins` or set CAPRL_BIN_DIR"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for p in list(LIVE):
            rep.sections.append((f"log tail: {p.name} ({p.log_path})", p.tail(40)))


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def worker(cluster):
    return cluster.worker()


@pytest.fixture
def gateway(cluster, worker):
    return cluster.gateway([worker])


@pytest.fixture
def client(gateway):
    c = make_client(gateway)
    try:
        yield c
    finally:
        c.close()
