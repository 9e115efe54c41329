//! `watch`: the long-running mirror. Reconcile everything once, then
//! reconcile what changed. File events are hints, the files are the truth:
//! every hint leads to reading the file again, and anything that may have
//! been missed (a dropped event queue, a folder that appeared, a watch that
//! could not be set) leads to a rescan, plus a periodic full rescan as the
//! last safety net.
//!
//! The loop owns all state; the notify callback (in [`events`]) only hands
//! events over without blocking, and the writes run in a task of their own so
//! events keep being coalesced while MongoDB is slow or away.

mod changes;
pub mod events;
mod mirror;
mod mongo;
pub mod poll;
pub mod schedule;
pub mod systemd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::reconcile::memo::Memory;
use crate::reconcile::{Engine, RunOptions, Scope};
use crate::source::{SourceFile, Tree};
use crate::summary::Summary;
use changes::ChangeSource;
pub use mirror::Mirror;
use schedule::{Batch, Schedule, Timing};

/// Something that may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Hint {
    /// One file of a source (created, changed or removed).
    File(SourceFile),
    /// One file that a writer just closed or renamed into place: complete, read it now.
    FileDone(SourceFile),
    /// Every file of a source (a folder appeared, vanished or was moved).
    Source(usize),
    /// Everything, and why.
    Full(String),
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet period per file before it is read.
    pub debounce: Duration,
    /// A file that never goes quiet is read at least this often.
    pub max_delay: Duration,
    /// Poll instead of using file events (NFS, CIFS, some container mounts).
    pub poll_interval: Option<Duration>,
    /// Full rescan period.
    pub rescan_interval: Duration,
    /// How long SIGTERM waits for writes in flight.
    pub shutdown_timeout: Duration,
    /// How many times an unparsable file is read again before it is reported.
    pub parse_retries: u32,
    /// Hints that may wait for the loop; beyond that, a full rescan.
    pub queue_capacity: usize,
    /// Run even after a recorded cutover (`--after-cutover`).
    pub after_cutover: bool,
    /// Reconcile everything at start, whatever the checkpoint proves (`--full`).
    pub full: bool,
    /// How long a document may differ from its file record before it is drift.
    pub drift_grace: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            poll_interval: None,
            rescan_interval: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(10),
            parse_retries: 3,
            queue_capacity: events::CHANNEL_CAPACITY,
            after_cutover: false,
            full: false,
            drift_grace: Duration::from_secs(30),
        }
    }
}

/// Hooks for the service manager (systemd readiness, status lines).
pub trait Lifecycle: Send {
    /// The first full reconcile is done and changes are being followed.
    fn ready(&mut self, _summary: &Summary) {}
    /// A change batch was applied (or the loop is idle): called from the main loop.
    fn tick(&mut self, _totals: &Summary) {}
    fn stopping(&mut self) {}
}

/// No service manager.
pub struct NoLifecycle;
impl Lifecycle for NoLifecycle {}

/// The result of one reconcile task.
type Outcome = Result<Summary, Fatal>;

/// Run the daemon until `cancel` fires. Returns the totals of all changes.
/// `connect` reaches the target (MongoDB or PostgreSQL), given the token that
/// stops its retries.
pub async fn run<T, C, F>(
    engine: Arc<Engine>,
    connect: C,
    opts: WatchOptions,
    cancel: CancellationToken,
    lifecycle: &mut dyn Lifecycle,
) -> Result<Summary, Fatal>
where
    T: Mirror,
    C: FnOnce(CancellationToken) -> F,
    F: std::future::Future<Output = Result<T, Fatal>>,
{
    // SIGUSR1 releases deletes held by the mass-delete guard (installed first:
    // its default action would end the process).
    let mut release = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let (tx, mut rx) = mpsc::channel::<Hint>(opts.queue_capacity.max(1));
    let overflow = Arc::new(AtomicBool::new(false));
    let tree = engine.tree();
    // Watches go in before the first scan, so nothing slips through the gap.
    let mut source = ChangeSource::start(&tree, &opts, tx.clone(), overflow.clone())?;
    // Writes stop only after the in-flight batch had its chance to finish.
    let hard_cancel = CancellationToken::new();
    let sink = tokio::select! {
        s = connect(hard_cancel.clone()) => s?,
        () = cancel.cancelled() => return Ok(stopped(Summary::default())),
    };
    crate::cutover::refuse_after_cutover(&sink, opts.after_cutover).await?;
    tokio::select! {
        r = sink.prepare(&engine) => r?,
        () = cancel.cancelled() => return Ok(stopped(Summary::default())),
    }
    let timing = Timing { debounce: opts.debounce, max_delay: opts.max_delay, parse_retries: opts.parse_retries };
    let mut daemon = Daemon {
        engine,
        sink,
        memory: Arc::new(Memory::default()),
        opts,
        hard_cancel,
        stop: cancel.clone(),
        schedule: Schedule::new(timing),
        totals: Summary::default(),
        in_flight: None,
        batch: None,
        state_dirty: Vec::new(),
        batch_started: None,
        release_armed: false,
        releasing: false,
        full_started: std::time::Instant::now(),
        ticks: 0,
    };
    if daemon.initial(&cancel, lifecycle).await? {
        let (e, m, grace) = (&daemon.engine, &daemon.memory, daemon.opts.drift_grace);
        let _follower = daemon.sink.follow(e, m, grace, tx.clone(), &cancel).await;
        let inputs = Inputs { hints: &mut rx, overflow: &overflow, release: release.as_mut() };
        daemon.follow(inputs, &mut source, &tree, &cancel, lifecycle).await;
    }
    // Shutdown: stop watching, give the writes in flight a bounded time, then stop them.
    lifecycle.stopping();
    drop(source);
    Ok(daemon.stop().await)
}

/// The running daemon: everything the main loop owns.
struct Daemon<T: Mirror> {
    engine: Arc<Engine>,
    sink: T,
    /// What watch remembers between reconciles (see `reconcile::memo`).
    memory: Arc<Memory>,
    opts: WatchOptions,
    /// Cancels writes; fired only once the batch in flight had its chance to finish.
    hard_cancel: CancellationToken,
    /// Shutdown (SIGTERM): reconciles stop at their next chunk.
    stop: CancellationToken,
    schedule: Schedule,
    totals: Summary,
    in_flight: Option<JoinHandle<Outcome>>,
    /// The batch in flight, to hand back if it fails.
    batch: Option<Batch>,
    /// Collections changed since `mirror_state` was last updated, with when.
    state_dirty: Vec<(String, bson::DateTime)>,
    /// When the batch in flight started (for the lag `status` shows).
    batch_started: Option<Instant>,
    /// SIGUSR1 came: the next full reconcile applies held deletes.
    release_armed: bool,
    /// The full reconcile in flight applies held deletes.
    releasing: bool,
    full_started: std::time::Instant,
    ticks: u64,
}

/// What the main loop listens to besides time.
struct Inputs<'a> {
    hints: &'a mut mpsc::Receiver<Hint>,
    overflow: &'a AtomicBool,
    /// SIGUSR1, where it could be installed.
    release: Option<&'a mut tokio::signal::unix::Signal>,
}

/// What the main loop does after a batch finished.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

impl<T: Mirror> Daemon<T> {
    /// The first full reconcile; `false` if stopped before it finished.
    async fn initial(&mut self, cancel: &CancellationToken, lifecycle: &mut dyn Lifecycle) -> Result<bool, Fatal> {
        let started = std::time::Instant::now();
        let opts = RunOptions {
            dry_run: false,
            log_all_rejects: true,
            defer_bad_files: false,
            log_changes: false,
            texts: false,
        };
        // `cancel` also tells the reconcile to stop at its next chunk (or
        // bcrypt item); the writes in flight get --shutdown-timeout-secs.
        let first = {
            let run = self.sink.start(&self.engine, Some(&self.memory), self.opts.full, opts, cancel);
            tokio::pin!(run);
            tokio::select! {
                r = &mut run => r?,
                () = cancel.cancelled() => {
                    if tokio::time::timeout(self.opts.shutdown_timeout, &mut run).await.is_err() {
                        tracing::warn!("Writes in flight did not finish in time; they are redone on the next start");
                        self.hard_cancel.cancel();
                    }
                    return Ok(false);
                }
            }
        };
        self.sink.started(&self.memory).await;
        self.engine.metrics.set_ready();
        self.record_state(StateUpdate::Full(first.clone(), started.elapsed()));
        log_summary("Initial reconcile done; watching for changes", &first);
        crate::memory::release_freed();
        self.totals.add(&first);
        lifecycle.ready(&first);
        Ok(true)
    }

    /// Follow changes until `cancel` fires (or the hints stop).
    async fn follow(
        &mut self,
        inputs: Inputs<'_>,
        source: &mut ChangeSource,
        tree: &Tree,
        cancel: &CancellationToken,
        lifecycle: &mut dyn Lifecycle,
    ) {
        let Inputs { hints: rx, overflow, mut release } = inputs;
        let mut next_rescan = Instant::now() + self.opts.rescan_interval;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let idle = self.in_flight.is_none();
            let next = self.schedule.next_due().filter(|_| idle);
            let retry = self.schedule.retry_after().filter(|_| idle);
            tokio::select! {
                () = cancel.cancelled() => break,
                hint = rx.recv() => {
                    let Some(hint) = hint else { break };
                    let now = Instant::now();
                    self.schedule.hint(hint, now);
                    while let Ok(h) = rx.try_recv() {
                        self.schedule.hint(h, now);
                    }
                }
                () = sleep_until_opt(next.max(retry)) => {}
                done = join_opt(&mut self.in_flight) => {
                    if self.finished(done, lifecycle) == Flow::Stop {
                        break;
                    }
                }
                () = tokio::time::sleep_until(next_rescan) => {
                    self.schedule.request_full("periodic rescan");
                    next_rescan = Instant::now() + self.opts.rescan_interval;
                }
                () = signalled(&mut release) => {
                    tracing::warn!("SIGUSR1: deletes held back by the mass-delete guard are released; rescanning");
                    self.memory.release_held.store(true, Ordering::Relaxed);
                    self.release_armed = true;
                    self.schedule.request_full("held deletes released (SIGUSR1)");
                }
                _ = tick.tick() => {
                    self.tick(lifecycle);
                    // A folder replaced under its name (a rename over it, a symlink
                    // swap) may give no event on the name: look once a second.
                    if source.replaced() {
                        self.schedule.request_full("a watched folder was replaced");
                    }
                }
            }
            if overflow.swap(false, Ordering::AcqRel) {
                self.schedule.request_full("file events were lost (event queue overflow)");
            }
            if self.schedule.full_requested() {
                source.refresh(tree);
            }
            if self.in_flight.is_none() {
                if let Some(batch) = self.schedule.next_batch(Instant::now()) {
                    self.start(batch);
                }
            }
        }
    }

    /// Start a batch in a task of its own, so hints keep coming in meanwhile.
    fn start(&mut self, batch: Batch) {
        let (scope, log_changes, defer_bad_files) = match &batch {
            Batch::Full { why, .. } => {
                if why == "periodic rescan" {
                    tracing::debug!(reason = %why, "Full rescan");
                } else {
                    tracing::warn!(reason = %why, "Full rescan");
                }
                self.engine.metrics.record_rescan();
                self.full_started = std::time::Instant::now();
                // A release applies to the first full reconcile that starts after it.
                self.releasing = std::mem::take(&mut self.release_armed);
                (Scope::Full, false, false)
            }
            Batch::Sources(specs) => {
                self.engine.metrics.record_rescan();
                let names: Vec<&str> = specs.iter().map(|s| self.engine.layout.sources[*s].name.as_str()).collect();
                tracing::info!(sources = ?names, "Folder changed; rescanning its sources");
                (Scope::Sources(specs.clone()), true, false)
            }
            Batch::Files { files, defer_bad_files } => {
                (Scope::Files(files.iter().map(|(f, _)| f.clone()).collect()), true, *defer_bad_files)
            }
        };
        let opts = RunOptions { dry_run: false, log_all_rejects: false, defer_bad_files, log_changes, texts: false };
        let (engine, sink, memory) = (self.engine.clone(), self.sink.clone(), self.memory.clone());
        // The run stops at its next chunk on SIGTERM; `stop` gives its writes in flight their time.
        let cancel = self.stop.clone();
        self.in_flight =
            Some(tokio::spawn(async move { sink.reconcile_scope(&engine, &memory, scope, opts, &cancel).await }));
        self.batch = Some(batch);
        self.batch_started = Some(Instant::now());
    }

    /// A batch finished: count it, or hand its work back after a failure.
    fn finished(&mut self, done: Result<Outcome, tokio::task::JoinError>, lifecycle: &mut dyn Lifecycle) -> Flow {
        self.in_flight = None;
        self.batch_started = None;
        let batch = self.batch.take();
        crate::memory::release_freed();
        let now = Instant::now();
        match done {
            Ok(Ok(mut s)) => {
                let covered = batch.as_ref().map(Batch::covered).unwrap_or_default();
                self.schedule.succeeded(covered, &s.bad_paths, now);
                if s.changed() || s.rejected > 0 || s.deletes_held > 0 {
                    tracing::debug!(
                        inserted = s.inserted,
                        updated = s.updated,
                        archived = s.archived,
                        deleted = s.deleted,
                        rejected = s.rejected,
                        "Applied changes"
                    );
                }
                s.bad_paths.clear();
                self.totals.add(&s);
                lifecycle.tick(&self.totals);
                if matches!(batch, Some(Batch::Full { .. })) && std::mem::take(&mut self.releasing) {
                    self.memory.release_held.store(false, Ordering::Relaxed);
                }
                if matches!(batch, Some(Batch::Full { .. })) {
                    self.record_state(StateUpdate::Full(s.clone(), self.full_started.elapsed()));
                }
                // The time a change was applied, not the time it is recorded.
                let at = bson::DateTime::now();
                for c in s.changed_collections {
                    match self.state_dirty.iter_mut().find(|(d, _)| *d == c) {
                        Some(slot) => slot.1 = at,
                        None => self.state_dirty.push((c, at)),
                    }
                }
            }
            Ok(Err(Fatal::Interrupted)) => return Flow::Stop,
            Ok(Err(e)) => {
                // Permanent failures (a refused write, an unreadable folder) are
                // reported and tried again later; nothing is dropped. Part of the
                // batch may have been written: what watch remembers of these files
                // is no longer to be trusted.
                let batch = batch.unwrap_or(Batch::Full { why: String::new(), covered: Vec::new() });
                let failed: Vec<SourceFile> = batch.covered().iter().map(|(f, _)| f.clone()).collect();
                match &batch {
                    Batch::Full { .. } => self.memory.forget(&self.engine.layout, None),
                    Batch::Sources(specs) => self.memory.forget_sources(&self.engine.layout, specs),
                    Batch::Files { .. } => self.memory.forget(&self.engine.layout, Some(&failed)),
                }
                let wait = self.schedule.failed(&batch, now);
                tracing::error!(error = %e, retry_in_s = wait.as_secs(), "Reconcile failed; will retry");
            }
            Err(join) => {
                tracing::error!(error = %join, "Reconcile task failed; rescanning everything");
                self.schedule.request_full("a reconcile task failed");
            }
        }
        Flow::Go
    }

    /// Once a second: the service manager's status, `mirror_state`, `/readyz`.
    fn tick(&mut self, lifecycle: &mut dyn Lifecycle) {
        lifecycle.tick(&self.totals);
        self.ticks += 1;
        // mirror_state is updated at most every 2 s however busy the files are,
        // and every 5 s as a heartbeat (status tells a stopped watch by it).
        if (!self.state_dirty.is_empty() && self.ticks % 2 == 0) || self.ticks % 5 == 0 {
            let dirty = std::mem::take(&mut self.state_dirty);
            self.record_state(StateUpdate::Change(dirty, self.totals.clone(), self.progress()));
        }
        // Keep /readyz honest while idle: check MongoDB every 5 s.
        if self.ticks % 5 == 0 && self.in_flight.is_none() {
            let sink = self.sink.clone();
            tokio::spawn(async move { sink.ping().await });
        }
    }

    /// How far behind the files watch is: changes waiting, and the oldest one's age.
    fn progress(&self) -> crate::state::Progress {
        let in_flight = self.batch.as_ref().map_or(0, |b| b.covered().len());
        let oldest = [self.schedule.oldest_pending(), self.batch_started].into_iter().flatten().min();
        crate::state::Progress {
            pending_files: crate::summary::count(self.schedule.pending_files() + in_flight),
            lag_seconds: oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        }
    }

    /// Give the writes in flight a bounded time, record the state, and log the totals.
    async fn stop(mut self) -> Summary {
        if let Some(handle) = self.in_flight.take() {
            tracing::info!(timeout_s = self.opts.shutdown_timeout.as_secs(), "Waiting for writes in flight");
            let abort = handle.abort_handle();
            match tokio::time::timeout(self.opts.shutdown_timeout, handle).await {
                Ok(Ok(Ok(s))) => self.totals.add(&s),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("Writes in flight did not finish in time; they are redone on the next start");
                    self.hard_cancel.cancel();
                    abort.abort();
                }
            }
        }
        if !self.hard_cancel.is_cancelled() {
            self.sink.stopping(&self.engine, &self.memory).await;
        }
        let (engine, sink, memory) = (&self.engine, &self.sink, Some(self.memory.as_ref()));
        let progress = self.progress();
        let record = async {
            crate::state::record_change(engine, sink, memory, &self.state_dirty, &self.totals, progress).await?;
            crate::state::record_stop(sink).await
        };
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), record).await {
            tracing::debug!(error = %e, "Cannot record the stop in mirror_state");
        }
        self.hard_cancel.cancel();
        if self.schedule.pending_files() > 0 {
            tracing::info!(
                files = self.schedule.pending_files(),
                "Changes not yet applied are picked up by the next start's full reconcile"
            );
        }
        log_summary("Stopped", &self.totals);
        self.totals
    }

    /// Record progress in `mirror_state` without holding up the loop; a
    /// failure only costs a log line (the data itself is not affected).
    fn record_state(&self, update: StateUpdate) {
        let (engine, sink, memory) = (self.engine.clone(), self.sink.clone(), self.memory.clone());
        tokio::spawn(async move {
            let r = match update {
                StateUpdate::Full(s, took) => {
                    crate::state::record_full(&engine, &sink, Some(&memory), "watch", &s, took).await
                }
                StateUpdate::Change(changes, totals, progress) => {
                    crate::state::record_change(&engine, &sink, Some(&memory), &changes, &totals, progress).await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "Cannot update mirror_state");
            }
        });
    }
}

/// The final summary line of a watch stopped before it got going.
fn stopped(totals: Summary) -> Summary {
    log_summary("Stopped", &totals);
    totals
}

/// One log line with a summary's counters as fields.
fn log_summary(message: &str, s: &Summary) {
    tracing::info!(
        read = s.read,
        inserted = s.inserted,
        updated = s.updated,
        unchanged = s.unchanged,
        skipped_newer = s.skipped_newer,
        rejected = s.rejected,
        archived = s.archived,
        deleted = s.deleted,
        deletes_held = s.deletes_held,
        "{message}"
    );
}

enum StateUpdate {
    Full(Summary, std::time::Duration),
    Change(Vec<(String, bson::DateTime)>, Summary, crate::state::Progress),
}

async fn signalled(s: &mut Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn join_opt(h: &mut Option<JoinHandle<Outcome>>) -> Result<Outcome, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}
