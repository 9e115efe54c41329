//! Running as a service: systemd notifications and credentials.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_watchdog_status_and_stopping() {
    let db = TestDb::new("sd_notify").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
        .args(["--log-format", "json", "watch", "--debounce-ms", "50"])
        .env("MONGODB_URI", db.uri())
        .env("DOCMIRROR_DATA_DIR", p.data())
        .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    let mut seen = String::new();
    let mut recv_until = |needle: &str, secs: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            assert!(std::time::Instant::now() < deadline, "no {needle:?} from docmirror; got {seen:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    recv_until("READY=1", 60);
    assert!(db.doc("users", "u1").await.is_some(), "READY comes after the first full reconcile");
    recv_until("WATCHDOG=1", 10);
    recv_until("STATUS=watching 2 folders", 10);
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    recv_until("STOPPING=1", 20);
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_uri_can_come_from_a_systemd_credential() {
    let db = TestDb::new("credential").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("mongodb-uri"), format!("{}\n", db.uri())).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
        .args(["sync"])
        .env_remove("MONGODB_URI")
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .env("DOCMIRROR_DATA_DIR", p.data())
        .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(db.doc("users", "u1").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_readiness_and_status_tell_the_truth() {
    let db = TestDb::new("metrics").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), user("u2", "b@x.io", "2025-10-01T00:00:00Z")]));
    p.job("j1", &job("j1", "queued", "2025-10-12T09:00:00.000Z"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let w = WatchProc::start(&db.uri(), &p, &["--metrics-addr", &addr]).await;
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    assert_eq!(http_get(port, "/readyz").await, (200, "ready\n".to_string()));
    let (code, m) = http_get(port, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "docmirror_records_read_total{collection=\"users\"} 2",
        "docmirror_records_inserted_total{collection=\"users\"} 2",
        "docmirror_records_inserted_total{collection=\"training_jobs\"} 1",
        "docmirror_mongodb_up 1",
        "docmirror_ready 1",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    assert!(m.contains("docmirror_write_batch_seconds_count"), "{m}");
    assert_eq!(http_get(port, "/nope").await.0, 404);

    p.job("j1", &job("j1", "running", "2025-10-12T09:01:00.000Z"));
    eventually(20, "the update counted", || async {
        http_get(port, "/metrics")
            .await
            .1
            .lines()
            .any(|l| l == "docmirror_records_updated_total{collection=\"training_jobs\"} 1")
    })
    .await;
    // mirror_state records the change; `status` shows it.
    eventually(20, "mirror_state has the change", || async {
        db.doc("mirror_state", "docmirror")
            .await
            .is_some_and(|d| d.get_document("last_change").is_ok_and(|l| l.contains_key("training_jobs")))
    })
    .await;
    let run = docmirror(&db, &p, &["status"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("last run:      watch"), "{}", run.stdout);
    assert!(run.stdout.contains("last change:   training_jobs"), "{}", run.stdout);
    assert!(run.stdout.contains("documents:     users 2, datasets 0, training_jobs 1"), "{}", run.stdout);
    let run = docmirror(&db, &p, &["status", "--format", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["last_full_reconcile"]["inserted"], 3);
    assert_eq!(v["mode"], "watch");
    w.stop().await;
}

async fn status_json(db: &TestDb, p: &Platform) -> serde_json::Value {
    let run = docmirror(db, p, &["status", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_tells_the_truth_while_watch_runs() {
    let db = TestDb::new("state_live").await;
    let p = Platform::new();
    let good = json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]);
    p.users(&good);
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    eventually(20, "status: watch running, no rejects", || async {
        let v = status_json(&db, &p).await;
        v["watch"]["state"] == "running" && v["rejects"] == 0 && v["watch"]["pending_files"] == 0
    })
    .await;
    // Two rejects found by watch (a duplicate email, a record without id) show at once,
    // not at the next full reconcile.
    p.users(&json!([
        user("u1", "a@x.io", "2025-10-01T00:00:00Z"),
        user("u2", "a@x.io", "2025-10-02T00:00:00Z"),
        {"email": "c@x.io"}
    ]));
    eventually(20, "status: 2 rejects", || async { status_json(&db, &p).await["rejects"] == 2 }).await;
    let before_fix = bson::DateTime::now();
    p.users(&good);
    eventually(20, "status: rejects cleared", || async { status_json(&db, &p).await["rejects"] == 0 }).await;
    // The last change is when it was applied (not when the state was saved next).
    let v = status_json(&db, &p).await;
    assert!(v["last_change"]["users"].is_null(), "nothing was written to users in the fix: {v}");
    p.users(&json!([user("u1", "new@x.io", "2025-10-03T00:00:00Z")]));
    eventually(20, "status: the email change", || async {
        status_json(&db, &p).await["last_change"]["users"]["$date"].as_str().is_some()
    })
    .await;
    let at = status_json(&db, &p).await["last_change"]["users"]["$date"].as_str().unwrap().to_string();
    let at = bson::DateTime::parse_rfc3339_str(&at).unwrap();
    let doc = db.doc("users", "u1").await.unwrap();
    let written = *doc.get_document("_mirror").unwrap().get_datetime("at").unwrap();
    assert!(at >= before_fix && at.timestamp_millis() - written.timestamp_millis() < 1000, "{at} vs {written}");
    w.stop().await;
    let v = status_json(&db, &p).await;
    assert_eq!(v["watch"]["state"], "stopped", "{v}");
    let run = docmirror(&db, &p, &["status"]).await;
    assert!(run.stdout.contains("watch:         stopped"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_stays_503_until_mongodb_answers() {
    let p = Platform::new();
    let port = free_port();
    let dead = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
        .args(["watch", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("MONGODB_URI", format!("mongodb://127.0.0.1:{dead}/x?serverSelectionTimeoutMS=200"))
        .env("DOCMIRROR_DATA_DIR", p.data())
        .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(20, "/healthz answers", || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() })
        .await;
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    assert_eq!(http_get(port, "/readyz").await.0, 503);
    assert!(http_get(port, "/metrics").await.1.lines().any(|l| l == "docmirror_ready 0"));
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_records_its_run_in_mirror_state() {
    let db = TestDb::new("state_sync").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let run = docmirror(&db, &p, &["status"]).await;
    assert_eq!(run.code, 1, "no state yet: {run:?}");
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let run = docmirror(&db, &p, &["status"]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("by sync") && run.stdout.contains("inserted 1"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_and_flags_agree() {
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), user("u2", "b@x.io", "2025-10-01T00:00:00Z")]));
    p.job("j1", &job("j1", "queued", "2025-10-12T09:00:00.000Z"));
    let by_flags = TestDb::new("cfg_flags").await;
    let by_file = TestDb::new("cfg_file").await;
    let flags = ["--database", &by_flags.name, "--batch-size", "1", "--write-mode", "commands", "--on-delete", "keep"];
    let run = docmirror_env(&by_flags, &p, &[&["sync"], &flags[..]].concat(), &[]).await;
    assert_eq!(run.code, 0, "{run:?}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("docmirror.toml");
    std::fs::write(
        &cfg,
        format!(
            "data-dir = {:?}\nartifacts_dir = {:?}\nmongodb-uri = {:?}\nlog-format = \"json\"\n[sync]\nbatch-size = 1\nwrite-mode = \"commands\"\non-delete = \"keep\"\n",
            p.data(), p.artifacts(), by_file.uri()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
        .args(["--config", cfg_s, "sync"])
        .env_remove("MONGODB_URI")
        .env_remove("DOCMIRROR_DATA_DIR")
        .env_remove("DOCMIRROR_ARTIFACTS_DIR")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("\"write_mode\":\"Commands\""), "config values were applied: {stderr}");
    let strip = |docs: Vec<bson::Document>| -> Vec<bson::Document> {
        docs.into_iter()
            .map(|mut d| {
                d.remove("_mirror");
                d
            })
            .collect()
    };
    for coll in ["users", "datasets", "training_jobs"] {
        assert_eq!(strip(by_flags.docs(coll).await), strip(by_file.docs(coll).await), "{coll}");
    }
    assert_eq!(by_file.count("users").await, 2);

    // A flag beats the file; an unknown key is refused with the usage exit code.
    std::fs::write(&cfg, "data-dir = \"/nonexistent\"\nartifacts-dir = \"/nonexistent2\"\n").unwrap();
    let run = docmirror(&by_file, &p, &["--config", cfg_s, "sync", "--data-dir", p.data().to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    std::fs::write(&cfg, "data-dir = \"/x\"\ncolour = \"blue\"\n").unwrap();
    let run = docmirror(&by_file, &p, &["--config", cfg_s, "sync"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("colour"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_man_page_come_from_the_cli_definition() {
    for (args, needle) in [
        (&["completions", "bash"][..], "watch"),
        (&["completions", "zsh"][..], "--debounce-ms"),
        (&["man"][..], ".TH docmirror"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror")).args(args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains(needle), "{args:?}");
    }
}
