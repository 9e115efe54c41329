"""Correctness check for the benchmark: what MongoDB must hold for a tree.

The expected documents are computed from the platform's files with the rules
every contender must follow (the same rules as docmirror's built-in layout):

- `_id` is `id` (users, datasets) or `job_id` (training_jobs); every field kept;
- `email` lower-cased and trimmed;
- createdAt/updatedAt, uploaded_at/deleted_at, created_at/updated_at/completed_at
  are BSON dates (millisecond precision); null stays null;
- dataset `size` is Int64; other integers Int32 when they fit, else Int64;
  JSON numbers written with a fraction or exponent are doubles (100.0 too);
- `params` is an embedded document.

Documents are compared type-exactly (Int32 vs Int64 vs double vs date) and
field order is ignored. docmirror's `_mirror` sub-document is dropped first.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64

COLLECTIONS = ("users", "datasets", "training_jobs")

RULES = {
    "users": {"id": "id", "dates": {"createdAt", "updatedAt"}, "email": {"email"}, "int64": set()},
    "datasets": {"id": "id", "dates": {"uploaded_at", "deleted_at"}, "email": set(), "int64": {"size"}},
    "training_jobs": {
        "id": "job_id",
        "dates": {"created_at", "updated_at", "completed_at"},
        "email": set(),
        "int64": set(),
    },
}

# Decode dates as raw milliseconds: exact, and no time-zone games.
CODEC = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class _Float(float):
    """A JSON number written with a fraction or an exponent."""


def _load(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_float=_Float)


def _date_ms(s: str) -> int:
    # The generator writes toISOString() shapes; fromisoformat reads them (3.11+).
    # A naive time is UTC, as docmirror reads it. Sub-millisecond digits are cut.
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    whole = dt.replace(microsecond=0)
    return int(whole.timestamp()) * 1000 + dt.microsecond // 1000


def _json_canon(v):
    """Canonical form of a JSON value under the default number rules."""
    if v is None:
        return ("null",)
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, _Float):
        return ("double", float(v))
    if isinstance(v, int):
        return ("int32", v) if INT32_MIN <= v <= INT32_MAX else ("int64", v)
    if isinstance(v, str):
        return ("str", v)
    if isinstance(v, list):
        return ("array", tuple(_json_canon(x) for x in v))
    if isinstance(v, dict):
        return ("doc", frozenset((k, _json_canon(x)) for k, x in v.items()))
    raise TypeError(type(v))


def expected_doc(coll: str, rec: dict):
    r = RULES[coll]
    out = {"_id": ("str", rec[r["id"]])}
    for k, v in rec.items():
        if k in r["dates"]:
            out[k] = ("null",) if v is None else ("date", _date_ms(v))
        elif k in r["int64"]:
            out[k] = ("null",) if v is None else ("int64", int(v))
        elif k in r["email"]:
            out[k] = ("str", v.strip().lower())
        else:
            out[k] = _json_canon(v)
    return out


def expected_from_tree(data_dir: str, artifacts_dir: str) -> dict[str, dict]:
    """{collection: {_id: canonical document}} for the files as they are now."""
    exp = {c: {} for c in COLLECTIONS}
    for rec in _load(os.path.join(data_dir, "users.json")):
        exp["users"][rec["id"]] = expected_doc("users", rec)
    for rec in _load(os.path.join(data_dir, "datasets", "metadata.json")):
        exp["datasets"][rec["id"]] = expected_doc("datasets", rec)
    jobs = os.path.join(artifacts_dir, "jobs")
    for e in os.scandir(jobs):
        if e.is_file() and e.name.endswith(".json"):
            rec = _load(e.path)
            exp["training_jobs"][rec["job_id"]] = expected_doc("training_jobs", rec)
    return exp


def _bson_canon(v):
    """Canonical form of a decoded BSON value (type-exact)."""
    if v is None:
        return ("null",)
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, Int64):
        return ("int64", int(v))
    if isinstance(v, int):
        return ("int32", v)
    if isinstance(v, float):
        return ("double", v)
    if isinstance(v, str):
        return ("str", v)
    if isinstance(v, DatetimeMS):
        return ("date", int(v))
    if isinstance(v, list):
        return ("array", tuple(_bson_canon(x) for x in v))
    if isinstance(v, dict):
        return ("doc", frozenset((k, _bson_canon(x)) for k, x in v.items()))
    return (type(v).__name__, repr(v))


def dump(db) -> dict[str, dict]:
    """{collection: {_id: canonical document}} as MongoDB holds them, `_mirror` dropped."""
    out = {}
    for c in COLLECTIONS:
        coll = db.get_collection(c, codec_options=CODEC)
        docs = {}
        for d in coll.find({}, {"_mirror": 0}).batch_size(10_000):
            d.pop("_mirror", None)
            key = d["_id"] if isinstance(d["_id"], str) else repr(d["_id"])
            docs[key] = {k: _bson_canon(v) for k, v in d.items()}
        # Sorted by _id here rather than by the server: same result, less work for a slow server.
        out[c] = dict(sorted(docs.items()))
    return out


def _show(canon) -> str:
    return repr(canon)[:160]


def compare(expected: dict[str, dict], actual: dict[str, dict], limit: int = 5) -> list[str]:
    """Differences, as readable lines (empty when equal). At most `limit` examples per collection."""
    problems = []
    for c in COLLECTIONS:
        exp, act = expected.get(c, {}), actual.get(c, {})
        missing = [k for k in exp if k not in act]
        extra = [k for k in act if k not in exp]
        differ = [k for k in exp if k in act and exp[k] != act[k]]
        if not (missing or extra or differ):
            continue
        problems.append(
            f"{c}: {len(exp)} expected, {len(act)} found; {len(missing)} missing, "
            f"{len(extra)} unexpected, {len(differ)} different"
        )
        for k in missing[:limit]:
            problems.append(f"  missing _id {k!r}")
        for k in extra[:limit]:
            problems.append(f"  unexpected _id {k!r}")
        for k in differ[:limit]:
            e, a = exp[k], act[k]
            fields = sorted(set(e) | set(a))
            for f in fields:
                if e.get(f) != a.get(f):
                    problems.append(
                        f"  _id {k!r} field {f!r}: expected {_show(e.get(f, '<absent>'))}, "
                        f"found {_show(a.get(f, '<absent>'))}"
                    )
    return problems
