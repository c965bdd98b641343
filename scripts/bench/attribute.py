#!/usr/bin/env python3
"""Attribute a gateway profile's self time to the stages of a request (issue 15 item 1).

Reads `perf report --no-children --sort symbol --stdio` text on stdin (or runs it on a
perf.data file given as the argument) and prints one markdown row per stage with its share of
all samples. Symbols are matched by name, first rule wins; what no rule names is "other".

    scripts/bench/attribute.py target/bench-load/perf-img1m-whole-c32.data
"""
import re
import subprocess
import sys

# (stage, pattern on the symbol). Kernel symbols are one stage: perf marks them `[k]`.
RULES = [
    ("kernel (TCP, scheduler, page faults)", r"^\[k\]"),
    ("JSON scan (serde_json, UTF-8 checks)", r"serde_json|serde_path_to_error|core::str::converts::from_utf8|serde::de"),
    ("image URL raw scan (memchr)", r"memchr"),
    ("base64 decode", r"base64"),
    ("hashing (xxh3)", r"xxh|xxhash"),
    ("image header reads", r"zune_|image::|png::|image_webp|gif::|caprl_gateway::validate::images"),
    ("copies (memmove/memcpy)", r"memmove|memcpy|__memset"),
    ("allocator (jemalloc)", r"_rjem_|je_|jemalloc|tikv_jemalloc|emap_|tcache_|arena_|extent_|edata_|sdallocx|malloc|\bfree\b"),
    ("SSE parse and re-frame", r"eventsource|nom::|caprl_gateway::http::relay|caprl_gateway::worker::http::decode|caprl_gateway::worker::http::chunk"),
    ("reqwest client", r"reqwest::|hyper_util::client|url::|idna::"),
    ("hyper (server and client connections)", r"hyper::|hyper_util::|h2::|httparse|(^|[<\s\]])http::"),
    ("tracing and metrics", r"tracing|prometheus|caprl_gateway::metrics|caprl_gateway::http::record"),
    ("tokio runtime", r"tokio::|tokio_util::|mio::|parking_lot|futures_util|clock_gettime|Instant"),
    ("axum and tower", r"axum|tower|matchit"),
    ("gateway code (validation, dispatch, queue, pool)", r"caprl_gateway"),
    ("libc (syscall wrappers, locks)", r"^\[\.\] (__GI_|__libc|pthread_|__lll|syscall|epoll|__send|__recv|__write|__read)"),
]


def rows(report: str):
    shares = {}
    total = 0.0
    for line in report.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+(\[[k.]\]\s+.*)$", line)
        if not m:
            continue
        share, sym = float(m.group(1)), m.group(2).strip()
        total += share
        stage = next((s for s, p in RULES if re.search(p, sym)), "other")
        shares[stage] = shares.get(stage, 0.0) + share
    return shares, total


def main():
    if len(sys.argv) > 1:
        report = subprocess.run(
            ["perf", "report", "-i", sys.argv[1], "--no-children", "--sort", "symbol", "--stdio", "-g", "none"],
            capture_output=True, text=True, check=True).stdout
    else:
        report = sys.stdin.read()
    shares, total = rows(report)
    print("| stage | share of the gateway's CPU |")
    print("|---|---|")
    order = [s for s, _ in RULES] + ["other"]
    for stage in order:
        if stage in shares:
            print(f"| {stage} | {shares[stage]:.1f} % |")
    print(f"| (samples attributed) | {total:.1f} % |")


if __name__ == "__main__":
    main()
