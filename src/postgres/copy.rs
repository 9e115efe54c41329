//! Bulk loads with `COPY ... FROM STDIN` (text format): a batch of new rows
//! goes into the guide's table and `docmirror_rows` in one transaction, on a
//! connection of its own (a transaction must not take in the statements other
//! tasks pipeline on the shared one). COPY is all or nothing: when PostgreSQL
//! refuses any row of the batch (a foreign key, a length, a precision, a
//! unique value), the transaction is rolled back, nothing of the batch is
//! written, and the caller writes the batch again with the statements of
//! `write.rs`, which find the refused records one by one. So COPY only makes
//! the common case fast; the outcomes are those of the statements.

use std::time::Instant;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::Client;

use super::tables::Table;
use super::write::{extras_text, Pending};
use super::Pg;

/// A connection COPY runs on, opened on first use.
#[derive(Default)]
pub struct Bulk {
    client: Option<Client>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The server would not give a second connection: statements only from now on.
    off: bool,
}

impl Drop for Bulk {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// One text-format field: `\N` for NULL, backslash escapes for the rest.
fn field(out: &mut String, value: Option<&str>) {
    let Some(s) = value else {
        out.push_str("\\N");
        return;
    };
    if !s.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.push_str(s);
        return;
    }
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn line(out: &mut String, fields: &[Option<&str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        field(out, *f);
    }
    out.push('\n');
}

/// The guide table's rows, in the order of `t.columns`.
pub fn guide_data(t: &Table, rows: &[Pending]) -> String {
    let mut out = String::with_capacity(rows.len() * 160);
    let mut fields: Vec<Option<&str>> = Vec::with_capacity(t.columns.len());
    for p in rows {
        fields.clear();
        fields.extend((0..t.columns.len()).map(|i| p.row.values.get(i).and_then(|v| v.as_deref())));
        line(&mut out, &fields);
    }
    out
}

/// The bookkeeping rows: `tbl, id, source, position, hash, fields, extras, raw, uniq`.
pub fn bookkeeping_data(t: &Table, rows: &[Pending]) -> String {
    let mut out = String::with_capacity(rows.len() * 160);
    for p in rows {
        let id = p.row.values.first().and_then(|v| v.as_deref());
        let extras = extras_text(&p.row.extras);
        let f = [
            Some(t.name),
            id,
            Some(p.source.as_str()),
            p.position.as_deref(),
            Some(p.hash.as_str()),
            Some(p.fields.as_str()),
            Some(extras.as_str()),
            p.raw.as_deref(),
            p.uniq.as_deref(),
        ];
        line(&mut out, &f);
    }
    out
}

pub fn guide_copy_sql(t: &Table) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
    format!("COPY {} ({}) FROM STDIN", t.name, cols.join(", "))
}

pub const BOOKKEEPING_COPY_SQL: &str =
    "COPY docmirror_rows (tbl, id, source, position, hash, fields, extras, raw, uniq) FROM STDIN";

pub async fn copy(client: &Client, sql: &str, data: String) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(Bytes::from(data.into_bytes())).await?;
    sink.as_mut().finish().await
}

async fn load(client: &Client, t: &Table, rows: &[Pending]) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    copy(client, &guide_copy_sql(t), guide_data(t, rows)).await?;
    copy(client, BOOKKEEPING_COPY_SQL, bookkeeping_data(t, rows)).await?;
    client.batch_execute("COMMIT").await
}

impl Pg {
    /// Insert new rows with COPY, in one transaction. `Err` (with what
    /// PostgreSQL or the connection said) means nothing of the batch was
    /// written: the caller writes it with statements instead.
    pub async fn copy_rows(&self, t: &Table, rows: &[Pending], lane: usize) -> Result<(), String> {
        let mut bulk = self.bulk(lane).lock().await;
        if bulk.off {
            return Err("no connection for COPY".into());
        }
        if bulk.client.as_ref().is_none_or(Client::is_closed) {
            // One attempt, no retries: without a second connection, the
            // statements on the shared one do the work.
            match self.extra_connection("COPY").await {
                Ok((client, task)) => {
                    if let Some(old) = bulk.task.replace(task) {
                        old.abort();
                    }
                    bulk.client = Some(client);
                }
                Err(e) => {
                    bulk.off = true;
                    let said = self.scrub(&super::describe(&e));
                    tracing::info!(reason = %said, "No second PostgreSQL connection for COPY: writing with statements");
                    return Err(said);
                }
            }
        }
        let Some(client) = bulk.client.as_ref() else { return Err("no connection for COPY".into()) };
        let started = Instant::now();
        match load(client, t, rows).await {
            Ok(()) => {
                tracing::debug!(
                    table = t.name,
                    rows = rows.len(),
                    elapsed_ms = started.elapsed().as_millis(),
                    "Loaded a batch with COPY"
                );
                Ok(())
            }
            Err(e) => {
                // Whatever failed, the batch's transaction is rolled back.
                let _ = client.batch_execute("ROLLBACK").await;
                Err(self.scrub(&super::describe(&e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::tables::{Row, USERS};

    fn pending(values: &[Option<&str>]) -> Pending {
        let mut extras = serde_json::Map::new();
        extras.insert("team".into(), serde_json::json!("a\tb\u{0}"));
        Pending {
            row: Row { values: values.iter().map(|v| v.map(str::to_string)).collect(), extras },
            source: "data/users.json".into(),
            position: Some("3".into()),
            hash: "h".into(),
            fields: "[\"id\"]".into(),
            raw: Some("\\x00ff".into()),
            uniq: None,
            check: None,
            set: None,
        }
    }

    #[test]
    fn text_format_escapes_what_would_end_a_field_or_a_line() {
        let p = pending(&[Some("u1"), Some("a\\b\tc\nd\re"), None, Some(""), None, None, None]);
        assert_eq!(guide_data(&USERS, std::slice::from_ref(&p)), "u1\ta\\\\b\\tc\\nd\\re\t\\N\t\t\\N\t\\N\t\\N\n");
        assert_eq!(
            bookkeeping_data(&USERS, &[p]),
            "users\tu1\tdata/users.json\t3\th\t[\"id\"]\t{\"team\":\"a\\\\tb\\\\ufffd\"}\t\\\\x00ff\t\\N\n"
        );
        assert_eq!(
            guide_copy_sql(&USERS),
            "COPY users (\"id\", \"email\", \"name\", \"password\", \"role\", \"created_at\", \"updated_at\") FROM STDIN"
        );
    }
}
