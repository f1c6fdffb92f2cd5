#!/usr/bin/env bash
# Audit-log benchmark (issue K12): `kirt evidence collect --audit-log` over a ~1 GiB audit log made
# from the lab apiserver's own event shapes (benches/audit_log.rs), against `jq -c 'select(…)'`
# with the same selection on the same file. Targets: kirt >= 3x faster than jq, kirt's peak RSS
# <= 64 MiB, and both select the same number of events. Needs a running lab whose apiserver
# writes an audit log (`make lab-up`); KIRT_BIN names the kirt binary (default: release build).
# KIRT_BENCH_AUDIT_MIB sets the log size (default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB_DIR="${KIRT_LAB_DIR:-$PWD/.lab}"
[[ -f "$LAB_DIR/env" ]] || { echo "the lab is not running: make lab-up" >&2; exit 1; }
set -a; source "$LAB_DIR/env"; set +a
[[ -n "${KIRT_LAB_AUDIT_DIR:-}" ]] || { echo "this lab writes no audit log (started before K12): make lab-down lab-up" >&2; exit 1; }
export KUBECONFIG="$KIRT_LAB_KUBECONFIG"
MIB="${KIRT_BENCH_AUDIT_MIB:-1024}"
LIMIT_KIB=$((64 * 1024))
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
nice -n 5 ${CARGO:-cargo} build --release --quiet --bench audit_log
[[ -n "${KIRT_BIN:-}" ]] || nice -n 5 ${CARGO:-cargo} build --release --quiet --bin kirt
KIRT="${KIRT_BIN:-$TARGET/release/kirt}"
GEN=$(ls -t "$TARGET"/release/deps/audit_log-* | grep -v '\.d$' | head -1)

ns="kirt-bench-audit-$$"
work=$(mktemp -d /tmp/kirt-bench-audit.XXXXXX)
cleanup() { kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
kubectl create namespace "$ns" >/dev/null
kubectl create serviceaccount bench-intruder -n "$ns" >/dev/null
kubectl apply -n "$ns" -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: bench-victim}
spec:
  serviceAccountName: bench-intruder
  containers: [{name: app, image: nginx}]
YAML
kubectl wait --for condition=Ready pod/bench-victim -n "$ns" --timeout 60s >/dev/null
ip=$(kubectl get pod bench-victim -n "$ns" -o jsonpath='{.status.podIP}')
token_secret=$(kubectl get serviceaccount bench-intruder -n "$ns" -o jsonpath='{.secrets[0].name}')

# templates: the lab apiserver's own events (the live file)
t0=$SECONDS
wanted=$("$GEN" "$KIRT_LAB_AUDIT_DIR/audit.log" "$work/audit.log" "$MIB" "$ns" bench-victim bench-intruder "$ip")
size=$(stat -c %s "$work/audit.log")
echo "generated $size bytes ($wanted events concern the pod) in $((SECONDS - t0))s"
cat "$work/audit.log" > /dev/null   # both contenders read a file that is in the page cache

/usr/bin/time -f '%e %M' -o "$work/kirt.time" "$KIRT" -q evidence collect bench-victim -n "$ns" \
  --to "$work/out" --audit-log "$work/audit.log" -o json > "$work/kirt.json"
read -r kirt_s kirt_kib < "$work/kirt.time"
kirt_events=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bundles"][0]["audit"]["summary"]["events"])' "$work/kirt.json")

# the same selection, in jq: the ServiceAccount's requests (also impersonated), requests on the
# pod, its ServiceAccount and its token Secret (core group), requests from its IP
filter='select(
  (.user.username == $user) or (.impersonatedUser.username == $user)
  or (((.objectRef.apiGroup // "") == "") and .objectRef.namespace == $ns and (
        (.objectRef.resource == "pods" and .objectRef.name == $pod)
     or (.objectRef.resource == "serviceaccounts" and .objectRef.name == $sa)
     or (.objectRef.resource == "secrets" and .objectRef.name == $secret)))
  or ((.sourceIPs // []) | index($ip) != null))'
/usr/bin/time -f '%e %M' -o "$work/jq.time" jq -c --arg user "system:serviceaccount:$ns:bench-intruder" \
  --arg ns "$ns" --arg pod bench-victim --arg sa bench-intruder --arg secret "$token_secret" --arg ip "$ip" \
  "$filter" "$work/audit.log" > "$work/jq.out"
read -r jq_s jq_kib < "$work/jq.time"
jq_events=$(wc -l < "$work/jq.out")

printf 'audit log %s MiB: kirt evidence collect --audit-log %ss (peak RSS %s KiB, %s events), jq select %ss (peak RSS %s KiB, %s events)\n' \
  "$MIB" "$kirt_s" "$kirt_kib" "$kirt_events" "$jq_s" "$jq_kib" "$jq_events"
python3 - "$kirt_s" "$jq_s" "$kirt_kib" "$LIMIT_KIB" "$kirt_events" "$jq_events" "$wanted" <<'PY'
import sys
kirt, jq, rss, limit = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ke, je, want = map(int, sys.argv[5:8])
speed = jq / kirt
ok1, ok2, ok3 = speed >= 3, rss <= limit, ke == je == want
print(f"K12: jq/kirt = {speed:.1f}x (target >= 3: {'ok' if ok1 else 'MISSED'}), "
      f"peak RSS {rss/1024:.1f} MiB (target <= 64: {'ok' if ok2 else 'MISSED'}), "
      f"same selection: kirt {ke}, jq {je}, generated {want} ({'ok' if ok3 else 'MISMATCH'})")
sys.exit(0 if ok1 and ok2 and ok3 else 1)
PY
