//! The reconcile core shared by `sync`, `watch` and `verify`: read a set of
//! source files, map their records, compare them with what the target holds,
//! and write only the difference. `sync` reconciles everything once; `watch`
//! reconciles everything once and then the files that changed; `verify`
//! stops after the scan and compares on its own.
//!
//! A record passes through the stages in this folder, in order:
//!
//! 1. [`scan`]: read, split and map the files; first keeps an id or an email;
//! 2. [`existing`]: what the target holds for them (or watch's picture);
//! 3. [`plan`]: insert, update or unchanged, by content hash;
//! 4. [`write`]: batched writes, settled outcome by outcome (newer-wins, clashes);
//! 5. [`delete`]: documents whose records are gone (guard, archive);
//! 6. [`settle`]: the stored rejects made current, watch's memory updated.
//!
//! `run` carries one source through stages 3 to 6 ([`SourceRun`]); [`target`]
//! is all the core asks of a database; [`rejects`] are the records that cannot
//! be mirrored; [`memo`] is watch's memory, which watch owns and hands in.
//!
//! Conservation rule: every record read ends in exactly one bucket:
//! inserted, updated, unchanged, skipped (newer in the target) or rejected.

pub mod cores;
pub mod delete;
pub mod existing;
pub mod firsts;
pub mod hits;
pub mod lookup;
pub mod memo;
pub mod packed;
pub mod picture;
pub mod plan;
pub mod recs;
pub mod rejects;
mod run;
pub mod scan;
pub mod settle;
pub mod target;
pub mod write;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::indexes::IndexSet;
use crate::layout::Layout;
use crate::layout::SourceSpec;
use crate::source::{ReadLimits, Roots, SourceFile};
use crate::summary::Summary;
use memo::{Known, Memo, Memory};
use rejects::RejectRecord;
use scan::{scan_source, Candidate, Texts};
use target::{Existing, Target};

pub use scan::CHUNK;

/// Where the mirror keeps the records it cannot mirror.
pub const REJECTS: &str = "mirror_rejects";
/// Where `--on-delete archive` keeps the last version of deleted documents.
pub const ARCHIVE: &str = "mirror_archive";

/// What happens to a document whose record disappeared from the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Copy the last version into `mirror_archive`, then delete it.
    Archive,
    /// Delete it.
    Delete,
    /// Leave it in MongoDB.
    Keep,
}

/// Which version wins when MongoDB holds a newer document than the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conflict {
    /// Only replace a document when the file's version time is not older.
    NewerWins,
    /// The file always wins.
    FileWins,
}

/// Everything the core needs to know, fixed for a run.
pub struct Engine {
    pub layout: Arc<Layout>,
    /// Per source, [`crate::mapping::fingerprint`] of its rules.
    pub fingerprints: Vec<String>,
    pub roots: Roots,
    pub limits: ReadLimits,
    pub indexes: IndexSet,
    pub on_delete: OnDelete,
    pub conflict: Conflict,
    /// Hold deletes that would remove more than this fraction of a collection
    /// within `mass_delete_window` (watch; within one run for sync).
    pub mass_delete_fraction: f64,
    pub mass_delete_window: std::time::Duration,
    pub allow_mass_delete: bool,
    /// Records per chunk of a streamed scan ([`CHUNK`] by default).
    pub chunk: usize,
    /// A start from a checkpoint gives way to a full reconcile when more
    /// documents than this changed in MongoDB since (`--checkpoint-max-changes`).
    pub checkpoint_max_changes: usize,
    /// `sync` into empty PostgreSQL tables may load them in one transaction
    /// that locks them (`postgres/fresh.rs`); off with `--no-exclusive-load`.
    pub exclusive_load: bool,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Engine {
    pub fn new(layout: Layout, roots: Roots, indexes: IndexSet) -> Self {
        let fingerprints = layout.sources.iter().map(crate::mapping::fingerprint).collect();
        Engine {
            layout: Arc::new(layout),
            fingerprints,
            roots,
            limits: ReadLimits::default(),
            indexes,
            on_delete: OnDelete::Archive,
            conflict: Conflict::NewerWins,
            mass_delete_fraction: 0.5,
            mass_delete_window: std::time::Duration::from_secs(60),
            allow_mass_delete: false,
            chunk: CHUNK,
            checkpoint_max_changes: 50_000,
            exclusive_load: false,
            metrics: Arc::default(),
        }
    }

    /// What the file watchers need of the engine.
    pub fn tree(&self) -> crate::source::Tree {
        crate::source::Tree { layout: self.layout.clone(), roots: self.roots.clone() }
    }
}

/// Which files to look at.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every file of every source.
    Full,
    /// Every file of these sources (a folder appeared or vanished).
    Sources(Vec<usize>),
    /// Just these files (they may have been deleted).
    Files(Vec<SourceFile>),
}

/// How a reconcile run behaves.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub dry_run: bool,
    /// Log every reject, not only those not stored before (sync does).
    pub log_all_rejects: bool,
    /// Leave unreadable files out of `mirror_rejects` and the log for now:
    /// watch retries them (they may be half-written) before reporting.
    pub defer_bad_files: bool,
    /// Log one line per written document (watch, for changed files).
    pub log_changes: bool,
    /// Trust the texts the target keeps beside its rows (PostgreSQL's
    /// `sync` without `--full`): records found with the text their row was
    /// written from are not mapped again (see [`scan::scan_source`]).
    pub texts: bool,
}

/// What one reconcile works with: the engine, the target, and watch's memory.
pub struct Core<'a, T: Target> {
    pub engine: &'a Arc<Engine>,
    pub target: &'a T,
    /// watch's memory (`None` for sync and verify).
    pub memory: Option<&'a Arc<Memory>>,
}

impl<T: Target> Clone for Core<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Target> Copy for Core<'_, T> {}

/// The files of a scope, split by source: whole sources, and single files.
struct Work {
    whole: Vec<usize>,
    files: Vec<(usize, Vec<SourceFile>)>,
}

impl Work {
    fn of(scope: Scope, sources: usize) -> Work {
        match scope {
            Scope::Full => Work { whole: (0..sources).collect(), files: Vec::new() },
            Scope::Sources(mut specs) => {
                specs.retain(|s| *s < sources);
                specs.sort_unstable();
                specs.dedup();
                Work { whole: specs, files: Vec::new() }
            }
            Scope::Files(files) => {
                let mut per_spec: Vec<Vec<SourceFile>> = vec![Vec::new(); sources];
                // Each file once, in the order given (a set: a start that
                // compares 200,000 files must not compare them pairwise).
                let mut seen = HashSet::with_capacity(files.len());
                for f in files {
                    if let Some(slot) = per_spec.get_mut(f.spec) {
                        if seen.insert((f.spec, f.rel.clone())) {
                            slot.push(f);
                        }
                    }
                }
                let files = per_spec.into_iter().enumerate().filter(|(_, f)| !f.is_empty()).collect();
                Work { whole: Vec::new(), files }
            }
        }
    }
}

/// What the target holds for one whole source (and its texts, where it keeps them).
type Fetched = Result<(HashMap<String, Existing>, Option<Memo>), Fatal>;

/// Reconcile a scope: the heart of sync and watch.
pub async fn reconcile<T: Target>(
    core: Core<'_, T>,
    scope: Scope,
    opts: RunOptions,
    cancel: &CancellationToken,
) -> Result<Summary, Fatal> {
    let engine = core.engine;
    let work = Work::of(scope, engine.layout.sources.len());
    let mut total = Summary::default();
    // Whole sources: their collections' hashes are read one collection after
    // the other in the background, and each source is reconciled as soon as its
    // hashes are in, so one source's files are read and compared while the
    // target serves the next collection. (Dropping the set stops the reads,
    // should a source fail.)
    let (fetched_tx, mut fetched) = tokio::sync::mpsc::channel(work.whole.len().max(1));
    let mut reader = tokio::task::JoinSet::new();
    let (e, t, whole) = (engine.clone(), core.target.clone(), work.whole);
    let order = whole.clone();
    let texts = opts.texts && core.memory.is_none();
    reader.spawn(async move {
        for spec_idx in whole {
            let started = std::time::Instant::now();
            let spec = &e.layout.sources[spec_idx];
            let existing = if texts { t.hashes_and_texts(spec).await } else { t.hashes(spec).await.map(|h| (h, None)) };
            tracing::debug!(collection = %spec.collection, documents = existing.as_ref().map_or(0, |(h, _)| h.len()), texts = existing.as_ref().map_or(0, |(_, t)| t.as_ref().map_or(0, |t| t.values().map(|f| f.recs.len()).sum())), elapsed_ms = started.elapsed().as_millis(), "Fetched what the target holds");
            let failed = existing.is_err();
            if fetched_tx.send((spec_idx, existing)).await.is_err() || failed {
                return;
            }
        }
    });
    // The sources come in the order they are fetched in; each one's files
    // are read while its collection is fetched.
    for spec_idx in order {
        if cancel.is_cancelled() {
            return Err(Fatal::Interrupted);
        }
        engine.metrics.set_phase(format!("{}: reading", engine.layout.sources[spec_idx].collection));
        total.add(&reconcile_whole_source(core, spec_idx, &mut fetched, opts, cancel).await?);
    }
    for (spec_idx, files) in work.files {
        if cancel.is_cancelled() {
            return Err(Fatal::Interrupted);
        }
        engine.metrics.set_phase(format!("{}: reading", engine.layout.sources[spec_idx].collection));
        total.add(&reconcile_files(core, spec_idx, files, opts, cancel).await?);
    }
    Ok(total)
}

/// A whole source, streamed, given what its collection holds: each chunk of
/// mapped records is compared and written while the next one is mapped.
/// Memory holds a few chunks, not the source.
async fn reconcile_whole_source<T: Target>(
    core: Core<'_, T>,
    spec_idx: usize,
    fetched: &mut tokio::sync::mpsc::Receiver<(usize, Fetched)>,
    opts: RunOptions,
    stop: &CancellationToken,
) -> Result<Summary, Fatal> {
    let started = std::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Candidate>>(1);
    let (e, m) = (core.engine.clone(), core.memory.cloned());
    let (texts_tx, texts_rx) = std::sync::mpsc::sync_channel(1);
    let texts = if opts.texts && core.memory.is_none() { Texts::Later(texts_rx) } else { Texts::None };
    // The files are read while the target answers (with its texts, the scan
    // waits for them before its first lookup; the first chunk waits for the
    // answer anyway). If anything below fails, `rx` is dropped and the scan
    // stops at its next chunk.
    let scan = tokio::task::spawn_blocking(move || {
        let mut emit = |chunk: Vec<Candidate>| tx.blocking_send(chunk).is_ok();
        scan_source(&e, m.as_deref(), texts, spec_idx, None, Some(&mut emit))
    });
    let (existing, texts) = match fetched.recv().await {
        Some((idx, answer)) if idx == spec_idx => answer?,
        _ => return Err(Fatal::Internal(format!("the target's answer for source {spec_idx} did not come"))),
    };
    let _ = texts_tx.send(texts);
    let mut run = SourceRun::new(core.engine, core.target, core.memory.map(Arc::as_ref), stop, spec_idx, opts);
    while let Some(chunk) = rx.recv().await {
        run.chunk(chunk, &existing).await?;
    }
    let mut scanned = scan.await.map_err(Fatal::task("scan"))??;
    tracing::debug!(source = %core.engine.layout.sources[spec_idx].name, records = scanned.records, unchanged_by_text = scanned.unchanged_len(), elapsed_ms = started.elapsed().as_millis(), "Scanned");
    let last = std::mem::take(&mut scanned.candidates);
    run.chunk(last, &existing).await?;
    let summary = run.finish(scanned, existing).await?;
    core.target.whole_source_done(&core.engine.layout.sources[spec_idx]).await;
    Ok(summary)
}

/// Some files of a source (watch): scanned in full (the memo keeps that
/// cheap), then compared with what the target holds for them.
async fn reconcile_files<T: Target>(
    core: Core<'_, T>,
    spec_idx: usize,
    files: Vec<SourceFile>,
    opts: RunOptions,
    stop: &CancellationToken,
) -> Result<Summary, Fatal> {
    let (e, m) = (core.engine.clone(), core.memory.cloned());
    let started = std::time::Instant::now();
    let mut scanned =
        tokio::task::spawn_blocking(move || scan_source(&e, m.as_deref(), Texts::None, spec_idx, Some(files), None))
            .await
            .map_err(Fatal::task("scan"))??;
    tracing::debug!(source = %core.engine.layout.sources[spec_idx].name, records = scanned.records, unchanged = scanned.unchanged_len(), mapped = scanned.candidates.len(), identical = scanned.identical.len(), elapsed_ms = started.elapsed().as_millis(), "Scanned");
    let memory = core.memory.map(Arc::as_ref);
    let existing = existing::for_scan(core.engine, core.target, memory, &scanned).await?;
    let mut run = SourceRun::new(core.engine, core.target, memory, stop, spec_idx, opts);
    let mut candidates = std::mem::take(&mut scanned.candidates).into_iter();
    loop {
        let chunk: Vec<Candidate> = candidates.by_ref().take(core.engine.chunk.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        run.chunk(chunk, &existing).await?;
    }
    run.finish(scanned, existing).await
}

/// One source's reconcile in progress (see [`run`]): the stages' shared state.
struct SourceRun<'a, T: Target> {
    pub engine: &'a Arc<Engine>,
    pub target: &'a T,
    pub memory: Option<&'a Memory>,
    /// Fires on shutdown: the run stops at the next chunk (or bcrypt item).
    pub stop: &'a CancellationToken,
    pub spec: SourceSpec,
    pub opts: RunOptions,
    pub summary: Summary,
    /// Rejects found while comparing and writing (the scan's come at the end).
    pub rejects: Vec<RejectRecord>,
    /// watch: the memo entries of the candidates, committed once settled.
    pub memo_pending: memo::Staged,
    /// watch: what was written, for the picture (by id key).
    pub fresh: Vec<(memo::IdKey, Known)>,
}

#[cfg(test)]
mod tests {
    use super::{Scope, Work};
    use crate::source::SourceFile;

    fn file(spec: usize, rel: &str) -> SourceFile {
        SourceFile::at(spec, rel, rel)
    }

    #[test]
    fn a_scans_tables_hold_each_files_one_name() {
        use super::memo::Memory;
        use super::scan::{scan_source, Texts};
        use std::sync::Arc;
        let tmp = tempfile::tempdir().unwrap();
        let roots = crate::source::Roots { data: tmp.path().join("data"), artifacts: tmp.path().join("artifacts") };
        std::fs::create_dir_all(roots.artifacts.join("jobs")).unwrap();
        for j in ["j1", "j2"] {
            let job = format!(r#"{{"job_id":"{j}","status":"running","created_at":"2025-01-01T00:00:00Z"}}"#);
            std::fs::write(roots.artifacts.join(format!("jobs/{j}.json")), job).unwrap();
        }
        let layout = crate::layout::Layout::builtin();
        let jobs = layout.sources.iter().position(|s| s.collection == "training_jobs").unwrap();
        let files = crate::source::discover(&layout, &roots, jobs).unwrap();
        let names: Vec<Arc<str>> = files.iter().map(|f| f.rel.clone()).collect();
        let engine = super::Engine::new(layout, roots, crate::indexes::IndexSet::builtin());
        let memory = Memory::default();
        let scanned = scan_source(&engine, Some(&memory), Texts::None, jobs, Some(files), None).unwrap();
        assert_eq!(scanned.candidates.len(), 2, "{:?}", scanned.rejects);
        // Each table that keeps something per file holds the file's own name, not a copy.
        for name in &names {
            let same = |r: Option<&Arc<str>>| r.is_some_and(|r| Arc::ptr_eq(r, name));
            assert!(same(scanned.read_ok.get(&**name)), "files read: {name}");
            assert!(same(scanned.digests.get_key_value(&**name).map(|(k, _)| k)), "digests: {name}");
            let c = scanned.candidates.iter().find(|c| c.rel == *name).unwrap();
            assert!(Arc::ptr_eq(&c.rel, name), "the candidate of {name}");
            assert!(same(scanned.firsts.source_of(&c.mapped.id)), "first-keeps-it: {name}");
        }
    }

    #[test]
    fn a_memo_hit_that_shares_an_email_with_an_earlier_changed_record_loses_it_and_the_rest_stay_marked() {
        use super::memo::{raw_hash, text_seed, FileMemo, Memory, Recs};
        use super::scan::{scan_source, Texts};
        let tmp = tempfile::tempdir().unwrap();
        let roots = crate::source::Roots { data: tmp.path().join("data"), artifacts: tmp.path().join("artifacts") };
        std::fs::create_dir_all(&roots.data).unwrap();
        let hash = "$2b$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u";
        let user = |id: &str, email: &str| {
            format!(
                r#"{{"id":"{id}","email":"{email}","name":"U","password":"{hash}","role":"user","createdAt":"2025-09-01T08:00:00.000Z","updatedAt":"2025-09-01T08:00:00.000Z"}}"#
            )
        };
        let before = [user("u1", "a@x.io"), user("u2", "b@x.io"), user("u3", "c@x.io")];
        let layout = crate::layout::Layout::builtin();
        let users = layout.sources.iter().position(|s| s.collection == "users").unwrap();
        let engine = super::Engine::new(layout, roots.clone(), crate::indexes::IndexSet::builtin());
        // The memo as a scan of `before` left it: each text's hash, id and email.
        let seed = text_seed(&engine.fingerprints[users]);
        let mut recs = Recs::bulk();
        for (text, (id, email)) in before.iter().zip([("u1", "a@x.io"), ("u2", "b@x.io"), ("u3", "c@x.io")]) {
            recs.insert(raw_hash(seed, text), id, [("email", email)]);
        }
        recs.seal();
        let memory = Memory::default();
        memory.memo.lock().unwrap().insert("data/users.json".into(), FileMemo { recs, ..FileMemo::default() });
        // u1 now has u2's email; u2 and u3 are as they were.
        let after = format!("[{},{},{}]", user("u1", "b@x.io"), before[1], before[2]);
        std::fs::write(roots.data.join("users.json"), after).unwrap();
        let files = crate::source::discover(&engine.layout, &roots, users).unwrap();
        let scanned = scan_source(&engine, Some(&memory), Texts::None, users, Some(files), None).unwrap();
        // u1 is mapped; u2, found unchanged, shares the email u1 took first, so it is looked at and
        // rejected; u3 is unchanged, left marked in the memo.
        let mapped: Vec<&str> = scanned.candidates.iter().map(|c| c.mapped.id.as_str()).collect();
        assert_eq!(mapped, ["u1"]);
        let rejected: Vec<Option<&str>> = scanned.rejects.iter().map(|r| r.id.as_deref()).collect();
        assert_eq!(rejected, [Some("u2")], "{:?}", scanned.rejects);
        assert_eq!((scanned.marked.count, scanned.unchanged_len(), scanned.records), (1, 1, 3));
        let memo = memory.memo.lock().unwrap();
        let marked: Vec<&str> =
            memo["data/users.json"].recs.marked(scanned.marked.pass, true).map(|(_, r)| r.id()).collect();
        assert_eq!(marked, ["u3"]);
        // u1's old text is gone and u2 is no longer settled: both vanished from the memo's view.
        let mut vanished: Vec<&str> = scanned.vanished.iter().map(|v| &*v.id).collect();
        vanished.sort_unstable();
        assert_eq!(vanished, ["u1", "u2"]);
    }

    #[test]
    fn a_file_gone_whose_records_the_memo_holds_is_covered_by_them() {
        use super::memo::{FileMemo, Memory, Recs};
        use super::scan::{scan_source, Texts};
        let tmp = tempfile::tempdir().unwrap();
        let roots = crate::source::Roots { data: tmp.path().join("data"), artifacts: tmp.path().join("artifacts") };
        std::fs::create_dir_all(roots.artifacts.join("jobs")).unwrap();
        let layout = crate::layout::Layout::builtin();
        let jobs = layout.sources.iter().position(|s| s.collection == "training_jobs").unwrap();
        let engine = super::Engine::new(layout, roots.clone(), crate::indexes::IndexSet::builtin());
        let memory = Memory::default();
        let mut recs = Recs::bulk();
        recs.insert(7, "j1", []);
        recs.seal();
        memory.memo.lock().unwrap().insert("artifacts/jobs/j1.json".into(), FileMemo { recs, ..FileMemo::default() });
        // Both files are gone; the memo knows what was mirrored from j1.json only.
        let gone = ["j1", "j2"].map(|j| {
            let rel = format!("artifacts/jobs/{j}.json");
            let path = roots.artifacts.join(format!("jobs/{j}.json"));
            SourceFile::at(jobs, &rel, path.to_str().unwrap())
        });
        let scanned = scan_source(&engine, Some(&memory), Texts::None, jobs, Some(gone.to_vec()), None).unwrap();
        assert_eq!(scanned.missing.len(), 2);
        let covered: Vec<&str> = scanned.memo_covered.iter().map(|r| &**r).collect();
        assert_eq!(covered, ["artifacts/jobs/j1.json"]);
        let vanished: Vec<(&str, &str, u128)> =
            scanned.vanished.iter().map(|v| (&*v.rel, &*v.id, v.raw_hash)).collect();
        assert_eq!(vanished, [("artifacts/jobs/j1.json", "j1", 7)]);
    }

    #[test]
    fn a_scope_of_files_keeps_each_file_once_in_the_order_given() {
        let files = vec![file(1, "b"), file(0, "x"), file(1, "a"), file(1, "b"), file(0, "x"), file(7, "gone")];
        let work = Work::of(Scope::Files(files), 2);
        assert!(work.whole.is_empty());
        let got: Vec<(usize, Vec<&str>)> =
            work.files.iter().map(|(s, f)| (*s, f.iter().map(|f| &*f.rel).collect())).collect();
        assert_eq!(got, vec![(0, vec!["x"]), (1, vec!["b", "a"])]);
    }
}
