#!/usr/bin/env bash
# The quick start on the PostgreSQL target: build docmirror, start a
# throwaway PostgreSQL cluster (in a temporary folder, on a free port, as the
# postgres user when run as root), mirror the bundled example data into the
# migration guide's tables, sync again (nothing to write), verify, show a
# few rows, and stop. Installs Debian's postgresql package if it is missing
# (root only). Extra arguments go to `docmirror sync`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-postgres.sh
echo "== Building docmirror (release; the first build takes about 5 minutes, later ones seconds)..."
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/docmirror"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$pgbin" ] || { echo "error: no PostgreSQL under /usr/lib/postgresql" >&2; exit 1; }
dir=$(mktemp -d /tmp/docmirror-quickstart-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; as_pg=(runuser -u postgres --); fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
trap '"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$pgbin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE ml_training_platform"
export DOCMIRROR_TARGET=postgres
export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/ml_training_platform"
echo "== dev PostgreSQL on 127.0.0.1:$port (in $dir; stopped and removed when this script ends)"
echo "== docmirror sync --target postgres (examples/)"
"$bin" --log-format text sync --data-dir examples/data --artifacts-dir examples/artifacts "$@"
echo "== docmirror sync again (nothing to write)"
"$bin" --log-format text --quiet sync --data-dir examples/data --artifacts-dir examples/artifacts "$@"
echo "== docmirror verify"
"$bin" --log-format text verify --data-dir examples/data --artifacts-dir examples/artifacts
echo "== the guide's tables"
"$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -d ml_training_platform \
  -c "SELECT id, email, role, created_at FROM users ORDER BY created_at" \
  -c "SELECT id, user_id, status, progress, params->>'model' AS model FROM training_jobs ORDER BY id"
