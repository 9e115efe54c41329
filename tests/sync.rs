//! `docmirror sync` against a real MongoDB server: what is MongoDB's own.
//! The behaviour both targets share is in `behaviour.rs`, run for each.

use bson::{doc, Bson, Document};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn maps_every_source_as_the_table_says() {
    let db = TestDb::new("maps_every_source").await;
    let p = Platform::new();
    p.users(&json!([
        {"id": "u1", "email": "  Alice@Example.COM ", "name": "Alice", "password": HASH_A, "role": "admin",
         "createdAt": "2025-09-01T08:00:00.000Z", "updatedAt": "2025-10-12T17:45:10.123Z", "theme": "dark"}
    ]));
    p.datasets(&json!([dataset("d1", 12), dataset("d2", 5_368_709_120i64)]));
    p.job("job_1", &job("job_1", "running", "2025-10-12T09:41:13.002Z"));
    p.write("artifacts/jobs/job_1.log", "not json at all");
    p.write("artifacts/jobs/job_1.json.tmp", "{ half");
    let before = p.snapshot();

    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("inserted"), 4);
    assert_eq!(run.count("rejected"), 0);

    // users: _id from id, email normalised, dates as BSON dates, other fields kept.
    let u = db.doc("users", "u1").await.unwrap();
    assert_eq!(u.get_str("id").unwrap(), "u1");
    assert_eq!(u.get_str("email").unwrap(), "alice@example.com");
    assert_eq!(u.get_str("password").unwrap(), HASH_A);
    assert_eq!(u.get_str("theme").unwrap(), "dark");
    assert_eq!(u.get_datetime("createdAt").unwrap().timestamp_millis(), 1_756_713_600_000);
    assert_eq!(u.get_datetime("updatedAt").unwrap().timestamp_millis(), 1_760_291_110_123);
    let m = u.get_document("_mirror").unwrap();
    assert_eq!(m.get_str("source").unwrap(), "data/users.json");
    assert_eq!(m.get_str("hash").unwrap().len(), 32);

    // datasets: size as Int64 whatever its magnitude, null dates stay null.
    let d1 = db.doc("datasets", "d1").await.unwrap();
    assert_eq!(d1.get("size"), Some(&Bson::Int64(12)));
    assert_eq!(d1.get("deleted_at"), Some(&Bson::Null));
    assert!(matches!(d1.get("uploaded_at"), Some(Bson::DateTime(_))));
    assert_eq!(db.doc("datasets", "d2").await.unwrap().get("size"), Some(&Bson::Int64(5_368_709_120)));

    // jobs: _id from job_id, params embedded, numbers keep their type.
    let j = db.doc("training_jobs", "job_1").await.unwrap();
    assert_eq!(j.get_str("job_id").unwrap(), "job_1");
    assert_eq!(j.get("progress"), Some(&Bson::Double(42.5)));
    assert_eq!(j.get("epoch"), Some(&Bson::Int32(2)));
    assert_eq!(j.get("loss"), Some(&Bson::Double(1.0873)));
    let params = j.get_document("params").unwrap();
    assert_eq!(params.get_str("model").unwrap(), "gpt2");
    assert_eq!(params.get_document("lora").unwrap().get("r"), Some(&Bson::Int32(8)));
    assert!(matches!(j.get("created_at"), Some(Bson::DateTime(_))));
    assert_eq!(j.get("completed_at"), Some(&Bson::Null));
    assert_eq!(db.count("training_jobs").await, 1, "non-JSON and .tmp files are ignored");

    assert_eq!(p.snapshot(), before, "the source tree must not change");
}

#[tokio::test(flavor = "multi_thread")]
async fn applies_the_guides_indexes() {
    let db = TestDb::new("indexes").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let keys = |coll: &'static str| {
        let db = db.db.clone();
        async move {
            use futures_util::TryStreamExt;
            let idx: Vec<_> =
                db.collection::<Document>(coll).list_indexes().await.unwrap().try_collect().await.unwrap();
            idx.into_iter()
                .map(|m| (m.keys.keys().next().unwrap().clone(), m.options.and_then(|o| o.unique).unwrap_or(false)))
                .collect::<Vec<_>>()
        }
    };
    let users = keys("users").await;
    assert!(users.contains(&("email".to_string(), true)), "{users:?}");
    let datasets = keys("datasets").await;
    for k in ["uploaded_by", "uploaded_at"] {
        assert!(datasets.iter().any(|(n, _)| n == k), "{datasets:?}");
    }
    let jobs = keys("training_jobs").await;
    for k in ["user_id", "status", "created_at"] {
        assert!(jobs.iter().any(|(n, _)| n == k), "{jobs:?}");
    }
    let audit = keys("audit_log").await;
    for k in ["user_id", "created_at"] {
        assert!(audit.iter().any(|(n, _)| n == k), "{audit:?}");
    }
    // Applying them again is a no-op.
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_json_is_reported_and_changes_nothing() {
    let db = TestDb::new("broken_json").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), user("u2", "b@x.io", "2025-10-01T00:00:00Z")]));
    p.job("j1", &job("j1", "running", "2025-10-12T09:41:13.002Z"));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let users_before = db.docs("users").await;

    p.write("data/users.json", "[\n  {\"id\": \"u1\",\n  \"email\": \"a@x.io\"\n  {\"id\": \"u2\"}\n]\n");
    p.write("artifacts/jobs/j2.json", "{\"job_id\": \"j2\", ");
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(run.count("bad files"), 2, "{}", run.summary());
    assert!(
        run.stderr.lines().any(|l| l.contains("data/users.json") && l.contains("line 4") && l.contains("column 3")),
        "the error names path, line and column: {}",
        run.stderr
    );
    assert!(run.stderr.contains("artifacts/jobs/j2.json"));
    assert_eq!(db.docs("users").await, users_before, "nothing already mirrored may change");
    assert!(db.doc("training_jobs", "j1").await.is_some());
    let rejects = db.rejects().await;
    assert!(rejects
        .iter()
        .any(|r| r.get_str("reason_code").unwrap() == "invalid_json"
            && r.get_str("source").unwrap() == "data/users.json"));
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_update_only_what_changed_and_keep_app_fields() {
    let db = TestDb::new("updates").await;
    let p = Platform::new();
    let mut u1 = user("u1", "a@x.io", "2025-10-01T00:00:00Z");
    u1["nickname"] = json!("al");
    p.users(&json!([u1, user("u2", "b@x.io", "2025-10-01T00:00:00Z")]));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    // The app adds a field of its own in MongoDB.
    db.db
        .collection::<Document>("users")
        .update_one(doc! {"_id": "u1"}, doc! {"$set": {"lastLoginAt": "yesterday"}})
        .await
        .unwrap();
    let u2_before = db.doc("users", "u2").await.unwrap();

    let mut u1 = user("u1", "a@x.io", "2025-10-02T00:00:00Z");
    u1["name"] = json!("Alice Renamed");
    p.users(&json!([u1, user("u2", "b@x.io", "2025-10-01T00:00:00Z")]));
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!((run.count("updated"), run.count("unchanged")), (1, 1), "{}", run.summary());
    let u = db.doc("users", "u1").await.unwrap();
    assert_eq!(u.get_str("name").unwrap(), "Alice Renamed");
    assert!(u.get("nickname").is_none(), "a field removed from the record is removed: {u:?}");
    assert_eq!(u.get_str("lastLoginAt").unwrap(), "yesterday", "app-only fields survive");
    assert_eq!(db.doc("users", "u2").await.unwrap(), u2_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn both_write_paths_give_the_same_documents() {
    // bulk-write is MongoDB 8.0+'s Client::bulk_write (wire version 25); commands
    // is the 6.0/7.0 path. Below 8.0, bulk-write must be refused, not tried.
    let wire = server_wire_version().await;
    let modes: &[&str] = if wire >= 25 { &["bulk-write", "commands"] } else { &["commands"] };
    if wire < 25 {
        let db = TestDb::new("mode_refused").await;
        let p = Platform::new();
        p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
        let run = docmirror(&db, &p, &["sync", "--write-mode", "bulk-write"]).await;
        assert_eq!(run.code, 2, "bulk-write on wire version {wire}: {run:?}");
        assert!(run.stderr.contains("--write-mode bulk-write needs MongoDB 8.0 or later"), "{}", run.stderr);
        assert_eq!(db.count("users").await, 0);
    }
    let mut results = Vec::new();
    for &mode in modes {
        let db = TestDb::new(&format!("mode_{}", mode.replace('-', "_"))).await;
        let p = Platform::new();
        p.users(&json!([
            user("u1", "a@x.io", "2025-10-01T00:00:00Z"),
            user("u2", "b@x.io", "2025-10-01T00:00:00Z"),
            user("u3", "a@x.io", "2025-10-01T00:00:00Z")
        ]));
        p.datasets(&json!([dataset("d1", 1), dataset("d2", 2)]));
        for i in 0..5 {
            p.job(&format!("j{i}"), &job(&format!("j{i}"), "running", "2025-10-12T09:41:13.002Z"));
        }
        let run = docmirror(&db, &p, &["sync", "--write-mode", mode, "--batch-size", "3"]).await;
        assert_eq!(run.code, 3, "{mode}: {run:?}");
        assert_eq!((run.count("inserted"), run.count("rejected")), (9, 1), "{mode}: {}", run.summary());
        // Change one of each kind, remove a job, and sync again through the same path.
        let mut u2 = user("u2", "b@x.io", "2025-10-02T00:00:00Z");
        u2["name"] = json!("changed");
        p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), u2]));
        p.remove("artifacts/jobs/j4.json");
        let run = docmirror(&db, &p, &["sync", "--write-mode", mode, "--batch-size", "3"]).await;
        assert_eq!(run.code, 0, "{mode}: {run:?}");
        assert_eq!((run.count("updated"), run.count("archived")), (1, 1), "{mode}: {}", run.summary());
        let strip = |docs: Vec<Document>| -> Vec<Document> {
            docs.into_iter()
                .map(|mut d| {
                    d.remove("_mirror");
                    d
                })
                .collect()
        };
        results.push([
            strip(db.docs("users").await),
            strip(db.docs("datasets").await),
            strip(db.docs("training_jobs").await),
        ]);
        assert_eq!(db.count("mirror_archive").await, 1);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_mongodb_exits_4_without_leaking_the_password() {
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let port = free_port();
    let uri = format!("mongodb://admin:s3cret-uri-pw@127.0.0.1:{port}/db?serverSelectionTimeoutMS=300");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
        .args(["--log-format", "json", "sync", "--mongodb-timeout", "2"])
        .env("MONGODB_URI", &uri)
        .env("DOCMIRROR_DATA_DIR", p.data())
        .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("MongoDB"), "{stderr}");
    assert!(stderr.contains("admin:***@127.0.0.1"), "the redacted URI is shown: {stderr}");
    assert_no_secrets(&stderr);
    assert_no_secrets(&String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_folder_is_a_fatal_error_with_its_own_code() {
    let db = TestDb::new("no_folders").await;
    let p = Platform::new();
    let run = docmirror_env(
        &db,
        &p,
        &["sync"],
        &[("DOCMIRROR_DATA_DIR", "/nonexistent/d"), ("DOCMIRROR_ARTIFACTS_DIR", "/nonexistent/a")],
    )
    .await;
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("/nonexistent/d"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_that_cannot_be_built_names_the_clash() {
    let db = TestDb::new("index_clash").await;
    let users = db.db.collection::<Document>("users");
    users
        .insert_many([doc! {"_id": "x1", "email": "same@x.io"}, doc! {"_id": "x2", "email": "same@x.io"}])
        .await
        .unwrap();
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 5, "{run:?}");
    for needle in ["users", "email_unique", "same@x.io", "x1", "x2"] {
        assert!(run.stderr.contains(needle), "missing {needle:?} in {}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_writers_never_leave_the_older_version() {
    let db = TestDb::new("race").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-01-01T00:00:00.000Z")]));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    // How long a run takes, so the app's writes can be spread over all of it:
    // before the mirror reads, between its read and its write, and after.
    let started = std::time::Instant::now();
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let run_ms = u64::try_from(started.elapsed().as_millis()).unwrap().max(50);
    let users = db.db.collection::<Document>("users");
    let base = bson::DateTime::parse_rfc3339_str("2025-01-01T00:00:00Z").unwrap().timestamp_millis();
    let mut refused_by_the_check = 0;
    for i in 0..20i64 {
        // The file moves forward, and during the mirror's run the app writes a version newer still.
        let file_v = bson::DateTime::from_millis(base + 1000 * (2 * i + 1));
        let app_v = bson::DateTime::from_millis(base + 1000 * (2 * i + 2));
        let mut u = user("u1", "a@x.io", &file_v.try_to_rfc3339_string().unwrap());
        u["name"] = json!(format!("file-{i}"));
        p.users(&json!([u]));
        let at = run_ms * u64::try_from(i).unwrap() / 19;
        let app = {
            let users = users.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(at)).await;
                users
                    .update_one(doc! {"_id": "u1"}, doc! {"$set": {"name": format!("app-{i}"), "updatedAt": app_v}})
                    .await
                    .unwrap();
            })
        };
        let run = docmirror(&db, &p, &["sync"]).await;
        app.await.unwrap();
        assert_eq!(run.code, 0, "{run:?}");
        if run.stderr.contains("the write's version check refused it") {
            refused_by_the_check += 1;
        }
        let d = db.doc("users", "u1").await.unwrap();
        assert_eq!(
            d.get_str("name").unwrap(),
            format!("app-{i}"),
            "round {i}: the older file version won: {}",
            run.summary()
        );
        assert_eq!(*d.get_datetime("updatedAt").unwrap(), app_v);
    }
    // Rounds whose app write landed between the mirror's read and its write:
    // only the server-side version check kept the newer version there.
    eprintln!(
        "race: {refused_by_the_check} of 20 rounds refused by the write's own version check (runs of {run_ms} ms)"
    );
}

/// A whole source is compared and written in chunks (`--chunk-records`); where
/// the chunk boundaries fall must not change any outcome: duplicates found
/// chunks apart, changes, deletes and rejects come out as with one chunk.
#[tokio::test(flavor = "multi_thread")]
async fn chunk_boundaries_change_nothing() {
    async fn contents(db: &TestDb) -> Vec<(String, Vec<Document>)> {
        let mut out = Vec::new();
        for coll in ["users", "datasets", "training_jobs", "mirror_rejects", "mirror_archive"] {
            let mut docs = db.docs(coll).await;
            for d in &mut docs {
                d.remove("_mirror");
                d.remove("first_seen");
                d.remove("deleted_at");
                if let Ok(inner) = d.get_document_mut("document") {
                    inner.remove("_mirror");
                }
            }
            docs.sort_by_key(|d| d.get("_id").map(|b| b.to_string()));
            out.push((coll.to_string(), docs));
        }
        out
    }
    let mut users: Vec<serde_json::Value> =
        (0..23).map(|i| user(&format!("u{i:02}"), &format!("u{i}@x.io"), "2025-10-01T00:00:00Z")).collect();
    // Chunks apart: a duplicate id and a duplicate email, both later than the first holder.
    users.push(user("u01", "other@x.io", "2025-10-01T00:00:00Z"));
    users.push(user("u99", "u2@x.io", "2025-10-01T00:00:00Z"));
    let mut results = Vec::new();
    for chunk in ["1", "3", "2000"] {
        let db = TestDb::new(&format!("chunk_boundaries_{chunk}")).await;
        let p = Platform::new();
        p.users(&json!(users));
        for j in 0..7 {
            p.job(&format!("job_{j}"), &job(&format!("job_{j}"), "running", "2025-10-12T09:41:13.002Z"));
        }
        let first = docmirror(&db, &p, &["sync", "--chunk-records", chunk]).await;
        assert_eq!(first.code, 3, "{first:?}");
        assert_eq!(first.count("inserted"), 23 + 7, "{first:?}");
        assert_eq!(first.count("rejected"), 2, "{first:?}");
        // Change one user, drop two users (the second lies chunks away) and a job.
        let mut next = users.clone();
        next[5]["name"] = json!("Renamed");
        next[5]["updatedAt"] = json!("2025-11-01T00:00:00Z");
        next.remove(20);
        next.remove(3);
        p.users(&json!(next));
        p.remove("artifacts/jobs/job_3.json");
        let dry = docmirror(&db, &p, &["sync", "--dry-run", "--chunk-records", chunk]).await;
        assert_eq!(dry.count("updated"), 1, "{dry:?}");
        assert_eq!(dry.count("archived") + dry.count("deleted"), 3, "{dry:?}");
        let second = docmirror(&db, &p, &["sync", "--chunk-records", chunk]).await;
        assert_eq!(second.count("updated"), 1, "{second:?}");
        assert_eq!(second.count("archived"), 3, "{second:?}");
        assert_eq!(second.count("unchanged"), 20 + 6, "{second:?}");
        let third = docmirror(&db, &p, &["sync", "--chunk-records", chunk]).await;
        assert_eq!(third.count("unchanged"), 21 + 6, "{third:?}");
        assert_eq!(third.count("inserted") + third.count("updated") + third.count("archived"), 0, "{third:?}");
        results.push(contents(&db).await);
    }
    assert_eq!(results[0], results[2], "chunks of 1 and of 2000 must give the same collections");
    assert_eq!(results[1], results[2], "chunks of 3 and of 2000 must give the same collections");
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_wins_compares_versions_the_app_stored_as_strings_or_numbers() {
    let db = TestDb::new("newer_wins_forms").await;
    let p = Platform::new();
    let ids = ["u1", "u2", "u3", "u4"];
    let at = |t: &str| -> Vec<serde_json::Value> { ids.iter().map(|id| user(id, &format!("{id}@x.io"), t)).collect() };
    p.users(&json!(at("2025-10-01T00:00:00Z")));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    // The app (dual-write) stores its versions in other forms.
    let users = db.db.collection::<Document>("users");
    let newer_ms = bson::DateTime::parse_rfc3339_str("2025-12-01T00:00:00Z").unwrap().timestamp_millis();
    for (id, v) in [
        ("u1", Bson::String("2025-12-01T00:00:00.000Z".into())),
        ("u2", Bson::String("2025-09-01T00:00:00.000Z".into())),
        ("u3", Bson::String("yesterday".into())),
        ("u4", Bson::Int64(newer_ms)),
    ] {
        users.update_one(doc! {"_id": id}, doc! {"$set": {"updatedAt": v, "name": "from the app"}}).await.unwrap();
    }
    // The files change too, with a version between the two.
    p.users(&json!(at("2025-10-05T00:00:00Z")));
    let run = docmirror(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "u3 cannot be compared: {run:?}");
    assert_eq!(run.count("skipped (newer in MongoDB)"), 2, "{}", run.summary());
    assert_eq!(run.count("updated"), 1, "{}", run.summary());
    let name = |d: Document| d.get_str("name").unwrap().to_string();
    assert_eq!(name(db.doc("users", "u1").await.unwrap()), "from the app", "a newer ISO string wins");
    assert_ne!(name(db.doc("users", "u2").await.unwrap()), "from the app", "an older ISO string loses");
    assert_eq!(name(db.doc("users", "u3").await.unwrap()), "from the app", "not overwritten silently");
    assert_eq!(name(db.doc("users", "u4").await.unwrap()), "from the app", "newer epoch milliseconds win");
    let rejects = db.rejects().await;
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].get_str("reason_code").unwrap(), "version_uncomparable");
    assert!(rejects[0].get_str("reason").unwrap().contains("updatedAt"), "{:?}", rejects[0]);
}

/// The users of the streaming test: one duplicate email (rejected), one
/// unparsable record (rejected), enough records for several blocks.
fn many_users(n: usize) -> serde_json::Value {
    let mut users: Vec<serde_json::Value> =
        (0..n).map(|i| user(&format!("u{i}"), &format!("user{i}@example.com"), "2025-10-01T00:00:00.000Z")).collect();
    users.push(user("dup", "user7@example.com", "2025-10-01T00:00:00.000Z"));
    users.push(json!({"id": "bad", "email": "bad@example.com", "createdAt": "not a date"}));
    serde_json::Value::Array(users)
}

/// Every document of a collection without the mirror's time stamps.
async fn contents(db: &TestDb, coll: &str) -> Vec<Document> {
    let mut docs = db.docs(coll).await;
    for d in &mut docs {
        if let Ok(m) = d.get_document_mut("_mirror") {
            m.remove("at");
        }
    }
    docs.sort_by_key(|d| d.get_str("_id").unwrap_or_default().to_string());
    docs
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_read_in_a_stream_gives_what_a_whole_read_gives_and_a_broken_one_is_refused_whole() {
    let (whole, streamed) = (TestDb::new("stream_whole").await, TestDb::new("stream_streamed").await);
    let p = Platform::new();
    p.users(&many_users(1_500)); // two blocks of 1,024
    p.datasets(&json!([dataset("d1", 12)]));
    let stream = [("DOCMIRROR_STREAM_FROM_BYTES", "0")];
    let a = docmirror(&whole, &p, &["sync"]).await;
    let b = docmirror_env(&streamed, &p, &["sync"], &stream).await;
    assert_eq!((a.code, b.code), (3, 3), "records were rejected: {a:?}\n{b:?}");
    assert!(!a.stderr.contains("in a stream"), "a small file is read whole by default");
    assert!(b.stderr.contains("Reading a large file in a stream") && b.stderr.contains("data/users.json"), "{b:?}");
    let untimed = |r: &Run| r.summary().rsplit_once(';').map(|(s, _)| s.to_string());
    assert_eq!(untimed(&a), untimed(&b));
    assert_eq!(b.count("inserted"), 1_501, "{b:?}");
    assert_eq!(b.count("rejected"), 2, "{b:?}");
    for coll in ["users", "datasets"] {
        assert_eq!(contents(&whole, coll).await, contents(&streamed, coll).await, "{coll}");
    }
    let reasons = |rejects: Vec<Document>| {
        let mut r: Vec<String> = rejects
            .iter()
            .map(|d| format!("{} {}", d.get_str("source").unwrap_or(""), d.get_str("reason").unwrap_or("")))
            .collect();
        r.sort();
        r
    };
    assert_eq!(reasons(whole.rejects().await), reasons(streamed.rejects().await));

    // A syntax error at the very end: nothing of the file is written or
    // deleted, and the problem is worded as for a file read whole.
    let mut text = serde_json::to_string_pretty(&many_users(1_500)).unwrap();
    text = text.replace("\"u3\"", "\"u3-renamed\"").replace("\"u1499\"", "\"u1499-renamed\"");
    text.truncate(text.len() - 1);
    text.push_str(",]");
    p.write("data/users.json", &text);
    // (`--full`: a start from the checkpoint compares a changed file with its memo, whole.)
    let a = docmirror(&whole, &p, &["sync", "--full"]).await;
    let b = docmirror_env(&streamed, &p, &["sync", "--full"], &stream).await;
    assert!(b.stderr.contains("Reading a large file in a stream"), "{b:?}");
    assert_eq!(b.count("inserted") + b.count("updated") + b.count("deleted") + b.count("archived"), 0, "{b:?}");
    for id in ["u3", "u1499"] {
        assert!(streamed.doc("users", id).await.is_some(), "{id} was not deleted");
        assert!(
            streamed.doc("users", &format!("{id}-renamed")).await.is_none(),
            "nothing of the broken file is written"
        );
    }
    assert_eq!(streamed.count("users").await, 1_500);
    assert_eq!(reasons(whole.rejects().await), reasons(streamed.rejects().await), "{a:?}\n{b:?}");
    assert!(reasons(streamed.rejects().await).iter().any(|r| r.contains("not valid JSON")), "{b:?}");
}
