#!/usr/bin/env bash
# A real `helm install`, `helm upgrade` and `helm uninstall` of the chart against the API server
# of $KUBECONFIG (deploy/helm/test.sh starts it). Prints "ok …" or "FAILED …" per check.
#
#   tests/release.sh CHART TESTS-DIR
set -uo pipefail
CHART=$1
TESTS=$2
NS=sluice-release
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

ok() { echo "ok $1"; }
failed() {
  echo "FAILED $1"
  [ -s "$OUT" ] && sed 's/^/  /' "$OUT" | head -20
}
# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
  if [ "$2" = "$3" ]; then ok "$1"; else echo "FAILED $1: got '$2', want '$3'"; fi
}
annotation() { # the config checksum of a Deployment's pods
  kubectl -n "$NS" get deployment "$1" -o jsonpath='{.spec.template.metadata.annotations.checksum/config}'
}
generation() { kubectl -n "$NS" get deployment "$1" -o jsonpath='{.metadata.generation}'; }

kubectl create namespace "$NS" >/dev/null
kubectl -n "$NS" create secret generic sluice-postgres --from-literal=password=secret >/dev/null
kubectl -n "$NS" create secret generic sluice-elasticsearch --from-literal=api-key=secret >/dev/null

values=(-f "$TESTS/values/minimal.yaml" --set image.tag=local)
if helm install sluice "$CHART" -n "$NS" "${values[@]}" >"$OUT" 2>&1; then
  ok "helm install"
else
  failed "helm install"
  exit 1
fi
expect_eq "installed release is deployed" "$(helm status sluice -n "$NS" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["info"]["status"])')" deployed
kubectl -n "$NS" get deployment,service,configmap,poddisruptionbudget,serviceaccount \
  -l app.kubernetes.io/instance=sluice -o name | sort >"$OUT"
expect_eq "install made the objects" "$(tr '\n' ' ' <"$OUT")" \
  "configmap/sluice deployment.apps/sluice-consumer-products-search deployment.apps/sluice-producer poddisruptionbudget.policy/sluice-consumer-products-search service/sluice-consumer service/sluice-producer serviceaccount/sluice "
expect_eq "installed image" "$(kubectl -n "$NS" get deployment sluice-producer -o jsonpath='{.spec.template.spec.containers[0].image}')" "sluice:local"

producer_sum=$(annotation sluice-producer)
consumer_sum=$(annotation sluice-consumer-products-search)
producer_gen=$(generation sluice-producer)

# The same values again: nothing in the pods changes.
if helm upgrade sluice "$CHART" -n "$NS" "${values[@]}" >"$OUT" 2>&1; then
  ok "helm upgrade with the same values"
else
  failed "helm upgrade with the same values"
fi
expect_eq "same config, same checksum" "$(annotation sluice-producer)" "$producer_sum"
expect_eq "same config, pods not rolled" "$(generation sluice-producer)" "$producer_gen"

# A config change rolls every pod: new checksum, new Deployment generation.
if helm upgrade sluice "$CHART" -n "$NS" "${values[@]}" --set config.kafka.partitions=3 >"$OUT" 2>&1; then
  ok "helm upgrade with a config change"
else
  failed "helm upgrade with a config change"
fi
new_sum=$(annotation sluice-producer)
if [ -n "$new_sum" ] && [ "$new_sum" != "$producer_sum" ]; then
  ok "config change: new producer checksum"
else
  echo "FAILED config change: producer checksum still '$new_sum'"
fi
if [ "$(annotation sluice-consumer-products-search)" != "$consumer_sum" ]; then
  ok "config change: new consumer checksum"
else
  echo "FAILED config change: consumer checksum unchanged"
fi
expect_eq "config change: producer rolled (generation)" "$(generation sluice-producer)" "$((producer_gen + 1))"
kubectl -n "$NS" get configmap sluice -o jsonpath='{.data.sluice\.yaml}' >"$OUT"
if grep -q 'partitions: 3' "$OUT"; then ok "config change: ConfigMap holds it"; else failed "config change: ConfigMap holds it"; fi
expect_eq "release history" "$(helm history sluice -n "$NS" -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" 3

# A value the server refuses fails the upgrade and leaves the release as it was.
if helm upgrade sluice "$CHART" -n "$NS" "${values[@]}" -f "$TESTS/server-refuses/wrong-type.yaml" >"$OUT" 2>&1; then
  failed "upgrade with a wrong type is refused"
else
  ok "upgrade with a wrong type is refused"
fi
expect_eq "refused upgrade left the running config" "$(annotation sluice-producer)" "$new_sum"

if helm uninstall sluice -n "$NS" >"$OUT" 2>&1; then ok "helm uninstall"; else failed "helm uninstall"; fi
kubectl -n "$NS" get deployment,service,configmap,poddisruptionbudget,serviceaccount \
  -l app.kubernetes.io/instance=sluice -o name >"$OUT" 2>&1
expect_eq "uninstall removed every object" "$(wc -l <"$OUT" | tr -d ' ')" 0
expect_eq "no release left" "$(helm list -n "$NS" -a -q | wc -l | tr -d ' ')" 0

# KEDA's ScaledObject stored by the server.
kubectl -n "$NS" create secret generic sluice-credentials --from-literal=PG_URL=postgres://x >/dev/null
if helm install keda "$CHART" -n "$NS" -f "$TESTS/values/keda.yaml" >"$OUT" 2>&1; then
  ok "helm install with KEDA autoscaling"
else
  failed "helm install with KEDA autoscaling"
fi
expect_eq "ScaledObjects stored" "$(kubectl -n "$NS" get scaledobjects.keda.sh -o name | sort | tr '\n' ' ')" \
  "scaledobject.keda.sh/keda-sluice-consumer-orders-search scaledobject.keda.sh/keda-sluice-consumer-products-search "
helm uninstall keda -n "$NS" >/dev/null 2>&1
expect_eq "ScaledObjects removed" "$(kubectl -n "$NS" get scaledobjects.keda.sh -o name | wc -l | tr -d ' ')" 0
