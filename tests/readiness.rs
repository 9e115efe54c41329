//! Readiness: `GET /progress` and `status --format json` give the same
//! object; the last verify and the drift of `mirror_drift` show in both, and
//! drift is a reason not to cut over until it is gone.

use bson::doc;
use serde_json::{json, Value};

use crate::support::*;

const T: &str = "2025-10-01T08:30:00.123Z";

async fn status_json(db: &TestDb, p: &Platform) -> Value {
    let run = docmirror(db, p, &["status", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_and_status_agree_and_show_the_last_verify_and_drift() {
    let db = TestDb::new("readiness_progress").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T), user("u2", "b@x.io", T)]));
    p.job("j1", &job("j1", "running", T));
    let port = free_port();
    let w = WatchProc::start(&db.uri(), &p, &["--metrics-addr", &format!("127.0.0.1:{port}")]).await;
    // Before any verify: none recorded.
    let (code, body) = http_get(port, "/progress").await;
    assert_eq!(code, 200, "{body}");
    let progress: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(progress["last_verify_at"], Value::Null, "{progress}");

    // verify records its outcome; a drift document makes a reason.
    assert_eq!(docmirror(&db, &p, &["verify"]).await.code, 0);
    let drift = db.db.collection::<bson::Document>("mirror_drift");
    let first_seen = bson::DateTime::now();
    drift
        .insert_many([
            doc! { "collection": "users", "id": "u1", "kind": "different", "first_seen": first_seen },
            doc! { "collection": "users", "id": "u2", "kind": "different", "first_seen": first_seen },
            doc! { "collection": "training_jobs", "id": "j1", "kind": "missing", "first_seen": first_seen },
        ])
        .await
        .unwrap();
    // Once watch's first heartbeat is in (every 5 s), both are read while it is idle.
    eventually(30, "watch's heartbeat", || async { status_json(&db, &p).await["readiness"]["watch"] == "running" })
        .await;
    let status = status_json(&db, &p).await;
    let (code, body) = http_get(port, "/progress").await;
    assert_eq!(code, 200, "{body}");
    let progress: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(progress, status["readiness"], "/progress and status --format json agree");
    assert_eq!(progress["last_verify_outcome"], "in-sync", "{progress}");
    assert_eq!((progress["phase"].clone(), progress["watch"].clone()), (json!("mirroring"), json!("running")));
    assert_eq!(progress["last_full_reconcile_mode"], "watch", "{progress}");
    assert!(progress["last_verify_at"]["$date"].is_string(), "{progress}");
    assert_eq!(progress["drift"], json!({"missing": 1, "different": 2}), "{progress}");
    assert_eq!(progress["can_cut_over"], false);
    assert!(progress["reasons"].to_string().contains("3 record(s) differ"), "{progress}");
    let text = docmirror(&db, &p, &["status"]).await.stdout;
    assert!(text.contains("last verify:") && text.contains("in-sync"), "{text}");
    assert!(text.contains("drift:         different 2, missing 1"), "{text}");

    // Drift gone: the reason is cleared and cutover is possible again.
    drift.delete_many(doc! {}).await.unwrap();
    let (_, body) = http_get(port, "/progress").await;
    let progress: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((progress["can_cut_over"].clone(), progress["drift"].clone()), (json!(true), json!({})), "{progress}");

    // A verify that finds differences is recorded as such.
    w.stop().await;
    p.users(&json!([user("u1", "a@x.io", T)]));
    assert_eq!(docmirror(&db, &p, &["verify"]).await.code, 1);
    let r = status_json(&db, &p).await["readiness"].clone();
    assert_eq!(r["last_verify_outcome"], "differences", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_says_503_while_mongodb_does_not_answer() {
    let server = OwnServer::start();
    let uri = server.uri("readiness_frozen");
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T)]));
    let port = free_port();
    let w = WatchProc::start(&uri, &p, &["--metrics-addr", &format!("127.0.0.1:{port}")]).await;
    assert_eq!(http_get(port, "/progress").await.0, 200);
    server.signal("-STOP");
    let (code, body) = http_get(port, "/progress").await;
    server.signal("-CONT");
    assert_eq!(code, 503, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{body}");
    eventually(60, "/progress answers again", || async { http_get(port, "/progress").await.0 == 200 }).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_found_by_watch_lights_up_progress_until_the_file_catches_up() {
    let db = TestDb::new("readiness_live_drift").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T)]));
    p.job("j1", &job("j1", "running", T));
    let port = free_port();
    let args = ["--drift-grace-secs", "1", "--metrics-addr", &format!("127.0.0.1:{port}")];
    let w = WatchProc::start(&db.uri(), &p, &args).await;
    let progress = || async {
        let (code, body) = http_get(port, "/progress").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    // The app writes MongoDB, and not the file: drift, and a reason not to cut over.
    let jobs = db.db.collection::<bson::Document>("training_jobs");
    jobs.update_one(doc! {"_id": "j1"}, doc! {"$set": {"status": "failed"}}).await.unwrap();
    eventually(60, "the drift in /progress", || async { progress().await["drift"] == json!({"different": 1}) }).await;
    let r = progress().await;
    assert_eq!(r["can_cut_over"], false);
    assert!(r["reasons"].to_string().contains("1 record(s) differ"), "{r}");
    // The file catches up: no drift, and nothing left to say no.
    p.job("j1", &job("j1", "failed", T));
    eventually(60, "the drift cleared", || async {
        let r = progress().await;
        r["drift"] == json!({}) && r["can_cut_over"] == true
    })
    .await;
    w.stop().await;
}
