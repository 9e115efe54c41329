//! Stage 6, settle: what a reconcile of one source leaves behind once its
//! writes and deletes are done. The stored rejects are made to hold exactly
//! the current rejects of the files it read (new ones stored with plaintext
//! passwords hashed, cleared ones removed), and watch's memory is brought up
//! to date: the memo of every file read in full, and the picture.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bson::Bson;

use super::memo::{IdKey, Known, Memo, Memory, Staged};
use super::picture::Coll;
use super::rejects::RejectRecord;
use super::scan::Scanned;
use super::target::{Existing, Target};
use super::RunOptions;
use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::mapping::{self, Reject};

/// The files whose rejects a reconcile is the authority on.
pub struct RejectScope<'a> {
    pub read_ok: &'a HashSet<Arc<str>>,
    pub bad: &'a HashSet<Arc<str>>,
    pub missing: &'a HashSet<Arc<str>>,
    /// Files byte-for-byte as last settled, when every record of them was
    /// mirrored: they have no rejects now, whatever an earlier version had.
    pub settled: &'a HashSet<Arc<str>>,
    /// Every file of the source (rejects of vanished files are cleared too).
    pub complete: bool,
}

/// Make the stored rejects hold exactly the current rejects of the scanned
/// files: new ones are stored (plaintext passwords hashed), cleared ones removed.
pub async fn store_rejects<T: Target>(
    target: &T,
    spec: &SourceSpec,
    scope: RejectScope<'_>,
    rejects: Vec<RejectRecord>,
    opts: RunOptions,
) -> Result<(), Fatal> {
    let files: Option<Vec<String>> = (!scope.complete).then(|| {
        scope.read_ok.iter().chain(scope.bad).chain(scope.missing).chain(scope.settled).map(|r| r.to_string()).collect()
    });
    let stored = target.reject_keys(&spec.collection, files.as_deref()).await?;
    let current: HashSet<&str> = rejects.iter().map(|r| r.key.as_str()).collect();
    let mut new = Vec::new();
    for r in &rejects {
        let is_new = !stored.contains(&r.key);
        if is_new || opts.log_all_rejects {
            tracing::warn!(collection = %r.collection, source = %r.locate(), id = r.id.as_deref().unwrap_or(""), reason = r.reason.code(), "Rejected: {}", r.reason);
        }
        if is_new {
            new.push(r.clone());
        }
    }
    let new = safe_copies(spec, new).await?;
    target.add_rejects(&new).await?;
    let stale: Vec<String> = stored.into_iter().filter(|k| !current.contains(k.as_str())).collect();
    if !stale.is_empty() {
        target.drop_rejects(&stale).await?;
    }
    Ok(())
}

/// Turn the raw JSON kept in each new reject into the stored copy (bcrypt for
/// plaintext passwords: CPU work, off the async workers).
async fn safe_copies(spec: &SourceSpec, rejects: Vec<RejectRecord>) -> Result<Vec<RejectRecord>, Fatal> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || {
        rejects
            .into_iter()
            .map(|mut r| {
                if let Some(Bson::String(json)) = &r.record {
                    if matches!(r.reason, Reject::File(_)) {
                        r.record = None;
                    } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
                        r.record = Some(mapping::reject_copy(&spec, &v));
                    }
                }
                r
            })
            .collect()
    })
    .await
    .map_err(Fatal::task("reject"))
}

/// Make the memo of every file read in full hold what was mirrored from it:
/// entries of records that are gone are dropped, new ones added (no copies of
/// the entries that stay). O(changes) for a file the memo already covered.
pub fn commit_memo(spec: &SourceSpec, memo: &mut Memo, scanned: &Scanned, mut next: Staged) {
    for rel in &scanned.missing {
        memo.remove(rel);
    }
    if scanned.complete {
        // Files of this source that are gone (the memo holds every source's files).
        memo.retain(|rel, _| !spec.owns_rel(rel) || scanned.read_ok.contains(rel) || scanned.bad.contains(rel));
    }
    for rel in scanned.read_ok.iter().filter(|r| !scanned.memo_covered.contains(*r)) {
        // Not looked up in this scan: everything it holds now is in `next`.
        if let Some(m) = memo.get_mut(rel) {
            m.recs.clear();
        }
    }
    for v in &scanned.vanished {
        if let Some(m) = memo.get_mut(&*v.rel) {
            m.recs.remove(&v.raw_hash);
        }
    }
    // The staged files join the memo. When they are the more (200,000 job
    // files mapped whole), the memo's few join them instead: the large
    // table is kept as it is, never built a second time beside it.
    if next.len() > memo.len() {
        std::mem::swap(memo, &mut next);
        for (rel, known) in next {
            match memo.entry(rel) {
                Entry::Occupied(mut e) => {
                    let staged = std::mem::replace(e.get_mut(), known);
                    e.get_mut().recs.extend(staged.recs);
                }
                Entry::Vacant(e) => {
                    e.insert(known);
                }
            }
        }
    } else {
        for (rel, staged) in next {
            memo.entry(rel).or_default().recs.extend(staged.recs);
        }
    }
    for rel in &scanned.read_ok {
        let m = memo.entry(rel.clone()).or_default();
        let d = scanned.digests.get(rel);
        m.digest = d.map(|(digest, _)| *digest);
        m.stamp = d.and_then(|(_, stamp)| *stamp);
        m.recs.seal();
    }
}

/// What a reconcile of one source learnt, for the picture.
pub struct Learnt<'a> {
    /// The scan covered every file of the source.
    pub complete: bool,
    /// What the target held when the reconcile started (hashes, at least).
    pub existing: &'a HashMap<String, Existing>,
    /// Full details read later (sources of documents that were looked up).
    pub details: &'a HashMap<String, Existing>,
    /// The ids in the files, and the file each came from.
    pub firsts: &'a super::firsts::Firsts,
    /// What was written (by id key).
    pub written: Vec<(IdKey, Known)>,
    /// What was deleted.
    pub removed: Vec<String>,
}

/// Update the picture of the collection after a reconcile.
pub fn remember(memory: &Memory, spec: &SourceSpec, learnt: Learnt<'_>) {
    if !memory.keeps_picture() {
        return;
    }
    if learnt.complete {
        // A picture is only ever started by a full scan: built in bulk, out
        // of the lock, from what was written and (where nothing was) what
        // the target held.
        let coll = Coll::build(pictured(memory, learnt));
        if let Ok(mut picture) = memory.picture.lock() {
            picture.insert(&spec.collection, coll);
        }
        return;
    }
    // Until then (at start, or after a failure made watch forget it)
    // changes are compared with the target.
    let Ok(mut picture) = memory.picture.lock() else { return };
    let Some(coll) = picture.get_mut(&spec.collection) else { return };
    for (key, k) in learnt.written {
        coll.set(key, k);
    }
    for id in learnt.removed {
        coll.remove(memory.id_key(&id));
    }
}

/// A full scan's picture of a collection: what was written, and (for the
/// documents not written) what the target held; the deleted taken out.
/// Each key once, so [`Coll::build`] sorts in place, with no scratch the
/// size of the list.
fn pictured(memory: &Memory, learnt: Learnt<'_>) -> Vec<(IdKey, Known)> {
    let removed: HashSet<IdKey> = learnt.removed.iter().map(|id| memory.id_key(id)).collect();
    let mut all = learnt.written;
    all.retain(|(k, _)| !removed.contains(k));
    // (An id written twice in one reconcile, a write retried, was written
    // from the same record both times.)
    all.sort_unstable_by_key(|(k, _)| *k);
    all.dedup_by_key(|(k, _)| *k);
    if learnt.existing.is_empty() {
        return all;
    }
    let fresh: Vec<IdKey> = all.iter().map(|(k, _)| *k).collect();
    all.reserve(learnt.existing.len());
    for (id, ex) in learnt.existing {
        let Some(hash) = &ex.hash else { continue };
        let key = memory.id_key(id);
        if removed.contains(&key) || fresh.binary_search(&key).is_ok() {
            continue;
        }
        // The scan's shared name of the file.
        let source = learnt
            .details
            .get(id)
            .and_then(|d| d.source.as_deref())
            .map(Arc::from)
            .or_else(|| learnt.firsts.source_of(id).cloned());
        if let Some(source) = source {
            all.push((key, Known::new(hash, source)));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::reconcile::memo::{FileMemo, RawHash, Recs};
    use crate::source::SourceFile;

    fn entry(rel: &str, h: RawHash, id: &str) -> Staged {
        let mut recs = Recs::default();
        recs.insert(h, id, []);
        Staged::from([(Arc::from(rel), FileMemo { recs, ..FileMemo::default() })])
    }

    fn spec_of(layout: &Layout, collection: &str) -> (usize, SourceSpec) {
        let i = layout.sources.iter().position(|s| s.collection == collection).unwrap();
        (i, layout.sources[i].clone())
    }

    #[test]
    fn a_full_scan_keeps_the_memo_of_other_sources() {
        let layout = Layout::builtin();
        let (users, users_spec) = spec_of(&layout, "users");
        let (jobs, jobs_spec) = spec_of(&layout, "training_jobs");
        let mut memo = Memo::new();
        // A full scan of users, then of jobs (one job file left, one gone).
        let scanned = Scanned {
            spec: users,
            complete: true,
            read_ok: HashSet::from([Arc::from("data/users.json")]),
            ..Default::default()
        };
        commit_memo(&users_spec, &mut memo, &scanned, entry("data/users.json", 1, "u1"));
        memo.insert("artifacts/jobs/gone.json".into(), FileMemo::default());
        let scanned = Scanned {
            spec: jobs,
            complete: true,
            read_ok: HashSet::from([Arc::from("artifacts/jobs/j1.json")]),
            ..Default::default()
        };
        commit_memo(&jobs_spec, &mut memo, &scanned, entry("artifacts/jobs/j1.json", 2, "j1"));
        assert_eq!(memo.get("data/users.json").map(|m| m.recs.len()), Some(1), "users' memo must survive");
        assert_eq!(memo.get("artifacts/jobs/j1.json").map(|m| m.recs.len()), Some(1));
        assert!(!memo.contains_key("artifacts/jobs/gone.json"), "a vanished file of the scanned source goes");
    }

    #[test]
    fn staged_files_that_outnumber_the_memo_keep_their_table_and_take_in_the_memo() {
        let layout = Layout::builtin();
        let (jobs, jobs_spec) = spec_of(&layout, "training_jobs");
        let mut memo = Memo::new();
        let mut users = Recs::default();
        users.insert(1, "u1", [("email", "a@x.io")]);
        memo.insert("data/users.json".into(), FileMemo { digest: Some(11), recs: users, ..FileMemo::default() });
        let mut j1 = Recs::default();
        j1.insert(5, "j1", []);
        j1.insert(4, "j1-old", []);
        memo.insert("artifacts/jobs/j1.json".into(), FileMemo { digest: Some(12), recs: j1, ..FileMemo::default() });
        // j1 changed (looked up in the memo: 5 a hit, 4 gone, 6 new); j2 and j3 are new files.
        let mut next = Staged::with_capacity(1000);
        for (rel, h, id) in [
            ("artifacts/jobs/j1.json", 6, "j1-new"),
            ("artifacts/jobs/j2.json", 7, "j2"),
            ("artifacts/jobs/j3.json", 8, "j3"),
        ] {
            next.extend(entry(rel, h, id));
        }
        let rels = ["artifacts/jobs/j1.json", "artifacts/jobs/j2.json", "artifacts/jobs/j3.json"].map(Arc::<str>::from);
        let scanned = Scanned {
            spec: jobs,
            read_ok: rels.iter().cloned().collect(),
            memo_covered: HashSet::from([rels[0].clone()]),
            vanished: vec![crate::reconcile::memo::MemoEntry {
                rel: rels[0].clone(),
                raw_hash: 4,
                id: "j1-old".into(),
            }],
            digests: rels.iter().enumerate().map(|(i, r)| (r.clone(), (100 + i as u128, None))).collect(),
            ..Default::default()
        };
        commit_memo(&jobs_spec, &mut memo, &scanned, next);
        assert!(memo.capacity() >= 1000, "the staged table is the memo now ({})", memo.capacity());
        let keys = |rel: &str| -> Vec<RawHash> {
            let mut k: Vec<RawHash> = memo[rel].recs.keys().collect();
            k.sort_unstable();
            k
        };
        assert_eq!(keys("data/users.json"), [1], "another source's memo is kept");
        assert_eq!(memo["data/users.json"].digest, Some(11));
        assert_eq!(memo["data/users.json"].recs.get(&1).map(|r| r.uniques().count()), Some(1));
        assert_eq!(keys("artifacts/jobs/j1.json"), [5, 6], "its hit stays, the gone one goes, the new one comes");
        assert_eq!(keys("artifacts/jobs/j3.json"), [8]);
        assert_eq!(memo["artifacts/jobs/j2.json"].digest, Some(101), "digests of the files read");
        assert_eq!(memo.len(), 4);
    }

    #[test]
    fn a_file_read_whole_gets_the_staged_table_and_a_changed_one_keeps_its_hits() {
        let layout = Layout::builtin();
        let (users, users_spec) = spec_of(&layout, "users");
        let mut memo = Memo::new();
        let read_ok = HashSet::from([Arc::from("data/users.json")]);
        let whole = Scanned { spec: users, complete: true, read_ok: read_ok.clone(), ..Default::default() };
        commit_memo(&users_spec, &mut memo, &whole, entry("data/users.json", 1, "u1"));
        commit_memo(&users_spec, &mut memo, &whole, entry("data/users.json", 2, "u2"));
        let keys = |memo: &Memo| -> Vec<RawHash> {
            let mut k: Vec<RawHash> = memo["data/users.json"].recs.keys().collect();
            k.sort_unstable();
            k
        };
        assert_eq!(keys(&memo), [2], "a file mapped whole is what its last run staged");
        // A changed file looked up in the memo: u2 was a hit, u3 is new.
        let covered = Scanned {
            spec: users,
            read_ok,
            memo_covered: HashSet::from([Arc::from("data/users.json")]),
            ..Default::default()
        };
        commit_memo(&users_spec, &mut memo, &covered, entry("data/users.json", 3, "u3"));
        assert_eq!(keys(&memo), [2, 3]);
    }

    #[test]
    fn a_failure_forgets_what_it_may_have_half_written() {
        let layout = Layout::builtin();
        let memory = Memory::default();
        let (users, users_spec) = spec_of(&layout, "users");
        let users_file = SourceFile::at(users, "data/users.json", "/p/data/users.json");
        {
            let mut memo = memory.memo.lock().unwrap();
            memo.insert("data/users.json".into(), FileMemo { digest: Some(7), stamp: None, recs: Default::default() });
            memo.insert("artifacts/jobs/j1.json".into(), FileMemo::default());
            let mut picture = memory.picture.lock().unwrap();
            let k = Known::new("h", Arc::from("data/users.json"));
            picture.insert("users", Coll::build(vec![(memory.id_key("u1"), k.clone())]));
            picture.insert("training_jobs", Coll::build(vec![(memory.id_key("j1"), k)]));
        }
        memory.forget(&layout, Some(std::slice::from_ref(&users_file)));
        {
            let memo = memory.memo.lock().unwrap();
            assert!(!memo.contains_key("data/users.json"), "the failed file's memo (and digest) must go");
            assert!(memo.contains_key("artifacts/jobs/j1.json"));
            let picture = memory.picture.lock().unwrap();
            assert!(!picture.contains("users") && picture.contains("training_jobs"));
        }
        // No picture is started again by a partial reconcile.
        let written = vec![(memory.id_key("u2"), Known::new("h2", Arc::from("data/users.json")))];
        let (existing, details, firsts) = (HashMap::new(), HashMap::new(), Default::default());
        let learnt = Learnt {
            complete: false,
            existing: &existing,
            details: &details,
            firsts: &firsts,
            written,
            removed: vec![],
        };
        remember(&memory, &users_spec, learnt);
        assert!(!memory.picture.lock().unwrap().contains("users"));
        // A failed rescan of a whole source forgets that source, files and picture.
        let (jobs, _) = spec_of(&layout, "training_jobs");
        memory.forget_sources(&layout, &[jobs]);
        assert!(!memory.memo.lock().unwrap().contains_key("artifacts/jobs/j1.json"));
        assert!(!memory.picture.lock().unwrap().contains("training_jobs"));
        memory.forget(&layout, None);
        assert!(memory.memo.lock().unwrap().is_empty());
        assert!(memory.picture.lock().unwrap().is_empty());
    }

    #[test]
    fn sync_keeps_the_memo_and_no_picture() {
        let layout = Layout::builtin();
        let (users, users_spec) = spec_of(&layout, "users");
        for (memory, pictured) in [(Memory::default(), true), (Memory::memo_only(), false)] {
            let scanned = Scanned {
                spec: users,
                complete: true,
                read_ok: HashSet::from([Arc::from("data/users.json")]),
                ..Default::default()
            };
            commit_memo(&users_spec, &mut memory.memo.lock().unwrap(), &scanned, entry("data/users.json", 1, "u1"));
            let written = vec![(memory.id_key("u1"), Known::new("h1", Arc::from("data/users.json")))];
            let (existing, details) = (HashMap::new(), HashMap::new());
            let learnt = Learnt {
                complete: true,
                existing: &existing,
                details: &details,
                firsts: &scanned.firsts,
                written,
                removed: vec![],
            };
            remember(&memory, &users_spec, learnt);
            assert_eq!(memory.memo.lock().unwrap().get("data/users.json").map(|m| m.recs.len()), Some(1));
            assert_eq!(memory.documents("users"), pictured.then_some(1), "picture kept: {pictured}");
        }
    }

    #[test]
    fn a_full_scans_picture_takes_what_was_written_over_what_was_held_and_leaves_out_the_deleted() {
        let memory = Memory::default();
        let file: Arc<str> = Arc::from("data/users.json");
        let held = |hash: &str| Existing {
            hash: Some(hash.into()),
            source: Some("data/users.json".into()),
            ..Default::default()
        };
        let (a, b, c) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
        let existing =
            HashMap::from([("u1".to_string(), held(&a)), ("u2".to_string(), held(&a)), ("u3".to_string(), held(&a))]);
        let written =
            vec![(memory.id_key("u1"), Known::new(&b, file.clone())), (memory.id_key("u4"), Known::new(&c, file))];
        let learnt = Learnt {
            complete: true,
            existing: &existing,
            details: &existing,
            firsts: &Default::default(),
            written,
            removed: vec!["u2".into()],
        };
        let all = pictured(&memory, learnt);
        let mut keys: Vec<IdKey> = all.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all.len(), "each document once");
        let coll = Coll::build(all);
        let hash = |id: &str| coll.get(memory.id_key(id)).map(Known::hash_text);
        assert_eq!((hash("u1"), hash("u2"), hash("u3"), hash("u4")), (Some(b), None, Some(a), Some(c)));
        assert_eq!(coll.len(), 3);
    }
}
