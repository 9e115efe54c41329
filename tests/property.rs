//! The whole path as a property, generator to server: arbitrary platform
//! trees (any Unicode including NUL, long strings, deep nesting, `$`, `.`,
//! `_id` and `_mirror` keys, numbers of every form, dates in every form,
//! placeholder and hashed passwords, duplicate ids and emails) go through
//! `sync`. Then every record is in its collection or in `mirror_rejects`, the
//! exit code is 0 or 3, and a second `sync` writes nothing.
//!
//! `DOCMIRROR_PROPERTY_CASES` sets the number of trees (CI: 12; a long run:
//! `DOCMIRROR_PROPERTY_CASES=500 scripts/test.sh property`). A failing case is
//! shrunk and printed; keep it as a fixed case in `FIXED` below.

use std::collections::HashSet;

use bson::{doc, Document};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::support::*;

/// Trees that once failed (shrunk), kept as fixed cases.
const FIXED: &[&str] = &[
    // A record whose only fault is a NUL in a nested key, beside a good one.
    r#"{"users":[{"id":"u0","email":"a@x.io","p":{"a\u0000b":1}},{"id":"u1","email":"b@x.io"}],"jobs":[]}"#,
    // Two records that share an id, the first of them unmappable.
    r#"{"users":[{"id":"u0","email":"a@x.io","createdAt":"never"},{"id":"u0","email":"b@x.io"}],"jobs":[]}"#,
];

fn cases() -> u32 {
    std::env::var("DOCMIRROR_PROPERTY_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{0,8}",
        1 => "\\PC{0,12}",
        1 => Just("nul\u{0}inside".to_string()),
        1 => Just("x".repeat(100_000)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z]{1,6}",
        1 => Just("$set".to_string()),
        1 => Just("a.b".to_string()),
        1 => Just(String::new()),
        1 => Just("_id".to_string()),
        1 => Just("_mirror".to_string()),
        1 => Just("k\u{0}".to_string()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        Just(json!(0.1)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::String),];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Nesting deeper than MongoDB stores (100 levels).
fn too_deep() -> Value {
    (0..110).fold(json!(1), |v, _| json!({ "a": v }))
}

fn date() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("2025-10-13T12:00:00.123Z")),
        Just(json!("2025-10-13T12:00:00+02:00")),
        Just(json!("2025-10-13T12:00:00")),
        Just(json!("2025-10-13")),
        Just(json!(1_760_000_000_000_i64)),
        Just(json!("last tuesday")),
        Just(Value::Null),
        Just(json!(true)),
    ]
}

fn password() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(HASH_A)),
        Just(json!("")),
        Just(json!("!")),
        Just(json!("*")),
        Just(Value::Null),
        Just(json!("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObGdumRHpoqLt0")),
        Just(json!("plain-text-pw")),
        Just(json!("$2b$10$malformed")),
    ]
}

fn id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        8 => (0..6u8).prop_map(|i| Some(json!(format!("r{i}")))),
        1 => Just(None),
        1 => Just(Some(json!(7))),
        1 => Just(Some(json!("nul\u{0}id"))),
        1 => Just(Some(json!(""))),
    ]
}

fn record(id_field: &'static str, dates: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (
        id(),
        prop::collection::vec((key(), value()), 0..4),
        prop::collection::vec(date(), dates.len()),
        password(),
        0..4u8,
        0..12u8,
    )
        .prop_map(move |(id, extra, ds, pw, email, odd)| {
            let mut obj = serde_json::Map::new();
            for (k, v) in extra {
                obj.insert(k, v);
            }
            if let Some(id) = id {
                obj.insert(id_field.to_string(), id);
            }
            for (f, d) in dates.iter().zip(ds) {
                obj.insert((*f).to_string(), d);
            }
            if id_field == "id" {
                obj.insert("email".into(), json!(format!("e{email}@x.io")));
                obj.insert("password".into(), pw);
            }
            if odd == 0 {
                obj.insert("params".into(), too_deep());
            }
            Value::Object(obj)
        })
}

fn tree() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(record("id", &["createdAt", "updatedAt"]), 0..8),
        prop::collection::vec(record("job_id", &["created_at", "updated_at"]), 0..4),
    )
        .prop_map(|(users, jobs)| json!({ "users": users, "jobs": jobs }))
}

/// One tree through two syncs; `Err` says what broke.
async fn check(db: &TestDb, tree: &Value) -> Result<(), String> {
    let p = Platform::new();
    let users = tree["users"].as_array().cloned().unwrap_or_default();
    let jobs = tree["jobs"].as_array().cloned().unwrap_or_default();
    p.users(&Value::Array(users.clone()));
    for (i, j) in jobs.iter().enumerate() {
        p.job(&format!("job{i}"), j);
    }
    let run = docmirror(db, &p, &["sync"]).await;
    if run.code != 0 && run.code != 3 {
        return Err(format!("exit {}: {}", run.code, run.stderr));
    }
    let rejects: Vec<Document> = db.rejects().await;
    let rejected_at: HashSet<(String, Option<i64>)> = rejects
        .iter()
        .map(|r| (r.get_str("source").unwrap_or("").to_string(), r.get("position").and_then(|p| p.as_i64())))
        .collect();
    let file_rejected = |src: &str| {
        rejects
            .iter()
            .any(|r| r.get_str("source") == Ok(src) && r.get("position").is_none_or(|p| p.as_null().is_some()))
    };
    // Every user: its document (with that id) or a reject at its position.
    for (pos, u) in users.iter().enumerate() {
        let at = ("data/users.json".to_string(), Some(i64::try_from(pos).unwrap()));
        let mirrored = match u.get("id").and_then(Value::as_str) {
            Some(id) => db.doc("users", id).await.is_some(),
            None => false,
        };
        if !mirrored && !rejected_at.contains(&at) && !file_rejected("data/users.json") {
            return Err(format!("users.json[{pos}] is neither mirrored nor rejected: {u}"));
        }
    }
    for (i, j) in jobs.iter().enumerate() {
        let src = format!("artifacts/jobs/job{i}.json");
        let mirrored = match j.get("job_id").and_then(Value::as_str) {
            Some(id) => db
                .doc("training_jobs", id)
                .await
                .is_some_and(|d| d.get_document("_mirror").ok().and_then(|m| m.get_str("source").ok()).is_some()),
            None => false,
        };
        if !mirrored && !rejected_at.iter().any(|(s, _)| *s == src) {
            return Err(format!("{src} is neither mirrored nor rejected: {j}"));
        }
    }
    if run.code == 3 && rejects.is_empty() {
        return Err("exit 3 with nothing in mirror_rejects".into());
    }
    // A second sync over the same files writes nothing.
    let again = docmirror(db, &p, &["sync"]).await;
    if again.code != run.code || again.count("inserted") != 0 || again.count("updated") != 0 {
        return Err(format!("the second sync was not idle (exit {}): {}", again.code, again.summary()));
    }
    Ok(())
}

#[test]
fn every_record_ends_in_its_collection_or_in_mirror_rejects() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let db = rt.block_on(TestDb::new("property"));
    let reset = |db: &TestDb| {
        rt.block_on(async {
            for c in ["users", "datasets", "training_jobs", "mirror_rejects", "mirror_archive", "mirror_state"] {
                db.db.collection::<Document>(c).delete_many(doc! {}).await.unwrap();
            }
        })
    };
    for fixed in FIXED {
        reset(&db);
        let tree: Value = serde_json::from_str(fixed).unwrap();
        if let Err(e) = rt.block_on(check(&db, &tree)) {
            panic!("fixed case {fixed}: {e}");
        }
    }
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let result = runner.run(&tree(), |tree| {
        reset(&db);
        rt.block_on(check(&db, &tree)).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
