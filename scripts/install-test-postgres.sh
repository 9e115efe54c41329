#!/usr/bin/env bash
# PostgreSQL's server binaries for the --target postgres tests: Debian's
# `postgresql` package, installed when no initdb is found under
# /usr/lib/postgresql/*/bin. Skipped when DOCMIRROR_TEST_POSTGRES_URL names a
# server. Installing needs root (CI runs as root); otherwise it says what to run.
set -euo pipefail
if [ -n "${DOCMIRROR_TEST_POSTGRES_URL:-}" ]; then
  exit 0
fi
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: PostgreSQL's server is not installed: run 'sudo apt-get install -y postgresql', or set" \
    "DOCMIRROR_TEST_POSTGRES_URL to a server whose user may create databases" >&2
  exit 1
fi
echo "Installing PostgreSQL (Debian's postgresql package) for the --target postgres tests..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# The package starts a cluster of its own on 5432 where it can; the tests do not use it.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null
echo "PostgreSQL installed: $(ls -d /usr/lib/postgresql/*/bin | tail -n 1)" >&2
