"""Scenario 8 (issue 15): `docmirror export` and `docmirror reverse`.

On a fresh server holding the synced tree:
  a. `docmirror export` of everything, timed (records/s), side by side with a
     plain pymongo script writing the same layout (bench/contenders/export_pymongo.py);
     correctness: `docmirror verify` of the export against the database exits 0
     (the round trip);
  b. `docmirror reverse --before-cutover` (a rehearsal: the bench records no
     cutover): its first start (a full compare into an empty folder), then job
     updates in MongoDB at a fixed rate, each timed until its job file shows it
     (p50/p99); correctness: after SIGTERM (exit 0) the folder is byte for byte
     what a fresh `docmirror export` writes.

Called from run.py with run.py's module as `h` (its Server, run_timed, log...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time


def tree_bytes(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def scenario(cfg, tree, h) -> dict:
    res: dict = {"records": tree.records}
    work = os.path.join(h.RESULTS, "reverse-work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        with h.Server("s8") as srv:
            uri = srv.uri()
            sync = h.run_timed([h.DOCMIRROR, "--log-format", "json", "--quiet", "sync", "--data-dir", tree.data,
                                "--artifacts-dir", tree.artifacts, "--mongodb-uri", uri], "s8-sync", cfg.timeout, srv)
            if sync.rc not in (0, 3):
                res["error"] = f"sync exited {sync.rc}: {sync.stderr_tail[-300:]}"
                return res
            export_part(cfg, tree, h, srv, work, res)
            reverse_part(cfg, h, srv, work, res)
    except Exception as e:  # noqa: BLE001 - reported, and a failure in quick mode
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def export_part(cfg, tree, h, srv, work: str, res: dict) -> None:
    uri = srv.uri()
    out = os.path.join(work, "export")
    r = h.run_timed([h.DOCMIRROR, "--log-format", "json", "--quiet", "export", "--mongodb-uri", uri, "--out", out],
                    "s8-export", cfg.timeout, srv)
    res["export"] = {"rc": r.rc, "seconds": r.wall, "maxrss_kb": r.maxrss_kb, "stdout": r.stdout.strip()}
    h.log(f"s8: docmirror export {r.wall:.2f}s (exit {r.rc})")
    out2 = os.path.join(work, "export-pymongo")
    import sys
    p = h.run_timed([sys.executable, os.path.join(h.BENCH, "contenders", "export_pymongo.py"), uri, out2],
                    "s8-export-pymongo", cfg.timeout, srv)
    res["export_pymongo"] = {"rc": p.rc, "seconds": p.wall, "stdout": p.stdout.strip()}
    h.log(f"s8: pymongo export {p.wall:.2f}s (exit {p.rc})")
    # The round trip: the export read as the files, against the database it came from.
    v = subprocess.run([h.DOCMIRROR, "--log-format", "json", "--quiet", "verify", "--mongodb-uri", uri,
                        "--data-dir", os.path.join(out, "data"), "--artifacts-dir", os.path.join(out, "artifacts")],
                       capture_output=True, text=True, timeout=cfg.timeout)
    res["export_ok"] = r.rc == 0 and v.returncode == 0
    if v.returncode != 0:
        res["export_verify"] = v.stdout[-500:]
    shutil.rmtree(out2, ignore_errors=True)


def reverse_part(cfg, h, srv, work: str, res: dict) -> None:
    uri = srv.uri()
    out = os.path.join(work, "reverse")
    log_path = os.path.join(h.RESULTS, "logs", "s8-reverse.err")
    t0 = time.monotonic()
    proc = h.start([h.DOCMIRROR, "--log-format", "text", "reverse", "--mongodb-uri", uri, "--out", out,
                    "--before-cutover", "--data-dir", os.path.join(work, "none-data"),
                    "--artifacts-dir", os.path.join(work, "none-artifacts")],
                   os.path.join(h.RESULTS, "logs", "s8-reverse.out"), log_path)
    deadline = time.monotonic() + cfg.timeout
    while not h.log_has(log_path, "Following MongoDB's change stream"):
        if proc.poll() is not None or time.monotonic() > deadline:
            res["error"] = f"reverse did not start (exit {proc.poll()}); see {log_path}"
            h._kill(proc)
            return
        time.sleep(0.05)
    res["reverse_first_start_s"] = time.monotonic() - t0
    h.log(f"s8: reverse first start (full compare) {res['reverse_first_start_s']:.2f}s")
    lat, missing = updates(cfg, srv, out)
    res["reverse_updates"] = len(lat)
    res["reverse_missing"] = missing
    res["reverse_p50_ms"] = h.percentile(lat, 50)
    res["reverse_p99_ms"] = h.percentile(lat, 99)
    proc.send_signal(signal.SIGTERM)
    try:
        res["reverse_exit"] = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        res["reverse_exit"] = None
    h._kill(proc)
    fresh = os.path.join(work, "fresh-export")
    subprocess.run([h.DOCMIRROR, "--quiet", "export", "--mongodb-uri", uri, "--out", fresh], check=True,
                   capture_output=True, timeout=cfg.timeout)
    res["reverse_ok"] = missing == 0 and res["reverse_exit"] == 0 and tree_bytes(out) == tree_bytes(fresh)
    h.log(f"s8: reverse p50 {res['reverse_p50_ms']} ms, p99 {res['reverse_p99_ms']} ms; exact: {res['reverse_ok']}")


def updates(cfg, srv, out: str) -> tuple[list[float], int]:
    """Job updates at cfg.reverse_rate per second; each timed until its file shows it (ms)."""
    coll = srv.db.training_jobs
    jobs = []
    for d in coll.find({}, {"_mirror.source": 1}).limit(50):
        src = (d.get("_mirror") or {}).get("source", "")
        name = src.rsplit("/", 1)[-1] if src else f"{d['_id']}.json"
        jobs.append((d["_id"], os.path.join(out, "artifacts", "jobs", name)))
    pending: dict[str, tuple[int, float]] = {}  # file -> (newest seq sent, when the oldest unseen was sent)
    lat: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def watcher():
        while not done.is_set() or pending:
            with lock:
                items = list(pending.items())
            for path, (seq, sent) in items:
                try:
                    with open(path, "rb") as f:
                        seen = json.loads(f.read()).get("bench_seq", -1)
                except (OSError, ValueError):
                    continue
                if seen >= seq:
                    with lock:
                        if pending.get(path, (None,))[0] == seq:
                            del pending[path]
                            lat.append((time.monotonic() - sent) * 1000)
            if done.is_set() and time.monotonic() > stop_at:
                return
            time.sleep(0.002)

    stop_at = float("inf")
    t = threading.Thread(target=watcher, daemon=True)
    t.start()
    start = time.monotonic()
    for i in range(cfg.reverse_updates):
        _id, path = jobs[i % len(jobs)]
        due = start + i / cfg.reverse_rate
        time.sleep(max(0.0, due - time.monotonic()))
        sent = time.monotonic()
        coll.update_one({"_id": _id}, {"$set": {"bench_seq": i}})
        with lock:
            # A job whose previous update is not in its file yet: timed from that older update.
            cur = pending.get(path)
            pending[path] = (i, cur[1] if cur else sent)
    stop_at = time.monotonic() + 60
    done.set()
    t.join()
    return lat, len(pending)


def render(res: dict, cfg) -> str:
    if not res:
        return ""
    lines = ["", "## Scenario 8: export and reverse (issue 15)", ""]
    if "error" in res:
        lines.append(f"Failed: {res['error']}")
        return "\n".join(lines) + "\n"
    e, p = res.get("export", {}), res.get("export_pymongo", {})
    n = res["records"]
    rate = n / e["seconds"] if e.get("seconds") else None
    ratio = (p["seconds"] / e["seconds"]) if e.get("seconds") and p.get("seconds") else None
    lines += [
        "| measurement | docmirror | pymongo script (same layout) | check |",
        "|---|---|---|---|",
        f"| export, {n:,} records | {e.get('seconds', 0):.2f} s ({rate:,.0f} rec/s), peak RSS "
        f"{e.get('maxrss_kb', 0) / 1024:.0f} MiB | {p.get('seconds', 0):.2f} s"
        f"{f' (docmirror {ratio:.2f}x faster)' if ratio and ratio >= 1 else f' (docmirror {1 / ratio:.2f}x slower)' if ratio else ''}"
        f" | round trip (`verify` of the export) {'OK' if res.get('export_ok') else 'FAILED'} |",
        f"| reverse, first start (full compare into an empty folder) | {res.get('reverse_first_start_s', 0):.2f} s | | |",
        f"| reverse, MongoDB update to job file, {cfg.reverse_updates} updates at {cfg.reverse_rate:.0f}/s "
        f"to 50 jobs ({res.get('reverse_updates', 0)} timed) | p50 {fmt(res.get('reverse_p50_ms'))}, p99 {fmt(res.get('reverse_p99_ms'))} "
        f"(`--debounce-ms` 200) | | files after SIGTERM equal a fresh export: "
        f"{'OK' if res.get('reverse_ok') else 'FAILED'} |",
        "",
        "`mongoexport` writes one document per line, not the platform's layout, and is not installed here; "
        "the contender is a pymongo script that writes the same files (renamed into place, but "
        "without fsync and without comparing with what is there). reverse runs with `--before-cutover` (the bench records no cutover). Changes are "
        "collected and written at most every 200 ms (`--debounce-ms`): a change waits for the end of the period "
        "the first change opened, so up to 200 ms, less for changes later in it. An update made while the job's "
        "previous one is not in its file yet is timed from that earlier update, as one sample.",
    ]
    return "\n".join(lines) + "\n"


def fmt(ms) -> str:
    return "n/a" if ms is None else f"{ms:.0f} ms"


def failures(res: dict) -> list[str]:
    if not res:
        return []
    if "error" in res:
        return [f"export/reverse: {res['error']}"]
    out = []
    if not res.get("export_ok"):
        out.append("export: the round trip (verify of the export) failed")
    if not res.get("reverse_ok"):
        out.append(f"reverse: files not exact after SIGTERM (missing {res.get('reverse_missing')}, "
                   f"exit {res.get('reverse_exit')})")
    return out
