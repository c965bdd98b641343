#!/usr/bin/env bash
# Where the gateway spends CPU for one body: a fake worker + gateway on 127.0.0.1, wrk for
# DURATION seconds, `perf record -g` on the gateway meanwhile, then the top symbols (self time)
# and the top inclusive frames. Run scripts/bench/load.sh first (it builds and makes bodies).
#
#   scripts/bench/perf.sh img1m-whole 32      # BODY (a file in $OUT/bodies without .json), CONNS
#
#   GATEWAY=/path/caprl-gateway FAKE_WORKER=/path/caprl-fake-worker   other binaries (before/after)
#   CALLERS=SYMBOL    also print who calls SYMBOL (DWARF stacks; e.g. __memmove_avx512_unaligned_erms)
set -euo pipefail
cd "$(dirname "$0")/../.."
BODY=${1:-img1m-whole}
CONNS=${2:-32}
DURATION=${DURATION:-6}
OUT=${OUT:-target/bench-load}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
WPORT=${WPORT:-18590}
GPORT=${GPORT:-18591}
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }

GATEWAY=${GATEWAY:-$TARGET_DIR/release/caprl-gateway}
FAKE_WORKER=${FAKE_WORKER:-$TARGET_DIR/release/caprl-fake-worker}
"$FAKE_WORKER" --port "$WPORT" --threads 1 >"$OUT/logs/perf-worker.log" 2>&1 &
W=$!
RUST_LOG=warn "$GATEWAY" serve --host 127.0.0.1 --port "$GPORT" \
    --worker "http://127.0.0.1:$WPORT" --shutdown-grace-secs 1 >"$OUT/logs/perf-gateway.log" 2>&1 &
G=$!
trap 'kill "$G" "$W" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$GPORT/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
BODY_FILE="$OUT/bodies/$BODY.json" wrk -t2 -c"$CONNS" -d"$((DURATION + 2))s" --timeout 30s \
    -s scripts/bench/post.lua "http://127.0.0.1:$GPORT/v1/chat/completions" \
    >"$OUT/perf-$BODY-c$CONNS.wrk" 2>&1 &
WRK=$!
sleep 1
if [ -n "${CALLERS:-}" ]; then
    CG=(--call-graph dwarf,32768 -F 199)
else
    CG=(-g -F 999)
fi
perf record "${CG[@]}" -p "$G" -o "$OUT/perf-$BODY-c$CONNS.data" -- sleep "$DURATION" 2>/dev/null
wait "$WRK" || true
grep RESULT "$OUT/perf-$BODY-c$CONNS.wrk" || true
echo "## self time, top 25 ($BODY, c=$CONNS)"
# `-g none`: no call chains in the text, and `|| true`: `head` closing the pipe is no failure.
perf report -i "$OUT/perf-$BODY-c$CONNS.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -25 || true
echo "## by stage (scripts/bench/attribute.py: self time by symbol name)"
python3 scripts/bench/attribute.py "$OUT/perf-$BODY-c$CONNS.data"
echo "## by DSO (kernel vs gateway vs libc)"
perf report -i "$OUT/perf-$BODY-c$CONNS.data" --no-children --sort dso --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -8 || true
echo "## inclusive (children), top 40 (frame-pointer stacks: partial for Rust code)"
perf report -i "$OUT/perf-$BODY-c$CONNS.data" --children --sort symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -40 || true
if [ -n "${CALLERS:-}" ]; then
    echo "## callers of $CALLERS"
    perf report -i "$OUT/perf-$BODY-c$CONNS.data" --no-children --symbol-filter="$CALLERS" \
        --stdio -G 2>/dev/null | grep -v '^$' | head -80 || true
fi
