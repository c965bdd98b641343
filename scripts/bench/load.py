#!/usr/bin/env python3
"""Load benchmark of the gateway in front of the fake worker, driven by wrk (see load.sh).

For each body {text, 64 KiB image, 1 MiB image} x {whole, stream} x concurrency, run wrk for a
fixed time directly against a fake worker and then against a freshly started gateway in front
of the same worker, and report requests/s, p50, p99 of both, the ratio, the added p50, the
gateway's CPU time per request (utime+stime delta of /proc/PID/stat / requests) and its peak
RSS (VmHWM; one gateway process per case, so the peak is that case's). With --peer, the same
run is repeated through vllm-router (PyPI `vllm-router`, a Rust router, started fresh per case
in front of the same worker), so each row carries the gateway's CPU as a ratio of the peer's
measured minutes apart on the same machine. Then the pool
scenario: three fake workers with --latency-ms 20 behind one gateway, text requests from
--pool-connections connections.

Only 127.0.0.1 is ever a target; every loop is bounded in count and time.
Prints markdown tables and writes everything raw as JSON (--json).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
CASES = ["text", "img64k", "img1m"]
CASE_LABEL = {"text": "text", "img64k": "64 KB image", "img1m": "1 MB image"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def http_get(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_ok(url: str, proc: subprocess.Popen, limit_s: float = 30.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if http_get(url, 1.0)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {limit_s}s")


def stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Runner:
    def __init__(self, a):
        self.a = a
        self.procs = []
        self.next_port = a.base_port

    def port(self) -> int:
        self.next_port += 1
        return self.next_port

    def spawn(self, args, env=None, name="proc"):
        logf = open(os.path.join(self.a.log_dir, f"{name}.log"), "ab")
        p = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def worker(self, latency_ms: int = 0):
        port = self.port()
        args = [self.a.fake_worker, "--port", str(port), "--threads", "1"]
        if latency_ms:
            args += ["--latency-ms", str(latency_ms)]
        p = self.spawn(args, name=f"worker-{port}")
        wait_ok(f"http://127.0.0.1:{port}/health", p)
        return p, port

    def gateway(self, worker_ports):
        port = self.port()
        args = [self.a.gateway, "serve", "--host", "127.0.0.1", "--port", str(port)]
        for wp in worker_ports:
            args += ["--worker", f"http://127.0.0.1:{wp}"]
        args += ["--shutdown-grace-secs", "1"]
        env = dict(os.environ, RUST_LOG="warn")
        p = self.spawn(args, env=env, name=f"gateway-{port}")
        wait_ok(f"http://127.0.0.1:{port}/ready", p)
        return p, port

    def wrk(self, port: int, body: str, conns: int, duration: int, watch=()):
        """Run wrk; return its RESULT plus the CPU ticks each watched pid spent meanwhile."""
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        args = [
            self.a.wrk, f"-t{min(self.a.wrk_threads, conns)}", f"-c{conns}", f"-d{duration}s",
            "--timeout", "30s", "-s", os.path.join(HERE, "post.lua"), url,
        ]
        env = dict(os.environ, BODY_FILE=os.path.join(self.a.bodies, f"{body}.json"))
        before = {pid: cpu_ticks(pid) for pid in watch}
        out = subprocess.run(args, env=env, capture_output=True, text=True,
                             timeout=duration + 60)
        after = {pid: cpu_ticks(pid) for pid in watch}
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
        r = json.loads(line[-1][7:])
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = sum(r[k] for k in r if k.startswith("err_"))
        r["cpu_s"] = {pid: (after[pid] - before[pid]) / CLK_TCK for pid in watch}
        return r

    def peer(self, worker_ports):
        """vllm-router in front of the same workers: the peer each row is compared with."""
        port = self.port()
        args = [self.a.peer, "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
                *[f"http://127.0.0.1:{wp}" for wp in worker_ports],
                "--log-level", "warning", "--max-payload-size", str(64 << 20),
                "--max-concurrent-requests", "4096", "--queue-size", "4096",
                "--disable-retries", "--disable-circuit-breaker"]
        p = self.spawn(args, name=f"peer-{port}")
        wait_ok(f"http://127.0.0.1:{port}/health", p, limit_s=60.0)
        return p, port

    def close(self):
        for p in self.procs:
            stop(p)


def worker_requests(port: int) -> int:
    return json.loads(http_get(f"http://127.0.0.1:{port}/stats")[1])["requests"]


def max_tokens(bodies: str, body: str) -> int:
    with open(os.path.join(bodies, f"{body}.json")) as f:
        return int(json.load(f).get("max_tokens", 16))


def ms(us):
    return f"{us / 1000:.2f}"


def through(run: Runner, proc, port, wproc, wport, body, conns):
    """One wrk run through a freshly started proxy (the gateway or the peer), which is stopped
    after: wrk's result with the CPU of proxy and worker, the requests the worker saw, and the
    proxy's peak RSS."""
    try:
        seen0 = worker_requests(wport)
        r = run.wrk(port, body, conns, run.a.duration, watch=[proc.pid, wproc.pid])
        return r, worker_requests(wport) - seen0, status_kb(proc.pid, "VmHWM")
    finally:
        stop(proc)


def matrix(run: Runner, a):
    rows = []
    wproc, wport = run.worker()
    try:
        for case in a.cases:
            for mode in ("whole", "stream"):
                for conns in a.concurrency:
                    body = f"{case}-{mode}"
                    log(f"== {body} c={conns}")
                    direct = run.wrk(wport, body, conns, a.duration, watch=[wproc.pid])
                    gproc, gport = run.gateway([wport])
                    rss_idle = status_kb(gproc.pid, "VmRSS")
                    via, seen, hwm = through(run, gproc, gport, wproc, wport, body, conns)
                    gw_cpu = via["cpu_s"][gproc.pid]
                    peer = None
                    if a.peer:
                        pproc, pport = run.peer([wport])
                        pr, pseen, phwm = through(run, pproc, pport, wproc, wport, body, conns)
                        peer = {"run": pr, "worker_saw": pseen, "hwm_kb": phwm,
                                "cpu_us_per_req":
                                    pr["cpu_s"][pproc.pid] / max(pr["requests"], 1) * 1e6}
                    row = {
                        "case": case, "mode": mode, "conns": conns,
                        "direct": direct, "gateway": via,
                        "worker_saw": seen,
                        "gw_cpu_us_per_req": gw_cpu / max(via["requests"], 1) * 1e6,
                        # Requests still in flight when wrk stops cost CPU too; per request
                        # the worker saw is the fairer figure when few requests complete.
                        "gw_cpu_us_per_fwd": gw_cpu / max(seen, 1) * 1e6,
                        "worker_cpu_us_per_req_direct":
                            direct["cpu_s"][wproc.pid] / max(direct["requests"], 1) * 1e6,
                        "gw_rss_idle_kb": rss_idle, "gw_hwm_kb": hwm,
                        "peer": peer, "max_tokens": max_tokens(a.bodies, body),
                    }
                    log(f"   direct {direct['rps']:.0f} rps p50 {ms(direct['p50_us'])} ms | "
                        f"gateway {via['rps']:.0f} rps p50 {ms(via['p50_us'])} ms, "
                        f"{row['gw_cpu_us_per_req']:.0f} us CPU/req, HWM {hwm / 1024:.0f} MiB, "
                        f"errors {direct['errors']}/{via['errors']}")
                    rows.append(row)
    finally:
        stop(wproc)
    return rows


def pool(run: Runner, a):
    workers = [run.worker(latency_ms=a.pool_latency_ms) for _ in range(3)]
    ports = [p for _, p in workers]
    gproc, gport = run.gateway(ports)
    try:
        seen0 = [worker_requests(p) for p in ports]
        body = "text-whole"
        log(f"== pool: 3 workers x {a.pool_latency_ms} ms, c={a.pool_connections}")
        r = run.wrk(gport, body, a.pool_connections, a.duration, watch=[gproc.pid])
        seen = [worker_requests(p) - s for p, s in zip(ports, seen0)]
        hwm = status_kb(gproc.pid, "VmHWM")
    finally:
        stop(gproc)
        for p, _ in workers:
            stop(p)
    return {
        "conns": a.pool_connections, "latency_ms": a.pool_latency_ms, "gateway": r,
        "per_worker": seen, "gw_hwm_kb": hwm,
        "gw_cpu_us_per_req": r["cpu_s"][gproc.pid] / max(r["requests"], 1) * 1e6,
    }


def tables(rows, pool_row, targets):
    out = []
    out.append("| case | mode | conc | direct req/s | gateway req/s | ratio | direct p50 ms "
               "| gateway p50 ms | added p50 ms | direct p99 ms | gateway p99 ms "
               "| gw CPU µs/req (done / fwd) | target µs | gw peak RSS MiB | errors d/g |")
    out.append("|" + "---|" * 15)
    for r in rows:
        d, g = r["direct"], r["gateway"]
        t = targets.get(r["case"], "")
        out.append(
            f"| {CASE_LABEL[r['case']]} | {r['mode']} | {r['conns']} | {d['rps']:.0f} "
            f"| {g['rps']:.0f} | {g['rps'] / max(d['rps'], 1e-9):.2f} | {ms(d['p50_us'])} "
            f"| {ms(g['p50_us'])} | {ms(g['p50_us'] - d['p50_us'])} | {ms(d['p99_us'])} "
            f"| {ms(g['p99_us'])} | {r['gw_cpu_us_per_req']:.0f} / "
            f"{r.get('gw_cpu_us_per_fwd', float('nan')):.0f} | {t} "
            f"| {r['gw_hwm_kb'] / 1024:.0f} | {d['errors']}/{g['errors']} |")
    peered = [r for r in rows if r.get("peer")]
    if peered:
        out.append("")
        out.append("| case | mode | conc | gateway req/s | vllm-router req/s | gateway CPU µs/req "
                   "| vllm-router CPU µs/req | CPU ratio gw/router | gateway p50 ms "
                   "| vllm-router p50 ms | gw peak RSS MiB | router peak RSS MiB | errors gw/router |")
        out.append("|" + "---|" * 13)
        for r in peered:
            g, p = r["gateway"], r["peer"]
            out.append(
                f"| {CASE_LABEL[r['case']]} | {r['mode']} | {r['conns']} | {g['rps']:.0f} "
                f"| {p['run']['rps']:.0f} | {r['gw_cpu_us_per_req']:.0f} "
                f"| {p['cpu_us_per_req']:.0f} "
                f"| {r['gw_cpu_us_per_req'] / max(p['cpu_us_per_req'], 1e-9):.2f} "
                f"| {ms(g['p50_us'])} | {ms(p['run']['p50_us'])} | {r['gw_hwm_kb'] / 1024:.0f} "
                f"| {p['hwm_kb'] / 1024:.0f} | {g['errors']}/{p['run']['errors']} |")
        # CPU per streamed token: what a streamed request costs over the same request whole,
        # divided by the tokens (SSE events) it relays.
        per_token = []
        for r in peered:
            if r["mode"] != "stream":
                continue
            whole = next((w for w in peered if w["mode"] == "whole" and w["case"] == r["case"]
                          and w["conns"] == r["conns"]), None)
            if whole is None:
                continue
            n = max(r["max_tokens"], 1)
            gw = (r["gw_cpu_us_per_req"] - whole["gw_cpu_us_per_req"]) / n
            pe = (r["peer"]["cpu_us_per_req"] - whole["peer"]["cpu_us_per_req"]) / n
            per_token.append(
                f"| {CASE_LABEL[r['case']]} | {r['conns']} | {n} | {gw:.1f} | {pe:.1f} "
                f"| {gw / pe if pe > 0 else float('nan'):.2f} "
                f"| {ms(r['gateway']['p50_us'] - whole['gateway']['p50_us'])} "
                f"| {ms(r['peer']['run']['p50_us'] - whole['peer']['run']['p50_us'])} |")
        if per_token:
            out.append("")
            out.append("| streamed | conc | tokens/req | gateway CPU µs/token | vllm-router CPU "
                       "µs/token | ratio | gateway stream−whole p50 ms "
                       "| router stream−whole p50 ms |")
            out.append("|" + "---|" * 8)
            out.extend(per_token)
    if pool_row:
        g = pool_row["gateway"]
        total = max(sum(pool_row["per_worker"]), 1)
        spread = " / ".join(f"{n} ({n / total:.0%})" for n in pool_row["per_worker"])
        out.append("")
        out.append("| pool | conc | req/s | p50 ms | p99 ms | per worker (requests) "
                   "| gw CPU µs/req | gw peak RSS MiB | errors |")
        out.append("|" + "---|" * 9)
        out.append(
            f"| 3 × fake worker, {pool_row['latency_ms']} ms | {pool_row['conns']} "
            f"| {g['rps']:.0f} | {ms(g['p50_us'])} | {ms(g['p99_us'])} | {spread} "
            f"| {pool_row['gw_cpu_us_per_req']:.0f} | {pool_row['gw_hwm_kb'] / 1024:.0f} "
            f"| {g['errors']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway")
    ap.add_argument("--fake-worker")
    ap.add_argument("--from-json", help="only print the tables of an earlier results.json")
    ap.add_argument("--wrk", default="wrk")
    ap.add_argument("--bodies")
    ap.add_argument("--log-dir")
    ap.add_argument("--json")
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--pool-connections", type=int, default=1000)
    ap.add_argument("--pool-latency-ms", type=int, default=20)
    ap.add_argument("--peer", help="vllm-router launcher: run every case through it too")
    ap.add_argument("--no-matrix", action="store_true")
    ap.add_argument("--no-pool", action="store_true")
    ap.add_argument("--base-port", type=int, default=18600)
    a = ap.parse_args()
    targets = {"text": "≤30", "img64k": "≤100", "img1m": "≤900"}
    if a.from_json:
        with open(a.from_json) as f:
            d = json.load(f)
        for r in d["rows"]:
            if "gw_cpu_us_per_fwd" not in r:
                cpu = float(next(iter(r["gateway"]["cpu_s"].values())))
                r["gw_cpu_us_per_fwd"] = cpu / max(r["worker_saw"], 1) * 1e6
        print(tables(d["rows"], d["pool"], targets))
        return
    for need in ("gateway", "fake_worker", "bodies", "log_dir", "json"):
        if not getattr(a, need):
            ap.error(f"--{need.replace('_', '-')} is required")
    assert 1 <= a.duration <= 60, "keep runs short"
    os.makedirs(a.log_dir, exist_ok=True)
    run = Runner(a)
    rows, pool_row = [], None
    try:
        if not a.no_matrix:
            rows = matrix(run, a)
        if not a.no_pool:
            pool_row = pool(run, a)
    finally:
        run.close()
    with open(a.json, "w") as f:
        json.dump({"rows": rows, "pool": pool_row, "args": vars(a)}, f, indent=1, default=str)
    print(tables(rows, pool_row, targets))


if __name__ == "__main__":
    main()
