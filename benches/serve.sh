#!/usr/bin/env bash
# Detection-to-containment benchmark (K17): `kirt serve` receives 50 "Terminal shell in container"
# Falco events (Falco's JSON, each stamped with the time it is sent, 0.5 s apart), each for a
# different pod, and runs isolate-compromised-pod (evidence → quarantine → verify) for each. The
# latency of an event is the serve journal's latency_seconds: event time → quarantine verified.
# Targets: p99 <= 1 s, the server's peak RSS (VmHWM) <= 50 MiB. Prints the figures, exits 1 if a
# target is missed. KIRT=path overrides the binary (default: the release build in
# $CARGO_TARGET_DIR or target/). Starts the lab (and
# stops it again) when it is not running.
set -euo pipefail
cd "$(dirname "$0")/.."
KIRT="${KIRT:-${CARGO_TARGET_DIR:-$PWD/target}/release/kirt}"
[[ -x "$KIRT" ]] || cargo build --release --quiet --bin kirt
N="${KIRT_BENCH_EVENTS:-50}"
source benches/lab-env.sh
ns="kirt-bench-s-$$"
work=$(mktemp -d /tmp/kirt-bench-s.XXXXXX)
serve_pid=""
cleanup() {
  [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
  lab_down
}
trap cleanup EXIT
kubectl create namespace "$ns" >/dev/null
for i in $(seq 1 "$N"); do
  printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: %s}\nspec: {containers: [{name: c, image: nginx}]}\n' "$i" "$ns"
done | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Ready pod --all -n "$ns" --timeout=300s >/dev/null

cat >"$work/rules.yaml" <<YAML
apiVersion: kirt.dev/v1
kind: ServeRules
allow_namespaces: [$ns]
rate_limit: {burst: $N, per_minute: 600}
rules:
  - name: shell
    match: {rule: "Terminal shell in container", priority: notice}
    playbook: isolate-compromised-pod
    params: {namespace: "{{ event.namespace }}", pod: "{{ event.pod }}", evidence_to: "$work/evidence"}
    confirm: never
YAML
port=$(python3 tests/lab/free-port.py "$work/ports")
export KIRT_SERVE_TOKEN="bench-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
"$KIRT" --journal "$work/journal" serve --rules "$work/rules.yaml" --listen "127.0.0.1:$port" \
  2>"$work/serve.log" & serve_pid=$!
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.1
done

python3 - "$port" "$ns" "$N" "$work/journal/serve/events.jsonl" "$serve_pid" <<'PY'
import datetime, json, os, sys, time, urllib.request
port, ns, n, journal, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def event(pod):
    t = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"hostname": "lab-node-1", "output": "A shell was spawned in a container with an attached terminal",
            "output_fields": {"container.id": "734cfc07ae4d", "k8s.ns.name": ns, "k8s.pod.name": pod,
                              "proc.name": "bash", "proc.cmdline": "bash", "user.name": "root"},
            "priority": "Notice", "rule": "Terminal shell in container", "source": "syscall",
            "tags": ["container", "shell", "mitre_execution"], "time": t}
for i in range(1, n + 1):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(event(f"p{i}")).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["KIRT_SERVE_TOKEN"]})
    urllib.request.urlopen(req, timeout=30).read()
    time.sleep(0.5)
deadline = time.time() + 600
while True:
    ends = [json.loads(l) for l in open(journal) if '"run-end"' in l]
    if len(ends) >= n or time.time() > deadline:
        break
    time.sleep(0.5)
lat = sorted(e["latency_seconds"] for e in ends if "latency_seconds" in e)
bad = [e for e in ends if e["status"] != "ok"]
hwm = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
if len(lat) < n or bad:
    print(f"only {len(lat)} of {n} runs verified a quarantine; failed: {bad[:3]}")
    sys.exit(1)
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
ok = p(0.99) <= 1.0 and hwm <= 50 * 1024
print(f"serve: {n} events -> isolated: p50 {p(0.5):.3f} s, p99 {p(0.99):.3f} s, max {lat[-1]:.3f} s (target p99 <= 1 s); "
      f"server peak RSS {hwm / 1024:.1f} MiB (target <= 50 MiB): {'ok' if ok else 'MISSED'}")
sys.exit(0 if ok else 1)
PY
