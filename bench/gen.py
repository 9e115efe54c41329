#!/usr/bin/env python3
"""Generate a deterministic ML Training Platform tree for the benchmark.

    gen.py OUT_DIR [--users N] [--datasets N] [--jobs N] [--seed S]

writes OUT_DIR/data/users.json, OUT_DIR/data/datasets/metadata.json and
OUT_DIR/artifacts/jobs/<job_id>.json, in the shapes the platform writes
(JSON.stringify(..., null, 2) for the arrays, one object per job file).
The same arguments always give the same bytes.

Passwords are bcrypt-*shaped* strings ("$2b$10$" + 53 characters of bcrypt's
alphabet), not real hashes: real bcrypt at cost 10 costs ~50-100 ms per
user, i.e. hours for 100k users, and no contender ever verifies them.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from datetime import datetime, timedelta, timezone

GEN_VERSION = "bench-gen-1"  # bump when the output for given arguments changes

BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yara"]
LAST = ["smith", "jones", "garcia", "miller", "davis", "lopez", "wilson", "anderson", "thomas",
        "moore", "martin", "lee", "perez", "white", "harris", "clark", "lewis", "young", "king"]
DOMAINS = ["example.com", "lab.example.org", "research.example.net", "uni.example.edu"]
DS_TYPES = [("csv", "csv"), ("jsonl", "jsonl"), ("json", "json"), ("parquet", "parquet"), ("txt", "txt")]
MODELS = ["distilbert-base-uncased", "bert-base-uncased", "roberta-base", "gpt2", "t5-small",
          "meta-llama/Llama-3.2-1B", "Qwen/Qwen2.5-0.5B"]
STATUSES = ["completed"] * 6 + ["failed"] * 2 + ["running"] * 2 + ["queued", "cancelled"]
MESSAGES = {
    "completed": "Training finished",
    "failed": "CUDA out of memory. Tried to allocate 2.00 GiB",
    "running": "Training in progress",
    "queued": "Waiting for a free GPU",
    "cancelled": "Cancelled by user",
}

# Everything happens before this instant, so a benchmark change stamped "now" is newer.
EPOCH_END = datetime(2025, 10, 13, 12, 0, 0, tzinfo=timezone.utc)
EPOCH_START = EPOCH_END - timedelta(days=400)


def iso(dt: datetime) -> str:
    """JavaScript's toISOString(): milliseconds and a Z."""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rand_time(rng: random.Random, start: datetime = EPOCH_START, end: datetime = EPOCH_END) -> datetime:
    span_ms = int((end - start).total_seconds() * 1000)
    return start + timedelta(milliseconds=rng.randrange(max(span_ms, 1)))


def gen_users(rng: random.Random, n: int) -> list[dict]:
    users = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        created = rand_time(rng)
        updated = created if rng.random() < 0.5 else rand_time(rng, created)
        users.append({
            "id": f"{rng.getrandbits(128):032x}",
            # The index makes every address unique.
            "email": f"{first}.{last}.{i}@{rng.choice(DOMAINS)}",
            "name": f"{first.title()} {last.title()}",
            "password": "$2b$10$" + "".join(rng.choice(BCRYPT_ALPHABET) for _ in range(53)),
            "role": "admin" if rng.random() < 0.05 else "user",
            "createdAt": iso(created),
            "updatedAt": iso(updated),
        })
    return users


def gen_datasets(rng: random.Random, n: int, users: list[dict]) -> list[dict]:
    out = []
    seen = set()
    for i in range(n):
        uploaded = rand_time(rng)
        while True:
            ds_id = f"ds_{int(uploaded.timestamp() * 1000)}_{rng.getrandbits(24):06x}"
            if ds_id not in seen:
                seen.add(ds_id)
                break
        ext, kind = rng.choice(DS_TYPES)
        name = f"{rng.choice(['imdb', 'tickets', 'reviews', 'chats', 'docs', 'code'])}-{i}"
        filename = f"{name.replace('-', '_')}.{ext}"
        # About 5% above 4 GiB: the size must stay exact (Int64), not wrap or become a double.
        size = rng.randrange(5 * 2**32, 2**40) if rng.random() < 0.05 else rng.randrange(1, 2**31)
        deleted = iso(rand_time(rng, uploaded)) if rng.random() < 0.1 else None
        out.append({
            "id": ds_id,
            "name": name,
            "filename": filename,
            "path": f"data/datasets/{ds_id}/{filename}",
            "size": size,
            "type": kind,
            "uploaded_by": rng.choice(users)["id"] if users else None,
            "uploaded_at": iso(uploaded),
            "deleted_at": deleted,
        })
    return out


def gen_jobs(rng: random.Random, n: int, users: list[dict], datasets: list[dict]) -> list[dict]:
    out = []
    seen = set()
    for _ in range(n):
        created = rand_time(rng)
        while True:
            job_id = f"job_{created.strftime('%Y%m%d_%H%M%S')}_{rng.getrandbits(24):06x}"
            if job_id not in seen:
                seen.add(job_id)
                break
        status = rng.choice(STATUSES)
        epochs = rng.choice([1, 2, 3, 5, 10])
        total_steps = epochs * rng.choice([500, 1000, 1500, 4500])
        if status == "completed":
            step, progress = total_steps, 100.0  # a whole float: must stay a double
        elif status == "queued":
            step, progress = 0, 0.0
        else:
            step = rng.randrange(1, total_steps)
            progress = round(100.0 * step / total_steps, 2)
        updated = rand_time(rng, created, created + timedelta(hours=12))
        done = status in ("completed", "failed", "cancelled")
        out.append({
            "job_id": job_id,
            "user_id": rng.choice(users)["id"] if users else None,
            "dataset_id": rng.choice(datasets)["id"] if datasets else None,
            "status": status,
            "progress": progress,
            "epoch": min(epochs, 1 + step * epochs // max(total_steps, 1)),
            "step": step,
            "total_steps": total_steps,
            "loss": round(rng.uniform(0.05, 2.5), 4),
            "message": MESSAGES[status],
            "params": {
                "model": rng.choice(MODELS),
                "learning_rate": rng.choice([5e-5, 2e-5, 1e-4, 3e-4]),
                "batch_size": rng.choice([8, 16, 32]),
                "epochs": epochs,
                "lora": {"r": rng.choice([4, 8, 16]), "alpha": rng.choice([16, 32])},
            },
            "pid": rng.randrange(1000, 4_000_000),
            "created_at": iso(created),
            "updated_at": iso(updated),
            "completed_at": iso(updated) if done else None,
        })
    return out


def write_json_atomic(path: str, value, indent: int | None = 2) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent)
    os.replace(tmp, path)


def generate(out: str, users: int, datasets: int, jobs: int, seed: int = 42) -> dict:
    """Write the tree under `out` (replacing it) and return its manifest."""
    rng = random.Random(f"{seed}:{users}:{datasets}:{jobs}")
    u = gen_users(rng, users)
    d = gen_datasets(rng, datasets, u)
    j = gen_jobs(rng, jobs, u, d)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "data", "datasets"))
    os.makedirs(os.path.join(out, "artifacts", "jobs"))
    write_json_atomic(os.path.join(out, "data", "users.json"), u)
    write_json_atomic(os.path.join(out, "data", "datasets", "metadata.json"), d)
    jobs_dir = os.path.join(out, "artifacts", "jobs")
    for job in j:
        with open(os.path.join(jobs_dir, job["job_id"] + ".json"), "w", encoding="utf-8") as f:
            json.dump(job, f, indent=2)
    manifest = {"gen": GEN_VERSION, "seed": seed, "users": users, "datasets": datasets, "jobs": jobs}
    write_json_atomic(os.path.join(out, "manifest.json"), manifest)
    return manifest


def ensure(out: str, users: int, datasets: int, jobs: int, seed: int = 42) -> bool:
    """Generate unless `out` already holds exactly this tree; True if generated."""
    want = {"gen": GEN_VERSION, "seed": seed, "users": users, "datasets": datasets, "jobs": jobs}
    try:
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            if json.load(f) == want:
                return False
    except (OSError, ValueError):
        pass
    generate(out, users, datasets, jobs, seed)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--datasets", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    print(json.dumps(generate(a.out, a.users, a.datasets, a.jobs, a.seed)))


if __name__ == "__main__":
    main()
