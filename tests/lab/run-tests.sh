#!/usr/bin/env bash
# `make test`: build, start the lab, run unit + integration tests, stop the lab (also on failure).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --workspace --all-targets
started_here=0
if [[ ! -f "${KIRT_LAB_DIR:-.lab}/env" ]]; then
  bash tests/lab/lab.sh up
  started_here=1
fi
cleanup() { ((started_here)) && bash tests/lab/lab.sh down || true; }
trap cleanup EXIT
# 2 cores: a few tests at a time; each test uses its own namespace / bucket / key prefix.
cargo test --workspace -- --test-threads "${KIRT_TEST_THREADS:-4}"
