#!/usr/bin/env python3
"""The PostgreSQL target's benchmark (issue 16), side by side on one server:

    pg.py [--quick] [--users N] [--datasets N] [--jobs N] [--runs R] [--report FILE]

Contenders, each into a fresh database of one throwaway PostgreSQL cluster
(started here, in a temporary folder, on a free port):

- docmirror: `docmirror sync --target postgres`;
- batched: `contenders/batched_pg.py`, psycopg 3, multi-row
  `INSERT ... ON CONFLICT (id) DO UPDATE` in batches of 1,000;
- guide: `contenders/guide_pg.js`, the migration guide's own script (Node.js
  and `pg`, one awaited `INSERT ... ON CONFLICT DO NOTHING` per record), on a
  tenth of the tree, compared in records/s.

Scenario 1 is the initial sync into an empty database, scenario 2 the same
command again with nothing changed, scenario 3 the latency of `docmirror
watch` for one user changed in the full tree's users.json. Each run's rows are counted against the
tree (and docmirror's checked with `docmirror verify`); a run whose counts are
wrong is not counted. Writes a Markdown report (stdout, or --report FILE).
Run it through scripts/bench-postgres.sh, which installs what it needs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GUIDE_SCHEMA = os.path.join(REPO, "tests", "data", "guide-schema.sql")
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")


def log(msg: str) -> None:
    print(f"[pg-bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Cluster:
    """A throwaway PostgreSQL cluster, as the postgres user when we are root."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        if not bins:
            raise SystemExit("no PostgreSQL under /usr/lib/postgresql: run scripts/install-test-postgres.sh")
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="docmirror-pg-bench-")
        self.as_pg = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        data = os.path.join(self.dir, "data")
        subprocess.run(self.as_pg + [f"{self.bin}/initdb", "-D", data, "-U", "postgres", "-A", "trust",
                                     "-E", "UTF8", "--locale=C"], check=True, stdout=subprocess.DEVNULL)
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c timezone=UTC"
        subprocess.run(self.as_pg + [f"{self.bin}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"),
                                     "-w", "-o", opts, "start"], check=True, stdout=subprocess.DEVNULL)
        self.version = self.psql("postgres", "SHOW server_version").strip()

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, db: str, sql: str) -> str:
        out = subprocess.run([f"{self.bin}/psql", "-qAt", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", db, "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout

    def fresh(self, db: str) -> str:
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{db}"')
        self.psql("postgres", f'CREATE DATABASE "{db}"')
        return db

    def stop(self) -> None:
        subprocess.run(self.as_pg + [f"{self.bin}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "fast",
                                     "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def make_tree(root: str, users: int, datasets: int, jobs: int) -> dict:
    out = os.path.join(root, f"tree-{users}-{datasets}-{jobs}")
    subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), out, "--users", str(users), "--datasets",
                    str(datasets), "--jobs", str(jobs), "--seed", "42"], check=True, stdout=subprocess.DEVNULL)
    return {"dir": out, "users": users, "datasets": datasets, "training_jobs": jobs,
            "records": users + datasets + jobs}


def docmirror_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "docmirror")


def command(name: str, tree: dict, url: str) -> list[str]:
    data, artifacts = os.path.join(tree["dir"], "data"), os.path.join(tree["dir"], "artifacts")
    if name == "docmirror":
        return [docmirror_bin(), "--log-format", "json", "--quiet", "sync", "--target", "postgres",
                "--postgres-url", url, "--data-dir", data, "--artifacts-dir", artifacts]
    if name == "batched":
        return [VENV_PY, os.path.join(HERE, "contenders", "batched_pg.py"), data, artifacts, url, GUIDE_SCHEMA]
    return ["node", os.path.join(HERE, "contenders", "guide_pg.js"), data, artifacts, url, GUIDE_SCHEMA]


def counts_ok(cluster: Cluster, db: str, tree: dict) -> list[str]:
    wrong = []
    for table in ("users", "datasets", "training_jobs"):
        n = int(cluster.psql(db, f"SELECT count(*) FROM {table}").strip() or 0)
        if n != tree[table]:
            wrong.append(f"{table}: {n} rows, {tree[table]} records")
    return wrong


def timed(cmd: list[str]) -> tuple[float, int, str]:
    started = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return time.monotonic() - started, p.returncode, (p.stdout + p.stderr)[-2000:]


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def scenario_watch(cfg, cluster: Cluster, tree: dict) -> dict:
    """Scenario 3: docmirror watch on the synced database; users.json rewritten
    (temp file + rename) with one user's name and updatedAt changed; the time
    until the row holds the new name (polled every 2 ms)."""
    import psycopg

    db = cluster.fresh("bench_watch")
    data, arts = os.path.join(tree["dir"], "data"), os.path.join(tree["dir"], "artifacts")
    url = cluster.url(db)
    took, code, said = timed(command("docmirror", tree, url))
    if code != 0:
        return {"error": f"initial sync exit {code}: {said}"}
    log_path = os.path.join(cluster.dir, "watch.log")
    with open(log_path, "w", encoding="utf-8") as log_file:
        watch = subprocess.Popen([docmirror_bin(), "--log-format", "text", "watch", "--target", "postgres",
                                  "--postgres-url", url, "--data-dir", data, "--artifacts-dir", arts],
                                 stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + 300
        while "Initial reconcile done" not in open(log_path, encoding="utf-8").read():
            if time.monotonic() > deadline or watch.poll() is not None:
                return {"error": "watch did not finish its initial reconcile"}
            time.sleep(0.2)
        path = os.path.join(data, "users.json")
        with open(path, encoding="utf-8") as f:
            users = json.load(f)
        lat: list[float] = []
        with psycopg.connect(url, autocommit=True) as conn:
            for k in range(cfg.changes):
                i = (k * max(1, len(users) // cfg.changes) + 7) % len(users)
                uid, name = users[i]["id"], f"Renamed {k} {users[i]['name']}"
                users[i]["name"], users[i]["updatedAt"] = name, iso_now()
                with open(path + ".bench-tmp", "w", encoding="utf-8") as f:
                    json.dump(users, f, indent=2)
                t0 = time.perf_counter()
                os.replace(path + ".bench-tmp", path)
                while time.perf_counter() - t0 < 30:
                    row = conn.execute("SELECT name FROM users WHERE id = %s", (uid,)).fetchone()
                    if row and row[0] == name:
                        lat.append(time.perf_counter() - t0)
                        break
                    time.sleep(0.002)
                time.sleep(0.05)
        return {"users": len(users), "changes": cfg.changes, "latencies": lat}
    finally:
        watch.terminate()
        watch.wait(timeout=30)


def run(cfg) -> str:
    work = tempfile.mkdtemp(prefix="docmirror-pg-bench-trees-")
    cluster = Cluster()
    try:
        full = make_tree(work, cfg.users, cfg.datasets, cfg.jobs)
        tenth = make_tree(work, max(cfg.users // 10, 1), max(cfg.datasets // 10, 1), max(cfg.jobs // 10, 1))
        times: dict[tuple[str, int], list[float]] = {}
        problems: list[str] = []
        contenders = [("docmirror", full), ("batched", full), ("guide", tenth)]
        for r in range(cfg.runs):
            order = contenders[r % 3:] + contenders[:r % 3]
            for name, tree in order:
                db = cluster.fresh(f"bench_{name}")
                for scenario in (1, 2):
                    took, code, said = timed(command(name, tree, cluster.url(db)))
                    wrong = counts_ok(cluster, db, tree) if code == 0 else [f"exit {code}: {said}"]
                    if name == "docmirror" and not wrong:
                        data, arts = os.path.join(tree["dir"], "data"), os.path.join(tree["dir"], "artifacts")
                        v = subprocess.run([docmirror_bin(), "--quiet", "verify", "--target", "postgres",
                                            "--postgres-url", cluster.url(db), "--data-dir", data,
                                            "--artifacts-dir", arts], capture_output=True, text=True)
                        if v.returncode != 0:
                            wrong.append(f"verify exit {v.returncode}: {v.stdout[-500:]}")
                    if wrong:
                        problems.append(f"{name} scenario {scenario} run {r + 1}: {'; '.join(wrong)}")
                        continue
                    times.setdefault((name, scenario), []).append(took)
                    log(f"run {r + 1}: {name} scenario {scenario}: {took:.2f} s")
        watch = scenario_watch(cfg, cluster, full) if cfg.changes > 0 else None
        if watch and watch.get("error"):
            problems.append(f"watch: {watch['error']}")
        return render(cfg, cluster, full, tenth, times, problems, watch)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def render(cfg, cluster: Cluster, full: dict, tenth: dict, times: dict, problems: list[str], watch) -> str:
    def rate(name: str, scenario: int) -> float | None:
        xs = times.get((name, scenario))
        tree = tenth if name == "guide" else full
        return tree["records"] / statistics.median(xs) if xs else None

    lines = [
        "## PostgreSQL target (issue 16)",
        "",
        f"Generated by `bench/pg.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); reproduce with "
        "`scripts/bench-postgres.sh`. PostgreSQL "
        f"{cluster.version} on 127.0.0.1 (a throwaway cluster, default settings), {os.cpu_count()} cores; "
        f"{full['records']:,} records ({full['users']:,} users, {full['datasets']:,} datasets, "
        f"{full['training_jobs']:,} job files; `bench/gen.py`, seed 42); the guide's script gets a tenth "
        f"({tenth['records']:,} records) and is compared in records/s. Median of {cfg.runs} run(s), "
        "each contender into a fresh database; every run's row counts are checked (docmirror's also with "
        "`docmirror verify`).",
        "",
    ]
    for scenario, title in ((1, "initial sync into an empty database"), (2, "the same again, nothing changed")):
        lines += [f"**Scenario {scenario}: {title}.**", "",
                  "| contender | records | median | min–max | records/s | docmirror × |", "|---|---:|---:|---:|---:|---:|"]
        ours = rate("docmirror", scenario)
        for name in ("docmirror", "batched", "guide"):
            xs = times.get((name, scenario))
            tree = tenth if name == "guide" else full
            if not xs:
                lines.append(f"| {name} | {tree['records']:,} | failed | | | |")
                continue
            r = rate(name, scenario)
            ratio = f"{ours / r:.1f}" if ours and r else ""
            lines.append(f"| {name} | {tree['records']:,} | {statistics.median(xs):.2f} s | "
                         f"{min(xs):.2f}–{max(xs):.2f} s | {r:,.0f} | {ratio} |")
        lines.append("")
    if watch and not watch.get("error"):
        lat = sorted(watch["latencies"])
        missed = watch["changes"] - len(lat)
        if lat:
            p50 = lat[len(lat) // 2] * 1000
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            lines += ["**Scenario 3: `docmirror watch`, one user changed in a "
                      f"{watch['users']:,}-user `users.json`** (rewritten and renamed into place; time until the "
                      f"row holds the new name): {len(lat)} changes, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
                      f"max {lat[-1] * 1000:.0f} ms" + (f"; {missed} not seen within 30 s" if missed else "") + ".", ""]
        if missed:
            problems.append(f"watch: {missed} change(s) not seen within 30 s")
    if problems:
        lines += ["**Runs not counted:**", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small tree, one run: correctness only")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--datasets", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--changes", type=int, default=50, help="scenario 3's user changes under watch (0: skip)")
    ap.add_argument("--report", help="write the Markdown report here (default: stdout)")
    cfg = ap.parse_args()
    if cfg.quick:
        cfg.users, cfg.datasets, cfg.jobs, cfg.runs, cfg.changes = 2_000, 200, 400, 1, 5
    text = run(cfg)
    if cfg.report:
        with open(cfg.report, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 1 if "Runs not counted" in text else 0


if __name__ == "__main__":
    sys.exit(main())
