#!/usr/bin/env python3
"""Batched contender: a careful hand-written bulk loader with pymongo.

    batched.py DATA_DIR ARTIFACTS_DIR MONGODB_URI

Reads every file, maps each record (dates as datetime, email lower-cased and
trimmed, dataset size as Int64; json keeps ints as ints and floats as
floats), then writes ReplaceOne({_id}, doc, upsert=True) in unordered
bulk_write batches of 1000. It has no change detection: a second run writes
everything again. The same indexes as the platform's schema are created first.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone

from bson.int64 import Int64
from pymongo import ASCENDING, MongoClient, ReplaceOne

BATCH = 1000

SOURCES = [
    # collection, id field, date fields, int64 fields, email fields
    ("users", "id", ("createdAt", "updatedAt"), (), ("email",)),
    ("datasets", "id", ("uploaded_at", "deleted_at"), ("size",), ()),
    ("training_jobs", "job_id", ("created_at", "updated_at", "completed_at"), (), ()),
]


def to_date(v):
    if v is None:
        return None
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    # BSON dates hold milliseconds.
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def to_doc(rec: dict, id_field: str, dates, int64s, emails) -> dict:
    doc = {"_id": rec[id_field]}
    for k, v in rec.items():
        if k in dates:
            v = to_date(v)
        elif k in int64s and v is not None:
            v = Int64(v)
        elif k in emails and isinstance(v, str):
            v = v.strip().lower()
        doc[k] = v
    return doc


def records(data_dir: str, artifacts_dir: str, coll: str):
    if coll == "users":
        with open(os.path.join(data_dir, "users.json"), encoding="utf-8") as f:
            yield from json.load(f)
    elif coll == "datasets":
        with open(os.path.join(data_dir, "datasets", "metadata.json"), encoding="utf-8") as f:
            yield from json.load(f)
    else:
        jobs = os.path.join(artifacts_dir, "jobs")
        for e in sorted(os.scandir(jobs), key=lambda e: e.name):
            if e.is_file() and e.name.endswith(".json"):
                with open(e.path, encoding="utf-8") as f:
                    yield json.load(f)


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    data_dir, artifacts_dir, uri = sys.argv[1:]
    client = MongoClient(uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
    db = client.get_default_database()
    db.users.create_index([("email", ASCENDING)], unique=True, name="email_unique")
    db.datasets.create_index([("uploaded_by", ASCENDING)])
    db.datasets.create_index([("uploaded_at", ASCENDING)])
    db.training_jobs.create_index([("user_id", ASCENDING)])
    db.training_jobs.create_index([("status", ASCENDING)])
    db.training_jobs.create_index([("created_at", ASCENDING)])
    counts = {}
    for coll, id_field, dates, int64s, emails in SOURCES:
        ops, n = [], 0
        for rec in records(data_dir, artifacts_dir, coll):
            doc = to_doc(rec, id_field, dates, int64s, emails)
            ops.append(ReplaceOne({"_id": doc["_id"]}, doc, upsert=True))
            if len(ops) == BATCH:
                db[coll].bulk_write(ops, ordered=False)
                n += len(ops)
                ops = []
        if ops:
            db[coll].bulk_write(ops, ordered=False)
            n += len(ops)
        counts[coll] = n
    client.close()
    print("batched: replaced " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
