#!/usr/bin/env bash
# Smoke test of a running vLLM (started by serve.sh) on 127.0.0.1:PORT.
#
#   scripts/vllm/smoke.sh PORT [MODEL_NAME]
#
# Checks, failing loudly on the first problem:
#   - GET /health is 200; GET /v1/models lists MODEL_NAME (default caprl)
#   - chat completion with a small PNG as data:image/png;base64,... and as
#     data:image;base64,..., max_tokens 16, temperature 0: 200, 16 completion
#     tokens, identical (greedy) text for both, and the X-Request-Id sent is
#     echoed in the response header and used in the id (chatcmpl-<id>)
#   - streaming with stream_options.include_usage: SSE chunks, a final usage
#     chunk, data: [DONE]
#   - /metrics: http_requests_total{handler="/v1/chat/completions"} and
#     vllm:request_success_total go up by exactly the requests sent; a request
#     vLLM rejects (unknown model, 404) counts in the first but not the second
# Prints per-request latency. Needs curl and python3.
set -euo pipefail
# The whole script is one { ...; exit; } block: bash parses it before running
# it, so editing this file while it runs cannot change what the run does.
{

PORT=${1:?usage: $0 PORT [MODEL_NAME]}
MODEL=${2:-caprl}
BASE="http://127.0.0.1:$PORT"
WORK=$(mktemp -d /tmp/caprl-vllm-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}

fail() { echo "smoke.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke.sh: ok: $*"; }

code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/health" || true)
[[ "$code" == "200" ]] || fail "GET /health gave $code"
ok "/health 200"

curl -sf --max-time 10 "$BASE/v1/models" >"$WORK/models.json" || fail "GET /v1/models failed"
"$PY" - "$WORK/models.json" "$MODEL" <<'EOF' || fail "/v1/models does not list $MODEL"
import json, sys
d = json.load(open(sys.argv[1]))
ids = [m["id"] for m in d["data"]]
assert sys.argv[2] in ids, ids
EOF
ok "/v1/models lists $MODEL"

# metrics helpers: sum of a metric's samples whose labels match a regex
metric_sum() { # NAME LABEL_REGEX
    curl -sf --max-time 10 "$BASE/metrics" | "$PY" -c '
import re, sys
name, lab = sys.argv[1], re.compile(sys.argv[2])
total = 0.0
for line in sys.stdin:
    if line.startswith(name + "{") or line.startswith(name + " "):
        labels, _, value = line.rpartition(" ")
        if lab.search(labels):
            total += float(value)
print(int(total))' "$1" "$2"
}
HTTP_CHAT='handler="/v1/chat/completions"'
http0=$(metric_sum http_requests_total "$HTTP_CHAT")
succ0=$(metric_sum vllm:request_success_total '.')

# a 64x48 PNG (red with a green square), made with the standard library
"$PY" - "$WORK/img.b64" <<'EOF'
import base64, struct, sys, zlib
w, h = 64, 48
rows = b"".join(b"\x00" + b"".join(bytes((20, 200, 40)) if 20 <= x < 40 and 10 <= y < 30 else bytes((200, 30, 30))
                                   for x in range(w)) for y in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
      + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "w").write(base64.b64encode(png).decode())
EOF
B64=$(cat "$WORK/img.b64")

chat_body() { # URL_PREFIX STREAM
    local stream=""
    [[ "$2" == "1" ]] && stream='"stream":true,"stream_options":{"include_usage":true},'
    printf '{"model":"%s","max_tokens":16,"temperature":0,%s"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"%s%s"}},{"type":"text","text":"Describe this image."}]}]}' \
        "$MODEL" "$stream" "$1" "$B64"
}

i=0
for prefix in 'data:image/png;base64,' 'data:image;base64,'; do
    i=$((i + 1))
    rid="smoke-$$-$i"
    chat_body "$prefix" 0 >"$WORK/req$i.json"
    t=$(curl -s -D "$WORK/hdr$i" -o "$WORK/resp$i.json" -w '%{http_code} %{time_total}' --max-time 120 \
        -H 'Content-Type: application/json' -H "X-Request-Id: $rid" \
        "$BASE/v1/chat/completions" -d @"$WORK/req$i.json") || fail "chat request $i: curl failed"
    [[ "${t%% *}" == "200" ]] || { cat "$WORK/resp$i.json" >&2; fail "chat with ${prefix%%,*} gave HTTP ${t%% *}"; }
    grep -qi "^x-request-id: $rid" "$WORK/hdr$i" || fail "X-Request-Id $rid not echoed: $(cat "$WORK/hdr$i")"
    "$PY" - "$WORK/resp$i.json" "$rid" <<'EOF' || fail "chat response $i malformed"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["id"] == "chatcmpl-" + sys.argv[2], d["id"]
assert d["usage"]["completion_tokens"] == 16, d["usage"]
assert d["choices"][0]["finish_reason"] == "length", d["choices"][0]
EOF
    ok "chat with ${prefix%%,*}: 200 in ${t#* }s, 16 tokens, X-Request-Id echoed, id chatcmpl-$rid"
done
"$PY" - "$WORK/resp1.json" "$WORK/resp2.json" <<'EOF' || fail "greedy outputs differ between the two data URL forms"
import json, sys
a, b = (json.load(open(p))["choices"][0]["message"]["content"] for p in sys.argv[1:3])
assert a == b, (a, b)
EOF
ok "both data URL forms give the same greedy text"

chat_body 'data:image/png;base64,' 1 >"$WORK/sreq.json"
t=$(curl -s -N -D "$WORK/shdr" -o "$WORK/sresp.txt" -w '%{http_code} %{time_total} %{time_starttransfer}' --max-time 120 \
    -H 'Content-Type: application/json' -H "X-Request-Id: smoke-$$-stream" \
    "$BASE/v1/chat/completions" -d @"$WORK/sreq.json") || fail "streaming request: curl failed"
[[ "${t%% *}" == "200" ]] || { cat "$WORK/sresp.txt" >&2; fail "streaming chat gave HTTP ${t%% *}"; }
grep -qi '^content-type: text/event-stream' "$WORK/shdr" || fail "streaming response is not text/event-stream"
"$PY" - "$WORK/sresp.txt" "$WORK/resp1.json" <<'EOF' || fail "streaming response malformed"
import json, sys
lines = [l for l in open(sys.argv[1]).read().split("\n") if l.startswith("data: ")]
assert lines[-1] == "data: [DONE]", lines[-1]
chunks = [json.loads(l[6:]) for l in lines[:-1]]
usage = chunks[-1]
assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 16, usage
text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"])
ref = json.load(open(sys.argv[2]))["choices"][0]["message"]["content"]
assert text == ref, (text, ref)
assert any(c["choices"] and c["choices"][0].get("finish_reason") == "length" for c in chunks)
EOF
# shellcheck disable=SC2086  # split "code total ttfb"
set -- $t
ok "streaming: 200, first byte ${3}s, total ${2}s, usage chunk + [DONE], same text as non-streaming"

code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' \
    "$BASE/v1/chat/completions" -d '{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}')
[[ "$code" == "404" ]] || fail "unknown model gave $code, expected 404"

sleep 1  # engine stats reach the API server's /metrics asynchronously
http1=$(metric_sum http_requests_total "$HTTP_CHAT")
succ1=$(metric_sum vllm:request_success_total '.')
[[ $((http1 - http0)) -eq 4 ]] || fail "http_requests_total{$HTTP_CHAT} went $http0 -> $http1, expected +4"
[[ $((succ1 - succ0)) -eq 3 ]] || fail "vllm:request_success_total went $succ0 -> $succ1, expected +3 (the 404 must not count)"
ok "metrics: http_requests_total{$HTTP_CHAT} +4 (incl. the 404), vllm:request_success_total +3"
echo "smoke.sh: all checks passed on port $PORT"
exit
}
