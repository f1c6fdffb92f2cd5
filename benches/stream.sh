#!/usr/bin/env bash
# `backup stream` under load (issue K9): a private etcd 3.5 and s3s-fs on 127.0.0.1; a steady,
# open-loop load of PUTS puts/s of ~1 KiB values (benches/etcd_load.rs --puts-only: every put is a
# revision to stream) for SECONDS while `kirt backup stream --segment-every 2s --metrics-listen`
# (release build) streams to the S3 server. Reports:
#   RPO: the maximum over the run of the seconds from a write to the commit of its segment,
#     measured per segment as (the time the S3 server wrote the segment's manifest — the commit
#     marker, written last — as the mtime of the object file in s3s-fs's dir) − (the receive time
#     of the segment's first event, `first_time` in that manifest). The first event is the oldest
#     write of its segment, so the maximum over segments is the maximum over writes. It leaves
#     out the time from etcd's acknowledgement of a put to the watch delivering it (loopback, ms).
#     The chain must also be contiguous and reach the load's last revision.
#   peak RSS of the stream (VmHWM of the kirt process, its full backup included);
#   CPU % of one core of the stream over the load window (utime + stime from /proc/PID/stat);
#   (the load writes one constant 1 KiB value: segments compress far better than real objects)
#   `kirt restore --to-revision LAST` (full + every segment) vs `kirt restore` of the full alone,
#     each into a fresh data dir (unsigned backups here: --allow-unsigned).
# Targets: RPO ≤ 3 s, peak RSS ≤ 64 MiB, CPU ≤ 15 % of one core; exits 1 when one is missed.
#   KIRT, LOAD (etcd_load) override the binaries; KIRT_BENCH_STREAM_SECONDS the load's duration
#   (default 120), KIRT_BENCH_STREAM_PUTS the rate (default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
ETCD_BIN="$CACHE/etcd-3.5/usr/bin"
T="${CARGO_TARGET_DIR:-$PWD/target}"
SECONDS_LOAD="${KIRT_BENCH_STREAM_SECONDS:-120}"
PUTS="${KIRT_BENCH_STREAM_PUTS:-2000}"
KIRT="${KIRT:-$T/release/kirt}"
newest() { ls -t "$T"/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -1; }
if [[ ! -x "$KIRT" || -z "${LOAD:-}" ]]; then
  nice -n 5 cargo build --release --bin kirt --bench etcd_load --quiet
fi
LOAD="${LOAD:-$(newest etcd_load)}"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
work=$(mktemp -d /tmp/kirt-bench-stream.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 tests/lab/free-port.py "$work/ports"; }

cp=$(port); pp=$(port); s3port=$(port); mport=$(port)
"$ETCD_BIN/etcd" --name s --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" \
  --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "s=http://127.0.0.1:$pp" \
  --quota-backend-bytes 8589934592 >"$work/etcd.log" 2>&1 & pids+=($!)
mkdir -p "$work/s3/bench"
"$CACHE/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" >"$work/s3s.log" 2>&1 & pids+=($!)
S3="http://127.0.0.1:$s3port"
EP="http://127.0.0.1:$cp"
until "$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint health >/dev/null 2>&1; do sleep 0.2; done
until curl -s -o /dev/null "$S3/"; do sleep 0.1; done
age-keygen -o "$work/key" 2>/dev/null; R=$(age-keygen -y "$work/key")
# a base for the full backup: the load's 1,000 keys and 5 s of their history
"$LOAD" "$EP" "$PUTS" --puts-only --seconds 5 >/dev/null

"$KIRT" backup stream --etcd-endpoints "$EP" --to s3://bench/stream --endpoint-url "$S3" --path-style \
  --recipient "$R" --cluster-name k9 --segment-every 2s --metrics-listen "127.0.0.1:$mport" \
  --spool-dir "$work/spool" >"$work/stream.out" 2>"$work/stream.err" & pids+=($!)
stream_pid=$!
metric() { curl -s "http://127.0.0.1:$mport/metrics" | awk -v m="$1" 'index($0, m "{") == 1 {print $2}'; }
until [[ -n "$(metric kirt_stream_full_backups_total 2>/dev/null)" && "$(metric kirt_stream_full_backups_total)" != 0 ]]; do
  kill -0 "$stream_pid" 2>/dev/null || { cat "$work/stream.err"; exit 1; }
  sleep 0.2
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
c0=$(cpu_ticks "$stream_pid"); t0=$(date +%s.%N)
"$LOAD" "$EP" "$PUTS" --puts-only --seconds "$SECONDS_LOAD" >"$work/load.out" 2>"$work/load.err"
c1=$(cpu_ticks "$stream_pid"); t1=$(date +%s.%N)
head_rev=$("$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
# the stream commits the load's tail within a segment period or two
for _ in $(seq 1 300); do
  [[ "$(metric kirt_stream_last_revision)" -ge "$head_rev" ]] 2>/dev/null && break
  sleep 0.1
done
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$stream_pid/status")
kill -TERM "$stream_pid"
wait "$stream_pid" || { echo "backup stream exited $?"; tail -20 "$work/stream.err"; exit 1; }

chain=$(ls -d "$work"/s3/bench/stream/k9/*.chain)
full=$(basename "$chain" .chain)
read -r rpo last segs events gaps < <(python3 - "$chain" <<'PY'
import json, os, sys, datetime
chain = sys.argv[1]
ms = []
for f in os.listdir(chain):
    if f.endswith(".manifest.json"):
        p = os.path.join(chain, f)
        m = json.load(open(p))
        ms.append((m, os.stat(p).st_mtime))
ms.sort(key=lambda x: x[0]["sequence"])
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
rpo = max(mtime - ts(m["first_time"]) for m, mtime in ms)
gaps = sum(1 for a, b in zip(ms, ms[1:]) if b[0]["first_revision"] != a[0]["last_revision"] + 1)
print(f"{rpo:.2f} {ms[-1][0]['last_revision']} {len(ms)} {sum(m['events'] for m, _ in ms)} {gaps}")
PY
)

restore() { # NAME ARGS… → seconds
  local name=$1; shift
  local peer; peer=$(port)
  mkdir -p "$work/tmp"
  TMPDIR="$work/tmp" PATH="$ETCD_BIN:$PATH" /usr/bin/time -f "%e" -o "$work/$name.time" "$KIRT" restore \
    --from s3://bench/stream --endpoint-url "$S3" --path-style "$@" --identity "$work/key" --allow-unsigned \
    --data-dir "$work/restore-$name" --name m1 --initial-cluster "m1=http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --etcd-bin "$ETCD_BIN/etcd" \
    >"$work/$name.out" 2>"$work/$name.err" || { echo "restore $name failed"; cat "$work/$name.err"; exit 1; }
  cat "$work/$name.time"
}
t_full=$(restore full "$full")
t_pitr=$(restore pitr latest --to-revision "$last")

python3 - "$rpo" "$last" "$head_rev" "$segs" "$events" "$gaps" "$hwm" "$c0" "$c1" "$t0" "$t1" \
  "$(getconf CLK_TCK)" "$t_full" "$t_pitr" "$PUTS" "$SECONDS_LOAD" "$(cat "$work/load.out")" "$(nproc)" <<'PY'
import sys
a = sys.argv[1:]
rpo, last, head, segs, events, gaps, hwm = float(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]), int(a[6])
c0, c1, t0, t1, hz = float(a[7]), float(a[8]), float(a[9]), float(a[10]), float(a[11])
t_full, t_pitr, puts, secs, load, cores = float(a[12]), float(a[13]), a[14], a[15], a[16].split(), a[17]
cpu = (c1 - c0) / hz / (t1 - t0) * 100
print(f"load {puts} puts/s (~1 KiB) for {secs} s, {cores} cores: {load[1]} puts acknowledged, p50 {load[2]} ms, "
      f"p99 {load[3]} ms, errors {load[-1]}")
print(f"stream: {segs} segments, {events} events, last revision {last} (etcd head {head}), gaps {gaps}")
print(f"restore: full alone {t_full:.2f} s, full + {segs} segments to r{last} {t_pitr:.2f} s")
checks = [
    (f"RPO {rpo:.2f} s (target <= 3)", rpo <= 3.0),
    (f"stream peak RSS {hwm / 1024:.1f} MiB (target <= 64)", hwm / 1024 <= 64),
    (f"stream CPU {cpu:.1f} % of one core over {t1 - t0:.0f} s (target <= 15)", cpu <= 15),
    (f"chain contiguous and at etcd's head ({gaps} gaps, r{last} vs r{head})", gaps == 0 and last == head),
]
ok = True
for text, good in checks:
    print(f"  {text}: {'ok' if good else 'MISSED'}")
    ok &= good
sys.exit(0 if ok else 1)
PY
