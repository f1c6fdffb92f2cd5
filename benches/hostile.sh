#!/usr/bin/env bash
# Hostile-input and signal benchmark (issue K14), on a private etcd:
#   - `backup list` and `backup verify` with a planted 2 GiB manifest and a 2 GiB signature:
#     peak RSS (target < 64 MiB: neither is read whole);
#   - `backup verify` of a zstd bomb (1 GiB of zeros, a few dozen KiB stored): time and peak RSS,
#     against `zstd -d` of the same object to /dev/null (the baseline: what reading it whole costs);
#   - SIGTERM to `backup create` held at each phase (KIRT_HOLD_AT): time to exit (target < 2 s).
# KIRT=path overrides the binary (default: the release build). Servers on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
ETCD_BIN="$CACHE/etcd-3.5/usr/bin"
KIRT="${KIRT:-$PWD/target/release/kirt}"
[[ -x "$KIRT" ]] || cargo build --release --bin kirt --quiet
LIMIT_KIB=$((64 * 1024))
work=$(mktemp -d /tmp/kirt-bench-hostile.XXXXXX)
etcd_pid=
cleanup() { [[ -n "$etcd_pid" ]] && kill "$etcd_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail=0
port() { python3 tests/lab/free-port.py "$work/ports"; }

cp=$(port); pp=$(port)
"$ETCD_BIN/etcd" --name h --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" \
  --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "h=http://127.0.0.1:$pp" \
  >"$work/etcd.log" 2>&1 &
etcd_pid=$!
EP="http://127.0.0.1:$cp"
until "$ETCD_BIN/etcdctl" --endpoints "$EP" endpoint health >/dev/null 2>&1; do sleep 0.2; done
for i in $(seq 1 200); do "$ETCD_BIN/etcdctl" --endpoints "$EP" put "/bench/k$i" "v$i" >/dev/null; done
# 24 MiB of incompressible values: the upload phase is reached after 8 MiB stored
head -c $((24 << 20)) /dev/urandom | split -b 1048576 - "$work/blob."
for f in "$work"/blob.*; do "$ETCD_BIN/etcdctl" --endpoints "$EP" put "/big/${f##*.}" <"$f" >/dev/null; done
rm -f "$work"/blob.*

"$KIRT" -q keygen -s "$work/sign.key" -p "$work/sign.pub" >/dev/null
export KIRT_SIGN_KEY="$work/sign.key"
rss() { /usr/bin/time -f '%M %e' -o "$work/t" "$@" >/dev/null 2>"$work/err" || true; tail -1 "$work/t"; }

# 1. oversized manifest and signature
store="$work/store"
"$KIRT" -q backup create --etcd-endpoints "$EP" --to "$store" --cluster-name c --no-encrypt >/dev/null
id=$(basename "$(ls "$store"/c/*.manifest.json)" .manifest.json)
cp "$store/c/$id.etcd.zst" "$store/c/20200101T000000Z-r7.etcd.zst"
truncate -s 2G "$store/c/20200101T000000Z-r7.manifest.json" "$store/c/$id.manifest.json.minisig"
for what in list verify; do
  if [[ $what == list ]]; then
    read -r kib secs < <(rss "$KIRT" -q backup list --from "$store" --trusted-key "$work/sign.pub")
  else
    read -r kib secs < <(rss "$KIRT" -q backup verify --from "$store" "$id" --trusted-key "$work/sign.pub")
  fi
  verdict=ok; ((kib < LIMIT_KIB)) || { verdict=MISSED; fail=1; }
  printf 'backup %-6s with a 2 GiB manifest and signature: %ss, peak RSS %s KiB (target < %s KiB: %s)\n' \
    "$what" "$secs" "$kib" "$LIMIT_KIB" "$verdict"
done

# 2. a zstd bomb whose manifest matches its stored bytes
bomb="$work/bomb"
"$KIRT" -q backup create --etcd-endpoints "$EP" --to "$bomb" --cluster-name c --no-encrypt >/dev/null
bid=$(basename "$(ls "$bomb"/c/*.manifest.json)" .manifest.json)
head -c 1G /dev/zero | zstd -q -f -o "$bomb/c/$bid.etcd.zst"
python3 - "$bomb/c/$bid" <<'PY'
import hashlib, json, os, sys
base = sys.argv[1]
data = open(base + ".etcd.zst", "rb").read()
m = json.load(open(base + ".manifest.json"))
m["object_size"], m["object_sha256"] = len(data), hashlib.sha256(data).hexdigest()
json.dump(m, open(base + ".manifest.json", "w"))
os.remove(base + ".manifest.json.minisig")
PY
stored=$(stat -c %s "$bomb/c/$bid.etcd.zst")
read -r zkib zsecs < <(rss bash -c "zstd -dc '$bomb/c/$bid.etcd.zst' >/dev/null")
read -r kib secs < <(rss "$KIRT" -q backup verify --from "$bomb" "$bid")
grep -q "decompression bomb" "$work/err" || { echo "FAIL: the bomb was not stopped by its size:" >&2; cat "$work/err" >&2; fail=1; }
printf 'backup verify of a zstd bomb (%s bytes stored, 1 GiB plaintext): %ss, peak RSS %s KiB; zstd -d of it: %ss (kirt stops after the manifest size: %.1f%% of the baseline time)\n' \
  "$stored" "$secs" "$kib" "$zsecs" "$(python3 -c "print(100 * $secs / max($zsecs, 0.01))")"

# 3. SIGTERM in each phase of backup create
for phase in upload hashkv manifest; do
  rm -rf "$work/sig"
  KIRT_HOLD_AT=$phase "$KIRT" backup create --etcd-endpoints "$EP" --to "$work/sig" --cluster-name c \
    --no-encrypt >/dev/null 2>"$work/sig.err" &
  pid=$!
  until grep -q "holding at" "$work/sig.err"; do sleep 0.05; done
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  code=0; wait "$pid" || code=$?
  t=$(python3 -c "print(round($(date +%s.%N) - $t0, 3))")
  left=$(find "$work/sig" -type f 2>/dev/null | wc -l)
  verdict=ok
  if [[ $code != 143 || $left != 0 ]] || ! python3 -c "import sys; sys.exit(0 if $t < 2 else 1)"; then
    verdict=MISSED; fail=1
  fi
  printf 'SIGTERM during backup create at %-8s: exit %s after %ss, %s files left (target < 2 s, exit 143, none left: %s)\n' \
    "$phase" "$code" "$t" "$left" "$verdict"
done
exit $fail
