#!/usr/bin/env bash
# The benchmark (issue 6): docmirror against a batched pymongo loader, the
# migration guide's row-by-row Node.js script and (where installed)
# mongoimport, on a generated platform tree, each against a fresh in-memory
# SecantusDB on 127.0.0.1. See bench/run.py for the scenarios and flags.
#
#   scripts/bench.sh [--quick | --scale] [--users N] [--datasets N] [--jobs N] [--runs R]
#
# --quick: small tree, one run each, correctness only (CI); writes
# bench/results/quick.md. --scale: issue 14's scale run (1,000,000 users,
# 100,000 datasets, 200,000 job files; docmirror only, one run; about half an
# hour on SecantusDB); writes bench/results/scale.md. Without either: the full
# run, which writes BENCHMARKS.md.
# Exits non-zero when a contender's output is wrong or a contender fails.
# BENCH_SKIP_BUILD=1 uses target/release/docmirror as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-server.sh

command -v node >/dev/null || { echo "error: node (v18+) is needed for the seed-style contender" >&2; exit 1; }
if [ ! -f bench/node_modules/mongodb/package.json ] || [ bench/package-lock.json -nt bench/node_modules/.package-lock.json ]; then
  echo "Installing the Node contender's dependencies into bench/node_modules..." >&2
  (cd bench && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
fi

if [ "${BENCH_SKIP_BUILD:-0}" != "1" ]; then
  cargo build --release --quiet
fi

exec .venv/bin/python bench/run.py "$@"
