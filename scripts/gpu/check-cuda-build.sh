#!/usr/bin/env bash
# Check (and optionally build) the gateway and the engine with `--features cuda` on a machine
# WITHOUT a GPU or a system CUDA toolkit: the CUDA compiler, headers and libraries come from
# PyPI's NVIDIA wheels, installed into a venv (.venv-cuda, ignored by git's `.venv*/`).
#
#   scripts/gpu/check-cuda-build.sh                 # pip install the wheels, then
#                                                   #   cargo check -p caprl-gateway --features cuda
#                                                   # (the gateway with the engine, candle and its CUDA
#                                                   # kernels: ~25 min cold on 2 busy cores, most of it
#                                                   # nvcc on candle-kernels' GGUF/MoE kernels)
#   scripts/gpu/check-cuda-build.sh --build-bench target/gpu-carry
#                                                   # ... and also link the release decode bench
#                                                   # (engine/benches/decode.rs) with CUDA and put it
#                                                   # in target/gpu-carry/decode-cuda.xz, for a GPU
#                                                   # machine with no cargo (bench-3b.sh finds it there)
#
# Options:
#   --venv DIR           the venv for the wheels (default: .venv-cuda in the repository root)
#   --compute-cap N      CUDA_COMPUTE_CAP for candle-kernels (default 90: Hopper, H100/H200; no GPU
#                        is there to detect one)
#   --no-check           skip the `cargo check` (with --build-bench)
#   --build-bench DIR    also `cargo build --release -p caprl-engine --features cuda --bench decode`
#                        and put the binary, stripped and xz-compressed, in DIR/decode-cuda.xz (~7 MB,
#                        from 54 MB: the device tool carries 64 MiB in all), with DIR/decode-cuda.txt
#                        (how it was made). bench-3b.sh unpacks it.
#                        candle-kernels' build script runs again for it (another profile and package
#                        selection: cargo keys build-script runs on both), so the kernels compile twice.
#   --timeout SECS       limit for each cargo command (default 5400)
#   --offline            do not pip install (the venv must already hold the wheels)
#
# Environment honoured: CARGO_TARGET_DIR (default: target/cuda, so the CPU build is left alone),
# CARGO_BUILD_JOBS, NVCC_CCBIN (passed on to cudaforge, which then adds -ccbin and
# -allow-unsupported-compiler; not needed with a gcc that CUDA 13.0 supports, 6..14).
#
# What candle 0.11's CUDA build needs, read from the build scripts in ~/.cargo/registry:
#   - candle-kernels 0.11.1 (build.rs, via cudaforge 0.1.6): `nvcc` (NVCC, PATH, CUDA_HOME or
#     /usr/local/cuda), CUDA_COMPUTE_CAP (else `nvidia-smi`), a host g++, and the CUDA headers
#     next to nvcc (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h, mma.h): it compiles every src/*.cu to
#     PTX and the MoE / GGUF kernels to a static library libmoe.a, then links `-lcudart -lstdc++`.
#   - cudarc 0.19.10 (build.rs, features cuda-version-from-build-system + dynamic-linking):
#     runs `nvcc --version` (supports CUDA 11.4 .. 13.4, hence nvcc 13.0 here, not PyPI's newest
#     13.5), and for the final link adds -L for CUDA_HOME/CUDA_PATH/CUDA_ROOT/.../lib{,64}{,/stubs}
#     and -lcuda -lnvrtc -lcurand -lcublas -lcublasLt. `cargo check` links nothing; a build does,
#     so --build-bench makes a link root with unversioned symlinks to the wheels' libraries and a
#     stub libcuda.so (the driver's library is not on PyPI; the real libcuda.so.1 is found at run
#     time on the GPU machine).
#
# The wheel versions are those of torch 2.13's CUDA 13.0 build (nvcc 13.0 matches the driver of
# this workplace's H200 machines, 580 = CUDA 13.0: PTX from a newer nvcc may not load there).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.venv-cuda"
CAP=90
DO_CHECK=1
BENCH_OUT=""
TIMEOUT=5400
OFFLINE=0

die() { echo "check-cuda-build: error: $*" >&2; exit 1; }
log() { echo "[check-cuda-build $(date +%H:%M:%S)] $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --venv) VENV="${2:?--venv needs a directory}"; shift 2 ;;
        --compute-cap) CAP="${2:?--compute-cap needs a number}"; shift 2 ;;
        --no-check) DO_CHECK=0; shift ;;
        --build-bench) BENCH_OUT="${2:?--build-bench needs a directory}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
        --offline) OFFLINE=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$CAP" =~ ^[0-9]+[af]?$ ]] || die "--compute-cap must look like 90, 89 or 90a, not '$CAP'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
[ "$DO_CHECK" = 1 ] || [ -n "$BENCH_OUT" ] || die "--no-check without --build-bench does nothing"

# Pinned: what torch 2.13.0+cu130 pulls in (nvcc's own dependencies pinned to the same release).
WHEELS=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-cccl==13.0.85"
    "nvidia-cublas==13.1.1.3"
    "nvidia-curand==10.4.0.35"
    "nvidia-cuda-nvrtc==13.0.88"
)

command -v cargo >/dev/null || die "cargo is not on PATH (install Rust with rustup first)"
command -v python3 >/dev/null || die "python3 is not on PATH"
command -v g++ >/dev/null || die "g++ is not on PATH: nvcc needs a host C++ compiler (apt-get install g++)"
[ "$(uname -m)" = x86_64 ] || die "the pinned wheels are for x86_64 (this is $(uname -m))"

T0=$(date +%s)
# ---------------------------------------------------------------------------------------------
# 1. the wheels
# ---------------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    [ "$OFFLINE" = 0 ] || die "--offline, but there is no venv at $VENV"
    log "creating $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
fi
if [ "$OFFLINE" = 0 ]; then
    log "pip install ${WHEELS[*]}"
    timeout 1800 "$VENV/bin/pip" install -q --disable-pip-version-check "${WHEELS[@]}" \
        || die "pip install of the CUDA wheels failed (no network to PyPI? use --offline with a ready venv)"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CU="$SITE/nvidia/cu13"
NVCC="$CU/bin/nvcc"
[ -x "$NVCC" ] || die "no nvcc at $NVCC (is nvidia-cuda-nvcc installed in $VENV?)"
for h in cuda_runtime.h cuda_fp16.h cuda_bf16.h mma.h cuda.h; do
    [ -f "$CU/include/$h" ] || die "$CU/include/$h is missing (nvidia-cuda-runtime / nvidia-cuda-crt wheels)"
done
NVCC_VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
log "nvcc $NVCC_VERSION at $NVCC"

# ---------------------------------------------------------------------------------------------
# 2. a CUDA root for the link: unversioned names for the wheels' libraries, and a libcuda stub
# ---------------------------------------------------------------------------------------------
ROOT="$VENV/cuda-root"
mkdir -p "$ROOT/lib/stubs"
ln -sfn "$CU/bin" "$ROOT/bin"
ln -sfn "$CU/include" "$ROOT/include"
for spec in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
    name="${spec%%:*}"; major="${spec##*:}"
    lib="$CU/lib/lib$name.so.$major"
    [ -f "$lib" ] || die "$lib is missing (wheel not installed?)"
    ln -sfn "$lib" "$ROOT/lib/lib$name.so"
done
if [ ! -f "$ROOT/lib/stubs/libcuda.so" ] || [ "$CU/include/cuda.h" -nt "$ROOT/lib/stubs/libcuda.so" ]; then
    # Like the toolkit's lib64/stubs/libcuda.so: every cu* name in cuda.h, as an empty function,
    # in a library whose soname is the driver's (libcuda.so.1). Only for linking; never loaded.
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' "$CU/include/cuda.h" | sort -u \
        | awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$ROOT/lib/stubs/libcuda_stub.c"
    cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/stubs/libcuda.so" "$ROOT/lib/stubs/libcuda_stub.c" \
        || die "could not build the libcuda stub"
fi

export NVCC
export PATH="$CU/bin:$PATH"
export CUDA_HOME="$ROOT" CUDA_PATH="$ROOT" CUDA_ROOT="$ROOT"
export CUDA_COMPUTE_CAP="$CAP"
export LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target/cuda}"
log "CUDA_HOME=CUDA_PATH=CUDA_ROOT=$ROOT CUDA_COMPUTE_CAP=$CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

cd "$REPO"
run_cargo() {
    local t
    t=$(date +%s)
    log "cargo $*"
    local rc=0
    timeout "$TIMEOUT" cargo "$@" || rc=$?
    [ "$rc" != 124 ] || die "cargo $* ran past --timeout $TIMEOUT s"
    [ "$rc" = 0 ] || die "cargo $* failed (exit $rc)"
    log "ok in $(( $(date +%s) - t )) s: cargo $*"
}

# ---------------------------------------------------------------------------------------------
# 3. cargo check
# ---------------------------------------------------------------------------------------------
if [ "$DO_CHECK" = 1 ]; then
    run_cargo check --locked -p caprl-gateway --features cuda
fi

# ---------------------------------------------------------------------------------------------
# 4. the release decode bench, linked against CUDA
# ---------------------------------------------------------------------------------------------
if [ -n "$BENCH_OUT" ]; then
    log "cargo build --release -p caprl-engine --features cuda --bench decode"
    t=$(date +%s)
    json="$(mktemp)"
    rc=0
    timeout "$TIMEOUT" cargo build --locked --release -p caprl-engine --features cuda --bench decode \
        --message-format=json-render-diagnostics > "$json" || rc=$?
    [ "$rc" != 124 ] || die "cargo build ran past --timeout $TIMEOUT s"
    [ "$rc" = 0 ] || die "cargo build --release --features cuda --bench decode failed (exit $rc)"
    exe="$(python3 - "$json" <<'EOF'
import json, sys
exe = None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "decode" and m.get("executable"):
        exe = m["executable"]
print(exe or "")
EOF
)"
    rm -f "$json"
    [ -n "$exe" ] && [ -x "$exe" ] || die "cargo built no decode bench executable"
    mkdir -p "$BENCH_OUT"
    rm -f "$BENCH_OUT/decode-cuda" "$BENCH_OUT/decode-cuda.xz"
    stripped="$(mktemp)"
    cp "$exe" "$stripped"
    # Line tables and symbols are a third of it; the GPU run needs neither, and the carry is limited.
    strip --strip-all "$stripped" 2>/dev/null || log "strip failed; the binary keeps its symbols"
    {
        echo "engine/benches/decode.rs built with --features cuda on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "git: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with local changes)')"
        echo "nvcc $NVCC_VERSION (PyPI wheels: ${WHEELS[*]}), CUDA_COMPUTE_CAP=$CAP"
        echo "rustc: $(rustc --version)"
        echo "needs at run time:"
        readelf -d "$stripped" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
        echo "sha256 (unpacked): $(sha256sum "$stripped" | cut -d' ' -f1)"
    } > "$BENCH_OUT/decode-cuda.txt"
    if command -v xz >/dev/null; then
        xz -T0 -6 -c "$stripped" > "$BENCH_OUT/decode-cuda.xz"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], "rb"), lzma.open(sys.argv[2], "wb", preset=6))' \
            "$stripped" "$BENCH_OUT/decode-cuda.xz"
    fi
    log "built in $(( $(date +%s) - t )) s: $BENCH_OUT/decode-cuda.xz ($(du -h "$BENCH_OUT/decode-cuda.xz" | cut -f1);" \
        "$(du -h "$stripped" | cut -f1) unpacked)"
    rm -f "$stripped"
    cat "$BENCH_OUT/decode-cuda.txt"
fi

log "all done in $(( $(date +%s) - T0 )) s"
