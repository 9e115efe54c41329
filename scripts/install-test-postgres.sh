#!/usr/bin/env bash
# PostgreSQL's server binaries for the --target postgres tests: Debian's
# `postgresql` package, installed when no initdb is found under
# /usr/lib/postgresql/*/bin. Skipped when DOCMIRROR_TEST_POSTGRES_URL names a
# server. Installing needs root (CI runs as root); otherwise it says what to run.
# The TLS tests (tests/postgres_tls.rs) always start a cluster of their own,
# with certificates made by the `openssl` command, which is installed too.
set -euo pipefail
if [ -n "${DOCMIRROR_TEST_POSTGRES_URL:-}" ]; then
  exit 0
fi
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v openssl >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: PostgreSQL's server or openssl is not installed: run 'sudo apt-get install -y postgresql openssl'," \
    "or set DOCMIRROR_TEST_POSTGRES_URL to a server whose user may create databases" >&2
  exit 1
fi
echo "Installing PostgreSQL and openssl (Debian's packages) for the --target postgres tests..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql openssl >/dev/null
# The package starts a cluster of its own on 5432 where it can; the tests do not use it.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null
echo "PostgreSQL installed: $(ls -d /usr/lib/postgresql/*/bin | tail -n 1)" >&2
