#!/usr/bin/env python3
"""docmirror benchmark harness (issue 6). Run it through scripts/bench.sh.

    run.py [--quick] [--users N] [--datasets N] [--jobs N] [--runs R] [--seed S]
           [--changes N] [--rewrites N] [--debounce-ms N] [--report PATH]

Scenarios (each measurement on a fresh in-memory SecantusDB server):
  1. initial sync into an empty database, every contender side by side;
  2. re-sync with nothing changed (each contender again, same server);
  3. `docmirror watch`: one user changed in users.json, time until visible;
  4. `docmirror watch` under load: job files rewritten at 200/s;
  5. peak RSS of `docmirror watch`, CPU seconds per 100k records of `sync`;
  6. and 7. `docmirror watch` restarted after kill -9, and drift reports;
  8. `docmirror export` (records/s, against a pymongo script) and `docmirror
     reverse` (update-to-file latency p50/p99): bench/reverse_bench.py.
After every contender run the three collections are dumped and compared
type-exactly with what the files say (bench/check.py); a contender whose
output differs is WRONG and its time does not count.

--quick: small tree, 1 run, bounded; exits 1 when a check fails or a
contender did not run. The full run writes BENCHMARKS.md at the repo root.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import check  # noqa: E402
import gen  # noqa: E402
import reverse_bench  # noqa: E402
from pymongo import MongoClient  # noqa: E402

DOCMIRROR = os.environ.get("DOCMIRROR_BIN", os.path.join(ROOT, "target", "release", "docmirror"))
SECANTUSD = os.environ.get("BENCH_SECANTUSD", os.path.join(ROOT, ".venv", "bin", "secantusd-py"))
DATA_ROOT = os.path.join(BENCH, "data")
RESULTS = os.path.join(BENCH, "results")
SERVER_NAME = "SecantusDB 0.7.0b3 (Python MongoDB wire-protocol server), --storage-path :memory:"
# Extra server flags (--scale: a WiredTiger cache that holds 1.3M documents; the default 1G does not).
SERVER_EXTRA: list[str] = []

BUILD_INFO: dict[str, str] = {}
EXTRA_ARGS: list[str] = []  # --docmirror-args

# Every process this harness starts, so that all of them die with it.
_children: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _kill(p: subprocess.Popen, grace: float = 10.0) -> None:
    if p.poll() is not None:
        return
    try:
        p.terminate()
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
    except ProcessLookupError:
        pass


def _cleanup() -> None:
    for p in reversed(_children):
        try:
            _kill(p, grace=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _on_signal(signum, _frame):
    _cleanup()
    sys.exit(128 + signum)


def start(cmd: list[str], out_path: str, err_path: str | None = None, **kw) -> subprocess.Popen:
    out = open(out_path, "w")
    err = open(err_path, "w") if err_path else subprocess.STDOUT
    try:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, **kw)
    finally:
        out.close()
        if err_path:
            err.close()
    _children.append(p)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (its own threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- server


class Server:
    """A fresh SecantusDB on a free 127.0.0.1 port, in memory; killed on exit."""

    def __init__(self, label: str):
        self.label = label
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.client: MongoClient | None = None

    def uri(self, db: str = "bench") -> str:
        return f"mongodb://127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> "Server":
        logf = os.path.join(RESULTS, "logs", f"server-{self.label}.log")
        self.proc = start([SECANTUSD, "--port", str(self.port), "--storage-path", ":memory:", *SERVER_EXTRA], logf)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SecantusDB exited with {self.proc.returncode}; see {logf}")
            try:
                with MongoClient(self.uri(), serverSelectionTimeoutMS=500, connectTimeoutMS=500) as c:
                    c.admin.command("ping")
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SecantusDB did not accept connections within 60 s; see {logf}")
                time.sleep(0.1)
        # The harness's own client: generous timeouts, because this server answers
        # nothing else while it works through a slow query (a 500 ms heartbeat
        # timeout would mark it down and cancel the dump in flight).
        self.client = MongoClient(self.uri(), serverSelectionTimeoutMS=120_000, connectTimeoutMS=120_000,
                                  heartbeatFrequencyMS=30_000)
        return self

    @property
    def db(self):
        return self.client.get_default_database()

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def __exit__(self, *exc) -> None:
        if self.client:
            self.client.close()
        if self.proc:
            _kill(self.proc)
            _children.remove(self.proc)


# --------------------------------------------------------------------------- trees


@dataclass
class Tree:
    root: str
    users: int
    datasets: int
    jobs: int
    _expected: dict | None = None

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def artifacts(self) -> str:
        return os.path.join(self.root, "artifacts")

    @property
    def records(self) -> int:
        return self.users + self.datasets + self.jobs

    def expected(self) -> dict:
        if self._expected is None:
            self._expected = check.expected_from_tree(self.data, self.artifacts)
        return self._expected


def make_tree(users: int, datasets: int, jobs: int, seed: int) -> Tree:
    root = os.path.join(DATA_ROOT, f"tree-u{users}-d{datasets}-j{jobs}-s{seed}")
    t0 = time.monotonic()
    if gen.ensure(root, users, datasets, jobs, seed):
        log(f"generated {root} in {time.monotonic() - t0:.1f}s")
    return Tree(root, users, datasets, jobs)


# --------------------------------------------------------------------------- contenders


@dataclass
class RunResult:
    rc: int
    wall: float
    cpu: float  # user + system seconds of the contender process (and its reaped children)
    maxrss_kb: int
    server_cpu: float
    stdout: str
    stderr_tail: str
    timed_out: bool = False


LOADAVG: list[float] = []  # 1-minute load average before each timed run (other work on the machine)


def run_timed(cmd: list[str], label: str, timeout: float, server: Server) -> RunResult:
    LOADAVG.append(os.getloadavg()[0])
    out = os.path.join(RESULTS, "logs", f"{label}.out")
    err = os.path.join(RESULTS, "logs", f"{label}.err")
    # A forked child's ru_maxrss starts from the parent's peak (Linux keeps the
    # high-water mark across exec), and this harness is large: GNU time, which
    # is small, reports its own child's peak instead.
    rss_file = os.path.join(RESULTS, "logs", f"{label}.maxrss")
    gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    if gnu_time:
        cmd = [gnu_time, "-f", "%M", "-o", rss_file] + cmd
    s0 = server.cpu()
    t0 = time.perf_counter()
    p = start(cmd, out, err)
    timed_out = threading.Event()

    def on_timeout():
        timed_out.set()
        p.kill()

    timer = threading.Timer(timeout, on_timeout)
    timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    _children.remove(p)
    with open(out) as f:
        stdout = f.read()
    with open(err) as f:
        stderr_tail = f.read()[-2000:]
    maxrss_kb = 0
    if gnu_time:
        try:
            with open(rss_file) as f:
                maxrss_kb = int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            maxrss_kb = 0
    return RunResult(p.returncode, wall, ru.ru_utime + ru.ru_stime, maxrss_kb, server.cpu() - s0,
                     stdout, stderr_tail, timed_out.is_set())


def contender_cmd(name: str, tree: Tree, uri: str) -> list[str]:
    if name == "docmirror":
        return [DOCMIRROR, "--log-format", "json", "sync", "--data-dir", tree.data,
                "--artifacts-dir", tree.artifacts, "--mongodb-uri", uri, *EXTRA_ARGS]
    if name == "batched":
        return [sys.executable, os.path.join(BENCH, "contenders", "batched.py"), tree.data, tree.artifacts, uri]
    if name == "seed-style":
        return ["node", os.path.join(BENCH, "contenders", "seed.js"), tree.data, tree.artifacts, uri]
    if name == "mongoimport":
        return [sys.executable, os.path.join(BENCH, "contenders", "mongoimport.py"), tree.data, tree.artifacts, uri]
    raise ValueError(name)


SUMMARY_RE = re.compile(r"inserted (\d+), updated (\d+)")


@dataclass
class Attempt:
    run: int
    wall: float | None  # None when the run failed or was wrong
    ok: bool
    detail: str = ""
    cpu: float = 0.0
    maxrss_kb: int = 0
    server_cpu: float = 0.0
    summary: str = ""


@dataclass
class Series:
    contender: str
    records: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [a.wall for a in self.attempts if a.ok and a.wall is not None]

    @property
    def correct(self) -> bool:
        return bool(self.attempts) and all(a.ok for a in self.attempts)

    @property
    def status(self) -> str:
        if not self.attempts:
            return "not run"
        if self.correct:
            return "OK"
        return "FAILED" if any(a.detail.startswith(("exit", "timed out", "initial sync failed")) for a in self.attempts) else "WRONG"

    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def rate(self) -> float | None:
        m = self.median()
        return self.records / m if m else None


def verify_db(server: Server, tree: Tree) -> list[str]:
    return check.compare(tree.expected(), check.dump(server.db))


def judge(name: str, res: RunResult, server: Server, tree: Tree, resync: bool, run: int) -> Attempt:
    a = Attempt(run, res.wall, True, cpu=res.cpu, maxrss_kb=res.maxrss_kb, server_cpu=res.server_cpu,
                summary=res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "")
    if res.timed_out:
        a.ok, a.wall, a.detail = False, None, "timed out"
        return a
    if res.rc != 0:
        a.ok, a.wall = False, None
        a.detail = f"exit {res.rc}: {res.stderr_tail.strip()[-400:]}"
        return a
    try:
        problems = verify_db(server, tree)
    except Exception as e:  # noqa: BLE001 - a failed check is a result, not a crash
        problems = [f"could not read the collections back: {type(e).__name__}: {e}"]
    if problems:
        a.ok, a.wall = False, None
        a.detail = "output differs from the files: " + "; ".join(problems[:6])
        return a
    if name == "docmirror" and resync:
        m = SUMMARY_RE.search(res.stdout)
        if not m or m.groups() != ("0", "0"):
            a.ok, a.wall = False, None
            a.detail = f"re-sync wrote: {a.summary!r} (expected inserted 0, updated 0)"
    return a


# --------------------------------------------------------------------------- scenarios 1 and 2


def server_floor(srv: "Server", proj: dict) -> float:
    """Seconds the server takes just to list every document of the three
    collections with projection `proj` (pymongo, batches of 10,000): the least
    any re-sync that checks what MongoDB holds must wait for."""
    t = time.perf_counter()
    for coll in ("users", "datasets", "training_jobs"):
        for _ in srv.db[coll].find({}, proj, batch_size=10_000):
            pass
    return time.perf_counter() - t


def documents_read(stderr_tail: str) -> dict[str, int]:
    """docmirror's last log line: documents read from MongoDB, by collection."""
    for line in reversed(stderr_tail.splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("message") == "Documents read from MongoDB":
            pairs = (kv.split("=", 1) for kv in str(rec.get("documents_read", "")).split())
            return {k: int(v) for k, v in pairs if v.isdigit()}
    return {}


def scenario_sync(cfg, full: Tree, tenth: Tree, contenders: list[str]) -> dict[str, dict[str, Series]]:
    res = {"initial": {}, "resync": {}, "resync-full": {}, "floor_ids": [], "floor_hashes": [], "reads": {}}
    for name in contenders:
        tree = tenth if name == "seed-style" else full
        res["initial"][name] = Series(name, tree.records)
        res["resync"][name] = Series(name, tree.records)
    res["resync-full"]["docmirror"] = Series("docmirror", full.records)
    for r in range(cfg.runs):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for name in order:
            tree = tenth if name == "seed-style" else full
            with Server(f"sync-{name}-{r + 1}") as srv:
                cmd = contender_cmd(name, tree, srv.uri())
                phases = [("initial", False), ("resync", True)]
                if name == "docmirror":
                    # The same re-sync with the checkpoint ignored: what a server
                    # without change streams gets (and what every re-sync was before).
                    phases.append(("resync-full", True))
                for phase, resync in phases:
                    label = f"{phase}-{name}-{r + 1}"
                    out = run_timed(cmd + (["--full"] if phase == "resync-full" else []), label, cfg.timeout, srv)
                    if name == "docmirror" and phase != "initial":
                        res["reads"].setdefault(phase, []).append(documents_read(out.stderr_tail))
                    a = judge(name, out, srv, tree, resync, r + 1)
                    res[phase][name].attempts.append(a)
                    log(f"run {r + 1}/{cfg.runs} {phase:7s} {name:11s} {tree.records:>7} records "
                        f"{out.wall:8.2f}s rc={out.rc} cpu={out.cpu:.2f}s server-cpu={out.server_cpu:.2f}s "
                        f"{'OK' if a.ok else 'NOT OK: ' + a.detail[:300]}")
                    if a.ok and phase == "resync-full" and name == "docmirror":
                        res["floor_ids"].append(server_floor(srv, {"_id": 1}))
                        res["floor_hashes"].append(server_floor(srv, {"_mirror.hash": 1}))
                        log(f"run {r + 1}/{cfg.runs} server floor: ids {res['floor_ids'][-1]:.2f}s, "
                            f"ids + hashes {res['floor_hashes'][-1]:.2f}s")
                    if not a.ok and phase == "initial":
                        res["resync"][name].attempts.append(
                            Attempt(r + 1, None, False, "initial sync failed; re-sync not measured"))
                        break
    return res


# --------------------------------------------------------------------------- watch (3, 4, 5)


def watch_available() -> tuple[bool, str]:
    try:
        p = subprocess.run([DOCMIRROR, "watch", "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"`docmirror watch --help` failed: {e}"
    if p.returncode != 0 or "Usage" not in p.stdout:
        return False, f"`docmirror watch --help` exited {p.returncode}"
    return True, ""


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(1, -(-len(s) * q // 100))  # ceil
    return s[int(k) - 1]


def iso_now() -> str:
    return gen.iso(datetime.now(timezone.utc))


class ChangeFeed:
    """A change stream on one collection, read by a thread: when each change
    reached this process. Pushed by the server, so measuring does not load
    the (single-threaded) server the way polling would."""

    def __init__(self, coll, field: str):
        self.coll, self.field = coll, field
        self.cond = threading.Condition()
        self.events: list[tuple[float, str, object]] = []  # (arrival, _id, value of field or None)
        self.stop = threading.Event()
        self.error: str | None = None
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.opened.wait(30):
            raise RuntimeError("change stream did not open within 30 s")
        if self.error:
            raise RuntimeError(f"change stream failed: {self.error}")

    def _run(self) -> None:
        try:
            with self.coll.watch(max_await_time_ms=20) as cs:
                self.opened.set()
                while not self.stop.is_set():
                    ch = cs.try_next()
                    if ch is None:
                        continue
                    now = time.perf_counter()
                    key = ch.get("documentKey", {}).get("_id")
                    val = None
                    if ch.get("operationType") == "update":
                        val = ch.get("updateDescription", {}).get("updatedFields", {}).get(self.field)
                    elif ch.get("fullDocument"):
                        val = ch["fullDocument"].get(self.field)
                    if val is None and key is not None:
                        # The field did not change in this event (or is not in it): read it.
                        d = self.coll.find_one({"_id": key}, {self.field: 1})
                        val = d.get(self.field) if d else None
                    with self.cond:
                        self.events.append((now, key, val))
                        self.cond.notify_all()
        except Exception as e:  # noqa: BLE001 - reported to the scenario
            self.error = f"{type(e).__name__}: {e}"
            self.opened.set()
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, key, value, deadline: float, start_index: int = 0) -> tuple[float | None, int]:
        """Arrival time of the first event (from start_index) with this _id and value."""
        i = start_index
        with self.cond:
            while True:
                while i < len(self.events):
                    t, k, v = self.events[i]
                    i += 1
                    if k == key and v == value:
                        return t, i
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self.error:
                    return None, i
                self.cond.wait(min(remaining, 0.5))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def calibrate_feed(server: Server, n: int = 20) -> float | None:
    """Median delay from a write's acknowledgement to its change event: the
    measurement's own overhead, reported next to the latencies."""
    coll = server.db["bench_calibration"]
    coll.insert_one({"_id": "c", "v": 0})
    feed = ChangeFeed(coll, "v")
    delays = []
    try:
        for i in range(1, n + 1):
            coll.update_one({"_id": "c"}, {"$set": {"v": i}})
            acked = time.perf_counter()
            t, _ = feed.wait_for("c", i, acked + 5)
            if t is not None:
                delays.append(max(0.0, t - acked))
            time.sleep(0.01)
    finally:
        feed.close()
        coll.drop()
    return statistics.median(delays) if delays else None


READY_LINE = "Initial reconcile done"


def wait_ready(db, want: dict[str, int], proc: subprocess.Popen, errlog: str, deadline: float) -> bool:
    """Until the watcher logs that its first full reconcile is done. Should a
    build not log that line, the document counts are the fallback, checked only
    every 10 s: counting is a full scan on SecantusDB and would slow the sync
    being waited for (polled every 250 ms it made the initial sync 3x slower)."""
    next_count = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if log_has(errlog, READY_LINE):
            return True
        if want and time.monotonic() >= next_count:
            next_count = time.monotonic() + 10
            try:
                if all(db[c].estimated_document_count() >= n for c, n in want.items()):
                    return True
            except Exception:  # noqa: BLE001 - transient
                pass
        time.sleep(0.05)
    return False


def log_has(path: str, text: str) -> bool:
    try:
        with open(path) as f:
            return text in f.read()
    except OSError:
        return False


def settle_and_compare(server: Server, data: str, artifacts: str, tries: int = 6) -> list[str]:
    """Compare MongoDB with the files; retry a few times while the watcher catches up."""
    problems: list[str] = []
    for _ in range(tries):
        try:
            problems = check.compare(check.expected_from_tree(data, artifacts), check.dump(server.db))
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            problems = [f"could not read the collections back: {type(e).__name__}: {e}"]
        if not problems:
            return []
        time.sleep(2)
    return problems


def scenario_user_changes(cfg, server: Server, data: str, artifacts: str) -> dict:
    """Scenario 3: rewrite users.json (temp + rename) with one user's name and updatedAt changed."""
    path = os.path.join(data, "users.json")
    with open(path, encoding="utf-8") as f:
        users = json.load(f)
    feed = ChangeFeed(server.db["users"], "name")
    lat: list[float] = []
    timeouts, consecutive, done, aborted = 0, 0, 0, ""
    step = max(1, len(users) // cfg.changes)
    budget_end = time.monotonic() + cfg.s3_budget
    try:
        for k in range(cfg.changes):
            if time.monotonic() > budget_end:
                aborted = f"time budget of {cfg.s3_budget / 60:.0f} min spent after {done} changes"
                break
            i = (k * step + 7) % len(users)
            uid, new_name = users[i]["id"], f"Renamed {k} {users[i]['name']}"
            users[i]["name"] = new_name
            users[i]["updatedAt"] = iso_now()
            tmp = path + ".bench-tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(users, f, indent=2)
            mark = len(feed.events)
            t0 = time.perf_counter()
            os.replace(tmp, path)
            seen, _ = feed.wait_for(uid, new_name, t0 + cfg.change_timeout, mark)
            done += 1
            if seen is None:
                timeouts += 1
                consecutive += 1
                log(f"  change {k + 1}: not visible after {cfg.change_timeout:.0f}s")
                if consecutive >= 2:
                    aborted = f"stopped after {consecutive} consecutive changes not visible within {cfg.change_timeout:.0f} s"
                    break
            else:
                consecutive = 0
                lat.append(seen - t0)
            time.sleep(0.05)
    finally:
        feed.close()
    if aborted:
        log(f"  scenario 3 {aborted}")
        problems = ["final state not checked: the scenario was stopped while docmirror was still applying changes"]
    else:
        problems = settle_and_compare(server, data, artifacts)
    return {"changes": done, "planned": cfg.changes, "users": len(users), "latencies": lat,
            "timeouts": timeouts, "aborted": aborted, "final_ok": not problems, "problems": problems[:6],
            "feed_error": feed.error}


def scenario_job_load(cfg, server: Server, data: str, artifacts: str) -> dict:
    """Scenario 4: a writer rewrites job files at cfg.rate per second; latency per change."""
    jobs_dir = os.path.join(artifacts, "jobs")
    names = sorted(e.name for e in os.scandir(jobs_dir) if e.name.endswith(".json"))
    loaded = []
    for n in names:
        with open(os.path.join(jobs_dir, n), encoding="utf-8") as f:
            loaded.append(json.load(f))
    running = [j for j in loaded if j["status"] == "running"]
    others = [j for j in loaded if j["status"] != "running"]
    pool = (running + others)[: max(1, min(cfg.load_jobs, len(loaded)))]
    total = cfg.rewrites
    pending: dict[str, deque] = {j["job_id"]: deque() for j in pool}
    lat: list[float] = []
    writer_stats: dict = {}
    feed = ChangeFeed(server.db["training_jobs"], "step")

    def writer():
        t_start = time.perf_counter()
        for n in range(total):
            due = t_start + n / cfg.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            job = pool[n % len(pool)]
            job["step"] += 1
            job["updated_at"] = iso_now()
            p = os.path.join(jobs_dir, job["job_id"] + ".json")
            tmp = p + ".bench-tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(job, f, indent=2)
            with feed.cond:
                pending[job["job_id"]].append((job["step"], time.perf_counter()))
            os.replace(tmp, p)
        writer_stats["seconds"] = time.perf_counter() - t_start

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    seen_upto = 0
    deadline = None
    left = total
    try:
        while True:
            with feed.cond:
                feed.cond.wait(0.05)
                for t, key, val in feed.events[seen_upto:]:
                    dq = pending.get(key)
                    # A change counts as applied when its step or a later one is visible.
                    while dq and isinstance(val, int) and dq[0][0] <= val:
                        lat.append(t - dq[0][1])
                        dq.popleft()
                seen_upto = len(feed.events)
                left = sum(len(d) for d in pending.values())
            if not th.is_alive():
                if deadline is None:
                    deadline = time.monotonic() + cfg.change_timeout
                if left == 0 or time.monotonic() > deadline or feed.error:
                    break
    finally:
        feed.close()
        th.join(timeout=30)
    problems = settle_and_compare(server, data, artifacts)
    return {"rewrites": total, "jobs": len(pool), "rate": cfg.rate,
            "achieved_rate": total / writer_stats.get("seconds", float("inf")),
            "latencies": lat, "unseen": left, "final_ok": not problems, "problems": problems[:6],
            "feed_error": feed.error}


def watch_session(cfg, tree: Tree, label: str, body) -> dict:
    """Copy `tree`, start a fresh server and `docmirror watch` on the copy, wait
    for the initial sync, run `body(cfg, server, data, artifacts)`, stop with SIGTERM."""
    scratch = os.path.join(DATA_ROOT, f"watch-{label}")
    if os.path.exists(scratch):
        shutil.rmtree(scratch)
    shutil.copytree(tree.root, scratch)
    data, artifacts = os.path.join(scratch, "data"), os.path.join(scratch, "artifacts")
    out: dict = {"records": tree.records, "users": tree.users}
    with Server(f"watch-{label}") as srv:
        out["feed_overhead_s"] = calibrate_feed(srv)
        cmd = [DOCMIRROR, "--log-format", "json", "watch", "--data-dir", data, "--artifacts-dir", artifacts,
               "--mongodb-uri", srv.uri()]
        if cfg.debounce_ms is not None:
            cmd += ["--debounce-ms", str(cfg.debounce_ms)]
        cmd += EXTRA_ARGS
        errlog = os.path.join(RESULTS, "logs", f"watch-{label}.err")
        t0 = time.perf_counter()
        proc = start(cmd, os.path.join(RESULTS, "logs", f"watch-{label}.out"), errlog)
        try:
            # Only the ready line counts here (it follows the checkpoint's save): no count fallback.
            want: dict[str, int] = {}
            if not wait_ready(srv.db, want, proc, errlog, time.monotonic() + cfg.timeout):
                out["error"] = f"watch did not finish its initial sync (exit {proc.poll()}); see {errlog}"
                log(out["error"])
                return out
            out["initial_sync_s"] = time.perf_counter() - t0
            time.sleep(1)
            out["rss_after_initial_kb"] = proc_status_kb(proc.pid, "VmHWM")
            problems = settle_and_compare(srv, data, artifacts, tries=3)
            out["initial_ok"] = not problems
            out["initial_problems"] = problems[:6]
            log(f"watch [{label}] initial sync of {tree.records} records {out['initial_sync_s']:.1f}s, "
                f"VmHWM {out['rss_after_initial_kb']} kB, state {'OK' if not problems else 'WRONG'}")
            out["result"] = body(cfg, srv, data, artifacts)
            out["rss_peak_kb"] = proc_status_kb(proc.pid, "VmHWM")
            out["cpu_s"] = proc_cpu_seconds(proc.pid)
        finally:
            t_stop = time.perf_counter()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            out["exit_code"] = proc.returncode
            out["stop_s"] = time.perf_counter() - t_stop
            _children.remove(proc)
    shutil.rmtree(scratch, ignore_errors=True)
    return out


DRIFT_GRACE_S = 2  # scenario 7's --drift-grace-secs (short, so the scenario is short)


def log_time(path: str, message: str) -> float | None:
    """The time (epoch seconds) of the first JSON log line with this message."""
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("message") == message:
                    ts = rec.get("timestamp", "").replace("Z", "+00:00")
                    return datetime.fromisoformat(ts).timestamp()
    except OSError:
        return None
    return None


def write_json_by_rename(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def wait_server_idle(srv: Server, limit: float = 60.0) -> float:
    """Until the server used under a tenth of a core over the last second (or
    `limit` seconds passed): a killed watcher's last request (a count reads
    every document on the test server) must not run beside the next round.
    Returns how long it waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c = srv.cpu()
        time.sleep(1.0)
        if srv.cpu() - c < 0.1:
            break
    return time.monotonic() - t0


def restart_round(cfg, srv: Server, data: str, artifacts: str, cmd: list[str], label: str, tag: str) -> dict:
    """Kill -9 the watcher, change 10 job files and one user, start it again:
    how long after it connects are all 11 in MongoDB?"""
    jobs_dir = os.path.join(artifacts, "jobs")
    names = sorted(n for n in os.listdir(jobs_dir) if n.endswith(".json"))[:10]
    ids = []
    for n in names:
        path = os.path.join(jobs_dir, n)
        with open(path) as f:
            job = json.load(f)
        job["status"], job["updated_at"] = tag, iso_now()
        ids.append(job["job_id"])
        write_json_by_rename(path, job)
    users_path = os.path.join(data, "users.json")
    with open(users_path) as f:
        users = json.load(f)
    users[0]["name"], users[0]["updatedAt"] = tag, iso_now()
    uid = users[0]["id"]
    write_json_by_rename(users_path, users)
    del users
    errlog = os.path.join(RESULTS, "logs", f"restart-{label}.err")
    # The 11 arrivals come from change feeds opened before the start (pushed
    # by the server). Polling `_id: {$in: ...}` instead made the Python test
    # server scan 200,000 job documents every 20 ms at scale: a core of a
    # two-core machine taken from the run being measured.
    feeds = [ChangeFeed(srv.db["training_jobs"], "status"), ChangeFeed(srv.db["users"], "name")]
    t_all = None
    try:
        t_spawn = time.time()
        offset = t_spawn - time.perf_counter()
        proc = start(cmd, os.path.join(RESULTS, "logs", f"restart-{label}.out"), errlog)
        deadline = time.perf_counter() + cfg.change_timeout * 4
        wanted = [(feeds[0], i) for i in ids] + [(feeds[1], uid)]
        arrivals: list[float] = []
        while wanted and time.perf_counter() < deadline and proc.poll() is None:
            feed, key = wanted[0]
            t, _ = feed.wait_for(key, tag, min(deadline, time.perf_counter() + 1))
            if t is not None:
                arrivals.append(t)
                wanted.pop(0)
        if not wanted:
            t_all = max(arrivals) + offset
    finally:
        for feed in feeds:
            feed.close()
    t_conn = log_time(errlog, "Connected to MongoDB")
    warm = log_has(errlog, "Started from the checkpoint")
    r = {"caught_up_s": (t_all - t_conn) if (t_all and t_conn) else None,
         "since_spawn_s": (t_all - t_spawn) if t_all else None, "warm": warm, "errlog": errlog}
    return r | {"proc": proc}


def scenario_restart_drift(cfg, srv: Server, data: str, artifacts: str, cmd: list[str], first: subprocess.Popen,
                           want: dict[str, int]) -> dict:
    """Scenarios 6 and 7 on one running watcher (started by the caller)."""
    out: dict = {"restart": [], "restart_full": [], "drift": [], "equal_reported": None}
    proc = first
    for r in range(cfg.runs + 1):
        full = r == cfg.runs  # the last round ignores the checkpoint: what no change streams costs
        proc.kill()
        proc.wait(timeout=30)
        _children.remove(proc)
        wait_server_idle(srv)
        rnd = restart_round(cfg, srv, data, artifacts, cmd + (["--full"] if full else []), f"{r + 1}", f"restart-{r + 1}")
        proc = rnd.pop("proc")
        (out["restart_full"] if full else out["restart"]).append(rnd)
        ready = wait_ready(srv.db, want, proc, rnd["errlog"], time.monotonic() + cfg.timeout)
        # The start's own line can come a moment after the changes are in: read it once ready.
        rnd["warm"] = log_has(rnd["errlog"], "Started from the checkpoint")
        log(f"scenario 6 round {r + 1}{' (--full)' if full else ''}: all 11 changes in MongoDB "
            f"{fmt_s(rnd['caught_up_s'])} after connecting (warm start: {rnd['warm']})")
        if not ready:
            out["error"] = f"watch did not get ready after restart {r + 1}"
            break
    # Scenario 7: the app writes MongoDB; how long until the drift is listed?
    jobs = srv.db["training_jobs"]
    ids = [d["_id"] for d in jobs.find({}, {"_id": 1}).sort("_id", 1).limit(cfg.runs + 1)]
    for k, jid in enumerate(ids[:-1]):
        before = jobs.find_one({"_id": jid})["status"]
        t0 = time.time()
        jobs.update_one({"_id": jid}, {"$set": {"status": f"drift-{k}"}})
        t_found = None
        while time.time() - t0 < DRIFT_GRACE_S + 30:
            if srv.db["mirror_drift"].count_documents({"id": jid}) == 1:
                t_found = time.time()
                break
            time.sleep(0.05)
        out["drift"].append(None if t_found is None else t_found - t0)
        # The operator's fix: the file's value back in MongoDB (the final check compares).
        jobs.update_one({"_id": jid}, {"$set": {"status": before}})
        log(f"scenario 7 write {k + 1}: drift listed {fmt_s(out['drift'][-1])} after the write (grace {DRIFT_GRACE_S} s)")
    # An equal write: the app writes what the file says; never drift.
    eq = ids[-1]
    doc = jobs.find_one({"_id": eq})
    jobs.update_one({"_id": eq}, {"$set": {"status": doc["status"]}})
    time.sleep(DRIFT_GRACE_S + 3)
    out["equal_reported"] = srv.db["mirror_drift"].count_documents({"id": eq}) > 0
    out["proc"] = proc
    return out


def restart_session(cfg, tree: Tree) -> dict:
    scratch = os.path.join(DATA_ROOT, "watch-restart")
    if os.path.exists(scratch):
        shutil.rmtree(scratch)
    shutil.copytree(tree.root, scratch)
    data, artifacts = os.path.join(scratch, "data"), os.path.join(scratch, "artifacts")
    res: dict = {"records": tree.records}
    with Server("watch-restart") as srv:
        cmd = [DOCMIRROR, "--log-format", "json", "watch", "--data-dir", data, "--artifacts-dir", artifacts,
               "--mongodb-uri", srv.uri(), "--drift-grace-secs", str(DRIFT_GRACE_S), *EXTRA_ARGS]
        errlog = os.path.join(RESULTS, "logs", "restart-0.err")
        proc = start(cmd, os.path.join(RESULTS, "logs", "restart-0.out"), errlog)
        try:
            # Only the ready line counts here (it follows the checkpoint's save): no count fallback.
            want: dict[str, int] = {}
            if not wait_ready(srv.db, want, proc, errlog, time.monotonic() + cfg.timeout):
                res["error"] = f"watch did not finish its initial sync; see {errlog}"
                return res
            time.sleep(1)
            res.update(scenario_restart_drift(cfg, srv, data, artifacts, cmd, proc, want))
            proc = res.pop("proc")
            res["final_problems"] = settle_and_compare(srv, data, artifacts, tries=3)[:6]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if proc in _children:
                _children.remove(proc)
    shutil.rmtree(scratch, ignore_errors=True)
    return res


def guarded_session(cfg, tree: Tree, label: str, body) -> dict:
    try:
        return watch_session(cfg, tree, label, body)
    except Exception as e:  # noqa: BLE001 - one scenario failing must not lose the others
        log(f"watch [{label}] failed: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}", "records": tree.records, "users": tree.users}


def scenario_watch(cfg, full: Tree, small: Tree | None) -> dict:
    ok, why = watch_available()
    if not ok:
        log(f"watch scenarios not run: {why}")
        return {"available": False, "why": why}
    out: dict = {"available": True}
    log(f"scenario 3: {cfg.changes} single-user changes in a {full.users}-user users.json")
    out["s3"] = guarded_session(cfg, full, "s3", scenario_user_changes)
    report_s3(out["s3"])
    if small is not None:
        small_cfg = argparse.Namespace(**{**vars(cfg), "changes": min(cfg.changes, 20)})
        log(f"scenario 3 (scale): {small_cfg.changes} changes in a {small.users}-user users.json")
        out["s3small"] = guarded_session(small_cfg, small, "s3small", scenario_user_changes)
        report_s3(out["s3small"])
    log(f"scenario 4: {cfg.rewrites} job rewrites at {cfg.rate:.0f}/s")
    out["s4"] = guarded_session(cfg, full, "s4", scenario_job_load)
    log("scenarios 6 and 7: watch restarted after kill -9 with 11 changes; drift reports")
    try:
        out["s6"] = restart_session(cfg, full)
    except Exception as e:  # noqa: BLE001 - one scenario failing must not lose the others
        log(f"scenarios 6-7 failed: {type(e).__name__}: {e}")
        out["s6"] = {"error": f"{type(e).__name__}: {e}"}
    r = out["s4"].get("result")
    if r:
        log(f"  p50 {fmt_ms(percentile(r['latencies'], 50))} p99 {fmt_ms(percentile(r['latencies'], 99))}"
            f" unseen {r['unseen']} final {'OK' if r['final_ok'] else 'WRONG'}")
    return out


def report_s3(sess: dict) -> None:
    r = sess.get("result")
    if r:
        log(f"  p50 {fmt_ms(percentile(r['latencies'], 50))} p99 {fmt_ms(percentile(r['latencies'], 99))}"
            f" timeouts {r['timeouts']} final {'OK' if r['final_ok'] else 'WRONG'}")


# --------------------------------------------------------------------------- report


def fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 1000:.1f} ms" if x < 0.01 else f"{x * 1000:.0f} ms"


def fmt_rate(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "ram": mem, "cpu": cpu,
            "kernel": f"{platform.system()} {platform.release()}"}


def versions() -> dict:
    def cmd_out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or "?"
        except (OSError, subprocess.TimeoutExpired):
            return "not available"

    try:
        with open(os.path.join(BENCH, "node_modules", "mongodb", "package.json")) as f:
            node_driver = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        node_driver = "?"
    try:
        sdb = importlib.metadata.version("SecantusDB")
    except importlib.metadata.PackageNotFoundError:
        sdb = "0.7.0b3 (per scripts/install-test-server.sh)"
    return {"docmirror": cmd_out([DOCMIRROR, "--version"]),
            "git": BUILD_INFO.get("git", "?"), "built": BUILD_INFO.get("built", "?"),
            "node": cmd_out(["node", "--version"]), "node_mongodb": node_driver,
            "python": platform.python_version(), "pymongo": importlib.metadata.version("pymongo"),
            "secantusdb": sdb}


def render(cfg, full: Tree, tenth: Tree, sync: dict, watch: dict, mongoimport_note: str, wall: float) -> tuple[str, list[tuple[str, str, bool | None]]]:
    m, v = machine(), versions()
    L: list[str] = []
    A = L.append
    cmdline = "scripts/bench.sh" + ("" if not cfg.argv else " " + " ".join(cfg.argv))
    A("# docmirror benchmarks\n")
    A("Everything down to *Targets* is generated by `bench/run.py` (issue 6); notes written after a run, if any, "
      "follow it. Reproduce with:\n")
    A(f"```\n{cmdline}\n```\n")
    A(f"- **Date**: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; total harness time {wall / 60:.1f} min")
    A(f"- **Machine**: {m['nproc']} cores, {m['ram']} RAM, {m['cpu']}, {m['kernel']}")
    A(f"- **Server**: {SERVER_NAME}{(' ' + ' '.join(SERVER_EXTRA)) if SERVER_EXTRA else ''}; a fresh server for every measurement, on 127.0.0.1. "
      "No mongod can be installed here, so absolute numbers are dominated by this slow Python server "
      "(see *server CPU* below) and say little about a real MongoDB; the ratios between contenders, "
      "measured side by side on the same server, are the meaningful part.")
    A(f"- **Versions**: {v['docmirror']} (binary built {v['built']}; work tree at the start of the run: git {v['git']}), Node {v['node']} + mongodb driver {v['node_mongodb']}, "
      f"Python {v['python']} + pymongo {v['pymongo']}, SecantusDB {v['secantusdb']}")
    A(f"- **Data** (`bench/gen.py`, seed {cfg.seed}): {full.users:,} users, {full.datasets:,} datasets, "
      f"{full.jobs:,} job files = {full.records:,} records; the seed-style contender gets a tenth "
      f"({tenth.users:,}/{tenth.datasets:,}/{tenth.jobs:,} = {tenth.records:,} records) and is compared in records/s. "
      "Passwords are bcrypt-*shaped* strings (`$2b$10$` + 53 characters), not real hashes: real bcrypt "
      "at cost 10 would take hours for 100k users, and nothing here verifies them.")
    if cfg.size_note:
        A(f"- **Sizes**: {cfg.size_note}")
    A(f"- **Runs**: median of {cfg.runs} run(s) per timed measurement, with min–max; contenders run in a rotating "
      "order within each run. *docmirror ×* is docmirror's records/s divided by the contender's "
      "(above 1: docmirror is faster). The server and the contender share the machine's cores; the 1-minute "
      f"load average before each timed run was {min(LOADAVG, default=0):.2f}–{max(LOADAVG, default=0):.2f} "
      "(about 1–2 is this harness itself).")
    A("- **Correctness**: after every run the three collections are dumped sorted by `_id`, `_mirror` is dropped, "
      "and every document is compared type-exactly (Int32/Int64/double/date/null) with what the files say "
      "(`bench/check.py`). A WRONG or FAILED run's time is not counted.\n")

    A("## Contenders\n")
    A("| contender | what it does |\n|---|---|")
    extra = (" " + " ".join(EXTRA_ARGS)) if EXTRA_ARGS else ""
    A("| docmirror | `target/release/docmirror --log-format json sync --data-dir D --artifacts-dir A "
      f"--mongodb-uri mongodb://127.0.0.1:P/bench{extra}` |")
    A("| batched | `bench/contenders/batched.py`: pymongo, `bulk_write` of `ReplaceOne({_id}, doc, upsert=True)` in unordered batches of 1000, no change detection |")
    A("| seed-style | `bench/contenders/seed.js`: Node.js + official `mongodb` driver, one awaited `updateOne({_id}, {$set: doc}, {upsert: true})` per record, as the migration guide's script goes row by row |")
    A(f"| mongoimport | {mongoimport_note} |")
    A("\nbatched and seed-style create the platform's indexes first (unique `email`, `uploaded_by`, `uploaded_at`, "
      "`user_id`, `status`, `created_at`), as docmirror does.\n")

    def sync_table(phase: str, title: str, extra: str):
        A(f"## {title}\n")
        A(extra + "\n")
        ser = sync[phase]
        dm = ser.get("docmirror")
        dm_rate = dm.rate() if dm else None
        A("| contender | records | median | min–max | records/s | docmirror × | CPU s (contender) | server CPU s | correctness |")
        A("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, s in ser.items():
            t = s.times
            mm = f"{min(t):.2f}–{max(t):.2f} s" if t else "–"
            r = s.rate()
            ratio = f"{dm_rate / r:.2f}" if (dm_rate and r) else "–"
            good = [a for a in s.attempts if a.ok]
            cpu = statistics.median([a.cpu for a in good]) if good else None
            scpu = statistics.median([a.server_cpu for a in good]) if good else None
            A(f"| {name} | {s.records:,} | {fmt_s(s.median())} | {mm} | {fmt_rate(r)} | {ratio} | "
              f"{'–' if cpu is None else f'{cpu:.2f}'} | {'–' if scpu is None else f'{scpu:.2f}'} | {s.status} |")
        bad = [(name, a) for name, s in ser.items() for a in s.attempts if not a.ok]
        if bad:
            A("")
            for name, a in bad[:8]:
                A(f"- {name} run {a.run}: {a.detail[:500]}")
        A("")

    targets: list[tuple[str, str, bool | None]] = []
    if sync:
        sync_table("initial", "Scenario 1: initial sync into an empty database", "Every contender starts on a fresh, empty server.")
        dm = sync["resync"].get("docmirror")
        summ = next((a.summary for a in (dm.attempts if dm else []) if a.summary), "")
        sync_table("resync", "Scenario 2: re-sync, nothing changed",
                   "Each contender runs a second time on the same server and files. "
                   f"docmirror's summary line (confirms zero writes): `{summ}`")
        i, rs = sync["initial"], sync["resync"]
        floor_ids, floor_hashes = sync.get("floor_ids") or [], sync.get("floor_hashes") or []
        bt = rs.get("batched").median() if rs.get("batched") else None
        if floor_ids:
            A("**Server floor.** Right after each docmirror re-sync, on the same server, a pymongo loop only "
              "lists the documents of the three collections (`find({}, projection)`, batches of 10,000) and "
              f"does nothing else: `_id` only, median {statistics.median(floor_ids):.2f} s "
              f"({min(floor_ids):.2f}–{max(floor_ids):.2f} s); `_id` and `_mirror.hash`, median "
              f"{statistics.median(floor_hashes):.2f} s ({min(floor_hashes):.2f}–{max(floor_hashes):.2f} s). "
              "A re-sync that checks every document against MongoDB cannot take less than the first."
              + (f" 20× the batched contender's re-sync would be {bt / 20:.2f} s." if bt else ""))
            A("")

        def ratio(ser, other):
            a, b = ser.get("docmirror"), ser.get(other)
            if not a or not b or not a.rate() or not b.rate():
                return None
            return a.rate() / b.rate()

        x = ratio(i, "batched")
        targets.append(("initial sync ≥ batched", "–" if x is None else f"docmirror {x:.2f}× batched", None if x is None else x >= 1))
        x = ratio(i, "seed-style")
        targets.append(("initial sync ≥ 10× seed-style", "–" if x is None else f"{x:.1f}× (records/s)", None if x is None else x >= 10))
        x = ratio(rs, "batched")
        met = None if x is None else x >= 20
        shown = ""
        if x is not None and not met and floor_ids and bt and statistics.median(floor_ids) > bt / 20:
            shown = (f"; the limit is the server's: listing the ids alone takes {statistics.median(floor_ids):.2f} s, "
                     f"more than {bt / 20:.2f} s (see the server floor under scenario 2)")
        targets.append(("re-sync ≥ 20× faster than batched", "–" if x is None else f"{x:.1f}×{shown}", met))
        full_rs = sync.get("resync-full", {}).get("docmirror")
        reads = sync.get("reads", {})
        if full_rs:
            fr = full_rs.median()
            b = rs.get("batched").median() if rs.get("batched") else None
            A(f"**Checkpoint off.** The same re-sync with `--full` (the checkpoint ignored: what a server without "
              f"change streams gets on every start), in the same runs: median {fmt_s(fr)}"
              + (f", {b / fr:.1f}× faster than batched" if (b and fr) else "") + ".")
            mirrored = ("users", "datasets", "training_jobs")
            def shown_reads(phase):
                runs = reads.get(phase) or []
                if not runs:
                    return "not recorded"
                last = runs[-1]
                return ", ".join(f"{k} {v:,}" for k, v in sorted(last.items())) or "none"
            A(f"Documents read from MongoDB (docmirror's own count, every read goes through one function): "
              f"from the checkpoint: {shown_reads('resync')}; with `--full`: {shown_reads('resync-full')}.")
            A("")
            none_read = bool(reads.get("resync")) and all(not any(r.get(c) for c in mirrored) for r in reads["resync"])
            targets.append(("re-sync reads no mirrored collection", shown_reads("resync"), none_read if reads.get("resync") else None))
            x = (b / fr) if (b and fr) else None
            targets.append(("checkpoint off (`--full`): re-sync no slower than before (5.7× batched in the last full run)",
                            "–" if x is None else f"{x:.1f}× batched", None if x is None else x >= 5.0))
        dmr = rs.get("docmirror")
        zero = dmr is not None and dmr.correct
        targets.append(("re-sync writes nothing", "inserted 0, updated 0 in every run" if zero else "see scenario 2",
                        zero if dmr and dmr.attempts else None))

    def session_note(sess: dict) -> str:
        fo = sess.get("feed_overhead_s")
        return (f"initial sync of {sess['records']:,} records took {sess['initial_sync_s']:.1f} s, state then "
                f"{'OK' if sess['initial_ok'] else 'WRONG'}; change-event delivery overhead (write acknowledged → "
                f"event received, measured first) {fmt_ms(fo)}")

    def s3_rows(sess: dict, what: str) -> tuple[float | None, dict]:
        r = sess["result"]
        lat = r["latencies"]
        A(f"| {what} | {r['changes']} of {r['planned']} | {fmt_ms(percentile(lat, 50))} | {fmt_ms(percentile(lat, 99))} | "
          f"{fmt_ms(min(lat) if lat else None)} | {fmt_ms(max(lat) if lat else None)} | {r['timeouts']} | "
          f"{'OK' if r['final_ok'] else ('not checked' if r['aborted'] else 'WRONG')} |")
        return percentile(lat, 99), r

    A("## Scenario 3: one user changed in users.json, applied by `docmirror watch`\n")
    rss_peaks: list[float] = []
    if not watch.get("available"):
        A(f"Not run: watch not available ({watch.get('why', '')}).\n")
        targets.append(("watch p99 ≤ 250 ms (scenario 3)", "not run: watch not available", None))
        targets.append(("watch p99 ≤ 500 ms (scenario 4)", "not run: watch not available", None))
        targets.append(("peak RSS of watch ≤ 200 MB", "not run: watch not available", None))
    else:
        s3 = watch["s3"]
        if "error" in s3:
            A(f"Failed: {s3['error']}\n")
            targets.append(("watch p99 ≤ 250 ms (scenario 3)", "watch failed", False))
        else:
            A(f"`docmirror watch` (default options{'' if cfg.debounce_ms is None else f', --debounce-ms {cfg.debounce_ms}'}) "
              "on a copy of the tree. Each change rewrites users.json (write a temp file, then rename) with one "
              "user's `name` and `updatedAt` changed; latency runs from the rename to the arrival of the change "
              "event for that user with the new name (a MongoDB change stream on `users`, so measuring adds no "
              "polling load to the server). Percentiles are nearest-rank over the changes of one watch session; "
              f"a change not visible within {cfg.change_timeout:.0f} s counts as timed out, and two in a row stop "
              f"the scenario. Session: {session_note(s3)}.\n")
            A("| users.json | changes | p50 | p99 | min | max | timed out | final users == file |")
            A("|---|---:|---:|---:|---:|---:|---:|---|")
            p99, r = s3_rows(s3, f"{s3['users']:,} users")
            small = watch.get("s3small")
            if small and "result" in small:
                s3_rows(small, f"{small['users']:,} users (for scale)")
            if r["aborted"]:
                A(f"\nAt {s3['users']:,} users the scenario was {r['aborted']}.")
            if small and "result" in small:
                A(f"\nThe smaller file (second row, its own session: {session_note(small)}) shows how the "
                  "latency grows with the size of users.json.")
            for p in r["problems"]:
                A(f"- {p}")
            A("")
            met3 = p99 is not None and r["timeouts"] == 0 and not r["aborted"] and p99 <= 0.25 and r["final_ok"]
            meas = f"p99 {fmt_ms(p99)}" if p99 is not None else "no change became visible in time"
            if r["timeouts"]:
                meas += f"; {r['timeouts']} of {r['changes']} changes not visible within {cfg.change_timeout:.0f} s"
            targets.append((f"watch p99 ≤ 250 ms (scenario 3, {s3['users']:,} users)", meas, met3))
            rss_peaks.append(s3["rss_peak_kb"] / 1024)

        A("## Scenario 4: watch under load\n")
        s4 = watch["s4"]
        if "error" in s4:
            A(f"Failed: {s4['error']}\n")
            targets.append(("watch p99 ≤ 500 ms (scenario 4)", "watch failed", False))
        else:
            r = s4["result"]
            lat = r["latencies"]
            A(f"A fresh watch session on a fresh copy of the tree ({session_note(s4)}). A writer rewrites "
              f"{r['rewrites']:,} job files (round robin over {r['jobs']} jobs, `step` +1 and `updated_at` each time, "
              f"temp + rename) at {r['rate']:.0f}/s (achieved {r['achieved_rate']:.0f}/s). Latency runs from a rename "
              "to the change event that shows that step or a later one (a change stream on `training_jobs`). "
              "Afterwards all three collections are compared with the files.\n")
            A("| rewrites | p50 | p99 | max | not seen in time | final state == files |")
            A("|---:|---:|---:|---:|---:|---|")
            A(f"| {r['rewrites']:,} | {fmt_ms(percentile(lat, 50))} | {fmt_ms(percentile(lat, 99))} | "
              f"{fmt_ms(max(lat) if lat else None)} | {r['unseen']} | {'OK' if r['final_ok'] else 'WRONG'} |")
            for p in r["problems"]:
                A(f"- {p}")
            A("")
            p99 = percentile(lat, 99)
            met4 = p99 is not None and r["unseen"] == 0 and p99 <= 0.5 and r["final_ok"]
            meas = f"p99 {fmt_ms(p99)}" + (f", {r['unseen']} not seen" if r["unseen"] else "")
            targets.append(("watch p99 ≤ 500 ms (scenario 4)", meas, met4))
            rss_peaks.append(s4["rss_peak_kb"] / 1024)

    s6 = watch.get("s6") if watch.get("available") else None
    if s6 is not None:
        A("## Scenario 6: restart after kill -9, with changes made while it was down\n")
        if "error" in s6 and not s6.get("restart"):
            A(f"Not measured: {s6['error']}\n")
        else:
            A(f"`docmirror watch` runs on the tree above; it is killed with SIGKILL, 10 job files and one user in "
              f"`users.json` are changed (rename-over writes), and it is started again. Measured: from its "
              f"`Connected to MongoDB` log line to all 11 changes being in MongoDB (each seen arriving on a change stream opened before the start; each round starts once the server is idle). "
              f"{len(s6.get('restart', []))} rounds from the checkpoint, then one with `--full` (the checkpoint "
              "ignored: what a server without change streams gets).\n")
            A("| start | caught up after connecting: median | min–max | from process start: median | started from the checkpoint |")
            A("|---|---:|---:|---:|---|")
            for key, what in (("restart", "from the checkpoint"), ("restart_full", "`--full`")):
                rows = s6.get(key) or []
                xs = [r["caught_up_s"] for r in rows if r.get("caught_up_s") is not None]
                ys = [r["since_spawn_s"] for r in rows if r.get("since_spawn_s") is not None]
                if not rows:
                    continue
                A(f"| {what} | {fmt_s(statistics.median(xs) if xs else None)} | "
                  f"{(f'{min(xs):.2f}–{max(xs):.2f} s') if xs else '–'} | {fmt_s(statistics.median(ys) if ys else None)} | "
                  f"{', '.join('yes' if r.get('warm') else 'no' for r in rows)} |")
            A("")
            xs = [r["caught_up_s"] for r in s6.get("restart", []) if r.get("caught_up_s") is not None]
            med = statistics.median(xs) if xs else None
            targets.append(("restart after kill -9, 11 changes: caught up < 1 s after connecting",
                            fmt_s(med), None if med is None else med < 1.0))
        A("## Scenario 7: drift reported while watch runs\n")
        d = [x for x in s6.get("drift", []) if x is not None]
        A(f"With `--drift-grace-secs {DRIFT_GRACE_S}`, the app (pymongo) changes one job's `status` in MongoDB "
          "and not in its file; measured: from the write to the record being listed in `mirror_drift`. "
          "Then an equal write (the value the file has): it must never be listed.\n")
        A("| measure | value |\n|---|---:|")
        A(f"| drift listed after the write: median (min–max), {len(s6.get('drift', []))} writes | "
          + (f"{statistics.median(d):.2f} s ({min(d):.2f}–{max(d):.2f} s) |" if d else "– |"))
        A(f"| an equal write listed as drift | {'yes' if s6.get('equal_reported') else 'no'} |")
        A("")
        worst = max(d) if d else None
        targets.append((f"drift reported within --drift-grace-secs + 1 s ({DRIFT_GRACE_S + 1} s)",
                        fmt_s(worst) + " (slowest)", None if worst is None else worst <= DRIFT_GRACE_S + 1))
        targets.append(("an equal write is not reported as drift", "not reported" if s6.get("equal_reported") is False
                        else "reported", None if s6.get("equal_reported") is None else not s6["equal_reported"]))

    A("## Scenario 5: resources\n")
    A("| measure | value |\n|---|---:|")
    if watch.get("available"):
        for key, what in (("s3", "scenario 3 session"), ("s3small", "scenario 3 session (small file)"),
                          ("s4", "scenario 4 session")):
            sess = watch.get(key)
            if not sess or "result" not in sess:
                continue
            A(f"| `docmirror watch` peak RSS (VmHWM) right after the initial sync of {sess['records']:,} records, {what} | "
              f"{sess['rss_after_initial_kb'] / 1024:.1f} MiB |")
            A(f"| `docmirror watch` peak RSS (VmHWM) at the end of the {what} | {sess['rss_peak_kb'] / 1024:.1f} MiB |")
            A(f"| `docmirror watch` CPU over the {what} | {sess['cpu_s']:.1f} s |")
            A(f"| `docmirror watch` exit code after SIGTERM / time to stop, {what} | {sess['exit_code']} / {sess['stop_s']:.2f} s |")
        if rss_peaks:
            peak = max(rss_peaks)
            targets.append(("peak RSS of watch ≤ 200 MB", f"{peak:.1f} MiB ({peak * 1.048576:.0f} MB)", peak * 1.048576 <= 200))
    else:
        A("| `docmirror watch` peak RSS | not run |")
    if sync:
        for phase, label in (("initial", "initial sync"), ("resync", "re-sync")):
            s = sync[phase].get("docmirror")
            good = [a for a in s.attempts if a.ok] if s else []
            if good:
                cpu = statistics.median([a.cpu for a in good])
                A(f"| `docmirror sync` CPU (user+sys) per 100k records, {label} | {cpu / s.records * 1e5:.2f} s |")
                peak = max(a.maxrss_kb for a in good)
                A(f"| `docmirror sync` peak RSS (GNU time's maximum resident set size), {label} | "
                  + (f"{peak / 1024:.1f} MiB |" if peak else "not measured (no /usr/bin/time) |"))
                scpu = statistics.median([a.server_cpu for a in good])
                A(f"| SecantusDB CPU per 100k records during docmirror's {label} | {scpu / s.records * 1e5:.2f} s |")
    A("")

    A("## Targets (issue 6)\n")
    A("| target | measured | met? |\n|---|---|---|")
    for t, meas, met in targets:
        A(f"| {t} | {meas} | {'met' if met else ('not met' if met is False else 'not measured')} |")
    A("")
    return "\n".join(L) + "\n", targets


# --------------------------------------------------------------------------- main


def main() -> int:
    global DOCMIRROR
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small tree, 1 run, correctness and plumbing only")
    ap.add_argument("--scale", action="store_true", help="issue 14's scale run: 1,000,000 users, 100,000 datasets, "
                    "200,000 job files; docmirror only, 1 run, no reverse; report bench/results/scale.md")
    ap.add_argument("--users", type=int)
    ap.add_argument("--datasets", type=int)
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--changes", type=int, help="scenario 3 changes (default 50; quick 10)")
    ap.add_argument("--rewrites", type=int, help="scenario 4 job rewrites (default 1000; quick 200)")
    ap.add_argument("--rate", type=float, default=200.0, help="scenario 4 rewrites per second")
    ap.add_argument("--load-jobs", type=int, default=200, help="scenario 4: how many jobs the writer cycles through")
    ap.add_argument("--debounce-ms", type=int, help="passed to docmirror watch (default: its own)")
    ap.add_argument("--docmirror-args", default="", help="extra flags for docmirror sync and watch, e.g. "
                    "'--write-mode commands' (shown in the report)")
    ap.add_argument("--skip-watch", action="store_true", help="skip scenarios 3-5's watch parts")
    ap.add_argument("--contenders", help="comma-separated subset of the sync contenders (default: all available)")
    ap.add_argument("--skip-sync", action="store_true", help="skip scenarios 1 and 2 (for working on watch)")
    ap.add_argument("--skip-reverse", action="store_true", help="skip scenario 8 (export and reverse)")
    ap.add_argument("--reverse-updates", type=int, help="scenario 8 job updates (default 1000; quick 100)")
    ap.add_argument("--reverse-rate", type=float, default=100.0, help="scenario 8 updates per second")
    ap.add_argument("--report", help="where to write the report (default: BENCHMARKS.md; quick: bench/results/quick.md)")
    ap.add_argument("--size-note", default="", help="a sentence for the report on why these sizes")
    cfg = ap.parse_args()
    cfg.argv = sys.argv[1:]
    EXTRA_ARGS.extend(shlex.split(cfg.docmirror_args))
    q = cfg.quick
    if cfg.scale:
        cfg.users = cfg.users or 1_000_000
        cfg.datasets = cfg.datasets or 100_000
        cfg.jobs = cfg.jobs or 200_000
        cfg.runs = cfg.runs or 1
        cfg.contenders = cfg.contenders or "docmirror"
        cfg.changes = cfg.changes or 20
        cfg.skip_reverse = True
        cfg.report = cfg.report or os.path.join(RESULTS, "scale.md")
        SERVER_EXTRA.extend(["--cache-size", "8G"])
    cfg.users = cfg.users if cfg.users is not None else (2000 if q else 100_000)
    cfg.datasets = cfg.datasets if cfg.datasets is not None else (200 if q else 10_000)
    cfg.jobs = cfg.jobs if cfg.jobs is not None else (300 if q else 20_000)
    cfg.runs = max(1, cfg.runs if cfg.runs is not None else (1 if q else 3))
    cfg.changes = max(1, cfg.changes if cfg.changes is not None else (10 if q else 50))
    cfg.rewrites = max(1, cfg.rewrites if cfg.rewrites is not None else (200 if q else 1000))
    cfg.reverse_updates = max(1, cfg.reverse_updates if cfg.reverse_updates is not None else (100 if q else 1000))
    cfg.load_jobs = min(cfg.load_jobs, 50) if q else cfg.load_jobs
    cfg.timeout = 300.0 if q else 1800.0  # per contender run
    cfg.change_timeout = 30.0 if q else 60.0
    cfg.s3_budget = 180.0 if q else 900.0  # scenario 3 stops when this is spent
    report = cfg.report or (os.path.join(RESULTS, "quick.md") if q else os.path.join(ROOT, "BENCHMARKS.md"))

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.makedirs(os.path.join(RESULTS, "logs"), exist_ok=True)
    started = time.monotonic()
    try:
        for tool, path in (("docmirror", DOCMIRROR), ("secantusd-py", SECANTUSD)):
            if not os.access(path, os.X_OK):
                log(f"error: {tool} not found at {path} (run scripts/bench.sh, which builds and installs it)")
                return 2
        # Measure a copy: a rebuild of target/release during the run must not swap binaries mid-way.
        built = datetime.fromtimestamp(os.path.getmtime(DOCMIRROR), timezone.utc)
        BUILD_INFO["built"] = built.strftime("%Y-%m-%d %H:%M UTC")
        BUILD_INFO["git"] = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                           capture_output=True, text=True, timeout=20).stdout.strip() or "?"
        copy = os.path.join(RESULTS, "docmirror-under-test")
        shutil.copy2(DOCMIRROR, copy)
        DOCMIRROR = copy
        ver = subprocess.run([DOCMIRROR, "--version"], capture_output=True, text=True, timeout=20)
        if ver.returncode != 0 or "docmirror" not in ver.stdout:
            log(f"error: {DOCMIRROR} --version printed {ver.stdout!r} (exit {ver.returncode}); rebuild it")
            return 2
        contenders = ["docmirror", "batched", "seed-style"]
        if shutil.which("mongoimport"):
            contenders.append("mongoimport")
            mongoimport_note = ("`bench/contenders/mongoimport.py`: rewrites each source as canonical Extended JSON "
                                "(timed), then `mongoimport --mode upsert` per collection")
        else:
            mongoimport_note = ("not available: `mongoimport` is not on PATH, and Debian 12 has no `mongo-tools` "
                                "package (`apt-cache policy mongo-tools` finds none); "
                                "`bench/contenders/mongoimport.py` runs it where it is installed")
        if cfg.contenders:
            wanted = [c.strip() for c in cfg.contenders.split(",") if c.strip()]
            contenders = [c for c in contenders if c in wanted]
        log(f"sizes: {cfg.users} users, {cfg.datasets} datasets, {cfg.jobs} jobs; runs {cfg.runs}; contenders {contenders}")
        full = make_tree(cfg.users, cfg.datasets, cfg.jobs, cfg.seed)
        tenth = make_tree(max(1, cfg.users // 10), max(1, cfg.datasets // 10), max(1, cfg.jobs // 10), cfg.seed)
        sync = {} if cfg.skip_sync else scenario_sync(cfg, full, tenth, contenders)
        # Full runs also time scenario 3 on the quick tree's users.json, to show how latency scales.
        small = None if q or cfg.users <= 2000 else make_tree(2000, 200, 300, cfg.seed)
        watch = ({"available": False, "why": "skipped (--skip-watch)"} if cfg.skip_watch
                 else scenario_watch(cfg, full, small))
        rev = {} if cfg.skip_reverse else reverse_bench.scenario(cfg, full, sys.modules[__name__])
        text, targets = render(cfg, full, tenth, sync, watch, mongoimport_note, time.monotonic() - started)
        text += reverse_bench.render(rev, cfg)
        os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
        with open(report, "w", encoding="utf-8") as f:
            f.write(text)
        raw = {
            "config": {k: v for k, v in vars(cfg).items()},
            "sync": {ph: ({n: {"records": s.records, "attempts": [vars(a) for a in s.attempts]} for n, s in ser.items()}
                          if isinstance(ser, dict) and all(isinstance(v, Series) for v in ser.values()) else ser)
                     for ph, ser in sync.items()},
            "watch": watch,
            "reverse": rev,
            "targets": targets,
        }
        with open(os.path.join(RESULTS, "quick.json" if q else "full.json"), "w") as f:
            json.dump(raw, f, indent=1, default=str)
        log(f"report written to {os.path.relpath(report, ROOT)}")
        print(text)

        failures = [f"{ph} {n}: {s.status}" for ph, ser in sync.items() if isinstance(ser, dict)
                    for n, s in ser.items() if isinstance(s, Series) and s.status != "OK"]
        if watch.get("available"):
            for key in ("s3", "s3small", "s4"):
                sess = watch.get(key)
                if sess is None:
                    continue
                if "error" in sess:
                    failures.append(f"watch {key}: {sess['error']}")
                    continue
                if not sess.get("initial_ok"):
                    failures.append(f"watch {key}: state after the initial sync differs from the files")
                r = sess["result"]
                if not r["final_ok"] and not r.get("aborted"):
                    failures.append(f"watch {key}: final state differs from the files")
                if r.get("feed_error"):
                    failures.append(f"watch {key}: change stream failed: {r['feed_error']}")
                if sess.get("exit_code") != 0:
                    failures.append(f"watch {key}: exited {sess.get('exit_code')} after SIGTERM")
        s6 = watch.get("s6") if watch.get("available") else None
        if s6 is not None:
            if "error" in s6:
                failures.append(f"watch restart/drift: {s6['error']}")
            if s6.get("final_problems"):
                failures.append(f"watch restart/drift: final state differs: {s6['final_problems']}")
            if s6.get("equal_reported"):
                failures.append("watch drift: an equal write was reported as drift")
            if any(x is None for x in s6.get("drift", [])):
                failures.append("watch drift: a differing write was never reported")
            if any(r.get("caught_up_s") is None for r in s6.get("restart", []) + s6.get("restart_full", [])):
                failures.append("watch restart: changes made while it was down did not all arrive")
        failures += reverse_bench.failures(rev)
        if failures:
            log("CHECKS FAILED: " + "; ".join(failures))
            return 1
        log(f"all correctness checks passed ({(time.monotonic() - started) / 60:.1f} min)")
        return 0
    finally:
        _cleanup()


if __name__ == "__main__":
    sys.exit(main())
