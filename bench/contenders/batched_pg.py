#!/usr/bin/env python3
"""Batched PostgreSQL contender: a careful hand-written bulk loader with psycopg 3.

    batched_pg.py DATA_DIR ARTIFACTS_DIR DATABASE_URL SCHEMA_SQL

Applies the guide's schema (IF NOT EXISTS), reads every file, maps each
record to the guide's columns (email lower-cased and trimmed, params as
jsonb), and writes multi-row `INSERT ... ON CONFLICT (id) DO UPDATE` in
batches of 1,000 rows, one transaction per table, users, then datasets,
then jobs. No change detection: a second run writes everything again.
"""

from __future__ import annotations

import json
import os
import sys

import psycopg
from psycopg.types.json import Jsonb

BATCH = 1000

TABLES = [
    # table, columns (first: id), how to get each column's value from a record
    ("users", ["id", "email", "name", "password", "role", "created_at", "updated_at"],
     lambda r: [r.get("id"), (r.get("email") or "").strip().lower(), r.get("name"), r.get("password"),
                r.get("role"), r.get("createdAt"), r.get("updatedAt")]),
    ("datasets", ["id", "name", "filename", "path", "size", "type", "uploaded_by", "uploaded_at", "deleted_at"],
     lambda r: [r.get(c) for c in ("id", "name", "filename", "path", "size", "type", "uploaded_by",
                                   "uploaded_at", "deleted_at")]),
    ("training_jobs", ["id", "job_id", "user_id", "dataset_id", "status", "progress", "epoch", "step",
                       "total_steps", "loss", "message", "params", "pid", "created_at", "updated_at",
                       "completed_at"],
     lambda r: [r.get("job_id"), r.get("job_id"), r.get("user_id"), r.get("dataset_id"), r.get("status"),
                r.get("progress"), r.get("epoch"), r.get("step"), r.get("total_steps"), r.get("loss"),
                r.get("message"), Jsonb(r.get("params")) if r.get("params") is not None else None,
                r.get("pid"), r.get("created_at"), r.get("updated_at"), r.get("completed_at")]),
]


def records(data_dir: str, artifacts_dir: str, table: str) -> list[dict]:
    if table == "users":
        with open(os.path.join(data_dir, "users.json"), encoding="utf-8") as f:
            return json.load(f)
    if table == "datasets":
        with open(os.path.join(data_dir, "datasets", "metadata.json"), encoding="utf-8") as f:
            return json.load(f)
    jobs_dir = os.path.join(artifacts_dir, "jobs")
    out = []
    for name in sorted(os.listdir(jobs_dir)):
        if name.endswith(".json"):
            with open(os.path.join(jobs_dir, name), encoding="utf-8") as f:
                out.append(json.load(f))
    return out


def main() -> int:
    data_dir, artifacts_dir, url, schema_path = sys.argv[1:5]
    with open(schema_path, encoding="utf-8") as f:
        schema = f.read().replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ").replace(
            "CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ")
    with psycopg.connect(url) as conn:
        conn.execute(schema)
        conn.commit()
        for table, cols, row in TABLES:
            rows = [row(r) for r in records(data_dir, artifacts_dir, table)]
            sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in cols[1:])
            names = ", ".join(f'"{c}"' for c in cols)
            one = "(" + ", ".join(["%s"] * len(cols)) + ")"
            with conn.cursor() as cur:
                for i in range(0, len(rows), BATCH):
                    batch = rows[i:i + BATCH]
                    sql = (f"INSERT INTO {table} ({names}) VALUES " + ", ".join([one] * len(batch))
                           + f" ON CONFLICT (id) DO UPDATE SET {sets}")
                    cur.execute(sql, [v for r in batch for v in r])
            conn.commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
