//! `sync` into empty PostgreSQL tables: one transaction that locks them,
//! drops their keys and indexes, loads the rows with COPY and makes the keys
//! and indexes again (`src/postgres/fresh.rs`). What it leaves must be
//! exactly what a load in batches (`--no-exclusive-load`) leaves, refusals
//! included; a load that stops leaves the tables as they were.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{command, dataset, eventually, job, user, Platform};
use crate::support_pg::{docmirror_pg, TestPg};

/// Every key, constraint and index of the database's tables, with whether it is validated.
async fn shape(db: &TestPg) -> Vec<String> {
    let mut all = db
        .texts(
            "SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' valid=' || convalidated \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        )
        .await;
    all.extend(
        db.texts(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relnamespace = 'public'::regnamespace",
        )
        .await,
    );
    all.sort();
    all
}

/// The mirrored rows, their bookkeeping (but the time it was written) and the rejects, as text.
async fn contents(db: &TestPg) -> Vec<String> {
    let mut out = Vec::new();
    for t in ["users", "datasets", "training_jobs"] {
        out.push(
            db.text(&format!("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {t} t")).await,
        );
    }
    out.push(
        db.text(
            "SELECT coalesce(string_agg(concat_ws(',', tbl, id, source, position, hash, fields, extras, raw, uniq), \
             E'\\n' ORDER BY tbl, id), '') FROM docmirror_rows",
        )
        .await,
    );
    out.push(
        db.text(
            "SELECT coalesce(string_agg(concat_ws(',', key, collection, source, position, record_id, reason_code, \
             clashes_with_id), E'\\n' ORDER BY key), '') FROM mirror_rejects",
        )
        .await,
    );
    out
}

fn platform(users: usize, jobs: usize) -> Platform {
    let p = Platform::new();
    let all: Vec<Value> =
        (0..users).map(|i| user(&format!("u{i}"), &format!("user{i}@x.io"), "2025-10-01T00:00:00.000Z")).collect();
    p.users(&json!(all));
    p.datasets(&json!([dataset("d1", 1), dataset("d2", 2)]));
    for i in 0..jobs {
        let mut j = job(&format!("j{i:02}"), "running", "2025-10-12T09:00:00.000Z");
        j["user_id"] = json!(format!("u{}", i % users.max(1)));
        p.job(&format!("j{i:02}"), &j);
    }
    p
}

#[tokio::test]
async fn pg_sync_into_empty_tables_loads_in_one_transaction_and_leaves_what_batches_leave() {
    let p = platform(40, 12);
    // A user with characters COPY's text format escapes.
    let mut users: Value = serde_json::from_slice(&std::fs::read(p.path("data/users.json")).unwrap()).unwrap();
    users[3]["name"] = json!("Tab\there, new\nline, back\\slash, \\N");
    users[4]["team"] = json!("a\tb");
    p.users(&users);

    let fresh = TestPg::new("pg_fresh_ok").await;
    // A dry run writes nothing, so it never starts the load.
    let dry = docmirror_pg(&fresh, &p, &["sync", "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(!dry.stderr.contains("Loading empty tables"), "{}", dry.stderr);
    let run = docmirror_pg(&fresh, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("Loading empty tables in one transaction"), "{}", run.stderr);
    assert!(!run.stderr.contains("rolled back"), "{}", run.stderr);
    assert_eq!(run.count("inserted"), 54, "{}", run.summary());

    let batches = TestPg::new("pg_fresh_ref").await;
    let reference = docmirror_pg(&batches, &p, &["sync", "--no-exclusive-load"]).await;
    assert_eq!(reference.code, 0, "{reference:?}");
    assert!(!reference.stderr.contains("Loading empty tables"), "{}", reference.stderr);

    // The same rows, bookkeeping and keys (every one validated) as a load in batches.
    assert_eq!(contents(&fresh).await, contents(&batches).await);
    let keys = shape(&fresh).await;
    assert_eq!(keys, shape(&batches).await);
    assert!(keys.iter().any(|k| k.contains("users_email_key UNIQUE (email) valid=true")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("FOREIGN KEY (user_id) REFERENCES users(id) valid=true")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("CREATE INDEX docmirror_rows_source")), "{keys:?}");

    // Tables that hold rows are never loaded this way; nothing to do again, and verify agrees.
    let again = docmirror_pg(&fresh, &p, &["sync"]).await;
    assert_eq!((again.count("inserted"), again.count("unchanged")), (0, 54), "{}", again.summary());
    assert!(!again.stderr.contains("Loading empty tables"), "{}", again.stderr);
    let verify = docmirror_pg(&fresh, &p, &["verify"]).await;
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test]
async fn pg_a_load_postgresql_refuses_is_rolled_back_and_done_in_batches_rejecting_only_the_bad_records() {
    // A row COPY refuses in the middle of the load (a name too long for
    // VARCHAR(255)), and a foreign key that fails only when it is made again
    // at the end (a job whose user is not in the files).
    // (The long name's user is refused, and with it the job that names it.)
    for (case, bad, rejected) in [("long", "name", 2), ("orphan", "parent", 1)] {
        let p = platform(30, 10);
        if bad == "name" {
            let mut users: Value = serde_json::from_slice(&std::fs::read(p.path("data/users.json")).unwrap()).unwrap();
            users[7]["name"] = json!("n".repeat(300));
            p.users(&users);
        } else {
            let mut j = job("j04", "running", "2025-10-12T09:00:00.000Z");
            j["user_id"] = json!("u404");
            p.job("j04", &j);
        }
        let fresh = TestPg::new(&format!("pg_fresh_{case}")).await;
        let run = docmirror_pg(&fresh, &p, &["sync"]).await;
        assert!(run.stderr.contains("Loading empty tables in one transaction"), "{case}: {}", run.stderr);
        assert!(run.stderr.contains("The load into empty tables was rolled back"), "{case}: {}", run.stderr);

        let batches = TestPg::new(&format!("pg_fresh_{case}_ref")).await;
        let reference = docmirror_pg(&batches, &p, &["sync", "--no-exclusive-load"]).await;
        assert_eq!(run.code, 3, "{case}: {run:?}");
        assert_eq!(run.code, reference.code, "{case}");
        assert_eq!(
            (run.count("inserted"), run.count("rejected")),
            (reference.count("inserted"), reference.count("rejected")),
            "{case}: {} / {}",
            run.summary(),
            reference.summary()
        );
        assert_eq!(run.count("rejected"), rejected, "{case}: {}", run.summary());
        assert_eq!(contents(&fresh).await, contents(&batches).await, "{case}");
        assert_eq!(shape(&fresh).await, shape(&batches).await, "{case}");
    }
}

#[tokio::test]
async fn pg_a_load_that_cannot_lock_the_tables_goes_in_batches_beside_the_lock_holder() {
    let db = TestPg::new("pg_fresh_locked").await;
    db.make_tables().await;
    // Someone reads users in a long transaction: the load cannot have the table to itself.
    let holder = crate::support_pg::connect(&db.url).await;
    holder.batch_execute("BEGIN; LOCK TABLE users IN ACCESS SHARE MODE").await.unwrap();
    let p = platform(20, 4);
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("Not loading in one transaction"), "{}", run.stderr);
    assert!(run.stderr.contains("lock timeout"), "{}", run.stderr);
    assert!(!run.stderr.contains("Loading empty tables in one transaction"), "{}", run.stderr);
    assert_eq!(run.count("inserted"), 26, "{}", run.summary());
    assert_eq!(db.count("users").await, 20);
}

#[tokio::test]
async fn pg_a_load_that_stops_midway_leaves_the_tables_as_they_were_and_others_wait_rather_than_see_them_without_keys()
{
    let p = platform(60_000, 4);
    let db = TestPg::new("pg_fresh_killed").await;
    let reference = TestPg::new("pg_fresh_killed_ref").await;
    reference.make_tables().await;
    let before = shape(&reference).await;

    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("sync.log");
    let mut child = command("mongodb://127.0.0.1:9/none", &p)
        .env("DOCMIRROR_TARGET", "postgres")
        .env("DATABASE_URL", &db.url)
        .arg("sync")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().expect("sync exited at once").to_string();
    // Freeze it as soon as the keys are dropped, in the middle of its load.
    let mut seen = false;
    for _ in 0..12_000 {
        if std::fs::read_to_string(&log).unwrap_or_default().contains("Loading empty tables in one transaction") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "the load did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the load finished before it could be stopped (more records would keep it busy longer)"
    );
    // Another session waits for the table instead of seeing it without its keys.
    let other = crate::support_pg::connect(&db.url).await;
    other.batch_execute("SET lock_timeout = '300ms'").await.unwrap();
    let err = other.query_one("SELECT count(*) FROM users", &[]).await.expect_err("users was readable mid-load");
    assert_eq!(err.code().map(|c| c.code()), Some("55P03"), "{err}");

    // Killed: PostgreSQL rolls the load back; the tables are empty, keys and all.
    child.kill().await.unwrap();
    eventually(30, "the load rolled back", || {
        let url = db.url.clone();
        async move {
            let c = crate::support_pg::connect(&url).await;
            c.batch_execute("SET lock_timeout = '100ms'").await.unwrap();
            c.query_one("SELECT count(*) FROM users", &[]).await.is_ok()
        }
    })
    .await;
    assert_eq!(db.count("users").await, 0);
    assert_eq!(db.count("docmirror_rows").await, 0);
    assert_eq!(shape(&db).await, before);

    // And the next sync loads everything.
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("Loading empty tables in one transaction"), "{}", run.stderr);
    assert_eq!(db.count("users").await, 60_000);
    assert_eq!(shape(&db).await, before);
}
