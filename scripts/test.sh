#!/usr/bin/env bash
# Run every test: unit tests, and integration tests against a real MongoDB
# wire-protocol server. With MONGODB_URI set (e.g. a mongod from
# docker-compose.yml) the tests use it; otherwise the test harness starts one
# SecantusDB server on a free port. Either way SecantusDB is installed into
# .venv: the tests that kill, freeze and restart a server start their own,
# whatever MONGODB_URI says, so as not to stop a server the suite shares.
# The --target postgres tests start one PostgreSQL cluster of their own
# (Debian's postgresql package, installed by the same script) unless
# DOCMIRROR_TEST_POSTGRES_URL names a server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-server.sh
exec cargo test --all-targets "$@"
