//! Stage 5, delete: documents whose records are gone from files the scan is
//! the authority on (read in full, or gone), under `--on-delete`: archive
//! (copy into `mirror_archive`, then delete), delete, or keep. The
//! mass-delete guard holds back a change that would remove too much of a
//! collection at once (a file truncated or removed by mistake).
//!
//! Invariants: a document of a file that could not be read, or that has a
//! rejected record without a usable id, is never deleted; a rejected
//! record's document is never deleted because of the reject; a delete only
//! removes the version the core saw (its content hash).

use std::collections::{HashMap, HashSet};

use super::memo::Memory;
use super::scan::Scanned;
use super::target::{Existing, Target};
use super::{OnDelete, SourceRun};
use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::summary::count;

/// The documents to delete after a scan, and what the target said of every
/// document that looked gone (for watch's picture).
pub(super) struct Deletes {
    pub deletes: Vec<(String, Existing)>,
    pub details: HashMap<String, Existing>,
}

/// Find the documents whose records are gone from the files.
pub(super) async fn find<T: Target>(
    target: &T,
    spec: &SourceSpec,
    (scanned, memory): (&Scanned, Option<&Memory>),
    existing: &HashMap<String, Existing>,
) -> Result<Deletes, Fatal> {
    // Borrowed until the survivors are known: on a re-sync where every record
    // is unchanged, every id of the collection is a candidate at first.
    let mut gone: Vec<&String> =
        existing.keys().filter(|id| !scanned.firsts.has(id) && !scanned.protected_ids.contains(*id)).collect();
    drop_unchanged(&mut gone, (spec, scanned), memory);
    let gone: Vec<String> = gone.into_iter().cloned().collect();
    let details = if gone.is_empty() { HashMap::new() } else { target.existing(spec, &gone).await? };
    let mut deletes: Vec<(String, Existing)> = gone
        .iter()
        .filter_map(|id| {
            let ex = details.get(id)?;
            let src: &str = ex.source.as_deref()?;
            let authoritative = !scanned.no_deletes.contains(src)
                && (scanned.read_ok.contains(src)
                    || scanned.missing.contains(src)
                    || (scanned.complete && !scanned.bad.contains(src) && spec.owns_rel(src)));
            authoritative.then(|| (id.clone(), ex.clone()))
        })
        .collect();
    deletes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Deletes { deletes, details })
}

/// Keep in `gone` only the ids that are not of unchanged records: those the
/// scan listed, and those it left marked in watch's memo. Where the memo no
/// longer holds every marked record, nothing is deleted this time (the next
/// scan of the file decides).
fn drop_unchanged(gone: &mut Vec<&String>, (spec, scanned): (&SourceSpec, &Scanned), memory: Option<&Memory>) {
    let marked = &scanned.marked;
    if gone.is_empty() || scanned.unchanged.len() + marked.count == 0 {
        return;
    }
    let mut unchanged: HashSet<&str, foldhash::fast::RandomState> = HashSet::default();
    unchanged.reserve(scanned.unchanged.len() + marked.count);
    unchanged.extend(scanned.unchanged.iter());
    let guard = memory.filter(|_| marked.count > 0).and_then(|m| m.memo.lock().ok());
    let mut read = 0;
    for rel in &marked.rels {
        if let Some(f) = guard.as_ref().and_then(|m| m.get(rel)) {
            for (_, r) in f.recs.marked(marked.pass, true) {
                unchanged.insert(r.id());
                read += 1;
            }
        }
    }
    if read < marked.count {
        tracing::warn!(
            collection = %spec.collection,
            marked = marked.count,
            found = read,
            "Deletes left to the next scan: watch's memory no longer holds every unchanged record of this one"
        );
        gone.clear();
        return;
    }
    gone.retain(|id| !unchanged.contains(id.as_str()));
}

impl<T: Target> SourceRun<'_, T> {
    /// Apply the deletes under `--on-delete` and the mass-delete guard
    /// (`whole`: the collection's size before the run, when the run read it
    /// whole); returns the ids that were removed.
    pub(super) async fn apply_deletes(
        &mut self,
        deletes: Vec<(String, Existing)>,
        whole: Option<usize>,
    ) -> Result<Vec<String>, Fatal> {
        if deletes.is_empty() || self.engine.on_delete == OnDelete::Keep {
            return Ok(Vec::new());
        }
        let held = self.hold(deletes.len(), whole).await;
        if let Some(memory) = self.memory {
            memory.note_held(&self.spec.collection, deletes.iter().map(|(id, _)| id), held);
        }
        if held {
            return Ok(Vec::new());
        }
        let (engine, spec) = (self.engine, &self.spec);
        let archive = engine.on_delete == OnDelete::Archive;
        let results = self.target.delete(spec, &deletes, archive).await?;
        let mut removed = Vec::new();
        for ((id, ex), deleted) in deletes.into_iter().zip(results) {
            if deleted {
                if archive {
                    self.summary.archived += 1;
                } else {
                    self.summary.deleted += 1;
                }
                tracing::info!(collection = %spec.collection, id = %id, source = ex.source.as_deref().unwrap_or(""), action = if archive { "archived" } else { "deleted" }, "Record gone from the files");
                removed.push(id);
            }
        }
        if let Some(memory) = self.memory {
            memory.record_deletes(&spec.collection, removed.len());
        }
        Ok(removed)
    }
}

impl<T: Target> SourceRun<'_, T> {
    /// The mass-delete guard: hold these `n` deletes back (and count and log
    /// them) when, with the deletes of the last `--mass-delete-window-secs`,
    /// they would remove at least 2 documents and more than
    /// `--mass-delete-fraction` of the collection. The collection is counted
    /// as a full reconcile counts it, whatever the scope, so a start from the
    /// checkpoint holds back what a full reconcile would: as it was before the
    /// run wrote to it (`whole`, when the run read all of it; else the
    /// target's count less the run's inserts, as what the target holds for
    /// some files is not the collection), or, when all of that would go, as
    /// it is now.
    pub(super) async fn hold(&mut self, n: usize, whole: Option<usize>) -> bool {
        let (engine, spec) = (self.engine, &self.spec);
        let released = self.memory.is_some_and(|m| m.release_held.load(std::sync::atomic::Ordering::Relaxed));
        if engine.allow_mass_delete || released {
            return false;
        }
        let counted = match whole {
            Some(_) => None,
            None => Some(self.count_now().await),
        };
        let inserted = usize::try_from(self.summary.inserted).unwrap_or(usize::MAX);
        let before = whole.or(counted.map(|c| c.saturating_sub(inserted))).unwrap_or(0);
        let now = match (before > n, counted) {
            (true, _) => before,
            (false, Some(c)) => c,
            (false, None) => self.count_now().await,
        };
        let recent = self.memory.map_or(0, |m| m.recent_deletes(&spec.collection, engine.mass_delete_window));
        // The collection as it was when the window began, and what would go from it.
        let (within, total) = (n + recent, now.saturating_add(recent));
        let fraction = if total == 0 { 1.0 } else { ratio(within, total) };
        if within < 2 || fraction <= engine.mass_delete_fraction {
            return false;
        }
        self.summary.deletes_held += count(n);
        tracing::warn!(
            collection = %spec.collection,
            deletes = n,
            deleted_recently = recent,
            documents = total,
            window_s = engine.mass_delete_window.as_secs(),
            "Holding back deletes: with those of the last {} s they would remove more than {:.0}% of the collection \
             (files truncated or removed by mistake?). Rerun with --allow-mass-delete, or send watch SIGUSR1, \
             if this is intended",
            engine.mass_delete_window.as_secs(),
            engine.mass_delete_fraction * 100.0
        );
        true
    }

    /// The collection's size now, as the target estimates it.
    async fn count_now(&self) -> usize {
        usize::try_from(self.target.count(&self.spec).await.unwrap_or(0)).unwrap_or(usize::MAX)
    }
}

fn ratio(n: usize, total: usize) -> f64 {
    // Counts of documents are far below 2^53, where f64 is exact.
    f64::from(u32::try_from(n).unwrap_or(u32::MAX)) / f64::from(u32::try_from(total).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::layout::Layout;
    use crate::reconcile::memo::{FileMemo, Marked, Recs};
    use crate::reconcile::packed::mark;

    #[test]
    fn ids_left_marked_in_the_memo_are_not_gone_and_a_memo_that_lost_them_deletes_nothing() {
        let spec = Layout::builtin().sources.into_iter().find(|s| s.collection == "users").unwrap();
        let rel: Arc<str> = Arc::from("data/users.json");
        let memory = Memory::memo_only();
        let mut recs = Recs::default();
        for (h, id) in [(1, "a"), (2, "b"), (3, "c")] {
            recs.insert(h, id, []);
        }
        for h in [1, 2] {
            recs.look_up_all(&[h]).slot(0).unwrap().mark(mark(8));
        }
        memory.memo.lock().unwrap().insert(rel.clone(), FileMemo { recs, ..FileMemo::default() });
        let mut scanned = Scanned::default();
        scanned.unchanged.push("d");
        scanned.marked = Marked { rels: vec![rel.clone()], pass: mark(8), count: 2 };
        let ids: Vec<String> = ["a", "c", "d", "e"].map(String::from).into();
        let left = |scanned: &Scanned, memory: Option<&Memory>| {
            let mut gone: Vec<&String> = ids.iter().collect();
            drop_unchanged(&mut gone, (&spec, scanned), memory);
            gone.into_iter().cloned().collect::<Vec<String>>()
        };
        assert_eq!(left(&scanned, Some(&memory)), ["c", "e"]);
        // No memory, a memo without the file, a mark counted that is not there: nothing goes.
        assert!(left(&scanned, None).is_empty());
        scanned.marked.count = 3;
        assert!(left(&scanned, Some(&memory)).is_empty());
        scanned.marked.count = 2;
        memory.memo.lock().unwrap().clear();
        assert!(left(&scanned, Some(&memory)).is_empty());
        // Nothing marked: only the listed ids stay.
        scanned.marked = Marked::default();
        assert_eq!(left(&scanned, None), ["a", "c", "e"]);
    }
}
