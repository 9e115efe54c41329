//! `docmirror export`: MongoDB back into the platform's files, and the round trip.

use bson::{doc, Document};
use serde_json::{json, Value};

use crate::support::*;

const T: &str = "2025-10-01T08:30:00.123Z";

fn read(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_holds_what_the_app_wrote_and_never_a_plaintext_password() {
    let db = TestDb::new("export_app_fields").await;
    let p = Platform::new();
    let mut u = user("u1", "a@x.io", T);
    u["password"] = json!("correct-horse-plain");
    p.users(&json!([u, user("u2", "b@x.io", T)]));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    // After cutover the app writes MongoDB: a field only it knows, and a new user.
    let login = bson::DateTime::parse_rfc3339_str("2025-11-02T10:00:00.5Z").unwrap();
    let users = db.db.collection::<Document>("users");
    users.update_one(doc! {"_id": "u2"}, doc! {"$set": {"lastLoginAt": login}}).await.unwrap();
    users.insert_one(doc! {"_id": "u3", "email": "c@x.io", "password": HASH_B}).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = docmirror(&db, &p, &["export", "--out", out.path().to_str().unwrap(), "--overwrite"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let exported = read(&out.path().join("data/users.json"));
    let by_id = |id: &str| exported.as_array().unwrap().iter().find(|u| u["id"] == id).unwrap().clone();
    // The app's own bcrypt compare logs the user in from the exported file.
    let pw = by_id("u1")["password"].as_str().unwrap().to_string();
    assert!(bcrypt::verify("correct-horse-plain", &pw).unwrap(), "the bcrypt hash, never the plaintext");
    assert!(!std::fs::read_to_string(out.path().join("data/users.json")).unwrap().contains("correct-horse-plain"));
    assert_eq!(by_id("u2")["lastLoginAt"], "2025-11-02T10:00:00.500Z");
    assert_eq!(by_id("u3")["email"], "c@x.io", "a user only the app created");
    assert!(by_id("u1").get("_mirror").is_none() && by_id("u1").get("_id").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_never_sees_half_an_exported_file() {
    let db = TestDb::new("export_atomic").await;
    let p = Platform::new();
    let users: Vec<Value> = (0..3000).map(|i| user(&format!("u{i}"), &format!("{i}@x.io"), T)).collect();
    p.users(&json!(users));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("data/users.json");
    assert_eq!(docmirror(&db, &p, &["export", "--out", out.path().to_str().unwrap()]).await.code, 0);
    let coll = db.db.collection::<Document>("users");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes = std::fs::read(&file).unwrap();
                assert!(serde_json::from_slice::<Value>(&bytes).is_ok(), "a reader saw a partial file");
                reads += 1;
            }
            reads
        })
    };
    for round in 0..3 {
        coll.update_many(doc! {}, doc! {"$set": {"role": format!("r{round}")}}).await.unwrap();
        let run = docmirror(&db, &p, &["export", "--out", out.path().to_str().unwrap(), "--overwrite"]).await;
        assert_eq!(run.code, 0, "{run:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("every read parsed");
    assert!(reads > 0);
    assert_eq!(read(&file)[0]["role"], "r2");
}
