//! One source through stages 3 to 6: chunks of candidates are planned and
//! written as they come ([`SourceRun::chunk`]); deletes, watch's memory and
//! the rejects are settled once the whole scan is in ([`SourceRun::finish`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::delete;
use super::memo::{FileMemo, Memory, Recs};
use super::plan::{plan, print_deletes, print_plan};
use super::rejects::RejectRecord;
use super::scan::{Candidate, Scanned};
use super::settle::{commit_memo, remember, store_rejects, Learnt, RejectScope};
use super::target::{Existing, Target};
use super::{Engine, OnDelete, RunOptions, SourceRun};
use crate::error::Fatal;
use crate::mapping::Reject;
use crate::source;
use crate::summary::{count, Summary};

impl<'a, T: Target> SourceRun<'a, T> {
    pub fn new(
        engine: &'a Arc<Engine>,
        target: &'a T,
        memory: Option<&'a Memory>,
        stop: &'a CancellationToken,
        spec_idx: usize,
        opts: RunOptions,
    ) -> Self {
        SourceRun {
            engine,
            target,
            memory,
            stop,
            spec: engine.layout.sources[spec_idx].clone(),
            opts,
            summary: Summary::default(),
            rejects: Vec::new(),
            memo_pending: Default::default(),
            fresh: Vec::new(),
        }
    }

    /// Compare one chunk of candidates with what the target holds and write the difference.
    pub async fn chunk(
        &mut self,
        candidates: Vec<Candidate>,
        existing: &HashMap<String, Existing>,
    ) -> Result<(), Fatal> {
        if candidates.is_empty() {
            return Ok(());
        }
        // Stopping (SIGTERM): what is written stays written; the rest is the
        // next start's full reconcile.
        if self.stop.is_cancelled() {
            return Err(Fatal::Interrupted);
        }
        self.note(&candidates);
        let (engine, target) = (self.engine, self.target);
        let plan = plan(engine, target, &self.spec, candidates, existing, &mut self.rejects, self.stop).await?;
        self.summary.unchanged += plan.unchanged;
        for c in &plan.newer {
            self.summary.skipped_newer += 1;
            tracing::info!(collection = %self.spec.collection, id = %c.mapped.id, source = %c.locate(), "Kept newer document in MongoDB (newer-wins)");
        }
        if self.opts.dry_run {
            print_plan(&self.spec, &plan);
            self.summary.inserted += count(plan.inserts.len());
            self.summary.updated += count(plan.updates.len());
            return Ok(());
        }
        engine.metrics.set_phase(format!("{}: writing", self.spec.collection));
        engine.metrics.ops_planned.fetch_add(count(plan.inserts.len() + plan.updates.len()), Ordering::Relaxed);
        self.apply_writes(plan.inserts, plan.updates).await
    }

    /// watch: the memo entries of the candidates, committed once settled.
    fn note(&mut self, candidates: &[Candidate]) {
        if self.memory.is_none() {
            return;
        }
        for c in candidates {
            if let Some(h) = c.raw_hash {
                let uniques = c.emails.iter().map(|(f, v)| (&**f, &**v));
                if let Some(staged) = self.memo_pending.get_mut(&*c.rel) {
                    staged.recs.insert(h, &c.id, uniques);
                } else {
                    // The scan's shared name of the file: the memo keeps it.
                    let mut recs = Recs::bulk();
                    recs.insert(h, &c.id, uniques);
                    self.memo_pending.insert(c.rel.clone(), FileMemo { recs, ..FileMemo::default() });
                }
            }
        }
    }

    /// Deletes, watch's memory and the rejects, once every chunk is in.
    pub async fn finish(mut self, mut scanned: Scanned, existing: HashMap<String, Existing>) -> Result<Summary, Fatal> {
        self.summary.files = scanned.files;
        self.summary.read = scanned.records;
        self.summary.unchanged += count(scanned.unchanged_len());
        let mut rejects = std::mem::take(&mut scanned.rejects);
        rejects.append(&mut self.rejects);
        let started = std::time::Instant::now();
        let found = delete::find(self.target, &self.spec, (&scanned, self.memory), &existing).await?;
        let found_at = started.elapsed();
        // A whole source's `existing` is the whole collection; some files' is not.
        let whole = scanned.complete.then_some(existing.len());
        if self.opts.dry_run {
            return Ok(self.dry_run_end(&scanned, found.deletes, &rejects, whole).await);
        }
        self.engine.metrics.records_scanned.fetch_add(scanned.records, Ordering::Relaxed);
        let removed = self.apply_deletes(found.deletes, whole).await?;
        if let Some(memory) = self.memory {
            self.update_memory(memory, &mut scanned, &rejects, &existing, &found.details, removed);
        }
        let applied_at = started.elapsed();
        // A whole collection's worth of small allocations: freed off the async workers.
        let unchanged = std::mem::take(&mut scanned.unchanged);
        tokio::task::spawn_blocking(move || drop((existing, unchanged)));
        let collection = self.spec.collection.clone();
        let summary = self.report(scanned, rejects).await?;
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(
            %collection,
            find_deletes_ms = ms(found_at),
            deletes_and_memory_ms = ms(applied_at - found_at),
            rejects_ms = ms(started.elapsed() - applied_at),
            "Finished the source"
        );
        Ok(summary)
    }

    /// `--dry-run`: the deletes as the real run would make them (guard, archive or delete).
    async fn dry_run_end(
        &mut self,
        scanned: &Scanned,
        deletes: Vec<(String, Existing)>,
        rejects: &[RejectRecord],
        whole: Option<usize>,
    ) -> Summary {
        let on_delete = self.engine.on_delete;
        let n = deletes.len();
        let held = on_delete != OnDelete::Keep && n > 0 && self.hold(n, whole).await;
        let mut summary = std::mem::take(&mut self.summary);
        if held {
            println!("would hold back {n} deletes of {} (mass-delete guard)", self.spec.collection);
        } else {
            match on_delete {
                OnDelete::Archive => summary.archived = count(n),
                OnDelete::Delete => summary.deleted = count(n),
                OnDelete::Keep => {}
            }
            print_deletes(&self.spec, &deletes, on_delete);
        }
        summary.rejected = count(rejects.len());
        summary.bad_files = count(scanned.bad.len());
        for r in rejects {
            println!("would reject {} {}: {}", self.spec.collection, r.locate(), r.reason);
        }
        summary
    }

    /// Commit the memo entries of every settled record and update the picture.
    fn update_memory(
        &mut self,
        memory: &Memory,
        scanned: &mut Scanned,
        rejects: &[RejectRecord],
        existing: &HashMap<String, Existing>,
        details: &HashMap<String, Existing>,
        removed: Vec<String>,
    ) {
        // Every record that was settled (written, unchanged, or left alone because
        // the target is newer) is memoised; rejected ones are mapped again next time.
        let rejected: HashSet<&str> = rejects.iter().filter_map(|r| r.id.as_deref()).collect();
        let mut next = std::mem::take(&mut self.memo_pending);
        if !rejected.is_empty() {
            for staged in next.values_mut() {
                staged.recs.retain(|_, r| !rejected.contains(r.id()));
            }
        }
        // A file with a rejected record is read again even when its bytes are
        // the same: a reject can clear without the file changing (an email
        // released by another document).
        for r in rejects {
            scanned.digests.remove(r.rel.as_str());
        }
        // Deletes held back by the guard are not settled either: the files are
        // read again until they are applied (or released).
        if self.summary.deletes_held > 0 {
            scanned.digests.clear();
        }
        if let Ok(mut memo) = memory.memo.lock() {
            commit_memo(&self.spec, &mut memo, scanned, next);
        }
        memory.spill_settled(scanned.read_ok.iter());
        let learnt = Learnt {
            complete: scanned.complete,
            existing,
            details,
            firsts: &scanned.firsts,
            written: std::mem::take(&mut self.fresh),
            removed,
        };
        remember(memory, &self.spec, learnt);
    }

    /// Bad files for watch to retry, the rejects stored, the metrics recorded.
    async fn report(mut self, scanned: Scanned, mut rejects: Vec<RejectRecord>) -> Result<Summary, Fatal> {
        let (engine, spec) = (self.engine, &self.spec);
        let mut summary = std::mem::take(&mut self.summary);
        summary.bad_files = count(scanned.bad.len());
        let mut bad_paths: Vec<&Arc<str>> = scanned.bad.iter().collect();
        bad_paths.sort();
        let prefix = format!("{}/", spec.root.label());
        summary.bad_paths = bad_paths
            .into_iter()
            .filter_map(|rel| {
                let r = rel.strip_prefix(&prefix)?;
                Some(source::source_file(scanned.spec, spec, engine.roots.dir(spec.root), r))
            })
            .collect();
        let mut report_bad = scanned.bad.clone();
        if self.opts.defer_bad_files {
            rejects.retain(|r| !matches!(r.reason, Reject::File(_)));
            report_bad.clear();
        }
        summary.rejected = count(rejects.len());
        // A deferred bad file keeps its earlier rejects until it is judged.
        let complete = scanned.complete && report_bad.len() == scanned.bad.len();
        let scope = RejectScope {
            read_ok: &scanned.read_ok,
            bad: &report_bad,
            missing: &scanned.missing,
            settled: &scanned.identical,
            complete,
        };
        store_rejects(self.target, spec, scope, rejects, self.opts).await?;
        if summary.changed() {
            summary.changed_collections.push(spec.collection.clone());
        }
        engine.metrics.record_summary(&spec.collection, &summary);
        Ok(summary)
    }
}
