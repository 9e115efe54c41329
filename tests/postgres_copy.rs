//! `--target postgres`'s bulk loads: batches of new rows go in with COPY, and
//! a batch PostgreSQL refuses is written again statement by statement, so
//! only the records it refuses are rejected (against a real PostgreSQL).

use serde_json::{json, Value};

use crate::support::{dataset, job, user, Platform, HASH_A};
use crate::support_pg::{docmirror_pg, TestPg};

fn users(n: usize) -> Vec<Value> {
    (0..n).map(|i| user(&format!("u{i}"), &format!("user{i}@x.io"), "2025-10-01T00:00:00.000Z")).collect()
}

#[tokio::test]
async fn pg_copy_loads_new_rows_with_awkward_text_as_the_files_hold_it() {
    let db = TestPg::new("pg_copy_text").await;
    let p = Platform::new();
    let mut all = users(30);
    // Characters COPY's text format escapes, in a column and in the extras.
    all[3]["name"] = json!("Tab\there, new\nline, back\\slash, CR\r, \\N");
    all[4]["team"] = json!("a\tb\\c\nd");
    all[5]["name"] = json!("");
    p.users(&json!(all));
    p.datasets(&json!([dataset("d1", 1)]));
    for i in 0..12 {
        let mut j = job(&format!("j{i:02}"), "running", "2025-10-12T09:00:00.000Z");
        j["user_id"] = json!(format!("u{i}"));
        p.job(&format!("j{i:02}"), &j);
    }
    // In batches beside other users of the tables (the load into empty tables
    // in one transaction is `postgres_fresh.rs`'s).
    let run = docmirror_pg(&db, &p, &["sync", "--no-exclusive-load"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("inserted"), 43, "{}", run.summary());
    assert!(!run.stderr.contains("Loading empty tables in one transaction"), "{}", run.stderr);
    // The users and the jobs went in with COPY (the one dataset by statement).
    assert!(run.stderr.matches("Loaded a batch with COPY").count() >= 2, "{}", run.stderr);
    assert!(!run.stderr.contains("COPY refused"), "{}", run.stderr);
    assert_eq!(db.text("SELECT name FROM users WHERE id = 'u3'").await, "Tab\there, new\nline, back\\slash, CR\r, \\N");
    assert_eq!(db.text("SELECT name || '|' FROM users WHERE id = 'u5'").await, "|");
    assert_eq!(db.text("SELECT extras->>'team' FROM docmirror_rows WHERE id = 'u4'").await, "a\tb\\c\nd");
    assert_eq!(
        db.text("SELECT source || ' ' || position FROM docmirror_rows WHERE id = 'u7'").await,
        "data/users.json 7"
    );
    assert_eq!(db.count("docmirror_rows").await, 43);
    // What COPY wrote is what the statements would have: nothing to do again, and verify agrees.
    let again = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!((again.count("inserted"), again.count("updated"), again.count("unchanged")), (0, 0, 43));
    let verify = docmirror_pg(&db, &p, &["verify"]).await;
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test]
async fn pg_a_copy_batch_postgresql_refuses_rejects_only_its_bad_records() {
    let db = TestPg::new("pg_copy_refused").await;
    db.make_tables().await;
    let p = Platform::new();
    // A row the application wrote itself holds u20's email.
    db.exec(&format!("INSERT INTO users (id, email, name, password) VALUES ('app', 'user20@x.io', 'App', '{HASH_A}')"))
        .await;
    // 100 new users: a batch loaded in two parts at once (one COPY lane
    // each), each part with refusals of its own.
    let mut all = users(100);
    all[7]["name"] = json!("n".repeat(300));
    all[12].as_object_mut().unwrap().remove("name");
    all[70]["name"] = json!("n".repeat(300));
    p.users(&json!(all));
    p.datasets(&json!([dataset("d1", 1)]));
    for i in 0..20 {
        let mut j = job(&format!("j{i:02}"), "running", "2025-10-12T09:00:00.000Z");
        match i {
            3 => j["progress"] = json!(1000.5),
            9 => j["user_id"] = json!("u404"),
            _ => {}
        }
        p.job(&format!("j{i:02}"), &j);
    }
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("COPY refused the batch"), "{}", run.stderr);
    assert_eq!((run.count("inserted"), run.count("rejected")), (115, 6), "{}", run.summary());
    let codes = db.texts("SELECT record_id || ' ' || reason_code FROM mirror_rejects ORDER BY record_id").await;
    assert_eq!(
        codes,
        [
            "j03 number_out_of_range",
            "j09 missing_parent",
            "u12 not_null_missing",
            "u20 email_taken",
            "u7 value_too_long",
            "u70 value_too_long"
        ]
    );
    // Every other record of the refused batches is in, with its bookkeeping.
    assert_eq!(db.count("users").await, 97);
    assert_eq!(db.count("training_jobs").await, 18);
    assert_eq!(db.count("docmirror_rows").await, 96 + 1 + 18);
    // verify: nothing missing or different; the app's row is the one extra.
    let verify = docmirror_pg(&db, &p, &["verify"]).await;
    let line = |c: &str| -> Vec<String> {
        let l = verify.stdout.lines().find(|l| l.starts_with(c)).unwrap_or_default();
        l.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(line("users "), ["users", "100", "97", "0", "1", "0", "0", "4"], "{}", verify.stdout);
    assert_eq!(line("training_jobs "), ["training_jobs", "20", "18", "0", "0", "0", "0", "2"], "{}", verify.stdout);
}

#[tokio::test]
async fn pg_jobs_loaded_before_their_user_go_in_once_the_user_does() {
    let db = TestPg::new("pg_copy_late_parent").await;
    let p = Platform::new();
    p.users(&json!(users(2)));
    p.datasets(&json!([dataset("d1", 1)]));
    // Ten jobs of a user the files do not hold yet: a whole COPY batch refused.
    for i in 0..10 {
        let mut j = job(&format!("j{i}"), "running", "2025-10-12T09:00:00.000Z");
        j["user_id"] = json!("u9");
        p.job(&format!("j{i}"), &j);
    }
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(run.count("rejected"), 10, "{}", run.summary());
    assert_eq!(db.texts("SELECT DISTINCT reason_code FROM mirror_rejects").await, ["missing_parent"]);
    assert_eq!(db.count("training_jobs").await, 0);
    // The user arrives: the next run loads it first, then the ten jobs (with COPY).
    let mut all = users(2);
    all.push(user("u9", "nine@x.io", "2025-10-01T00:00:00.000Z"));
    p.users(&json!(all));
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("inserted"), 11, "{}", run.summary());
    assert!(run.stderr.contains("Loaded a batch with COPY"), "{}", run.stderr);
    assert_eq!(db.count("training_jobs").await, 10);
    assert_eq!(db.count("mirror_rejects").await, 0);
}
