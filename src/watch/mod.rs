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

pub mod events;
pub mod fstype;
pub mod poll;
pub mod systemd;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::reconcile::{reconcile, Engine, RunOptions, Scope, Summary};
use crate::sink::{Sink, SinkOptions};
use crate::source::SourceFile;

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

#[derive(Debug)]
struct Pending {
    first: Instant,
    last: Instant,
    attempts: u32,
    /// The last event said the file is complete (closed after writing, renamed in).
    done: bool,
}

/// The result of one reconcile task: what it did, and which hints it covered
/// (to be put back if it failed).
type Batch = (Result<Summary, Fatal>, Vec<(SourceFile, u32)>, bool);

/// Run the daemon until `cancel` fires. Returns the totals of all changes.
pub async fn run(
    engine: Arc<Engine>,
    sink_opts: SinkOptions,
    opts: WatchOptions,
    cancel: CancellationToken,
    lifecycle: &mut dyn Lifecycle,
) -> Result<Summary, Fatal> {
    // Writes stop only after the in-flight batch had its chance to finish.
    let hard_cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<Hint>(opts.queue_capacity.max(1));
    let overflow = Arc::new(AtomicBool::new(false));

    // Watches go in before the first scan, so nothing slips through the gap.
    let mut source = ChangeSource::start(&engine, &opts, tx.clone(), overflow.clone())?;

    let sink = tokio::select! {
        s = Sink::connect(sink_opts, hard_cancel.clone()) => s?,
        () = cancel.cancelled() => return Ok(stopped(Summary::default())),
    };
    tokio::select! {
        r = engine.indexes.apply(&sink) => r?,
        () = cancel.cancelled() => return Ok(stopped(Summary::default())),
    }

    let mut totals = Summary::default();
    let started = std::time::Instant::now();
    let initial = RunOptions { dry_run: false, log_all_rejects: true, defer_bad_files: false, log_changes: false };
    let first = tokio::select! {
        r = reconcile(&engine, &sink, Scope::Full, initial, &hard_cancel) => r,
        () = cancel.cancelled() => { hard_cancel.cancel(); return Ok(stopped(totals)) }
    };
    match first {
        Ok(s) => {
            engine.metrics.set_ready();
            record_state(&engine, &sink, StateUpdate::Full(s.clone(), started.elapsed()));
            log_summary("Initial reconcile done; watching for changes", &s);
            release_freed_memory();
            totals.add(&s);
            lifecycle.ready(&s);
        }
        Err(e) => return Err(e),
    }

    let mut pending: HashMap<SourceFile, Pending> = HashMap::new();
    let mut pending_sources: HashSet<usize> = HashSet::new();
    let mut pending_full: Option<String> = None;
    let mut in_flight: Option<JoinHandle<Batch>> = None;
    let mut next_rescan = Instant::now() + opts.rescan_interval;
    let mut retry_after: Option<Instant> = None;
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    let mut state_dirty: Vec<String> = Vec::new();
    let mut full_started = std::time::Instant::now();

    loop {
        let next = next_due(&pending, &opts);
        let can_start = in_flight.is_none() && retry_after.is_none_or(|t| t <= Instant::now());
        tokio::select! {
            () = cancel.cancelled() => break,
            hint = rx.recv() => {
                let Some(hint) = hint else { break };
                let mut add = |h: Hint| match h {
                    Hint::File(f) => {
                        let now = Instant::now();
                        pending.entry(f).and_modify(|p| { p.last = now; p.done = false; }).or_insert(Pending { first: now, last: now, attempts: 0, done: false });
                    }
                    Hint::FileDone(f) => {
                        let now = Instant::now();
                        pending.entry(f).and_modify(|p| { p.last = now; p.done = true; }).or_insert(Pending { first: now, last: now, attempts: 0, done: true });
                    }
                    Hint::Source(s) => { pending_sources.insert(s); }
                    Hint::Full(why) => { pending_full.get_or_insert(why); }
                };
                add(hint);
                while let Ok(h) = rx.try_recv() {
                    add(h);
                }
            }
            () = sleep_until_opt(next), if can_start => {}
            () = sleep_until_opt(retry_after), if in_flight.is_none() => { retry_after = None; }
            done = join_opt(&mut in_flight) => {
                in_flight = None;
                release_freed_memory();
                match done {
                    Ok((Ok(s), files, full)) => {
                        failures = 0;
                        for f in &s.bad_paths {
                            // A file that did not parse may be half-written: read it again
                            // after another quiet period, a few times, before reporting it.
                            let attempts = files.iter().find(|(x, _)| x == f).map(|(_, a)| *a).unwrap_or(opts.parse_retries);
                            if attempts < opts.parse_retries {
                                let now = Instant::now();
                                pending.entry(f.clone()).or_insert(Pending { first: now, last: now, attempts: attempts + 1, done: false });
                            }
                        }
                        if s.changed() || s.rejected > 0 || s.deletes_held > 0 {
                            tracing::debug!(inserted = s.inserted, updated = s.updated, archived = s.archived, deleted = s.deleted, rejected = s.rejected, "Applied changes");
                        }
                        let mut s = s;
                        s.bad_paths.clear();
                        totals.add(&s);
                        lifecycle.tick(&totals);
                        if full {
                            record_state(&engine, &sink, StateUpdate::Full(s.clone(), full_started.elapsed()));
                        }
                        for c in &s.changed_collections {
                            if !state_dirty.contains(c) {
                                state_dirty.push(c.clone());
                            }
                        }
                    }
                    Ok((Err(Fatal::Interrupted), _, _)) => break,
                    Ok((Err(e), files, full)) => {
                        // Permanent failures (a refused write, an unreadable folder) are
                        // reported and tried again later; nothing is dropped.
                        failures += 1;
                        let wait = Duration::from_secs(2u64.saturating_pow(failures.min(5)));
                        tracing::error!(error = %e, retry_in_s = wait.as_secs(), "Reconcile failed; will retry");
                        let now = Instant::now();
                        // Part of the batch may have been written: what watch remembers of
                        // these files is no longer to be trusted.
                        let failed: Vec<SourceFile> = files.iter().map(|(f, _)| f.clone()).collect();
                        engine.forget(if full { None } else { Some(&failed) });
                        for (f, attempts) in files {
                            pending.entry(f).or_insert(Pending { first: now, last: now, attempts, done: false });
                        }
                        if full {
                            pending_full.get_or_insert_with(|| "retry after a failure".into());
                        }
                        retry_after = Some(now + wait);
                    }
                    Err(join) => {
                        tracing::error!(error = %join, "Reconcile task failed; rescanning everything");
                        pending_full.get_or_insert_with(|| "a reconcile task failed".into());
                    }
                }
            }
            () = tokio::time::sleep_until(next_rescan) => {
                pending_full.get_or_insert_with(|| "periodic rescan".into());
                next_rescan = Instant::now() + opts.rescan_interval;
            }
            _ = tick.tick() => {
                lifecycle.tick(&totals);
                ticks += 1;
                // mirror_state is updated at most every 2 s, however busy the files are.
                if !state_dirty.is_empty() && ticks % 2 == 0 {
                    record_state(&engine, &sink, StateUpdate::Change(std::mem::take(&mut state_dirty), totals.clone()));
                }
                // Keep /readyz honest while idle: check MongoDB every 5 s.
                if ticks % 5 == 0 && in_flight.is_none() {
                    let sink = sink.clone();
                    tokio::spawn(async move { sink.ping().await });
                }
            }
        }

        if overflow.swap(false, Ordering::AcqRel) {
            pending_full.get_or_insert_with(|| "file events were lost (event queue overflow)".into());
        }
        if pending_full.is_some() {
            source.refresh(&engine);
        }
        if in_flight.is_some() || retry_after.is_some_and(|t| t > Instant::now()) {
            continue;
        }
        retry_after = None;
        // Start the next batch: everything if asked, else whole sources, else quiet files.
        let now = Instant::now();
        if let Some(why) = pending_full.take() {
            if why == "periodic rescan" {
                tracing::debug!(reason = %why, "Full rescan");
            } else {
                tracing::warn!(reason = %why, "Full rescan");
            }
            engine.metrics.record_rescan();
            full_started = std::time::Instant::now();
            // Files pending now are covered: the scan reads them after this point.
            let covered: Vec<(SourceFile, u32)> = pending.drain().map(|(f, p)| (f, p.attempts)).collect();
            pending_sources.clear();
            in_flight = Some(spawn_batch(&engine, &sink, Scope::Full, covered, true, false, &hard_cancel));
        } else if !pending_sources.is_empty() {
            engine.metrics.record_rescan();
            let specs: Vec<usize> = pending_sources.drain().collect();
            pending.retain(|f, _| !specs.contains(&f.spec));
            tracing::info!(sources = ?specs.iter().map(|s| engine.layout.sources[*s].name.clone()).collect::<Vec<_>>(), "Folder changed; rescanning its sources");
            in_flight =
                Some(spawn_batch(&engine, &sink, Scope::Sources(specs), Vec::new(), false, false, &hard_cancel));
        } else {
            let ready: Vec<SourceFile> =
                pending.iter().filter(|(_, p)| now >= due(p, &opts)).map(|(f, _)| f.clone()).collect();
            if !ready.is_empty() {
                let batch: Vec<(SourceFile, u32)> =
                    ready.into_iter().filter_map(|f| pending.remove(&f).map(|p| (f, p.attempts))).collect();
                let last_try = batch.iter().all(|(_, a)| *a >= opts.parse_retries);
                let files: Vec<SourceFile> = batch.iter().map(|(f, _)| f.clone()).collect();
                in_flight =
                    Some(spawn_batch(&engine, &sink, Scope::Files(files), batch, false, !last_try, &hard_cancel));
            }
        }
    }

    // Shutdown: stop watching, give the writes in flight a bounded time, then stop them.
    lifecycle.stopping();
    drop(source);
    if let Some(handle) = in_flight.take() {
        tracing::info!(timeout_s = opts.shutdown_timeout.as_secs(), "Waiting for writes in flight");
        let abort = handle.abort_handle();
        match tokio::time::timeout(opts.shutdown_timeout, handle).await {
            Ok(Ok((Ok(s), _, _))) => totals.add(&s),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("Writes in flight did not finish in time; they are redone on the next start");
                hard_cancel.cancel();
                abort.abort();
            }
        }
    }
    if !state_dirty.is_empty() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            crate::state::record_change(&engine, &sink, &state_dirty, &totals),
        )
        .await;
    }
    hard_cancel.cancel();
    if !pending.is_empty() {
        tracing::info!(
            files = pending.len(),
            "Changes not yet applied are picked up by the next start's full reconcile"
        );
    }
    log_summary("Stopped", &totals);
    Ok(totals)
}

/// The final summary line of a watch stopped before it got going.
fn stopped(totals: Summary) -> Summary {
    log_summary("Stopped", &totals);
    totals
}

/// One log line with a summary's counters as fields.
/// Hand the memory a reconcile freed back to the system. A full scan of a
/// large source frees tens of MB across the allocator's per-thread arenas;
/// without this, the daemon's resident size stays at that high-water mark
/// and every later change adds its own peak on top. (glibc only; elsewhere
/// the allocator decides.)
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
    Change(Vec<String>, Summary),
}

/// Record progress in `mirror_state` without holding up the loop; a failure
/// only costs a log line (the data itself is not affected).
fn record_state(engine: &Arc<Engine>, sink: &Sink, update: StateUpdate) {
    let engine = engine.clone();
    let sink = sink.clone();
    tokio::spawn(async move {
        let r = match update {
            StateUpdate::Full(s, took) => crate::state::record_full(&engine, &sink, "watch", &s, took).await,
            StateUpdate::Change(colls, totals) => crate::state::record_change(&engine, &sink, &colls, &totals).await,
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "Cannot update mirror_state");
        }
    });
}

fn spawn_batch(
    engine: &Arc<Engine>,
    sink: &Sink,
    scope: Scope,
    covered: Vec<(SourceFile, u32)>,
    full: bool,
    defer_bad_files: bool,
    cancel: &CancellationToken,
) -> JoinHandle<Batch> {
    let engine = engine.clone();
    let sink = sink.clone();
    let cancel = cancel.clone();
    let log_changes = matches!(scope, Scope::Files(_) | Scope::Sources(_));
    tokio::spawn(async move {
        let opts = RunOptions { dry_run: false, log_all_rejects: false, defer_bad_files, log_changes };
        let r = reconcile(&engine, &sink, scope, opts, &cancel).await;
        (r, covered, full)
    })
}

fn next_due(pending: &HashMap<SourceFile, Pending>, opts: &WatchOptions) -> Option<Instant> {
    pending.values().map(|p| due(p, opts)).min()
}

/// When a pending file should be read: now if its writer is done, else after
/// the quiet period, and never later than `max_delay` after its first event.
fn due(p: &Pending, opts: &WatchOptions) -> Instant {
    if p.done {
        p.last
    } else {
        (p.last + opts.debounce).min(p.first + opts.max_delay)
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn join_opt(h: &mut Option<JoinHandle<Batch>>) -> Result<Batch, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Where change hints come from: file events, or a poller.
enum ChangeSource {
    Events(events::FsWatch),
    /// Held only to keep the poller alive: dropping it stops polling.
    Poll(#[allow(dead_code)] poll::PollTask),
}

impl ChangeSource {
    fn start(
        engine: &Arc<Engine>,
        opts: &WatchOptions,
        tx: mpsc::Sender<Hint>,
        overflow: Arc<AtomicBool>,
    ) -> Result<ChangeSource, Fatal> {
        let roots: Vec<PathBuf> = vec![engine.roots.data.clone(), engine.roots.artifacts.clone()];
        for root in &roots {
            if let Some(kind) = fstype::network_fs(root) {
                if opts.poll_interval.is_none() {
                    tracing::warn!(folder = %root.display(), filesystem = %kind,
                        "This folder is on a network filesystem, which may not deliver change events; use --poll-interval-ms");
                }
            }
        }
        match opts.poll_interval {
            Some(every) => {
                tracing::info!(interval_ms = every.as_millis(), "Polling the folders for changes");
                Ok(ChangeSource::Poll(poll::PollTask::start(engine.clone(), every, tx, overflow)))
            }
            None => Ok(ChangeSource::Events(events::FsWatch::start(engine.clone(), tx, overflow)?)),
        }
    }

    /// Re-establish watches (a watched folder may have been removed and recreated).
    fn refresh(&mut self, engine: &Engine) {
        if let ChangeSource::Events(w) = self {
            w.ensure_watches(engine);
        }
    }
}
