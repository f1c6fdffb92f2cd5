#!/usr/bin/env bash
# `make advisory-db`: refreshes deny/advisory-db from ADVISORY_DB (a directory holding a RustSec
# advisory-db snapshot; default: ../shared/advisory-db, the offline copy of this workplace) or,
# when ADVISORY_DB is a URL, from a fresh clone of it. Records where it came from in
# deny/advisory-db.COMMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${ADVISORY_DB:-../shared/advisory-db}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ "$src" == https://* ]]; then
  git clone -q --depth 1 "$src" "$tmp/db"
  stamp="$src@$(git -C "$tmp/db" rev-parse HEAD)"
  rm -rf "$tmp/db/.git"
else
  cp -a "$src/." "$tmp/db"
  rm -rf "$tmp/db/.git"
  readme="$(dirname "$src")/advisory-db.README.md"
  commit=$(grep -oE 'commit [0-9a-f]{40}' "$readme" 2>/dev/null | head -1 | cut -d' ' -f2 || true)
  stamp="RustSec/advisory-db@${commit:-unknown} (copied from $src on $(date -u +%Y-%m-%d))"
fi
rm -rf deny/advisory-db && mv "$tmp/db" deny/advisory-db
echo "$stamp" > deny/advisory-db.COMMIT
echo "deny/advisory-db: $stamp"
