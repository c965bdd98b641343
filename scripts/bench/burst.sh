#!/usr/bin/env bash
# Memory after connection bursts: builds the release binaries (unless SKIP_BUILD), writes the
# request bodies once, and runs burst.py — 1,400 hostile connections at once (stalled heads,
# slow bodies, small and 1 MB image requests), closed, RSS sampled 0/5/10/15 s after, 4 rounds
# — against each variant in turn. Prints markdown tables (docs/BENCHMARKS.md has a run's).
#
#   scripts/bench/burst.sh                               # the gateway as built (~2 min)
#   VARIANTS="now=BIN 'tight=BIN:_RJEM_MALLOC_CONF=dirty_decay_ms:1000'" scripts/bench/burst.sh
#
# Environment:
#   VARIANTS        space-separated LABEL=BINARY[:NAME=VALUE,...] (shell words; the values go to
#                   that gateway's environment only). Default: "default=<target>/release/caprl-gateway"
#   CONNECTIONS=1400  ROUNDS=4  EXTRA=""  (more burst.py flags: --mix, --hold-s, --after-s, ...)
#   CARGO_FLAGS="--no-default-features"  cargo build flags (no candle engine: builds in a
#                   fraction of the time; the HTTP path is the same code)
#   CARGO_TARGET_DIR  honoured; binaries are taken from it
#   SKIP_BUILD=1    use the binaries already there
#   OUT=target/bench-burst  where bodies, logs and results.json go
#
# Only 127.0.0.1 is used; every loop in burst.py is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/bench
OUT=${OUT:-target/bench-burst}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
CARGO_FLAGS=${CARGO_FLAGS---no-default-features}

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "building release binaries" >&2
    # shellcheck disable=SC2086
    cargo build --release --bins $CARGO_FLAGS
fi
mkdir -p "$OUT/logs"
if [ ! -f "$OUT/bodies/bodies.json" ]; then
    python3 "$HERE/make_bodies.py" "$OUT/bodies" >&2
fi
VARIANTS=${VARIANTS:-"default=$TARGET_DIR/release/caprl-gateway"}
args=()
eval "for v in $VARIANTS; do args+=(--variant \"\$v\"); done"

# shellcheck disable=SC2086
python3 "$HERE/burst.py" --fake-worker "$TARGET_DIR/release/caprl-fake-worker" \
    --bodies "$OUT/bodies" --log-dir "$OUT/logs" --json "$OUT/results.json" \
    --connections "${CONNECTIONS:-1400}" --rounds "${ROUNDS:-4}" "${args[@]}" ${EXTRA:-}
