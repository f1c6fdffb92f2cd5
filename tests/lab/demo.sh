#!/usr/bin/env bash
# `make demo`: start the lab (if it is not up), then run kirt's main jobs against it and print
# what each step checked. Stops the lab again if it started it (KEEP_LAB=1 keeps it running).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The first build on a fresh machine compiles ~500 crates (10-20 minutes on 2 cores): say so and
# let cargo show its progress instead of sitting silent.
if [[ ! -x target/debug/kirt ]]; then
  echo "== building kirt and the lab's simulated kubelet (first build: 10-20 minutes on 2 cores)"
fi
cargo build --workspace
KIRT="$PWD/target/debug/kirt"
LAB_DIR="${KIRT_LAB_DIR:-$PWD/.lab}"
started_here=0
if [[ ! -f "$LAB_DIR/env" ]]; then
  bash tests/lab/lab.sh up
  started_here=1
fi
cleanup() { if ((started_here)) && [[ -z "${KEEP_LAB:-}" ]]; then bash tests/lab/lab.sh down; fi; }
trap cleanup EXIT
set -a; source "$LAB_DIR/env"; set +a
export KUBECONFIG="$KIRT_LAB_KUBECONFIG" PATH="$KIRT_LAB_ETCD35_BIN:$PATH"
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

work=$(mktemp -d)
age-keygen -o "$work/backup.key" 2>/dev/null
recipient=$(age-keygen -y "$work/backup.key")

step "a minisign key pair: every backup is signed, only signed backups are restored" \
  "$KIRT" keygen -s "$work/minisign.key" -p "$work/minisign.pub"
export KIRT_SIGN_KEY="$work/minisign.key" KIRT_TRUSTED_KEY="$work/minisign.pub"
step "doctor: apiserver, identity, permissions, CNI, etcd, store, tools" \
  "$KIRT" doctor --etcd-endpoints "$KIRT_LAB_ETCD" --store "$work/backups" --recipient "$recipient" --identity "$work/backup.key"
step "encrypted etcd backup into a local directory" \
  "$KIRT" backup create --etcd-endpoints "$KIRT_LAB_ETCD" --to "$work/backups" --recipient "$recipient" --cluster-name demo \
  --metrics-file "$work/kirt.prom"
step "list backups (SIGNED: checked with \$KIRT_TRUSTED_KEY)" "$KIRT" backup list --from "$work/backups"
obj=$(find "$work/backups" -name '*.etcd.zst.age' | head -1)
step "verify the backup and prove it restores (throwaway etcd, revision and key counts compared)" \
  "$KIRT" backup verify --from "$work/backups" latest --identity "$work/backup.key" --restore
step "restore without kirt: age -d | zstd -d, then etcdutl snapshot status" \
  bash -c "age -d -i '$work/backup.key' '$obj' | zstd -dq > '$work/snap.db' && etcdutl snapshot status -w table '$work/snap.db'"
step "playbook etcd-backup (for cron): backup → verify that very backup → prune, journaled" \
  "$KIRT" --journal "$work/runs" run etcd-backup --yes -p etcd_endpoints="$KIRT_LAB_ETCD" -p to="$work/backups" \
  -p recipient="$recipient" -p identity="$work/backup.key" -p cluster_name=demo -p keep_last=3
demo_ns="kirt-demo-$$"
q_ns="kirt-demo-q-$$"
kubectl create namespace "$demo_ns" >/dev/null
kubectl create namespace "$q_ns" >/dev/null
trap 'kubectl delete namespace "$demo_ns" "$q_ns" --wait=false >/dev/null 2>&1 || true; cleanup' EXIT
kubectl apply -n "$demo_ns" -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, annotations: {kubernetes.io/change-cause: "release 1"}}
spec:
  replicas: 2
  progressDeadlineSeconds: 20
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "nginx:1.25"}]}
YAML
kubectl rollout status deployment/web -n "$demo_ns" --timeout=60s >/dev/null
kubectl set image deployment/web web=nginx:1.26-broken -n "$demo_ns" >/dev/null
kubectl annotate deployment/web kubernetes.io/change-cause="release 2 (broken image)" --overwrite -n "$demo_ns" >/dev/null
step "a bad release: the rollout does not complete (exit 1 expected), stuck pods named" \
  bash -c "'$KIRT' rollout wait deployment/web -n '$demo_ns' --timeout 5s || true"
step "rollback history" "$KIRT" rollback history deployment/web -n "$demo_ns"
step "roll back as kubectl rollout undo would, and wait until healthy" \
  "$KIRT" rollback deployment/web -n "$demo_ns" --yes --wait --timeout 90s
step "playbook rollback-bad-deploy on a second bad release (history → rollback → wait)" \
  bash -c "kubectl set image deployment/web web=nginx:1.27-broken -n '$demo_ns' >/dev/null && \
    '$KIRT' --journal '$work/runs' run rollback-bad-deploy --yes -p namespace='$demo_ns' -p deployment=web -p timeout=90s"

# quarantine: a pod of a demo Deployment, verify (breach, then --exclusive), release
kubectl apply -n "$q_ns" -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "nginx:1.25"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all}
spec: {podSelector: {}, ingress: [{}], egress: [{}], policyTypes: [Ingress, Egress]}
YAML
kubectl rollout status deployment/web -n "$q_ns" --timeout=60s >/dev/null
pod=$(kubectl get pods -n "$q_ns" -l app=web -o jsonpath='{.items[0].metadata.name}')
step "quarantine a pod of the demo Deployment" "$KIRT" quarantine "$pod" -n "$q_ns" --reason demo --allow-dns --yes
step "verify: the allow-all policy still admits traffic (exit 3 expected)" \
  bash -c "'$KIRT' quarantine verify '$pod' -n '$q_ns'; echo \"exit \$?\""
step "--exclusive narrows it" "$KIRT" quarantine "$pod" -n "$q_ns" --exclusive --yes
step "verify again" "$KIRT" quarantine verify "$pod" -n "$q_ns"
step "the ReplicaSet replaced it; the quarantined pod still runs" kubectl get pods -n "$q_ns" -L kirt.dev/quarantined
step "status" "$KIRT" quarantine status -n "$q_ns"
step "forensic evidence of the quarantined pod, encrypted to the demo key" \
  "$KIRT" evidence collect "$pod" -n "$q_ns" --to "$work/evidence" --encrypt-to "$recipient" --checkpoint --case-id DEMO-1
step "verify the evidence bundle (every digest)" \
  bash -c "'$KIRT' evidence verify \"\$(ls '$work'/evidence/*.tar.zst.age | head -1)\" --identity '$work/backup.key'"
step "release restores labels and policies exactly" "$KIRT" release "$pod" -n "$q_ns" --yes
# With its labels back the pod counts for the ReplicaSet again, which now has one too many and
# deletes one of them: the playbook isolates whichever remains.
for _ in $(seq 150); do
  [[ $(kubectl get pods -n "$q_ns" -l app=web -o name | wc -l) == 2 ]] && break  # replicas: 2
  sleep 0.2
done
pod=$(kubectl get pods -n "$q_ns" -l app=web -o jsonpath='{.items[0].metadata.name}')
step "playbook isolate-compromised-pod: evidence → quarantine (confirmed) → verify, journaled" \
  "$KIRT" --journal "$work/runs" run isolate-compromised-pod --yes -p namespace="$q_ns" -p pod="$pod" \
  -p evidence_to="$work/evidence-playbook" -p exclusive=true ${KIRT_LAB_AUDIT_DIR:+-p audit_log="$KIRT_LAB_AUDIT_DIR"}
run_id=$("$KIRT" --journal "$work/runs" runs list -o json | sed -n 's/.*"run_id": "\([^"]*\)".*/\1/p' | head -1)
step "kirt undo of that run: the pod is released exactly" "$KIRT" --journal "$work/runs" undo "$run_id" --yes
step "the run journals (kirt runs show RUN_ID for one run; kirt undo RUN_ID reverses a run)" \
  "$KIRT" --journal "$work/runs" runs list
step "the incident timeline of the isolation run (kirt runs report RUN_ID --format html for one HTML file)" \
  "$KIRT" --journal "$work/runs" runs report "$run_id" ${KIRT_LAB_AUDIT_DIR:+--audit-log "$KIRT_LAB_AUDIT_DIR"}

# point-in-time recovery: a stream of the lab's etcd, an accidental delete, a restore to the
# revision just before it
revision() { etcdctl --endpoints "$KIRT_LAB_ETCD" get / --count-only -w fields | awk '/"Revision"/{print $3}'; }
pitr_ns="kirt-demo-pitr-$$"
kubectl create namespace "$pitr_ns" >/dev/null
printf '\n\033[1m== %s\033[0m\n' "backup stream: a full backup, then a segment of etcd's watch every second (in the background)"
"$KIRT" backup stream --etcd-endpoints "$KIRT_LAB_ETCD" --to "$work/stream" --cluster-name demo-pitr \
  --recipient "$recipient" --segment-every 1s --metrics-file "$work/stream.prom" 2>"$work/stream.log" &
stream_pid=$!
until compgen -G "$work/stream/demo-pitr/*.manifest.json" >/dev/null; do sleep 0.5; done
step "written after the full backup (only the stream's segments hold it)" \
  kubectl create configmap settings -n "$pitr_ns" --from-literal=mode=production
before=$(revision)
step "the accident: a ConfigMap deleted (etcd was at revision $before)" kubectl delete configmap settings -n "$pitr_ns"
after=$(revision)
last() { awk '/^kirt_stream_last_revision/{print $2}' "$work/stream.prom" 2>/dev/null || true; }
until (($(last) + 0 >= after)); do sleep 0.5; done
kill -TERM "$stream_pid" && wait "$stream_pid"
step "the chain: the full backup and its segments" "$KIRT" backup list --from "$work/stream"
peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
step "restore to revision $before, just before the delete (replayed in a scratch etcd, revision bumped)" \
  "$KIRT" restore --from "$work/stream" latest --to-revision "$before" --identity "$work/backup.key" \
  --data-dir "$work/pitr-data" --name demo --initial-cluster "demo=http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer"
client=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
etcd --name demo --data-dir "$work/pitr-data" --listen-peer-urls "http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "demo=http://127.0.0.1:$peer" \
  --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  >"$work/pitr-etcd.log" 2>&1 &
etcd_pid=$!
until etcdctl --endpoints "127.0.0.1:$client" endpoint health >/dev/null 2>&1; do sleep 0.5; done
step "the live cluster: the ConfigMap is gone" etcdctl --endpoints "$KIRT_LAB_ETCD" get --prefix --keys-only "/registry/configmaps/$pitr_ns/settings"
step "the restored member: it is back, with its data" \
  bash -c "etcdctl --endpoints 127.0.0.1:$client get --prefix --keys-only /registry/configmaps/$pitr_ns/settings; etcdctl --endpoints 127.0.0.1:$client get --print-value-only /registry/configmaps/$pitr_ns/settings | tr '\\000-\\037' ' ' | grep -o 'mode.*production'"
kill "$etcd_pid"; wait "$etcd_pid" || true
kubectl delete namespace "$pitr_ns" --wait=false >/dev/null
printf '\ndemo done; files in %s\n' "$work"
