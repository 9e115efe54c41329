//! `docmirror verify` against a real MongoDB server (the drift report both
//! targets share is in `behaviour.rs`).

use bson::{doc, Document};
use serde_json::json;

use crate::support::*;

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
