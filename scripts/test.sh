#!/usr/bin/env bash
# The test command (README): format and lint checks, every Rust test, the end-to-end suite
# with the real openai client and curl, and the deployment checks. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "toolchain checks"
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }

# A real vLLM for tests/vllm: installed in the background while Rust builds (minutes and
# ~3 GB on a fresh machine). It fails loudly if the package registry is unreachable.
mkdir -p target
step "real vLLM: installing in the background (log: target/vllm-install.log)"
bash scripts/vllm/install.sh .venv-vllm > target/vllm-install.log 2>&1 &
vllm_install=$!
trap 'kill "$vllm_install" 2>/dev/null || true' EXIT

rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests"
cargo build --bins
cargo test --workspace -- --test-threads 2

step "end-to-end: openai client and curl"
if [ ! -x .venv-e2e/bin/python ]; then python3 -m venv .venv-e2e; fi
.venv-e2e/bin/pip install -q -r tests/e2e/requirements.txt
CAPRL_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug" .venv-e2e/bin/python -m pytest tests/e2e -q

step "real vLLM: gateway end to end, transparency, Candle parity, mixed pool"
if ! wait "$vllm_install"; then
    tail -40 target/vllm-install.log
    echo "the vLLM install failed: the real-vLLM suite cannot run" >&2
    exit 1
fi
tail -3 target/vllm-install.log
CAPRL_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug" VLLM_START_TIMEOUT=600 bash scripts/vllm/e2e.sh -q

step "deployment checks"
bash scripts/ci/check-deploy.sh

step "done"
