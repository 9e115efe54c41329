//! The PostgreSQL target as a reconcile `Target`, called directly: the
//! outcomes the core relies on, for cases the binary reaches only through a
//! race (a row changed between the core's read and its write).

use docmirror::layout::{Layout, SourceSpec};
use docmirror::mapping::{fingerprint, map_record, sqlstate_code};
use docmirror::postgres::{Pg, PgOptions};
use docmirror::reconcile::scan::Candidate;
use docmirror::reconcile::target::{Existing, Held, Outcome, Target, Write};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::user;
use crate::support_pg::TestPg;

async fn target(db: &TestPg) -> (Pg, Layout) {
    let opts = PgOptions {
        url: db.url.clone(),
        retry_budget: Some(std::time::Duration::from_secs(15)),
        metrics: Default::default(),
    };
    let pg = Pg::connect(opts, CancellationToken::new()).await.unwrap();
    let layout = Layout::builtin();
    pg.apply_schema(&layout).await.unwrap();
    (pg, layout)
}

fn spec<'a>(layout: &'a Layout, coll: &str) -> &'a SourceSpec {
    layout.sources.iter().find(|s| s.collection == coll).unwrap()
}

fn candidate(spec: &SourceSpec, v: serde_json::Value, position: usize) -> Candidate {
    let mapped = map_record(spec, &fingerprint(spec), &v).unwrap();
    Candidate::unhashed(mapped, "data/users.json", Some(position))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_refused_by_its_own_version_check_matches_nothing() {
    let db = TestPg::new("tpg_version").await;
    let (pg, layout) = target(&db).await;
    let users = spec(&layout, "users");
    let first = candidate(users, user("u1", "a@x.io", "2025-10-01T00:00:00Z"), 0);
    assert_eq!(pg.write(users, &[Write::Insert(&first)], true).await.unwrap(), [Outcome::Applied { matched: Some(1) }]);
    // The core read the row at 2025-10-01; the app wrote a newer version since.
    let was = pg.existing(users, &["u1".to_string()]).await.unwrap().remove("u1").unwrap();
    assert!(matches!(was.version, Held::Date(_)));
    db.exec("UPDATE users SET name = 'app', updated_at = '2025-12-01' WHERE id = 'u1'").await;
    let mut v = user("u1", "a@x.io", "2025-10-05T00:00:00Z");
    v["name"] = json!("file");
    let change = candidate(users, v, 0);
    let out = pg.write(users, &[Write::Update { c: &change, was: &was }], true).await.unwrap();
    assert_eq!(out, [Outcome::Applied { matched: Some(0) }], "newer-wins: the statement itself refused it");
    assert_eq!(db.text("SELECT name FROM users WHERE id = 'u1'").await, "app");
    // file-wins: the same write applies.
    let out = pg.write(users, &[Write::Update { c: &change, was: &was }], false).await.unwrap();
    assert_eq!(out, [Outcome::Applied { matched: Some(1) }]);
    assert_eq!(db.text("SELECT name FROM users WHERE id = 'u1'").await, "file");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_batch_fails_only_its_bad_records() {
    let db = TestPg::new("tpg_batch").await;
    let (pg, layout) = target(&db).await;
    let users = spec(&layout, "users");
    let cands: Vec<Candidate> = (0..7)
        .map(|i| {
            let mut v = user(&format!("u{i}"), &format!("{i}@x.io"), "2025-10-01T00:00:00Z");
            if i == 4 {
                v["role"] = json!("r".repeat(51));
            }
            candidate(users, v, i)
        })
        .collect();
    let writes: Vec<Write<'_>> = cands.iter().map(Write::Insert).collect();
    let out = pg.write(users, &writes, true).await.unwrap();
    for (i, o) in out.iter().enumerate() {
        match i {
            4 => assert!(
                matches!(o, Outcome::Failed { code, message } if *code == sqlstate_code("22001") && message.contains("varying(50)")),
                "{o:?}"
            ),
            _ => assert_eq!(o, &Outcome::Applied { matched: Some(1) }, "u{i}"),
        }
    }
    assert_eq!(db.count("users").await, 6);
    assert_eq!(db.count("docmirror_rows").await, 6, "a row and its bookkeeping are written together");
    // The same id again is a duplicate key, as on MongoDB (the core then looks).
    let again = pg.write(users, &writes[..1], true).await.unwrap();
    assert!(matches!(again[0], Outcome::DuplicateKey { .. }), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_that_matched_nothing_is_not_counted_and_leaves_no_archive_copy() {
    let db = TestPg::new("tpg_delete").await;
    let (pg, layout) = target(&db).await;
    let users = spec(&layout, "users");
    let cands = [
        candidate(users, user("u1", "a@x.io", "2025-10-01T00:00:00Z"), 0),
        candidate(users, user("u2", "b@x.io", "2025-10-01T00:00:00Z"), 1),
    ];
    let writes: Vec<Write<'_>> = cands.iter().map(Write::Insert).collect();
    pg.write(users, &writes, true).await.unwrap();
    let held = pg.hashes(users).await.unwrap();
    // u1 changed since the core looked (its hash is no longer the one it saw); u2 did not.
    let stale = Existing { hash: Some("seen-before".into()), ..Default::default() };
    let gone = vec![("u1".to_string(), stale), ("u2".to_string(), held["u2"].clone())];
    assert_eq!(pg.delete(users, &gone, true).await.unwrap(), [false, true]);
    assert_eq!(db.texts("SELECT id FROM users").await, ["u1"]);
    assert_eq!(db.texts("SELECT id FROM mirror_archive").await, ["u2"], "only what was deleted is archived");
    assert_eq!(db.texts("SELECT id FROM docmirror_rows").await, ["u1"]);
    // Deleting what is already gone deletes nothing.
    assert_eq!(pg.delete(users, &gone[1..], false).await.unwrap(), [false]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_whose_email_is_released_loses_its_text() {
    let db = TestPg::new("tpg_release_text").await;
    let (pg, layout) = target(&db).await;
    let users = spec(&layout, "users");
    let mut c = candidate(users, user("u1", "a@x.io", "2025-10-01T00:00:00Z"), 0);
    c.stored_text = Some(0x1234);
    c.emails = vec![("email".into(), "a@x.io".into())];
    assert_eq!(pg.write(users, &[Write::Insert(&c)], true).await.unwrap(), [Outcome::Applied { matched: Some(1) }]);
    let (_, texts) = pg.hashes_and_texts(users).await.unwrap();
    let recs = &texts.unwrap()["data/users.json"].recs;
    assert_eq!(recs.get(&0x1234).map(|r| r.id()), Some("u1"), "the text the row was written from");
    assert_eq!(db.text("SELECT uniq FROM docmirror_rows WHERE id = 'u1'").await, r#"["email","a@x.io"]"#);
    // The first step of a swap: the row gives its email up for a moment.
    pg.release(users, &[Write::Insert(&c)], &["email".to_string()], true).await.unwrap();
    assert_eq!(
        db.text("SELECT hash || ' ' || coalesce(encode(raw, 'hex'), 'none') FROM docmirror_rows").await,
        "released none"
    );
    let (_, texts) = pg.hashes_and_texts(users).await.unwrap();
    assert!(texts.unwrap().values().all(|f| f.recs.is_empty()), "a released row is not recognised by its text");
}
