//! The statements that write: one multi-row statement per batch (arrays
//! unnested into rows), each writing a guide table and `docmirror_rows`
//! together, so the row and its bookkeeping are one atomic change. When
//! PostgreSQL refuses a batch (a foreign key, a length, a precision, a unique
//! value), the batch is written again record by record, so that only the
//! records PostgreSQL refuses fail, each with its own reason. Batches of new
//! rows go by COPY first (`copy.rs`); a batch COPY refuses comes here.

use std::collections::HashSet;

use tokio_postgres::types::ToSql;

use super::tables::{Row, Table};
use super::{describe, Pg, LANES};
use crate::error::Fatal;
use crate::mapping::sqlstate_code;
use crate::reconcile::target::Outcome;

/// Rows per statement, and per COPY batch (split over the lanes): a chunk of
/// a full scan ([`super::CHUNK`], 5,000 records) goes in one COPY per lane and
/// table instead of five.
pub const BATCH: usize = 5000;

/// Batches of fewer new rows go by statement: COPY's transaction (`copy.rs`)
/// costs more round trips than it saves on a handful of rows (watch's single changes).
pub const COPY_MIN: usize = 8;

/// Batches of at least this many new rows are loaded in parts on all the
/// COPY lanes at once (`copy.rs`).
pub const COPY_SPLIT: usize = 64;

/// One row to write, with its bookkeeping.
pub struct Pending {
    pub row: Row,
    pub source: String,
    /// The record's position in an array file.
    pub position: Option<String>,
    pub hash: String,
    /// The record's own field names (JSON array text).
    pub fields: String,
    /// The record's text hash as `bytea` input (`\x` and hex), where it may be kept.
    pub raw: Option<String>,
    /// Its unique values, `[field, value, ...]` (JSON array text; `None` for none).
    pub uniq: Option<String>,
    /// Under newer-wins, the file's version time: the update applies only if
    /// the table's version column is NULL or not later.
    pub check: Option<String>,
    /// Updates: which columns to set, one `1` or `0` per column (see [`update_sql`]).
    pub set: Option<String>,
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `v` CTE: the batch's arrays as rows, with the bookkeeping columns.
fn values_cte(t: &Table, with_check: bool) -> String {
    let n = t.columns.len();
    let extra = if with_check { 9 } else { 7 };
    let params: Vec<String> = (1..=n + extra).map(|i| format!("${i}::text[]")).collect();
    let mut names: Vec<String> = t.columns.iter().map(|c| q(c.name)).collect();
    names.extend(["m_source", "m_position", "m_hash", "m_fields", "m_extras", "m_raw", "m_uniq"].map(String::from));
    if with_check {
        names.extend(["m_check", "m_set"].map(String::from));
    }
    format!("v AS (SELECT * FROM unnest({}) AS v({}))", params.join(", "), names.join(", "))
}

/// The bookkeeping upsert for the rows `w` returned.
fn bookkeeping(t: &Table) -> String {
    format!(
        "INSERT INTO docmirror_rows (tbl, id, source, position, hash, fields, extras, written_at, raw, uniq) \
         SELECT '{}', v.\"id\", v.m_source, v.m_position::bigint, v.m_hash, v.m_fields::jsonb, v.m_extras::jsonb, now(), \
         v.m_raw::bytea, v.m_uniq \
         FROM v JOIN w ON w.id = v.\"id\" \
         ON CONFLICT (tbl, id) DO UPDATE SET source = EXCLUDED.source, position = EXCLUDED.position, hash = EXCLUDED.hash, \
         fields = EXCLUDED.fields, extras = EXCLUDED.extras, written_at = EXCLUDED.written_at, raw = EXCLUDED.raw, \
         uniq = EXCLUDED.uniq RETURNING id",
        t.name
    )
}

pub fn insert_sql(t: &Table) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| q(c.name)).collect();
    let vals: Vec<String> = t.columns.iter().map(|c| format!("v.{}::{}", q(c.name), c.kind.cast())).collect();
    format!(
        "WITH {}, w AS (INSERT INTO {} ({}) SELECT {} FROM v RETURNING id) {}",
        values_cte(t, false),
        t.name,
        cols.join(", "),
        vals.join(", "),
        bookkeeping(t)
    )
}

/// The version condition of a conditional update (`t` is the table's row).
pub fn version_condition(t: &Table) -> String {
    match t.version {
        Some(vc) => format!(" AND (v.m_check IS NULL OR t.{0} IS NULL OR t.{0} <= v.m_check::timestamp)", q(vc)),
        None => String::new(),
    }
}

/// An update sets the columns whose field the record has, and empties those
/// whose field the mirror wrote before and the record lost (`m_set`, one
/// `1` or `0` per column); the others keep what the app wrote there.
pub fn update_sql(t: &Table) -> String {
    let sets: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, c)| {
            let n = q(c.name);
            format!("{n} = CASE WHEN substr(v.m_set, {}, 1) = '1' THEN v.{n}::{} ELSE t.{n} END", i + 1, c.kind.cast())
        })
        .collect();
    format!(
        "WITH {}, w AS (UPDATE {} AS t SET {} FROM v WHERE t.id = v.\"id\"{} RETURNING t.id) {}",
        values_cte(t, true),
        t.name,
        sets.join(", "),
        version_condition(t),
        bookkeeping(t)
    )
}

/// The statement's parameters: one text array per column, then the bookkeeping.
fn params(t: &Table, rows: &[&Pending], with_check: bool) -> Vec<Vec<Option<String>>> {
    let mut out: Vec<Vec<Option<String>>> =
        (0..t.columns.len()).map(|i| rows.iter().map(|p| p.row.values.get(i).cloned().flatten()).collect()).collect();
    out.push(rows.iter().map(|p| Some(p.source.clone())).collect());
    out.push(rows.iter().map(|p| p.position.clone()).collect());
    out.push(rows.iter().map(|p| Some(p.hash.clone())).collect());
    out.push(rows.iter().map(|p| Some(p.fields.clone())).collect());
    out.push(rows.iter().map(|p| Some(extras_text(&p.row.extras))).collect());
    out.push(rows.iter().map(|p| p.raw.clone()).collect());
    out.push(rows.iter().map(|p| p.uniq.clone()).collect());
    if with_check {
        out.push(rows.iter().map(|p| p.check.clone()).collect());
        out.push(rows.iter().map(|p| p.set.clone()).collect());
    }
    out
}

/// JSON text PostgreSQL's `jsonb` accepts: it refuses `\u0000`.
pub fn no_nul(json: String) -> String {
    if json.contains("\\u0000") {
        json.replace("\\u0000", "\\ufffd")
    } else {
        json
    }
}

/// A record's extras as `jsonb` input text.
pub fn extras_text(extras: &serde_json::Map<String, serde_json::Value>) -> String {
    // A map with string keys always serializes. Were it ever not to, the empty
    // text is not `jsonb`: PostgreSQL refuses the row, a reject with its reason.
    no_nul(serde_json::to_string(extras).unwrap_or_default())
}

/// A refusal of one record as its outcome.
fn refusal(e: &tokio_postgres::Error, pg: &Pg) -> Option<Outcome> {
    let db = e.as_db_error()?;
    let message = pg.scrub(&describe(e));
    Some(match db.code().code() {
        "23505" => Outcome::DuplicateKey { message },
        state => Outcome::Failed { code: sqlstate_code(state), message },
    })
}

impl Pg {
    /// Write rows with `sql` ([`insert_sql`] or [`update_sql`]): one outcome
    /// per row, `matched` 1 when the row was written, 0 when the version
    /// check held it back. Refused batches are written again row by row.
    pub async fn write_rows(&self, t: &Table, rows: &[Pending], update: bool) -> Result<Vec<Outcome>, Fatal> {
        let mut out = Vec::with_capacity(rows.len());
        // sync's load into empty tables: every new row by COPY, in its
        // transaction, sent while the next batch is made; what PostgreSQL
        // refuses undoes the whole load (`fresh.rs`).
        if let Some(fresh) = self.fresh().filter(|_| !update) {
            for batch in rows.chunks(BATCH) {
                fresh.load(self, t, batch).await?;
                out.extend(batch.iter().map(|_| Outcome::Applied { matched: Some(1) }));
            }
            return Ok(out);
        }
        let mut prepared = None;
        for batch in rows.chunks(BATCH) {
            // New rows: COPY first; when it refuses the batch, the statements below.
            if !update && batch.len() >= COPY_MIN {
                // In parts on the COPY lanes at once (small batches in one).
                let parts = if batch.len() >= COPY_SPLIT { LANES } else { 1 };
                let part_len = batch.len().div_ceil(parts);
                let loads = batch.chunks(part_len).enumerate().map(|(lane, part)| self.copy_rows(t, part, lane));
                let loaded = futures_util::future::join_all(loads).await;
                // A refused part goes by statement; outcomes stay in the batch's order.
                for (part, result) in batch.chunks(part_len).zip(loaded) {
                    match result {
                        Ok(()) => out.extend(part.iter().map(|_| Outcome::Applied { matched: Some(1) })),
                        Err(reason) => {
                            tracing::debug!(table = t.name, rows = part.len(), %reason, "COPY refused the batch: writing it with statements");
                            out.extend(self.write_by_statements(t, part, update, &mut prepared).await?);
                        }
                    }
                }
                continue;
            }
            out.extend(self.write_by_statements(t, batch, update, &mut prepared).await?);
        }
        Ok(out)
    }

    /// One batch by statement; a batch PostgreSQL refuses is written again
    /// row by row, so that each refusal is one record's outcome.
    async fn write_by_statements(
        &self,
        t: &Table,
        batch: &[Pending],
        update: bool,
        prepared: &mut Option<(std::sync::Arc<tokio_postgres::Client>, tokio_postgres::Statement)>,
    ) -> Result<Vec<Outcome>, Fatal> {
        let (client, stmt) = match prepared {
            Some(p) => p,
            None => prepared.insert(self.prepare_write(t, update).await?),
        };
        let refs: Vec<&Pending> = batch.iter().collect();
        let mut out = Vec::with_capacity(batch.len());
        match Self::run(client, stmt, t, &refs, update).await {
            Ok(written) => out.extend(refs.iter().map(|p| applied(&written, p))),
            Err(e) if e.as_db_error().is_some() => {
                for p in &refs {
                    match Self::run(client, stmt, t, std::slice::from_ref(p), update).await {
                        Ok(written) => out.push(applied(&written, p)),
                        Err(e) => match refusal(&e, self) {
                            Some(o) => out.push(o),
                            None => return Err(self.fatal(&format!("cannot write to {}", t.name), &e)),
                        },
                    }
                }
            }
            Err(e) => return Err(self.fatal(&format!("cannot write to {}", t.name), &e)),
        }
        Ok(out)
    }

    async fn prepare_write(
        &self,
        t: &Table,
        update: bool,
    ) -> Result<(std::sync::Arc<tokio_postgres::Client>, tokio_postgres::Statement), Fatal> {
        let sql = if update { update_sql(t) } else { insert_sql(t) };
        let client = self.client().await?;
        let stmt =
            client.prepare(&sql).await.map_err(|e| self.fatal(&format!("cannot prepare a write to {}", t.name), &e))?;
        Ok((client, stmt))
    }

    async fn run(
        client: &tokio_postgres::Client,
        stmt: &tokio_postgres::Statement,
        t: &Table,
        rows: &[&Pending],
        update: bool,
    ) -> Result<HashSet<String>, tokio_postgres::Error> {
        let params = params(t, rows, update);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let got = client.query(stmt, &refs).await?;
        Ok(got.iter().filter_map(|r| r.try_get::<_, String>(0).ok()).collect())
    }
}

fn applied(written: &HashSet<String>, p: &Pending) -> Outcome {
    let id = p.row.values.first().cloned().flatten().unwrap_or_default();
    Outcome::Applied { matched: Some(u64::from(written.contains(&id))) }
}

/// Delete rows whose bookkeeping still holds the hash the core saw (or any
/// row, where it saw none), archiving each deleted row in the same statement
/// when asked. Returns the ids deleted.
pub fn delete_sql(t: &Table, archive: bool) -> String {
    let archive_cte = if archive {
        format!(
            ", a AS (INSERT INTO mirror_archive (tbl, id, hash, row_data, extras) \
             SELECT '{0}', d.id, COALESCE(r.hash, ''), to_jsonb(d), r.extras FROM d \
             LEFT JOIN docmirror_rows r ON r.tbl = '{0}' AND r.id = d.id ON CONFLICT DO NOTHING)",
            t.name
        )
    } else {
        String::new()
    };
    format!(
        "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[]) AS v(id, hash)), \
         d AS (DELETE FROM {0} AS t USING v WHERE t.id = v.id AND (v.hash IS NULL OR EXISTS \
         (SELECT 1 FROM docmirror_rows r WHERE r.tbl = '{0}' AND r.id = t.id AND r.hash = v.hash)) RETURNING t.*){1}, \
         b AS (DELETE FROM docmirror_rows r USING d WHERE r.tbl = '{0}' AND r.id = d.id) \
         SELECT id::text FROM d",
        t.name, archive_cte
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::tables::{TRAINING_JOBS, USERS};

    #[test]
    fn statements_name_every_guide_column_once() {
        let sql = insert_sql(&TRAINING_JOBS);
        for c in TRAINING_JOBS.columns {
            assert_eq!(sql.matches(&format!("v.\"{}\"::", c.name)).count(), 1, "{}: {sql}", c.name);
        }
        let sql = update_sql(&USERS);
        assert!(sql.contains("t.\"updated_at\" <= v.m_check::timestamp"), "{sql}");
        assert!(!sql.contains("\"id\" = CASE"), "the key is never set: {sql}");
        assert!(
            sql.contains("\"role\" = CASE WHEN substr(v.m_set, 5, 1) = '1' THEN v.\"role\"::text ELSE t.\"role\" END"),
            "{sql}"
        );
        assert!(delete_sql(&USERS, true).contains("mirror_archive"));
        assert!(!delete_sql(&USERS, false).contains("mirror_archive"));
    }
}
