#!/usr/bin/env bash
# The test command (README): format and lint checks, every Rust test, the end-to-end suite
# with the real openai client and curl, and the deployment checks. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "toolchain checks"
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
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

step "deployment checks"
bash scripts/ci/check-deploy.sh

step "done"
