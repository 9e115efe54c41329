//! PostgreSQL as a reconcile [`Target`]: what the core's requests look like
//! as SQL on the guide's tables and docmirror's bookkeeping beside them.

use std::collections::{HashMap, HashSet};

use bson::{doc, Document};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use super::tables::{self, camel, set_mask, to_document, to_row, utc_wall_time, Table};
use super::texts::stored_text;
use super::write::{delete_sql, no_nul, version_condition, Pending};
use super::Pg;
use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::mapping::{sqlstate_code, Reject};
use crate::reconcile::memo::Memo;
use crate::reconcile::rejects::RejectRecord;
use crate::reconcile::target::{Existing, Held, Inspect, Outcome, Target, Write};
use crate::reconcile::REJECTS;

/// Writes of one kind: their places in the request, and their rows.
type Group = (Vec<usize>, Vec<Pending>);

pub(super) fn table_of(spec: &SourceSpec) -> Result<&'static Table, Fatal> {
    tables::table(&spec.collection).ok_or_else(|| {
        Fatal::Config(format!(
            "{:?} is not one of the guide's tables (users, datasets, training_jobs)",
            spec.collection
        ))
    })
}

/// The column a record field fills (`createdAt` → `created_at`).
fn column_for(t: &Table, field: &str) -> Option<&'static str> {
    t.columns.iter().find(|c| c.name == field || camel(c.name) == field).map(|c| c.name)
}

fn wall_to_bson(t: chrono::NaiveDateTime) -> bson::DateTime {
    bson::DateTime::from_millis(t.and_utc().timestamp_millis())
}

impl Pg {
    /// What the table holds (with its bookkeeping) for the rows `filter` picks.
    async fn read_existing(
        &self,
        t: &Table,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<HashMap<String, Existing>, Fatal> {
        if self.absent() {
            return Ok(HashMap::new());
        }
        let version = t.version.map_or("NULL::timestamp".to_string(), |v| format!("t.\"{v}\""));
        let sql = format!(
            "SELECT t.id::text, r.hash, r.source, r.fields, {version} FROM {0} t \
             LEFT JOIN docmirror_rows r ON r.tbl = '{0}' AND r.id = t.id {filter}",
            t.name
        );
        let rows = self
            .client()
            .await?
            .query(&sql, params)
            .await
            .map_err(|e| self.fatal(&format!("cannot read {}", t.name), &e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0).map_err(|e| self.fatal("cannot read an id", &e))?;
            let fields: Option<Value> = r.try_get(3).ok().flatten();
            let version: Option<chrono::NaiveDateTime> = r.try_get(4).ok().flatten();
            let ex = Existing {
                hash: r.try_get(1).ok().flatten(),
                source: r.try_get(2).ok().flatten(),
                fields: match fields {
                    Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                    _ => Box::default(),
                },
                version: version.map_or(Held::Absent, |v| Held::Date(wall_to_bson(v))),
            };
            out.insert(id, ex);
        }
        Ok(out)
    }
}

impl Pg {
    /// The files of records refused because a row they refer to was not
    /// there (`missing_parent`): worth another try once parents were written.
    pub async fn waiting_for_parents(&self) -> Result<Vec<String>, Fatal> {
        let rows = self
            .client()
            .await?
            .query("SELECT DISTINCT source FROM mirror_rejects WHERE reason_code = 'missing_parent'", &[])
            .await
            .map_err(|e| self.fatal(&format!("cannot read {REJECTS}"), &e))?;
        Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
    }
}

impl Target for Pg {
    async fn whole_source_done(&self, spec: &SourceSpec) {
        if let (Some(fresh), Ok(t)) = (self.fresh(), table_of(spec)) {
            fresh.table_done(t.name).await;
        }
    }

    async fn hashes(&self, spec: &SourceSpec) -> Result<HashMap<String, Existing>, Fatal> {
        // Only the hash, as on MongoDB: the core asks for the rest where it needs it.
        let t = table_of(spec)?;
        if self.absent() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT t.id::text, r.hash FROM {0} t LEFT JOIN docmirror_rows r ON r.tbl = '{0}' AND r.id = t.id",
            t.name
        );
        let client = self.client().await?;
        let rows = client.query(&sql, &[]).await.map_err(|e| self.fatal(&format!("cannot read {}", t.name), &e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0).map_err(|e| self.fatal("cannot read an id", &e))?;
            out.insert(id, Existing { hash: r.try_get(1).ok().flatten(), ..Default::default() });
        }
        Ok(out)
    }

    async fn hashes_and_texts(&self, spec: &SourceSpec) -> Result<(HashMap<String, Existing>, Option<Memo>), Fatal> {
        let (existing, texts) = self.hashes_and_texts_of(table_of(spec)?).await?;
        Ok((existing, Some(texts)))
    }

    async fn existing(&self, spec: &SourceSpec, ids: &[String]) -> Result<HashMap<String, Existing>, Fatal> {
        self.read_existing(table_of(spec)?, "WHERE t.id = ANY($1)", &[&ids]).await
    }

    async fn existing_all(&self, spec: &SourceSpec) -> Result<HashMap<String, Existing>, Fatal> {
        self.read_existing(table_of(spec)?, "", &[]).await
    }

    async fn existing_from_files(
        &self,
        spec: &SourceSpec,
        rels: &[String],
    ) -> Result<HashMap<String, Existing>, Fatal> {
        self.read_existing(table_of(spec)?, "WHERE r.source = ANY($1)", &[&rels]).await
    }

    async fn passwords(
        &self,
        spec: &SourceSpec,
        field: &str,
        ids: &[String],
    ) -> Result<HashMap<String, String>, Fatal> {
        if self.absent() {
            return Ok(Default::default());
        }
        let t = table_of(spec)?;
        let Some(col) = column_for(t, field) else { return Ok(HashMap::new()) };
        let sql = format!("SELECT id::text, \"{col}\"::text FROM {} WHERE id = ANY($1)", t.name);
        let rows =
            self.client().await?.query(&sql, &[&ids]).await.map_err(|e| self.fatal("cannot read passwords", &e))?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.try_get::<_, String>(0).ok()?, r.try_get::<_, Option<String>>(1).ok()??)))
            .collect())
    }

    async fn write(&self, spec: &SourceSpec, writes: &[Write<'_>], newer_wins: bool) -> Result<Vec<Outcome>, Fatal> {
        let t = table_of(spec)?;
        let mut out: Vec<Option<Outcome>> = vec![None; writes.len()];
        let (mut inserts, mut updates): (Group, Group) = Default::default();
        for (i, w) in writes.iter().enumerate() {
            let c = w.candidate();
            let row = match to_row(t, &spec.id_field, &c.mapped.doc) {
                Ok(row) => row,
                Err(reason) => {
                    out[i] = Some(Outcome::Failed { code: sqlstate_code("42804"), message: reason });
                    continue;
                }
            };
            let check = match (w, newer_wins, t.version) {
                (Write::Update { .. }, true, Some(_)) => c.mapped.version.and_then(utc_wall_time),
                _ => None,
            };
            let fields = Value::Array(c.mapped.fields().into_iter().map(Value::String).collect()).to_string();
            let position = c.position.map(|p| p.to_string());
            let set = match w {
                Write::Update { was, .. } => Some(set_mask(t, &c.mapped.doc, &was.fields)),
                Write::Insert(_) => None,
            };
            let (raw, uniq) = stored_text(c);
            let p = Pending {
                row,
                source: c.rel.to_string(),
                position,
                hash: c.mapped.hash.clone(),
                fields,
                raw,
                uniq,
                check,
                set,
            };
            let group = if matches!(w, Write::Insert(_)) { &mut inserts } else { &mut updates };
            group.0.push(i);
            group.1.push(p);
        }
        for ((idx, rows), update) in [(inserts, false), (updates, true)] {
            for (i, o) in idx.into_iter().zip(self.write_rows(t, &rows, update).await?) {
                out[i] = Some(o);
            }
        }
        Ok(out.into_iter().map(|o| o.unwrap_or(Outcome::Applied { matched: Some(0) })).collect())
    }

    async fn holder(
        &self,
        spec: &SourceSpec,
        id: &str,
        unique: &[(String, String)],
    ) -> Result<Option<(String, String)>, Fatal> {
        if self.absent() {
            return Ok(Default::default());
        }
        let t = table_of(spec)?;
        for (field, value) in unique {
            let Some(col) = column_for(t, field) else { continue };
            let sql = format!("SELECT id::text FROM {} WHERE \"{col}\" = $1 AND id <> $2 LIMIT 1", t.name);
            let rows = self
                .client()
                .await?
                .query(&sql, &[value, &id])
                .await
                .map_err(|e| self.fatal("cannot look up a unique value", &e))?;
            if let Some(other) = rows.first().and_then(|r| r.try_get::<_, String>(0).ok()) {
                return Ok(Some((value.clone(), other)));
            }
        }
        Ok(None)
    }

    async fn release(
        &self,
        spec: &SourceSpec,
        writes: &[Write<'_>],
        fields: &[String],
        newer_wins: bool,
    ) -> Result<(), Fatal> {
        let t = table_of(spec)?;
        let cols: Vec<&str> = fields.iter().filter_map(|f| column_for(t, f)).collect();
        if cols.is_empty() {
            return Ok(());
        }
        // A value no real one can be (`.invalid` is reserved), unique per row.
        let sets: Vec<String> =
            cols.iter().map(|c| format!("\"{c}\" = 'released-' || t.id || '@docmirror.invalid'")).collect();
        let sql = format!(
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[]) AS v(id, m_check)), \
             w AS (UPDATE {0} AS t SET {1} FROM v WHERE t.id = v.id{2} RETURNING t.id) \
             UPDATE docmirror_rows r SET hash = 'released', raw = NULL FROM w WHERE r.tbl = '{0}' AND r.id = w.id",
            t.name,
            sets.join(", "),
            version_condition(t)
        );
        let ids: Vec<String> = writes.iter().map(|w| w.candidate().mapped.id.clone()).collect();
        let checks: Vec<Option<String>> = writes
            .iter()
            .map(|w| if newer_wins { w.candidate().mapped.version.and_then(utc_wall_time) } else { None })
            .collect();
        self.client()
            .await?
            .execute(&sql, &[&ids, &checks])
            .await
            .map_err(|e| self.fatal(&format!("cannot release unique values in {}", t.name), &e))?;
        Ok(())
    }

    async fn count(&self, spec: &SourceSpec) -> Result<u64, Fatal> {
        if self.absent() {
            return Ok(Default::default());
        }
        let t = table_of(spec)?;
        let row = self
            .client()
            .await?
            .query_one(&format!("SELECT count(*) FROM {}", t.name), &[])
            .await
            .map_err(|e| self.fatal(&format!("cannot count {}", t.name), &e))?;
        let n: i64 = row.try_get(0).map_err(|e| self.fatal("cannot read a count", &e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn delete(&self, spec: &SourceSpec, gone: &[(String, Existing)], archive: bool) -> Result<Vec<bool>, Fatal> {
        let t = table_of(spec)?;
        let sql = delete_sql(t, archive);
        let client = self.client().await?;
        let run = |items: &[(String, Existing)]| {
            let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
            let hashes: Vec<Option<Box<str>>> = items.iter().map(|(_, ex)| ex.hash.clone()).collect();
            let (sql, client) = (sql.clone(), client.clone());
            async move {
                let rows = client.query(&sql, &[&ids, &hashes]).await?;
                Ok::<HashSet<String>, tokio_postgres::Error>(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
            }
        };
        let deleted = match run(gone).await {
            Ok(d) => d,
            Err(e) if e.as_db_error().is_some() => {
                // One row is still referenced (a user whose jobs are still
                // there): delete the others one by one; it stays for now.
                let mut d = HashSet::new();
                for item in gone {
                    match run(std::slice::from_ref(item)).await {
                        Ok(one) => d.extend(one),
                        Err(e) if e.as_db_error().is_some() => {
                            if e.code().is_some_and(|c| c.code() == "23503") {
                                self.blocked().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            tracing::warn!(table = t.name, id = %item.0, reason = %self.scrub(&super::describe(&e)), "Cannot delete a row whose record is gone; it stays until a later run");
                        }
                        Err(e) => return Err(self.fatal(&format!("cannot delete from {}", t.name), &e)),
                    }
                }
                d
            }
            Err(e) => return Err(self.fatal(&format!("cannot delete from {}", t.name), &e)),
        };
        Ok(gone.iter().map(|(id, _)| deleted.contains(id)).collect())
    }

    async fn reject_keys(&self, collection: &str, files: Option<&[String]>) -> Result<HashSet<String>, Fatal> {
        if self.absent() {
            return Ok(Default::default());
        }
        let rows = match files {
            None => {
                self.client().await?.query("SELECT key FROM mirror_rejects WHERE collection = $1", &[&collection]).await
            }
            Some(rels) => {
                self.client()
                    .await?
                    .query(
                        "SELECT key FROM mirror_rejects WHERE collection = $1 AND source = ANY($2)",
                        &[&collection, &rels],
                    )
                    .await
            }
        }
        .map_err(|e| self.fatal(&format!("cannot read {REJECTS}"), &e))?;
        Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
    }

    async fn add_rejects(&self, rejects: &[RejectRecord]) -> Result<(), Fatal> {
        let text = |s: &str| s.replace('\0', "\u{fffd}");
        let col =
            |f: &dyn Fn(&RejectRecord) -> Option<String>| -> Vec<Option<String>> { rejects.iter().map(f).collect() };
        let params: Vec<Vec<Option<String>>> = vec![
            col(&|r| Some(text(&r.key))),
            col(&|r| Some(text(&r.collection))),
            col(&|r| Some(text(&r.rel))),
            col(&|r| r.position.map(|p| p.to_string())),
            col(&|r| r.id.as_deref().map(text)),
            col(&|r| Some(r.reason.code().to_string())),
            col(&|r| Some(text(&r.reason.to_string()))),
            col(&|r| match &r.reason {
                Reject::EmailTaken { other_id, .. } => Some(text(other_id)),
                _ => None,
            }),
            col(&|r| r.record.as_ref().map(|b| no_nul(tables::json_of(b).to_string()))),
        ];
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO mirror_rejects (key, collection, source, position, record_id, reason_code, reason, \
                 clashes_with_id, record) SELECT k, c, s, p::bigint, i, rc, r, cw, rec::jsonb FROM \
                 unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::text[], $9::text[]) AS v(k, c, s, p, i, rc, r, cw, rec) ON CONFLICT (key) DO NOTHING",
                &refs,
            )
            .await
            .map_err(|e| self.fatal(&format!("cannot store rejects in {REJECTS}"), &e))?;
        Ok(())
    }

    async fn drop_rejects(&self, keys: &[String]) -> Result<(), Fatal> {
        self.client()
            .await?
            .execute("DELETE FROM mirror_rejects WHERE key = ANY($1)", &[&keys])
            .await
            .map_err(|e| self.fatal(&format!("cannot remove rejects from {REJECTS}"), &e))?;
        Ok(())
    }
}

impl Inspect for Pg {
    fn name(&self) -> &'static str {
        "PostgreSQL"
    }

    async fn documents_map<U, F>(&self, spec: &SourceSpec, f: F) -> Result<Vec<U>, Fatal>
    where
        U: Send,
        F: Fn(Document) -> Option<U> + Send + Sync,
    {
        Ok(self.documents(spec).await?.into_iter().filter_map(f).collect())
    }

    async fn documents(&self, spec: &SourceSpec) -> Result<Vec<Document>, Fatal> {
        let t = table_of(spec)?;
        let sql = format!(
            "SELECT to_jsonb(t), r.fields, r.extras, r.source FROM {0} t \
             LEFT JOIN docmirror_rows r ON r.tbl = '{0}' AND r.id = t.id ORDER BY r.source, r.position, t.id",
            t.name
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[])
            .await
            .map_err(|e| self.fatal(&format!("cannot read {}", t.name), &e))?;
        let mut known: Vec<String> = spec.dates.iter().chain(&spec.normalize_email).cloned().collect();
        known.extend(spec.version_field.iter().chain(&spec.password_field).cloned());
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let Ok(Value::Object(row)) = r.try_get::<_, Value>(0) else { continue };
            let fields: Vec<String> = match r.try_get::<_, Option<Value>>(1).ok().flatten() {
                Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            };
            let extras: Map<String, Value> = match r.try_get::<_, Option<Value>>(2).ok().flatten() {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            let source: Option<String> = r.try_get(3).ok().flatten();
            out.push(to_document(t, &spec.id_field, &row, &fields, &extras, source.as_deref(), &known));
        }
        Ok(out)
    }

    async fn stored_rejects(&self, collection: &str) -> Result<Vec<Document>, Fatal> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT key, source, position, record_id, reason_code, reason FROM mirror_rejects WHERE collection = $1",
                &[&collection],
            )
            .await
            .map_err(|e| self.fatal(&format!("cannot read {REJECTS}"), &e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let mut d = doc! {
                    "_id": r.try_get::<_, String>(0).unwrap_or_default(),
                    "source": r.try_get::<_, String>(1).unwrap_or_default(),
                    "reason_code": r.try_get::<_, String>(4).unwrap_or_default(),
                    "reason": r.try_get::<_, String>(5).unwrap_or_default(),
                };
                if let Ok(Some(p)) = r.try_get::<_, Option<i64>>(2) {
                    d.insert("position", p);
                }
                if let Ok(Some(id)) = r.try_get::<_, Option<String>>(3) {
                    d.insert("record_id", id);
                }
                d
            })
            .collect())
    }
}
