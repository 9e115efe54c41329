#!/usr/bin/env bash
# Run every test: unit tests, and integration tests against a real MongoDB
# wire-protocol server. With MONGODB_URI set (e.g. a mongod from
# docker-compose.yml) the tests use it; otherwise SecantusDB is installed into
# .venv and the test harness starts one server on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MONGODB_URI:-}" ]; then
  scripts/install-test-server.sh
fi
exec cargo test --all-targets "$@"
