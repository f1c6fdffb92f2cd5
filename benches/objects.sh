#!/usr/bin/env bash
# K13: `kirt backup objects -A -o json` over a backup of an etcd holding N real Kubernetes objects
# (KIRT_BENCH_OBJECTS, default 100000): objects decoded per second and peak RSS (target ≤ 150 MiB),
# against `etcdctl get --prefix /registry -w json | wc -c` on the same data (target: kirt ≤ 2×
# etcdctl's time). The objects are copies of the lab etcd's own protobuf values (ConfigMaps,
# Secrets, Services, ServiceAccounts, Deployments, ReplicaSets, Pods), each renamed in its
# metadata so that it agrees with its new key, written through etcd's JSON gateway in batches.
# kirt's time includes what it needs before decoding: etcdutl restore and a throwaway etcd.
# Needs the lab (KIRT_LAB_DIR) for the templates; servers on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KIRT:?path of the kirt binary}"
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
ETCD_BIN="$CACHE/etcd-3.5/usr/bin"
N="${KIRT_BENCH_OBJECTS:-100000}"
LAB_ENV="${KIRT_LAB_DIR:-$PWD/.lab}/env"
LAB_ETCD=$(sed -n 's/^KIRT_LAB_ETCD=//p' "$LAB_ENV")
work=$(mktemp -d /tmp/kirt-bench-objects.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cp=$(python3 tests/lab/free-port.py "$work/ports"); pp=$(python3 tests/lab/free-port.py "$work/ports")
"$ETCD_BIN/etcd" --name o --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" \
  --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "o=http://127.0.0.1:$pp" \
  --quota-backend-bytes 8589934592 >"$work/etcd.log" 2>&1 & pids+=($!)
EP="http://127.0.0.1:$cp"
until "$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint health >/dev/null 2>&1; do sleep 0.2; done

for r in configmaps secrets services/specs serviceaccounts deployments replicasets pods; do
  "$ETCD_BIN/etcdctl" --endpoints "$LAB_ETCD" get --prefix "/registry/$r/" --limit 50 -w json
done >"$work/templates.jsonl"

python3 - "$work/templates.jsonl" "127.0.0.1:$cp" "$N" <<'PY'
import base64, http.client, json, sys

def varint(b, i):
    v = s = 0
    while True:
        c = b[i]; i += 1; v |= (c & 0x7F) << s; s += 7
        if c < 0x80: return v, i

def enc_varint(v):
    out = bytearray()
    while True:
        c = v & 0x7F; v >>= 7
        if v: out.append(c | 0x80)
        else: out.append(c); return bytes(out)

def rewrite(msg, repl):
    """msg with its length-delimited fields replaced: repl {tag: fn(bytes) -> bytes}."""
    out = bytearray(); i = 0
    while i < len(msg):
        start = i
        k, i = varint(msg, i); t = k & 7; tag = k >> 3
        if t == 2:
            n, i = varint(msg, i); body = msg[i:i + n]; i += n
            if tag in repl:
                body = repl[tag](body)
                out += enc_varint(k) + enc_varint(len(body)) + body
                continue
        elif t == 0: _, i = varint(msg, i)
        elif t == 1: i += 8
        elif t == 5: i += 4
        out += msg[start:i]
    return bytes(out)

templates = []
for line in open(sys.argv[1]):
    for kv in json.loads(line).get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        val = base64.b64decode(kv["value"])
        if val.startswith(b"k8s\x00"):
            templates.append((key.rsplit("/", 2)[0], val))
if not templates:
    sys.exit("no protobuf objects in the lab etcd to copy")
conn = http.client.HTTPConnection(sys.argv[2])
n = int(sys.argv[3]); batch = []
def flush():
    body = json.dumps({"success": batch})
    conn.request("POST", "/v3/kv/txn", body, {"Content-Type": "application/json"})
    r = conn.getresponse(); data = r.read()
    if r.status != 200: sys.exit("etcd txn: %s %s" % (r.status, data[:200]))
    batch.clear()
for i in range(n):
    prefix, val = templates[i % len(templates)]
    ns, name = "bench-%d" % (i % 200), "obj-%d" % i
    meta = {1: lambda _: name.encode(), 3: lambda _: ns.encode()}
    raw = {2: lambda obj: rewrite(obj, {1: lambda m: rewrite(m, meta)})}
    v = b"k8s\x00" + rewrite(val[4:], raw)
    k = "%s/%s/%s" % (prefix, ns, name)
    batch.append({"requestPut": {"key": base64.b64encode(k.encode()).decode(),
                                 "value": base64.b64encode(v).decode()}})
    if len(batch) == 100: flush()
if batch: flush()
PY

"$KIRT" -q backup create --etcd-endpoints "$EP" --to "$work/store" --no-encrypt --cluster-name objects >/dev/null
db=$("$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
"$ETCD_BIN/etcdctl" --endpoints "$EP" get --prefix /registry -w json | wc -c >/dev/null # warm
/usr/bin/time -f "%e %M" -o "$work/etcdctl.time" bash -c \
  "'$ETCD_BIN/etcdctl' --endpoints '$EP' get --prefix /registry -w json | wc -c" >/dev/null
# GNU time's peak RSS includes kirt's children (etcdutl, the throwaway etcd, which maps the db);
# kirt's own peak is its VmHWM, read until it exits
/usr/bin/time -f "%e %M" -o "$work/kirt.time" "$KIRT" backup objects --from "$work/store" --allow-unsigned -A -o json \
  --etcd-bin "$ETCD_BIN/etcd" --etcdutl-bin "$ETCD_BIN/etcdutl" --work-dir "$work" \
  >/dev/null 2>"$work/kirt.err" & tpid=$!
sleep 0.05; kpid=$(pgrep -P "$tpid" | head -1); hwm=0
while [[ -n "$kpid" ]] && h=$(awk '/VmHWM/ {print $2}' "/proc/$kpid/status" 2>/dev/null) && [[ -n "$h" ]]; do
  hwm=$h; sleep 0.1
done
wait "$tpid" || { cat "$work/kirt.err"; exit 1; }
counts=$(grep -o '[0-9]* objects: .*' "$work/kirt.err" | tail -1)
python3 - "$N" "$db" "$counts" "$(cat "$work/etcdctl.time")" "$(cat "$work/kirt.time")" "$hwm" <<'PY'
import sys
n, db, counts, et, kt, hwm = sys.argv[1:]
e = float(et.split()[0]); k, tree = float(kt.split()[0]), int(kt.split()[1]) // 1024
rss = int(hwm) // 1024
decoded = int(counts.split(": ")[1].split(" decoded")[0])
print(f"{n} objects written, db {int(db) / 2**20:.0f} MiB; kirt: {counts}")
print(f"backup objects -A -o json: {k:.2f} s = {decoded / k:.0f} objects/s, peak RSS {rss} MiB "
      f"(kirt itself; {tree} MiB for the largest of kirt and its throwaway etcd/etcdutl); "
      f"etcdctl get --prefix /registry -w json | wc -c: {e:.2f} s; ratio {k / e:.2f}x")
ok = rss <= 150 and k <= 2 * e and decoded >= int(n)
print(f"targets (RSS ≤ 150 MiB, ≤ 2× etcdctl, every object decoded): {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
