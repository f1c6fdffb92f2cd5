#!/usr/bin/env bash
# Evidence benchmark (issue K5): collect a pod whose container has 100 MB of logs; report the
# collection time and peak RSS, and fail if the RSS exceeds 64 MiB. Needs a running lab
# (`make lab-up`); builds kirt in release mode unless KIRT_BIN names a binary. Meant to be
# called from benches/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB_DIR="${KIRT_LAB_DIR:-$PWD/.lab}"
[[ -f "$LAB_DIR/env" ]] || { echo "the lab is not running: make lab-up" >&2; exit 1; }
set -a; source "$LAB_DIR/env"; set +a
export KUBECONFIG="$KIRT_LAB_KUBECONFIG"
if [[ -z "${KIRT_BIN:-}" ]]; then
  cargo build --release --quiet
fi
KIRT="${KIRT_BIN:-$PWD/target/release/kirt}"
LOG_BYTES=${LOG_BYTES:-104857600}
LIMIT_KIB=$((64 * 1024))

ns="kirt-bench-evidence-$$"
work=$(mktemp -d)
cleanup() { kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
kubectl create namespace "$ns" >/dev/null
kubectl apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: chatty
  annotations: {lab.kirt.dev/log-bytes: "$LOG_BYTES"}
spec:
  containers:
  - {name: main, image: nginx}
YAML
for _ in $(seq 1 120); do
  [[ -n "$(kubectl get pod chatty -n "$ns" -o jsonpath='{.status.containerStatuses[0].name}' 2>/dev/null)" ]] && break
  sleep 0.5
done

/usr/bin/time -f '%M %e' -o "$work/time" "$KIRT" -q evidence collect chatty -n "$ns" --to "$work/out" >/dev/null
read -r rss_kib seconds < "$work/time"
stored=$(stat -c %s "$work"/out/*.tar.zst)
printf 'evidence collect: %s bytes of logs in %ss, peak RSS %s KiB (limit %s KiB), bundle %s bytes\n' \
  "$LOG_BYTES" "$seconds" "$rss_kib" "$LIMIT_KIB" "$stored"
if ((rss_kib > LIMIT_KIB)); then
  echo "FAIL: peak RSS above 64 MiB" >&2
  exit 1
fi
