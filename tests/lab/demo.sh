#!/usr/bin/env bash
# `make demo`: start the lab (if it is not up), then run kirt's main jobs against it and print
# what each step checked. Stops the lab again if it started it (KEEP_LAB=1 keeps it running).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --workspace --quiet
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

step "doctor: apiserver, identity, permissions, CNI, etcd, store, tools" \
  "$KIRT" doctor --etcd-endpoints "$KIRT_LAB_ETCD" --store "$work/backups" --recipient "$recipient" --identity "$work/backup.key"
step "encrypted etcd backup into a local directory" \
  "$KIRT" backup create --etcd-endpoints "$KIRT_LAB_ETCD" --to "$work/backups" --recipient "$recipient" --cluster-name demo \
  --metrics-file "$work/kirt.prom"
step "list backups" "$KIRT" backup list --from "$work/backups"
obj=$(find "$work/backups" -name '*.etcd.zst.age' | head -1)
step "restore without kirt: age -d | zstd -d, then etcdutl snapshot status" \
  bash -c "age -d -i '$work/backup.key' '$obj' | zstd -dq > '$work/snap.db' && etcdutl snapshot status -w table '$work/snap.db'"
# quarantine: a pod of a demo Deployment, verify (breach, then --exclusive), release
ns=kirt-demo-$$
kubectl create namespace "$ns" >/dev/null
trap 'kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1; cleanup' EXIT
kubectl apply -n "$ns" -f - >/dev/null <<'EOF'
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
EOF
kubectl rollout status deployment/web -n "$ns" --timeout=60s >/dev/null
pod=$(kubectl get pods -n "$ns" -l app=web -o jsonpath='{.items[0].metadata.name}')
step "quarantine a pod of the demo Deployment" "$KIRT" quarantine "$pod" -n "$ns" --reason demo --allow-dns --yes
step "verify: the allow-all policy still admits traffic (exit 3 expected)" \
  bash -c "'$KIRT' quarantine verify '$pod' -n '$ns'; echo \"exit \$?\""
step "--exclusive narrows it" "$KIRT" quarantine "$pod" -n "$ns" --exclusive --yes
step "verify again" "$KIRT" quarantine verify "$pod" -n "$ns"
step "the ReplicaSet replaced it; the quarantined pod still runs" kubectl get pods -n "$ns" -L kirt.dev/quarantined
step "status" "$KIRT" quarantine status -n "$ns"
step "release restores labels and policies exactly" "$KIRT" release "$pod" -n "$ns" --yes

printf '\ndemo done; files in %s\n' "$work"
