#!/usr/bin/env python3
"""Soak: the gateway for a long run against 3 fake workers under mixed load, while workers are
killed and restarted, sampling its memory, file descriptors, threads and in-flight gauges.

    python3 scripts/soak/soak.py [--minutes 30] [--kill-every 180] [--bin-dir target/release]

Load (each on its own thread, paced): text and image chat requests, streams read to the end,
streams dropped after the first event (cancellations), bad input (malformed JSON, a broken
image, an oversized body), and a batch of lines through the files and batch API every few
minutes. Every `--kill-every` seconds one worker is SIGKILLed and restarted on its port 10 s
later. Every 10 s the gateway's RSS, open fds, threads and gauges (connections open, requests
in flight per worker, queue depth) are sampled.

Verdict (printed last, exit status 0 only if all hold):
- RSS drift < 10 % between the first and the last fifth of the samples after warm-up;
- once the load stops: fds and connections back to their pre-load baseline (+2), in-flight
  and queue gauges back to 0, within 30 s;
- 0 failed non-streaming requests, other than those sent while a worker was dead whose error
  says the retry budget was spent (counted apart);
- every batch completed, every line once.

Only 127.0.0.1. Needs httpx (tests/e2e/requirements.txt). Figures: docs/BENCHMARKS.md ("Soak").
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def png(w: int, h: int, seed: int) -> bytes:
    """A real RGB PNG of w×h (no dependencies: zlib and the format's four chunks)."""
    raw = b"".join(
        b"\x00" + b"".join(bytes(((x * 3 + seed) % 256, (y * 5) % 256, seed % 256)) for x in range(w))
        for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class Proc:
    def __init__(self, argv: list[str], log: Path):
        self.argv, self.log = argv, log
        self.p: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        self.p = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True)
        line = self.p.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            raise SystemExit(f"{self.argv[0]} did not start: {line!r}")
        self.port = int(m.group(1))
        threading.Thread(target=lambda: [None for _ in self.p.stdout], daemon=True).start()

    def kill(self) -> None:
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.failures: list[str] = []

    def add(self, key: str, failure: str | None = None) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            if failure and len(self.failures) < 50:
                self.failures.append(failure)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--kill-every", type=float, default=180)
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    ap.add_argument("--rate", type=float, default=40, help="requests per second, all kinds together")
    args = ap.parse_args()
    bins = Path(args.bin_dir)
    tmp = Path(tempfile.mkdtemp(prefix="caprl-soak-"))
    workers = []
    for i in range(3):
        w = Proc([str(bins / "caprl-fake-worker"), "--port", "0", "--tokens-per-sec", "200"], tmp / f"worker{i}.log")
        w.start()
        w.argv[2] = str(w.port)  # restarts reuse the port
        workers.append(w)
    gw_argv = [str(bins / "caprl-gateway"), "serve", "--host", "127.0.0.1", "--port", "0",
               "--data-dir", str(tmp / "data"), "--health-interval-secs", "1"]
    for w in workers:
        gw_argv += ["--worker", f"http://127.0.0.1:{w.port}"]
    gw = Proc(gw_argv, tmp / "gateway.log")
    gw.start()
    base = f"http://127.0.0.1:{gw.port}"
    pid = gw.p.pid
    http = httpx.Client(timeout=30)
    for _ in range(200):
        if http.get(f"{base}/ready").status_code == 200:
            break
        time.sleep(0.05)

    def sample() -> dict:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) // 1024
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        text = http.get(f"{base}/metrics").text
        def total(name: str) -> float:
            return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                       if l.startswith(name) and not l.startswith("#") and (l[len(name)] in " {"))
        return {"t": time.monotonic(), "rss_mib": rss, "fds": fds, "threads": threads,
                "conns": total("caprl_gateway_connections_open"),
                "in_flight": total("caprl_gateway_worker_in_flight"),
                "queued": total("caprl_gateway_queue_depth") + total("caprl_gateway_bulk_queue_depth")}

    baseline = sample()
    stats = Stats()
    stop = threading.Event()
    dead_since: list[float] = []  # times a worker went down, for failures sent meanwhile
    img = base64.b64encode(png(64, 48, 3)).decode()
    text_body = {"model": "caprl", "max_tokens": 16, "messages": [{"role": "user", "content": "Describe a kite."}]}
    image_body = {"model": "caprl", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image;base64,{img}"}},
        {"type": "text", "text": "Please describe the image in detail."}]}]}

    def near_a_kill() -> bool:
        return any(0 <= time.monotonic() - t < 15 for t in dead_since)

    def loop(kind: str, every: float, fn) -> None:
        c = httpx.Client(timeout=30)
        nxt = time.monotonic()
        while not stop.is_set():
            try:
                fn(c)
            except Exception as e:  # noqa: BLE001 - every failure is counted, not raised
                stats.add(f"{kind}:exception", f"{kind}: {type(e).__name__}: {e}")
            nxt += every
            time.sleep(max(0.0, nxt - time.monotonic()))

    def plain(body):
        def go(c):
            r = c.post(f"{base}/v1/chat/completions", json=body)
            if r.status_code == 200:
                stats.add("plain:ok")
            elif near_a_kill() and r.status_code in (502, 503, 504):
                stats.add("plain:during-kill")
            else:
                stats.add("plain:failed", f"{r.status_code} {r.text[:200]}")
        return go

    def streamed(c):
        with c.stream("POST", f"{base}/v1/chat/completions", json={**text_body, "stream": True}) as r:
            body = "".join(r.iter_text())
        ok = r.status_code == 200 and body.rstrip().endswith("data: [DONE]")
        stats.add("stream:ok" if ok else "stream:broken")

    def cancelled(c):
        with c.stream("POST", f"{base}/v1/chat/completions", json={**text_body, "stream": True, "max_tokens": 200}) as r:
            for _ in r.iter_bytes():
                break
        stats.add("cancel:done")

    def bad(c):
        cases = [(b"{not json", 400), (json.dumps({**image_body, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}).encode(), 400)]
        for body, want in cases:
            r = c.post(f"{base}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            ok = r.status_code == want and "error" in r.json()
            stats.add("bad:answered" if ok else "bad:wrong", None if ok else f"bad input got {r.status_code}")

    batches: list[tuple[str, int]] = []

    def bulk(c):
        n = 200
        lines = "".join(json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": text_body}) + "\n" for i in range(n))
        f = c.post(f"{base}/v1/files", files={"file": ("b.jsonl", lines.encode())}, data={"purpose": "batch"}).json()
        b = c.post(f"{base}/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"}).json()
        batches.append((b["id"], n))
        stats.add("bulk:created")

    r = args.rate
    plans = [("text", 1 / (r * 0.35), plain(text_body)), ("image", 1 / (r * 0.25), plain(image_body)),
             ("stream", 1 / (r * 0.2), streamed), ("cancel", 1 / (r * 0.1), cancelled),
             ("bad", 1 / (r * 0.1), bad), ("bulk", 120.0, bulk)]
    threads = [threading.Thread(target=loop, args=p, daemon=True) for p in plans]
    for t in threads:
        t.start()

    samples = [sample()]
    started = time.monotonic()
    end = started + args.minutes * 60
    next_kill = started + args.kill_every
    victim = 0
    restart_at = None
    print(f"soak: {args.minutes} min, rate {args.rate}/s, kill every {args.kill_every}s; logs in {tmp}", flush=True)
    print(f"{'min':>5} {'rss MiB':>8} {'fds':>5} {'thr':>4} {'conns':>6} {'inflight':>8} {'queued':>6}", flush=True)
    while time.monotonic() < end:
        time.sleep(10)
        now = time.monotonic()
        if restart_at is None and now >= next_kill:
            workers[victim].kill()
            dead_since.append(now)
            restart_at = now + 10
        elif restart_at is not None and now >= restart_at:
            workers[victim].start()
            victim = (victim + 1) % 3
            restart_at = None
            next_kill = now + args.kill_every
        s = sample()
        samples.append(s)
        print(f"{(s['t'] - started) / 60:5.1f} {s['rss_mib']:8d} {s['fds']:5d} {s['threads']:4d} "
              f"{s['conns']:6.0f} {s['in_flight']:8.0f} {s['queued']:6.0f}", flush=True)
    stop.set()
    for t in threads:
        t.join(60)
    if restart_at is not None:
        workers[victim].start()

    # Batches: every one completes, every line once.
    batch_ok = True
    for bid, n in batches:
        for _ in range(600):
            b = http.get(f"{base}/v1/batches/{bid}").json()
            if b["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            time.sleep(0.5)
        out = http.get(f"{base}/v1/files/{b['output_file_id']}/content").text if b.get("output_file_id") else ""
        ids = [json.loads(l)["custom_id"] for l in out.splitlines() if l.strip()]
        if b["status"] != "completed" or sorted(ids) != sorted(f"l{i}" for i in range(n)):
            batch_ok = False
            print(f"batch {bid}: {b['status']}, {len(ids)} lines out of {n}, {len(set(ids))} distinct")

    quiet = None
    for _ in range(30):
        q = sample()
        if (q["fds"] <= baseline["fds"] + 2 and q["conns"] <= baseline["conns"] + 1
                and q["in_flight"] == 0 and q["queued"] == 0):
            quiet = q
            break
        time.sleep(1)
    warm = samples[max(1, len(samples) // 5):]
    fifth = max(1, len(warm) // 5)
    early = sum(s["rss_mib"] for s in warm[:fifth]) / fifth
    late = sum(s["rss_mib"] for s in warm[-fifth:]) / fifth
    drift = (late - early) / early * 100 if early else 0.0
    failed = stats.counts.get("plain:failed", 0) + stats.counts.get("plain:exception", 0)
    print("\ncounts:", json.dumps(dict(sorted(stats.counts.items()))))
    for f in stats.failures[:10]:
        print("  failure:", f)
    final = quiet or sample()
    print(f"baseline: rss {baseline['rss_mib']} MiB, fds {baseline['fds']}; end: rss {final['rss_mib']} MiB, "
          f"fds {final['fds']}, conns {final['conns']:.0f}, in flight {final['in_flight']:.0f}, queued {final['queued']:.0f}")
    checks = {
        f"RSS drift {drift:+.1f} % (early {early:.0f} MiB, late {late:.0f} MiB) < 10 %": abs(drift) < 10,
        "fds, connections and gauges back to baseline": quiet is not None,
        f"failed non-streaming requests: {failed}": failed == 0,
        f"batches complete, every line once ({len(batches)})": batch_ok,
    }
    for what, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    gw.kill()
    for w in workers:
        w.kill()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
