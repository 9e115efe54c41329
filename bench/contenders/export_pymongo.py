#!/usr/bin/env python3
"""The export contender: a plain pymongo script writing the platform's file
layout (data/users.json, data/datasets/metadata.json, artifacts/jobs/<job>.json)
from MongoDB, as JSON.stringify(x, null, 2) would, dates as toISOString().
What someone would write by hand instead of `docmirror export`.

    export_pymongo.py URI OUT
"""

import datetime
import json
import os
import sys

from bson.int64 import Int64
from pymongo import MongoClient


def plain(v):
    if isinstance(v, datetime.datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"
    if isinstance(v, Int64):
        return int(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def record(d, id_field):
    out = {}
    if id_field not in d:
        out[id_field] = d["_id"]
    for k, v in d.items():
        if k in ("_id", "_mirror"):
            continue
        out[k] = plain(v)
    return out


def write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def main():
    uri, out = sys.argv[1], sys.argv[2]
    db = MongoClient(uri).get_default_database()
    n = 0
    users = [record(d, "id") for d in db.users.find()]
    write(os.path.join(out, "data", "users.json"), users)
    datasets = [record(d, "id") for d in db.datasets.find()]
    write(os.path.join(out, "data", "datasets", "metadata.json"), datasets)
    n += len(users) + len(datasets)
    for d in db.training_jobs.find():
        source = (d.get("_mirror") or {}).get("source", "")
        name = source.rsplit("/", 1)[-1] if source.startswith("artifacts/jobs/") else f"{d['_id']}.json"
        write(os.path.join(out, "artifacts", "jobs", name), record(d, "job_id"))
        n += 1
    print(f"export_pymongo: {n} records")


if __name__ == "__main__":
    main()
