//! The sink: everything that talks to MongoDB. Connecting (with retries and a
//! time budget), reading the mirror's view of a collection, and writing
//! batches of operations, either with `Client::bulk_write` (MongoDB 8.0+) or
//! with the `insert`/`update`/`delete` commands that every server since 3.6
//! understands. The driver retries a write at most once; transient failures
//! (network, failover, server selection) are retried here with back-off.

pub mod indexes;

use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{ClientOptions, WriteModel};
use mongodb::{Client, Collection, Database, Namespace};
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
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

/// What happened to one [`WriteOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    /// Applied. `matched` is the number of documents matched (updates,
    /// deletes), when the server said so per operation.
    Applied { matched: Option<u64> },
    /// A unique index refused it.
    DuplicateKey { message: String },
    /// Refused for another, permanent reason.
    Failed { code: i32, message: String },
}

/// Errors from the sink that stop the current operation.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("MongoDB unreachable after retrying for {waited:?}: {last}")]
    Unavailable { waited: Duration, last: String },
    #[error("MongoDB refused the operation: {0}")]
    Permanent(String),
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
    monitor: crate::diagnose::Monitor,
}

/// Whether an error is worth retrying.
pub fn is_transient(e: &MongoError) -> bool {
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
        let mut co = ClientOptions::parse(&opts.uri).await.map_err(|e| crate::diagnose::bad_uri(&opts.uri, &e))?;
        co.app_name = Some(format!("docmirror/{}", env!("CARGO_PKG_VERSION")));
        let monitor = crate::diagnose::Monitor::default();
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
                crate::diagnose::connect_failed(e, last.as_ref(), &sink.monitor, &hosts, &sink.scrub)
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
    /// retry budget is spent. Permanent errors return at once.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, SinkError>
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
            // operation itself and gets the full operation timeout).
            let remaining = self.opts.retry_budget.filter(|_| attempt > 1).map(|b| b.saturating_sub(start.elapsed()));
            let limit = remaining.map_or(self.opts.op_timeout, |r| r.min(self.opts.op_timeout));
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
                    tracing::warn!(
                        operation = what,
                        attempt,
                        timeout_s = self.opts.op_timeout.as_secs(),
                        "MongoDB did not answer in time, retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.cancel.cancelled() => return Err(SinkError::Cancelled),
                    }
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
                    let pause = self.opts.retry_budget.map_or(delay, |b| delay.min(b.saturating_sub(waited)));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.cancel.cancelled() => return Err(SinkError::Cancelled),
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                    attempt += 1;
                }
                Err(e) => return Err(SinkError::Permanent(self.scrub(&e.to_string()))),
            }
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
        self.retry("read", || {
            let c = c.clone();
            let filter = filter.clone();
            let projection = projection.clone();
            async move {
                let mut find = c.find(filter).batch_size(10_000);
                if let Some(p) = projection {
                    find = find.projection(p);
                }
                let mut cursor = find.await?;
                let mut out = C::default();
                while let Some(d) = cursor.try_next().await? {
                    out.extend(f(d));
                }
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
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<OpResult>, SinkError> {
        let batch = self.opts.batch_size.max(1);
        let mut chunks = Vec::new();
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            chunks.push(ops.by_ref().take(batch).collect::<Vec<_>>());
        }
        let results: Vec<Vec<OpResult>> = futures_util::stream::iter(chunks)
            .map(|chunk| self.write_batch(chunk))
            .buffered(self.opts.concurrency.max(1))
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<OpResult>, SinkError> {
        let started = Instant::now();
        let n = ops.len();
        let out = match self.mode {
            WriteMode::BulkWrite | WriteMode::Auto => self.retry("bulk_write", || self.bulk_write_once(&ops)).await,
            WriteMode::Commands => self.commands_batch(&ops).await,
        };
        if out.is_ok() {
            self.opts.metrics.record_batch(started.elapsed());
            self.opts.metrics.ops_done.fetch_add(crate::reconcile::count(n), std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(ops = n, elapsed_ms = started.elapsed().as_millis(), "Wrote batch");
        out
    }

    async fn bulk_write_once(&self, ops: &[WriteOp]) -> Result<Vec<OpResult>, MongoError> {
        let db = self.db.name().to_string();
        let models: Vec<WriteModel> = ops
            .iter()
            .map(|op| {
                let ns = Namespace::new(db.clone(), op.coll().to_string());
                match op {
                    WriteOp::Insert { doc, .. } => {
                        mongodb::options::InsertOneModel::builder().namespace(ns).document(doc.clone()).build().into()
                    }
                    WriteOp::Update { filter, update, upsert, .. } => mongodb::options::UpdateOneModel::builder()
                        .namespace(ns)
                        .filter(filter.clone())
                        .update(update.clone())
                        .upsert(*upsert)
                        .build()
                        .into(),
                    WriteOp::Delete { filter, .. } => {
                        mongodb::options::DeleteOneModel::builder().namespace(ns).filter(filter.clone()).build().into()
                    }
                    WriteOp::DeleteMany { filter, .. } => {
                        mongodb::options::DeleteManyModel::builder().namespace(ns).filter(filter.clone()).build().into()
                    }
                }
            })
            .collect();
        match self.client.bulk_write(models).ordered(false).verbose_results().await {
            Ok(r) => Ok(ops
                .iter()
                .enumerate()
                .map(|(i, op)| match op {
                    WriteOp::Insert { .. } => OpResult::Applied { matched: None },
                    WriteOp::Update { .. } => {
                        OpResult::Applied { matched: r.update_results.get(&i).map(|u| u.matched_count) }
                    }
                    WriteOp::Delete { .. } | WriteOp::DeleteMany { .. } => {
                        OpResult::Applied { matched: r.delete_results.get(&i).map(|d| d.deleted_count) }
                    }
                })
                .collect()),
            Err(e) => {
                let ErrorKind::BulkWrite(bw) = e.kind.as_ref() else {
                    return Err(e);
                };
                // A failure of the whole batch (network, failover) is retried as a
                // whole; per-operation errors are results.
                if std::error::Error::source(&e).is_some() && bw.write_errors.is_empty() {
                    return Err(e);
                }
                if !bw.write_concern_errors.is_empty() && bw.write_errors.is_empty() {
                    return Err(e);
                }
                let verbose = match &bw.partial_result {
                    Some(mongodb::error::PartialBulkWriteResult::Verbose(v)) => Some(v),
                    _ => None,
                };
                Ok(ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| {
                        if let Some(we) = bw.write_errors.get(&i) {
                            return classify(we.code, &self.scrub(&we.message));
                        }
                        let matched = verbose.and_then(|v| match op {
                            WriteOp::Insert { .. } => None,
                            WriteOp::Update { .. } => v.update_results.get(&i).map(|u| u.matched_count),
                            WriteOp::Delete { .. } | WriteOp::DeleteMany { .. } => {
                                v.delete_results.get(&i).map(|d| d.deleted_count)
                            }
                        });
                        OpResult::Applied { matched }
                    })
                    .collect())
            }
        }
    }

    /// The pre-8.0 path: consecutive ops of one kind on one collection become
    /// one `insert`/`update`/`delete` command, kept under the 16 MiB limit.
    async fn commands_batch(&self, ops: &[WriteOp]) -> Result<Vec<OpResult>, SinkError> {
        const MAX_COMMAND_BYTES: usize = 12 * 1024 * 1024;
        let mut results = Vec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < ops.len()
                && ops[end].kind() == ops[start].kind()
                && ops[end].coll() == ops[start].coll()
                && (end == start || bytes < MAX_COMMAND_BYTES)
            {
                bytes += op_size(&ops[end]);
                end += 1;
            }
            let group = &ops[start..end];
            let cmd = command_for(group);
            let reply = self
                .retry("write command", || {
                    let db = self.db.clone();
                    let cmd = cmd.clone();
                    async move { db.run_command(cmd).await }
                })
                .await?;
            results.extend(self.command_results(group, &reply)?);
            start = end;
        }
        Ok(results)
    }

    fn command_results(&self, group: &[WriteOp], reply: &Document) -> Result<Vec<OpResult>, SinkError> {
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(SinkError::Permanent(format!("write concern error: {}", self.scrub(&wce.to_string()))));
        }
        let mut out: Vec<OpResult> = vec![OpResult::Applied { matched: None }; group.len()];
        let mut failed = 0u64;
        if let Ok(errors) = reply.get_array("writeErrors") {
            for e in errors.iter().filter_map(Bson::as_document) {
                let idx = e.get("index").and_then(bson_i64).and_then(|i| usize::try_from(i).ok());
                let code = e.get("code").and_then(bson_i64).and_then(|c| i32::try_from(c).ok()).unwrap_or(0);
                let msg = self.scrub(e.get_str("errmsg").unwrap_or(""));
                if let Some(slot) = idx.and_then(|i| out.get_mut(i)) {
                    *slot = classify(code, &msg);
                    failed += 1;
                }
            }
        }
        // The commands report one count for the whole group. When every op
        // that did not fail matched, each matched one document; otherwise the
        // caller checks the documents themselves.
        let n = reply.get("n").and_then(bson_i64).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let ok_ops = u64::try_from(group.len()).unwrap_or(u64::MAX) - failed;
        if !matches!(group.first(), Some(WriteOp::Insert { .. })) && n == ok_ops {
            for slot in out.iter_mut() {
                if let OpResult::Applied { matched } = slot {
                    *matched = Some(1);
                }
            }
        }
        Ok(out)
    }
}

fn classify(code: i32, message: &str) -> OpResult {
    if code == DUPLICATE_KEY {
        OpResult::DuplicateKey { message: message.to_string() }
    } else {
        OpResult::Failed { code, message: message.to_string() }
    }
}

fn op_size(op: &WriteOp) -> usize {
    let d = match op {
        WriteOp::Insert { doc, .. } => doc,
        WriteOp::Update { update, .. } => update,
        WriteOp::Delete { filter, .. } | WriteOp::DeleteMany { filter, .. } => filter,
    };
    bson::to_vec(d).map(|v| v.len()).unwrap_or(1024) + 64
}

fn command_for(group: &[WriteOp]) -> Document {
    let coll = group.first().map(WriteOp::coll).unwrap_or_default().to_string();
    match group.first() {
        Some(WriteOp::Insert { .. }) => doc! {
            "insert": coll,
            "documents": group.iter().filter_map(|op| match op { WriteOp::Insert { doc, .. } => Some(Bson::Document(doc.clone())), _ => None }).collect::<Vec<_>>(),
            "ordered": false,
        },
        Some(WriteOp::Update { .. }) => doc! {
            "update": coll,
            "updates": group.iter().filter_map(|op| match op {
                WriteOp::Update { filter, update, upsert, .. } => Some(Bson::Document(doc! { "q": filter.clone(), "u": update.clone(), "upsert": *upsert, "multi": false })),
                _ => None,
            }).collect::<Vec<_>>(),
            "ordered": false,
        },
        _ => doc! {
            "delete": coll,
            "deletes": group.iter().filter_map(|op| match op {
                WriteOp::Delete { filter, .. } => Some(Bson::Document(doc! { "q": filter.clone(), "limit": 1 })),
                WriteOp::DeleteMany { filter, .. } => Some(Bson::Document(doc! { "q": filter.clone(), "limit": 0 })),
                _ => None,
            }).collect::<Vec<_>>(),
            "ordered": false,
        },
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
