//! The sink: everything that talks to MongoDB. Connecting (with retries and a
//! time budget), reading the mirror's view of a collection, and writing
//! batches of operations, either with `Client::bulk_write` (MongoDB 8.0+) or
//! with the `insert`/`update`/`delete` commands that every server since 3.6
//! understands. The driver retries a write at most once; transient failures
//! (network, failover, server selection) are retried here with back-off.

pub mod diagnose;
pub mod indexes;
pub mod target;
mod write;

use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::reconcile::target::Outcome;
use crate::redact::{redact_uri, Scrubber};

/// Server error codes that mean "try again": failover, shutdown, network.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// How a read step that got no answer in time is told apart (a transient error).
const STALLED: &str = "no answer from MongoDB within";

/// How a write concern error during a failover is told apart (a transient error).
const FAILOVER: &str = "write concern error during a failover";

/// A transient error for a write command whose reply carries a write concern
/// error with a failover code: the whole command is sent again (its writes
/// are idempotent or settled by the core), instead of stopping the run.
pub(super) fn failover_in(reply: &Document) -> Option<MongoError> {
    let wce = reply.get_document("writeConcernError").ok()?;
    let code = wce.get("code").and_then(bson_i64).and_then(|c| i32::try_from(c).ok())?;
    TRANSIENT_CODES.contains(&code).then(|| MongoError::custom(format!("{FAILOVER} (code {code})")))
}

/// Server error codes about what was sent (bad values, sizes, field names).
const CONTENT_CODES: &[i32] = &[
    2,     // BadValue
    9,     // FailedToParse
    22,    // InvalidBSON
    40,    // ConflictingUpdateOperators
    52,    // DollarPrefixedFieldName
    55,    // InvalidDBRef
    56,    // EmptyFieldName
    57,    // DottedFieldName
    121,   // DocumentValidationFailure
    10334, // BSONObjectTooLarge
    17419, // the insert is too large
    17420, // the update makes a document too large
];

/// The error code when an error is about what was sent (0 for what the
/// driver could not even encode), `None` when it is about the server, the
/// network or the credentials.
fn refused_for_content(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::BsonSerialization(_) | ErrorKind::InvalidArgument { .. } => Some(0),
        // The driver reports a value it could not encode (a NUL in a field
        // name) as an invalid reply; only that message is about what was sent.
        ErrorKind::InvalidResponse { message, .. } if message.contains("cstrings cannot contain null bytes") => Some(0),
        ErrorKind::Command(c) if CONTENT_CODES.contains(&c.code) => Some(c.code),
        _ => None,
    }
}

/// MongoDB's duplicate-key error.
pub const DUPLICATE_KEY: i32 = 11000;

/// How batches are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// `commands` (the measured-faster path that every server supports).
    Auto,
    /// One `Client::bulk_write` per batch (MongoDB 8.0+ only).
    BulkWrite,
    /// `insert`/`update`/`delete` commands per collection (MongoDB 3.6+).
    Commands,
}

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub uri: String,
    pub database: Option<String>,
    pub write_mode: WriteMode,
    pub batch_size: usize,
    /// How many batches may be in flight at once.
    pub concurrency: usize,
    /// How long to keep retrying MongoDB before giving up; `None` retries forever (watch).
    pub retry_budget: Option<Duration>,
    /// Longest wait for one MongoDB operation: the driver has no socket
    /// timeout, and a frozen server would otherwise hold a write forever.
    pub op_timeout: Duration,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// One write, addressed to a collection.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Insert { coll: String, doc: Document },
    Update { coll: String, filter: Document, update: Document, upsert: bool },
    Delete { coll: String, filter: Document },
    DeleteMany { coll: String, filter: Document },
}

impl WriteOp {
    fn coll(&self) -> &str {
        match self {
            WriteOp::Insert { coll, .. }
            | WriteOp::Update { coll, .. }
            | WriteOp::Delete { coll, .. }
            | WriteOp::DeleteMany { coll, .. } => coll,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            WriteOp::Insert { .. } => 0,
            WriteOp::Update { .. } => 1,
            WriteOp::Delete { .. } | WriteOp::DeleteMany { .. } => 2,
        }
    }
}

/// Errors from the sink that stop the current operation.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("MongoDB unreachable after retrying for {waited:?}: {last}")]
    Unavailable { waited: Duration, last: String },
    #[error("MongoDB refused the operation: {0}")]
    Permanent(String),
    /// Refused for what was sent (a value that cannot be encoded, a document
    /// too large, a bad value), not for the server's state: a batch refused
    /// this way is split to find the operations at fault.
    #[error("MongoDB refused the operation (error {code}): {message}")]
    Refused { code: i32, message: String },
    #[error("cancelled")]
    Cancelled,
}

impl From<SinkError> for Fatal {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::Cancelled => Fatal::Interrupted,
            other => Fatal::Mongo(other.to_string()),
        }
    }
}

/// A connected MongoDB sink.
#[derive(Clone)]
pub struct Sink {
    client: Client,
    db: Database,
    mode: WriteMode,
    opts: SinkOptions,
    scrub: Scrubber,
    cancel: CancellationToken,
    monitor: diagnose::Monitor,
}

/// Whether an error is worth retrying.
pub fn is_transient(e: &MongoError) -> bool {
    if e.get_custom::<String>().is_some_and(|s| s.starts_with(STALLED) || s.starts_with(FAILOVER)) {
        return true;
    }
    if e.contains_label("RetryableWriteError")
        || e.contains_label("RetryableError")
        || e.contains_label("TransientTransactionError")
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } | ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::BulkWrite(b) => {
            b.write_errors.is_empty() && b.write_concern_errors.iter().any(|w| TRANSIENT_CODES.contains(&w.code))
        }
        _ => false,
    }
}

impl Sink {
    /// Parse the URI and connect, retrying while MongoDB is unreachable
    /// (within `retry_budget`), and pick the write path the server supports.
    pub async fn connect(opts: SinkOptions, cancel: CancellationToken) -> Result<Sink, Fatal> {
        let scrub = Scrubber::for_uri(&opts.uri);
        let shown = redact_uri(&opts.uri);
        let mut co = ClientOptions::parse(&opts.uri).await.map_err(|e| diagnose::bad_uri(&opts.uri, &e))?;
        co.app_name = Some(format!("docmirror/{}", env!("CARGO_PKG_VERSION")));
        let monitor = diagnose::Monitor::default();
        co.sdam_event_handler = Some(monitor.handler());
        if co.server_selection_timeout.is_none() {
            // One attempt never outlasts the retry budget (--mongodb-timeout).
            let budget = opts.retry_budget.unwrap_or(Duration::MAX);
            co.server_selection_timeout = Some(budget.clamp(Duration::from_secs(1), Duration::from_secs(5)));
        }
        if co.connect_timeout.is_none() {
            co.connect_timeout = Some(Duration::from_secs(5));
        }
        let db_name = opts
            .database
            .clone()
            .or_else(|| co.default_database.clone())
            .unwrap_or_else(|| "ml_training_platform".to_string());
        let hosts = co.hosts.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        tracing::debug!(uri = %shown, "Connecting to MongoDB");
        let client = Client::with_options(co)
            .map_err(|e| Fatal::Config(format!("MongoDB client for {shown}: {}", scrub.scrub(&e.to_string()))))?;
        let db = client.database(&db_name);
        let mut sink = Sink { client, db, mode: opts.write_mode, opts, scrub, cancel, monitor };
        let last_error = std::sync::Mutex::new(None);
        let hello = sink
            .retry("connect", || {
                let db = sink.db.clone();
                let last_error = &last_error;
                async move {
                    let r = db.run_command(doc! { "hello": 1 }).await;
                    if let (Err(e), Ok(mut last)) = (&r, last_error.lock()) {
                        *last = Some(e.clone());
                    }
                    r
                }
            })
            .await
            .map_err(|e| {
                let last = last_error.lock().ok().and_then(|mut l| l.take());
                diagnose::connect_failed(e, last.as_ref(), &sink.monitor, &hosts, &sink.scrub)
            })?;
        let wire = hello.get("maxWireVersion").and_then(bson_i64).unwrap_or(0);
        sink.mode = match sink.opts.write_mode {
            // The commands path works on every server and was the faster one
            // in our measurements (BENCHMARKS.md); bulk-write is opt-in.
            WriteMode::Auto | WriteMode::Commands => WriteMode::Commands,
            WriteMode::BulkWrite if wire < 25 => {
                return Err(Fatal::Config(format!(
                    "--write-mode bulk-write needs MongoDB 8.0 or later (wire version 25); {shown} reports wire version {wire}"
                )))
            }
            WriteMode::BulkWrite => WriteMode::BulkWrite,
        };
        tracing::info!(uri = %shown, database = %db_name, max_wire_version = wire, write_mode = ?sink.mode, "Connected to MongoDB");
        Ok(sink)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn collection(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    pub fn write_mode(&self) -> WriteMode {
        self.mode
    }

    /// A quick reachability check (no retries), for health reporting.
    pub async fn ping(&self) -> bool {
        let ok = tokio::time::timeout(Duration::from_secs(5), self.db.run_command(doc! { "ping": 1 }))
            .await
            .is_ok_and(|r| r.is_ok());
        self.opts.metrics.set_mongodb_up(ok);
        ok
    }

    pub fn scrub(&self, text: &str) -> String {
        self.scrub.scrub(text)
    }

    /// Run `op`, retrying transient errors with exponential back-off until the
    /// retry budget is spent. Permanent errors return at once. One attempt
    /// may take at most `--operation-timeout-secs`.
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, MongoError>>,
    {
        self.retry_with(what, true, op).await
    }

    /// [`Sink::retry`], with the attempt's time limit optional: a cursor read
    /// times its own steps instead (see [`Sink::find_map`]).
    async fn retry_with<T, F, Fut>(&self, what: &str, whole: bool, mut op: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, MongoError>>,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        let mut last_error: Option<String> = None;
        loop {
            if self.cancel.is_cancelled() {
                return Err(SinkError::Cancelled);
            }
            // A retry never runs past the budget (the first attempt is the
            // operation itself and gets the full operation timeout). A cursor
            // read times its own steps (`whole` is false).
            let per_attempt = if whole { self.opts.op_timeout } else { Duration::MAX };
            let remaining = self.opts.retry_budget.filter(|_| attempt > 1).map(|b| b.saturating_sub(start.elapsed()));
            let limit = remaining.map_or(per_attempt, |r| r.min(per_attempt));
            let result = tokio::select! {
                r = tokio::time::timeout(limit, op()) => r,
                () = self.cancel.cancelled() => return Err(SinkError::Cancelled),
            };
            let result = match result {
                Ok(r) => r,
                Err(_) => {
                    // Counted as transient: the operation may or may not have been
                    // applied; retried writes are settled by the reconcile core.
                    let waited = start.elapsed();
                    self.opts.metrics.set_mongodb_up(false);
                    self.opts.metrics.record_retry();
                    if self.opts.retry_budget.is_some_and(|b| waited >= b) {
                        let last = last_error.take().unwrap_or_else(|| format!("no answer within {limit:?}"));
                        return Err(SinkError::Unavailable { waited, last });
                    }
                    let timeout_s = self.opts.op_timeout.as_secs();
                    tracing::warn!(operation = what, attempt, timeout_s, "MongoDB did not answer in time, retrying");
                    self.pause(delay).await?;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    attempt += 1;
                    continue;
                }
            };
            match result {
                Ok(v) => {
                    self.opts.metrics.set_mongodb_up(true);
                    if attempt > 1 {
                        tracing::info!(operation = what, attempts = attempt, "MongoDB is reachable again");
                    }
                    return Ok(v);
                }
                Err(e) if is_transient(&e) => {
                    self.opts.metrics.set_mongodb_up(false);
                    self.opts.metrics.record_retry();
                    tracing::debug!(operation = what, attempt, error = %self.scrub(&e.to_string()), "MongoDB error");
                    let msg = self.scrub(&self.monitor.brief(&e));
                    let waited = start.elapsed();
                    if let Some(budget) = self.opts.retry_budget {
                        if waited >= budget {
                            return Err(SinkError::Unavailable { waited, last: msg });
                        }
                    }
                    tracing::warn!(operation = what, attempt, retry_in_ms = delay.as_millis(), error = %msg, "MongoDB not available, retrying");
                    last_error = Some(msg);
                    self.pause(self.opts.retry_budget.map_or(delay, |b| delay.min(b.saturating_sub(waited)))).await?;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    attempt += 1;
                }
                Err(e) => {
                    let message = self.scrub(&e.to_string());
                    return Err(match refused_for_content(&e) {
                        Some(code) => SinkError::Refused { code, message },
                        None => SinkError::Permanent(message),
                    });
                }
            }
        }
    }

    /// Wait between two attempts, unless cancelled.
    async fn pause(&self, wait: Duration) -> Result<(), SinkError> {
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.cancel.cancelled() => Err(SinkError::Cancelled),
        }
    }

    /// Read documents (with a projection) matching `filter`, with retries.
    pub async fn find_all(
        &self,
        coll: &str,
        filter: Document,
        projection: Option<Document>,
    ) -> Result<Vec<Document>, SinkError> {
        self.find_map(coll, filter, projection, Some).await
    }

    /// Read documents matching `filter`, with retries, turning each into a `T`
    /// as it arrives (`None` drops it): a large collection is never held as
    /// documents all at once unless the caller keeps them.
    pub async fn find_map<T, C, F>(
        &self,
        coll: &str,
        filter: Document,
        projection: Option<Document>,
        f: F,
    ) -> Result<C, SinkError>
    where
        C: Default + Extend<T>,
        F: Fn(Document) -> Option<T>,
    {
        let c = self.collection(coll);
        let f = &f;
        // Each step (the query, each batch of results) has its own time limit,
        // not the whole read: a large collection may take longer than
        // `--operation-timeout-secs` to list, and must still be readable.
        let step = self.opts.op_timeout;
        let stalled = move |_| MongoError::custom(format!("{STALLED} {step:?} while reading {coll}"));
        let metrics = &self.opts.metrics;
        self.retry_with("read", false, || {
            let c = c.clone();
            let filter = filter.clone();
            let projection = projection.clone();
            async move {
                let mut find = c.find(filter).batch_size(10_000);
                if let Some(p) = projection {
                    find = find.projection(p);
                }
                let mut cursor = tokio::time::timeout(step, async move { find.await }).await.map_err(stalled)??;
                let mut out = C::default();
                let mut n = 0u64;
                while let Some(d) = tokio::time::timeout(step, cursor.try_next()).await.map_err(stalled)?? {
                    n += 1;
                    out.extend(f(d));
                }
                metrics.record_read(coll, n);
                Ok(out)
            }
        })
        .await
    }

    /// Look up documents by `_id`, in batches of `$in` queries.
    pub async fn find_by_ids(
        &self,
        coll: &str,
        ids: &[String],
        projection: Option<Document>,
    ) -> Result<Vec<Document>, SinkError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(5_000) {
            let filter = doc! { "_id": { "$in": chunk.iter().map(|s| Bson::String(s.clone())).collect::<Vec<_>>() } };
            out.extend(self.find_all(coll, filter, projection.clone()).await?);
        }
        Ok(out)
    }

    /// Apply `ops`, in batches, returning one result per op in order.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<Outcome>, SinkError> {
        let batch = self.opts.batch_size.max(1);
        let mut chunks = Vec::new();
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            chunks.push(ops.by_ref().take(batch).collect::<Vec<_>>());
        }
        let results: Vec<Vec<Outcome>> = futures_util::stream::iter(chunks)
            .map(|chunk| self.write_batch(chunk))
            .buffered(self.opts.concurrency.max(1))
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<Outcome>, SinkError> {
        let started = Instant::now();
        let n = ops.len();
        let out = self.write_isolating(&ops).await;
        if out.is_ok() {
            self.opts.metrics.record_batch(started.elapsed());
            self.opts.metrics.ops_done.fetch_add(crate::summary::count(n), std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(ops = n, elapsed_ms = started.elapsed().as_millis(), "Wrote batch");
        out
    }
}

impl Sink {
    /// Send a batch; if the server (or the driver) refuses it as a whole for
    /// what it holds, split it in halves until the operations at fault stand
    /// alone, write the rest, and report only those as failed: one bad
    /// document never stops the others.
    async fn write_isolating(&self, ops: &[WriteOp]) -> Result<Vec<Outcome>, SinkError> {
        let mut out = Vec::with_capacity(ops.len());
        // Slices still to send, in order (a stack, last first).
        let mut todo: Vec<&[WriteOp]> = vec![ops];
        while let Some(part) = todo.pop() {
            let sent = match self.mode {
                WriteMode::BulkWrite | WriteMode::Auto => self.retry("bulk_write", || self.bulk_write_once(part)).await,
                WriteMode::Commands => self.commands_batch(part).await,
            };
            match sent {
                Ok(results) => out.extend(results),
                Err(SinkError::Refused { code, message }) if part.len() == 1 => {
                    tracing::debug!(code, error = %message, "One operation refused on its own");
                    out.push(Outcome::Failed { code, message });
                }
                Err(SinkError::Refused { code, .. }) => {
                    tracing::debug!(code, ops = part.len(), "Batch refused as a whole; splitting it");
                    let (a, b) = part.split_at(part.len() / 2);
                    todo.push(b);
                    todo.push(a);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// A BSON number as i64, whatever its width.
pub fn bson_i64(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => format!("{f:.0}").parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_write_concern_errors_are_transient_and_others_are_not() {
        for code in [91, 189, 11602] {
            let reply = doc! { "ok": 1, "n": 1, "writeConcernError": { "code": code, "errmsg": "x" } };
            let e = failover_in(&reply).expect("a failover code");
            assert!(is_transient(&e), "code {code}");
        }
        let reply = doc! { "ok": 1, "n": 1, "writeConcernError": { "code": 100, "errmsg": "unsatisfiable" } };
        assert!(failover_in(&reply).is_none(), "a permanent write concern error stays permanent");
        assert!(failover_in(&doc! { "ok": 1, "n": 1 }).is_none());
        assert!(!is_transient(&MongoError::custom("something else".to_string())));
    }
}
