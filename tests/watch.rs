//! `docmirror watch` against a real server: every kind of writer, deletes,
//! new folders, restarts and a server that goes away. Tests wait on
//! conditions with deadlines, never on sleeps alone.

use bson::Document;
use serde_json::json;

use crate::support::*;

async fn field(db: &TestDb, coll: &str, id: &str, f: &str) -> Option<String> {
    db.doc(coll, id)
        .await
        .and_then(|d| d.get(f).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
}

async fn wait_field(db: &TestDb, coll: &str, id: &str, f: &str, want: &str) {
    eventually(20, &format!("{coll}/{id}.{f} == {want:?}"), || async {
        field(db, coll, id, f).await.as_deref() == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mass_delete_guard_adds_up_deletes_over_its_window() {
    let db = TestDb::new("watch_delete_window").await;
    let p = Platform::new();
    for i in 0..40 {
        p.job(&format!("j{i:02}"), &job(&format!("j{i:02}"), "queued", "2025-10-12T09:00:00.000Z"));
    }
    let w = WatchProc::start(&db.uri(), &p, &["--on-delete", "delete"]).await;
    assert_eq!(db.count("training_jobs").await, 40);
    // `rm` of most of the folder, one file at a time: each change is small.
    for i in 0..36 {
        p.remove(&format!("artifacts/jobs/j{i:02}.json"));
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    p.job("marker", &job("marker", "queued", "2025-10-12T09:00:00.000Z"));
    wait_field(&db, "training_jobs", "marker", "status", "queued").await;
    eventually(20, "the guard held deletes back", || async { w.log_text().contains("Holding back deletes") }).await;
    let left = db.count("training_jobs").await;
    assert!((20..=25).contains(&left), "at most half of the 40 documents may go within the window; {left} left");
    // The operator says it is intended: SIGUSR1 releases them.
    let pid = i32::try_from(w.child.id().unwrap()).unwrap();
    // SAFETY: kill(2) with a valid pid and signal.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGUSR1);
    }
    eventually(20, "the held deletes applied", || async { db.count("training_jobs").await == 5 }).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_folder_created_after_start_is_followed() {
    let db = TestDb::new("watch_new_folder").await;
    let p = Platform::new();
    std::fs::remove_dir_all(p.path("artifacts")).unwrap();
    p.settle();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    // The artifacts folder, then jobs/, then files written at once: some land
    // before any watch exists on the new folders.
    std::fs::create_dir_all(p.path("artifacts/jobs")).unwrap();
    p.settle();
    for i in 0..20 {
        p.job(&format!("j{i}"), &job(&format!("j{i}"), "queued", "2025-10-12T09:00:00.000Z"));
    }
    eventually(30, "20 jobs mirrored", || async { db.count("training_jobs").await == 20 }).await;
    // And later changes in the new folder are events like any other.
    p.job("j0", &job("j0", "running", "2025-10-12T09:01:00.000Z"));
    wait_field(&db, "training_jobs", "j0", "status", "running").await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_folder_replaced_under_its_name_is_watched_again() {
    let db = TestDb::new("watch_folder_replaced").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    // A deploy that swaps the whole folder: a new one is prepared, the old one
    // moved aside and the new one renamed into its place.
    let staged = p.path("data.new");
    std::fs::create_dir_all(staged.join("datasets")).unwrap();
    let users = json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), user("u2", "b@x.io", "2025-10-02T00:00:00Z")]);
    std::fs::write(staged.join("users.json"), serde_json::to_vec_pretty(&users).unwrap()).unwrap();
    std::fs::rename(p.data(), p.path("data.old")).unwrap();
    std::fs::rename(&staged, p.data()).unwrap();
    p.settle();
    eventually(20, "u2 from the new folder", || async { db.doc("users", "u2").await.is_some() }).await;
    // Changes in the new folder are followed (the old watch follows the old folder).
    p.users(&json!([
        user("u1", "a@x.io", "2025-10-01T00:00:00Z"),
        user("u2", "b@x.io", "2025-10-02T00:00:00Z"),
        user("u3", "c@x.io", "2025-10-03T00:00:00Z")
    ]));
    eventually(20, "u3 written into the new folder", || async { db.doc("users", "u3").await.is_some() }).await;
    // And a change to the folder moved aside is not a change of the platform.
    std::fs::write(p.path("data.old/users.json"), b"[]").unwrap();
    p.settle();
    w.stop().await;
    assert_eq!(db.count("users").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_restored_byte_for_byte_clears_its_reject() {
    let db = TestDb::new("watch_restored").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let good = std::fs::read(p.path("data/users.json")).unwrap();
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    p.write("data/users.json", b"[{\"id\": \"u1\", ");
    eventually(30, "the broken file is reported", || async {
        db.rejects().await.iter().any(|r| r.get_str("reason_code") == Ok("invalid_json"))
    })
    .await;
    // The original bytes come back (a restore from a backup, an editor's undo).
    p.write("data/users.json", &good);
    eventually(20, "the reject is cleared", || async { db.rejects().await.is_empty() }).await;
    w.stop().await;
    assert_eq!(docmirror(&db, &p, &["verify"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_catches_up_on_changes_made_while_down() {
    let db = TestDb::new("watch_restart").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    p.job("j1", &job("j1", "queued", "2025-10-12T09:00:00.000Z"));
    p.job("j2", &job("j2", "queued", "2025-10-12T09:00:00.000Z"));
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    w.stop().await;
    // While it is down: a change, a new file and a deleted one.
    p.job("j1", &job("j1", "completed", "2025-10-12T10:00:00.000Z"));
    p.job("j3", &job("j3", "queued", "2025-10-12T10:00:00.000Z"));
    p.remove("artifacts/jobs/j2.json");
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    assert_eq!(field(&db, "training_jobs", "j1", "status").await.as_deref(), Some("completed"));
    assert!(db.doc("training_jobs", "j3").await.is_some());
    assert!(db.doc("training_jobs", "j2").await.is_none());
    w.stop().await;
    let run = docmirror(&db, &p, &["verify"]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_mode_sees_changes_too() {
    let db = TestDb::new("watch_poll").await;
    let p = Platform::new();
    p.job("j1", &job("j1", "queued", "2025-10-12T09:00:00.000Z"));
    let w = WatchProc::start(&db.uri(), &p, &["--poll-interval-ms", "100"]).await;
    // Same size, same second: only size+inode+nanosecond mtime reveal it.
    p.job("j1", &job("j1", "failed", "2025-10-12T09:00:00.000Z"));
    wait_field(&db, "training_jobs", "j1", "status", "failed").await;
    p.job("j2", &job("j2", "queued", "2025-10-12T09:00:00.000Z"));
    wait_field(&db, "training_jobs", "j2", "status", "queued").await;
    p.remove("artifacts/jobs/j2.json");
    eventually(20, "j2 archived", || async { db.doc("training_jobs", "j2").await.is_none() }).await;
    w.stop().await;
}

/// Stops (or freezes) and restarts a SecantusDB of its own (`OwnServer`), whatever MONGODB_URI says.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_lost_while_the_server_is_down() {
    let mut server = OwnServer::start();
    let uri = server.uri("outage");
    let p = Platform::new();
    p.job("j0", &job("j0", "queued", "2025-10-12T09:00:00.000Z"));
    let w = WatchProc::start(&uri, &p, &["--rescan-interval-secs", "3600"]).await;
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let coll = client.database("outage").collection::<Document>("training_jobs");

    server.kill();
    // Changes keep coming while MongoDB is away; one file changes many times.
    for i in 1..=10 {
        p.job(&format!("j{i}"), &job(&format!("j{i}"), "queued", "2025-10-12T09:00:00.000Z"));
    }
    for step in 0..5 {
        let mut j = job("j0", "running", &format!("2025-10-12T09:0{step}:00.000Z"));
        j["step"] = json!(step);
        p.job("j0", &j);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eventually(30, "the daemon notices the outage", || async {
        let log = w.log_text();
        log.contains("MongoDB not available") || log.contains("Reconcile failed")
    })
    .await;
    server.restart();
    eventually(60, "all changes after the outage", || async {
        let n = coll.count_documents(bson::doc! {}).await.unwrap_or(0);
        let j0 = coll.find_one(bson::doc! {"_id": "j0"}).await.ok().flatten();
        n == 11 && j0.is_some_and(|d| d.get_i32("step").ok() == Some(4))
    })
    .await;
    let log = w.stop().await;
    // It says it recovered: a retried operation got through, or a failed
    // reconcile was followed by changes mirrored after it.
    let recovered = log.contains("MongoDB is reachable again")
        || log.rfind("Reconcile failed").is_some_and(|i| log[i..].contains("Mirrored change"));
    assert!(recovered, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_is_followed_record_by_record_and_stays_exact() {
    large_file_followed("watch_memo", &[]).await;
}

/// The same, with the file compared with its memo in a stream (as a file of
/// 8 MB or more is): the same documents, rejects and archive.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_compared_in_a_stream_is_followed_record_by_record_and_stays_exact() {
    let log = large_file_followed("watch_memo_stream", &[("DOCMIRROR_STREAM_FROM_BYTES", "0")]).await;
    let streamed = log.matches("Comparing a large file with its memo in a stream").count();
    assert!(streamed >= 5, "each change was compared in a stream ({streamed}): {log}");
}

/// Changes to users.json under watch: one record changed, one gone, the
/// file reordered, a record added, an email clash and its fix. The log.
async fn large_file_followed(name: &str, env: &[(&str, &str)]) -> String {
    let db = TestDb::new(name).await;
    let p = Platform::new();
    let mut users: Vec<_> =
        (0..50).map(|i| user(&format!("u{i:02}"), &format!("{i}@x.io"), "2025-10-01T00:00:00Z")).collect();
    p.users(&json!(users));
    let w = WatchProc::spawn_env(&db.uri(), &p, &[], env);
    w.wait_ready().await;
    // One record changes.
    users[10]["name"] = json!("ten");
    users[10]["updatedAt"] = json!("2025-10-02T00:00:00Z");
    p.write_by_rename("data/users.json", &serde_json::to_vec(&users).unwrap());
    wait_field(&db, "users", "u10", "name", "ten").await;
    // One record goes.
    users.remove(20);
    p.write_by_rename("data/users.json", &serde_json::to_vec(&users).unwrap());
    eventually(20, "u20 archived", || async { db.doc("users", "u20").await.is_none() }).await;
    // The same records in another order: nothing to write.
    let stamps = |docs: Vec<Document>| -> Vec<(String, bson::DateTime)> {
        docs.iter()
            .filter(|d| d.get_str("_id").unwrap() != "u99")
            .map(|d| {
                (d.get_str("_id").unwrap().to_string(), *d.get_document("_mirror").unwrap().get_datetime("at").unwrap())
            })
            .collect()
    };
    let before = stamps(db.docs("users").await);
    users.reverse();
    p.write_by_rename("data/users.json", &serde_json::to_vec(&users).unwrap());
    // A new record after them proves the reordered file was processed.
    users.push(user("u99", "99@x.io", "2025-10-01T00:00:00Z"));
    p.write_by_rename("data/users.json", &serde_json::to_vec(&users).unwrap());
    wait_field(&db, "users", "u99", "email", "99@x.io").await;
    assert_eq!(stamps(db.docs("users").await), before, "reordering rewrote documents: {}", w.log_text());
    // A record whose email now clashes with an earlier one is rejected, not mirrored.
    users[0]["email"] = users[1]["email"].clone();
    p.write_by_rename("data/users.json", &serde_json::to_vec(&users).unwrap());
    eventually(20, "the clash is recorded", || async {
        db.rejects().await.iter().any(|r| r.get_str("reason_code").unwrap() == "duplicate_email")
    })
    .await;
    users[0]["email"] = json!("fixed@x.io");
    p.write_by_rename("data/users.json", &serde_json::to_vec(&users).unwrap());
    eventually(20, "the clash is cleared", || async { db.rejects().await.is_empty() }).await;
    let log = w.log_text();
    w.stop().await;
    let run = docmirror(&db, &p, &["verify"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    log
}

/// The memo of one source survives the reconcile of the others (a change
/// right after the initial sync maps one record, not the file); a memoised
/// record still loses its email to a new record placed before it; a rewrite
/// with the same bytes is not read further.
#[tokio::test(flavor = "multi_thread")]
async fn memo_keeps_every_source_and_file_order() {
    let db = TestDb::new("watch_memo_order").await;
    let p = Platform::new();
    let mut users: Vec<_> =
        (0..30).map(|i| user(&format!("u{i:02}"), &format!("{i}@x.io"), "2025-10-01T00:00:00Z")).collect();
    p.users(&json!(users));
    p.datasets(&json!([dataset("d1", 12)]));
    p.job("j1", &job("j1", "queued", "2025-10-12T09:00:00.000Z"));
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    let scans = |log: &str| -> Vec<String> {
        log.lines().filter(|l| l.contains("Scanned") && l.contains("source=users")).map(str::to_string).collect()
    };
    // The first change after the initial reconcile is read through the memo:
    // one record mapped, not thirty. A full rescan that something else asks
    // for meanwhile (a shared test server may lose the change stream's
    // position) reads the file whole and leaves no such line; the change is
    // then made again, on another record, at most three times.
    let mut attempts = 0;
    let first_change = loop {
        attempts += 1;
        let k = 2 + attempts;
        let name = format!("changed {k}");
        let before = w.log_text().len();
        users[k]["name"] = json!(name);
        users[k]["updatedAt"] = json!("2025-10-02T00:00:00Z");
        p.write_by_rename("data/users.json", &serde_json::to_vec_pretty(&users).unwrap());
        wait_field(&db, "users", &format!("u{k:02}"), "name", &name).await;
        let mut found = None;
        eventually(20, "the changed file's scan, or a full rescan, is logged", || {
            let log = w.log_text();
            let new = log.get(before..).unwrap_or_default().to_string();
            found = scans(&new).into_iter().find(|l| l.contains("unchanged="));
            let done = found.is_some() || new.contains("Full rescan");
            async move { done }
        })
        .await;
        // A scan that finds the file as already settled (identical) means
        // a full rescan read the change first, one that began before it.
        match found {
            Some(line) if line.contains("identical=0") => break line,
            _ if attempts < 3 => continue,
            _ => panic!("every change was read by a full rescan:\n{}", w.log_text()),
        }
    };
    assert!(first_change.contains("mapped=1 "), "the whole file was mapped again: {first_change}\n{}", w.log_text());

    // A new first record takes u05's email: u05 (unchanged, memoised) is now the duplicate.
    let mut with_new = users.clone();
    with_new.insert(0, user("u99", "5@x.io", "2025-10-03T00:00:00Z"));
    p.write_by_rename("data/users.json", &serde_json::to_vec_pretty(&with_new).unwrap());
    eventually(20, "u05 rejected as the later holder of 5@x.io", || async {
        db.rejects().await.iter().any(|r| {
            r.get_str("reason_code").unwrap() == "duplicate_email" && r.get_str("record_id").ok() == Some("u05")
        })
    })
    .await;

    // Back to the earlier file, then the same bytes again.
    p.write_by_rename("data/users.json", &serde_json::to_vec_pretty(&users).unwrap());
    eventually(20, "the clash is cleared", || async { db.rejects().await.is_empty() }).await;
    // (Rewritten again should a full rescan read it instead.)
    let bytes = serde_json::to_vec_pretty(&users).unwrap();
    let mut before = w.log_text().len();
    p.write_by_rename("data/users.json", &bytes);
    eventually(60, "an identical rewrite is recognised", || {
        let log = w.log_text();
        let new = log.get(before..).unwrap_or_default();
        let seen = scans(new).iter().any(|l| l.contains("identical=1"));
        if !seen && new.contains("Full rescan") {
            before = log.len();
            p.write_by_rename("data/users.json", &bytes);
        }
        async move { seen }
    })
    .await;
    w.stop().await;
    let run = docmirror(&db, &p, &["verify"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
}

/// watch writes from its picture, without reading the document: its filter
/// asks for a date not newer than the file's. What the app stored meanwhile
/// (no version, an older one, a newer one) is read then and decided as a
/// full reconcile would.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_changed_in_mongodb_under_watch_is_read_before_it_is_overwritten() {
    // A server without change streams: nothing tells watch of the app's writes.
    let server = OwnServer::start_with(free_port(), &["--standalone"]);
    let db = TestDb::at(&server.uri(""), "watch_version_race").await;
    let p = Platform::new();
    let base = "2025-10-01T00:00:00.000Z";
    p.users(&json!([user("u1", "a@x.io", base), user("u2", "b@x.io", base), user("u3", "c@x.io", base)]));
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    let users = db.db.collection::<Document>("users");
    let newer = bson::DateTime::parse_rfc3339_str("2025-12-01T00:00:00Z").unwrap();
    // u1: the app removed the version; u2: the app wrote a newer one; u3: the app's string.
    users.update_one(bson::doc! { "_id": "u1" }, bson::doc! { "$unset": { "updatedAt": "" } }).await.unwrap();
    users
        .update_one(bson::doc! { "_id": "u2" }, bson::doc! { "$set": { "updatedAt": newer, "name": "App" } })
        .await
        .unwrap();
    users.update_one(bson::doc! { "_id": "u3" }, bson::doc! { "$set": { "updatedAt": "not a time" } }).await.unwrap();
    let edited = |id: &str, email: &str| {
        let mut u = user(id, email, "2025-11-01T00:00:00.000Z");
        u["name"] = json!("File");
        u
    };
    p.users(&json!([edited("u1", "a@x.io"), edited("u2", "b@x.io"), edited("u3", "c@x.io")]));
    wait_field(&db, "users", "u1", "name", "File").await;
    eventually(20, "u3's uncomparable version rejected", || async {
        db.rejects().await.iter().any(|r| r.get_str("record_id").ok() == Some("u3"))
    })
    .await;
    assert_eq!(field(&db, "users", "u2", "name").await.as_deref(), Some("App"), "the newer document stays");
    assert_eq!(field(&db, "users", "u3", "updatedAt").await.as_deref(), Some("not a time"));
    let u1 = db.doc("users", "u1").await.unwrap();
    assert!(u1.get_datetime("updatedAt").is_ok(), "u1 has the file's version again: {u1}");
    w.stop().await;
}
