#!/usr/bin/env bash
# `kirt backup copy` benchmark (issue K10): the backup of a ~1 GiB etcd db (the K2 bench data)
# copied between the two S3 servers, s3s-fs → moto, by
#   1. the aws CLI: `aws s3 cp s3://src/OBJ - | aws s3 cp - s3://dst/OBJ` (streams, checks nothing
#      but its own transfer), and
#   2. `kirt backup copy` of that backup (streams the object, checks its size and sha256 against
#      the manifest while copying, then writes the manifest last),
# each run twice, alternating, in the same run on this machine (the faster of each pair counts;
# moto is reset between runs so that its memory does not grow). Targets: kirt ≤ 1.2× the aws
# CLI's time; kirt's peak RSS ≤ 100 MiB. Servers on 127.0.0.1 only.
#   KIRT=path, LIMIT=path (snapshot_limit) override the binaries; KIRT_BENCH_COPY_MIB the db size.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
ETCD_BIN="$CACHE/etcd-3.5/usr/bin"
T="${CARGO_TARGET_DIR:-$PWD/target}"
MIB="${KIRT_BENCH_COPY_MIB:-1024}"
KIRT="${KIRT:-$T/release/kirt}"
if [[ ! -x "$KIRT" || -z "${LIMIT:-}" ]]; then
  nice -n 5 cargo build --release --bin kirt --bench snapshot_limit --quiet
  LIMIT=${LIMIT:-$(ls -t "$T"/release/deps/snapshot_limit-* | grep -v '\.d$' | head -1)}
fi
if [[ ! -x "$CACHE/awscli/bin/aws" ]]; then
  python3 -m venv "$CACHE/awscli" && "$CACHE/awscli/bin/pip" install -q awscli
fi
AWS="$CACHE/awscli/bin/aws"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
work=$(mktemp -d /tmp/kirt-bench-copy.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 tests/lab/free-port.py "$work/ports"; }
fail=0

cp=$(port); pp=$(port); s3sp=$(port); motop=$(port)
"$ETCD_BIN/etcd" --name c --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" \
  --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "c=http://127.0.0.1:$pp" \
  --quota-backend-bytes 8589934592 >"$work/etcd.log" 2>&1 & pids+=($!)
mkdir -p "$work/s3s/src"
"$CACHE/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3sp" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3s" >"$work/s3s.log" 2>&1 & pids+=($!)
"$CACHE/moto/bin/moto_server" -H 127.0.0.1 -p "$motop" >"$work/moto.log" 2>&1 & pids+=($!)
EP="http://127.0.0.1:$cp" S3S="http://127.0.0.1:$s3sp" MOTO="http://127.0.0.1:$motop"
until "$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint health >/dev/null 2>&1; do sleep 0.2; done
until curl -s -o /dev/null "$S3S/"; do sleep 0.1; done
until curl -sf -o /dev/null "$MOTO/"; do sleep 0.1; done
"$LIMIT" fill "$EP" "$MIB" >/dev/null

age-keygen -o "$work/key" 2>/dev/null
"$KIRT" -q backup create --etcd-endpoints "$EP" --to s3://src/p --endpoint-url "$S3S" --path-style \
  --recipient "$(age-keygen -y "$work/key")" --cluster-name c -o json >"$work/backup.json"
read -r id stored < <(python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); print(b["id"], b["stored_size"])' "$work/backup.json")
obj="p/c/$id.etcd.zst.age"

fresh_target() { curl -sf -X POST "$MOTO/moto-api/reset" >/dev/null; "$AWS" --endpoint-url "$MOTO" s3 mb s3://dst >/dev/null; }
# seconds and peak RSS (KiB) of a command
measure() {
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/t"
}
best() { python3 -c "import sys; print(min(map(float, sys.argv[1:])))" "$@"; }
aws_t=() kirt_t=() kirt_rss=()
for round in 1 2; do
  fresh_target
  read -r t _ < <(measure bash -c "set -o pipefail; '$AWS' --endpoint-url '$S3S' s3 cp 's3://src/$obj' - | '$AWS' --endpoint-url '$MOTO' s3 cp - 's3://dst/$obj' --expected-size $stored")
  aws_t+=("$t")
  fresh_target
  read -r t rss < <(measure "$KIRT" -q backup copy --from s3://src/p --endpoint-url "$S3S" --path-style \
    --to s3://dst/p --to-endpoint-url "$MOTO" --to-path-style "c/$id")
  kirt_t+=("$t"); kirt_rss+=("$rss")
  copied=$("$AWS" --endpoint-url "$MOTO" s3api head-object --bucket dst --key "$obj" --query ContentLength --output text)
  [[ $copied == "$stored" ]] || { echo "FAIL: kirt's copy is $copied bytes, the backup $stored" >&2; fail=1; }
done
python3 - "$MIB" "$stored" "$(best "${aws_t[@]}")" "$(best "${kirt_t[@]}")" "$(printf '%s\n' "${kirt_rss[@]}" | sort -n | tail -1)" "${aws_t[*]}" "${kirt_t[*]}" <<'PY' || fail=1
import sys
mib, stored, aws, kirt, rss, aws_all, kirt_all = sys.argv[1:]
stored, aws, kirt, rss = int(stored), float(aws), float(kirt), int(rss)
r = kirt / aws
ok1, ok2 = r <= 1.2, rss / 1024 <= 100
print(f"backup copy of the {mib} MiB db's backup ({stored} bytes stored), s3s-fs -> moto: "
      f"aws s3 cp | aws s3 cp {aws:.2f}s (runs: {aws_all}), kirt backup copy {kirt:.2f}s (runs: {kirt_all}), "
      f"kirt/aws = {r:.2f}x (target <= 1.2: {'ok' if ok1 else 'MISSED'}), "
      f"peak RSS {rss/1024:.1f} MiB (target <= 100: {'ok' if ok2 else 'MISSED'})")
sys.exit(0 if ok1 and ok2 else 1)
PY
exit $fail
