#!/usr/bin/env bash
# Check the systemd unit: `systemd-analyze verify` and a security exposure of
# 2.0 or better ("OK"). Uses the built binary in place of /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-$PWD/target/debug/docmirror}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/bin/docmirror|$bin|" deploy/systemd/docmirror.service > "$tmp/docmirror.service"
systemd-analyze verify "$tmp/docmirror.service"
# --threshold counts in tenths: 20 means an exposure of 2.0 ("OK") or better.
systemd-analyze security --offline=true --threshold=20 "$tmp/docmirror.service" | tail -1
