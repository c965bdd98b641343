#!/usr/bin/env bash
# Load benchmark: the gateway (release, RUST_LOG=warn) in front of one fake worker (--threads 1),
# against the fake worker alone and against vllm-router in front of the same worker, for {text, 64 KB image, 1 MB image} x {whole, stream} x
# concurrency {32, 256}; then a pool of three fake workers (--latency-ms 20) behind one gateway
# with 1000 connections. Prints markdown tables (docs/BENCHMARKS.md has a run's figures).
#
#   scripts/bench/load.sh                      # everything, 8 s per run (~5 min)
#   DURATION=4 CASES="text" scripts/bench/load.sh
#
# Environment:
#   DURATION=8            seconds per wrk run (each case runs twice: direct, then gateway)
#   CONCURRENCY="32 256"  wrk connections per run
#   CASES="text img64k img1m"
#   POOL_CONNECTIONS=1000
#   EXTRA="--no-pool"     more load.py flags (--no-matrix, --no-pool, --wrk-threads N)
#   CARGO_FLAGS=""        extra cargo build flags, e.g. --no-default-features (no candle engine:
#                         compiles in a fraction of the time; the HTTP path is the same code)
#   CARGO_TARGET_DIR      honoured; binaries are taken from it
#   SKIP_BUILD=1          use the binaries already there
#   PYTHON                interpreter for the body generator (Pillow + numpy give JPEGs;
#                         without them a noisy PNG is written with the standard library)
#   OUT=target/bench-load where bodies, logs and results.json go
#   PEER=1                also run every case through vllm-router (the peer of the ratios),
#                         installed from PyPI into .venv-bench when missing; PEER=0 skips it
#
# Only 127.0.0.1 is used. Needs wrk: installed from Debian (apt-get) when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/bench

DURATION=${DURATION:-8}
CONCURRENCY=${CONCURRENCY:-"32 256"}
CASES=${CASES:-"text img64k img1m"}
POOL_CONNECTIONS=${POOL_CONNECTIONS:-1000}
OUT=${OUT:-target/bench-load}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi

# 1000 client connections + 1000 gateway-side + upstream connections need descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
echo "open files: $(ulimit -n)" >&2

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "building release binaries" >&2
    # `fake-worker` by name: CARGO_FLAGS=--no-default-features would otherwise drop it.
    # shellcheck disable=SC2086
    cargo build --release --bins --features fake-worker ${CARGO_FLAGS:-}
fi

if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    for p in python3 .venv-fixture/bin/python .venv-vllm/bin/python; do
        if command -v "$p" >/dev/null && "$p" -c 'import PIL, numpy' 2>/dev/null; then
            PYTHON=$p
            break
        fi
    done
fi
mkdir -p "$OUT/logs"
if [ ! -f "$OUT/bodies/bodies.json" ]; then
    "$PYTHON" "$HERE/make_bodies.py" "$OUT/bodies" >&2
fi

PEER_ARGS=()
if [ "${PEER:-1}" != 0 ]; then
    if [ ! -x .venv-bench/bin/vllm-router ]; then
        echo "installing vllm-router into .venv-bench" >&2
        python3 -m venv .venv-bench
        .venv-bench/bin/pip install -q vllm-router==0.1.17
    fi
    PEER_ARGS=(--peer .venv-bench/bin/vllm-router)
fi

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# shellcheck disable=SC2086
python3 "$HERE/load.py" \
    --gateway "$TARGET_DIR/release/caprl-gateway" \
    --fake-worker "$TARGET_DIR/release/caprl-fake-worker" \
    --bodies "$OUT/bodies" --log-dir "$OUT/logs" --json "$OUT/results.json" \
    --duration "$DURATION" --concurrency $CONCURRENCY --cases $CASES \
    --pool-connections "$POOL_CONNECTIONS" "${PEER_ARGS[@]}" ${EXTRA:-}
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
