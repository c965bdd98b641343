#!/usr/bin/env bash
# Decode tokens/s of the Candle engine (bf16, CUDA) and of PyTorch transformers (bf16, the same GPU)
# on a random model of CapRL-3B's real shapes (Qwen2.5-VL-3B: hidden 2048, 36 layers, 16 heads, 2 KV
# heads, intermediate 11008, vocab 151936; vision depth 32, hidden 1280, 16 heads), at batch 1, 8
# and 32, in one run bounded to 10 minutes. Ends with one markdown table.
#
#   scripts/gpu/bench-3b.sh [options]
#
# Needs a CUDA GPU, nvidia-smi, and a python3 with torch (CUDA), transformers >= 5, tokenizers and
# numpy. The Candle bench (engine/benches/decode.rs) is, in this order:
#   --bench-bin PATH                  a prebuilt `decode` bench built with --features cuda
#   target/gpu-carry/decode-cuda.xz   what `scripts/gpu/check-cuda-build.sh --build-bench
#                                     target/gpu-carry` builds on a machine with cargo (for a GPU
#                                     machine with no Rust toolchain or no network: carry it along);
#                                     unpacked to /tmp/caprl-decode-cuda
#   cargo build --release -p caprl-engine --features cuda --bench decode, if cargo is on PATH
#                                     (with the crates already downloaded when there is no network)
#
# Options:
#   --bench-bin PATH     the Candle decode bench to run (see above)
#   --model-dir DIR      where the random 3B model goes (default /tmp/caprl-3b-random, ~7.5 GB);
#                        reused when it already holds a 3B-shaped model, unless --regen
#   --regen              make the model again even if DIR holds one
#   --results DIR        logs, candle.json, transformers.json, table.md (default: $OUT if set, else
#                        bench-out/gpu-3b)
#   --batches LIST       decode batch sizes (default 1,8,32)
#   --new-tokens N       transformers: new tokens per sequence (default 64)
#   --steps N            Candle: timed decode steps per batch (default 64, after one warm-up step)
#   --attn IMPL          transformers attention: sdpa (default) or eager
#   --device DEV         default cuda:0
#   --python PY          default: $PYTHON, else python3
#   --budget SECS        the whole run's limit (default 570: under a 10-minute call with room to spare)
#   --no-prefill         skip the Candle bench's image prefill table (decode only)
#   --skip-candle / --skip-hf   run one side only
#   --cpu-smoke          test this script on a machine with no GPU: CPU, a 3B-shaped model cut to 2
#                        layers, 2 vision blocks and a 4096-row vocabulary (in /tmp/caprl-3b-smoke),
#                        batches 1,2, 4 steps / tokens; the numbers mean nothing
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_BIN=""
MODEL="/tmp/caprl-3b-random"
REGEN=0
RESULTS="${OUT:-$REPO/bench-out/gpu-3b}"
BATCHES="1,8,32"
NEW_TOKENS=64
STEPS=64
ATTN=sdpa
DEVICE=cuda:0
PY="${PYTHON:-python3}"
BUDGET=570
PREFILL=1
RUN_CANDLE=1
RUN_HF=1
SMOKE=0
DTYPE=bf16

die() { echo "bench-3b: error: $*" >&2; exit 1; }
T0=$(date +%s)
log() { echo "[bench-3b +$(( $(date +%s) - T0 ))s] $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --bench-bin) BENCH_BIN="${2:?}"; shift 2 ;;
        --model-dir) MODEL="${2:?}"; shift 2 ;;
        --regen) REGEN=1; shift ;;
        --results) RESULTS="${2:?}"; shift 2 ;;
        --batches) BATCHES="${2:?}"; shift 2 ;;
        --new-tokens) NEW_TOKENS="${2:?}"; shift 2 ;;
        --steps) STEPS="${2:?}"; shift 2 ;;
        --attn) ATTN="${2:?}"; shift 2 ;;
        --device) DEVICE="${2:?}"; shift 2 ;;
        --python) PY="${2:?}"; shift 2 ;;
        --budget) BUDGET="${2:?}"; shift 2 ;;
        --no-prefill) PREFILL=0; shift ;;
        --skip-candle) RUN_CANDLE=0; shift ;;
        --skip-hf) RUN_HF=0; shift ;;
        --cpu-smoke) SMOKE=1; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$BATCHES" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--batches must look like 1,8,32"
[[ "$NEW_TOKENS" =~ ^[0-9]+$ ]] && [ "$NEW_TOKENS" -ge 2 ] || die "--new-tokens must be a number >= 2"
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive number"
[[ "$BUDGET" =~ ^[1-9][0-9]*$ ]] || die "--budget must be a number of seconds"
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu BATCHES=1,2 STEPS=4 NEW_TOKENS=4 PREFILL=0
    [ "$MODEL" != /tmp/caprl-3b-random ] || MODEL=/tmp/caprl-3b-smoke
fi
[[ "$DEVICE" =~ ^cuda:[0-9]+$ ]] || [ "$SMOKE" = 1 ] || die "--device must be cuda:N"
case "$ATTN" in sdpa|eager) ;; *) die "--attn must be sdpa or eager" ;; esac
[ "$RUN_CANDLE$RUN_HF" != 00 ] || die "--skip-candle and --skip-hf together leave nothing to run"
mkdir -p "$RESULTS" || die "cannot create --results $RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
LOG="$RESULTS/bench.log"

main() {
CANDLE_STATUS="not run"
HF_STATUS="not run"
[ "$RUN_CANDLE" = 1 ] || CANDLE_STATUS="skipped"
[ "$RUN_HF" = 1 ] || HF_STATUS="skipped"

remaining() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# step_limit WANT: the seconds a step may take, WANT at most, leaving 15 s for the table
step_limit() { local r=$(( $(remaining) - 15 )); [ "$r" -lt "$1" ] && echo "$r" || echo "$1"; }

log "results in $RESULTS; budget ${BUDGET}s"

# ---------------------------------------------------------------------------------------------
# 0. the machine
# ---------------------------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
    GPU_LINE="no GPU (--cpu-smoke: the CPU, a cut-down model; the numbers mean nothing)"
else
    command -v nvidia-smi >/dev/null || die "nvidia-smi is not on PATH: this needs a machine with an NVIDIA GPU and driver"
    GPU_LINE="$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 | head -1)" \
        || die "nvidia-smi failed: $GPU_LINE"
fi
log "GPU: $GPU_LINE"
command -v "$PY" >/dev/null || die "no python at '$PY' (--python)"
PY_INFO="$(SMOKE=$SMOKE timeout 120 "$PY" -c '
import os, sys
try:
    import torch, transformers, tokenizers, numpy, safetensors
except ImportError as e:
    sys.exit(f"missing Python package: {e}")
if not torch.cuda.is_available() and os.environ["SMOKE"] != "1":
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
if int(transformers.__version__.split(".")[0]) < 5:
    sys.exit(f"transformers {transformers.__version__}: need >= 5 (the fixture generator uses its config layout)")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}")
' 2>&1)" || die "$PY is not usable: $PY_INFO
(on a machine without network, bring the wheels: see docs/GPU.md)"
log "$PY_INFO"

# ---------------------------------------------------------------------------------------------
# 1. the Candle bench binary
# ---------------------------------------------------------------------------------------------
find_libs() {
    # Put the directories of the CUDA libraries the binary needs on LD_LIBRARY_PATH: the driver's
    # libcuda.so.1, and cuBLAS / cuBLASLt / cuRAND / NVRTC / cudart of the CUDA major it was built for
    # (torch's nvidia-* wheels have them, as does a CUDA toolkit).
    local bin="$1" missing dirs d so found
    dirs="$("$PY" -c 'import nvidia, os; print("\n".join(p for p in nvidia.__path__))' 2>/dev/null || true)"
    local cands=()
    for d in $dirs; do cands+=("$d"/cu*/lib "$d"/*/lib); done
    cands+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64
            /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat)
    missing="$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}')"
    for so in $missing; do
        found=""
        for d in "${cands[@]}"; do
            if [ -e "$d/$so" ]; then found="$d"; break; fi
        done
        if [ -n "$found" ]; then
            case ":${LD_LIBRARY_PATH:-}:" in *":$found:"*) ;; *) export LD_LIBRARY_PATH="$found${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
        fi
    done
    missing="$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}')"
    [ -z "$missing" ] || { echo "bench-3b: error: the Candle bench needs libraries that are not here:" $missing >&2; return 1; }
}

if [ "$RUN_CANDLE" = 1 ]; then
    CARRIED="$REPO/target/gpu-carry/decode-cuda"
    if [ -z "$BENCH_BIN" ] && [ -f "$CARRIED.xz" ]; then
        BENCH_BIN=/tmp/caprl-decode-cuda
        log "unpacking $CARRIED.xz to $BENCH_BIN"
        if command -v xz >/dev/null; then
            timeout 120 xz -dc "$CARRIED.xz" > "$BENCH_BIN" || die "xz could not unpack $CARRIED.xz"
        else
            timeout 120 "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                "$CARRIED.xz" "$BENCH_BIN" || die "could not unpack $CARRIED.xz"
        fi
        chmod +x "$BENCH_BIN"
        want="$(sed -n 's/^sha256 (unpacked): //p' "$CARRIED.txt" 2>/dev/null)"
        if [ -n "$want" ] && command -v sha256sum >/dev/null; then
            [ "$(sha256sum "$BENCH_BIN" | cut -d' ' -f1)" = "$want" ] || die "$BENCH_BIN does not match the sha256 in $CARRIED.txt"
        fi
        [ -f "$CARRIED.txt" ] && { log "prebuilt Candle bench ($CARRIED.txt):"; sed 's/^/    /' "$CARRIED.txt"; }
    fi
    if [ -n "$BENCH_BIN" ]; then
        [ -x "$BENCH_BIN" ] || die "--bench-bin $BENCH_BIN is not an executable file"
    elif command -v cargo >/dev/null && [ "$SMOKE" = 0 ]; then
        CAP="$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
        command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || die "cargo is here but nvcc is not (PATH or /usr/local/cuda/bin)"
        command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
        lim=$(step_limit 420)
        log "cargo build --release -p caprl-engine --features cuda --bench decode (CUDA_COMPUTE_CAP=$CAP, limit ${lim}s)"
        json="$RESULTS/cargo-build.jsonl"
        ( cd "$REPO" && CUDA_COMPUTE_CAP="$CAP" timeout "$lim" cargo build --release -p caprl-engine --features cuda \
            --bench decode --message-format=json-render-diagnostics > "$json" ) \
            || die "cargo build --features cuda failed or ran past ${lim}s (offline with no crates? use --bench-bin; see docs/GPU.md)"
        BENCH_BIN="$("$PY" -c '
import json, sys
exe = ""
for line in open(sys.argv[1]):
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "decode" and m.get("executable"):
        exe = m["executable"]
print(exe)' "$json")"
        [ -x "$BENCH_BIN" ] || die "cargo built no decode bench"
    else
        die "no Candle bench: cargo is not on PATH and there is no target/gpu-carry/decode-cuda.xz.
Build one where cargo is (no GPU needed): scripts/gpu/check-cuda-build.sh --build-bench target/gpu-carry,
then bring target/gpu-carry along (or pass --bench-bin), or run with --skip-candle."
    fi
    find_libs "$BENCH_BIN" || die "run ldd $BENCH_BIN to see which"
    log "Candle bench: $BENCH_BIN (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
fi

# ---------------------------------------------------------------------------------------------
# 2. the random 3B model
# ---------------------------------------------------------------------------------------------
SMOKE_DIMS=(--bench-layers 2 --bench-vision-depth 2 --bench-vocab 4096)
is_3b() {
    "$PY" - "$1" "$SMOKE" <<'EOF' 2>/dev/null
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
c = json.loads((d / "config.json").read_text())
t, v = c.get("text_config", c), c["vision_config"]
want = dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
            intermediate_size=11008, vocab_size=151936)
if sys.argv[2] == "1":
    want.update(num_hidden_layers=2, vocab_size=4096)
ok = all(t.get(k) == x for k, x in want.items()) and v["depth"] == (2 if sys.argv[2] == "1" else 32)
ok = ok and v["hidden_size"] == 1280
ok = ok and any(d.glob("model*.safetensors")) and (d / "tokenizer.json").is_file()
sys.exit(0 if ok else 1)
EOF
}
if [ "$REGEN" = 0 ] && [ -f "$MODEL/config.json" ] && is_3b "$MODEL"; then
    log "reusing the 3B-shaped model in $MODEL"
else
    lim=$(step_limit 240)
    [ "$lim" -ge 60 ] || die "too little budget left to make the model (${lim}s)"
    free_gb=$(df -Pk "$(dirname "$MODEL")" | awk 'NR==2 {print int($4/1048576)}')
    [ "${free_gb:-0}" -ge 10 ] || die "$(dirname "$MODEL") has ${free_gb} GB free; the model needs ~8 GB"
    log "making the random 3B model in $MODEL (limit ${lim}s)"
    if [ "$SMOKE" = 1 ]; then gen=(--bench-device cpu "${SMOKE_DIMS[@]}"); else gen=(--bench-device cuda); fi
    timeout "$lim" "$PY" "$REPO/scripts/fixtures/make_tiny_qwen25vl.py" --bench "$MODEL" --bench-dims 3b \
        "${gen[@]}" || die "making the model failed or ran past ${lim}s"
    is_3b "$MODEL" || die "$MODEL does not hold the 3B-shaped model after making it"
fi

# ---------------------------------------------------------------------------------------------
# 3. Candle
# ---------------------------------------------------------------------------------------------
if [ "$RUN_CANDLE" = 1 ]; then
    lim=$(step_limit 240)
    if [ "$lim" -lt 30 ]; then
        CANDLE_STATUS="not run: budget spent"
    else
        log "Candle: $BENCH_BIN $MODEL $DEVICE $DTYPE (batches $BATCHES, $STEPS steps; limit ${lim}s)"
        rm -f "$RESULTS/candle.json"
        CAPRL_BENCH_BATCHES="$BATCHES" CAPRL_BENCH_STEPS="$STEPS" CAPRL_BENCH_PREFILL="$PREFILL" \
            CAPRL_BENCH_JSON="$RESULTS/candle.json" timeout "$lim" "$BENCH_BIN" "$MODEL" "$DEVICE" "$DTYPE" \
            2>&1 | tee "$RESULTS/candle.log"
        rc=${PIPESTATUS[0]}
        if [ "$rc" = 0 ]; then
            CANDLE_STATUS="ok"
        elif [ -f "$RESULTS/candle.json" ]; then
            # decode.rs writes the JSON before the prefill table: the decode numbers stand
            CANDLE_STATUS="ok (decode; the prefill table $( [ "$rc" = 124 ] && echo "ran past the limit" || echo "failed, exit $rc"))"
        else
            CANDLE_STATUS="failed (exit $rc$( [ "$rc" = 124 ] && echo ": ran past ${lim}s"))"
        fi
        log "Candle: $CANDLE_STATUS"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 4. transformers
# ---------------------------------------------------------------------------------------------
if [ "$RUN_HF" = 1 ]; then
    lim=$(step_limit 300)
    if [ "$lim" -lt 30 ]; then
        HF_STATUS="not run: budget spent"
    else
        log "transformers: batches $BATCHES, $NEW_TOKENS new tokens, attn=$ATTN (limit ${lim}s)"
        rm -f "$RESULTS/transformers.json"
        PYTHONUNBUFFERED=1 timeout "$lim" "$PY" "$REPO/scripts/gpu/hf_decode_bench.py" --model "$MODEL" \
            --device "$DEVICE" --dtype "$DTYPE" --batches "$BATCHES" --new-tokens "$NEW_TOKENS" --attn "$ATTN" \
            --json "$RESULTS/transformers.json" 2>&1 | grep -v '^Loading weights' | tee "$RESULTS/transformers.log"
        rc=${PIPESTATUS[0]}
        if [ "$rc" = 0 ]; then HF_STATUS="ok"; else HF_STATUS="failed (exit $rc$( [ "$rc" = 124 ] && echo ": ran past ${lim}s"))"; fi
        log "transformers: $HF_STATUS"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 5. the table
# ---------------------------------------------------------------------------------------------
"$PY" - "$RESULTS" "$BATCHES" "$CANDLE_STATUS" "$HF_STATUS" "$GPU_LINE" "$ATTN" "$STEPS" "$NEW_TOKENS" <<'EOF' | tee "$RESULTS/table.md"
import json, sys, pathlib
res, batches, cst, hst, gpu, attn, steps, new = sys.argv[1:]
res = pathlib.Path(res)
def load(name):
    try:
        return json.loads((res / name).read_text())
    except (OSError, ValueError):
        return None
c, h = load("candle.json"), load("transformers.json")
cr = {r["batch"]: r["tokens_per_s"] for r in (c or {}).get("decode", [])}
hr = {r["batch"]: r for r in (h or {}).get("rows", [])}
print()
print(f"Decode tokens/s, random CapRL-3B-shaped model{' (3.75B)' if 'cpu-smoke' not in gpu else ''}, bf16, {gpu}")
print()
print("| batch | Candle tok/s | transformers tok/s | ratio (Candle / transformers) | transformers generate() tok/s, prefill included |")
print("|---:|---:|---:|---:|---:|")
for b in map(int, batches.split(",")):
    ct = cr.get(b)
    ht = hr.get(b, {}).get("decode_tokens_per_s")
    hg = hr.get(b, {}).get("generate_tokens_per_s")
    f = lambda x: f"{x:.1f}" if x is not None else "-"
    ratio = f"{ct / ht:.2f}" if ct and ht else "-"
    print(f"| {b} | {f(ct)} | {f(ht)} | {ratio} | {f(hg)} |")
print()
if c:
    print(f"Candle ({cst}): engine/benches/decode.rs, {c['timed_steps']} timed decode steps after 1 warm-up, "
          f"prompt {c['prompt_tokens']} tokens, logits copied to the host each step; load {c['load_s']:.1f}s.")
else:
    print(f"Candle: {cst}.")
if h:
    print(f"transformers ({hst}): {h['transformers']}, torch {h['torch']}, attn={h['attn']}, greedy generate, "
          f"{h['new_tokens']} new tokens, prompt {h['prompt_tokens']} tokens; tok/s = batch*(N-1)/(t(N)-t(1)), "
          f"fastest of {h['repeats']} after a warm-up; load {h['load_s']:.1f}s.")
else:
    print(f"transformers: {hst}.")
EOF
log "done in $(( $(date +%s) - T0 ))s"
case "$CANDLE_STATUS" in ok*|skipped) ;; *) exit 1 ;; esac
case "$HF_STATUS" in ok|skipped) ;; *) exit 1 ;; esac
exit 0
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
