#!/usr/bin/env bash
# Installs and builds everything the kirt lab needs (see docs/lab.md).
# Idempotent: every step checks its own result first, so a second run takes seconds.
# Slow artefacts (etcd 3.5, Kubernetes server binaries, the S3 servers) are cached under
# $KIRT_LAB_CACHE (default ~/.cache/kirt-lab).
set -euo pipefail

CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
K8S_VERSION=1.20.2
mkdir -p "$CACHE"
log() { printf '[lab-deps] %s\n' "$*" >&2; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- Debian packages --------------------------------------------------------------------------
PKGS=(etcd-server etcd-client golang-1.19-go rsync protobuf-compiler libprotobuf-dev age zstd openssl
      golang-github-modern-go-reflect2-dev debian-archive-keyring dpkg-dev python3-venv curl
      minisign prometheus-pushgateway buildah binutils openssh-client time jq chromium fonts-dejavu-core)
missing=()
for p in "${PKGS[@]}"; do have_pkg "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian etcd-server package starts a system etcd on 2379; the lab runs its own on free ports.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi

# The Debian mirror the machine itself uses (never hard-coded here).
mirror() {
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?$' | head -1)
  [[ -n "$uri" ]] || { log "cannot find a Debian mirror in /etc/apt sources"; exit 1; }
  echo "${uri%/}"
}

# Private apt state so that the machine's own sources stay untouched.
private_apt() { # $1 = name, $2 = Types, $3 = Suites
  local dir="$CACHE/apt-$1"
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  cat >"$dir/kirt.sources" <<SRC
Types: $2
URIs: $(mirror)
Suites: $3
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_OPTS=(-o "Dir::Etc::SourceList=$dir/kirt.sources" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives" -o "APT::Sandbox::User=root")
  [[ -n "$(ls "$dir/lists" 2>/dev/null | grep -v partial)" ]] || apt-get "${APT_OPTS[@]}" update -qq
}

# --- etcd 3.5 (with etcdutl) from trixie ----------------------------------------------------------
ETCD35="$CACHE/etcd-3.5"
if [[ ! -x "$ETCD35/usr/bin/etcdutl" ]]; then
  log "fetching etcd 3.5 from Debian trixie"
  private_apt trixie deb trixie
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get "${APT_OPTS[@]}" download etcd-server etcd-client >/dev/null)
  rm -rf "$ETCD35.tmp" && mkdir -p "$ETCD35.tmp"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$ETCD35.tmp"; done
  rm -rf "$tmp" "$ETCD35" && mv "$ETCD35.tmp" "$ETCD35"
fi

# --- kube-apiserver + kube-controller-manager built from Debian's source ---------------------------
K8S_BIN="$CACHE/k8s-$K8S_VERSION/bin"
if [[ ! -x "$K8S_BIN/kube-apiserver" || ! -x "$K8S_BIN/kube-controller-manager" ]]; then
  src_root="$CACHE/k8s-src"
  if [[ ! -d "$src_root/src/cmd/kube-apiserver" ]]; then
    log "fetching Kubernetes $K8S_VERSION source from Debian bookworm"
    private_apt bookworm-src deb-src bookworm
    rm -rf "$src_root" && mkdir -p "$src_root/dl"
    (cd "$src_root/dl" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >/dev/null)
    (cd "$src_root/dl" && dpkg-source --no-check -x ./*.dsc "$src_root/src" >/dev/null)
  fi
  src="$src_root/src"
  # vendored reflect2 v1.0.1 crashes (SIGSEGV in mapiternext) with Go >= 1.18: use Debian's 1.0.2.
  r2=$(dpkg -L golang-github-modern-go-reflect2-dev | grep -E '/reflect2/[^/]+\.go$' | head -1 | xargs dirname)
  find "$src/vendor/github.com/modern-go/reflect2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  find "$r2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$src/vendor/github.com/modern-go/reflect2/" \;
  gobin=$(dirname "$(dpkg -L golang-1.19-go | grep -E '/bin/go$' | head -1)")
  log "building kube-apiserver and kube-controller-manager (about 10 minutes on 2 cores)"
  (
    cd "$src"
    export PATH="$gobin:$PATH" GOPATH="$src/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE="$CACHE/go-build"
    mkdir -p .go/src/k8s.io && ln -sfn "$src" .go/src/k8s.io/kubernetes
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$CACHE/k8s-build.log" 2>&1 \
      || { log "Kubernetes build failed, see $CACHE/k8s-build.log"; tail -20 "$CACHE/k8s-build.log"; exit 1; }
  )
  mkdir -p "$K8S_BIN"
  cp "$src/_output/local/bin/linux/amd64/kube-apiserver" "$src/_output/local/bin/linux/amd64/kube-controller-manager" "$K8S_BIN/"
  rm -rf "$src/_output" "$src/.go"
fi

# --- S3 servers ---------------------------------------------------------------------------------
if [[ ! -x "$CACHE/moto/bin/moto_server" ]]; then
  log "installing moto (S3 server) into $CACHE/moto"
  rm -rf "$CACHE/moto"
  python3 -m venv "$CACHE/moto"
  "$CACHE/moto/bin/pip" install -q 'moto[server]'
fi
if [[ ! -x "$CACHE/s3s-fs/bin/s3s-fs" ]]; then
  log "installing s3s-fs (persistent S3 server) into $CACHE/s3s-fs"
  CARGO_TARGET_DIR="$CACHE/s3s-fs-target" cargo install -q --locked s3s-fs --version 0.14.1 --features binary --root "$CACHE/s3s-fs"
  rm -rf "$CACHE/s3s-fs-target"
fi

log "ok: etcd 3.4 ($(etcd --version 2>/dev/null | head -1)), etcd 3.5 ($("$ETCD35/usr/bin/etcd" --version | head -1)), kube-apiserver $("$K8S_BIN/kube-apiserver" --version)"
