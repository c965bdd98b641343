#!/usr/bin/env python3
"""Benchmark of `caprl-gateway caption`: images per second over a directory of small images,
against the fake worker through the gateway (and straight to the worker), and the command's own
CPU per image against the gateway's in the same run (the peer).

    caption.py --gateway BIN --fake-worker BIN [--images 10000] [--concurrency 32] [--out DIR]

Only 127.0.0.1. Prints a markdown table; results.json in --out.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from batch import Procs  # noqa: E402
from load import CLK_TCK, cpu_ticks  # noqa: E402
from make_bodies import png_stdlib  # noqa: E402


def make_images(root: str, n: int) -> int:
    os.makedirs(root, exist_ok=True)
    total = 0
    # A few distinct small PNGs, copied under n names in 100 folders (the command reads and
    # hashes each file; their content does not matter to it).
    samples = [png_stdlib(s) for s in (24, 32, 40, 48)]
    for i in range(n):
        d = os.path.join(root, f"{i // 100:03d}")
        os.makedirs(d, exist_ok=True)
        data = samples[i % len(samples)]
        with open(os.path.join(d, f"{i:06d}.png"), "wb") as f:
            f.write(data)
        total += len(data)
    return total


def run_caption(a, base_url: str, images: str, out: str, watch_pid: int | None):
    args = [a.gateway, "caption", images, "--base-url", base_url, "--model", "caprl",
            "--out", out, "--concurrency", str(a.concurrency), "--max-tokens", "16"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    g0 = cpu_ticks(watch_pid) if watch_pid else 0
    t0 = time.monotonic()
    p = subprocess.run(args, capture_output=True, text=True, timeout=a.limit_s)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"caption failed: {p.stderr[-2000:]}")
    summary = [l for l in p.stderr.splitlines() if "captioned=" in l][-1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    gw = (cpu_ticks(watch_pid) - g0) / CLK_TCK if watch_pid else None
    with open(out) as f:
        lines = sum(1 for _ in f)
    return {"wall_s": wall, "images_per_s": lines / wall, "lines": lines,
            "cpu_us_per_image": cpu / max(lines, 1) * 1e6,
            "gateway_cpu_us_per_image": gw / max(lines, 1) * 1e6 if gw is not None else None,
            "max_rss_mb": after.ru_maxrss / 1024, "summary": summary}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--fake-worker", required=True)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--limit-s", type=float, default=600)
    p.add_argument("--out", default="target/bench-caption")
    a = p.parse_args()
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    images = os.path.join(a.out, "images")
    size = make_images(images, a.images)
    procs = Procs(a.out)
    rows = []
    try:
        _, wport = procs.spawn([a.fake_worker, "--port", "0", "--threads", "1"], "worker")
        gw, gport = procs.spawn([a.gateway, "serve", "--host", "127.0.0.1", "--port", "0",
                                 "--worker", f"http://127.0.0.1:{wport}"], "gateway")
        for name, url, pid in [("through the gateway", f"http://127.0.0.1:{gport}/v1", gw.pid),
                               ("straight to the worker", f"http://127.0.0.1:{wport}/v1", None)]:
            out = os.path.join(a.out, f"captions-{len(rows)}.jsonl")
            for f in (out, out.replace(".jsonl", ".errors.jsonl")):
                if os.path.exists(f):
                    os.remove(f)
            r = run_caption(a, url, images, out, pid)
            r["case"] = name
            rows.append(r)
            print(name, json.dumps(r), file=sys.stderr)
        # A re-run over the finished output: the resume cost (read the journal, walk, skip).
        r = run_caption(a, f"http://127.0.0.1:{gport}/v1", images, os.path.join(a.out, "captions-0.jsonl"), gw.pid)
        r["case"] = "re-run (all done)"
        rows.append(r)
    finally:
        procs.close()
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"{a.images:,} PNG images ({size / a.images / 1024:.1f} KiB each), --concurrency {a.concurrency}")
    print()
    print("| case | images/s | wall | command CPU per image | gateway CPU per image | command max RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        g = r["gateway_cpu_us_per_image"]
        print(f"| {r['case']} | {r['images_per_s']:,.0f} | {r['wall_s']:.1f} s | "
              f"{r['cpu_us_per_image']:.0f} µs | {'—' if g is None else f'{g:.0f} µs'} | "
              f"{r['max_rss_mb']:.0f} MiB |")


if __name__ == "__main__":
    main()
