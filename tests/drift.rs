//! Issue 14, item 3: watch follows MongoDB's change stream and reports
//! dual-write drift as it happens.

use bson::{doc, Document};
use serde_json::json;

use crate::support::*;

fn tree() -> Platform {
    let p = Platform::new();
    p.users(&json!([
        user("u1", "a@example.com", "2025-10-01T00:00:00.000Z"),
        user("u2", "b@example.com", "2025-10-01T00:00:00.000Z"),
    ]));
    p.datasets(&json!([dataset("d1", 10)]));
    for j in ["j1", "j2"] {
        p.job(j, &job(j, "running", "2025-10-12T09:00:00.000Z"));
    }
    p
}

async fn drift_docs(db: &TestDb) -> Vec<Document> {
    db.docs("mirror_drift").await
}

async fn drift_of(db: &TestDb, coll: &str, id: &str) -> Option<Document> {
    drift_docs(db).await.into_iter().find(|d| d.get_str("collection") == Ok(coll) && d.get_str("id") == Ok(id))
}

async fn wait_drift(db: &TestDb, coll: &str, id: &str, kind: &str) -> Document {
    let what = format!("{coll}/{id} listed as {kind} drift");
    eventually(30, &what, || async { drift_of(db, coll, id).await.is_some_and(|d| d.get_str("kind") == Ok(kind)) })
        .await;
    drift_of(db, coll, id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_by_the_app_that_differs_is_drift_until_the_file_catches_up() {
    let db = TestDb::new("drift_differs").await;
    let p = tree();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let w = WatchProc::start(&db.uri(), &p, &["--drift-grace-secs", "1", "--metrics-addr", &addr]).await;
    let jobs = db.db.collection::<Document>("training_jobs");
    // The app writes MongoDB (not newer, different): drift once its grace is over.
    jobs.update_one(doc! { "_id": "j1" }, doc! { "$set": { "status": "failed" } }).await.unwrap();
    let d = wait_drift(&db, "training_jobs", "j1", "different").await;
    let gauge = "docmirror_drift_records{collection=\"training_jobs\",kind=\"different\"} 1";
    eventually(10, "the drift gauge", || async { http_get(port, "/metrics").await.1.contains(gauge) }).await;
    // status shows it, with when it was first seen.
    let st = docmirror(&db, &p, &["status"]).await;
    let line = st.stdout.lines().find(|l| l.trim_start().starts_with("drift:")).unwrap_or_default().to_string();
    assert!(line.contains("different 1") && line.contains("first seen"), "{}", st.stdout);
    assert!(matches!(d.get("first_seen"), Some(bson::Bson::DateTime(_))));
    let fields = d.get_array("fields").unwrap();
    assert!(fields.iter().any(|f| f.as_str() == Some("status")), "{d:?}");
    // verify agrees.
    let v = docmirror(&db, &p, &["verify", "--format", "json"]).await;
    assert_ne!(v.code, 0, "{v:?}");
    let report: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    let jobs_rep =
        report["collections"].as_array().unwrap().iter().find(|c| c["collection"] == "training_jobs").unwrap();
    assert!(jobs_rep["different"].as_array().unwrap().iter().any(|x| x["id"] == "j1"), "{}", v.stdout);
    // The file catches up (the app's dual-write lands): drift resolved.
    p.job("j1", &job("j1", "failed", "2025-10-13T09:00:00.000Z"));
    eventually(30, "drift resolved", || async { drift_of(&db, "training_jobs", "j1").await.is_none() }).await;
    let log = w.stop().await;
    assert_eq!(log.matches("Drift: MongoDB and the files disagree").count(), 1, "logged once when found: {log}");
    assert_eq!(log.matches("Drift resolved").count(), 1, "logged once when resolved: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_and_newer_writes_are_not_drift_but_a_deleted_or_extra_document_is() {
    let db = TestDb::new("drift_kinds").await;
    let p = tree();
    let w = WatchProc::start(&db.uri(), &p, &["--drift-grace-secs", "1"]).await;
    let users = db.db.collection::<Document>("users");
    // An equal write (the app wrote what the file says) and a newer one.
    users.update_one(doc! { "_id": "u1" }, doc! { "$set": { "role": "user" } }).await.unwrap();
    let newer = bson::DateTime::parse_rfc3339_str("2025-12-01T00:00:00Z").unwrap();
    users
        .update_one(doc! { "_id": "u2" }, doc! { "$set": { "name": "From the app", "updatedAt": newer } })
        .await
        .unwrap();
    // A mirrored document deleted while its record is in the files, and one the files never had.
    db.db.collection::<Document>("datasets").delete_one(doc! { "_id": "d1" }).await.unwrap();
    db.db
        .collection::<Document>("training_jobs")
        .insert_one(doc! { "_id": "j-app", "status": "queued" })
        .await
        .unwrap();
    wait_drift(&db, "datasets", "d1", "missing").await;
    wait_drift(&db, "training_jobs", "j-app", "extra").await;
    // Those two were written before the deleted one: past their grace too.
    assert!(drift_of(&db, "users", "u1").await.is_none(), "an equal write is not drift");
    assert!(drift_of(&db, "users", "u2").await.is_none(), "a newer document is not drift");
    assert_eq!(drift_docs(&db).await.len(), 2);
    let log = w.stop().await;
    assert!(!log.contains("id=u1") || !log.contains("Drift: MongoDB"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_wins_repairs_drift_with_the_files_version() {
    let db = TestDb::new("drift_repair").await;
    let p = tree();
    let w = WatchProc::start(&db.uri(), &p, &["--drift-grace-secs", "1", "--conflict", "file-wins"]).await;
    let jobs = db.db.collection::<Document>("training_jobs");
    jobs.update_one(doc! { "_id": "j2" }, doc! { "$set": { "status": "tampered" } }).await.unwrap();
    eventually(30, "j2 repaired from its file", || async {
        db.doc("training_jobs", "j2").await.is_some_and(|d| d.get_str("status") == Ok("running"))
    })
    .await;
    eventually(30, "drift resolved", || async { drift_docs(&db).await.is_empty() }).await;
    let log = w.stop().await;
    assert!(log.contains("Drift: MongoDB and the files disagree"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restart_resumes_the_stream_without_a_full_rescan() {
    // Durable like a real server: a write acknowledged before the kill is there after it.
    let mut server = OwnServer::start_with(free_port(), &["--sync-on-commit"]);
    let uri = server.uri("drift_outage");
    let p = tree();
    let w = WatchProc::start(&uri, &p, &["--drift-grace-secs", "1"]).await;
    server.kill();
    server.restart_with(&["--sync-on-commit"]);
    let client = mongodb::Client::with_uri_str(server.uri("")).await.unwrap();
    let jobs = client.database("drift_outage").collection::<Document>("training_jobs");
    jobs.update_one(doc! { "_id": "j2" }, doc! { "$set": { "status": "lost" } }).await.unwrap();
    let drift = client.database("drift_outage").collection::<Document>("mirror_drift");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while drift.count_documents(doc! { "id": "j2" }).await.unwrap_or(0) != 1 {
        assert!(std::time::Instant::now() < deadline, "no drift found after the restart: {}", w.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = w.stop().await;
    assert!(!log.contains("asks for a full rescan"), "the stream resumed from its position: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_dropped_under_watch_makes_it_rescan() {
    let db = TestDb::new("drift_dropped").await;
    let p = tree();
    let w = WatchProc::start(&db.uri(), &p, &["--drift-grace-secs", "1"]).await;
    db.db.collection::<Document>("datasets").drop().await.unwrap();
    eventually(30, "the datasets mirrored again", || async { db.doc("datasets", "d1").await.is_some() }).await;
    let log = w.stop().await;
    assert!(log.contains("MongoDB's side asks for a full rescan"), "{log}");
    assert!(log.contains("drop of datasets"), "{log}");
}
