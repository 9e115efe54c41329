//! PostgreSQL's `sync` recognises a record by the text its row was written
//! from (`docmirror_rows.raw`) instead of mapping it again. Whatever the
//! files do, the tables must end exactly as a `sync --full` (which maps every
//! record) leaves them; and an unchanged record must really be skipped.

use serde_json::{json, Value};

use crate::support::{job, user, Platform, HASH_B};
use crate::support_pg::{docmirror_pg, TestPg};

fn dataset(id: &str) -> Value {
    json!({"id": id, "name": id, "filename": "a.csv", "path": "data/datasets/a.csv", "size": 10, "type": "csv",
           "uploaded_by": "u1", "uploaded_at": "2025-10-10T08:06:40.000Z"})
}

/// Everything the mirror leaves in PostgreSQL, minus the times it wrote it.
async fn state(db: &TestPg) -> Vec<String> {
    let mut out = Vec::new();
    // A password bcrypt made from a plaintext one has a salt of its own in each database.
    let password = "(to_jsonb(t) || jsonb_build_object('password', CASE WHEN t.id = 'u5' THEN left(t.password, 7) \
                    ELSE t.password END))::text";
    out.extend(db.texts(&format!("SELECT 'users ' || {password} FROM users t ORDER BY id")).await);
    for t in ["datasets", "training_jobs"] {
        out.extend(db.texts(&format!("SELECT '{t} ' || to_jsonb(t)::text FROM {t} t ORDER BY id")).await);
    }
    out.extend(
        db.texts(
            "SELECT concat_ws(' ', tbl, id, source, position, hash, fields::text, extras::text, encode(raw, 'hex'), \
             uniq::text) FROM docmirror_rows ORDER BY tbl, id",
        )
        .await,
    );
    out.extend(
        db.texts(
            "SELECT concat_ws(' ', key, collection, source, position, record_id, reason_code, reason, clashes_with_id, \
             record::text) FROM mirror_rejects ORDER BY key",
        )
        .await,
    );
    out
}

/// The records of `users.json` the run found as written (the debug line of its scan).
fn by_text(stderr: &str, source: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("Scanned") && l.contains(&format!("source={source}")) && l.contains("unchanged_by_text"))
        .unwrap_or_else(|| panic!("no scan line for {source} in {stderr}"));
    let at = line.find("unchanged_by_text=").unwrap_or_else(|| panic!("{line}")) + "unchanged_by_text=".len();
    line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// What one step does to the files.
type Step<'a> = (&'static str, Box<dyn Fn() + 'a>);

#[tokio::test]
async fn pg_resync_skips_records_by_their_text_and_ends_as_a_full_resync() {
    let (fast, full) = (TestPg::new("pg_texts_fast").await, TestPg::new("pg_texts_full").await);
    let p = Platform::new();
    let users = |list: Vec<Value>| p.users(&Value::Array(list));
    let t = "2025-10-01T00:00:00.000Z";
    p.write("data/datasets/metadata.json", serde_json::to_vec(&json!([dataset("d1")])).unwrap());
    users(vec![user("u1", "a@x.io", t), user("u2", "b@x.io", t), user("u3", "c@x.io", t), user("u4", "d@x.io", t)]);
    p.job("j1", &job("j1", "running", t));
    p.job("j2", &job("j2", "queued", t));

    let mut plaintext = user("u5", "e@x.io", t);
    plaintext["password"] = json!("correct horse battery");
    let steps: Vec<Step> = vec![
        ("first load", Box::new(|| {})),
        ("nothing changed", Box::new(|| {})),
        // A new record before u3 takes u3's email: u3 (unchanged text) is now a duplicate.
        (
            "an earlier record takes an unchanged record's email",
            Box::new(|| {
                users(vec![
                    user("u0", "C@x.io", t),
                    user("u1", "a@x.io", t),
                    user("u2", "b@x.io", t),
                    user("u3", "c@x.io", t),
                    user("u4", "d@x.io", t),
                ])
            }),
        ),
        (
            "the same text twice, one record edited, a plaintext password",
            Box::new(|| {
                let mut u2 = user("u2", "b@x.io", "2025-10-02T00:00:00.000Z");
                u2["name"] = json!("Renamed");
                users(vec![
                    user("u1", "a@x.io", t),
                    u2,
                    user("u3", "c@x.io", t),
                    user("u4", "d@x.io", t),
                    user("u1", "a@x.io", t),
                    plaintext.clone(),
                ])
            }),
        ),
        (
            "a job moves to another file, another is removed",
            Box::new(|| {
                let bytes = std::fs::read(p.path("artifacts/jobs/j1.json")).unwrap();
                p.remove("artifacts/jobs/j1.json");
                p.write("artifacts/jobs/j1-moved.json", bytes);
                p.remove("artifacts/jobs/j2.json");
            }),
        ),
        ("nothing changed again", Box::new(|| {})),
    ];
    for (i, (what, change)) in steps.iter().enumerate() {
        change();
        // The app changes a row behind the mirror's back: both runs must treat it alike.
        if *what == "nothing changed again" {
            for db in [&fast, &full] {
                db.exec(&format!("UPDATE users SET password = '{HASH_B}' WHERE id = 'u5'")).await;
            }
        }
        let a = docmirror_pg(&fast, &p, &["sync"]).await;
        let b = docmirror_pg(&full, &p, &["sync", "--full"]).await;
        assert_eq!(a.code, b.code, "step {i} ({what}): {a:?}\n{b:?}");
        assert_eq!(by_text(&b.stderr, "users"), 0, "step {i} ({what}): --full maps every record");
        let (sa, sb) = (state(&fast).await, state(&full).await);
        assert_eq!(sa, sb, "step {i} ({what}): the tables differ from a full re-sync's");
        match *what {
            "first load" => assert_eq!(by_text(&a.stderr, "users"), 0),
            "nothing changed" => {
                assert_eq!(by_text(&a.stderr, "users"), 4, "{}", a.stderr);
                assert_eq!(by_text(&a.stderr, "training_jobs"), 2, "{}", a.stderr);
                assert_eq!((a.count("unchanged"), a.count("updated"), a.count("inserted")), (7, 0, 0));
            }
            // u1, u3 and u4 kept their texts; u2 changed; the copy of u1 and u5 are new.
            "the same text twice, one record edited, a plaintext password" => {
                assert_eq!(by_text(&a.stderr, "users"), 3, "{}", a.stderr)
            }
            "nothing changed again" => {
                // The plaintext record is never recognised by its text: it is
                // checked with bcrypt, finds the app's change, and is written.
                assert_eq!(a.count("updated"), 1, "{}", a.summary());
                assert_eq!(by_text(&a.stderr, "users"), 4, "{}", a.stderr);
            }
            _ => {}
        }
    }
    // No fast hash of a text that holds a password is kept.
    assert_eq!(
        fast.text("SELECT coalesce(encode(raw, 'hex'), 'none') FROM docmirror_rows WHERE id = 'u5'").await,
        "none"
    );
    assert_eq!(fast.count("docmirror_rows WHERE raw IS NOT NULL").await, fast.count("docmirror_rows").await - 1);
}

#[tokio::test]
async fn pg_rows_without_a_text_are_mapped_as_before() {
    let db = TestPg::new("pg_texts_old_rows").await;
    let p = Platform::new();
    p.users(&json!([
        user("u1", "a@x.io", "2025-10-01T00:00:00.000Z"),
        user("u2", "b@x.io", "2025-10-01T00:00:00.000Z")
    ]));
    assert_eq!(docmirror_pg(&db, &p, &["sync"]).await.code, 0);
    // As a docmirror older than the texts left them.
    db.exec("UPDATE docmirror_rows SET raw = NULL, uniq = NULL").await;
    let before = state(&db).await;
    let again = docmirror_pg(&db, &p, &["sync"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(by_text(&again.stderr, "users"), 0, "no text to recognise");
    assert_eq!((again.count("unchanged"), again.count("updated"), again.count("inserted")), (2, 0, 0));
    assert_eq!(state(&db).await, before, "nothing written");
}
