//! `--target postgres` over TLS, against a PostgreSQL cluster of the tests'
//! own with `ssl = on` and a certificate signed by a CA made for the run
//! (support_pg.rs): what the server saw (its `connection authorized` log
//! lines say `SSL enabled` for a TLS session), and how each refusal reads.

use serde_json::{json, Value};

use crate::support::{user, Platform};
use crate::support_pg::{docmirror_pg_env, sessions, tls_server, TestPg};

const PASSWORD: &str = "s3cretTLSpw";

/// Enough users for a COPY batch, so both connections are made.
fn platform() -> Platform {
    let p = Platform::new();
    let users: Vec<Value> =
        (0..12).map(|i| user(&format!("u{i}"), &format!("user{i}@x.io"), "2025-10-01T00:00:00.000Z")).collect();
    p.users(&json!(users));
    p
}

/// The database's URL with a password (the test server trusts any) and `query`.
fn url_with(db: &TestPg, query: &str) -> String {
    let url = db.url.replacen("postgresql://postgres@", &format!("postgresql://postgres:{PASSWORD}@"), 1);
    format!("{url}?{query}")
}

/// The server's log lines for docmirror's sessions (named by `app`) on `db`.
async fn docmirror_sessions(db: &TestPg, app: &str) -> Vec<String> {
    let mut found = Vec::new();
    for _ in 0..50 {
        found = sessions(&tls_server().log, &db.name)
            .into_iter()
            .filter(|l| l.contains(&format!("application_name={app}")))
            .collect();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    found
}

fn refused_without_the_password(run: &crate::support::Run, shown: &str) {
    assert_eq!(run.code, 4, "{run:?}");
    assert!(!run.stderr.contains(PASSWORD) && !run.stdout.contains(PASSWORD), "{run:?}");
    assert!(run.stderr.contains(shown), "the error should name {shown}: {}", run.stderr);
    assert!(!run.stderr.contains("retrying"), "a TLS refusal is not worth a retry: {}", run.stderr);
}

#[tokio::test]
async fn pg_tls_sync_with_sslrootcert_is_encrypted_on_both_connections() {
    let server = tls_server();
    let db = TestPg::on(&server.url, "pg_tls_ok").await;
    let p = platform();
    let query = format!("sslmode=require&sslrootcert={}&application_name=dm_tls_ok", server.ca.display());
    let run =
        docmirror_pg_env(&db, &p, &["sync", "--no-exclusive-load"], &[("DATABASE_URL", &url_with(&db, &query))]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("inserted"), 12, "{}", run.summary());
    assert_eq!(db.count("users").await, 12);
    // The second connection (COPY's) was made, and over TLS too.
    assert!(run.stderr.contains("Loaded a batch with COPY"), "{}", run.stderr);
    assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
    let seen = docmirror_sessions(&db, "dm_tls_ok").await;
    assert!(seen.len() >= 2, "docmirror's two connections should be in the server's log: {seen:?}");
    assert!(seen.iter().all(|l| l.contains("SSL enabled")), "a session without TLS: {seen:?}");

    // The load into empty tables has a connection of its own: over TLS too.
    let fresh = TestPg::on(&server.url, "pg_tls_ok_fresh").await;
    let query = format!("sslmode=require&sslrootcert={}&application_name=dm_tls_fresh", server.ca.display());
    let run = docmirror_pg_env(&fresh, &p, &["sync"], &[("DATABASE_URL", &url_with(&fresh, &query))]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("Loading empty tables in one transaction"), "{}", run.stderr);
    assert_eq!(fresh.count("users").await, 12);
    let seen = docmirror_sessions(&fresh, "dm_tls_fresh").await;
    assert!(seen.len() >= 2, "docmirror's two connections should be in the server's log: {seen:?}");
    assert!(seen.iter().all(|l| l.contains("SSL enabled")), "a session without TLS: {seen:?}");

    // verify-full and verify-ca, with the same CA, connect too.
    for mode in ["verify-full", "verify-ca"] {
        let query = format!("sslmode={mode}&sslrootcert={}", server.ca.display());
        let verify = docmirror_pg_env(&db, &p, &["verify"], &[("DATABASE_URL", &url_with(&db, &query))]).await;
        assert_eq!(verify.code, 0, "{mode}: {verify:?}");
    }
}

#[tokio::test]
async fn pg_tls_a_certificate_from_another_ca_is_refused_naming_the_url_and_what_to_check() {
    let server = tls_server();
    let db = TestPg::on(&server.url, "pg_tls_wrong_ca").await;
    let p = platform();
    let shown = db.url.replacen("postgresql://postgres@", "postgresql://postgres:***@", 1);
    let query = format!("sslmode=require&sslrootcert={}", server.other_ca.display());
    let run = docmirror_pg_env(&db, &p, &["sync"], &[("DATABASE_URL", &url_with(&db, &query))]).await;
    refused_without_the_password(&run, &shown);
    assert!(run.stderr.contains("not signed by the CA in sslrootcert"), "{}", run.stderr);
    // Without sslrootcert, `require` checks against the built-in roots, which
    // do not hold the test CA.
    let run = docmirror_pg_env(&db, &p, &["sync"], &[("DATABASE_URL", &url_with(&db, "sslmode=require"))]).await;
    refused_without_the_password(&run, &shown);
    assert!(run.stderr.contains("give the CA that signed it as sslrootcert="), "{}", run.stderr);
    // Nothing was written, not even the schema.
    assert_eq!(db.text("SELECT count(*)::text FROM information_schema.tables WHERE table_name = 'users'").await, "0");
}

#[tokio::test]
async fn pg_tls_required_against_a_server_without_tls_fails_clearly() {
    // The plain test server (ssl = off).
    let db = TestPg::new("pg_tls_plain_server").await;
    let p = platform();
    let shown = db.url.replacen("postgresql://postgres@", "postgresql://postgres:***@", 1);
    let run = docmirror_pg_env(&db, &p, &["sync"], &[("DATABASE_URL", &url_with(&db, "sslmode=require"))]).await;
    refused_without_the_password(&run, &shown);
    assert!(run.stderr.contains("does not accept TLS connections"), "{}", run.stderr);
}

#[tokio::test]
async fn pg_tls_disable_connects_in_plain_text_and_prefer_encrypts() {
    let server = tls_server();
    let db = TestPg::on(&server.url, "pg_tls_modes").await;
    let p = platform();
    let url = url_with(&db, "sslmode=disable&application_name=dm_plain");
    let run = docmirror_pg_env(&db, &p, &["sync"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let seen = docmirror_sessions(&db, "dm_plain").await;
    assert!(!seen.is_empty() && seen.iter().all(|l| !l.contains("SSL enabled")), "{seen:?}");
    // The default (prefer) takes the TLS the server offers, without checking
    // its certificate, as libpq's prefer does.
    let run =
        docmirror_pg_env(&db, &p, &["verify"], &[("DATABASE_URL", &url_with(&db, "application_name=dm_prefer"))]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let seen = docmirror_sessions(&db, "dm_prefer").await;
    assert!(!seen.is_empty() && seen.iter().all(|l| l.contains("SSL enabled")), "{seen:?}");
}

#[tokio::test]
async fn pg_tls_verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let server = tls_server();
    let db = TestPg::on(&server.url, "pg_tls_names").await;
    let p = platform();
    // The server, reached at 127.0.0.1, under a name its certificate does not name.
    let url = |mode: &str| {
        let other = db.url.replacen(
            "postgresql://postgres@127.0.0.1",
            &format!("postgresql://postgres:{PASSWORD}@db.example"),
            1,
        );
        format!("{other}?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}", server.ca.display())
    };
    let shown = db.url.replacen("postgresql://postgres@127.0.0.1", "postgresql://postgres:***@db.example", 1);
    for mode in ["verify-full", "require"] {
        let run = docmirror_pg_env(&db, &p, &["sync"], &[("DATABASE_URL", &url(mode))]).await;
        refused_without_the_password(&run, &shown);
        assert!(run.stderr.contains("not made out to the host name"), "{mode}: {}", run.stderr);
    }
    let run = docmirror_pg_env(&db, &p, &["sync"], &[("DATABASE_URL", &url("verify-ca"))]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.count("users").await, 12);
}
