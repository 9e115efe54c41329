//! PostgreSQL as a reconcile target (`--target postgres`): the migration
//! guide's own tables (`schema.sql`, applied idempotently), filled from the
//! same records the MongoDB sink writes, plus docmirror's bookkeeping in
//! tables of its own (`docmirror_rows`, `mirror_rejects`, `mirror_archive`)
//! so the guide's columns stay exactly the guide's.
//!
//! `tables.rs` maps records to rows and back; `write.rs` builds the
//! multi-row statements; `copy.rs` loads batches of new rows with COPY;
//! `target.rs` is the [`crate::reconcile::target::Target`]; `tls.rs` reads
//! `sslmode` and `sslrootcert` and makes the TLS connector both connections use.

mod copy;
mod fresh;
mod state;
pub mod tables;
mod target;
mod texts;
pub mod tls;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::layout::Layout;
use crate::redact::{redact_uri, Scrubber};

/// The guide's schema and docmirror's tables (all `IF NOT EXISTS`).
pub const SCHEMA: &str = include_str!("schema.sql");

/// Records per chunk of a full scan on this target, unless `--chunk-records`
/// says otherwise (see `WriteArgs::apply`).
pub const CHUNK: usize = 5_000;

/// COPY connections: a batch of new rows is loaded in this many parts at
/// once, each in a transaction of its own, so PostgreSQL loads one part (on a
/// core of its own) while the next part's text is made and sent.
pub const LANES: usize = 2;

/// Where PostgreSQL is, and how long to keep trying to reach it.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub url: String,
    /// `None`: retry forever.
    pub retry_budget: Option<Duration>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A connected PostgreSQL target. Cheap to clone: one connection, shared;
/// every write is a single statement, so concurrent requests pipeline on it.
/// A lost connection (a server restart, a dropped session) is made again on
/// the next request, within the same retry budget as the first.
#[derive(Clone)]
pub struct Pg {
    inner: Arc<Inner>,
}

struct Inner {
    conn: std::sync::Mutex<Conn>,
    /// One reconnect at a time.
    reconnecting: tokio::sync::Mutex<()>,
    opts: PgOptions,
    cancel: CancellationToken,
    /// A dry run against a database without the guide's tables: every read
    /// answers "nothing there" instead of failing on the missing tables.
    absent: std::sync::atomic::AtomicBool,
    scrubber: Scrubber,
    shown_url: String,
    /// `mirror_state` is read, changed and written back: one writer at a time.
    state_lock: tokio::sync::Mutex<()>,
    /// Deletes a foreign key refused (see `StateStore::take_blocked_deletes`).
    blocked: std::sync::atomic::AtomicU64,
    /// The second connection, for COPY's transactions (one at a time).
    /// The COPY connections (two lanes, so that one batch's half is sent
    /// while PostgreSQL loads the other).
    bulk: [tokio::sync::Mutex<copy::Bulk>; LANES],
    /// `sync`'s load into empty tables, while it is under way (`fresh.rs`).
    fresh: std::sync::Mutex<Option<Arc<fresh::Fresh>>>,
    /// How both connections are made: the URL the driver reads, and TLS.
    dial: Dial,
}

/// The driver's connection (the task that drives it), plain or TLS.
type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// What a connection is opened with (see `tls.rs`).
#[derive(Clone)]
struct Dial {
    settings: tls::Settings,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Dial {
    fn new(url: &str) -> Result<Dial, Fatal> {
        let settings = tls::settings(url);
        let tls = tls::connector(&settings, url)?;
        Ok(Dial { settings, tls })
    }

    async fn connect(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        tokio_postgres::connect(&self.settings.driver_url, self.tls.clone()).await
    }
}

/// A client and the task that drives its connection.
struct Conn {
    client: Arc<Client>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a failed connection attempt is worth another try: the server is
/// not there (yet), starting up, or out of connections. A TLS handshake that
/// failed (a refused certificate, a server without TLS) fails the same way again.
fn transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => {
            let said = e.to_string();
            !said.contains("invalid") && !said.starts_with("error performing TLS handshake")
        }
        Some(c) => ["57P03", "53300", "08006", "08001", "08004"].contains(&c.code()),
    }
}

/// The session's `work_mem`, raised to 64 MB where it is lower.
const WORK_MEM: &str = "SELECT set_config('work_mem', '65536kB', false) FROM pg_settings \
                        WHERE name = 'work_mem' AND setting::bigint < 65536";

/// Open a connection, retrying transient failures until the budget runs out.
async fn open(opts: &PgOptions, dial: &Dial, cancel: &CancellationToken, scrubber: &Scrubber) -> Result<Conn, Fatal> {
    let started = Instant::now();
    let shown_url = redact_uri(&opts.url);
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            r = dial.connect() => r,
            () = cancel.cancelled() => return Err(Fatal::Interrupted),
        };
        let e = match attempt {
            Ok((client, connection)) => {
                let scrub = scrubber.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %scrub.scrub(&e.to_string()), "PostgreSQL connection lost");
                    }
                });
                tracing::info!(url = %shown_url, tls = ?dial.settings.check(), "Connected to PostgreSQL");
                // docmirror's reads join a whole table with its bookkeeping: with
                // the default 4 MB per hash they spill to disk in batches (a third
                // slower at 100k rows). This session only, and never lowered.
                if let Err(e) = client.batch_execute(WORK_MEM).await {
                    tracing::debug!(error = %scrubber.scrub(&e.to_string()), "Could not raise work_mem");
                }
                opts.metrics.set_mongodb_up(true);
                return Ok(Conn { client: Arc::new(client), task });
            }
            Err(e) => e,
        };
        opts.metrics.set_mongodb_up(false);
        let said = scrubber.scrub(&describe(&e));
        let out_of_time = opts.retry_budget.is_some_and(|b| started.elapsed() + pause > b);
        if !transient(&e) || out_of_time {
            let advice = tls::hint(&e, &dial.settings)
                .unwrap_or("check --postgres-url / DATABASE_URL, and that the server is running and accepts this user");
            return Err(Fatal::Connect {
                message: format!("cannot connect to PostgreSQL at {shown_url}: {said} ({advice})"),
                detail: said,
            });
        }
        tracing::warn!(url = %shown_url, error = %said, "PostgreSQL not reachable yet; retrying");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = cancel.cancelled() => return Err(Fatal::Interrupted),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Refuse at once what no retry can fix: a URL the driver cannot read
/// (`sslrootcert` and the `verify-*` modes are docmirror's to read, see `tls.rs`).
pub fn check_url(url: &str) -> Result<(), Fatal> {
    let shown = redact_uri(url);
    let driver_url = tls::settings(url).driver_url;
    driver_url.parse::<tokio_postgres::Config>().map_err(|e: tokio_postgres::Error| {
        Fatal::Config(format!(
            "--postgres-url {shown} is not a PostgreSQL URL: {}",
            Scrubber::for_uri(url).scrub(&e.to_string())
        ))
    })?;
    Ok(())
}

impl Pg {
    /// Connect, retrying until the budget runs out (or `cancel` fires).
    pub async fn connect(opts: PgOptions, cancel: CancellationToken) -> Result<Pg, Fatal> {
        check_url(&opts.url)?;
        let scrubber = Scrubber::for_uri(&opts.url);
        let shown_url = redact_uri(&opts.url);
        let dial = Dial::new(&opts.url)?;
        let conn = open(&opts, &dial, &cancel, &scrubber).await?;
        Ok(Pg {
            inner: Arc::new(Inner {
                conn: std::sync::Mutex::new(conn),
                reconnecting: tokio::sync::Mutex::new(()),
                opts,
                cancel,
                absent: false.into(),
                scrubber,
                shown_url,
                state_lock: tokio::sync::Mutex::new(()),
                blocked: 0.into(),
                bulk: Default::default(),
                fresh: std::sync::Mutex::new(None),
                dial,
            }),
        })
    }

    fn current(&self) -> Arc<Client> {
        self.inner.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).client.clone()
    }

    /// The connection, made again first if it was lost.
    pub async fn client(&self) -> Result<Arc<Client>, Fatal> {
        // During sync's load into empty tables, everything goes through its
        // transaction (the tables are locked against other connections).
        if let Some(f) = self.fresh() {
            if f.client.is_closed() {
                return Err(Fatal::Postgres("the connection of the load into empty tables was lost".into()));
            }
            return Ok(f.client.clone());
        }
        let c = self.current();
        if !c.is_closed() {
            return Ok(c);
        }
        let _one = self.inner.reconnecting.lock().await;
        let c = self.current();
        if !c.is_closed() {
            return Ok(c);
        }
        tracing::info!(url = %self.inner.shown_url, "Connecting to PostgreSQL again");
        let conn = open(&self.inner.opts, &self.inner.dial, &self.inner.cancel, &self.inner.scrubber).await?;
        let client = conn.client.clone();
        *self.inner.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
        Ok(client)
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.opts.metrics
    }

    fn blocked(&self) -> &std::sync::atomic::AtomicU64 {
        &self.inner.blocked
    }

    fn state_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.state_lock
    }

    /// A connection beside the main one (COPY's lanes, sync's first load),
    /// driven by a task of its own; `what` names it when it is lost.
    async fn extra_connection(
        &self,
        what: &'static str,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let (client, connection) = self.dial().connect().await?;
        let scrub = self.scrubber();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %scrub.scrub(&e.to_string()), connection = what, "PostgreSQL connection lost");
            }
        });
        Ok((client, task))
    }

    fn bulk(&self, lane: usize) -> &tokio::sync::Mutex<copy::Bulk> {
        &self.inner.bulk[lane % LANES]
    }

    fn dial(&self) -> &Dial {
        &self.inner.dial
    }

    fn scrubber(&self) -> Scrubber {
        self.inner.scrubber.clone()
    }

    /// The URL with its password masked.
    pub fn shown_url(&self) -> &str {
        &self.inner.shown_url
    }

    /// A driver error as one line, credentials removed.
    pub fn fatal(&self, doing: &str, e: &tokio_postgres::Error) -> Fatal {
        Fatal::Postgres(format!("{doing}: {}", self.scrub(&describe(e))))
    }

    pub fn scrub(&self, text: &str) -> String {
        self.inner.scrubber.scrub(text)
    }

    /// For a dry run, which writes nothing (not even the schema): whether the
    /// guide's tables and docmirror's are there; if not, reads answer empty.
    pub async fn check_schema(&self) -> Result<(), Fatal> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() \
                 AND table_name = ANY($1)",
                &[&vec!["users", "datasets", "training_jobs", "docmirror_rows", "mirror_rejects", "mirror_archive"]],
            )
            .await
            .map_err(|e| self.fatal("cannot read the schema", &e))?;
        let n: i64 = row.try_get(0).map_err(|e| self.fatal("cannot read the schema", &e))?;
        if n < 6 {
            tracing::info!("The guide's tables are not there yet: the dry run compares with empty tables");
            self.inner.absent.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether reads answer empty (see [`Pg::check_schema`]).
    pub fn absent(&self) -> bool {
        self.inner.absent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Apply the guide's schema and docmirror's tables (idempotent; one
    /// docmirror at a time, under an advisory lock), then check that the
    /// guide's tables have the guide's columns.
    pub async fn apply_schema(&self, layout: &Layout) -> Result<(), Fatal> {
        for spec in &layout.sources {
            if tables::table(&spec.collection).is_none() {
                return Err(Fatal::Config(format!(
                    "source {} mirrors into {:?}, which is not one of the guide's tables (users, datasets, \
                     training_jobs): the PostgreSQL target writes only those",
                    spec.name, spec.collection
                )));
            }
        }
        // A table of the guide's name made otherwise is not written into (checked first:
        // the guide's indexes could not even be made on it).
        for t in tables::TABLES {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() \
                     AND table_name = $1",
                    &[&t.name],
                )
                .await
                .map_err(|e| self.fatal("cannot read the schema", &e))?;
            let have: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
            let missing: Vec<&str> =
                t.columns.iter().map(|c| c.name).filter(|c| !have.iter().any(|h| h == c)).collect();
            if !have.is_empty() && !missing.is_empty() {
                return Err(Fatal::Config(format!(
                    "table {} exists without the guide's column(s) {}: it was not made from the guide's schema.sql",
                    t.name,
                    missing.join(", ")
                )));
            }
        }
        let sql = format!(
            "BEGIN; SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock(7263512); {SCHEMA}\nCOMMIT;"
        );
        self.client().await?.batch_execute(&sql).await.map_err(|e| self.fatal("cannot apply the schema", &e))?;
        self.warn_unless_utc().await;
        Ok(())
    }
}

impl Pg {
    /// The guide's `NOW()` writes the session's local time into its
    /// `TIMESTAMP` columns; docmirror writes UTC. Say so when they differ.
    async fn warn_unless_utc(&self) {
        let Ok(client) = self.client().await else { return };
        let Ok(row) = client.query_one("SELECT current_setting('TimeZone')", &[]).await else { return };
        let zone: String = row.try_get(0).unwrap_or_default();
        if !["UTC", "Etc/UTC", "GMT", "Etc/GMT", "Zulu", "UCT", "Etc/UCT"].contains(&zone.as_str()) {
            tracing::warn!(
                timezone = %zone,
                "PostgreSQL's TimeZone is not UTC: the app's NOW() writes local times into the guide's TIMESTAMP \
                 columns, while docmirror writes UTC, so newer-wins would compare different clocks; set \
                 timezone = 'UTC' for the database (ALTER DATABASE ... SET timezone = 'UTC') or the app's role"
            );
        }
    }
}

/// What PostgreSQL said, with its SQLSTATE, detail, table and column; for
/// an error of the driver's own, what caused it (the driver's text alone is
/// only "error performing TLS handshake" or "error connecting to server").
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        let mut s = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let said = c.to_string();
            if !s.contains(&said) {
                s.push_str(": ");
                s.push_str(&said);
            }
            cause = c.source();
        }
        return s;
    };
    let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    // "Failing row contains (...)" would copy the whole row, password hash
    // and all, into rejects and logs: only other details are kept.
    if let Some(d) = db.detail().filter(|d| !d.starts_with("Failing row contains")) {
        s.push_str(": ");
        s.push_str(d);
    }
    if let (Some(t), Some(c)) = (db.table(), db.column()) {
        s.push_str(&format!(" [column {t}.{c}]"));
    } else if let Some(c) = db.constraint() {
        s.push_str(&format!(" [constraint {c}]"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_no_retry_can_fix_are_refused_at_once() {
        assert!(check_url("postgresql://u:pw@localhost:5432/db").is_ok());
        assert!(check_url("postgresql://u:pw@localhost/db?sslmode=prefer").is_ok());
        assert!(check_url("postgresql://u:pw@localhost/db?sslmode=require").is_ok());
        assert!(check_url("postgresql://u:pw@localhost/db?sslmode=verify-full&sslrootcert=/ca.pem").is_ok());
        // Client certificates and `allow` are not taken.
        assert!(check_url("postgresql://u:pw@localhost/db?sslcert=/c.pem&sslkey=/k.pem").is_err());
        assert!(check_url("postgresql://u:pw@localhost/db?sslmode=allow").is_err());
        let mode = check_url("postgresql://u:s3cret@localhost/db?sslmode=sometimes").unwrap_err();
        assert_eq!(mode.exit_code(), crate::error::exit::USAGE);
        assert!(!mode.to_string().contains("s3cret"), "{mode}");
        let bad = check_url("postgresql://u:s3cret@localhost:notaport/db").unwrap_err();
        assert_eq!(bad.exit_code(), crate::error::exit::USAGE);
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
    }
}
