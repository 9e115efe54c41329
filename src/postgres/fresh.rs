//! The first load into empty tables (`sync` only), the way `pg_restore`
//! loads a dump: in one transaction on a connection of its own, the tables
//! locked against everyone else, their keys and indexes dropped before the
//! rows go in with COPY and made again after, from their own definitions
//! (`pg_get_constraintdef`, `pg_get_indexdef`). PostgreSQL then checks every
//! key, unique value and foreign key once over the whole table (a sort, a
//! join) instead of once per row (a B-tree insert, a trigger's lookup).
//!
//! All or nothing: anything PostgreSQL refuses (a row, or a key made again
//! over the loaded rows: a duplicate email, a job whose user is not in the
//! files) rolls the whole load back, and `sync` loads again as it does into
//! tables that are not empty, where each refusal is one record's reject.
//! Nobody else ever sees a table without its keys: the tables are locked
//! from before the keys are dropped until they are back and committed.
//!
//! While the load is on, every statement of this target goes through its
//! connection (see [`Pg::client`]), so that docmirror's own reads and the
//! rejects it records neither wait for its locks nor escape the transaction.

use std::sync::Arc;

use tokio_postgres::Client;

use super::copy::{bookkeeping_data, copy, guide_copy_sql, guide_data, BOOKKEEPING_COPY_SQL};
use super::tables::Table;
use super::target::table_of;
use super::write::Pending;
use super::{describe, Pg, WORK_MEM};
use crate::error::Fatal;
use crate::reconcile::Engine;

/// How long the load waits for the tables' locks before it leaves them to
/// whoever holds them and loads beside them instead.
const LOCK_WAIT: &str = "2s";

/// Batches made and not yet sent to PostgreSQL, at most: the next batch is
/// made while the last one loads, and memory stays a few batches.
const AHEAD: usize = 2;

/// What the loader sends, in order.
enum Batch {
    /// A COPY statement and its text for the guide's table, then the text for `docmirror_rows`.
    Rows(String, String, String),
    /// A table's own keys and indexes, made again once its rows are all in.
    Remake(Vec<String>),
}

/// A dropped key or index: its table, whether it is a foreign key, and what makes it again.
struct Remake {
    table: String,
    foreign: bool,
    sql: String,
}

/// The load under way.
pub struct Fresh {
    pub client: Arc<Client>,
    task: tokio::task::JoinHandle<()>,
    /// What makes the dropped keys and indexes again, in order (those not yet made).
    remake: std::sync::Mutex<Vec<Remake>>,
    /// Batches on their way to the loader (closed at the end of the load).
    batches: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Batch>>>,
    /// The loader: sends the batches in order; what PostgreSQL said if it refused one.
    loader: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), String>>>>,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        // Closing the connection rolls back whatever was not committed.
        self.task.abort();
        if let Ok(mut l) = self.loader.try_lock() {
            if let Some(l) = l.take() {
                l.abort();
            }
        }
    }
}

impl Fresh {
    /// Hand a batch of new rows to the loader: it is sent while the caller
    /// makes the next one. `Err` when the loader stopped (PostgreSQL refused
    /// a batch): the load can only be undone.
    pub async fn load(&self, pg: &Pg, t: &Table, rows: &[Pending]) -> Result<(), Fatal> {
        let batch = Batch::Rows(guide_copy_sql(t), guide_data(t, rows), bookkeeping_data(t, rows));
        if self.send(batch).await {
            return Ok(());
        }
        let said = self.stopped(pg).await.err().unwrap_or_else(|| "the loader is gone".into());
        Err(Fatal::Postgres(format!("the load into empty tables stopped at {}: {said}", t.name)))
    }

    async fn send(&self, batch: Batch) -> bool {
        let tx = self.batches.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match tx {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        }
    }

    /// A table's rows are all in: its own keys and indexes are made next,
    /// while the other tables load (foreign keys wait for the end).
    pub async fn table_done(&self, table: &str) {
        let own: Vec<String> = {
            let mut all = self.remake.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (own, rest): (Vec<Remake>, Vec<Remake>) =
                std::mem::take(&mut *all).into_iter().partition(|r| r.table == table && !r.foreign);
            *all = rest;
            own.into_iter().map(|r| r.sql).collect()
        };
        if !own.is_empty() {
            // A loader that stopped is found at the end of the load.
            let _ = self.send(Batch::Remake(own)).await;
        }
    }

    /// Close the batches and wait for the loader to send the last of them.
    async fn stopped(&self, pg: &Pg) -> Result<(), String> {
        drop(self.batches.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        let Some(task) = self.loader.lock().await.take() else { return Err("the load stopped before".into()) };
        match task.await {
            Ok(r) => r,
            Err(e) => Err(pg.scrub(&format!("the loader failed: {e}"))),
        }
    }
}

/// Send the batches one after the other on the load's connection.
async fn send_batches(
    client: Arc<Client>,
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
    scrubber: crate::redact::Scrubber,
) -> Result<(), String> {
    while let Some(batch) = rx.recv().await {
        let sent = async {
            match batch {
                Batch::Rows(guide_sql, guide, bookkeeping) => {
                    copy(&client, &guide_sql, guide).await?;
                    copy(&client, BOOKKEEPING_COPY_SQL, bookkeeping).await?;
                }
                Batch::Remake(statements) => {
                    for sql in statements {
                        let started = std::time::Instant::now();
                        client.batch_execute(&sql).await?;
                        tracing::debug!(statement = %sql, elapsed_ms = started.elapsed().as_millis(), "Made a key or index again");
                    }
                }
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        if let Err(e) = sent.await {
            return Err(scrubber.scrub(&describe(&e)));
        }
    }
    Ok(())
}

/// The tables' keys and indexes, and the statements that drop and make them
/// again: primary keys and unique constraints, then plain indexes, then
/// foreign keys (those of the tables and those that point at them).
const PLAN_SQL: &str = "
WITH t AS (SELECT unnest($1::text[])::regclass AS oid),
c AS (
  SELECT k.oid, k.conrelid, k.conname, k.contype, k.conindid
  FROM pg_constraint k
  WHERE (k.conrelid IN (SELECT oid FROM t) AND k.contype IN ('p', 'u', 'f'))
     OR (k.contype = 'f' AND k.confrelid IN (SELECT oid FROM t))
)
SELECT drop_sql, make_sql, make_order, tbl FROM (
  SELECT 0 AS drop_order, 2 AS make_order, k.conname::text AS name, k.conrelid::regclass::text AS tbl,
         format('ALTER TABLE %s DROP CONSTRAINT %I', k.conrelid::regclass, k.conname) AS drop_sql,
         format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid)) AS make_sql
  FROM c k WHERE k.contype = 'f'
  UNION ALL
  SELECT 1, 0, k.conname::text, k.conrelid::regclass::text,
         format('ALTER TABLE %s DROP CONSTRAINT %I', k.conrelid::regclass, k.conname),
         format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid))
  FROM c k WHERE k.contype IN ('p', 'u')
  UNION ALL
  SELECT 2, 1, i.indexrelid::regclass::text, i.indrelid::regclass::text,
         format('DROP INDEX %s', i.indexrelid::regclass),
         pg_get_indexdef(i.indexrelid)
  FROM pg_index i
  WHERE i.indrelid IN (SELECT oid FROM t)
    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
) s
ORDER BY drop_order, name";

/// Tables locked besides the loaded ones: those whose foreign keys point at them.
const REFERRING_SQL: &str = "
SELECT DISTINCT k.conrelid::regclass::text FROM pg_constraint k
WHERE k.contype = 'f' AND k.confrelid = ANY(SELECT unnest($1::text[])::regclass)";

/// Tables this load cannot treat this way: partitioned, or not tables.
const ODD_SQL: &str = "
SELECT count(*) FROM pg_class WHERE oid = ANY(SELECT unnest($1::text[])::regclass) AND relkind <> 'r'";

impl Pg {
    pub(super) fn fresh(&self) -> Option<Arc<Fresh>> {
        self.inner.fresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_fresh(&self, f: Option<Arc<Fresh>>) -> Option<Arc<Fresh>> {
        std::mem::replace(&mut *self.inner.fresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner), f)
    }

    /// Start the load into the layout's tables if they and docmirror's
    /// bookkeeping are empty: `false` (with a line in the log saying why, when
    /// something stopped it) and the caller loads as into any tables.
    pub async fn begin_fresh(&self, engine: &Engine) -> bool {
        let mut tables: Vec<&str> = Vec::new();
        for spec in &engine.layout.sources {
            match table_of(spec) {
                Ok(t) if !tables.contains(&t.name) => tables.push(t.name),
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        match self.try_begin(&tables).await {
            Ok(None) => false,
            Ok(Some(f)) => {
                tracing::info!(
                    tables = %tables.join(", "),
                    keys_and_indexes = f.remake.lock().map_or(0, |r| r.len()),
                    "Loading empty tables in one transaction: keys and indexes are made after the load"
                );
                self.set_fresh(Some(Arc::new(f)));
                true
            }
            Err(reason) => {
                tracing::info!(%reason, "Not loading in one transaction: loading in batches beside other users of the tables");
                false
            }
        }
    }

    async fn try_begin(&self, tables: &[&str]) -> Result<Option<Fresh>, String> {
        let (client, task) = self.extra_connection("first load").await.map_err(|e| self.scrub(&describe(&e)))?;
        let client = Arc::new(client);
        let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
        let loader = tokio::spawn(send_batches(client.clone(), rx, self.scrubber()));
        let mut fresh = Fresh {
            client,
            task,
            remake: std::sync::Mutex::new(Vec::new()),
            batches: std::sync::Mutex::new(Some(tx)),
            loader: tokio::sync::Mutex::new(Some(loader)),
        };
        let c = &fresh.client;
        let err = |e: tokio_postgres::Error| self.scrub(&describe(&e));
        let mut all: Vec<String> = tables.iter().map(|t| (*t).to_string()).collect();
        all.push("docmirror_rows".into());
        if c.query_one(ODD_SQL, &[&all]).await.map_err(err)?.get::<_, i64>(0) > 0 {
            return Err("a table is partitioned or not a plain table".into());
        }
        c.batch_execute(WORK_MEM).await.map_err(err)?;
        c.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_WAIT}'")).await.map_err(err)?;
        let referring: Vec<String> =
            c.query(REFERRING_SQL, &[&all]).await.map_err(err)?.iter().map(|r| r.get(0)).collect();
        let mut locked = all.clone();
        locked.extend(referring.into_iter().filter(|r| !all.contains(r)));
        c.batch_execute(&format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", locked.join(", "))).await.map_err(err)?;
        c.batch_execute("SET LOCAL lock_timeout TO DEFAULT").await.map_err(err)?;
        let empty = all.iter().map(|t| format!("NOT EXISTS (SELECT 1 FROM {t})")).collect::<Vec<_>>().join(" AND ");
        if !c.query_one(&format!("SELECT {empty}"), &[]).await.map_err(err)?.get::<_, bool>(0) {
            // Not a first load: nothing to do here (the connection's end rolls back).
            return Ok(None);
        }
        let plan = c.query(PLAN_SQL, &[&all]).await.map_err(err)?;
        let mut make: Vec<(i32, Remake)> = Vec::with_capacity(plan.len());
        for row in &plan {
            let drop_sql: String = row.get(0);
            c.batch_execute(&drop_sql).await.map_err(err)?;
            let rank: i32 = row.get(2);
            make.push((rank, Remake { table: row.get(3), foreign: rank == 2, sql: row.get(1) }));
        }
        // Made again: keys first (foreign keys need them), then indexes, then foreign keys.
        make.sort_by_key(|(rank, _)| *rank);
        fresh.remake = std::sync::Mutex::new(make.into_iter().map(|(_, r)| r).collect());
        Ok(Some(fresh))
    }

    /// Make the keys and indexes again and commit. `Err` (with what
    /// PostgreSQL said) means nothing of the load was kept.
    pub async fn finish_fresh(&self) -> Result<(), String> {
        let Some(f) = self.set_fresh(None) else { return Ok(()) };
        // What is left (foreign keys, `docmirror_rows`' keys) goes last, by the loader.
        let rest = std::mem::take(&mut *f.remake.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !rest.is_empty() {
            // A loader that stopped says why below.
            let _ = f.send(Batch::Remake(rest.into_iter().map(|r| r.sql).collect())).await;
        }
        f.stopped(self).await?;
        let started = std::time::Instant::now();
        f.client.batch_execute("COMMIT").await.map_err(|e| self.scrub(&describe(&e)))?;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "Committed the load into empty tables");
        Ok(())
    }

    /// Roll the load back (the connection is closed).
    pub fn abandon_fresh(&self) {
        drop(self.set_fresh(None));
    }
}
