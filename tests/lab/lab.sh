#!/usr/bin/env bash
# Starts and stops the kirt lab: real etcd (3.5, 3.4, and a client-cert TLS 3.5), kube-apiserver,
# kube-controller-manager, the simulated kubelet (2 fake Nodes) and two S3 servers (moto, s3s-fs),
# all on 127.0.0.1 on free ports. Writes $LAB_DIR/env for tests and `make demo`. The apiserver
# writes a real audit log under $LAB_DIR/audit (audit-policy.yaml below; rotated at 100 MB, gzipped).
# Stops only the PIDs it started (recorded in $LAB_DIR/pids).
#
#   tests/lab/lab.sh up|down|status
#   KIRT_LAB_DIR (default ./.lab)   KIRT_LAB_ETCD_VERSION=3.5|3.4 (etcd behind the apiserver)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
LAB_DIR="${KIRT_LAB_DIR:-$ROOT/.lab}"
K8S_BIN="$CACHE/k8s-1.20.2/bin"
ETCD35_BIN="$CACHE/etcd-3.5/usr/bin"
KUBELET_BIN="${KIRT_LAB_KUBELET:-$ROOT/target/debug/kirt-lab-kubelet}"
MAIN_ETCD_VERSION="${KIRT_LAB_ETCD_VERSION:-3.5}"
TIMEOUT="${KIRT_LAB_TIMEOUT:-60}"

log() { printf '[lab] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

free_port() { python3 "$ROOT/tests/lab/free-port.py" "$LAB_DIR/ports"; }

# start NAME CMD... : runs CMD in its own session, logs to $LAB_DIR/logs/NAME.log, records its PID.
start() {
  local name=$1; shift
  setsid "$@" >"$LAB_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$LAB_DIR/pids/$name"
}

# wait_for NAME DESCRIPTION CMD... : polls CMD until it succeeds; on timeout prints the log and fails.
wait_for() {
  local name=$1 what=$2; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$LAB_DIR/pids/$name")" 2>/dev/null; then
      log "$name exited before it was ready ($what). Last log lines ($LAB_DIR/logs/$name.log):"
      tail -25 "$LAB_DIR/logs/$name.log" >&2; down_quiet; exit 1
    fi
    if ((SECONDS > deadline)); then
      log "$name not ready after ${TIMEOUT}s ($what). Last log lines ($LAB_DIR/logs/$name.log):"
      tail -25 "$LAB_DIR/logs/$name.log" >&2; down_quiet; exit 1
    fi
    sleep 0.2
  done
}

etcd_bin() { [[ $1 == 3.4 ]] && echo /usr/bin/etcd || echo "$ETCD35_BIN/etcd"; }
etcdctl_bin() { [[ $1 == 3.4 ]] && echo /usr/bin/etcdctl || echo "$ETCD35_BIN/etcdctl"; }

# start_etcd NAME VERSION CLIENT_PORT [tls]
start_etcd() {
  local name=$1 version=$2 port=$3 tls=${4:-} peer scheme=http extra=()
  peer=$(free_port)
  if [[ $tls == tls ]]; then
    scheme=https
    extra=(--client-cert-auth --trusted-ca-file "$LAB_DIR/pki/ca.crt"
           --cert-file "$LAB_DIR/pki/etcd-server.crt" --key-file "$LAB_DIR/pki/etcd-server.key")
  fi
  start "$name" env ETCD_UNSUPPORTED_ARCH= "$(etcd_bin "$version")" --name "$name" --data-dir "$LAB_DIR/data/$name" \
    --listen-client-urls "$scheme://127.0.0.1:$port" --advertise-client-urls "$scheme://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$name=http://127.0.0.1:$peer" --initial-cluster-state new \
    --quota-backend-bytes 4294967296 "${extra[@]}"
}

make_pki() {
  local d="$LAB_DIR/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kirt-lab-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # a second, unrelated CA for "wrong CA" tests
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kirt-lab-other-ca" \
    -keyout "$d/other-ca.key" -out "$d/other-ca.crt" 2>/dev/null
  local cn
  for cn in etcd-server etcd-client; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$d/$cn.key" -out "$d/$cn.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/$cn.ext"
    openssl x509 -req -in "$d/$cn.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
      -extfile "$d/$cn.ext" -out "$d/$cn.crt" 2>/dev/null
  done
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

write_kubeconfig() { # FILE TOKEN USER
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kirt-lab
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $LAB_DIR/apiserver/apiserver.crt
users:
- name: $3
  user:
    token: $2
contexts:
- name: kirt-lab
  context: {cluster: kirt-lab, user: $3, namespace: default}
current-context: kirt-lab
KC
}

up() {
  [[ -f "$LAB_DIR/env" ]] && { log "lab already up ($LAB_DIR/env); run '$0 down' first"; exit 1; }
  for b in "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" "$ETCD35_BIN/etcd" /usr/bin/etcd \
           "$CACHE/moto/bin/moto_server" "$CACHE/s3s-fs/bin/s3s-fs" "$KUBELET_BIN"; do
    [[ -x $b ]] || die "missing $b: run 'make lab-deps' (and 'cargo build -p kirt-lab-kubelet')"
  done
  rm -rf "$LAB_DIR" && mkdir -p "$LAB_DIR"/{logs,pids,data,apiserver,s3s-fs,kubelet,audit}
  local started=$SECONDS
  make_pki

  ETCD_PORT=$(free_port); ETCD34_PORT=$(free_port); ETCD_TLS_PORT=$(free_port)
  API_PORT=$(free_port); KCM_PORT=$(free_port); KUBELET_PORT=$(free_port)
  MOTO_PORT=$(free_port); S3S_PORT=$(free_port)
  local admin_token s3s_key=kirtlab s3s_secret
  admin_token="lab-admin-$(openssl rand -hex 16)"
  s3s_secret="$(openssl rand -hex 16)"

  local other=3.4; [[ $MAIN_ETCD_VERSION == 3.4 ]] && other=3.5
  start_etcd etcd "$MAIN_ETCD_VERSION" "$ETCD_PORT"
  start_etcd etcd-other "$other" "$ETCD34_PORT"
  start_etcd etcd-tls 3.5 "$ETCD_TLS_PORT" tls
  start moto "$CACHE/moto/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  start s3s-fs "$CACHE/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$S3S_PORT" \
    --access-key "$s3s_key" --secret-key "$s3s_secret" "$LAB_DIR/s3s-fs"

  wait_for etcd "etcd $MAIN_ETCD_VERSION health" "$(etcdctl_bin "$MAIN_ETCD_VERSION")" --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint health
  wait_for etcd-other "etcd $other health" "$(etcdctl_bin "$other")" --endpoints "http://127.0.0.1:$ETCD34_PORT" endpoint health
  wait_for etcd-tls "TLS etcd health" "$ETCD35_BIN/etcdctl" --endpoints "https://127.0.0.1:$ETCD_TLS_PORT" \
    --cacert "$LAB_DIR/pki/ca.crt" --cert "$LAB_DIR/pki/etcd-client.crt" --key "$LAB_DIR/pki/etcd-client.key" endpoint health

  printf '%s,kirt-admin,kirt-admin,"system:masters"\n%s,lab-nobody,lab-nobody\n' "$admin_token" "lab-nobody-$(openssl rand -hex 8)" \
    >"$LAB_DIR/apiserver/tokens.csv"
  # Metadata for every request; RequestResponse for the one Secret the audit redaction test reads,
  # so that a real event carries a Secret's data for kirt to redact.
  cat >"$LAB_DIR/apiserver/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: RequestResponse
  resources: [{group: "", resources: [secrets], resourceNames: [kirt-audit-redaction]}]
- level: Metadata
POLICY
  start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
    --cert-dir "$LAB_DIR/apiserver" --token-auth-file "$LAB_DIR/apiserver/tokens.csv" --authorization-mode RBAC \
    --service-account-key-file "$LAB_DIR/pki/sa.pub" --service-account-signing-key-file "$LAB_DIR/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true --endpoint-reconciler-type none --kubelet-preferred-address-types InternalIP \
    --audit-policy-file "$LAB_DIR/apiserver/audit-policy.yaml" --audit-log-path "$LAB_DIR/audit/audit.log" \
    --audit-log-maxsize 100 --audit-log-maxbackup 5 --audit-log-compress

  write_kubeconfig "$LAB_DIR/kubeconfig" "$admin_token" kirt-admin
  wait_for kube-apiserver "GET /readyz" kubectl --kubeconfig "$LAB_DIR/kubeconfig" get --raw /readyz

  start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$LAB_DIR/kubeconfig" \
    --leader-elect=false --controllers '*' --service-account-private-key-file "$LAB_DIR/pki/sa.key" \
    --root-ca-file "$LAB_DIR/apiserver/apiserver.crt" --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --port 0
  start kubelet "$KUBELET_BIN" --kubeconfig "$LAB_DIR/kubeconfig" --nodes lab-node-1,lab-node-2 \
    --listen "127.0.0.1:$KUBELET_PORT" --cert-dir "$LAB_DIR/kubelet"
  wait_for kubelet "nodes Ready" kubectl --kubeconfig "$LAB_DIR/kubeconfig" wait --for condition=Ready node/lab-node-1 node/lab-node-2 --timeout 1s
  wait_for kube-controller-manager "default ServiceAccount created" kubectl --kubeconfig "$LAB_DIR/kubeconfig" get serviceaccount default -n default
  wait_for moto "GET /" curl -sf "http://127.0.0.1:$MOTO_PORT/"
  wait_for s3s-fs "port open" bash -c "exec 3<>/dev/tcp/127.0.0.1/$S3S_PORT"

  cat >"$LAB_DIR/env.tmp" <<ENV
# written by tests/lab/lab.sh up; sourced by tests and make demo
KIRT_LAB_DIR=$LAB_DIR
KIRT_LAB_KUBECONFIG=$LAB_DIR/kubeconfig
KIRT_LAB_ADMIN_TOKEN=$admin_token
KIRT_LAB_APISERVER=https://127.0.0.1:$API_PORT
KIRT_LAB_KUBE_BIN=$K8S_BIN
KIRT_LAB_ETCD_VERSION=$MAIN_ETCD_VERSION
KIRT_LAB_ETCD=http://127.0.0.1:$ETCD_PORT
KIRT_LAB_ETCD_OTHER=http://127.0.0.1:$ETCD34_PORT
KIRT_LAB_ETCD_OTHER_VERSION=$other
KIRT_LAB_ETCD_TLS=https://127.0.0.1:$ETCD_TLS_PORT
KIRT_LAB_ETCD_CA=$LAB_DIR/pki/ca.crt
KIRT_LAB_ETCD_OTHER_CA=$LAB_DIR/pki/other-ca.crt
KIRT_LAB_ETCD_CERT=$LAB_DIR/pki/etcd-client.crt
KIRT_LAB_ETCD_KEY=$LAB_DIR/pki/etcd-client.key
KIRT_LAB_ETCD35_BIN=$ETCD35_BIN
KIRT_LAB_S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT
KIRT_LAB_S3S_ENDPOINT=http://127.0.0.1:$S3S_PORT
KIRT_LAB_S3S_ACCESS_KEY=$s3s_key
KIRT_LAB_S3S_SECRET_KEY=$s3s_secret
KIRT_LAB_S3S_DATA=$LAB_DIR/s3s-fs
KIRT_LAB_S3S_BIN=$CACHE/s3s-fs/bin/s3s-fs
KIRT_LAB_MOTO_BIN=$CACHE/moto/bin/moto_server
KIRT_LAB_KUBELET_PORT=$KUBELET_PORT
KIRT_LAB_AUDIT_DIR=$LAB_DIR/audit
ENV
  for f in "$LAB_DIR"/pids/*; do echo "KIRT_LAB_PID_$(basename "$f" | tr a-z- A-Z_)=$(cat "$f")"; done >>"$LAB_DIR/env.tmp"
  mv "$LAB_DIR/env.tmp" "$LAB_DIR/env"
  log "up in $((SECONDS - started))s: apiserver https://127.0.0.1:$API_PORT, etcd $MAIN_ETCD_VERSION :$ETCD_PORT, etcd $other :$ETCD34_PORT, TLS etcd :$ETCD_TLS_PORT, moto :$MOTO_PORT, s3s-fs :$S3S_PORT"
  log "env: $LAB_DIR/env   logs: $LAB_DIR/logs/"
}

# stop the PIDs recorded in $LAB_DIR/pids, and only those
down_quiet() {
  [[ -d "$LAB_DIR/pids" ]] || return 0
  local f pid
  for f in "$LAB_DIR"/pids/*; do
    [[ -f $f ]] || continue
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 10))
  for f in "$LAB_DIR"/pids/*; do
    [[ -f $f ]] || continue
    pid=$(cat "$f")
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
  done
  rm -f "$LAB_DIR/env"
}

down() { down_quiet; log "down"; }

status() {
  [[ -f "$LAB_DIR/env" ]] || { log "lab is down"; exit 1; }
  local f rc=0
  for f in "$LAB_DIR"/pids/*; do
    if kill -0 "$(cat "$f")" 2>/dev/null; then log "$(basename "$f"): running"; else log "$(basename "$f"): DEAD"; rc=1; fi
  done
  exit $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
