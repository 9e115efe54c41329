//! One behaviour suite, run for each target: a [`Db`] is a test's own
//! database on MongoDB or PostgreSQL, with the few looks and edits the
//! behaviour tests need, spelled once for both. `for_each_target!` turns each
//! `async fn name(kind: Kind)` into `mongodb::name` and `postgres::name`.

#![allow(dead_code)]

use bson::{doc, Bson, Document};
use futures_util::TryStreamExt;

use super::support::{docmirror, Platform, Run, TestDb, WatchProc};
use super::support_pg::{docmirror_pg, TestPg};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mongo,
    Pg,
}

pub enum Db {
    Mongo(TestDb),
    Pg(TestPg),
}

/// `updatedAt` → `updated_at`: the guide's column of a record field.
fn column(field: &str) -> String {
    let mut out = String::new();
    for ch in field.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn text_of(b: &Bson) -> String {
    match b {
        Bson::String(s) => s.clone(),
        Bson::DateTime(d) => d.try_to_rfc3339_string().unwrap(),
        Bson::Null => "NULL".into(),
        other => other.to_string(),
    }
}

impl Db {
    pub async fn new(kind: Kind, test: &str) -> Db {
        match kind {
            Kind::Mongo => Db::Mongo(TestDb::new(&format!("{test}_m")).await),
            Kind::Pg => Db::Pg(TestPg::new(&format!("{test}_p")).await),
        }
    }

    /// The target's name as the summary line and verify say it.
    pub fn name(&self) -> &'static str {
        match self {
            Db::Mongo(_) => "MongoDB",
            Db::Pg(_) => "PostgreSQL",
        }
    }

    pub async fn run(&self, p: &Platform, args: &[&str]) -> Run {
        match self {
            Db::Mongo(db) => docmirror(db, p, args).await,
            Db::Pg(db) => docmirror_pg(db, p, args).await,
        }
    }

    /// The ids a collection (table) holds, sorted.
    pub async fn ids(&self, coll: &str) -> Vec<String> {
        match self {
            Db::Mongo(db) => db.docs(coll).await.iter().map(|d| text_of(d.get("_id").unwrap())).collect(),
            Db::Pg(db) => db.texts(&format!("SELECT id FROM {coll} ORDER BY id")).await,
        }
    }

    /// A stored field as text (times as RFC 3339 on MongoDB, as PostgreSQL
    /// writes them on PostgreSQL); `None` when the record is not there.
    pub async fn get(&self, coll: &str, id: &str, field: &str) -> Option<String> {
        match self {
            Db::Mongo(db) => db.doc(coll, id).await.map(|d| d.get(field).map_or("NULL".into(), text_of)),
            Db::Pg(db) => {
                let sql = format!("SELECT {}::text FROM {coll} WHERE id = $1", column(field));
                let rows = db.client.query(&sql, &[&id]).await.unwrap();
                rows.first().map(|r| r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".into()))
            }
        }
    }

    /// The application edits a record in the database (a string value, or a
    /// time when `field` is a time field and `value` an RFC 3339 time).
    pub async fn set(&self, coll: &str, id: &str, field: &str, value: &str) {
        match self {
            Db::Mongo(db) => {
                let v = bson::DateTime::parse_rfc3339_str(value).map_or(Bson::String(value.into()), Bson::DateTime);
                let c = db.db.collection::<Document>(coll);
                c.update_one(doc! {"_id": id}, doc! {"$set": {field: v}}).await.unwrap();
            }
            Db::Pg(db) => {
                let sql = format!("UPDATE {coll} SET {} = $1 WHERE id = $2", column(field));
                let stmt = db.client.prepare(&sql).await.unwrap();
                let n = match stmt.params()[0] {
                    tokio_postgres::types::Type::TIMESTAMP => {
                        let t = chrono::DateTime::parse_from_rfc3339(value).unwrap().naive_utc();
                        db.client.execute(&stmt, &[&t, &id]).await.unwrap()
                    }
                    _ => db.client.execute(&stmt, &[&value, &id]).await.unwrap(),
                };
                assert_eq!(n, 1, "{sql} {id}");
            }
        }
    }

    pub async fn delete(&self, coll: &str, id: &str) {
        match self {
            Db::Mongo(db) => {
                db.db.collection::<Document>(coll).delete_one(doc! {"_id": id}).await.unwrap();
            }
            Db::Pg(db) => db.exec(&format!("DELETE FROM {coll} WHERE id = '{id}'")).await,
        }
    }

    /// A user the application registered itself, under an id of its own.
    pub async fn app_user(&self, id: &str, email: &str) {
        match self {
            Db::Mongo(db) => {
                let c = db.db.collection::<Document>("users");
                c.insert_one(doc! {"_id": id, "email": email, "name": "app"}).await.unwrap();
            }
            Db::Pg(db) => {
                // The app's own schema is the guide's: there before docmirror's first run.
                db.exec(include_str!("../src/postgres/schema.sql")).await;
                db.exec(&format!(
                    "INSERT INTO users (id, email, name, password) VALUES ('{id}', '{email}', 'app', 'x')"
                ))
                .await
            }
        }
    }

    /// A job the application wrote itself (not in the files).
    pub async fn app_job(&self, id: &str) {
        match self {
            Db::Mongo(db) => {
                let c = db.db.collection::<Document>("training_jobs");
                c.insert_one(doc! {"_id": id, "status": "running"}).await.unwrap();
            }
            Db::Pg(db) => {
                db.exec(&format!("INSERT INTO training_jobs (id, job_id, status) VALUES ('{id}', '{id}', 'running')"))
                    .await
            }
        }
    }

    /// The stored rejects: `(source[position], reason_code)`, sorted.
    pub async fn reject_codes(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .rejects()
            .await
            .iter()
            .map(|r| {
                let at = r.get("position").map_or(String::new(), |p| format!("[{}]", text_of(p)));
                (format!("{}{at}", r.get_str("source").unwrap()), r.get_str("reason_code").unwrap().to_string())
            })
            .collect();
        out.sort();
        out
    }

    /// The stored rejects as documents: `source`, `position`, `record_id`,
    /// `reason_code`, `reason`, `clashes_with_id`, `record`.
    pub async fn rejects(&self) -> Vec<Document> {
        match self {
            Db::Mongo(db) => db.rejects().await,
            Db::Pg(db) => {
                let rows = db
                    .client
                    .query(
                        "SELECT jsonb_strip_nulls(jsonb_build_object('source', source, 'position', position, \
                         'record_id', record_id, 'reason_code', reason_code, 'reason', reason, \
                         'clashes_with_id', clashes_with_id, 'record', record)) FROM mirror_rejects ORDER BY key",
                        &[],
                    )
                    .await
                    .unwrap();
                rows.iter()
                    .map(|r| match Bson::try_from(r.get::<_, serde_json::Value>(0)).unwrap() {
                        Bson::Document(d) => d,
                        other => panic!("{other:?}"),
                    })
                    .collect()
            }
        }
    }

    /// The archived rows of a collection: `(id, the archived record's field)`.
    pub async fn archived(&self, coll: &str, field: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = match self {
            Db::Mongo(db) => db
                .docs("mirror_archive")
                .await
                .iter()
                .filter(|a| a.get_str("collection").unwrap() == coll)
                .map(|a| {
                    assert!(matches!(a.get("deleted_at"), Some(Bson::DateTime(_))));
                    let d = a.get_document("document").unwrap();
                    (text_of(d.get("_id").unwrap()), d.get(field).map_or("NULL".into(), text_of))
                })
                .collect(),
            Db::Pg(db) => {
                let sql = format!(
                    "SELECT id || ' ' || COALESCE(row_data->>'{}', 'NULL') FROM mirror_archive WHERE tbl = '{coll}' \
                     AND deleted_at IS NOT NULL",
                    column(field)
                );
                db.texts(&sql)
                    .await
                    .iter()
                    .map(|l| l.split_once(' ').unwrap())
                    .map(|(a, b)| (a.into(), b.into()))
                    .collect()
            }
        };
        out.sort();
        out
    }

    pub async fn count(&self, coll: &str) -> u64 {
        match self {
            Db::Mongo(db) => db.count(coll).await,
            Db::Pg(db) => u64::try_from(db.count(coll).await).unwrap(),
        }
    }

    /// When the mirror last wrote each record of these collections
    /// (`_mirror.at`; `docmirror_rows.written_at`), with their stored fields:
    /// unchanged when nothing was written.
    pub async fn snapshot(&self, colls: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for coll in colls {
            match self {
                Db::Mongo(db) => out.extend(db.docs(coll).await.iter().map(|d| format!("{d:?}"))),
                Db::Pg(db) => {
                    let sql = format!(
                        "SELECT to_jsonb(t)::text || ' ' || r.written_at::text || ' ' || r.hash FROM {coll} t \
                         JOIN docmirror_rows r ON r.tbl = '{coll}' AND r.id = t.id ORDER BY t.id"
                    );
                    out.extend(db.texts(&sql).await);
                }
            }
        }
        out
    }

    /// Whether the run left the database untouched (no collection, no table).
    pub async fn is_empty(&self) -> bool {
        match self {
            Db::Mongo(db) => db.db.list_collection_names().await.unwrap().is_empty(),
            Db::Pg(db) => {
                db.text("SELECT count(*)::text FROM information_schema.tables WHERE table_schema = 'public'").await
                    == "0"
            }
        }
    }

    /// Start `docmirror watch` against this database (not waiting for it).
    pub fn spawn_watch(&self, p: &Platform, args: &[&str]) -> WatchProc {
        match self {
            Db::Mongo(db) => WatchProc::spawn(&db.uri(), p, args),
            Db::Pg(db) => WatchProc::spawn_env(
                "mongodb://127.0.0.1:9/none",
                p,
                args,
                &[("DOCMIRROR_TARGET", "postgres"), ("DATABASE_URL", &db.url)],
            ),
        }
    }

    /// Start `docmirror watch` and wait for its initial reconcile.
    pub async fn watch(&self, p: &Platform, args: &[&str]) -> WatchProc {
        let w = self.spawn_watch(p, args);
        w.wait_ready().await;
        w
    }

    /// When the mirror last wrote a record (`_mirror.at`; `docmirror_rows.written_at`).
    pub async fn written_at(&self, coll: &str, id: &str) -> bson::DateTime {
        match self {
            Db::Mongo(db) => {
                *db.doc(coll, id).await.unwrap().get_document("_mirror").unwrap().get_datetime("at").unwrap()
            }
            Db::Pg(db) => {
                let sql = "SELECT (extract(epoch FROM written_at) * 1000)::bigint FROM docmirror_rows WHERE tbl = $1 AND id = $2";
                bson::DateTime::from_millis(db.client.query_one(sql, &[&coll, &id]).await.unwrap().get(0))
            }
        }
    }

    /// The `mirror_state` record.
    pub async fn state(&self) -> Option<Document> {
        match self {
            Db::Mongo(db) => db.doc("mirror_state", "docmirror").await,
            Db::Pg(db) => {
                let rows = db.client.query("SELECT state FROM mirror_state", &[]).await.unwrap();
                rows.first().map(|r| match Bson::try_from(r.get::<_, serde_json::Value>(0)).unwrap() {
                    Bson::Document(d) => d,
                    other => panic!("{other:?}"),
                })
            }
        }
    }

    pub fn mongo(&self) -> Option<&TestDb> {
        match self {
            Db::Mongo(db) => Some(db),
            Db::Pg(_) => None,
        }
    }
}

/// Documents of a MongoDB collection (for the MongoDB-only checks of a shared test).
pub async fn all_docs(db: &TestDb, coll: &str) -> Vec<Document> {
    db.db.collection::<Document>(coll).find(doc! {}).await.unwrap().try_collect().await.unwrap()
}

/// `for_each_target!(a, b)`: `mongodb::a`, `postgres::a`, `mongodb::b`, ...
/// from `async fn a(kind: Kind)`, `async fn b(kind: Kind)`.
#[macro_export]
macro_rules! for_each_target {
    ($($name:ident),* $(,)?) => {
        mod mongodb {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::support_targets::Kind::Mongo).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::support_targets::Kind::Pg).await
                }
            )*
        }
    };
}
