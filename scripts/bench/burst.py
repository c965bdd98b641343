#!/usr/bin/env python3
"""Memory after connection bursts: does the gateway's RSS come back once hostile clients leave?

For each variant (a gateway binary plus environment, e.g. another allocator or malloc
settings), start a fake worker and a fresh release gateway in front of it, warm up with a few
complete requests, record the baseline RSS (VmRSS of /proc/PID/status), then run --rounds
rounds of one burst each:

  1. open --connections connections to the gateway at once, each doing one of what a hostile
     client does (--mix): a half-sent request head that stalls ("head"), a head declaring a
     1 MB body followed by only part of it ("slow"), a complete small text request ("small"),
     a complete ~1 MB image request ("image");
  2. hold them all open --hold-s seconds once every one has done its part (sampling RSS every
     --sample-ms for the peak), then close them all;
  3. sample RSS and the open file descriptors at --after-s seconds (default 0 5 10 15) after
     the last one closed.

Prints one markdown table per variant (baseline, peak, RSS at each sample, +15 s against the
baseline) and a summary across variants; --json writes everything raw.

Only 127.0.0.1 is ever a target. Bounded: the connection count is capped (MAX_CONNECTIONS),
every socket operation has a timeout (IO_TIMEOUT_S), every round has a deadline
(ROUND_DEADLINE_S), and the processes it starts are stopped on the way out.

    burst.py --fake-worker BIN --bodies DIR \
        --variant glibc=target/release/caprl-gateway \
        --variant 'glibc-arena2=target/release/caprl-gateway MALLOC_ARENA_MAX=2' \
        [--connections 1400] [--rounds 4]

A variant is 'LABEL=BINARY [NAME=VALUE ...]' (one argument, words separated by spaces); the
values are set in that gateway's environment only. burst.sh builds the binaries and the bodies and runs this.
"""
import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request

# A burst is meant to be large, not unbounded: each connection is a socket here and two
# (client side, upstream) in the gateway.
MAX_CONNECTIONS = 5000
# No socket operation (connect, send, a response) may take longer than this.
IO_TIMEOUT_S = 30.0
# A round (connect, act, hold, close) that takes longer is abandoned and reported.
ROUND_DEADLINE_S = 120.0
KINDS = ("head", "slow", "small", "image")
PATH = "/v1/chat/completions"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(url: str, proc: subprocess.Popen, limit_s: float = 30.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
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


def start_fake_worker(binary: str, log_path: str) -> tuple[subprocess.Popen, int]:
    """`caprl-fake-worker --port 0` prints `listening on ADDR` first; read the port from it."""
    logf = open(log_path, "ab")
    p = subprocess.Popen([binary, "--port", "0", "--threads", "1"], stdout=subprocess.PIPE,
                         stderr=logf)
    line = p.stdout.readline().decode().strip()  # the first line, printed once bound
    if not line.startswith("listening on "):
        stop(p)
        raise RuntimeError(f"fake worker said {line!r}")
    port = int(line.rsplit(":", 1)[1])
    wait_ok(f"http://127.0.0.1:{port}/health", p)
    return p, port


def start_gateway(binary: str, env_extra: dict, worker_port: int, log_path: str):
    port = free_port()
    args = [binary, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--worker", f"http://127.0.0.1:{worker_port}", "--shutdown-grace-secs", "1"]
    env = dict(os.environ, RUST_LOG="warn", **env_extra)
    p = subprocess.Popen(args, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)
    wait_ok(f"http://127.0.0.1:{port}/ready", p)
    return p, port


def head(body_len: int) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {body_len}\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); return its status."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        for _ in range(100_000):  # chunks of a small response; bounded all the same
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def client(kind: str, port: int, bodies: dict, ready: asyncio.Event,
                 release: asyncio.Event, stats: dict, rng: random.Random):
    """One hostile connection: do `kind`'s part, say so, wait for `release`, close."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT_S)
        if kind == "head":
            h = head(len(bodies["image"]))
            await send(writer, h[: rng.randrange(16, len(h) - 4)])
        elif kind == "slow":
            body = bodies["image"]
            await send(writer, head(len(body)))
            sent = rng.randrange(len(body) // 8, len(body) * 7 // 8)
            step = 64 * 1024
            for off in range(0, sent, step):  # a slow body: pieces with pauses
                await send(writer, body[off:min(off + step, sent)])
                await asyncio.sleep(0.01)
        else:
            body = bodies["text" if kind == "small" else "image"]
            await send(writer, head(len(body)) + body)
            status = await asyncio.wait_for(read_response(reader), IO_TIMEOUT_S)
            stats["status"][str(status)] = stats["status"].get(str(status), 0) + 1
        stats["done"][kind] += 1
    except Exception as e:  # counted and reported: a refused or reset connection is data too
        stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
    finally:
        ready.set()
    try:
        await release.wait()
    finally:
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except Exception:
                pass


async def send(writer: asyncio.StreamWriter, data: bytes):
    writer.write(data)
    await asyncio.wait_for(writer.drain(), IO_TIMEOUT_S)


async def burst(port: int, pid: int, a, bodies: dict, rng: random.Random) -> dict:
    kinds = rng.choices(KINDS, weights=a.mix, k=a.connections)
    stats = {"kinds": {k: kinds.count(k) for k in KINDS}, "done": {k: 0 for k in KINDS},
             "status": {}, "errors": {}}
    release = asyncio.Event()
    readies = [asyncio.Event() for _ in kinds]
    peak = [status_kb(pid, "VmRSS")]
    sampling = True

    async def sampler():
        while sampling:
            peak[0] = max(peak[0], status_kb(pid, "VmRSS"))
            await asyncio.sleep(a.sample_ms / 1000)

    t0 = time.monotonic()
    sample_task = asyncio.create_task(sampler())
    # Each client draws from its own generator, seeded in order, so what each one does does not
    # depend on how the event loop interleaves them.
    tasks = [asyncio.create_task(client(k, port, bodies, r, release, stats,
                                        random.Random(rng.getrandbits(32))))
             for k, r in zip(kinds, readies)]
    try:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), ROUND_DEADLINE_S)
        stats["all_acted_s"] = time.monotonic() - t0
        stats["open_fds_held"] = open_fds(pid)
        await asyncio.sleep(a.hold_s)
    except asyncio.TimeoutError:
        stats["deadline_hit"] = True
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), ROUND_DEADLINE_S)
        sampling = False
        await sample_task
    stats["peak_kb"] = peak[0]
    stats["burst_s"] = time.monotonic() - t0
    return stats


def warm_up(port: int, bodies: dict, n_small: int, n_image: int):
    for i in range(n_small + n_image):
        data = bodies["text" if i < n_small else "image"]
        req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=IO_TIMEOUT_S) as r:
            r.read()


def run_variant(label: str, binary: str, env: dict, a, bodies: dict) -> dict:
    wproc, wport = start_fake_worker(a.fake_worker, os.path.join(a.log_dir, f"worker-{label}.log"))
    gproc = None
    try:
        gproc, gport = start_gateway(binary, env, wport, os.path.join(a.log_dir, f"gateway-{label}.log"))
        pid = gproc.pid
        warm_up(gport, bodies, a.warmup_small, a.warmup_image)
        time.sleep(a.settle_s)
        base = {"rss_kb": status_kb(pid, "VmRSS"), "fds": open_fds(pid)}
        log(f"[{label}] baseline {base['rss_kb'] / 1024:.1f} MiB, {base['fds']} fds")
        rng = random.Random(a.seed)  # the same sequence of clients for every variant
        rounds = []
        for rnd in range(1, a.rounds + 1):
            stats = asyncio.run(burst(gport, pid, a, bodies, rng))
            closed = time.monotonic()
            samples = []
            for at in a.after_s:
                time.sleep(max(0.0, closed + at - time.monotonic()))
                samples.append({"at_s": at, "rss_kb": status_kb(pid, "VmRSS"),
                                "fds": open_fds(pid)})
            if gproc.poll() is not None:
                raise RuntimeError(f"[{label}] gateway exited with {gproc.returncode}")
            rounds.append({"round": rnd, **stats, "after": samples})
            log(f"[{label}] round {rnd}: peak {stats['peak_kb'] / 1024:.1f} MiB, after "
                + ", ".join(f"+{s['at_s']:g}s {s['rss_kb'] / 1024:.1f}" for s in samples)
                + f" MiB; fds {samples[-1]['fds']}; done {stats['done']}, "
                f"errors {stats['errors']}, statuses {stats['status']}")
        return {"label": label, "binary": binary, "env": env, "baseline": base,
                "rounds": rounds, "hwm_kb": status_kb(pid, "VmHWM")}
    finally:
        if gproc is not None:
            stop(gproc)
        stop(wproc)


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def tables(results: list, after_s: list) -> str:
    out = []
    for r in results:
        env = ", ".join(f"`{k}={v}`" for k, v in r["env"].items()) or "—"
        b = r["baseline"]["rss_kb"]
        out.append(f"**{r['label']}** (env: {env}); baseline {mib(b)} MiB, "
                   f"{r['baseline']['fds']} fds; peak over the run (VmHWM) {mib(r['hwm_kb'])} MiB")
        out.append("")
        out.append("| round | peak MiB | " + " | ".join(f"+{s:g} s MiB" for s in after_s)
                   + f" | +{after_s[-1]:g} s vs baseline | fds +{after_s[-1]:g} s | ok / errors |")
        out.append("|" + "---|" * (len(after_s) + 5))
        for rd in r["rounds"]:
            last = rd["after"][-1]
            ok = sum(rd["done"].values())
            errs = sum(rd["errors"].values())
            out.append(f"| {rd['round']} | {mib(rd['peak_kb'])} | "
                       + " | ".join(mib(s["rss_kb"]) for s in rd["after"])
                       + f" | {last['rss_kb'] / b - 1:+.0%} | {last['fds']} | {ok} / {errs} |")
        out.append("")
    out.append(f"| variant | baseline MiB | max peak MiB | round 1 +{after_s[-1]:g} s "
               f"| last round +{after_s[-1]:g} s | last vs baseline |")
    out.append("|---|---|---|---|---|---|")
    for r in results:
        b = r["baseline"]["rss_kb"]
        first, last = r["rounds"][0]["after"][-1]["rss_kb"], r["rounds"][-1]["after"][-1]["rss_kb"]
        out.append(f"| {r['label']} | {mib(b)} | {mib(max(x['peak_kb'] for x in r['rounds']))} "
                   f"| {mib(first)} | {mib(last)} | {last / b - 1:+.0%} |")
    return "\n".join(out)


def parse_variant(s: str):
    """`LABEL=BINARY [NAME=VALUE ...]`: whitespace-separated, since malloc settings use `,` and `:`."""
    words = s.split()
    label, _, binary = words[0].partition("=") if words else ("", "", "")
    try:
        env = dict(w.split("=", 1) for w in words[1:])
    except ValueError:
        env = None
    if not label or not binary or env is None:
        raise argparse.ArgumentTypeError(f"expected 'LABEL=BINARY [NAME=VALUE ...]', got {s!r}")
    return label, binary, env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fake-worker")
    ap.add_argument("--bodies", help="make_bodies.py's output directory")
    ap.add_argument("--variant", action="append", type=parse_variant, default=[])
    ap.add_argument("--connections", type=int, default=1400)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--mix", type=float, nargs=4, default=[0.3, 0.25, 0.3, 0.15],
                    metavar=("HEAD", "SLOW", "SMALL", "IMAGE"),
                    help="relative weights of the client kinds")
    ap.add_argument("--hold-s", type=float, default=1.0)
    ap.add_argument("--after-s", type=float, nargs="+", default=[0, 5, 10, 15])
    ap.add_argument("--sample-ms", type=int, default=100)
    ap.add_argument("--warmup-small", type=int, default=20)
    ap.add_argument("--warmup-image", type=int, default=5)
    ap.add_argument("--settle-s", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--log-dir", default="target/bench-burst/logs")
    ap.add_argument("--json")
    ap.add_argument("--from-json", help="only print the tables of an earlier --json")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            d = json.load(f)
        print(tables(d["results"], d["args"]["after_s"]))
        return
    if not (a.fake_worker and a.bodies and a.variant):
        ap.error("--fake-worker, --bodies and at least one --variant are required")
    if not 1 <= a.connections <= MAX_CONNECTIONS:
        ap.error(f"--connections must be in 1..={MAX_CONNECTIONS}")
    if not 1 <= a.rounds <= 10 or max(a.after_s) > 120 or a.hold_s > 30:
        ap.error("keep it short: at most 10 rounds, samples within 120 s, hold within 30 s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:  # the gateway inherits it: a client and an upstream socket per connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2 * a.connections + 256:
        ap.error("the open-file limit is too low for that many connections")
    os.makedirs(a.log_dir, exist_ok=True)
    bodies = {}
    for key, name in (("text", "text-whole.json"), ("image", "img1m-whole.json")):
        with open(os.path.join(a.bodies, name), "rb") as f:
            bodies[key] = f.read()
    log(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {a.connections} "
        f"connections x {a.rounds} rounds, mix {dict(zip(KINDS, a.mix))}")
    results = [run_variant(label, binary, env, a, bodies) for label, binary, env in a.variant]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "args": vars(a)}, f, indent=1, default=str)
    print(tables(results, a.after_s))


if __name__ == "__main__":
    main()
