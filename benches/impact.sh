#!/usr/bin/env bash
# Backup impact on etcd (issue K16): while a steady client load runs against one etcd
# (benches/etcd_load.rs: PUTS puts/s of ~1 KiB values and half as many 10-key range reads,
# open loop, every request's latency recorded), each contender runs in turn on the same etcd:
#   idle (nothing), etcdctl snapshot save, the plain reader (snapshot_limit read: the stream and
#   nothing else), the shell pipeline (etcdctl save → zstd -T0 -3 → age → aws s3 cp), kirt backup
#   create with its defaults, with --count-keys all and off, with --hash-kv on, with --nice
#   (nice 10, idle I/O) and with --max-rate.
# Prints per contender: wall time, client CPU (the contender's processes), etcd CPU (from
# /proc/PID/stat, and above the load's own idle rate), put p50/p99/max and read p99 latency, and
# the ratios of p99 to idle and to etcdctl. Targets (K16): kirt's default p99 ≤ etcdctl's (±10 %)
# and ≤ 2× idle; etcd CPU above idle during kirt ≤ 1.2× the plain reader's; kirt's CPU ≤ 0.8× the
# pipeline's client-side CPU. Servers on 127.0.0.1 only.
#   KIRT, LIMIT (snapshot_limit), LOAD (etcd_load) override the binaries;
#   KIRT_BENCH_IMPACT_MIB the db size (default 1024), KIRT_BENCH_IMPACT_PUTS the put rate
#   (default 200/s), KIRT_BENCH_IMPACT_RATE kirt's --max-rate (default 50MiB/s),
#   KIRT_BENCH_IMPACT_S3_DIR where the S3 server keeps objects (default: the bench's work dir, on
#   the disk etcd fsyncs to; a tmpfs such as /dev/shm/kirt-impact models a store off the node,
#   as in production, where the uploaded bytes never reach the etcd node's disk),
#   KIRT_BENCH_IMPACT_ETCD_DIR etcd's data dir (default: in the bench's work dir, on the disk; a
#   tmpfs takes the disk's own latency out and leaves what the contenders cost etcd in CPU and
#   locks, as on a dedicated fast disk).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
ETCD_BIN="$CACHE/etcd-3.5/usr/bin"
T="${CARGO_TARGET_DIR:-$PWD/target}"
MIB="${KIRT_BENCH_IMPACT_MIB:-1024}"
PUTS="${KIRT_BENCH_IMPACT_PUTS:-200}"
RATE="${KIRT_BENCH_IMPACT_RATE:-50MiB/s}"
IDLE="${KIRT_BENCH_IMPACT_IDLE:-10}"
KIRT="${KIRT:-$T/release/kirt}"
newest() { ls -t "$T"/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -1; }
if [[ ! -x "$KIRT" || -z "${LIMIT:-}" || -z "${LOAD:-}" ]]; then
  nice -n 5 cargo build --release --bin kirt --bench snapshot_limit --bench etcd_load --quiet
fi
LIMIT="${LIMIT:-$(newest snapshot_limit)}"
LOAD="${LOAD:-$(newest etcd_load)}"
if [[ ! -x "$CACHE/awscli/bin/aws" ]]; then
  python3 -m venv "$CACHE/awscli" && "$CACHE/awscli/bin/pip" install -q awscli
fi
AWS="$CACHE/awscli/bin/aws"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
work=$(mktemp -d /tmp/kirt-bench-impact.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$work" "${ETCD_DIR:-$work}" # a directory of its own, even under KIRT_BENCH_IMPACT_ETCD_DIR
}
trap cleanup EXIT
port() { python3 tests/lab/free-port.py "$work/ports"; }

cp=$(port); pp=$(port); s3port=$(port)
ETCD_DIR=$(mktemp -d "${KIRT_BENCH_IMPACT_ETCD_DIR:-$work}/kirt-bench-etcd.XXXXXX")
"$ETCD_BIN/etcd" --name i --data-dir "$ETCD_DIR" --listen-client-urls "http://127.0.0.1:$cp" \
  --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "i=http://127.0.0.1:$pp" \
  --quota-backend-bytes 8589934592 >"$work/etcd.log" 2>&1 & pids+=($!)
etcd_pid=$!
S3DIR="${KIRT_BENCH_IMPACT_S3_DIR:-$work/s3}"; mkdir -p "$S3DIR/bench"
# a store off the node costs the node no CPU: with the objects on tmpfs, the S3 server may also
# run at the lowest CPU and I/O priority (KIRT_BENCH_IMPACT_S3_NICE=1), the closest one machine gets
S3NICE=(); [[ -n "${KIRT_BENCH_IMPACT_S3_NICE:-}" ]] && S3NICE=(nice -n 19 ionice -c 3)
"${S3NICE[@]}" "$CACHE/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$S3DIR" >"$work/s3s.log" 2>&1 & pids+=($!)
S3="http://127.0.0.1:$s3port"
EP="http://127.0.0.1:$cp"
until "$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint health >/dev/null 2>&1; do sleep 0.2; done
until curl -s -o /dev/null "$S3/"; do sleep 0.1; done
"$LIMIT" fill "$EP" "$MIB" >/dev/null
"$LIMIT" read "$EP" >/dev/null # a hot page cache for every contender
sync # the fill's dirty pages reach the disk now, not during the idle window
age-keygen -o "$work/key" 2>/dev/null; R=$(age-keygen -y "$work/key")

"$LOAD" "$EP" "$PUTS" >"$work/load.out" 2>"$work/load.err" & pids+=($!)
load_pid=$!
sleep 2
# the load's report for the window since the last call (one line per SIGUSR1)
window() {
  local n; n=$(wc -l <"$work/load.out")
  kill -USR1 "$load_pid"
  until (($(wc -l <"$work/load.out") > n)); do sleep 0.05; done
  tail -1 "$work/load.out"
}
window >/dev/null # the warm-up does not count
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
kirt_s3=(--to s3://bench/kirt --endpoint-url "$S3" --path-style --recipient "$R" --cluster-name impact)
# phase NAME CMD… → "NAME wall client_cpu etcd_cpu <load window>" into $work/rows
phase() {
  local name=$1; shift
  local e0; e0=$(cpu_of "$etcd_pid")
  window >/dev/null
  /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err" || { cat "$work/$name.err"; exit 1; }
  local w; w=$(window)
  read -r wall user sys <"$work/$name.time"
  echo "$name $wall $(python3 -c "print(round($user + $sys, 2))") $(python3 -c "print(round($(cpu_of "$etcd_pid") - $e0, 2))") $w" >>"$work/rows"
  rm -rf "${S3DIR:?}/bench/"* "$work/snap.db" "$work/p.db"
}
phase idle sleep "$IDLE"
phase etcdctl "$ETCD_BIN/etcdctl" --endpoints "$EP" snapshot save "$work/snap.db"
phase reader "$LIMIT" read "$EP"
phase pipeline bash -c "'$ETCD_BIN/etcdctl' --endpoints '$EP' snapshot save '$work/p.db' >/dev/null && zstd -q -T0 -3 -c '$work/p.db' | age -r '$R' | '$AWS' --endpoint-url '$S3' s3 cp - s3://bench/pipeline.zst.age"
phase kirt "$KIRT" -q backup create --etcd-endpoints "$EP" "${kirt_s3[@]}"
phase kirt-count-keys "$KIRT" -q backup create --etcd-endpoints "$EP" "${kirt_s3[@]}" --count-keys all
phase kirt-uncounted "$KIRT" -q backup create --etcd-endpoints "$EP" "${kirt_s3[@]}" --count-keys off
phase kirt-hash-kv "$KIRT" -q backup create --etcd-endpoints "$EP" "${kirt_s3[@]}" --hash-kv on
phase kirt-nice "$KIRT" -q backup create --etcd-endpoints "$EP" "${kirt_s3[@]}" --nice
phase kirt-rate "$KIRT" -q backup create --etcd-endpoints "$EP" "${kirt_s3[@]}" --max-rate "$RATE"
db=$("$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')

python3 - "$work/rows" "$db" "$PUTS" "$(nproc)" "$RATE" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    # name wall cpu etcd  puts N p50 p99 max  reads N p50 p99 max  errors E
    rows[f[0]] = dict(wall=float(f[1]), cpu=float(f[2]), etcd=float(f[3]), n=int(f[5]), p50=float(f[6]),
                      p99=float(f[7]), max=float(f[8]), r99=float(f[12]), errors=int(f[15]))
db, puts, cores, rate = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
idle = rows["idle"]
idle_rate = idle["etcd"] / idle["wall"]  # etcd CPU/s serving the load alone
for r in rows.values():
    r["above"] = max(0.0, r["etcd"] - idle_rate * r["wall"])
print(f"db {db/2**20:.0f} MiB, load {puts} puts/s (~1 KiB) + {int(puts)//2} reads/s, {cores} cores; "
      f"etcd CPU above idle = CPU during the run - {idle_rate:.2f}/s x wall")
print(f"{'contender':<16}{'wall s':>8}{'client CPU':>11}{'etcd CPU':>9}{'above idle':>11}"
      f"{'put p50':>9}{'p99':>8}{'max':>8}{'read p99':>9}{'p99/idle':>9}{'p99/etcdctl':>12}{'errors':>7}")
for name, r in rows.items():
    print(f"{name:<16}{r['wall']:>8.2f}{r['cpu']:>11.2f}{r['etcd']:>9.2f}{r['above']:>11.2f}"
          f"{r['p50']:>9.2f}{r['p99']:>8.2f}{r['max']:>8.1f}{r['r99']:>9.2f}"
          f"{r['p99'] / idle['p99']:>9.2f}{r['p99'] / rows['etcdctl']['p99']:>12.2f}{r['errors']:>7}")
k, e, rd, pl = rows["kirt"], rows["etcdctl"], rows["reader"], rows["pipeline"]
checks = [
    (f"kirt p99 / etcdctl p99 = {k['p99'] / e['p99']:.2f} (target <= 1.1)", k["p99"] <= 1.1 * e["p99"]),
    (f"kirt p99 / idle p99 = {k['p99'] / idle['p99']:.2f} (target <= 2.0)", k["p99"] <= 2 * idle["p99"]),
    (f"etcd CPU above idle, kirt / plain reader = {k['above'] / max(rd['above'], 0.01):.2f} (target <= 1.2)",
     k["above"] <= 1.2 * rd["above"]),
    (f"kirt CPU / pipeline client CPU = {k['cpu'] / pl['cpu']:.2f} (target <= 0.8)", k["cpu"] <= 0.8 * pl["cpu"]),
    (f"pipeline wall / kirt wall = {pl['wall'] / k['wall']:.2f} (target >= 1.6)", pl["wall"] >= 1.6 * k["wall"]),
]
ok = True
for text, good in checks:
    print(f"  {text}: {'ok' if good else 'MISSED'}")
    ok &= good
c, u, h = rows["kirt-count-keys"], rows["kirt-uncounted"], rows["kirt-hash-kv"]
n, m = rows["kirt-nice"], rows["kirt-rate"]
print(f"  --count-keys all: p99 / idle {c['p99'] / idle['p99']:.2f}, max {c['max']:.0f} ms (default: {k['max']:.0f} ms)")
print(f"  --count-keys off: p99 / idle {u['p99'] / idle['p99']:.2f}, p99 / etcdctl {u['p99'] / e['p99']:.2f}, "
      f"etcd CPU above idle / reader {u['above'] / max(rd['above'], 0.01):.2f}, pipeline wall / its wall {pl['wall'] / u['wall']:.2f}")
print(f"  --hash-kv on costs etcd {h['above'] - k['above']:.2f} CPU-s more than the default (p99 / idle {h['p99'] / idle['p99']:.2f})")
print(f"  --nice: p99 / idle {n['p99'] / idle['p99']:.2f}, wall {n['wall']:.1f} s (default: {k['wall']:.1f} s)")
print(f"  --max-rate {rate}: p99 / idle {m['p99'] / idle['p99']:.2f}, etcd CPU above idle {m['above']:.2f}, wall {m['wall']:.1f} s")
sys.exit(0 if ok else 1)
PY
