#!/usr/bin/env bash
# Check the systemd units (docmirror.service, docmirror-reverse.service):
# `systemd-analyze verify` and a security exposure of 2.0 or better ("OK"),
# and that the reverse unit may write only the folder it keeps current.
# Uses the built binary in place of /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-$PWD/target/debug/docmirror}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in docmirror.service docmirror-reverse.service; do
  sed "s|/usr/local/bin/docmirror|$bin|" "deploy/systemd/$unit" > "$tmp/$unit"
  systemd-analyze verify "$tmp/$unit"
  # --threshold counts in tenths: 20 means an exposure of 2.0 ("OK") or better.
  systemd-analyze security --offline=true --threshold=20 "$tmp/$unit" | tail -1
done
# reverse: ReadWritePaths= is exactly its --out folder, and nothing else is writable.
rev=deploy/systemd/docmirror-reverse.service
out=$(sed -n 's/^ExecStart=.* --out \([^ ]*\).*/\1/p' "$rev")
rw=$(sed -n 's/^ReadWritePaths=//p' "$rev")
if [ -z "$out" ] || [ "$rw" != "$out" ]; then
  echo "check-unit: $rev: ReadWritePaths=$rw must be exactly the --out folder ($out)" >&2
  exit 1
fi
grep -q '^ProtectSystem=strict$' "$rev" || { echo "check-unit: $rev needs ProtectSystem=strict" >&2; exit 1; }
echo "check-unit: $rev writes only $out"
