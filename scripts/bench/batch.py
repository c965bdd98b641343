#!/usr/bin/env python3
"""Batch runner benchmark: lines per second through the gateway's Batch API against a fake
worker, the gateway's CPU per line (against its CPU per interactive request, measured with wrk
in the same run: the peer), its memory over the run, and the time to resume a large batch
after a SIGKILL.

    batch.py --gateway BIN --fake-worker BIN --wrk BIN [--text-lines 100000] [--image-lines 20000]
             [--resume-lines 1000000] [--out DIR]

Cases:
  text     N lines of a short text request (max_tokens 16) with a worker that answers at once
  img64k   N lines, each with a ~64 KiB image data URL (checked by the gateway per line)
  resume   a batch of N tiny lines against a slow worker (1 s per request): validated, started,
           SIGKILLed, restarted; the time from the restart to `listening` and to the first
           request the worker sees again, and the lines re-sent

Only 127.0.0.1. Prints markdown tables; results.json in --out.
"""
import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_bodies import image_of_about  # noqa: E402
from load import CLK_TCK, cpu_ticks, status_kb  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def post_json(port: int, path: str, body: dict):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def upload(port: int, path: str) -> str:
    """Stream a file as a multipart upload (chunked), never whole in memory."""
    boundary = "caprlbenchboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def parts():
        yield head
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield tail

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/files", body=parts(), encode_chunked=True,
                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"upload: {r.status} {data[:300]!r}")
    return json.loads(data)["id"]


def wait_port(proc, log_path, limit_s=60.0) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with open(log_path, "rb") as f:
            for line in f.read().decode(errors="replace").splitlines():
                if line.startswith("listening on "):
                    return int(line.rsplit(":", 1)[1])
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args[0]} did not listen within {limit_s}s")


class Procs:
    def __init__(self, out):
        self.out, self.procs, self.n = out, [], 0

    def spawn(self, args, name, env=None):
        self.n += 1
        path = os.path.join(self.out, f"{self.n:02d}-{name}.log")
        p = subprocess.Popen(args, stdout=open(path, "wb"), stderr=subprocess.STDOUT,
                             env=dict(os.environ, RUST_LOG="warn", **(env or {})))
        self.procs.append(p)
        return p, wait_port(p, path)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)


def write_lines(path: str, n: int, content) -> int:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "caprl", "max_tokens": 16, "temperature": 0,
                         "messages": [{"role": "user", "content": content}]},
            }, separators=(",", ":")) + "\n")
    return os.path.getsize(path)


def run_batch(a, procs, case: str, n: int, content) -> dict:
    work = tempfile.mkdtemp(dir=a.out, prefix=f"{case}-")
    inp = os.path.join(work, "in.jsonl")
    size = write_lines(inp, n, content)
    _, wport = procs.spawn([a.fake_worker, "--port", "0", "--threads", "1"], f"worker-{case}")
    gw, gport = procs.spawn([a.gateway, "serve", "--host", "127.0.0.1", "--port", "0",
                             "--worker", f"http://127.0.0.1:{wport}", "--data-dir",
                             os.path.join(work, "data")], f"gateway-{case}")
    t0 = time.monotonic()
    fid = upload(gport, inp)
    upload_s = time.monotonic() - t0
    os.remove(inp)
    cpu0, t0 = cpu_ticks(gw.pid), time.monotonic()
    b = post_json(gport, "/v1/batches", {"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                         "completion_window": "24h"})
    rss, in_progress_at = [], None
    deadline = t0 + a.limit_s
    while time.monotonic() < deadline:
        b = get_json(gport, f"/v1/batches/{b['id']}")
        rss.append(status_kb(gw.pid, "VmRSS") / 1024)
        if in_progress_at is None and b["status"] == "in_progress":
            in_progress_at = time.monotonic()
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.25)
    wall = time.monotonic() - t0
    cpu = (cpu_ticks(gw.pid) - cpu0) / CLK_TCK
    if b["status"] != "completed" or b["request_counts"]["completed"] != n:
        raise RuntimeError(f"{case}: batch ended {b['status']} {b['request_counts']}")
    validate_s = (in_progress_at or t0) - t0
    run_s = wall - validate_s
    # The peer: the same request, interactive, through the same gateway, with wrk.
    body_path = os.path.join(work, "body.json")
    with open(body_path, "w") as f:
        json.dump({"model": "caprl", "max_tokens": 16, "temperature": 0,
                   "messages": [{"role": "user", "content": content}]}, f)
    c0 = cpu_ticks(gw.pid)
    out = subprocess.run([a.wrk, "-t1", "-c32", f"-d{a.wrk_s}s", "--timeout", "30s", "-s",
                          os.path.join(HERE, "post.lua"),
                          f"http://127.0.0.1:{gport}/v1/chat/completions"],
                         env=dict(os.environ, BODY_FILE=body_path), capture_output=True,
                         text=True, timeout=a.wrk_s + 60)
    wcpu = (cpu_ticks(gw.pid) - c0) / CLK_TCK
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    r = json.loads(line[-1][7:])
    rps = r["requests"] / (r["duration_us"] / 1e6)
    row = {
        "case": case, "lines": n, "input_mb": size / 2**20, "upload_s": upload_s,
        "validate_s": validate_s, "run_s": run_s, "lines_per_s": n / run_s,
        "cpu_us_per_line": cpu / n * 1e6, "interactive_rps": rps,
        "cpu_us_per_interactive": wcpu / max(r["requests"], 1) * 1e6,
        "rss_mb_min": min(rss), "rss_mb_max": max(rss), "rss_mb_last": rss[-1],
        "rss_samples": len(rss),
    }
    log(case, json.dumps(row))
    return row


def resume(a, procs, n: int) -> dict:
    work = tempfile.mkdtemp(dir=a.out, prefix="resume-")
    inp = os.path.join(work, "in.jsonl")
    write_lines(inp, n, "hi")
    data = os.path.join(work, "data")
    _, wport = procs.spawn([a.fake_worker, "--port", "0", "--latency-ms", "1000"], "worker-resume")
    args = [a.gateway, "serve", "--host", "127.0.0.1", "--port", "0", "--worker",
            f"http://127.0.0.1:{wport}", "--data-dir", data, "--max-in-flight", "64"]
    gw, gport = procs.spawn(args, "gateway-resume")
    fid = upload(gport, inp)
    os.remove(inp)
    t0 = time.monotonic()
    b = post_json(gport, "/v1/batches", {"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                         "completion_window": "24h"})
    deadline = t0 + a.limit_s
    while time.monotonic() < deadline:
        b = get_json(gport, f"/v1/batches/{b['id']}")
        if b["request_counts"]["completed"] >= 200:
            break
        time.sleep(0.1)
    validate_s = time.monotonic() - t0
    seen = get_json(wport, "/stats")["requests"]
    gw.send_signal(signal.SIGKILL)
    gw.wait(timeout=5)
    time.sleep(1.5)  # let the worker finish what it had; its count is then stable
    seen_at_kill = get_json(wport, "/stats")["requests"]
    t1 = time.monotonic()
    gw2, gport2 = procs.spawn(args, "gateway-resume-2")
    listening_s = time.monotonic() - t1
    first_s = None
    while time.monotonic() < t1 + 60:
        if get_json(wport, "/stats")["requests"] > seen_at_kill:
            first_s = time.monotonic() - t1
            break
        time.sleep(0.005)
    b2 = get_json(gport2, f"/v1/batches/{b['id']}")
    row = {"case": "resume", "lines": n, "validate_and_200_s": validate_s,
           "completed_at_kill": b["request_counts"]["completed"], "worker_seen_before_kill": seen,
           "completed_after_restart": b2["request_counts"]["completed"],
           "restart_to_listening_s": listening_s, "restart_to_first_line_s": first_s,
           "rss_mb_after_restart": status_kb(gw2.pid, "VmRSS") / 1024}
    log("resume", json.dumps(row))
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--fake-worker", required=True)
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--text-lines", type=int, default=100_000)
    p.add_argument("--image-lines", type=int, default=20_000)
    p.add_argument("--resume-lines", type=int, default=1_000_000)
    p.add_argument("--wrk-s", type=int, default=5)
    p.add_argument("--limit-s", type=float, default=900)
    p.add_argument("--out", default="target/bench-batch")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    a.out = os.path.abspath(a.out)
    procs = Procs(a.out)
    rows = []
    try:
        if a.text_lines:
            rows.append(run_batch(a, procs, "text", a.text_lines, "Describe a cat in one line."))
        if a.image_lines:
            kind, img = image_of_about(64 * 1024)
            url = f"data:image/{kind};base64,{base64.b64encode(img).decode()}"
            content = [{"type": "image_url", "image_url": {"url": url}},
                       {"type": "text", "text": "Please describe the image in detail."}]
            rows.append(run_batch(a, procs, "img64k", a.image_lines, content))
        if a.resume_lines:
            rows.append(resume(a, procs, a.resume_lines))
    finally:
        procs.close()
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("| case | lines | input | validation | run | lines/s | gateway CPU per line | "
          "per interactive request (wrk c=32) | ratio | RSS min / max / end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["case"] == "resume":
            continue
        print(f"| {r['case']} | {r['lines']:,} | {r['input_mb']:.0f} MiB | {r['validate_s']:.1f} s | "
              f"{r['run_s']:.1f} s | {r['lines_per_s']:,.0f} | {r['cpu_us_per_line']:.0f} µs | "
              f"{r['cpu_us_per_interactive']:.0f} µs | "
              f"{r['cpu_us_per_line'] / r['cpu_us_per_interactive']:.2f} | "
              f"{r['rss_mb_min']:.0f} / {r['rss_mb_max']:.0f} / {r['rss_mb_last']:.0f} MiB |")
    for r in rows:
        if r["case"] == "resume":
            print()
            print("| resume | lines | validated and 200 done | killed at (completed / worker saw) | "
                  "restart → listening | restart → first line sent | completed after restart |")
            print("|---|---|---|---|---|---|---|")
            first = r["restart_to_first_line_s"]
            first = f"{first * 1000:.0f} ms" if first is not None else "none in 60 s"
            print(f"| | {r['lines']:,} | {r['validate_and_200_s']:.1f} s | "
                  f"{r['completed_at_kill']} / {r['worker_seen_before_kill']} | "
                  f"{r['restart_to_listening_s'] * 1000:.0f} ms | {first} | "
                  f"{r['completed_after_restart']} |")


if __name__ == "__main__":
    main()
