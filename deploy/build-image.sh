#!/usr/bin/env bash
# `make image`: builds the kirt image offline with Debian's buildah (vfs storage, chroot
# isolation — no daemon, no registry). KIRT_BIN (default target/release/kirt) and ETCDUTL
# (default: the lab's etcd 3.5 etcdutl, else etcdutl on PATH) are what go in.
#   IMAGE=kirt:latest KIRT_BIN=… ETCDUTL=… deploy/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-kirt:latest}"
KIRT_BIN="${KIRT_BIN:-target/release/kirt}"
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
ETCDUTL="${ETCDUTL:-$( [[ -x $CACHE/etcd-3.5/usr/bin/etcdutl ]] && echo "$CACHE/etcd-3.5/usr/bin/etcdutl" || command -v etcdutl )}"
command -v buildah >/dev/null || { echo "buildah not found: apt-get install buildah" >&2; exit 1; }
[[ -x $KIRT_BIN ]] || { echo "missing $KIRT_BIN (cargo build --release)" >&2; exit 1; }
[[ -x $ETCDUTL ]] || { echo "missing etcdutl (make lab-deps)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
objcopy --strip-debug "$KIRT_BIN" "$root/usr/local/bin/kirt"
cp "$ETCDUTL" "$root/usr/local/bin/etcdutl"
# the dynamic loader and every library the two binaries link
for lib in $(ldd "$root/usr/local/bin/kirt" "$root/usr/local/bin/etcdutl" | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0::/root:/nonexistent\nkirt:x:65532:65532:kirt:/tmp:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nkirt:x:65532:\n' >"$root/etc/group"
cp deploy/Containerfile "$stage/Containerfile"
buildah --storage-driver vfs bud --isolation chroot --pull=false -f "$stage/Containerfile" -t "$IMAGE" "$stage" >&2
echo "$IMAGE"
