#!/usr/bin/env bash
# A Kubernetes API server on 127.0.0.1 for the chart's tests: etcd from Debian's etcd-server and
# kube-apiserver built by build.sh, with a self-signed certificate and a token file. No
# scheduler, controllers or kubelet: objects are stored and validated, pods never run.
#
#   deploy/kube/apiserver.sh start   # fresh etcd data; prints `export KUBECONFIG=…` and PATH
#   deploy/kube/apiserver.sh stop
#
# State (data, certificates, logs, kubeconfig) under $SLUICE_STATE_DIR/kube.
set -euo pipefail
SERVICE=kube-apiserver
KUBE_DIR=$(cd "$(dirname "$0")" && pwd)
. "$KUBE_DIR/lib.sh"

stop_pid() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$file"
}

stop() {
  stop_pid "$KUBE_STATE_DIR/kube-apiserver.pid"
  stop_pid "$KUBE_STATE_DIR/etcd.pid"
  forget_port kube-apiserver
  forget_port kube-etcd
  forget_port kube-etcd-peer
}

make_certs() {
  local dir=$KUBE_STATE_DIR/pki
  mkdir -p "$dir"
  [ -s "$dir/apiserver.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=kube-apiserver" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$dir/apiserver.key" -out "$dir/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$dir/service-account.key" 2048 2>/dev/null
  # token,user,uid,"group": the test's user is a cluster admin.
  echo "$(openssl rand -hex 24),sluice-test,sluice-test,system:masters" >"$dir/tokens.csv"
  chmod 600 "$dir"/*.key "$dir/tokens.csv"
}

start() {
  apt_install etcd-server openssl curl
  local bin
  bin=$("$KUBE_DIR/build.sh")
  stop
  # A fresh store each time: the tests' namespaces cannot be deleted without the namespace
  # controller, so nothing is kept from one run to the next.
  rm -rf "$KUBE_STATE_DIR/etcd"
  make_certs
  local etcd_port peer_port api_port pki=$KUBE_STATE_DIR/pki
  etcd_port=$(pick_port kube-etcd 2379)
  peer_port=$(pick_port kube-etcd-peer $((etcd_port + 1)))
  api_port=$(pick_port kube-apiserver 6443)

  log "starting etcd on 127.0.0.1:$etcd_port"
  etcd --name kube-test --data-dir "$KUBE_STATE_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "kube-test=http://127.0.0.1:$peer_port" \
    >"$KUBE_STATE_DIR/etcd.log" 2>&1 &
  echo $! >"$KUBE_STATE_DIR/etcd.pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"' && break
    kill -0 "$(cat "$KUBE_STATE_DIR/etcd.pid")" 2>/dev/null ||
      die "etcd exited: $(tail -5 "$KUBE_STATE_DIR/etcd.log")"
    sleep 0.2
  done

  log "starting kube-apiserver on https://127.0.0.1:$api_port"
  "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/service-account.key" \
    --service-account-signing-key-file "$pki/service-account.key" \
    --service-cluster-ip-range 10.96.0.0/24 --endpoint-reconciler-type none \
    >"$KUBE_STATE_DIR/kube-apiserver.log" 2>&1 &
  echo $! >"$KUBE_STATE_DIR/kube-apiserver.pid"

  local kubeconfig=$KUBE_STATE_DIR/kubeconfig token
  token=$(cut -d, -f1 "$pki/tokens.csv")
  cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster:
      server: https://127.0.0.1:$api_port
      certificate-authority: $pki/apiserver.crt
users:
  - name: sluice-test
    user:
      token: $token
contexts:
  - name: local
    context: { cluster: local, user: sluice-test, namespace: default }
current-context: local
KUBECONFIG
  chmod 600 "$kubeconfig"
  local ready=""
  for _ in $(seq 1 300); do
    if "$bin/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
      ready=yes
      break
    fi
    kill -0 "$(cat "$KUBE_STATE_DIR/kube-apiserver.pid")" 2>/dev/null ||
      die "kube-apiserver exited: $(tail -5 "$KUBE_STATE_DIR/kube-apiserver.log")"
    sleep 0.5
  done
  [ -n "$ready" ] || die "kube-apiserver not ready after 150 s: $KUBE_STATE_DIR/kube-apiserver.log"
  log "kube-apiserver $("$bin/kubectl" --kubeconfig "$kubeconfig" version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1) ready"
  echo "export KUBECONFIG=$kubeconfig"
  echo "export PATH=$bin:\$PATH"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
