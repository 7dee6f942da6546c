#!/usr/bin/env bash
# Tests of the Helm chart (deploy/helm/sluice) against a real Kubernetes API server on 127.0.0.1
# (deploy/kube/apiserver.sh): lint and template of every values file in tests/values, what the
# manifests promise (tests/check_rendered.py), server-side strict validation of every manifest,
# values the server refuses (tests/server-refuses) and values the chart refuses
# (tests/chart-refuses), the HPA fallback and KEDA's ScaledObject chosen by what the server
# serves, and a real install, upgrade and uninstall. Then the pods' promises that the API server
# cannot run, in Docker (tests/docker.sh).
#
#   deploy/helm/test.sh
#
# Prints one line per check and "N passed, N failed" at the end; exits 1 when a check failed.
set -euo pipefail
SERVICE=helm-test
HELM_DIR=$(cd "$(dirname "$0")" && pwd)
. "$HELM_DIR/../kube/lib.sh"

CHART=$HELM_DIR/sluice
TESTS=$HELM_DIR/tests
KEDA_CRD=$HELM_DIR/../kube/crds/keda-v2.16.1-scaledobjects.keda.sh.yaml
WORK=$(mktemp -d "$KUBE_STATE_DIR/helm-test.XXXXXX")
export HELM_CACHE_HOME=$WORK/helm/cache HELM_CONFIG_HOME=$WORK/helm/config HELM_DATA_HOME=$WORK/helm/data

apt_install python3-yaml

cleanup() {
  local status=$?
  "$HELM_DIR/../kube/apiserver.sh" stop || true
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT
kube_env=$("$HELM_DIR/../kube/apiserver.sh" start) || die "the API server did not start"
eval "$kube_env"
export KUBE_VERSION
KUBE_VERSION=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
log "helm $(helm version --short), kubectl and kube-apiserver $KUBE_VERSION"

passed=0
failed=0
# ok NAME / not_ok NAME OUTPUT-FILE: one line per check.
ok() {
  passed=$((passed + 1))
  echo "ok      $1"
}
not_ok() {
  failed=$((failed + 1))
  echo "FAILED  $1"
  [ -n "${2:-}" ] && sed 's/^/        /' "$2" | head -40
  return 0
}
# relay FILE: counts the "ok …"/"FAILED …" lines a test script printed.
relay() {
  local line
  while IFS= read -r line; do
    case $line in
      "ok "*) ok "${line#ok }" ;;
      "FAILED "*) not_ok "${line#FAILED }" ;;
      *) echo "        $line" ;;
    esac
  done <"$1"
}
# expect_of FILE: the regex on its `# expect:` line.
expect_of() { sed -n 's/^# expect: //p' "$1"; }

render() { # render OUT-FILE helm-template-args...
  local out=$1
  shift
  helm template sluice "$CHART" --namespace sluice-test --kube-version "$KUBE_VERSION" "$@" >"$out" 2>"$out.err"
}

kubectl create namespace sluice-test >/dev/null

# engine_check NAME CHECK: `helm install --dry-run=server` of tests/values/shared.yaml renders
# with the capabilities the server announces; CHECK (check_rendered.py) reads the manifests.
engine_check() {
  if helm install sluice "$CHART" -n sluice-test -f "$TESTS/values/shared.yaml" --dry-run=server \
    -o json >"$WORK/dry-run.json" 2>"$WORK/check.out" &&
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest"])' "$WORK/dry-run.json" \
      >"$WORK/dry-run.yaml" 2>>"$WORK/check.out" &&
    python3 "$TESTS/check_rendered.py" "$2" "$WORK/dry-run.yaml" >"$WORK/check.out" 2>&1; then
    ok "$1"
  else
    not_ok "$1" "$WORK/check.out"
  fi
}
# The HPA fallback: the server does not serve keda.sh yet, so `engine: auto` makes an HPA.
engine_check "auto engine without KEDA on the server: HorizontalPodAutoscaler" shared
kubectl apply -f "$KEDA_CRD" >/dev/null
kubectl wait --for condition=Established --timeout 60s crd/scaledobjects.keda.sh >/dev/null
engine_check "auto engine with KEDA's CRD on the server: ScaledObject" shared-with-keda

# Every values file: lint, render, the chart's promises, then the API server's strict validation.
for values in "$TESTS"/values/*.yaml; do
  name=$(basename "$values" .yaml)
  if helm lint --strict --kube-version "$KUBE_VERSION" "$CHART" -f "$values" >"$WORK/lint.out" 2>&1; then
    ok "helm lint $name"
  else
    not_ok "helm lint $name" "$WORK/lint.out"
  fi
  if ! render "$WORK/$name.yaml" -f "$values"; then
    not_ok "helm template $name" "$WORK/$name.yaml.err"
    continue
  fi
  if python3 "$TESTS/check_rendered.py" "$name" "$WORK/$name.yaml" >"$WORK/check.out" 2>&1; then
    ok "rendered $name keeps the chart's promises"
  else
    not_ok "rendered $name keeps the chart's promises" "$WORK/check.out"
  fi
  if kubectl apply --dry-run=server --validate=strict -n sluice-test -f "$WORK/$name.yaml" \
    >"$WORK/apply.out" 2>&1; then
    ok "server accepts $name ($(grep -c 'created (server dry run)' "$WORK/apply.out") objects, strict)"
  else
    not_ok "server accepts $name" "$WORK/apply.out"
  fi
done

# The ServiceMonitor needs the Prometheus operator's CRD, which this server does not have:
# rendered and checked only.
if render "$WORK/monitor.yaml" -f "$TESTS/values/minimal.yaml" --set serviceMonitor.enabled=true &&
  python3 "$TESTS/check_rendered.py" service-monitor "$WORK/monitor.yaml" >"$WORK/check.out" 2>&1; then
  ok "rendered ServiceMonitor"
else
  not_ok "rendered ServiceMonitor" "$WORK/check.out"
fi

# The PrometheusRule (same CRD situation) carries exactly the rules of files/alerts.yaml, which
# deploy/prometheus/test.sh checks and unit-tests with promtool.
if render "$WORK/rules.yaml" -f "$TESTS/values/minimal.yaml" --set prometheusRule.enabled=true &&
  python3 - "$WORK/rules.yaml" "$CHART/files/alerts.yaml" >"$WORK/check.out" 2>&1 <<'PY'; then
import sys, yaml
rules = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
assert len(rules) == 1, f"{len(rules)} PrometheusRules rendered"
assert rules[0]["spec"] == yaml.safe_load(open(sys.argv[2])), "spec differs from files/alerts.yaml"
PY
  ok "rendered PrometheusRule holds files/alerts.yaml"
else
  not_ok "rendered PrometheusRule holds files/alerts.yaml" "$WORK/check.out"
fi

# Broken values the chart renders but the API server refuses: unknown fields, wrong types and
# invalid values are caught by the server's validation, not by the chart.
for broken in "$TESTS"/server-refuses/*.yaml; do
  name=$(basename "$broken" .yaml)
  expect=$(expect_of "$broken")
  if ! render "$WORK/broken.yaml" -f "$TESTS/values/minimal.yaml" -f "$broken"; then
    not_ok "server refuses $name: the chart should render it" "$WORK/broken.yaml.err"
  elif kubectl apply --dry-run=server --validate=strict -n sluice-test -f "$WORK/broken.yaml" \
    >"$WORK/apply.out" 2>&1; then
    not_ok "server refuses $name: it accepted it" "$WORK/apply.out"
  elif grep -Eq "$expect" "$WORK/apply.out"; then
    ok "server refuses $name: $(grep -Eo "$expect" "$WORK/apply.out" | head -1)"
  else
    not_ok "server refuses $name, but not with /$expect/" "$WORK/apply.out"
  fi
done

# Values the chart refuses itself (values.schema.json, or the templates' own checks), at
# install time with the field named.
for bad in "$TESTS"/chart-refuses/*.yaml; do
  name=$(basename "$bad" .yaml)
  expect=$(expect_of "$bad")
  if render "$WORK/bad.yaml" -f "$TESTS/values/minimal.yaml" -f "$bad"; then
    not_ok "chart refuses $name: it rendered" "$WORK/bad.yaml"
  elif grep -Eq "$expect" "$WORK/bad.yaml.err"; then
    ok "chart refuses $name: $(grep -Eo "$expect" "$WORK/bad.yaml.err" | head -1)"
  else
    not_ok "chart refuses $name, but not with /$expect/" "$WORK/bad.yaml.err"
  fi
done

# A real install, upgrade and uninstall.
"$TESTS/release.sh" "$CHART" "$TESTS" >"$WORK/release.out" 2>&1 || true
relay "$WORK/release.out"

# Behaviour in the pods: probes, SIGTERM, non-root with a read-only root, mounted config.
"$TESTS/docker.sh" "$CHART" "$TESTS" "$WORK" >"$WORK/docker.out" 2>&1 || true
relay "$WORK/docker.out"

echo "chart: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
