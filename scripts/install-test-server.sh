#!/usr/bin/env bash
# Install the test servers. Idempotent: a second run only checks.
# - MongoDB wire protocol: SecantusDB (a Python implementation) into ./.venv.
#   Tests and the quick start use .venv/bin/secantusd-py unless MONGODB_URI is set.
# - PostgreSQL (for --target postgres): Debian's `postgresql` package where no
#   initdb is found under /usr/lib/postgresql/*/bin (needs root, as in CI).
#   The tests start their own cluster from those binaries unless
#   DOCMIRROR_TEST_POSTGRES_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-postgres.sh
VERSION="0.7.0b3"
PY="${PYTHON:-python3}"
if [ -x .venv/bin/secantusd-py ] && .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('SecantusDB') != '$VERSION')" 2>/dev/null; then
  exit 0
fi
command -v "$PY" >/dev/null || { echo "error: $PY not found; install Python 3.10+ first" >&2; exit 1; }
echo "Installing SecantusDB==$VERSION into .venv (one time)..." >&2
"$PY" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "SecantusDB==$VERSION"
.venv/bin/secantusd-py --help >/dev/null
echo "Test server installed: .venv/bin/secantusd-py" >&2
