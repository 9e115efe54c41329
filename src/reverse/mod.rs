//! `reverse`: after the cutover, MongoDB is the truth; this daemon keeps the
//! platform's file layout in a folder of its own current from MongoDB's
//! change stream, so the platform can go back to its files at any moment.
//!
//! At a first start (or when the stored resume token no longer resumes) it
//! opens the change stream, then compares every file with MongoDB and
//! rewrites what differs, then follows the stream from the token taken when
//! it opened: nothing written in between is missed. Changes are collected as
//! a set of records and flushed at most every `--debounce-ms`; after each
//! flush the stream's resume token is stored in `mirror_state`, and a restart
//! (even after `kill -9`) resumes from it without comparing everything again.
//! Without change streams it polls (`--poll-interval-ms`) or refuses.

pub mod files;
pub mod record;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bson::{doc, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::{Error as MongoError, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::export::Exported;
use crate::layout::Layout;
use crate::sink::{Sink, SinkOptions};
use files::{Dirty, Files};
use record::Totals;

/// How reverse runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder it writes: `DIR/data/users.json`, `DIR/artifacts/jobs/...`.
    pub out: PathBuf,
    /// Changes are written at most this often (and at the latest this long after they arrive).
    pub debounce: Duration,
    /// Compare everything this often instead of following a change stream.
    pub poll_interval: Option<Duration>,
    /// Run although no cutover is recorded (a rehearsal).
    pub before_cutover: bool,
    /// Compare every file at start even when a stored token resumes.
    pub full: bool,
    /// The folders a forward mirror reads (from the flags and the config file).
    pub forward_roots: Vec<PathBuf>,
    /// How long SIGTERM waits for the last flush.
    pub shutdown_timeout: Duration,
}

/// The server's "no change streams here" (a standalone server).
const NO_CHANGE_STREAMS: i32 = 40573;
/// A heartbeat (and an idle token) is stored this often.
const BEAT: Duration = Duration::from_secs(5);
/// How much longer than its await time a change stream may take to answer.
const STALLED: Duration = Duration::from_secs(10);

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

/// Run until `cancel` fires (or a refusal, or a failure to write the folder).
pub async fn run(
    layout: Layout,
    sink_opts: SinkOptions,
    opts: Options,
    cancel: CancellationToken,
) -> Result<(), Fatal> {
    let out = resolved(&opts.out);
    // Writes stop only after the last flush had its chance (SIGTERM).
    let hard_cancel = CancellationToken::new();
    let sink = tokio::select! {
        s = Sink::connect(sink_opts, hard_cancel.clone()) => s?,
        () = cancel.cancelled() => return Ok(()),
    };
    refuse_forward_folders(&sink, &out, &opts.forward_roots).await?;
    refuse_before_cutover(&sink, opts.before_cutover).await?;
    let out = prepare_out(&out)?;
    let mut files = Files::new(layout, out.clone());
    let mut follower = match opts.poll_interval {
        Some(every) => return poll(&sink, &mut files, every, &cancel).await,
        None => Follower::start(&sink, &mut files, &opts, &cancel).await?,
    };
    let result = match follower.follow(&sink, &mut files, &cancel).await {
        Err(Fatal::Interrupted) => Ok(()),
        r => r,
    };
    // Shutdown: flush what is pending and store the token, within the time given.
    let last = async {
        if result.is_ok() {
            follower.flush(&sink, &mut files).await?;
        }
        record::stopped(&sink).await.map_err(Fatal::from)
    };
    match tokio::time::timeout(opts.shutdown_timeout, last).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Cannot flush or record the stop; the next start resumes from the last stored token")
        }
        Err(_) => {
            tracing::warn!("The last flush did not finish in time; the next start resumes from the last stored token")
        }
    }
    hard_cancel.cancel();
    let t = follower.totals;
    tracing::info!(flushes = t.flushes, files_written = t.written, files_removed = t.removed, "Stopped");
    result
}

/// The output folder, made absolute (and created).
fn prepare_out(out: &Path) -> Result<PathBuf, Fatal> {
    std::fs::create_dir_all(out).map_err(|e| Fatal::Source(format!("cannot create --out {}: {e}", out.display())))?;
    std::fs::canonicalize(out).map_err(|e| Fatal::Source(format!("cannot resolve --out {}: {e}", out.display())))
}

/// A path made absolute, with symbolic links resolved as far as it exists
/// (nothing is created: a refused folder is left as it was).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// reverse never writes where a forward mirror reads: not the folders named
/// to it (flags, environment, config file), nor those a watch on this host
/// recorded in `mirror_state`.
async fn refuse_forward_folders(sink: &Sink, out: &Path, named: &[PathBuf]) -> Result<(), Fatal> {
    let mut roots: Vec<(PathBuf, &str)> = named.iter().map(|p| (resolved(p), "--data-dir/--artifacts-dir")).collect();
    if let Some(state) = crate::state::read(sink).await? {
        let here = crate::state::hostname();
        if let Some(w) = state.get_document("watch").ok().filter(|w| w.get_str("host") == Ok(here.as_str())) {
            for k in ["data_dir", "artifacts_dir"] {
                if let Ok(p) = w.get_str(k) {
                    roots.push((resolved(Path::new(p)), "a docmirror watch on this host"));
                }
            }
        }
    }
    for (root, by) in roots {
        if out.starts_with(&root) || root.starts_with(out) {
            return Err(Fatal::Config(format!(
                "--out {} overlaps {}, a folder the forward mirror reads (named by {by}): reverse must never write \
                 where watch reads, or every change would go round in a loop. Give reverse a folder of its own",
                out.display(),
                root.display()
            )));
        }
    }
    Ok(())
}

/// Before a cutover the files are the truth: writing MongoDB over them is a rehearsal only.
async fn refuse_before_cutover(sink: &Sink, allowed: bool) -> Result<(), Fatal> {
    let state = crate::state::read(sink).await?;
    if allowed || state.as_ref().and_then(crate::state::cutover_at).is_some() {
        return Ok(());
    }
    Err(Fatal::Config(
        "no cutover is recorded in this database: until `docmirror cutover` the files are the truth and reverse has \
         nothing to give back. Run cutover first, or pass --before-cutover to rehearse into a folder of its own"
            .into(),
    ))
}

/// Polling, for a server without change streams: compare everything every `every`.
async fn poll(sink: &Sink, files: &mut Files, every: Duration, cancel: &CancellationToken) -> Result<(), Fatal> {
    tracing::info!(interval_ms = every.as_millis(), out = %files.out.display(), "Polling MongoDB (a full compare each time)");
    record::drop_token(sink).await?;
    let mut totals = Totals::default();
    loop {
        let done = files.full(sink).await?;
        log_flush("Compared every file with MongoDB", &done);
        totals.add(&done);
        record::beat(sink, &files.out, "poll", None, totals, true).await?;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => break,
        }
    }
    record::stopped(sink).await?;
    tracing::info!(flushes = totals.flushes, files_written = totals.written, files_removed = totals.removed, "Stopped");
    Ok(())
}

fn log_flush(message: &str, e: &Exported) {
    tracing::info!(records = e.records, written = e.written, unchanged = e.unchanged, removed = e.removed, "{message}");
}

/// The change-stream follower.
struct Follower {
    stream: Stream,
    dirty: Dirty,
    debounce: Duration,
    totals: Totals,
    last_beat: tokio::time::Instant,
}

impl Follower {
    /// Open the stream (from the stored token if it still resumes), and
    /// compare everything first when there was no token to resume from.
    async fn start(
        sink: &Sink,
        files: &mut Files,
        opts: &Options,
        cancel: &CancellationToken,
    ) -> Result<Follower, Fatal> {
        let wait = opts.debounce.clamp(Duration::from_millis(10), Duration::from_secs(1));
        let stored = record::load_token(sink, &files.out).await?;
        let (stream, compare) = match stored {
            Some(token) => match open(sink, &files.layout, wait, Some(token), cancel).await {
                Ok(s) => {
                    tracing::info!(out = %files.out.display(), "Resuming from the stored resume token");
                    (s, opts.full)
                }
                Err(Opened::Refused(why)) => {
                    tracing::warn!(
                        "The stored resume token no longer resumes ({why}): comparing every file with MongoDB"
                    );
                    (open(sink, &files.layout, wait, None, cancel).await.map_err(Opened::fatal)?, true)
                }
                Err(e) => return Err(e.fatal()),
            },
            None => {
                let s = open(sink, &files.layout, wait, None, cancel).await.map_err(Opened::fatal)?;
                tracing::info!(out = %files.out.display(), "No stored resume token for this folder: comparing every file with MongoDB");
                (s, true)
            }
        };
        let mut f = Follower {
            stream,
            dirty: Dirty::default(),
            debounce: opts.debounce,
            totals: Totals::default(),
            last_beat: tokio::time::Instant::now(),
        };
        if compare {
            // The token is the one taken when the stream opened, before the compare.
            f.dirty.all(&files.layout);
            // SIGTERM does not wait for a whole compare: without a stored token, the
            // next start compares again.
            let done = tokio::select! {
                r = f.flush(sink, files) => r?,
                () = cancel.cancelled() => return Err(Fatal::Interrupted),
            };
            log_flush("Compared every file with MongoDB", &done);
        } else {
            record::beat(sink, &files.out, "change-stream", None, f.totals, false).await?;
        }
        tracing::info!("Following MongoDB's change stream");
        Ok(f)
    }

    /// Follow the stream until `cancel`; flush each debounce period.
    async fn follow(&mut self, sink: &Sink, files: &mut Files, cancel: &CancellationToken) -> Result<(), Fatal> {
        loop {
            // A flush or a heartbeat waits for MongoDB while it is away; SIGTERM
            // does not (what is pending stays pending for the last flush).
            if self.dirty.since.is_some_and(|t| t.elapsed() >= self.debounce) {
                tokio::select! {
                    r = self.flush(sink, files) => { r?; }
                    () = cancel.cancelled() => return Ok(()),
                }
            }
            if self.last_beat.elapsed() >= BEAT {
                // Idle: the token has moved on (the server's post-batch token), and
                // with nothing pending it covers everything: store it.
                let token = self.dirty.is_empty().then(|| self.stream.resume_token()).flatten();
                tokio::select! {
                    r = record::beat(sink, &files.out, "change-stream", token.as_ref(), self.totals, false) => r?,
                    () = cancel.cancelled() => return Ok(()),
                }
                self.last_beat = tokio::time::Instant::now();
            }
            // A getMore answers within the stream's await time; one that does not
            // (a connection to a server that went away without closing it) is
            // given up, and the stream opened again from its last token.
            let limit = self.debounce.clamp(Duration::from_millis(10), Duration::from_secs(1)) + STALLED;
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                n = tokio::time::timeout(limit, self.stream.next_if_any()) => n,
            };
            let Ok(next) = next else {
                tracing::warn!(
                    waited_s = limit.as_secs(),
                    "The change stream did not answer; opening it again from its last token"
                );
                let token = self.stream.resume_token();
                self.reopen(sink, files, token, cancel).await?;
                continue;
            };
            match next {
                Ok(Some(event)) => {
                    if self.note(&files.layout, event) {
                        self.reopen(sink, files, None, cancel).await?;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let why = sink.scrub(&e.to_string());
                    tracing::warn!(error = %why, "The change stream failed; resuming from its last token");
                    pause(Duration::from_secs(1), cancel).await?;
                    let token = self.stream.resume_token();
                    self.reopen(sink, files, token, cancel).await?;
                }
            }
        }
    }

    /// Open the stream again from `token`; if that no longer resumes (or
    /// there is none), from now, with everything marked for a compare.
    async fn reopen(
        &mut self,
        sink: &Sink,
        files: &Files,
        token: Option<ResumeToken>,
        cancel: &CancellationToken,
    ) -> Result<(), Fatal> {
        let wait = self.debounce.clamp(Duration::from_millis(10), Duration::from_secs(1));
        if token.is_some() {
            match open(sink, &files.layout, wait, token, cancel).await {
                Ok(s) => {
                    self.stream = s;
                    return Ok(());
                }
                Err(Opened::Refused(why)) => {
                    tracing::warn!("The resume token no longer resumes ({why}): comparing every file with MongoDB");
                }
                Err(e) => return Err(e.fatal()),
            }
        }
        self.stream = open(sink, &files.layout, wait, None, cancel).await.map_err(Opened::fatal)?;
        self.dirty.all(&files.layout);
        Ok(())
    }

    /// Note one event; `true` when the stream ended (invalidated) and must be opened again.
    fn note(&mut self, layout: &Layout, event: ChangeStreamEvent<Document>) -> bool {
        let coll = event.ns.as_ref().and_then(|n| n.coll.clone());
        let sources: Vec<usize> = layout
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| coll.as_deref() == Some(s.collection.as_str()))
            .map(|(i, _)| i)
            .collect();
        let id = event.document_key.as_ref().and_then(|k| k.get("_id")).cloned();
        match (&event.operation_type, id) {
            (
                OperationType::Insert | OperationType::Update | OperationType::Replace | OperationType::Delete,
                Some(id),
            ) => {
                for i in sources {
                    self.dirty.id(layout, i, id.clone());
                }
            }
            (OperationType::DropDatabase, _) => self.dirty.all(layout),
            (OperationType::Invalidate, _) => {
                tracing::warn!("The change stream was invalidated (the database was dropped?): comparing every file");
                self.dirty.all(layout);
                return true;
            }
            // A drop, a rename, or anything else on a mirrored collection: compare it whole.
            _ => {
                let to = event.to.as_ref().and_then(|n| n.coll.clone());
                for (i, s) in layout.sources.iter().enumerate() {
                    if sources.contains(&i) || to.as_deref() == Some(s.collection.as_str()) {
                        self.dirty.whole(i);
                    }
                }
            }
        }
        false
    }

    /// Write what changed, then store the token that covers it. What is
    /// pending stays pending until the files are written (a flush cut short
    /// is done again).
    async fn flush(&mut self, sink: &Sink, files: &mut Files) -> Result<Exported, Fatal> {
        if self.dirty.is_empty() {
            return Ok(Exported::default());
        }
        // Taken before MongoDB is read: every event up to it is in `dirty`.
        let token = self.stream.resume_token();
        let done = files.flush(sink, &self.dirty).await?;
        self.dirty = Dirty::default();
        tracing::debug!(records = done.records, written = done.written, removed = done.removed, "Flushed");
        self.totals.add(&done);
        record::beat(sink, &files.out, "change-stream", token.as_ref(), self.totals, true).await?;
        self.last_beat = tokio::time::Instant::now();
        Ok(done)
    }
}

/// Why a change stream could not be opened.
enum Opened {
    /// The server has none (a standalone server).
    NoStreams(String),
    /// The server refused it (with a token: the token no longer resumes).
    Refused(String),
    Interrupted,
}

impl Opened {
    fn fatal(self) -> Fatal {
        match self {
            Opened::NoStreams(why) => Fatal::Unsupported(format!(
                "reverse follows MongoDB's change stream, and this server has none ({why}): run MongoDB as a replica \
                 set (a single node is enough), or pass --poll-interval-ms N to compare everything every N ms instead"
            )),
            Opened::Refused(why) => Fatal::Mongo(format!("cannot open the change stream: {why}")),
            Opened::Interrupted => Fatal::Interrupted,
        }
    }
}

/// Open a change stream on the database, for the layout's collections,
/// retrying while MongoDB is unreachable.
async fn open(
    sink: &Sink,
    layout: &Layout,
    wait: Duration,
    token: Option<ResumeToken>,
    cancel: &CancellationToken,
) -> Result<Stream, Opened> {
    let colls: Vec<&str> = layout.sources.iter().map(|s| s.collection.as_str()).collect();
    let filter = doc! { "$match": { "$or": [
        { "ns.coll": { "$in": colls } },
        { "operationType": { "$in": ["dropDatabase", "invalidate"] } },
    ] } };
    let mut delay = Duration::from_millis(100);
    loop {
        let r =
            sink.database().watch().pipeline([filter.clone()]).max_await_time(wait).resume_after(token.clone()).await;
        match r {
            Ok(s) => return Ok(s),
            Err(e) if code(&e) == Some(NO_CHANGE_STREAMS) => return Err(Opened::NoStreams(sink.scrub(&e.to_string()))),
            Err(e) if crate::sink::is_transient(&e) => {
                tracing::warn!(error = %sink.scrub(&e.to_string()), retry_in_ms = delay.as_millis(), "Cannot open the change stream, retrying");
                pause(delay, cancel).await.map_err(|_| Opened::Interrupted)?;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(Opened::Refused(sink.scrub(&e.to_string()))),
        }
    }
}

fn code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

async fn pause(d: Duration, cancel: &CancellationToken) -> Result<(), Fatal> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = cancel.cancelled() => Err(Fatal::Interrupted),
    }
}
