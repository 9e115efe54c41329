#!/usr/bin/env bash
# The quick start: build docmirror, start a throwaway dev MongoDB server
# (SecantusDB, in memory), mirror the bundled example data into it, verify,
# and stop.
# Extra arguments go to `docmirror sync`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-server.sh
echo "== Building docmirror (release; the first build takes about 5 minutes, later ones seconds)..."
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/docmirror"
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
.venv/bin/secantusd-py --port "$port" --storage-path :memory: >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  if .venv/bin/python -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; then break; fi
  sleep 0.1
done
export MONGODB_URI="mongodb://127.0.0.1:$port/ml_training_platform"
echo "== dev server on 127.0.0.1:$port (in memory; stopped when this script ends)"
echo "== docmirror sync (examples/)"
"$bin" --log-format text sync --data-dir examples/data --artifacts-dir examples/artifacts "$@"
echo "== docmirror sync again (nothing to write)"
"$bin" --log-format text --quiet sync --data-dir examples/data --artifacts-dir examples/artifacts "$@"
echo "== docmirror verify"
"$bin" --log-format text verify --data-dir examples/data --artifacts-dir examples/artifacts
