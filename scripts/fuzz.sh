#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 600), keeping new inputs in tests/fuzz/corpus/
# and writing findings to tests/fuzz/findings/. Exits non-zero if any target found something.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(chat image sse)
cargo build --example fuzz
status=0
for t in "${targets[@]}"; do
    "${CARGO_TARGET_DIR:-target}/debug/examples/fuzz" "$t" "$secs" --save || status=1
done
exit $status
