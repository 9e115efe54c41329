#!/usr/bin/env bash
# The PostgreSQL target's benchmark (issue 16): docmirror against a batched
# psycopg loader and the migration guide's own Node.js + pg script, side by
# side on one throwaway PostgreSQL cluster. See bench/pg.py for what it
# measures and checks.
#
#   scripts/bench-postgres.sh [--quick] [--users N] [--datasets N] [--jobs N] [--runs R] [--report FILE]
#
# Installs what it needs: PostgreSQL (Debian's package, as root), psycopg into
# .venv, pg into bench/node_modules. BENCH_SKIP_BUILD=1 uses the release
# binary as it is. Exits non-zero when a contender fails or loads wrong counts.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-server.sh   # .venv (and PostgreSQL, through install-test-postgres.sh)
PSYCOPG="psycopg[binary]==3.3.9"
if ! .venv/bin/python -c "import psycopg" 2>/dev/null; then
  echo "Installing $PSYCOPG into .venv (one time)..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "$PSYCOPG"
fi
command -v node >/dev/null || { echo "error: node (v18+) is needed for the guide's script" >&2; exit 1; }
if [ ! -f bench/node_modules/pg/package.json ] || [ bench/package-lock.json -nt bench/node_modules/.package-lock.json ]; then
  echo "Installing the Node contenders' dependencies into bench/node_modules..." >&2
  (cd bench && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
fi
if [ "${BENCH_SKIP_BUILD:-0}" != "1" ]; then
  cargo build --release --quiet
fi
exec .venv/bin/python bench/pg.py "$@"
