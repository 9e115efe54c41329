//! `--target postgres` against a real PostgreSQL server (the guide's tables).

use serde_json::{json, Value};

use crate::support::{user, Platform, HASH_A};
use crate::support_pg::{docmirror_pg, docmirror_pg_env, TestPg};

/// The repository's example tree, copied into a platform of the test's own.
fn examples() -> Platform {
    let p = Platform::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for rel in [
        "data/users.json",
        "data/datasets/metadata.json",
        "artifacts/jobs/job_20251011_120000_7f3a.json",
        "artifacts/jobs/job_20251012_090000_b21c.json",
    ] {
        p.write(rel, std::fs::read(root.join(rel)).unwrap());
    }
    p
}

#[tokio::test]
async fn pg_sync_of_the_examples_fills_the_guides_tables_and_resync_writes_nothing() {
    let db = TestPg::new("pg_examples").await;
    let p = examples();
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("inserted"), 7, "{}", run.summary());
    assert!(run.summary().contains("skipped (newer in PostgreSQL) 0"), "{}", run.summary());
    assert_eq!((db.count("users").await, db.count("datasets").await, db.count("training_jobs").await), (3, 2, 2));
    // camelCase fields in snake_case columns, emails normalised, times as UTC wall time.
    assert_eq!(
        db.text("SELECT email || ' ' || created_at::text FROM users WHERE id = '9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e'")
            .await,
        "bob.builder@example.com 2025-09-03 10:20:30"
    );
    // training_jobs.id is job_id; params is jsonb; numbers in the guide's DECIMAL columns.
    let job = db
        .text(
            "SELECT id || ' ' || job_id || ' ' || jsonb_typeof(params) || ' ' || progress::text || ' ' || user_id \
             FROM training_jobs WHERE id = 'job_20251012_090000_b21c'",
        )
        .await;
    assert!(job.starts_with("job_20251012_090000_b21c job_20251012_090000_b21c object "), "{job}");
    assert_eq!(db.count("docmirror_rows").await, 7);
    assert_eq!(db.count("mirror_rejects").await, 0);

    let again = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!((again.count("inserted"), again.count("updated"), again.count("unchanged")), (0, 0, 7));
    let written: Vec<String> = db.texts("SELECT written_at::text FROM docmirror_rows ORDER BY id").await;
    let third = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(third.count("unchanged"), 7);
    assert_eq!(db.texts("SELECT written_at::text FROM docmirror_rows ORDER BY id").await, written);

    let verify = docmirror_pg(&db, &p, &["verify"]).await;
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stdout.contains("verify: PostgreSQL holds exactly what the files hold"), "{}", verify.stdout);
}

#[tokio::test]
async fn pg_changed_records_are_updated_and_removed_ones_archived() {
    let db = TestPg::new("pg_change").await;
    let p = Platform::new();
    let mut u1 = user("u1", "one@x.io", "2025-10-01T00:00:00.000Z");
    u1["team"] = json!("vision");
    p.users(&json!([
        u1,
        user("u2", "two@x.io", "2025-10-01T00:00:00.000Z"),
        user("u3", "three@x.io", "2025-10-01T00:00:00.000Z")
    ]));
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.code, 0);
    // A field with no column is kept with the row's bookkeeping.
    assert_eq!(db.text("SELECT extras->>'team' FROM docmirror_rows WHERE tbl = 'users' AND id = 'u1'").await, "vision");

    let mut u1b = user("u1", "one@x.io", "2025-10-02T00:00:00.000Z");
    u1b["name"] = json!("Renamed");
    p.users(&json!([u1b, user("u2", "two@x.io", "2025-10-01T00:00:00.000Z")]));
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!((run.count("updated"), run.count("archived"), run.count("unchanged")), (1, 1, 1), "{}", run.summary());
    assert_eq!(
        db.text("SELECT name || ' ' || updated_at::text FROM users WHERE id = 'u1'").await,
        "Renamed 2025-10-02 00:00:00"
    );
    assert_eq!(db.texts("SELECT id FROM users ORDER BY id").await, ["u1", "u2"]);
    assert_eq!(
        db.text("SELECT row_data->>'email' FROM mirror_archive WHERE tbl = 'users' AND id = 'u3'").await,
        "three@x.io"
    );
    // The field the record lost is gone from the extras too.
    assert_eq!(db.text("SELECT extras::text FROM docmirror_rows WHERE tbl = 'users' AND id = 'u1'").await, "{}");
    assert_eq!(docmirror_pg(&db, &p, &["verify"]).await.code, 0);
}

#[tokio::test]
async fn pg_newer_rows_are_kept_under_newer_wins() {
    let db = TestPg::new("pg_newer").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "one@x.io", "2025-10-01T00:00:00.000Z")]));
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.code, 0);
    db.exec("UPDATE users SET name = 'From the app', updated_at = '2025-12-01' WHERE id = 'u1'").await;
    let mut u1 = user("u1", "one@x.io", "2025-10-05T00:00:00.000Z");
    u1["name"] = json!("From the file");
    p.users(&json!([u1]));
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.count("skipped (newer in PostgreSQL)"), 1, "{}", run.summary());
    assert_eq!(db.text("SELECT name FROM users WHERE id = 'u1'").await, "From the app");
    let run = docmirror_pg(&db, &p, &["sync", "--conflict", "file-wins"]).await;
    assert_eq!(run.count("updated"), 1, "{}", run.summary());
    assert_eq!(db.text("SELECT name FROM users WHERE id = 'u1'").await, "From the file");
}

#[tokio::test]
async fn pg_refusals_are_per_record_rejects_and_a_late_parent_is_retried() {
    let db = TestPg::new("pg_refusals").await;
    db.make_tables().await;
    let p = Platform::new();
    // A row the application wrote itself holds u4's email.
    db.exec(&format!(
        "INSERT INTO users (id, email, name, password) VALUES ('app-user', 'taken@x.io', 'App', '{HASH_A}')"
    ))
    .await;
    let mut long_name = user("u2", "two@x.io", "2025-10-01T00:00:00.000Z");
    long_name["name"] = json!("n".repeat(300));
    let mut no_name = user("u3", "three@x.io", "2025-10-01T00:00:00.000Z");
    no_name.as_object_mut().unwrap().remove("name");
    let taken = user("u4", "taken@x.io", "2025-10-01T00:00:00.000Z");
    p.users(&json!([user("u1", "one@x.io", "2025-10-01T00:00:00.000Z"), long_name, no_name, taken]));
    let mut ds = crate::support::dataset("d1", 10);
    ds["uploaded_by"] = json!("u1");
    p.datasets(&json!([ds]));
    let mut overflow = crate::support::job("j1", "running", "2025-10-12T09:00:00.000Z");
    overflow["progress"] = json!(1000.5);
    p.job("j1", &overflow);
    let mut orphan = crate::support::job("j2", "running", "2025-10-12T09:00:00.000Z");
    orphan["user_id"] = json!("u9");
    p.job("j2", &orphan);
    p.job("j3", &crate::support::job("j3", "running", "2025-10-12T09:00:00.000Z"));

    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    let codes = db.texts("SELECT record_id || ' ' || reason_code FROM mirror_rejects ORDER BY record_id").await;
    assert_eq!(
        codes,
        ["j1 number_out_of_range", "j2 missing_parent", "u2 value_too_long", "u3 not_null_missing", "u4 email_taken"]
    );
    let reason =
        db.text("SELECT reason || ' ' || source || ' ' || position FROM mirror_rejects WHERE record_id = 'u2'").await;
    assert!(reason.contains("SQLSTATE 22001") && reason.contains("data/users.json 1"), "{reason}");
    let reason = db.text("SELECT reason FROM mirror_rejects WHERE record_id = 'j2'").await;
    assert!(reason.contains("training_jobs") && reason.contains("u9"), "{reason}");
    // The good records of the same batches are in.
    assert_eq!(db.texts("SELECT id FROM users ORDER BY id").await, ["app-user", "u1"]);
    assert_eq!(db.texts("SELECT id FROM training_jobs").await, ["j3"]);
    assert_eq!(db.count("datasets").await, 1);

    // The parent arrives: the job waiting for it goes in, its reject goes away.
    p.users(&json!([
        user("u1", "one@x.io", "2025-10-01T00:00:00.000Z"),
        user("u9", "nine@x.io", "2025-10-01T00:00:00.000Z")
    ]));
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(db.texts("SELECT id FROM training_jobs ORDER BY id").await, ["j2", "j3"]);
    assert_eq!(db.texts("SELECT record_id FROM mirror_rejects").await, ["j1"]);
}

#[tokio::test]
async fn pg_verify_reports_a_row_changed_behind_the_mirror() {
    let db = TestPg::new("pg_verify").await;
    let p = examples();
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.code, 0);
    assert_eq!(docmirror_pg(&db, &p, &["verify"]).await.code, 0);
    db.exec("UPDATE users SET name = 'Mallory' WHERE email = 'alice@example.com'").await;
    db.exec("UPDATE training_jobs SET loss = 9 WHERE id = 'job_20251011_120000_7f3a'").await;
    db.exec("DELETE FROM training_jobs WHERE id = 'job_20251012_090000_b21c'").await;
    let run = docmirror_pg(&db, &p, &["verify"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("users/3f2a9c1e8b7d4a6f9e0c1b2a3d4e5f60: name"), "{}", run.stdout);
    assert!(run.stdout.contains("training_jobs/job_20251011_120000_7f3a: loss"), "{}", run.stdout);
    assert!(run.stdout.contains("missing   training_jobs/job_20251012_090000_b21c"), "{}", run.stdout);
    assert!(run.stdout.contains("difference(s) between the files and PostgreSQL"), "{}", run.stdout);
    // sync puts the missing row back; rows edited behind the mirror keep their
    // bookkeeping hash, so (as on MongoDB) sync does not see them: verify does.
    let sync = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(sync.count("inserted"), 1, "{}", sync.summary());
    let run = docmirror_pg(&db, &p, &["verify"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stdout.contains("missing   "), "{}", run.stdout);
    assert!(run.stdout.contains("users/3f2a9c1e8b7d4a6f9e0c1b2a3d4e5f60: name"), "{}", run.stdout);
}

#[tokio::test]
async fn pg_the_guides_user_model_logs_a_mirrored_user_in() {
    let db = TestPg::new("pg_login").await;
    let p = Platform::new();
    let mut u = user("u1", "  Dana@X.io", "2025-10-01T00:00:00.000Z");
    u["password"] = json!("correct-horse-plain");
    u.as_object_mut().unwrap().remove("role");
    p.users(&json!([u]));
    // Even the driver's own statement log, asked for, shows no hash (run_command checks every line).
    let run = docmirror_pg_env(&db, &p, &["sync"], &[("RUST_LOG", "trace,tokio_postgres=trace")]).await;
    assert_eq!(run.code, 0, "{run:?}");
    // A field the record lacks is NULL, as the guide's script writes it (not the column's DEFAULT).
    assert_eq!(db.text("SELECT COALESCE(role, 'NULL') FROM users").await, "NULL");
    // UserModel.findByEmail, then verifyPassword (bcrypt.compare with the row's password).
    let row = db
        .client
        .query_one("SELECT * FROM users WHERE email = $1", &[&"  Dana@X.io".trim().to_lowercase()])
        .await
        .unwrap();
    let hash: String = row.get("password");
    assert!(hash.starts_with("$2b$10$"), "bcrypt cost 10 as the guide's SALT_ROUNDS");
    assert!(bcrypt::verify("correct-horse-plain", &hash).unwrap());
    assert!(!bcrypt::verify("wrong-password", &hash).unwrap());
    // The plaintext is compared with bcrypt, not rewritten every time.
    let again = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(again.count("unchanged"), 1, "{}", again.summary());
    assert_eq!(db.text("SELECT password FROM users").await, hash);
}

/// What information_schema says about the guide's tables: columns, types,
/// nullability, defaults, constraints and indexes.
async fn shape(db: &TestPg) -> Vec<String> {
    let tables = "('users', 'datasets', 'training_jobs', 'audit_log')";
    let mut out = db
        .texts(&format!(
            "SELECT concat_ws(' ', table_name, ordinal_position, column_name, data_type, character_maximum_length, \
             numeric_precision, numeric_scale, is_nullable, column_default) FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name IN {tables} ORDER BY table_name, ordinal_position"
        ))
        .await;
    out.extend(
        db.texts(&format!(
            "SELECT tablename || ' ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public' \
             AND tablename IN {tables} ORDER BY indexname"
        ))
        .await,
    );
    out.extend(
        db.texts(&format!(
            "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid::regclass::text IN {tables} ORDER BY conname"
        ))
        .await,
    );
    out
}

#[tokio::test]
async fn pg_the_schema_is_the_guides_schema_sql() {
    let guide = TestPg::new("pg_guide_schema").await;
    guide.exec(include_str!("data/guide-schema.sql")).await;
    let mirrored = TestPg::new("pg_our_schema").await;
    let p = Platform::new();
    p.users(&json!([]));
    assert_eq!(docmirror_pg(&mirrored, &p, &["sync"]).await.code, 0);
    let (want, got) = (shape(&guide).await, shape(&mirrored).await);
    assert!(want.len() > 40, "{want:?}");
    assert_eq!(got, want);
    // Applying it again changes nothing.
    assert_eq!(docmirror_pg(&mirrored, &p, &["sync"]).await.code, 0);
    assert_eq!(shape(&mirrored).await, want);
    // The guide's migration script's statements run against the mirrored tables.
    mirrored
        .exec(&format!(
            "INSERT INTO users (id, email, name, password, role, created_at, updated_at) VALUES \
             ('g1', 'g@x.io', 'G', '{HASH_A}', 'user', '2025-10-01T00:00:00.000Z', '2025-10-01T00:00:00.000Z') \
             ON CONFLICT (id) DO NOTHING; \
             INSERT INTO training_jobs (id, job_id, status, progress, epoch, step, total_steps, loss, message, params, \
             pid, created_at, updated_at) VALUES ('j', 'j', 'queued', 0, NULL, NULL, NULL, NULL, NULL, '{{}}', NULL, \
             now(), now()) ON CONFLICT (job_id) DO NOTHING;"
        ))
        .await;
}

#[tokio::test]
async fn pg_the_url_password_never_reaches_the_output() {
    let p = Platform::new();
    p.users(&json!([]));
    let db = TestPg::new("pg_secret").await;
    let url = "postgresql://postgres:s3cret-uri-pw@127.0.0.1:9/nowhere";
    // run_command fails the test if the password shows up anywhere.
    let run = docmirror_pg_env(&db, &p, &["sync", "--mongodb-timeout", "0"], &[("DATABASE_URL", url)]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:9/nowhere"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_watch_connects_again_when_the_server_drops_its_session() {
    use crate::support_targets::{Db, Kind};
    let db = Db::new(Kind::Pg, "pg_reconnect").await;
    let Db::Pg(pg) = &db else { unreachable!() };
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let w = db.watch(&p, &[]).await;
    // What a server restart or an administrator's pg_terminate_backend does to docmirror's session.
    let killed = pg
        .text(
            "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    assert_ne!(killed, "0", "docmirror's session was there to drop");
    let mut u1 = user("u1", "a@x.io", "2025-10-02T00:00:00Z");
    u1["name"] = json!("After the drop");
    p.users(&json!([u1]));
    crate::support::eventually(30, "the change arrives over a new connection", || async {
        db.get("users", "u1", "name").await.as_deref() == Some("After the drop")
    })
    .await;
    let log = w.stop().await;
    assert!(log.contains("Connecting to PostgreSQL again"), "{log}");
}

#[tokio::test]
async fn pg_a_user_still_referenced_stays_until_its_jobs_are_gone() {
    let db = TestPg::new("pg_fk_delete").await;
    let p = Platform::new();
    let users = json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), user("u2", "b@x.io", "2025-10-01T00:00:00Z")]);
    p.users(&users);
    p.datasets(&json!([crate::support::dataset("d1", 1)]));
    p.job("j1", &crate::support::job("j1", "running", "2025-10-12T09:00:00.000Z"));
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.code, 0);
    // u1 leaves users.json while its job (and the dataset it uploaded) are still there.
    p.users(&json!([user("u2", "b@x.io", "2025-10-01T00:00:00Z")]));
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("archived"), 0, "{}", run.summary());
    assert!(
        run.stderr.contains("Cannot delete a row whose record is gone") && run.stderr.contains("SQLSTATE 23503"),
        "{}",
        run.stderr
    );
    assert_eq!(db.texts("SELECT id FROM users ORDER BY id").await, ["u1", "u2"]);
    assert_eq!(db.count("mirror_archive").await, 0, "nothing archived for a row that stayed");
    // Once the job and the dataset are gone too, the next run deletes it.
    p.remove("artifacts/jobs/j1.json");
    p.datasets(&json!([]));
    // One sync: j1 goes, then (in further passes) d1, which referred to u1, then u1.
    let run = docmirror_pg(&db, &p, &["sync", "--allow-mass-delete"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("archived"), 3, "j1, d1 and u1: {}", run.summary());
    assert_eq!(db.texts("SELECT id FROM users").await, ["u2"]);
    assert_eq!(db.count("datasets").await + db.count("training_jobs").await, 0);
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.count("unchanged"), 1);
}

#[tokio::test]
async fn pg_a_layout_with_a_table_the_guide_lacks_is_refused() {
    let db = TestPg::new("pg_layout").await;
    let p = Platform::new();
    p.users(&json!([]));
    let mut layout: serde_json::Value = serde_json::from_str(include_str!("../layouts/default.json")).unwrap();
    layout["sources"][0]["collection"] = json!("people");
    p.write("layout.json", serde_json::to_vec(&layout).unwrap());
    let path = p.path("layout.json");
    let run = docmirror_pg(&db, &p, &["sync", "--layout", path.to_str().unwrap()]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("\"people\", which is not one of the guide's tables"), "{}", run.stderr);
}

#[tokio::test]
async fn pg_a_users_table_without_the_guides_columns_stops_the_run() {
    let db = TestPg::new("pg_foreign_users").await;
    db.exec("CREATE TABLE users (id VARCHAR(255) PRIMARY KEY, mail TEXT)").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("table users exists without the guide's column(s) email, name, password"),
        "{}",
        run.stderr
    );
    assert_eq!(db.count("users").await, 0);
}

#[tokio::test]
async fn pg_a_database_not_on_utc_is_pointed_out() {
    let db = TestPg::new("pg_zone").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    db.exec(&format!("ALTER DATABASE \"{}\" SET timezone = 'UTC'", db.name)).await;
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert!(!run.stderr.contains("TimeZone is not UTC"), "{}", run.stderr);
    db.exec(&format!("ALTER DATABASE \"{}\" SET timezone = 'Europe/Berlin'", db.name)).await;
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("TimeZone is not UTC") && run.stderr.contains("Europe/Berlin"), "{}", run.stderr);
    // docmirror's own writes stay UTC whatever the session's zone.
    assert_eq!(db.text("SELECT updated_at::text FROM users").await, "2025-10-01 00:00:00");
}

#[tokio::test]
async fn pg_export_writes_the_apps_own_rows_with_the_files_field_names() {
    let db = TestPg::new("pg_export_app").await;
    let p = Platform::new();
    let mut u = user("u1", "a@x.io", "2025-10-01T00:00:00.000Z");
    u["password"] = json!("correct-horse-plain");
    p.users(&json!([u]));
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.code, 0);
    // After the cutover the app registers a user itself, as the guide's UserModel.create does.
    db.exec(&format!(
        "INSERT INTO users (id, email, name, password, role, created_at, updated_at) \
         VALUES ('a1b2', 'new@x.io', 'New', '{HASH_A}', 'user', '2025-11-02 10:00:00.5', '2025-11-02 10:00:00.5')"
    ))
    .await;
    let out = tempfile::tempdir().unwrap();
    let run = docmirror_pg(&db, &p, &["export", "--out", out.path().to_str().unwrap(), "--overwrite"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("data/users.json")).unwrap()).unwrap();
    assert_eq!(exported[0]["id"], "u1");
    let pw = exported[0]["password"].as_str().unwrap();
    assert!(bcrypt::verify("correct-horse-plain", pw).unwrap(), "the bcrypt hash, never the plaintext");
    assert_eq!(
        exported[1],
        json!({"id": "a1b2", "email": "new@x.io", "name": "New", "password": HASH_A, "role": "user",
               "createdAt": "2025-11-02T10:00:00.500Z", "updatedAt": "2025-11-02T10:00:00.500Z"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_under_watch_a_job_whose_user_arrives_later_goes_in_then() {
    use crate::support_targets::{Db, Kind};
    let db = Db::new(Kind::Pg, "pg_late_parent").await;
    let Db::Pg(pg) = &db else { unreachable!() };
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    p.datasets(&json!([crate::support::dataset("d1", 1)]));
    // No periodic rescan: only the retry after a parent was written can bring the job in.
    let w = db.watch(&p, &["--rescan-interval-secs", "0"]).await;
    let mut orphan = crate::support::job("j2", "running", "2025-10-12T09:00:00.000Z");
    orphan["user_id"] = json!("u9");
    p.job("j2", &orphan);
    crate::support::eventually(20, "the job refused for its missing user", || async {
        pg.texts("SELECT reason_code FROM mirror_rejects").await == ["missing_parent"]
    })
    .await;
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z"), user("u9", "nine@x.io", "2025-10-01T00:00:00Z")]));
    crate::support::eventually(20, "the job, once its user is there", || async {
        db.get("training_jobs", "j2", "user_id").await.as_deref() == Some("u9")
    })
    .await;
    crate::support::eventually(20, "its reject cleared", || async { pg.count("mirror_rejects").await == 0 }).await;
    let log = w.stop().await;
    assert!(log.contains("Trying again the records that waited for a parent"), "{log}");
}

#[tokio::test]
async fn pg_an_update_keeps_what_the_app_wrote_in_columns_the_record_lacks() {
    let db = TestPg::new("pg_app_columns").await;
    let p = Platform::new();
    let mut u1 = user("u1", "a@x.io", "2025-10-01T00:00:00Z");
    u1.as_object_mut().unwrap().remove("role");
    let mut u2 = user("u2", "b@x.io", "2025-10-01T00:00:00Z");
    u2["role"] = json!("admin");
    p.users(&json!([u1, u2]));
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.code, 0);
    // The app gives u1 a role the file does not know.
    db.exec("UPDATE users SET role = 'reviewer' WHERE id = 'u1'").await;
    // Both records change; u2 loses the role field it had.
    let mut u1 = user("u1", "a@x.io", "2025-10-02T00:00:00Z");
    u1.as_object_mut().unwrap().remove("role");
    u1["name"] = json!("Renamed");
    let mut u2 = user("u2", "b@x.io", "2025-10-02T00:00:00Z");
    u2.as_object_mut().unwrap().remove("role");
    p.users(&json!([u1, u2]));
    let run = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(run.count("updated"), 2, "{}", run.summary());
    // The app's column stays; the column the mirror wrote and the record lost is emptied.
    assert_eq!(db.text("SELECT name || ' ' || role FROM users WHERE id = 'u1'").await, "Renamed reviewer");
    assert_eq!(db.text("SELECT COALESCE(role, 'NULL') FROM users WHERE id = 'u2'").await, "NULL");
}

/// `VmHWM` (peak) and `VmRSS` (now) of a process, in KiB.
fn peak_and_resident(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}: {status}"));
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test]
async fn pg_watch_hands_the_memory_of_its_initial_reconcile_back_to_the_system() {
    // README: after each reconcile, watch hands the memory it freed back to
    // the system. A large initial reconcile (PostgreSQL's, to keep it short)
    // peaks well above what watch keeps; idle, the allocator would keep the
    // difference without the purge.
    use crate::support_targets::{Db, Kind};
    let db = Db::new(Kind::Pg, "pg_watch_memory").await;
    let p = Platform::new();
    let users: Vec<Value> = (0..60_000)
        .map(|i| {
            let mut u = user(&format!("u{i}"), &format!("user{i}@x.io"), "2025-10-01T00:00:00Z");
            u["bio"] = json!("x".repeat(200));
            u
        })
        .collect();
    p.users(&json!(users));
    let w = db.watch(&p, &["--rescan-interval-secs", "0"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let pid = w.child.id().expect("watch exited");
    let (peak, now) = peak_and_resident(pid);
    let log = w.stop().await;
    // (Empty tables, but watch never loads them in one transaction: that is sync's.)
    assert!(!log.contains("Loading empty tables"), "{log}");
    // (Measured: peak about 110 MiB since users.json is streamed (165 MiB
    // before); resident about 60 MiB with the purge.)
    assert!(
        now + 30 * 1024 < peak,
        "watch still holds its initial reconcile's memory: resident {now} KiB, peak {peak} KiB"
    );
}
