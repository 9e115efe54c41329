//! `cutover`: the recorded end of the dual-write window, following the
//! migration guide's checklist. It waits until the files are quiet (the app
//! stopped writing them) and a running watch has applied the last change,
//! runs the full verify, and only if MongoDB matches the files records the
//! cutover in `mirror_state`. From then on the files are not the truth:
//! `sync` and `watch` refuse to write them into MongoDB without
//! `--after-cutover`.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::reconcile::Engine;
use crate::state::StateStore;
use crate::verify::{verify, Report};

/// How long to wait for what.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The files must not have changed for this long.
    pub quiet: Duration,
    /// Give up (not ready) after waiting this long for quiet files and watch.
    pub wait: Duration,
}

/// Why the migration cannot be cut over now.
#[derive(Debug)]
pub enum NotReady {
    FilesChanging { secs_ago: u64 },
    WatchBehind { pending_files: i64, lag_seconds: f64 },
    Differences(Report),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::FilesChanging { secs_ago } => write!(
                f,
                "the files changed {secs_ago} s ago and keep changing: stop the app's file writes (the guide's \
                 checklist), then run cutover again"
            ),
            NotReady::WatchBehind { pending_files, lag_seconds } => write!(
                f,
                "docmirror watch has not applied the last changes yet ({pending_files} file(s) pending, \
                 {lag_seconds:.1} s behind): wait, or check its log"
            ),
            NotReady::Differences(r) => {
                let n: usize = r.collections.iter().map(crate::verify::CollectionReport::problems).sum();
                let target = if r.target.is_empty() { "MongoDB" } else { r.target };
                write!(f, "{target} differs from the files in {n} place(s) (see the report): fix them, let watch or sync apply them, then run cutover again")
            }
        }
    }
}

/// Check, verify and record; `Ok(Err(..))` when it is not the time yet.
pub async fn cutover<T: StateStore>(
    engine: &std::sync::Arc<Engine>,
    sink: &T,
    opts: Options,
    cancel: &CancellationToken,
) -> Result<Result<(Report, bson::DateTime), NotReady>, Fatal> {
    let started = std::time::Instant::now();
    // 1. The files are quiet.
    let newest = loop {
        let newest = newest_change(engine);
        let age = SystemTime::now().duration_since(newest).unwrap_or_default();
        if age >= opts.quiet {
            break newest;
        }
        if started.elapsed() >= opts.wait {
            return Ok(Err(NotReady::FilesChanging { secs_ago: age.as_secs() }));
        }
        pause((opts.quiet - age).min(Duration::from_secs(1)), cancel).await?;
    };
    // 2. A running watch has applied everything up to the last change.
    loop {
        match watch_behind(sink, newest).await? {
            None => break,
            Some(behind) if started.elapsed() >= opts.wait => return Ok(Err(behind)),
            Some(_) => pause(Duration::from_secs(1), cancel).await?,
        }
    }
    // 3. MongoDB holds exactly what the files hold.
    let report = tokio::select! {
        r = verify(engine, sink) => r?,
        () = cancel.cancelled() => return Err(Fatal::Interrupted),
    };
    if let Err(e) = crate::state::record_verify(sink, &report, &digest(&report)).await {
        tracing::warn!(error = %e, "Cannot record the verify in mirror_state");
    }
    if !report.in_sync {
        return Ok(Err(NotReady::Differences(report)));
    }
    // 4. Recorded.
    let at = crate::state::record_cutover(sink, &report, &digest(&report)).await?;
    Ok(Ok((report, at)))
}

/// A digest of the verify report that justified the cutover (kept with it).
pub fn digest(report: &Report) -> String {
    let json = serde_json::to_vec(report).unwrap_or_default();
    crate::mapping::hex(&Sha256::digest(json))
}

/// When any source file (or source folder) last changed.
fn newest_change(engine: &Engine) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for i in 0..engine.layout.sources.len() {
        let files = crate::source::discover(&engine.layout, &engine.roots, i).unwrap_or_default();
        let folders = [engine.roots.data.clone(), engine.roots.artifacts.clone()];
        for path in files.iter().map(|f| f.path()).chain(folders) {
            if let Ok(t) = std::fs::metadata(&path).and_then(|m| m.modified()) {
                newest = newest.max(t);
            }
        }
    }
    newest
}

/// What a running watch still has to apply: `None` when no watch runs, or
/// when its last heartbeat came after `newest` with nothing pending.
async fn watch_behind<T: StateStore>(sink: &T, newest: SystemTime) -> Result<Option<NotReady>, Fatal> {
    let Some(mut state) = crate::state::read(sink).await? else { return Ok(None) };
    crate::state::add_live(sink, &mut state).await?;
    let Ok(w) = state.get_document("watch") else { return Ok(None) };
    if w.get_str("state") != Ok("running") {
        return Ok(None);
    }
    let pending_files = w.get("pending_files").and_then(crate::sink::bson_i64).unwrap_or(0);
    let lag_seconds = w.get_f64("lag_seconds").unwrap_or(0.0);
    let beat = w.get_datetime("heartbeat_at").map(|t| t.to_system_time()).unwrap_or(SystemTime::UNIX_EPOCH);
    if pending_files == 0 && beat > newest {
        return Ok(None);
    }
    Ok(Some(NotReady::WatchBehind { pending_files, lag_seconds }))
}

async fn pause(d: Duration, cancel: &CancellationToken) -> Result<(), Fatal> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = cancel.cancelled() => Err(Fatal::Interrupted),
    }
}

/// The refusal of `sync` and `watch` after a recorded cutover.
pub async fn refuse_after_cutover<T: StateStore>(sink: &T, allowed: bool) -> Result<(), Fatal> {
    if allowed {
        return Ok(());
    }
    let Some(state) = crate::state::read(sink).await? else { return Ok(()) };
    match crate::state::cutover_at(&state) {
        Some(at) => Err(Fatal::Config(format!(
            "this migration was cut over at {}: {} is the truth now, not the files, so they are not mirrored \
             into it again. Use `docmirror export` to go back to files, or pass --after-cutover if you really mean it",
            at.try_to_rfc3339_string().unwrap_or_default(),
            sink.name()
        ))),
        None => Ok(()),
    }
}
