//! `docmirror cutover`: it refuses while the files change, while a running
//! watch is behind, while MongoDB differs from the files; when all is clean it
//! records the cutover, after which `sync` and `watch` refuse to run.

use bson::doc;
use serde_json::json;

use crate::support::*;

const T: &str = "2025-10-01T08:30:00.123Z";

async fn readiness(db: &TestDb, p: &Platform) -> serde_json::Value {
    let run = docmirror(db, p, &["status", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap()["readiness"].clone()
}

fn clean_tree() -> Platform {
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T), user("u2", "b@x.io", T)]));
    p.job("j1", &job("j1", "running", T));
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn cutover_refuses_while_the_files_change() {
    let db = TestDb::new("cutover_busy").await;
    let p = clean_tree();
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let path = p.path("artifacts/jobs/j1.json");
        let bytes = std::fs::read(&path).unwrap();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::fs::write(&path, &bytes).unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let run = docmirror(&db, &p, &["cutover", "--quiet-secs", "2", "--wait-secs", "2"]).await;
    // The writer finishes its last write before the tree is taken as the test left it.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    p.settle();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("not ready: the files changed"), "{}", run.stdout);
    assert!(db.doc("mirror_state", "docmirror").await.and_then(|d| d.get_document("cutover").ok().cloned()).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn cutover_refuses_while_watch_is_behind_or_mongodb_differs() {
    let db = TestDb::new("cutover_not_ready").await;
    let p = clean_tree();
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    // A running watch's heartbeat says three files are still pending.
    let state = db.db.collection::<bson::Document>("mirror_state");
    let beat = doc! { "running": true, "host": "h", "pid": 1, "heartbeat_at": bson::DateTime::now(), "pending_files": 3_i64, "lag_seconds": 2.5 };
    state.update_one(doc! {"_id": "docmirror"}, doc! {"$set": {"watch": beat}}).await.unwrap();
    let run = docmirror(&db, &p, &["cutover", "--quiet-secs", "0", "--wait-secs", "1"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("watch has not applied the last changes yet (3 file(s) pending"), "{}", run.stdout);
    let r = readiness(&db, &p).await;
    assert_eq!(r["can_cut_over"], false);
    assert!(r["reasons"][0].as_str().unwrap().contains("3 changed file(s) not yet applied"), "{r}");
    // The watch stops; a record that cannot be mirrored remains: verify is not clean.
    state.update_one(doc! {"_id": "docmirror"}, doc! {"$set": {"watch.running": false}}).await.unwrap();
    p.users(&json!([user("u1", "a@x.io", T), user("u2", "b@x.io", T), user("u3", "a@x.io", T)]));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 3);
    let run = docmirror(&db, &p, &["cutover", "--quiet-secs", "0", "--wait-secs", "1"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("rejected") && run.stdout.contains("not ready: MongoDB differs"), "{}", run.stdout);
    let r = readiness(&db, &p).await;
    assert_eq!((r["can_cut_over"].clone(), r["rejects"].clone()), (json!(false), json!(1)), "{r}");
    assert!(r["reasons"].to_string().contains("mirror_rejects"), "{r}");
}
