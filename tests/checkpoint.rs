//! Issue 14: a start from the checkpoint checks only what changed since,
//! gives the same result as a full reconcile, and falls back to one (saying
//! why) whenever the checkpoint proves nothing.

use bson::{doc, Bson};
use serde_json::json;

use crate::support::*;

const WARM: &str = "Started from the checkpoint";

fn tree() -> Platform {
    let p = Platform::new();
    p.users(&json!([
        user("u1", "a@example.com", "2025-10-01T00:00:00.000Z"),
        user("u2", "b@example.com", "2025-10-01T00:00:00.000Z"),
        user("u3", "c@example.com", "2025-10-01T00:00:00.000Z"),
    ]));
    p.datasets(&json!([dataset("d1", 10), dataset("d2", 20)]));
    for j in ["j1", "j2", "j3"] {
        p.job(j, &job(j, "running", "2025-10-12T09:00:00.000Z"));
    }
    p
}

/// The documents a run read from MongoDB, by collection (its last log line says).
fn documents_read(run: &Run) -> String {
    let line = run.stderr.lines().rev().find(|l| l.contains("Documents read from MongoDB")).unwrap_or_else(|| {
        panic!("no documents-read line in {}", run.stderr);
    });
    line.split("documents_read=").nth(1).unwrap_or("").to_string()
}

fn reads_of(run: &Run, collection: &str) -> u64 {
    documents_read(run)
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{collection}=")).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

async fn sync(db: &TestDb, p: &Platform, args: &[&str]) -> Run {
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    let run = docmirror(db, p, &all).await;
    assert!(run.code == 0, "{run:?}");
    run
}

/// What a full reconcile would still change: nothing, if the run before was right.
async fn assert_full_finds_nothing(db: &TestDb, p: &Platform) {
    let full = sync(db, p, &["--full"]).await;
    assert!(full.stderr.contains("reason=--full"), "{}", full.stderr);
    for what in ["inserted", "updated", "archived", "deleted", "rejected"] {
        assert_eq!(full.count(what), 0, "a full reconcile after the warm start still had work ({what}): {full:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resync_of_an_unchanged_tree_reads_no_collection_and_writes_nothing() {
    let db = TestDb::new("ckpt_unchanged").await;
    let p = tree();
    let first = sync(&db, &p, &[]).await;
    assert_eq!(first.count("inserted"), 8);
    assert!(first.stderr.contains("no checkpoint yet"), "{}", first.stderr);

    let again = sync(&db, &p, &[]).await;
    assert!(again.stderr.contains(WARM), "{}", again.stderr);
    assert_eq!(again.count("unchanged"), 8, "unchanged files count their records: {again:?}");
    assert_eq!(again.count("inserted") + again.count("updated") + again.count("deleted"), 0);
    for coll in ["users", "datasets", "training_jobs"] {
        assert_eq!(reads_of(&again, coll), 0, "{coll} was read: {}", documents_read(&again));
    }
    // The same run with --full reads every collection: the counter counts.
    let full = sync(&db, &p, &["--full"]).await;
    assert!(reads_of(&full, "users") >= 3, "{}", documents_read(&full));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_changed_while_nobody_watched_is_caught_up_as_a_full_reconcile_would() {
    let db = TestDb::new("ckpt_caught_up").await;
    let p = tree();
    sync(&db, &p, &[]).await;
    // The files change: one user edited, a job file gone, one new.
    p.users(&json!([
        user("u1", "a@example.com", "2025-10-01T00:00:00.000Z"),
        {"id": "u2", "email": "b@example.com", "name": "Renamed", "password": HASH_A, "role": "user",
         "createdAt": "2025-09-01T08:00:00.000Z", "updatedAt": "2025-11-01T00:00:00.000Z"},
        user("u3", "c@example.com", "2025-10-01T00:00:00.000Z"),
    ]));
    p.remove("artifacts/jobs/j2.json");
    p.job("j4", &job("j4", "queued", "2025-10-12T09:00:00.000Z"));
    // MongoDB changes too: a mirrored document deleted (its record is still
    // in the file), and a document of the app's own.
    let coll = db.db.collection::<bson::Document>("users");
    coll.delete_one(doc! { "_id": "u3" }).await.unwrap();
    let jobs = db.db.collection::<bson::Document>("training_jobs");
    jobs.insert_one(doc! { "_id": "app-only", "status": "queued" }).await.unwrap();

    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert_eq!(run.count("inserted"), 2, "j4 and the deleted u3: {run:?}");
    assert_eq!(run.count("updated"), 1, "{run:?}");
    assert_eq!(run.count("archived"), 1, "{run:?}");
    assert_eq!(db.doc("users", "u2").await.unwrap().get_str("name").unwrap(), "Renamed");
    assert!(db.doc("users", "u3").await.is_some(), "the document deleted in MongoDB is back");
    assert!(db.doc("training_jobs", "j2").await.is_none());
    assert!(db.doc("training_jobs", "app-only").await.is_some(), "the app's own document is left alone");
    assert_eq!(reads_of(&run, "users"), 2, "only the touched and changed users were read: {}", documents_read(&run));
    assert_full_finds_nothing(&db, &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_that_proves_nothing_gives_a_full_reconcile_and_says_why() {
    let db = TestDb::new("ckpt_fallbacks").await;
    let p = tree();
    sync(&db, &p, &[]).await;
    let heads = db.db.collection::<bson::Document>("mirror_checkpoint");
    let state = db.db.collection::<bson::Document>("mirror_state");
    let cases: Vec<(&str, bson::Document, &str)> = vec![
        ("mirror_checkpoint", doc! { "$set": { "fingerprint": "older" } }, "--on-delete changed since the checkpoint"),
        ("mirror_state", doc! { "$set": { "database_id": "elsewhere" } }, "another database"),
        ("mirror_checkpoint", doc! { "$set": { "token": { "_data": "00" } } }, "no longer resumes"),
    ];
    for (coll, update, reason) in cases {
        let target = if coll == "mirror_state" { &state } else { &heads };
        let filter = if coll == "mirror_state" {
            doc! {}
        } else {
            doc! { "_id": "head" }
        };
        target.update_one(filter, update).await.unwrap();
        // Something changed meanwhile, which the full reconcile must find.
        p.job("j1", &job("j1", "completed", &format!("2025-10-13T09:00:0{}.000Z", reason.len() % 10)));
        let run = sync(&db, &p, &[]).await;
        assert!(run.stderr.contains("Full reconcile") && run.stderr.contains(reason), "{reason}: {}", run.stderr);
        assert!(!run.stderr.contains(WARM), "{}", run.stderr);
        assert_eq!(run.count("updated"), 1, "{run:?}");
        assert!(!run.stderr.contains("fence"), "{reason}: {}", run.stderr);
        // It stored a good checkpoint again.
        let again = sync(&db, &p, &[]).await;
        assert!(again.stderr.contains(WARM) && !again.stderr.contains("fence"), "{}", again.stderr);
    }
    // Other rules for what a reconcile writes.
    let run = sync(&db, &p, &["--conflict", "file-wins"]).await;
    assert!(run.stderr.contains("--conflict or --on-delete changed"), "{}", run.stderr);
    sync(&db, &p, &[]).await;
    // More documents changed in MongoDB than it is worth checking one by one.
    let users = db.db.collection::<bson::Document>("users");
    users.update_many(doc! {}, doc! { "$set": { "seen": true } }).await.unwrap();
    let run = sync(&db, &p, &["--checkpoint-max-changes", "2"]).await;
    assert!(run.stderr.contains("more than 2 documents changed since the checkpoint"), "{}", run.stderr);
    // A mirrored collection renamed, then one dropped: what the stream said
    // before is not complete any more.
    let rename =
        doc! { "renameCollection": format!("{}.training_jobs", db.name), "to": format!("{}.jobs_old", db.name) };
    db.client.database("admin").run_command(rename).await.unwrap();
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains("rename of training_jobs"), "{}", run.stderr);
    assert_eq!(run.count("inserted"), 3, "the jobs are back: {run:?}");
    db.db.collection::<bson::Document>("datasets").drop().await.unwrap();
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains("drop of datasets"), "{}", run.stderr);
    assert_eq!(run.count("inserted"), 2, "the datasets are back: {run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_change_streams_reconciles_in_full_on_every_start() {
    let server = OwnServer::start_with(free_port(), &["--standalone"]);
    let p = tree();
    let uri = server.uri("ckpt_standalone");
    for round in 0..2 {
        let run = docmirror_at(&uri, &p, &["sync"], &[]).await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("Full reconcile"), "{}", run.stderr);
        assert!(run.stderr.contains("no change streams"), "round {round}: {}", run.stderr);
        assert!(!run.stderr.contains(WARM));
        assert_eq!(run.count("inserted"), if round == 0 { 8 } else { 0 });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_checkpoint_group_is_not_trusted() {
    let db = TestDb::new("ckpt_damaged").await;
    let p = tree();
    sync(&db, &p, &[]).await;
    // Every stored memo part damaged (a save cut short would leave some so),
    // the file list whole.
    let parts = db.db.collection::<bson::Document>("mirror_checkpoint");
    let garbage = Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] });
    let memo_parts = doc! { "$and": [{ "_id": { "$ne": "head" } }, { "_id": { "$not": { "$regex": "^files:" } } }] };
    parts.update_many(memo_parts, doc! { "$set": { "data": garbage } }).await.unwrap();
    p.users(&json!([
        user("u1", "a@example.com", "2025-10-01T00:00:00.000Z"),
        user("u3", "c@example.com", "2025-10-01T00:00:00.000Z"),
    ]));
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert!(run.stderr.contains("does not match its hash"), "{}", run.stderr);
    assert_eq!(run.count("archived"), 1, "u2 is gone from the file: {run:?}");
    assert!(db.doc("users", "u2").await.is_none());
    assert_full_finds_nothing(&db, &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_restarts_from_its_checkpoint_after_kill_9_and_stores_one_on_sigterm() {
    let db = TestDb::new("ckpt_watch").await;
    let p = tree();
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    assert!(w.log_text().contains("no checkpoint yet"), "{}", w.log_text());
    w.crash().await;
    // While it is down: three job files and one user change.
    for j in ["j1", "j2", "j3"] {
        p.job(j, &job(j, "completed", "2025-10-14T09:00:00.000Z"));
    }
    p.users(&json!([
        user("u1", "a@example.com", "2025-10-01T00:00:00.000Z"),
        user("u2", "b@example.com", "2025-10-01T00:00:00.000Z"),
        user("u3", "new-c@example.com", "2025-11-01T00:00:00.000Z"),
    ]));
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    let log = w.log_text();
    assert!(log.contains(WARM), "{log}");
    for j in ["j1", "j2", "j3"] {
        assert_eq!(db.doc("training_jobs", j).await.unwrap().get_str("status").unwrap(), "completed");
    }
    assert_eq!(db.doc("users", "u3").await.unwrap().get_str("email").unwrap(), "new-c@example.com");
    // A change while it runs, then SIGTERM: the next start finds every file as settled.
    p.job("j1", &job("j1", "failed", "2025-10-15T09:00:00.000Z"));
    eventually(20, "j1 mirrored", || async {
        db.doc("training_jobs", "j1").await.and_then(|d| d.get_str("status").ok().map(str::to_string))
            == Some("failed".into())
    })
    .await;
    let log = w.stop().await;
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert!(run.stderr.contains("files_compared=0"), "SIGTERM stored the settled files: {}\n{log}", run.stderr);
    assert_full_finds_nothing(&db, &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_start_from_the_checkpoint_heartbeats_ask_the_server_for_counts_once_a_minute() {
    // Until its next full scan, a watch started from the checkpoint has no
    // picture to count documents from; a count is a full scan on some servers
    // (SecantusDB among them), so heartbeats every 2 s must not each ask.
    let db = TestDb::new("ckpt_counts").await;
    let p = tree();
    sync(&db, &p, &[]).await;
    let w = WatchProc::start(&db.uri(), &p, &[]).await;
    assert!(w.log_text().contains(WARM), "{}", w.log_text());
    for (i, status) in ["failed", "running", "completed", "failed", "running", "completed"].iter().enumerate() {
        p.job("j1", &job("j1", status, &format!("2025-10-15T09:00:0{i}.000Z")));
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    }
    eventually(20, "j1 mirrored", || async {
        db.doc("training_jobs", "j1").await.and_then(|d| d.get_str("status").ok().map(str::to_string))
            == Some("completed".into())
    })
    .await;
    let log = w.stop().await;
    for c in ["users", "datasets", "training_jobs"] {
        let asked = log.lines().filter(|l| l.contains("Counted the documents on the server") && l.contains(c)).count();
        assert_eq!(asked, 1, "{c}: asked once in the minute:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_that_writes_more_than_the_servers_history_still_leaves_a_checkpoint() {
    // The server keeps only the last 100 operations; the sync writes 300 documents.
    let server = OwnServer::start_with(free_port(), &["--oplog-max-entries", "100"]);
    let p = Platform::new();
    p.users(&json!([user("u1", "a@example.com", "2025-10-01T00:00:00.000Z")]));
    for i in 0..300 {
        let id = format!("j{i:03}");
        p.job(&id, &job(&id, "running", "2025-10-12T09:00:00.000Z"));
    }
    let uri = server.uri("ckpt_history");
    let first = docmirror_at(&uri, &p, &["sync"], &[]).await;
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.count("inserted"), 301);
    let again = docmirror_at(&uri, &p, &["sync"], &[]).await;
    assert!(again.stderr.contains(WARM), "{}", again.stderr);
    assert_eq!(reads_of(&again, "training_jobs"), 0, "{}", documents_read(&again));
}

/// `n` users; `u7`'s name is `changed`.
fn many_users(n: usize, changed: &str) -> serde_json::Value {
    (0..n)
        .map(|i| {
            let mut u = user(&format!("u{i}"), &format!("user{i}@example.com"), "2025-10-01T00:00:00.000Z");
            if i == 7 {
                u["name"] = json!(changed);
            }
            u
        })
        .collect()
}

/// A large file's memo is stored in several parts (1 MB each) and comes back
/// whole: a change to one of its records compares that record only.
#[tokio::test(flavor = "multi_thread")]
async fn a_memo_stored_in_several_parts_comes_back_whole() {
    let db = TestDb::new("ckpt_parts").await;
    let p = Platform::new();
    // About 47 bytes of memo a user (its text's hash, id and email): over 1 MB.
    let users = |changed: &str| many_users(24_000, changed);
    p.users(&users("first"));
    let first = sync(&db, &p, &[]).await;
    // Stored as soon as the users were settled, not held to the end of the run.
    assert!(first.stderr.contains("Stored a large memo early file=data/users.json"), "{}", first.stderr);
    let parts = db.db.collection::<bson::Document>("mirror_checkpoint");
    let users_parts = parts.count_documents(doc! { "_id": { "$regex": "^f:data/users.json" } }).await.unwrap();
    let ids: Vec<String> = parts.distinct("_id", doc! {}).await.unwrap().iter().map(|b| b.to_string()).collect();
    assert!(users_parts >= 2, "users.json's memo is over 1 MB: {users_parts} part(s) in {ids:?}");
    p.users(&users("second"));
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert!(!run.stderr.contains("does not match its hash"), "{}", run.stderr);
    // The first sync read the file just after it was written: no stamp proves
    // those bytes, so its memo is loaded while the file is read and hashed.
    assert!(run.stderr.contains("groups_early=1"), "{}", run.stderr);
    // The stream since the checkpoint: the sync's own bookkeeping and the
    // fence, not the megabytes of checkpoint parts stored after its position.
    let events = logged(&run, "Warm start steps", "stream_events")
        .unwrap_or_else(|| panic!("no stream_events in {}", run.stderr));
    assert!(events <= 3, "{events} events read back since the checkpoint: {}", run.stderr);
    assert_only_u7_updated(&db, &run, "second").await;
    // Once the file is older than the stamp margin, a start finds it proven by
    // its stamp; after the next change, its stamp alone shows it changed, and
    // its memo is loaded while the other files are proven (`groups_early`).
    tokio::time::sleep(docmirror::source::STAMP_MARGIN + std::time::Duration::from_millis(200)).await;
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert_eq!(reads_of(&run, "users"), 0, "{}", documents_read(&run));
    p.users(&users("third"));
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert!(run.stderr.contains("groups_early=1"), "{}", run.stderr);
    assert_only_u7_updated(&db, &run, "third").await;
}

/// One user (`u7`, now named `name`) written, and only its document read:
/// its hash, then its fields and version for the update (not all 24,000).
async fn assert_only_u7_updated(db: &TestDb, run: &Run, name: &str) {
    assert_eq!(run.count("updated"), 1, "{run:?}");
    assert_eq!(reads_of(run, "users"), 2, "only the changed user was read: {}", documents_read(run));
    assert_eq!(db.doc("users", "u7").await.unwrap().get_str("name").unwrap(), name);
}

/// The app rewrites a large `users.json` in another format while nobody
/// watches (compact instead of pretty-printed): every record's text is new,
/// so every record is compared. What MongoDB holds for them is read in one
/// pass over the collection, not looked up 5,000 ids at a time (which the
/// test server answers with a scan of the collection per lookup); the result
/// is what a full reconcile gives.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_rewritten_in_another_format_is_compared_from_one_read_of_its_collection() {
    let db = TestDb::new("ckpt_reformat").await;
    let p = Platform::new();
    let users = |changed: &str| many_users(21_000, changed);
    p.users(&users("first"));
    sync(&db, &p, &[]).await;
    p.write("data/users.json", serde_json::to_vec(&users("second")).unwrap());
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert!(run.stderr.contains("Reading the whole collection instead of looking ids up"), "{}", run.stderr);
    assert_eq!((run.count("updated"), run.count("unchanged")), (1, 20_999), "{run:?}");
    assert_eq!(db.doc("users", "u7").await.unwrap().get_str("name").unwrap(), "second");
    assert_full_finds_nothing(&db, &p).await;
}

/// The app writes while the sync that makes the checkpoint is still running:
/// replaces a document the sync already wrote, and deletes another. The sync's own
/// writes are no proof of those: the next start from the checkpoint must
/// look at both again, and put the files' versions back.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_by_someone_else_during_the_checkpointing_sync_is_not_lost() {
    let db = TestDb::new("ckpt_during").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@example.com", "2025-10-01T00:00:00.000Z")]));
    for i in 0..3000 {
        let id = format!("j{i:04}");
        p.job(&id, &job(&id, "running", "2025-10-12T09:00:00.000Z"));
    }
    // Small batches, one at a time: the run lasts long enough to be written to.
    let mut cmd = command(&db.uri(), &p);
    cmd.args(["sync", "--batch-size", "50", "--concurrency", "1"]);
    let run = tokio::spawn(async move { run_command(&mut cmd, std::time::Duration::from_secs(300)).await });
    eventually(60, "the sync wrote its first jobs", || async {
        db.doc("training_jobs", "j0001").await.is_some() && db.doc("training_jobs", "j0002").await.is_some()
    })
    .await;
    let jobs = db.db.collection::<bson::Document>("training_jobs");
    // A whole document replaced (its `_mirror` dropped), as an app's save would.
    let replaced = doc! { "_id": "j0001", "status": "changed-by-app", "updated_at": "2025-10-12T09:00:00.000Z" };
    jobs.replace_one(doc! { "_id": "j0001" }, replaced).await.unwrap();
    jobs.delete_one(doc! { "_id": "j0002" }).await.unwrap();
    assert!(!run.is_finished(), "the sync ended before the app's writes: the test needs a larger tree");
    let first = run.await.unwrap();
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.count("inserted") >= 3000, "{first:?}");

    let again = sync(&db, &p, &[]).await;
    assert!(again.stderr.contains(WARM), "{}", again.stderr);
    let status = db.doc("training_jobs", "j0001").await.unwrap().get_str("status").unwrap().to_string();
    assert_eq!(status, "running", "the app's write during the run was rechecked: {}", again.stderr);
    assert!(db.doc("training_jobs", "j0002").await.is_some(), "the document deleted during the run is back");
    assert!(reads_of(&again, "training_jobs") < 10, "only those were read: {}", documents_read(&again));
    assert_full_finds_nothing(&db, &p).await;
}

/// The file list is stored apart from the head, under its hash: a damaged
/// list is never used (the start is a full reconcile), and the next save
/// writes a whole one again.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_file_list_gives_a_full_reconcile_and_is_written_again() {
    let db = TestDb::new("ckpt_list").await;
    let p = tree();
    sync(&db, &p, &[]).await;
    let parts = db.db.collection::<bson::Document>("mirror_checkpoint");
    let garbage = Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![9, 9, 9] });
    let hit =
        parts.update_many(doc! { "_id": { "$regex": "^files:" } }, doc! { "$set": { "data": garbage } }).await.unwrap();
    assert!(hit.matched_count >= 1, "the file list has parts of its own");
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains("file list is not whole"), "{}", run.stderr);
    assert!(run.stderr.contains("Full reconcile"), "{}", run.stderr);
    let again = sync(&db, &p, &[]).await;
    assert!(again.stderr.contains(WARM), "the full reconcile stored a whole list again: {}", again.stderr);
}

/// The value of `key=` in the line of the run's log that contains `line`.
fn logged(run: &Run, line: &str, key: &str) -> Option<u64> {
    let l = run.stderr.lines().find(|l| l.contains(line))?;
    l.split(&format!("{key}=")).nth(1)?.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn files_older_than_the_margin_are_proven_by_their_stamp_and_an_edit_that_keeps_size_and_mtime_is_still_caught() {
    // (Sleeps twice past the 2 s margin: stamps are about time.)
    let db = TestDb::new("ckpt_stamps").await;
    let p = tree();
    // Last changed well before the sync reads them: their stamps prove their bytes.
    tokio::time::sleep(docmirror::source::STAMP_MARGIN + std::time::Duration::from_millis(200)).await;
    sync(&db, &p, &[]).await;
    let again = sync(&db, &p, &[]).await;
    assert!(again.stderr.contains(WARM), "{}", again.stderr);
    assert_eq!(logged(&again, WARM, "files_proven_by_stamp"), Some(5), "{}", again.stderr);
    assert_eq!(again.count("unchanged"), 8, "{again:?}");

    // users.json written in place: same size, its mtime put back to the nanosecond.
    let path = p.path("data/users.json");
    let before = std::fs::metadata(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("User u2", "Usex u2");
    assert_ne!(edited, text);
    p.write("data/users.json", &edited);
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!((after.len(), after.modified().unwrap()), (before.len(), before.modified().unwrap()));

    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert_eq!(logged(&run, WARM, "files_proven_by_stamp"), Some(4), "{}", run.stderr);
    assert_eq!(run.count("updated"), 1, "{run:?}");
    assert_eq!(db.doc("users", "u2").await.unwrap().get_str("name").unwrap(), "Usex u2");

    // The edit was read moments after it was made: its stamp proves nothing
    // yet. Once it is older than the margin, the next start reads the file,
    // finds the bytes as settled, and records the stamp it has now.
    tokio::time::sleep(docmirror::source::STAMP_MARGIN + std::time::Duration::from_millis(200)).await;
    let read_again = sync(&db, &p, &[]).await;
    assert_eq!(logged(&read_again, WARM, "files_proven_by_stamp"), Some(4), "{}", read_again.stderr);
    assert_eq!(read_again.count("unchanged"), 8, "{read_again:?}");
    let proven = sync(&db, &p, &[]).await;
    assert_eq!(logged(&proven, WARM, "files_proven_by_stamp"), Some(5), "{}", proven.stderr);
    assert_full_finds_nothing(&db, &p).await;
}

/// SIGTERM lands just after watch started from the checkpoint, before it
/// loaded the memos the start did not need: what it stores on the way out
/// is still a whole checkpoint, and the next start compares nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_right_after_a_start_from_the_checkpoint_still_stores_a_whole_one() {
    let db = TestDb::new("ckpt_early_stop").await;
    let p = tree();
    // Job files in many of the checkpoint's groups, and a users.json whose
    // memo is a group of its own (over 1 MB): the start loads only the group
    // of the one job that changed.
    for i in 0..200 {
        let id = format!("k{i:03}");
        p.job(&id, &job(&id, "running", "2025-10-12T09:00:00.000Z"));
    }
    p.users(&many_users(24_000, "first"));
    sync(&db, &p, &[]).await;
    p.job("k007", &job("k007", "completed", "2025-10-14T09:00:00.000Z"));
    let w = WatchProc::spawn(&db.uri(), &p, &[]);
    // Polled every millisecond (not `eventually`'s 50 ms): the stop must land
    // before watch loads the rest of the memo, which takes a moment here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&w.log).unwrap_or_default().contains(WARM) {
        assert!(std::time::Instant::now() < deadline, "no start from the checkpoint: {}", w.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let log = w.stop().await;
    assert_eq!(db.doc("training_jobs", "k007").await.unwrap().get_str("status").unwrap(), "completed");
    let run = sync(&db, &p, &[]).await;
    assert!(run.stderr.contains(WARM), "{}", run.stderr);
    assert_eq!(logged(&run, WARM, "files_compared"), Some(0), "{}\nthe watch before it: {log}", run.stderr);
    assert_full_finds_nothing(&db, &p).await;
}
