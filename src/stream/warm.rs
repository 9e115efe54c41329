//! A start from a checkpoint: instead of reading every collection and
//! comparing every record, check what changed since the last proof.
//!
//! 1. The checkpoint must belong to this database and to today's layout,
//!    mapping rules and indexes, and its stream position must still resume.
//! 2. The stream, read from that position to now, names every document
//!    anyone wrote or deleted since (the mirror included).
//! 3. Each source file is hashed: one whose bytes match the checkpoint's
//!    digest is what the proof read, and is not compared again. A file whose
//!    stamp (size, mtime, ctime, inode, device) is the one stored with that
//!    digest is not even read: see [`crate::source::Stamp::settled`] for why
//!    the stamp proves the bytes (only on the local filesystems known to
//!    keep a ctime; on any other, a network one above all, every file is hashed).
//! 4. The changed files, the files gone, and the files holding a touched
//!    document are reconciled as watch reconciles a changed file: with the
//!    memo loaded from the checkpoint, so only changed or touched records are
//!    compared with MongoDB. Deletes, rejects, the mass-delete guard and
//!    newer-wins are the core's, exactly as in a full reconcile.
//!
//! Whenever a step cannot give its proof, the start is [`Start::Cold`] with
//! the reason, and the caller reconciles in full.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bson::Bson;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Head, Known, Proof, Stored};
use super::proof::{changed_large_files, digests, file_of};
use super::tail::Tail;
use super::{drain, open, position, Events};
use crate::error::Fatal;
use crate::reconcile::memo::{Memory, RawHash};
use crate::reconcile::target::Target;
use crate::reconcile::{reconcile, Core, Engine, RunOptions, Scope};
use crate::sink::Sink;
use crate::source::{self, SourceFile};
use crate::summary::Summary;

/// Others' writes kept as pending at most (beyond, the next start drains them from the stream).
const PENDING_LIMIT: usize = 50_000;

/// What a warm start did.
pub struct Warm {
    pub summary: Summary,
    pub head: Head,
    /// The checkpoint groups it loaded (a save may rewrite only these).
    pub loaded: HashSet<String>,
    /// The stream position after the catch-up and before any read.
    pub from: Bson,
    /// The stream read while the start reconciled.
    pub tail: Tail,
    /// Files compared, documents rechecked because the stream showed them.
    pub files: usize,
    /// Files found unchanged by their stamp, without reading them.
    pub by_stamp: usize,
    pub touched: usize,
}

/// How a start went.
pub enum Start {
    Warm(Box<Warm>),
    /// A full reconcile is needed, for this reason.
    Cold(String),
}

fn cold(reason: impl Into<String>) -> Result<Start, Fatal> {
    Ok(Start::Cold(reason.into()))
}

/// The mirrored collections.
pub fn collections(engine: &Engine) -> HashSet<String> {
    engine.layout.sources.iter().map(|s| s.collection.clone()).collect()
}

/// Start from the checkpoint, if it proves enough (see the module docs).
// Long: the steps of the proof in order, each with its own way to give up.
pub async fn start(core: Core<'_, Sink>, opts: RunOptions, cancel: &CancellationToken) -> Result<Start, Fatal> {
    let (engine, sink) = (core.engine, core.target);
    let t0 = std::time::Instant::now();
    let Some(memory) = core.memory else { return cold("no memory to start from") };
    let Some(mut head) = checkpoint::load_head(sink).await? else { return cold("no checkpoint yet") };
    if head.database_id != crate::state::database_id(sink).await? {
        return cold("the checkpoint was made for another database");
    }
    if head.fingerprint != checkpoint::fingerprint(engine) {
        return cold("the layout, mapping rules, indexes, --conflict or --on-delete changed since the checkpoint");
    }
    let n = super::fence(sink).await?;
    let mut stream = match open(sink, Some(&head.token), Events::All, super::Pace::CatchUp).await {
        Ok(s) => s,
        Err(u) => return cold(u.to_string()),
    };
    let mut touched = match drain(&mut stream, &collections(engine), engine.checkpoint_max_changes, &n).await {
        Ok(t) => t,
        Err(reason) => return cold(reason),
    };
    let events = touched.events;
    let Some(from) = position(&stream) else { return cold("the change stream gave no position") };
    drop(stream);
    for (c, id) in &head.pending {
        touched.ids.entry(c.clone()).or_default().insert(id.clone());
    }
    let t_stream = t0.elapsed();
    let tail = Tail::start(sink, from.clone(), collections(engine), PENDING_LIMIT);
    let e = engine.clone();
    // A large file's memo (a group of its own) is the slowest part to load:
    // where its stamp already shows the file changed, the load runs while
    // every file is proven.
    let early = changed_large_files(engine, &head);
    let list = head.files.clone();
    let proving = tokio::task::spawn_blocking(move || digests(&e, &list));
    let (proven, early_loaded) = tokio::join!(proving, checkpoint::load_groups(sink, &head, &early));
    let (now, by_stamp, read) = proven.map_err(Fatal::task("digest"))??;
    let early_loaded = early_loaded?;
    let t_digest = t0.elapsed();
    let mut scan: BTreeMap<String, SourceFile> = BTreeMap::new();
    let mut same: Vec<(&str, u64)> = Vec::new();
    // The proving thread is done with the list: this is its only holder again.
    // Both are in name order: walked side by side, not looked up name by name.
    let mut gone: Vec<String> = Vec::new();
    let mut list = Arc::make_mut(&mut head.files).iter_mut().peekable();
    for (rel, (file, digest, stamp)) in &now {
        while let Some((r, _)) = list.next_if(|(r, _)| r.as_str() < &**rel) {
            gone.push(r.clone());
        }
        match list.next_if(|(r, _)| r.as_str() == &**rel) {
            Some((_, f)) if digest.is_some() && f.digest == *digest => {
                // Read again and found as settled (touched, chmod'ed, rewritten
                // with the same bytes): its stamp now is what proves them.
                f.stamp = *stamp;
                same.push((rel, f.records));
            }
            _ => {
                scan.insert(rel.to_string(), file.clone());
            }
        }
    }
    gone.extend(list.map(|(r, _)| r.clone()));
    for rel in gone {
        if let Some(f) = file_of(engine, &rel) {
            scan.insert(rel, f);
        }
    }
    let (mut recheck, unresolved) = touched_files(engine, sink, &touched.ids).await?;
    let mut groups = groups_to_load(engine, &head, scan.keys().chain(recheck.keys()), &unresolved);
    let t_touched = t0.elapsed();
    let rest: HashSet<String> = groups.difference(&early).cloned().collect();
    let mut loaded = checkpoint::load_groups(sink, &head, &rest).await?;
    loaded.extend(early_loaded);
    let groups_early = early.len();
    groups.extend(early);
    let t_groups = t0.elapsed();
    memory.partial.store(true, std::sync::atomic::Ordering::Relaxed);
    {
        let mut memo = memory.memo.lock().map_err(|_| Fatal::Internal("the memo lock is poisoned".into()))?;
        memo.extend(loaded);
        for (spec_idx, ids) in &unresolved {
            let spec = &engine.layout.sources[*spec_idx];
            for (rel, fm) in memo.iter().filter(|(rel, _)| spec.owns_rel(rel)) {
                for rec in fm.recs.values().filter(|r| ids.contains(r.id())) {
                    recheck.entry(rel.to_string()).or_default().insert(rec.id().to_string());
                }
            }
        }
        // A touched record is no longer "as settled": its memo entry is moved
        // to a key no text has, so the scan maps it again and the core compares
        // it with MongoDB (and sees it gone, if it is gone from the file).
        for (rel, ids) in &recheck {
            if let Some(fm) = memo.get_mut(rel.as_str()) {
                fm.digest = None;
                fm.stamp = None;
                let keys: Vec<(RawHash, String)> = fm
                    .recs
                    .iter()
                    .filter(|(_, r)| ids.contains(r.id()))
                    .map(|(h, r)| (h, r.id().to_string()))
                    .collect();
                let mut placed = HashSet::new();
                for (h, id) in keys {
                    fm.recs.rekey(&h, !h);
                    placed.insert(id);
                }
                // A document the mirror wrote from this file after the
                // checkpoint: in the memo as a record to look for, so that
                // if its record is gone now, its document goes too.
                for id in ids.iter().filter(|id| !placed.contains(*id)) {
                    let key = xxhash_rust::xxh3::xxh3_128(format!("\u{0}touched\u{0}{id}").as_bytes());
                    fm.recs.insert(key, id, []);
                }
            }
        }
    }
    for rel in recheck.keys() {
        if let Some(f) = now.get(rel.as_str()).map(|(f, _, _)| f.clone()).or_else(|| file_of(engine, rel)) {
            scan.insert(rel.clone(), f);
        }
    }
    // The bytes of the large files read above, for those the scan reads.
    if let Ok(mut taken) = memory.read.lock() {
        taken.extend(read.into_iter().filter(|(rel, _)| scan.contains_key(rel)));
    }
    let files: Vec<SourceFile> = scan.into_values().collect();
    let n = files.len();
    let summary = if files.is_empty() {
        Ok(Summary::default())
    } else {
        reconcile(core, Scope::Files(files), opts, cancel).await
    };
    if let Ok(mut left) = memory.read.lock() {
        left.clear();
    }
    let mut summary = summary?;
    // Files found as the proof read them: read (their bytes) and unchanged.
    for (_, records) in same.iter().filter(|(rel, _)| !recheck.contains_key(*rel)) {
        summary.files += 1;
        summary.read += records;
        summary.unchanged += records;
    }
    let touched = touched.len();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(
        head_and_stream_ms = ms(t_stream),
        stream_events = events,
        digests_ms = ms(t_digest - t_stream),
        files_proven_by_stamp = by_stamp,
        touched_ms = ms(t_touched - t_digest),
        groups_ms = ms(t_groups - t_touched),
        groups = groups.len(),
        groups_early,
        reconcile_ms = ms(t0.elapsed() - t_groups),
        "Warm start steps"
    );
    Ok(Start::Warm(Box::new(Warm { summary, head, loaded: groups, from, tail, files: n, by_stamp, touched })))
}

/// The files that hold the touched documents (by the `_mirror.source` MongoDB
/// has for them), and per source the ids MongoDB could not place (deleted,
/// or not the mirror's): those are looked up in the memo.
async fn touched_files(
    engine: &Engine,
    sink: &Sink,
    touched: &HashMap<String, HashSet<String>>,
) -> Result<(HashMap<String, HashSet<String>>, Vec<(usize, HashSet<String>)>), Fatal> {
    let mut recheck: HashMap<String, HashSet<String>> = HashMap::new();
    let mut unresolved = Vec::new();
    for (coll, ids) in touched {
        for (i, spec) in engine.layout.sources.iter().enumerate().filter(|(_, s)| &s.collection == coll) {
            let list: Vec<String> = ids.iter().cloned().collect();
            let found = sink.existing(spec, &list).await?;
            let mut left = HashSet::new();
            for id in ids {
                match found.get(id).and_then(|e| e.source.as_deref().map(str::to_string)).filter(|r| spec.owns_rel(r)) {
                    Some(rel) => {
                        recheck.entry(rel).or_default().insert(id.clone());
                    }
                    None => {
                        left.insert(id.clone());
                    }
                }
            }
            if !left.is_empty() {
                unresolved.push((i, left));
            }
        }
    }
    Ok((recheck, unresolved))
}

/// The checkpoint groups that hold the memos of these files (and of every
/// file of a source with unplaced ids).
fn groups_to_load<'a>(
    engine: &Engine,
    head: &Head,
    rels: impl Iterator<Item = &'a String>,
    unresolved: &[(usize, HashSet<String>)],
) -> HashSet<String> {
    let group_of = |rel: &str| {
        head.files
            .get(rel)
            .map(|f| f.group.clone())
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| checkpoint::bucket(rel))
    };
    let mut groups: HashSet<String> = rels.map(|r| group_of(r)).collect();
    for (spec_idx, _) in unresolved {
        let spec = &engine.layout.sources[*spec_idx];
        groups.extend(
            head.files.iter().filter(|(r, f)| spec.owns_rel(r) && !f.group.is_empty()).map(|(_, f)| f.group.clone()),
        );
    }
    groups
}

/// After a run that proved the files and MongoDB agree as of `from` (a full
/// reconcile, or a warm start): store the checkpoint. The position stored is
/// now, past the run's own writes; what others wrote meanwhile is kept as
/// `pending`, checked on the next start. Problems are logged, never fatal:
/// without a checkpoint the next start is a full one.
pub async fn save_after(
    engine: &Arc<Engine>,
    sink: &Sink,
    memory: &Memory,
    tail: Tail,
    from: &Bson,
    known: Known<'_>,
    stored: Vec<Stored>,
) {
    let caught = match tail.finish(sink).await {
        Ok(c) => Ok(c),
        Err(why) => {
            // Read again from the run's start (the run's own writes filtered
            // on the server), unless that history is gone.
            tracing::debug!(%why, "Reading the stream again from the run's start");
            catch_up(sink, from, &collections(engine)).await
        }
    };
    if let Err(e) = try_save(engine, sink, memory, (from, caught), known, (Vec::new(), &stored)).await {
        tracing::warn!(error = %e, "Cannot store the checkpoint; the next start reconciles in full");
    }
}

/// Where the stream stands after a run: the position a run started from,
/// and what reading on from it gave (the position past the run and others'
/// writes meanwhile, or why there is none).
type Caught<'a> = (&'a Bson, Result<(Bson, Vec<(String, String)>), String>);

async fn try_save(
    engine: &Arc<Engine>,
    sink: &Sink,
    memory: &Memory,
    (from, caught): Caught<'_>,
    known: Known<'_>,
    (carry, stored): (Vec<(String, String)>, &[Stored]),
) -> Result<(), Fatal> {
    let (token, mut pending) = match caught {
        Ok(t) => t,
        Err(reason) => {
            tracing::info!(%reason, "Checkpoint kept at the run's start");
            (from.clone(), Vec::new())
        }
    };
    pending.extend(carry);
    // Documents whose deletes the guard held back: their records are gone
    // from the memo, so only this makes the next start look at them again
    // (and hold them again, or apply them, as a full reconcile would).
    pending.extend(memory.held_deletes());
    pending.sort();
    pending.dedup();
    // Files on disk without a memo: listed name by name against the names
    // the memo (and the memos stored early) have, not as a list of every file.
    let named: HashSet<Arc<str>> = {
        let memo = memory.memo.lock().map_err(|_| Fatal::Internal("the memo lock is poisoned".into()))?;
        memo.keys().chain(stored.iter().map(|s| &s.rel)).cloned().collect()
    };
    let e = engine.clone();
    let others = tokio::task::spawn_blocking(move || {
        let mut others = Vec::new();
        for (i, spec) in e.layout.sources.iter().enumerate() {
            // (A folder that cannot be listed now: its files keep what the memo says.)
            let _ = source::visit(&e.layout, &e.roots, i, &mut |rel| {
                let rel = source::labelled(spec, rel);
                if !named.contains(rel.as_str()) {
                    others.push(rel);
                }
            });
        }
        others
    })
    .await
    .map_err(Fatal::task("discover"))?;
    let database_id = crate::state::database_id(sink).await?;
    let proof = Proof { database_id: &database_id, token: &token, pending: &pending, others: &others, stored };
    checkpoint::save(sink, engine, memory, proof, known).await
}

/// The position now, and the documents others wrote since `from`.
async fn catch_up(
    sink: &Sink,
    from: &Bson,
    collections: &HashSet<String>,
) -> Result<(Bson, Vec<(String, String)>), String> {
    let n = super::fence(sink).await.map_err(|e| e.to_string())?;
    let mut stream = open(sink, Some(from), Events::Others, super::Pace::CatchUp).await.map_err(|u| u.to_string())?;
    let touched = drain(&mut stream, collections, PENDING_LIMIT, &n).await?;
    let token = position(&stream).ok_or("the change stream gave no position")?;
    let pending = touched.ids.into_iter().flat_map(|(c, ids)| ids.into_iter().map(move |i| (c.clone(), i))).collect();
    Ok((token, pending))
}

/// The start of `sync` and `watch`: from the checkpoint when it proves
/// enough, else a full reconcile (the log says why, in one line); either
/// way a new checkpoint is stored after it (not on a dry run).
pub async fn run(
    engine: &Arc<Engine>,
    sink: &Sink,
    memory: &Arc<Memory>,
    full: bool,
    opts: RunOptions,
    cancel: &CancellationToken,
) -> Result<Summary, Fatal> {
    if opts.dry_run {
        return reconcile(Core { engine, target: sink, memory: None }, Scope::Full, opts, cancel).await;
    }
    let core = Core { engine, target: sink, memory: Some(memory) };
    let reason = if full {
        "--full".to_string()
    } else {
        match start(core, opts, cancel).await? {
            Start::Warm(w) => {
                tracing::info!(
                    checkpoint_at = %w.head.at.try_to_rfc3339_string().unwrap_or_default(),
                    files_compared = w.files,
                    files_proven_by_stamp = w.by_stamp,
                    documents_changed_in_mongodb = w.touched,
                    "Started from the checkpoint: only what changed since was compared"
                );
                let w = *w;
                let known = Known::Groups { prev: &w.head, loaded: &w.loaded };
                save_after(engine, sink, memory, w.tail, &w.from, known, Vec::new()).await;
                return Ok(w.summary);
            }
            Start::Cold(reason) => reason,
        }
    };
    if reason == "no checkpoint yet" || full {
        tracing::info!(%reason, "Full reconcile");
    } else {
        tracing::warn!(%reason, "Full reconcile: the checkpoint cannot be used");
    }
    let from = match super::position_now(sink).await {
        Ok(t) => Some(t),
        Err(u) => {
            tracing::warn!(reason = %u, "No checkpoint can be stored: every start reconciles in full");
            None
        }
    };
    prove(engine, sink, memory, from, Scope::Full, opts, cancel).await
}

/// watch, after a warm start: the memos of the files the start did not need,
/// so that a later change to them is compared record by record too. A memo
/// already there (a file settled since) is kept.
pub async fn load_rest(sink: &Sink, memory: &Memory) {
    if let Err(e) = try_load_rest(sink, memory).await {
        tracing::info!(error = %e, "Cannot load the rest of the checkpoint; changed files are compared in full until the next rescan");
    }
}

async fn try_load_rest(sink: &Sink, memory: &Memory) -> Result<(), Fatal> {
    // After a full start the memo is whole already. (Marked whole only once
    // loaded: a stop before that loads it first, see [`save_on_stop`].)
    if !memory.partial.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let Some(head) = checkpoint::load_head(sink).await? else { return Ok(()) };
    let groups: HashSet<String> = head.groups.keys().cloned().collect();
    let loaded = checkpoint::load_groups(sink, &head, &groups).await?;
    let mut memo = memory.memo.lock().map_err(|_| Fatal::Internal("the memo lock is poisoned".into()))?;
    for (rel, m) in loaded {
        memo.entry(rel).or_insert(m);
    }
    memory.partial.store(false, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// [`save_on_stop`], within a few seconds, logged.
pub async fn stopping(engine: &Arc<Engine>, sink: &Sink, memory: &Memory) {
    match tokio::time::timeout(std::time::Duration::from_secs(5), save_on_stop(engine, sink, memory)).await {
        Ok(Ok(())) => tracing::debug!("Checkpoint stored"),
        Ok(Err(e)) => tracing::info!(error = %e, "Cannot store the checkpoint on stop"),
        Err(_) => tracing::info!("Storing the checkpoint on stop took too long; the last one stays"),
    }
}

/// watch, on SIGTERM: store what it settled since the last checkpoint. The
/// files as watch left them are settled (a file whose reconcile failed has
/// no memo, so it is compared in full next time); what others wrote in
/// MongoDB since the last checkpoint is kept as pending, with the pending
/// that checkpoint carried (watch does not recheck them itself).
pub async fn save_on_stop(engine: &Arc<Engine>, sink: &Sink, memory: &Memory) -> Result<(), Fatal> {
    // Stopped before the rest of the memo was loaded after a start from the
    // checkpoint: a save of only the memos loaded would have the next start
    // compare every other file in full. The rest is loaded first (if that
    // fails, the last checkpoint stays: the stream since shows the next
    // start what watch wrote).
    try_load_rest(sink, memory).await?;
    if memory.partial.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!("The memo is not all loaded; the last checkpoint stays");
        return Ok(());
    }
    let Some(head) = checkpoint::load_head_bare(sink).await? else { return Ok(()) };
    if head.fingerprint != checkpoint::fingerprint(engine) {
        return Ok(());
    }
    let caught = catch_up(sink, &head.token, &collections(engine)).await;
    try_save(engine, sink, memory, (&head.token, caught), Known::All, (head.pending.clone(), &[])).await
}

/// watch's reconciles: a full one is a proof like the first, so it stores a
/// new checkpoint from a stream position taken before its reads.
pub async fn reconcile_and_prove(
    engine: &Arc<Engine>,
    sink: &Sink,
    memory: &Arc<Memory>,
    scope: Scope,
    opts: RunOptions,
    cancel: &CancellationToken,
) -> Result<Summary, Fatal> {
    let from = if matches!(scope, Scope::Full) { super::position_now(sink).await.ok() } else { None };
    prove(engine, sink, memory, from, scope, opts, cancel).await
}

/// Reconcile a scope; with a stream position from before it (`from`, a full
/// reconcile's), read the stream beside it and store a checkpoint after it.
async fn prove(
    engine: &Arc<Engine>,
    sink: &Sink,
    memory: &Arc<Memory>,
    from: Option<Bson>,
    scope: Scope,
    opts: RunOptions,
    cancel: &CancellationToken,
) -> Result<Summary, Fatal> {
    let tail = from.as_ref().map(|f| Tail::start(sink, f.clone(), collections(engine), PENDING_LIMIT));
    let whole = matches!(scope, Scope::Full);
    // sync: large memos stored as their sources settle, not held to the end.
    let spilling = (whole && memory.memo_only && tail.is_some()).then(|| super::spill::start(sink, memory));
    let summary = reconcile(Core { engine, target: sink, memory: Some(memory) }, scope, opts, cancel).await;
    let stored = match spilling {
        Some(s) => s.finish(memory).await,
        None => Ok(Vec::new()),
    };
    let summary = summary?;
    if whole {
        // A full reconcile leaves every file's memo.
        memory.partial.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    if let (Some(from), Some(tail)) = (from, tail) {
        match stored {
            Ok(stored) => save_after(engine, sink, memory, tail, &from, Known::All, stored).await,
            Err(e) => tracing::warn!(error = %e, "Cannot store the checkpoint; the next start reconciles in full"),
        }
    }
    Ok(summary)
}
