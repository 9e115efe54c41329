//! The behaviour suite shared by both targets, part two: watch, status,
//! export and cutover, each run once against MongoDB and once against
//! PostgreSQL (`behaviour_ops::{mongodb,postgres}::NAME`).

use serde_json::{json, Value};

use crate::support::*;
use crate::support_targets::{Db, Kind};

crate::for_each_target!(
    watch_follows_every_kind_of_writer,
    watch_archives_removed_records_and_holds_mass_deletes,
    status_tells_the_truth_while_watch_runs,
    sync_records_its_run_in_mirror_state,
    an_export_gives_back_the_records_and_a_sync_of_it_writes_nothing,
    a_clean_cutover_is_recorded_and_then_sync_and_watch_refuse,
);

const T: &str = "2025-10-01T08:30:00.123Z";

/// A job of nobody in particular (no user or dataset it must wait for on PostgreSQL).
fn free_job(id: &str, status: &str, updated: &str) -> Value {
    let mut j = job(id, status, updated);
    j["user_id"] = json!(null);
    j["dataset_id"] = json!(null);
    j
}

async fn wait_field(db: &Db, coll: &str, id: &str, f: &str, want: &str) {
    eventually(20, &format!("{coll}/{id}.{f} == {want:?}"), || async {
        db.get(coll, id, f).await.as_deref() == Some(want)
    })
    .await;
}

async fn watch_follows_every_kind_of_writer(kind: Kind) {
    let db = Db::new(kind, "watch_writers").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    p.job("j1", &free_job("j1", "queued", "2025-10-12T09:00:00.000Z"));
    let before_extra = p.snapshot().len();
    let w = db.watch(&p, &[]).await;
    assert!(db.get("training_jobs", "j1", "status").await.is_some(), "initial reconcile");
    // Create.
    p.job("j2", &free_job("j2", "queued", "2025-10-12T09:00:00.000Z"));
    wait_field(&db, "training_jobs", "j2", "status", "queued").await;
    // Modify in place.
    p.job("j2", &free_job("j2", "running", "2025-10-12T09:01:00.000Z"));
    wait_field(&db, "training_jobs", "j2", "status", "running").await;
    // Rename over (write x.json.tmp, rename to x.json).
    let done = serde_json::to_vec(&free_job("j2", "completed", "2025-10-12T09:02:00.000Z")).unwrap();
    write_by_rename(&p.path("artifacts/jobs/j2.json"), &done);
    p.settle();
    wait_field(&db, "training_jobs", "j2", "status", "completed").await;
    // Truncate, then write.
    {
        use std::io::Write;
        let mut f =
            std::fs::OpenOptions::new().write(true).truncate(true).open(p.path("artifacts/jobs/j1.json")).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        f.write_all(&serde_json::to_vec(&free_job("j1", "failed", "2025-10-12T09:03:00.000Z")).unwrap()).unwrap();
    }
    p.settle();
    wait_field(&db, "training_jobs", "j1", "status", "failed").await;
    // Half-written, completed later, in two chunks.
    let text = serde_json::to_string(&free_job("j3", "running", "2025-10-12T09:04:00.000Z")).unwrap();
    let (a, b) = text.split_at(text.len() / 2);
    p.write("artifacts/jobs/j3.json", a);
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(p.path("artifacts/jobs/j3.json")).unwrap();
        f.write_all(b.as_bytes()).unwrap();
    }
    p.settle();
    wait_field(&db, "training_jobs", "j3", "status", "running").await;
    // users.json rewritten by rename with one user changed and one added.
    let mut u1 = user("u1", "a@x.io", "2025-10-02T00:00:00Z");
    u1["name"] = json!("Renamed");
    let users = serde_json::to_vec(&json!([u1, user("u2", "b@x.io", "2025-10-01T00:00:00Z")])).unwrap();
    p.write_by_rename("data/users.json", &users);
    wait_field(&db, "users", "u1", "name", "Renamed").await;
    wait_field(&db, "users", "u2", "email", "b@x.io").await;
    // Delete a job file: archived.
    p.remove("artifacts/jobs/j2.json");
    eventually(20, "j2 archived", || async { db.get("training_jobs", "j2", "status").await.is_none() }).await;
    assert_eq!(db.archived("training_jobs", "status").await, [("j2".to_string(), "completed".to_string())]);
    // Non-JSON files and temp files are ignored.
    p.write("artifacts/jobs/j1.log", "epoch 1 loss 0.5\n");
    p.write("artifacts/jobs/j9.json.tmp", "{ not yet");
    p.write("artifacts/checkpoints/model.bin", [0u8, 1, 2]);
    p.write("data/datasets/ds1/upload.csv", "a,b\n1,2\n");
    p.write("artifacts/jobs/.j8.json.swp", "x");
    // A change after them proves the daemon got past them.
    p.job("j4", &free_job("j4", "queued", "2025-10-12T09:05:00.000Z"));
    wait_field(&db, "training_jobs", "j4", "status", "queued").await;
    assert_eq!(db.ids("training_jobs").await, ["j1", "j3", "j4"]);
    assert!(db.rejects().await.is_empty(), "the half-written file was not reported: {:?}", db.rejects().await);
    let log = w.stop().await;
    assert!(log.contains("Mirrored change") && log.contains("artifacts/jobs/j4.json"), "{log}");
    assert!(!log.contains("upload.csv") && !log.contains("model.bin"), "ignored files are not even logged: {log}");
    assert!(p.snapshot().len() > before_extra);
}

async fn watch_archives_removed_records_and_holds_mass_deletes(kind: Kind) {
    let db = Db::new(kind, "watch_deletes").await;
    let p = Platform::new();
    let users: Vec<_> = (0..4).map(|i| user(&format!("u{i}"), &format!("{i}@x.io"), "2025-10-01T00:00:00Z")).collect();
    p.users(&json!(users));
    let w = db.watch(&p, &[]).await;
    assert_eq!(db.count("users").await, 4);
    p.write_by_rename("data/users.json", &serde_json::to_vec(&json!(users[1..])).unwrap());
    eventually(20, "u0 archived", || async { db.get("users", "u0", "id").await.is_none() }).await;
    assert_eq!(db.archived("users", "email").await, [("u0".to_string(), "0@x.io".to_string())]);
    // The file suddenly holds no records: nothing is deleted, and the log says why.
    p.write_by_rename("data/users.json", b"[]");
    eventually(20, "the mass-delete guard", || async { w.log_text().contains("Holding back deletes") }).await;
    assert_eq!(db.count("users").await, 3);
    // The file vanishing as a whole is treated the same way.
    p.remove("data/users.json");
    p.job("j1", &free_job("j1", "queued", "2025-10-12T09:00:00.000Z"));
    wait_field(&db, "training_jobs", "j1", "status", "queued").await;
    assert_eq!(db.count("users").await, 3);
    let log = w.stop().await;
    assert!(log.contains("--allow-mass-delete"), "{log}");
}

async fn status_json(db: &Db, p: &Platform) -> Value {
    let run = db.run(p, &["status", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

async fn status_tells_the_truth_while_watch_runs(kind: Kind) {
    let db = Db::new(kind, "state_live").await;
    let p = Platform::new();
    let good = json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]);
    p.users(&good);
    let w = db.watch(&p, &[]).await;
    eventually(20, "status: watch running, no rejects", || async {
        let v = status_json(&db, &p).await;
        v["watch"]["state"] == "running" && v["rejects"] == 0 && v["watch"]["pending_files"] == 0
    })
    .await;
    // Two rejects found by watch (a duplicate email, a record without id) show at once.
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
    let written = db.written_at("users", "u1").await;
    assert!(at >= before_fix && at.timestamp_millis() - written.timestamp_millis() < 1000, "{at} vs {written}");
    w.stop().await;
    let v = status_json(&db, &p).await;
    assert_eq!(v["watch"]["state"], "stopped", "{v}");
    let run = db.run(&p, &["status"]).await;
    assert!(run.stdout.contains("watch:         stopped"), "{}", run.stdout);
}

async fn sync_records_its_run_in_mirror_state(kind: Kind) {
    let db = Db::new(kind, "state_sync").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let run = db.run(&p, &["status"]).await;
    assert_eq!(run.code, 1, "no state yet: {run:?}");
    assert!(run.stderr.contains("docmirror has not run against it yet"), "{}", run.stderr);
    assert_eq!(db.run(&p, &["sync"]).await.code, 0);
    let run = db.run(&p, &["status"]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("by sync") && run.stdout.contains("inserted 1"), "{}", run.stdout);
    assert!(run.stdout.contains("documents:     users 1, datasets 0, training_jobs 0"), "{}", run.stdout);
}

fn read(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

async fn an_export_gives_back_the_records_and_a_sync_of_it_writes_nothing(kind: Kind) {
    let db = Db::new(kind, "export_round_trip").await;
    let p = Platform::new();
    let users = json!([user("u2", "b@x.io", T), user("u1", "a@x.io", T)]);
    let datasets = json!([dataset("d1", 5_000_000_000), dataset("d2", 7)]);
    let mut j1 = job("j1", "running", T);
    j1["params"]["schedule"] = json!([0.1, 2, {"warmup": null}]);
    p.users(&users);
    p.datasets(&datasets);
    p.job("job_2025_j1", &j1);
    p.job("j2", &job("j2", "completed", T));
    assert_eq!(db.run(&p, &["sync"]).await.code, 0);

    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("export");
    let run = db.run(&p, &["export", "--out", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("export: 6 records into 4 files"), "{}", run.stdout);
    // Field by field what the files held, in the files' order (dates as toISOString()).
    assert_eq!(read(&dir.join("data/users.json")), users);
    assert_eq!(read(&dir.join("data/datasets/metadata.json")), datasets);
    assert_eq!(read(&dir.join("artifacts/jobs/job_2025_j1.json")), j1, "a job file keeps its name");
    assert_eq!(read(&dir.join("artifacts/jobs/j2.json")), job("j2", "completed", T));
    let text = std::fs::read_to_string(dir.join("data/users.json")).unwrap();
    assert!(text.starts_with("[\n  {\n    \"id\": \"u2\""), "two-space indentation, file order: {text}");

    // The round trip: the export, synced into the same database, writes nothing; verify passes.
    let from_export = |args: &[&str]| {
        let mut all = vec!["--data-dir".to_string(), dir.join("data").display().to_string()];
        all.extend(["--artifacts-dir".to_string(), dir.join("artifacts").display().to_string()]);
        all.extend(args.iter().map(|a| a.to_string()));
        all
    };
    let args = from_export(&["sync"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = db.run(&p, &args).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!((run.count("inserted"), run.count("updated"), run.count("archived")), (0, 0, 0), "{}", run.summary());
    let args = from_export(&["verify"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(db.run(&p, &args).await.code, 0);

    // Exporting again over it changes nothing; a non-empty folder needs --overwrite.
    let run = db.run(&p, &["export", "--out", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--overwrite"), "{}", run.stderr);
    let run = db.run(&p, &["export", "--out", dir.to_str().unwrap(), "--overwrite"]).await;
    assert!(run.stdout.contains("(written 0, unchanged 4)"), "{}", run.stdout);
}

async fn readiness(db: &Db, p: &Platform) -> Value {
    status_json(db, p).await["readiness"].clone()
}

async fn a_clean_cutover_is_recorded_and_then_sync_and_watch_refuse(kind: Kind) {
    let db = Db::new(kind, "cutover_done").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T), user("u2", "b@x.io", T)]));
    p.job("j1", &job("j1", "running", T));
    p.datasets(&json!([dataset("d1", 1)]));
    assert_eq!(db.run(&p, &["sync"]).await.code, 0);
    let r = readiness(&db, &p).await;
    assert_eq!((r["phase"].clone(), r["can_cut_over"].clone()), (json!("mirroring"), json!(true)), "{r}");
    let run = db.run(&p, &["cutover", "--quiet-secs", "0", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("\"in_sync\": true") && run.stdout.contains("cutover: recorded at"), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("{} is the truth from now on", db.name())), "{}", run.stdout);
    let state = db.state().await.unwrap();
    let cut = state.get_document("cutover").unwrap();
    let users = cut.get_document("documents").unwrap().get("users").and_then(docmirror::sink::bson_i64);
    assert_eq!(users, Some(2));
    assert_eq!(cut.get_str("verify_digest").unwrap().len(), 64);
    assert!(db.run(&p, &["status"]).await.stdout.contains("cutover:"), "status shows it");
    let r = readiness(&db, &p).await;
    assert_eq!((r["phase"].clone(), r["can_cut_over"].clone()), (json!("cut-over"), json!(false)), "{r}");
    // The files are no longer the truth.
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--after-cutover") && run.stderr.contains("export"), "{}", run.stderr);
    let mut w = db.spawn_watch(&p, &[]);
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), w.child.wait()).await.unwrap().unwrap();
    assert_eq!(exit.code(), Some(2), "{}", w.log_text());
    // Unless told explicitly.
    assert_eq!(db.run(&p, &["sync", "--after-cutover"]).await.code, 0);
    assert_eq!(db.run(&p, &["sync", "--dry-run"]).await.code, 0, "a dry run writes nothing");
}
