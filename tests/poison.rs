//! Poison records: records the server would refuse (a NUL in a field name or
//! in the id, a document over 16 MiB) and records that would hijack identity
//! or bookkeeping (their own `_id` or `_mirror`) are rejected one by one at
//! mapping time; they never stop the others.

use bson::Document;
use serde_json::json;

use crate::support::*;

fn mirror_at(d: &Document) -> bson::DateTime {
    *d.get_document("_mirror").unwrap().get_datetime("at").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_poison_record_of_each_kind_is_rejected_and_every_good_record_arrives() {
    let db = TestDb::new("poison").await;
    let p = Platform::new();
    let mut nul_key = user("u2", "nul-key@x.io", "2025-10-01T00:00:00Z");
    nul_key["a\u{0}b"] = json!(1);
    let nul_id = user("u\u{0}3", "nul-id@x.io", "2025-10-01T00:00:00Z");
    let mut own_id = user("u4", "own-id@x.io", "2025-10-01T00:00:00Z");
    own_id["_id"] = json!("x");
    let mut own_mirror = user("u5", "own-mirror@x.io", "2025-10-01T00:00:00Z");
    own_mirror["_mirror"] = json!({"hash": "forged"});
    p.users(&json!([
        user("u1", "a@x.io", "2025-10-01T00:00:00Z"),
        nul_key,
        nul_id,
        own_id,
        own_mirror,
        user("u6", "b@x.io", "2025-10-01T00:00:00Z"),
    ]));
    let mut huge = dataset("d2", 1);
    huge["notes"] = json!("x".repeat(17 * 1024 * 1024));
    p.datasets(&json!([dataset("d1", 1), huge, dataset("d3", 3)]));
    p.job("j1", &job("j1", "running", "2025-10-12T09:41:13.002Z"));
    p.job("j2", &job("j2", "completed", "2025-10-12T09:41:13.002Z"));
    let mut nested_nul = job("j3", "running", "2025-10-12T09:41:13.002Z");
    nested_nul["params"]["lora\u{0}"] = json!({"r": 8});
    p.job("j3", &nested_nul);

    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "poison records are rejects, not a failed run: {run:?}");
    assert_eq!(run.count("inserted"), 6, "{}", run.summary());
    assert_eq!(run.count("rejected"), 6, "{}", run.summary());

    // Every good record is written; no poison record is, under any _id.
    let ids = |docs: Vec<Document>| docs.iter().map(|d| d.get_str("_id").unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(db.docs("users").await), ["u1", "u6"]);
    assert_eq!(ids(db.docs("datasets").await), ["d1", "d3"]);
    assert_eq!(ids(db.docs("training_jobs").await), ["j1", "j2"]);

    // Each poison record is in mirror_rejects with its own reason code, and the
    // reason names the field.
    let rejects = db.rejects().await;
    let mut got: Vec<(String, String)> = rejects
        .iter()
        .map(|r| {
            let at = match r.get("position") {
                Some(bson::Bson::Int64(i)) => format!("[{i}]"),
                _ => String::new(),
            };
            (r.get_str("source").unwrap().to_string() + &at, r.get_str("reason_code").unwrap().to_string())
        })
        .collect();
    got.sort();
    let want = [
        ("artifacts/jobs/j3.json", "nul_in_key"),
        ("data/datasets/metadata.json[1]", "document_too_large"),
        ("data/users.json[1]", "nul_in_key"),
        ("data/users.json[2]", "nul_in_id"),
        ("data/users.json[3]", "reserved_field"),
        ("data/users.json[4]", "reserved_field"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(got, want);
    let reason = |code: &str, source: &str| {
        rejects
            .iter()
            .find(|r| r.get_str("reason_code").unwrap() == code && r.get_str("source").unwrap() == source)
            .unwrap_or_else(|| panic!("no {code} reject for {source}"))
            .get_str("reason")
            .unwrap()
            .to_string()
    };
    assert!(reason("nul_in_key", "data/users.json").contains(r#""a\0b""#));
    assert!(reason("nul_in_key", "artifacts/jobs/j3.json").contains(r#""lora\0" inside params"#));
    assert!(reason("document_too_large", "data/datasets/metadata.json").contains(r#""notes""#));
    let reserved: Vec<_> = rejects.iter().filter(|r| r.get_str("reason_code").unwrap() == "reserved_field").collect();
    assert!(reserved.iter().any(|r| r.get_str("reason").unwrap().contains(r#""_id""#)));
    assert!(reserved.iter().any(|r| r.get_str("reason").unwrap().contains(r#""_mirror""#)));
    // The over-large record is kept as the start of its text, so its reject fits.
    let big = rejects.iter().find(|r| r.get_str("reason_code").unwrap() == "document_too_large").unwrap();
    assert_eq!(big.get_str("record_id").unwrap(), "d2");
    assert_eq!(big.get_document("record").unwrap().get_bool("truncated"), Ok(true));

    // A second sync writes nothing and stores no reject twice.
    let before: Vec<_> = [db.docs("users").await, db.docs("datasets").await, db.docs("training_jobs").await].concat();
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!((run.count("inserted"), run.count("updated"), run.count("unchanged")), (0, 0, 6), "{}", run.summary());
    assert_eq!(run.count("rejected"), 6, "{}", run.summary());
    let after: Vec<_> = [db.docs("users").await, db.docs("datasets").await, db.docs("training_jobs").await].concat();
    assert_eq!(before, after);
    assert!(before.iter().zip(&after).all(|(a, b)| mirror_at(a) == mirror_at(b)));
    assert_eq!(db.rejects().await.len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn placeholders_and_foreign_hashes_are_kept_and_plaintext_is_hashed() {
    const ARGON2: &str = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
    let db = TestDb::new("password_forms").await;
    let p = Platform::new();
    let with_pw = |id: &str, pw: serde_json::Value| {
        let mut u = user(id, &format!("{id}@x.io"), "2025-10-01T00:00:00Z");
        u["password"] = pw;
        u
    };
    p.users(&json!([
        with_pw("empty", json!("")),
        with_pw("bang", json!("!")),
        with_pw("star", json!("*")),
        with_pw("null", json!(null)),
        with_pw("argon", json!(ARGON2)),
        with_pw("plain", json!("hunter22-plain")),
    ]));
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let pw = |id: &'static str| {
        let db = &db;
        async move { db.doc("users", id).await.unwrap().get("password").cloned().unwrap() }
    };
    assert_eq!(pw("empty").await, bson::Bson::String(String::new()));
    assert_eq!(pw("bang").await, bson::Bson::String("!".into()));
    assert_eq!(pw("star").await, bson::Bson::String("*".into()));
    assert_eq!(pw("null").await, bson::Bson::Null);
    assert_eq!(pw("argon").await, bson::Bson::String(ARGON2.into()));
    let hashed = pw("plain").await;
    assert!(bcrypt::verify("hunter22-plain", hashed.as_str().unwrap()).unwrap());
    // Nothing to redo on a second run: no bcrypt work for the kept forms.
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.count("unchanged"), 6, "{}", run.summary());
}
