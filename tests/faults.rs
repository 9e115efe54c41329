//! Bad input: every file of the committed corpus, on its own and all together
//! beside good files, gives one clear message naming the path and the reason,
//! and every good record still arrives. Plus size limits, symlink loops and
//! directories that look like files.

use serde_json::json;

use bson::{doc, Document};

use crate::support::*;

/// (corpus file, where it goes, expected reason code and what its reason must
/// say, the place or the value at fault; None = mirrored).
/// An expected reject: its reason code, and what its reason must say.
type Expected = Option<(&'static str, &'static str)>;

const CASES: &[(&str, &str, Expected)] = &[
    ("truncated.json", "artifacts/jobs/truncated.json", Some(("invalid_json", "(line 1, column 44)"))),
    ("bom.json", "artifacts/jobs/bom.json", None),
    ("invalid-utf8.json", "artifacts/jobs/invalid-utf8.json", Some(("invalid_utf8", "(line 1, column 33)"))),
    ("nan.json", "artifacts/jobs/nan.json", Some(("invalid_json", "expected value (line 1, column"))),
    ("infinity.json", "artifacts/jobs/infinity.json", Some(("invalid_json", "expected value (line 1, column"))),
    ("deep.json", "artifacts/jobs/deep.json", Some(("invalid_json", "recursion limit"))),
    ("duplicate-keys.json", "artifacts/jobs/duplicate-keys.json", Some(("duplicate_key", "\"status\" more than once"))),
    ("wrong-top-level.json", "artifacts/jobs/wrong-top-level.json", Some(("wrong_top_level_type", "holds an array"))),
    ("id-number.json", "artifacts/jobs/id-number.json", Some(("id_not_string", "\"job_id\" is a number"))),
    ("id-null.json", "artifacts/jobs/id-null.json", Some(("id_not_string", "\"job_id\" is null"))),
    ("id-object.json", "artifacts/jobs/id-object.json", Some(("id_not_string", "\"job_id\" is an object"))),
    ("dollar-key.json", "artifacts/jobs/dollar-key.json", Some(("forbidden_key", "\"$set\""))),
    ("dotted-key.json", "artifacts/jobs/dotted-key.json", Some(("forbidden_key", "\"lr.max\" inside params"))),
    ("malformed-bcrypt-users.json", "data/users.json", Some(("malformed_bcrypt", "field \"password\""))),
    ("nul-key.json", "artifacts/jobs/nul-key.json", Some(("nul_in_key", "\"a\\0b\""))),
    ("nul-id.json", "artifacts/jobs/nul-id.json", Some(("nul_in_id", "\"job_id\" holds a NUL"))),
    ("empty-key.json", "artifacts/jobs/empty-key.json", Some(("empty_key", "is empty"))),
    ("own-id.json", "artifacts/jobs/own-id.json", Some(("reserved_field", "\"_id\""))),
    ("own-mirror.json", "artifacts/jobs/own-mirror.json", Some(("reserved_field", "\"_mirror\""))),
    ("too-deep.json", "artifacts/jobs/too-deep.json", Some(("too_deep", "more than 100 levels"))),
];

fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name)).unwrap()
}

fn good_tree() -> Platform {
    let p = Platform::new();
    p.datasets(&json!([dataset("d1", 1), dataset("d2", 2)]));
    p.job("good-a", &job("good-a", "queued", "2025-10-12T09:00:00.000Z"));
    p.job("good-b", &job("good-b", "running", "2025-10-12T09:00:00.000Z"));
    p
}

async fn assert_good_arrived(db: &TestDb) {
    assert!(db.doc("training_jobs", "good-a").await.is_some());
    assert!(db.doc("training_jobs", "good-b").await.is_some());
    assert_eq!(db.count("datasets").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_file_alone_is_named_with_its_reason() {
    for (i, (name, dest, code)) in CASES.iter().enumerate() {
        let db = TestDb::new(&format!("bad_{i}")).await;
        let p = good_tree();
        p.write(dest, corpus(name));
        let before = p.snapshot();
        let run = docmirror(&db, &p, &["sync"]).await;
        assert_good_arrived(&db).await;
        assert_eq!(p.snapshot(), before, "{name}: the source tree changed");
        let rel = dest.to_string();
        match code {
            None => {
                assert_eq!(run.code, 0, "{name}: {run:?}");
                assert_eq!(db.rejects().await.len(), 0, "{name}");
            }
            Some((code, says)) => {
                assert_eq!(run.code, 3, "{name}: {run:?}");
                let rejects = db.rejects().await;
                assert_eq!(rejects.len(), 1, "{name}: {rejects:?}");
                assert_eq!(rejects[0].get_str("reason_code").unwrap(), *code, "{name}");
                let reason = rejects[0].get_str("reason").unwrap();
                assert!(reason.contains(says), "{name}: the reason must say {says:?}: {reason}");
                assert_eq!(rejects[0].get_str("source").unwrap(), rel, "{name}");
                let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("Rejected")).collect();
                assert_eq!(lines.len(), 1, "{name}: one clear line: {}", run.stderr);
                assert!(lines[0].contains(&rel) && lines[0].contains(code), "{name}: {}", lines[0]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn all_bad_files_together_beside_good_ones() {
    let db = TestDb::new("bad_all").await;
    let p = good_tree();
    for (name, dest, _) in CASES {
        p.write(dest, corpus(name));
    }
    // A directory that looks like a job file, a symlink loop, and a file over the size limit.
    std::fs::create_dir_all(p.path("artifacts/jobs/folder.json")).unwrap();
    std::os::unix::fs::symlink("loop-b.json", p.path("artifacts/jobs/loop-a.json")).unwrap();
    std::os::unix::fs::symlink("loop-a.json", p.path("artifacts/jobs/loop-b.json")).unwrap();
    p.settle();
    let mut big = job("big", "queued", "2025-10-12T09:00:00.000Z");
    big["message"] = json!("x".repeat(20_000));
    p.job("big", &big);
    let before = p.snapshot();
    let run = docmirror(&db, &p, &["sync", "--max-file-bytes", "10000"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert_good_arrived(&db).await;
    assert!(db.doc("training_jobs", "bom").await.is_some());
    let rejects = db.rejects().await;
    let mut codes: Vec<String> = rejects.iter().map(|r| r.get_str("reason_code").unwrap().to_string()).collect();
    codes.sort();
    let mut want: Vec<String> = CASES.iter().filter_map(|(_, _, c)| c.map(|(code, _)| code.to_string())).collect();
    want.extend(["not_a_file", "file_unreadable", "file_unreadable", "file_too_large"].map(String::from));
    want.sort();
    assert_eq!(codes, want);
    // Every reason names what is at fault, as each file alone does.
    for (_, dest, expected) in CASES {
        let Some((code, says)) = expected else { continue };
        let r = rejects.iter().find(|r| r.get_str("source") == Ok(*dest)).unwrap();
        assert_eq!(r.get_str("reason_code").unwrap(), *code);
        assert!(r.get_str("reason").unwrap().contains(says), "{dest}: {r:?}");
    }
    assert!(run.stderr.contains("artifacts/jobs/folder.json") && run.stderr.contains("a directory"), "{}", run.stderr);
    assert!(
        run.stderr.contains("artifacts/jobs/big.json") && run.stderr.contains("--max-file-bytes"),
        "{}",
        run.stderr
    );
    assert_eq!(p.snapshot(), before);
}

/// How many kill/restart rounds the random-kill tests run: a few by default,
/// many with DOCMIRROR_FAULT_ROUNDS (see RELIABILITY.md).
fn rounds() -> usize {
    std::env::var("DOCMIRROR_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

fn big_tree(users: usize, jobs: usize) -> Platform {
    let p = Platform::new();
    let list: Vec<_> =
        (0..users).map(|i| user(&format!("u{i:05}"), &format!("{i}@x.io"), "2025-10-01T00:00:00Z")).collect();
    p.users(&json!(list));
    p.datasets(&json!([dataset("d1", 1)]));
    for i in 0..jobs {
        p.job(&format!("j{i:05}"), &job(&format!("j{i:05}"), "queued", "2025-10-12T09:00:00.000Z"));
    }
    p
}

/// Conservation: verify finds nothing missing, extra or different.
async fn assert_exact(uri: &str, p: &Platform) {
    let run = docmirror_at(uri, p, &["verify"], &[]).await;
    assert_eq!(run.code, 0, "MongoDB does not hold exactly what the files hold:\n{}\n{}", run.stdout, run.stderr);
}

/// Stops (or freezes) and restarts a SecantusDB of its own (`OwnServer`), whatever MONGODB_URI says.
#[tokio::test(flavor = "multi_thread")]
async fn watch_waits_for_a_server_that_is_down_at_start() {
    let port = free_port();
    let uri = format!("mongodb://127.0.0.1:{port}/late");
    let p = big_tree(5, 5);
    let w = WatchProc::spawn(&uri, &p, &[]);
    eventually(30, "a retry line", || async { w.log_text().contains("MongoDB not available") }).await;
    let _server = OwnServer::on_port(port);
    w.wait_ready().await;
    p.job("j-new", &job("j-new", "queued", "2025-10-12T09:00:00.000Z"));
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let jobs = client.database("late").collection::<bson::Document>("training_jobs");
    eventually(30, "a change after start-up", || async { jobs.count_documents(bson::doc! {}).await.unwrap_or(0) == 6 })
        .await;
    let log = w.stop().await;
    assert!(!log.contains("ERROR"), "{log}");
    assert_exact(&uri, &p).await;
}

/// Stops (or freezes) and restarts a SecantusDB of its own (`OwnServer`), whatever MONGODB_URI says.
#[tokio::test(flavor = "multi_thread")]
async fn server_killed_in_the_middle_of_a_sync_then_rerun_is_exact() {
    let mut server = OwnServer::start();
    let uri = server.uri("killed");
    let p = big_tree(3000, 200);
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let users = client.database("killed").collection::<bson::Document>("users");
    let sync = {
        let uri = uri.clone();
        let data = p.data();
        let artifacts = p.artifacts();
        tokio::spawn(async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
                .args(["sync", "--batch-size", "100", "--mongodb-timeout", "3"])
                .env("MONGODB_URI", uri)
                .env("DOCMIRROR_DATA_DIR", data)
                .env("DOCMIRROR_ARTIFACTS_DIR", artifacts)
                .output()
                .await
                .unwrap()
        })
    };
    eventually(60, "the sync to be writing", || async { users.count_documents(bson::doc! {}).await.unwrap_or(0) > 0 })
        .await;
    server.kill();
    let out = sync.await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    server.restart();
    let run = docmirror_at(&uri, &p, &["sync"], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(users.count_documents(bson::doc! {}).await.unwrap(), 3000, "no duplicates, nothing missing");
    assert_exact(&uri, &p).await;
}

/// Stops (or freezes) and restarts a SecantusDB of its own (`OwnServer`), whatever MONGODB_URI says.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_server_during_watch_times_out_retries_and_converges() {
    let server = OwnServer::start();
    let uri = server.uri("frozen");
    let p = big_tree(3, 3);
    let w = WatchProc::start(&uri, &p, &["--operation-timeout-secs", "2"]).await;
    server.signal("-STOP");
    for i in 0..5 {
        p.job(&format!("f{i}"), &job(&format!("f{i}"), "queued", "2025-10-12T09:00:00.000Z"));
    }
    eventually(30, "the daemon notices", || async {
        let log = w.log_text();
        log.contains("did not answer in time") || log.contains("MongoDB not available")
    })
    .await;
    server.signal("-CONT");
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let jobs = client.database("frozen").collection::<bson::Document>("training_jobs");
    eventually(60, "convergence after the freeze", || async {
        jobs.count_documents(bson::doc! {}).await.unwrap_or(0) == 8
    })
    .await;
    p.job("after", &job("after", "queued", "2025-10-12T09:00:00.000Z"));
    eventually(30, "liveness: a new change", || async { jobs.count_documents(bson::doc! {}).await.unwrap_or(0) == 9 })
        .await;
    w.stop().await;
    assert_exact(&uri, &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docmirror_killed_at_random_moments_then_restarted_is_exact() {
    let db = TestDb::new("random_kills").await;
    let p = big_tree(800, 100);
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let users = db.db.collection::<Document>("users");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut mid_write = 0;
    for round in 0..rounds() {
        // Every user changes each round: 800 updates in batches of 50 to interrupt.
        let name = format!("round {round}");
        let list: Vec<_> = (0..800)
            .map(|i| {
                let mut u = user(&format!("u{i:05}"), &format!("{i}@x.io"), "2025-10-01T00:00:00Z");
                u["name"] = json!(name);
                u
            })
            .collect();
        p.users(&json!(list));
        let mut child = if round % 2 == 0 {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
                .args(["sync", "--batch-size", "50", "--chunk-records", "100"])
                .env("MONGODB_URI", db.uri())
                .env("DOCMIRROR_DATA_DIR", p.data())
                .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        } else {
            WatchProc::spawn(&db.uri(), &p, &["--batch-size", "50", "--chunk-records", "100"]).child
        };
        // Kill once the round's writes have begun and before they end, a
        // random few milliseconds in: the database then holds part of them
        // (that is how we know the kill landed mid-write).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut written = 0;
        while std::time::Instant::now() < deadline {
            written = users.count_documents(doc! {"name": &name}).await.unwrap();
            if written > 0 || child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(next() % 30)).await;
        let _ = child.kill().await;
        let at_kill = users.count_documents(doc! {"name": &name}).await.unwrap();
        if (1..800).contains(&at_kill) && written < 800 {
            mid_write += 1;
        }
    }
    eprintln!("random kills: {mid_write} of {} rounds killed mid-write", rounds());
    assert!(mid_write * 2 >= rounds(), "most kills must land mid-write: {mid_write} of {}", rounds());
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.count("users").await, 800);
    assert_eq!(db.count("training_jobs").await, 100);
    assert_exact(&db.uri(), &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_that_overflows_the_event_queue_leads_to_a_rescan() {
    let db = TestDb::new("burst").await;
    let p = big_tree(1, 0);
    // A tiny queue makes the overflow certain; the kernel's own overflow
    // (IN_Q_OVERFLOW) takes the same path (unit-tested in watch::events).
    let w = WatchProc::start(&db.uri(), &p, &["--event-queue-capacity", "16"]).await;
    let n = std::env::var("DOCMIRROR_BURST_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000usize);
    for i in 0..n {
        p.job(&format!("b{i:05}"), &job(&format!("b{i:05}"), "queued", "2025-10-12T09:00:00.000Z"));
    }
    eventually(120, "every file of the burst", || async {
        db.count("training_jobs").await == u64::try_from(n).unwrap()
    })
    .await;
    let log = w.stop().await;
    assert!(log.contains("Full rescan") && log.contains("event queue overflow"), "the rescan is announced: {log}");
    assert_exact(&db.uri(), &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_initial_reconcile_stops_without_waiting_for_all_the_bcrypt_work() {
    let db = TestDb::new("fault_sigterm_bcrypt").await;
    let p = Platform::new();
    // 2,000 plaintext passwords in one chunk: about a minute of bcrypt on two cores.
    let users: Vec<serde_json::Value> = (0..2000)
        .map(|i| {
            let mut u = user(&format!("u{i}"), &format!("{i}@x.io"), "2025-10-01T00:00:00Z");
            u["password"] = serde_json::json!(format!("plain-{i}"));
            u
        })
        .collect();
    p.users(&serde_json::json!(users));
    let w = WatchProc::spawn(&db.uri(), &p, &["--chunk-records", "2000", "--shutdown-timeout-secs", "2"]);
    eventually(30, "watch connected", || async { w.log_text().contains("Connected to MongoDB") }).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut w = w;
    let pid = w.child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // The bcrypt work stops at its next item; the writes in flight get 2 s.
    let exit = tokio::time::timeout(std::time::Duration::from_secs(15), w.child.wait())
        .await
        .expect("watch did not stop within its shutdown timeout (it waited for all the bcrypt work)")
        .unwrap();
    let log = w.log_text();
    assert_eq!(exit.code(), Some(0), "{log}");
    assert!(log.contains("Stopped"), "{log}");
    assert_no_secrets(&log);
}
