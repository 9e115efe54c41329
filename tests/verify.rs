//! `docmirror verify` against a real server.

use bson::{doc, Document};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn verify_is_clean_after_sync_and_finds_each_kind_of_drift() {
    let db = TestDb::new("verify_drift").await;
    let p = Platform::new();
    let mut plain = user("u3", "c@x.io", "2025-10-01T00:00:00Z");
    plain["password"] = json!("hunter22-plain");
    p.users(&json!([
        user("u1", "a@x.io", "2025-10-01T00:00:00Z"),
        user("u2", "b@x.io", "2025-10-01T00:00:00Z"),
        plain
    ]));
    p.datasets(&json!([dataset("d1", 10)]));
    p.job("j1", &job("j1", "running", "2025-10-12T09:41:13.002Z"));
    p.job("j2", &job("j2", "running", "2025-10-12T09:41:13.002Z"));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let run = docmirror(&db, &p, &["verify"]).await;
    assert_eq!(run.code, 0, "clean after sync: {run:?}");
    assert!(run.stdout.contains("MongoDB holds exactly what the files hold"), "{}", run.stdout);

    // Drift: a changed field, a changed password, a deleted document, an extra one,
    // a newer document from the app, and a record that cannot be mirrored.
    let users = db.db.collection::<Document>("users");
    users.update_one(doc! {"_id": "u1"}, doc! {"$set": {"name": "edited in MongoDB"}}).await.unwrap();
    users.update_one(doc! {"_id": "u3"}, doc! {"$set": {"password": HASH_B}}).await.unwrap();
    db.db.collection::<Document>("datasets").delete_one(doc! {"_id": "d1"}).await.unwrap();
    db.db.collection::<Document>("training_jobs").insert_one(doc! {"_id": "ghost", "status": "running"}).await.unwrap();
    let newer = bson::DateTime::parse_rfc3339_str("2026-01-01T00:00:00Z").unwrap();
    db.db
        .collection::<Document>("training_jobs")
        .update_one(doc! {"_id": "j2"}, doc! {"$set": {"status": "completed", "updated_at": newer}})
        .await
        .unwrap();
    p.job("j3", &json!({"job_id": 3, "status": "queued"}));

    let run = docmirror(&db, &p, &["verify", "--format", "json"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["in_sync"], false);
    let coll = |name: &str| {
        report["collections"].as_array().unwrap().iter().find(|c| c["collection"] == name).unwrap().clone()
    };
    let users = coll("users");
    let diffs: Vec<(String, Vec<String>)> = users["different"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect();
    assert!(diffs.contains(&("u1".into(), vec!["name".into()])), "{diffs:?}");
    assert!(diffs.contains(&("u3".into(), vec!["password (differs)".into()])), "{diffs:?}");
    assert_eq!(coll("datasets")["missing"][0]["id"], "d1");
    let jobs = coll("training_jobs");
    assert_eq!(jobs["extra"], json!(["ghost"]));
    assert_eq!(jobs["newer_in_mongodb"][0]["id"], "j2");
    assert_eq!(jobs["rejected"][0]["reason_code"], "id_not_string");
    assert_eq!(jobs["in_files"], 3);
    assert!(!run.stdout.contains(HASH_B), "password values are never shown");

    // The text form names each one too.
    let run = docmirror(&db, &p, &["verify"]).await;
    assert_eq!(run.code, 1);
    for needle in [
        "different users/u1: name",
        "password (differs)",
        "missing   datasets/d1",
        "extra     training_jobs/ghost",
        "newer     training_jobs/j2",
        "rejected  training_jobs artifacts/jobs/j3.json",
    ] {
        assert!(run.stdout.contains(needle), "missing {needle:?} in\n{}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_still_compares_the_first_holder_of_a_duplicated_id() {
    let db = TestDb::new("verify_dup_holder").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), user("u1", "b@x.io", "2025-10-02T00:00:00Z")]));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 3, "the second u1 is rejected");
    // The first holder's document drifts: verify must say so, not hide it behind the reject.
    let users = db.db.collection::<Document>("users");
    users.update_one(doc! {"_id": "u1"}, doc! {"$set": {"name": "edited in MongoDB"}}).await.unwrap();
    let run = docmirror(&db, &p, &["verify", "--format", "json"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let users = &v["collections"][0];
    assert_eq!(users["collection"], "users");
    assert_eq!(users["different"][0]["id"], "u1", "{users}");
    assert_eq!(users["different"][0]["fields"], json!(["name"]), "{users}");
    assert_eq!(users["rejected"].as_array().map(Vec::len), Some(1), "{users}");
    assert_eq!(users["extra"], json!([]), "{users}");
}
