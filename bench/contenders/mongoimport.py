#!/usr/bin/env python3
"""mongoimport contender (runs only where `mongoimport` is on PATH).

    mongoimport.py DATA_DIR ARTIFACTS_DIR MONGODB_URI

mongoimport cannot apply the mirror's rules (dates, lower-cased email, Int64
size) to raw platform JSON, so this first rewrites each source as canonical
Extended JSON lines (timed, as part of the contender), then runs
`mongoimport --mode upsert` (matched on _id) once per collection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from bson import json_util

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batched import SOURCES, records, to_doc  # noqa: E402  (same mapping as the batched loader)


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    data_dir, artifacts_dir, uri = sys.argv[1:]
    opts = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL, tz_aware=True)
    with tempfile.TemporaryDirectory(prefix="bench-mongoimport-") as tmp:
        for coll, id_field, dates, int64s, emails in SOURCES:
            path = os.path.join(tmp, coll + ".jsonl")
            with open(path, "w", encoding="utf-8") as f:
                for rec in records(data_dir, artifacts_dir, coll):
                    f.write(json_util.dumps(to_doc(rec, id_field, dates, int64s, emails), json_options=opts))
                    f.write("\n")
            subprocess.run(
                ["mongoimport", "--quiet", "--uri", uri, "--collection", coll,
                 "--mode", "upsert", "--upsertFields", "_id", "--file", path],
                check=True,
            )
    print("mongoimport: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
