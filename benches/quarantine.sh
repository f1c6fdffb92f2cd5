#!/usr/bin/env bash
# Quarantine benchmark (K4): one pod end-to-end including process start, and 200 pods by selector.
# Targets: 1 pod <= 1 s, 200 pods <= 5 s. Prints one line each
# and exits 1 if a target is missed. KIRT=path overrides the binary (default: release build).
# Starts the lab (and stops it again) when it is not running.
set -euo pipefail
cd "$(dirname "$0")/.."
KIRT="${KIRT:-$PWD/target/release/kirt}"
[[ -x "$KIRT" ]] || cargo build --release --quiet
source benches/lab-env.sh
N="${KIRT_BENCH_PODS:-200}"
ns="kirt-bench-q-$$"
kubectl create namespace "$ns" >/dev/null
trap 'kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1; lab_down' EXIT
for d in one:1 many:"$N"; do
  kubectl apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: ${d%%:*}}
spec:
  replicas: ${d##*:}
  selector: {matchLabels: {app: ${d%%:*}}}
  template:
    metadata: {labels: {app: ${d%%:*}}}
    spec: {containers: [{name: c, image: "nginx:1.25"}]}
YAML
done
kubectl rollout status deployment/one -n "$ns" --timeout=120s >/dev/null
kubectl rollout status deployment/many -n "$ns" --timeout=300s >/dev/null
pod=$(kubectl get pods -n "$ns" -l app=one -o jsonpath='{.items[0].metadata.name}')

ms() { date +%s%3N; }
t0=$(ms); "$KIRT" quarantine "$pod" -n "$ns" --yes -q >/dev/null; t1=$(ms)
one=$((t1 - t0))
t0=$(ms); "$KIRT" quarantine -l app=many -n "$ns" --yes -q -o json >"/tmp/kirt-bench-q-$$.json"; t1=$(ms)
many=$((t1 - t0))
done_count=$(grep -c '"outcome": "done"' "/tmp/kirt-bench-q-$$.json" || true)
rm -f "/tmp/kirt-bench-q-$$.json"
printf 'quarantine 1 pod (incl. process start): %d ms (target <= 1000 ms)\n' "$one"
printf 'quarantine %d pods by selector:        %d ms (target <= 5000 ms), %d quarantined\n' "$N" "$many" "$done_count"
((one <= 1000 && many <= 5000 && done_count == N))
