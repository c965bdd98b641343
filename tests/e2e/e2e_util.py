"""Helpers for the end-to-end suite: processes (fake workers, the gateway), images, metrics.

Everything here is bounded in time: every wait polls a condition with a deadline and a
bounded number of tries, and every process is killed at teardown.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("CAPRL_BIN_DIR", str(REPO / "target" / "debug")))
GATEWAY_BIN = BIN_DIR / "caprl-gateway"
WORKER_BIN = BIN_DIR / "caprl-fake-worker"
CURL = shutil.which("curl")

# Everything here talks to 127.0.0.1 only: never through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 3.0

# Processes alive right now, so a failing test can show their log tails.
LIVE: list["Proc"] = []


def poll(cond: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Call `cond` until it returns something truthy; at most `timeout` seconds and a bounded
    number of tries. Returns the truthy value, or raises AssertionError with the last value."""
    deadline = time.monotonic() + timeout
    max_tries = int(timeout / interval) + 2
    last: object = None
    for _ in range(max_tries):
        last = cond()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}; last value: {last!r}")


def listening_port(p: "Proc", what: str) -> int | None:
    """The port in `p`'s `listening on 127.0.0.1:PORT` line (the gateway and the fake worker
    both print it once bound, so `--port 0` needs no guessing), or None while not yet there."""
    if not p.alive():
        raise AssertionError(f"{what} exited early:\n{p.tail()}")
    m = re.search(r"^listening on 127\.0\.0\.1:(\d+)\n", p.log_text(), re.MULTILINE)
    return int(m.group(1)) if m else None


def free_port() -> int:
    """A port free right now, for a server that cannot report its own (vLLM in tests/vllm).
    It may be taken between this probe and the server's bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_HTTP: httpx.Client | None = None


def http() -> httpx.Client:
    """The shared plain client for probes, /stats and raw requests (no proxy, short
    timeouts). Built once: building an httpx client (its TLS context) is slow."""
    global _HTTP
    if _HTTP is None:
        _HTTP = httpx.Client(trust_env=False, verify=False, timeout=httpx.Timeout(10.0, connect=2.0))
    return _HTTP


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None
    _log: object = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1", "RUST_BACKTRACE": "1"},
        )
        LIVE.append(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, graceful: bool = False) -> int | None:
        """Kill the process (SIGKILL; `graceful`: SIGTERM first, SIGKILL after a bounded wait).
        Returns its exit status."""
        if self.popen is not None and self.popen.poll() is None:
            if graceful:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in LIVE:
            LIVE.remove(self)
        return None if self.popen is None else self.popen.returncode


@dataclass
class FakeWorker(Proc):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        r = http().get(f"{self.url}/stats")
        r.raise_for_status()
        return r.json()

    def requests(self) -> int:
        return self.stats()["requests"]

    def last_request(self) -> dict:
        return self.stats()["last_request"]

    def control(self, **patch) -> dict:
        r = http().post(f"{self.url}/control", json=patch)
        r.raise_for_status()
        return r.json()


@dataclass
class Gateway(Proc):
    port: int = 0
    api_key: str | None = None
    workers: list[FakeWorker] = field(default_factory=list)
    _clients: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def get(self, path: str, **kw) -> httpx.Response:
        return http().get(f"{self.url}{path}", **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return http().post(f"{self.url}{path}", **kw)

    def openai(self, api_key: str = "EMPTY"):
        """A cached openai client for this gateway (building one costs ~0.1 s); closed when
        the gateway stops."""
        if api_key not in self._clients:
            self._clients[api_key] = make_client(self, api_key=api_key)
        return self._clients[api_key]

    def stop(self, graceful: bool = False) -> int | None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        return super().stop(graceful)

    def metrics(self) -> "Samples":
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        return Samples.parse(r.text)


class Cluster:
    """Starts fake workers and gateways in `tmp_dir` and stops them all on close()."""

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self.procs: list[Proc] = []
        self._n = 0

    def _log(self, name: str) -> Path:
        self._n += 1
        return self.tmp_dir / f"{self._n:02d}-{name}.log"

    def worker(self, models: Iterable[str] = ("caprl",), **behaviour) -> FakeWorker:
        """A fake worker on an ephemeral port (`--port 0`; it prints the port it got)."""
        argv = [str(WORKER_BIN), "--port", "0"]
        for m in models:
            argv += ["--model", m]
        for k, v in behaviour.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            argv += [f"--{k.replace('_', '-')}", str(v)]
        w = FakeWorker(name="fake-worker", argv=argv, log_path=self._log("fake-worker"))
        w.start()
        self.procs.append(w)

        w.port = poll(lambda: listening_port(w, "fake worker"), START_TIMEOUT_S,
                      what="the fake worker's `listening on` line")
        w.name = f"fake-worker:{w.port}"
        return w

    def gateway(
        self,
        workers: Iterable[FakeWorker | tuple[str, FakeWorker]],
        *extra: str,
        api_key: str | None = None,
        wait_ready: bool = True,
    ) -> Gateway:
        """The gateway in front of `workers` (a worker, or `(model, worker)`), with `extra`
        flags. Waits (bounded) until /ready answers 200 unless told not to."""
        specs: list[str] = []
        ws: list[FakeWorker] = []
        for w in workers:
            if isinstance(w, tuple):
                model, w = w
                specs.append(f"{model}={w.url}")
            else:
                specs.append(w.url)
            ws.append(w)
        # `--port 0`: the gateway binds any free port and prints `listening on ADDR`.
        argv = [str(GATEWAY_BIN), "serve", "--host", "127.0.0.1", "--port", "0"]
        for s in specs:
            argv += ["--worker", s]
        if api_key is not None:
            argv += ["--api-key", api_key]
        argv += ["--shutdown-grace-secs", "1", *extra]
        g = Gateway(name="gateway", argv=argv, log_path=self._log("gateway"), api_key=api_key, workers=ws)
        g.start()
        self.procs.append(g)
        g.port = poll(lambda: listening_port(g, "gateway"), START_TIMEOUT_S,
                      what="the gateway's `listening on` line")
        g.name = f"gateway:{g.port}"
        if wait_ready:
            poll(lambda: g.get("/ready").status_code == 200, START_TIMEOUT_S, what="/ready == 200")
        return g

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - teardown kills everything it can
                if p.popen is not None and p.popen.poll() is None:
                    p.popen.kill()
        self.procs.clear()


def make_client(gw: Gateway, api_key: str = "EMPTY", **kw):
    """An `openai.OpenAI` client for `gw`; no retries (so worker counts stay exact)."""
    from openai import OpenAI

    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 20.0)
    return OpenAI(api_key=api_key, base_url=gw.base_url, **kw)


# ---------------------------------------------------------------------------- images

def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), color=None, noise: bool = False,
                mode: str = "RGB") -> bytes:
    """Real image bytes in `fmt` (PNG, JPEG, WEBP, GIF, BMP), made with Pillow: a gradient, one
    `color` (in `mode`, e.g. "1" for a fast 1-bit image), or random noise."""
    from PIL import Image

    w, h = size
    if mode != "RGB":
        img = Image.new(mode, size, color or 0)
    elif noise:
        img = Image.frombytes("RGB", size, os.urandom(w * h * 3))
    elif color is not None:
        img = Image.new("RGB", size, color)
    else:
        img = Image.new("RGB", size)
        px = img.load()
        for x in range(w):
            for y in range(h):
                px[x, y] = (x * 4 % 256, y * 5 % 256, (x + y) % 256)
    if fmt.upper() == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper())
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{b64(data)}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def caption_messages(*urls: str, text: str = "Please describe the image in detail.") -> list[dict]:
    """CapRL's prompt: a system message, then a user message with the images and the text."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [*(image_part(u) for u in urls), {"type": "text", "text": text}]},
    ]


def elide(v):
    """The fake worker's elision of data URLs in `last_request.body` (src/fake_worker.rs)."""
    if isinstance(v, str) and v.startswith("data:"):
        return f"{v[:32]}…({len(v.encode())} chars)"
    if isinstance(v, list):
        return [elide(x) for x in v]
    if isinstance(v, dict):
        return {k: elide(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------- curl

@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def curl(url: str, *args: str, data_file: Path | None = None, timeout: float = 15.0) -> CurlResult:
    """Run curl (bounded), returning status, lower-cased headers and body."""
    assert CURL, "curl is required"
    argv = [CURL, "-sS", "--noproxy", "*", "--max-time", str(int(timeout)), "-D", "-", *args]
    if data_file is not None:
        argv += ["-H", "content-type: application/json", "--data-binary", f"@{data_file}"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    assert out.returncode == 0, f"curl failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
    raw = out.stdout
    # Skip interim 100 Continue heads.
    while raw.startswith(b"HTTP/") and b" 100 " in raw.split(b"\r\n", 1)[0]:
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return CurlResult(status, headers, body)


# ---------------------------------------------------------------------------- metrics

class Samples:
    """Prometheus samples by (name, labels), parsed with prometheus_client's text parser."""

    def __init__(self, samples: dict[tuple[str, frozenset], float]):
        self.samples = samples

    @classmethod
    def parse(cls, text: str) -> "Samples":
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return cls(out)

    def get(self, name: str, **labels) -> float | None:
        """The one series with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels) -> float:
        v = self.get(name, **labels)
        return 0.0 if v is None else v

    def matching(self, name: str, **labels) -> dict[frozenset, float]:
        """Every series of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {lbl: v for (n, lbl), v in self.samples.items() if n == name and want <= set(lbl)}

    def sum(self, name: str, **labels) -> float:
        return sum(self.matching(name, **labels).values())

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}
