//! watch's memory: what the daemon remembers between reconciles so that a
//! change to one record of a large file costs one record. watch owns one
//! [`Memory`] and hands it to every reconcile; `sync` and `verify` run without.
//!
//! - the **memo**: per source file, the records mirrored from it, keyed by the
//!   hash of each record's raw JSON text (an identical text is the same
//!   record, so it is neither mapped nor looked up again);
//! - the **picture**: per collection, what each document holds as far as the
//!   mirror knows (id → content hash and source file), so a changed file is
//!   compared without reading the whole collection again.
//!
//! Stale entries are safe: every write is still checked by the server (the
//! version condition, unique indexes) and anything surprising is planned again
//! from a fresh read. Only a full scan starts a picture; a failure forgets.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use super::scan::Scanned;
use super::target::Existing;
use crate::layout::{Layout, SourceSpec};
use crate::source::SourceFile;

/// What watch remembers; see the module docs.
#[derive(Debug, Default)]
pub struct Memory {
    /// Per collection: id → what the mirror last left there.
    pub picture: Mutex<HashMap<String, HashMap<String, Known>>>,
    /// Per source file (`rel`): the records mirrored from it.
    pub memo: Mutex<Memo>,
    /// Numbers the passes of scans over the memo (marks in [`MemoRec::seen`]).
    pub scans: AtomicU64,
}

impl Memory {
    /// Forget what the memo and the picture say about these files (all, with
    /// `None`): a reconcile that failed may have written part of its changes,
    /// so they may no longer match the target. The next reconcile of them
    /// compares with the target itself.
    pub fn forget(&self, layout: &Layout, files: Option<&[SourceFile]>) {
        if let Ok(mut memo) = self.memo.lock() {
            match files {
                None => memo.clear(),
                Some(files) => files.iter().for_each(|f| {
                    memo.remove(&f.rel);
                }),
            }
        }
        if let Ok(mut picture) = self.picture.lock() {
            match files {
                None => picture.clear(),
                Some(files) => {
                    for f in files {
                        if let Some(spec) = layout.sources.get(f.spec) {
                            picture.remove(&spec.collection);
                        }
                    }
                }
            }
        }
    }

    /// Documents per collection as the picture has them (`None` before the
    /// first full scan of that collection).
    pub fn documents(&self, collection: &str) -> Option<usize> {
        self.picture.lock().ok()?.get(collection).map(HashMap::len)
    }
}

/// One document as the mirror last left it.
#[derive(Debug, Clone)]
pub struct Known {
    pub hash: String,
    pub source: Arc<str>,
}

impl Known {
    pub(super) fn existing(&self) -> Existing {
        Existing { hash: Some(self.hash.clone()), source: Some(self.source.to_string()), ..Default::default() }
    }
}

/// What watch remembers of a record it mirrored, keyed by the hash of the
/// record's raw JSON text.
#[derive(Debug)]
pub struct MemoRec {
    pub id: Arc<str>,
    pub emails: Vec<(Arc<str>, Arc<str>)>,
    /// The last scan pass that met this record (see [`Memory::scans`]).
    pub seen: AtomicU64,
}

impl MemoRec {
    pub fn new(id: Arc<str>, emails: Vec<(Arc<str>, Arc<str>)>) -> Self {
        MemoRec { id, emails, seen: AtomicU64::new(0) }
    }
}

/// A 128-bit hash of a record's (or file's) raw text: XXH3, fast enough to
/// run over a 30 MB file on every change, wide enough that two different
/// texts sharing one is not a practical concern.
pub type RawHash = u128;

/// The hash of a record's raw text (kept in memory only; the content hash
/// in `_mirror` stays SHA-256).
pub fn raw_hash(text: &str) -> RawHash {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// What watch remembers of one source file.
#[derive(Debug, Default)]
pub struct FileMemo {
    /// The hash of the whole file as last settled, when every record of it was
    /// settled (no rejects): identical bytes need not be read again.
    pub digest: Option<RawHash>,
    /// The records mirrored from it, by raw-text hash.
    pub recs: HashMap<RawHash, Arc<MemoRec>, BuildRawHasher>,
}

/// Raw-text hashes are already uniformly random: a hash map keyed by them
/// needs no second hash (SipHash over 100,000 keys per change is measurable).
#[derive(Default)]
pub struct RawHasher(u64);

impl std::hash::Hasher for RawHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u128; fold them in (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u128(&mut self, n: u128) {
        // The low 64 bits of the XXH3-128 hash: the truncation is the point.
        self.0 ^= u64::try_from(n & u128::from(u64::MAX)).unwrap_or_default();
    }
}

pub type BuildRawHasher = std::hash::BuildHasherDefault<RawHasher>;

/// Per source file (`rel`), what watch remembers of it.
pub type Memo = HashMap<String, FileMemo>;

/// A memoised record met in a scan: found again unchanged, or gone.
#[derive(Debug, Clone)]
pub struct MemoEntry {
    pub rel: Arc<str>,
    pub raw_hash: RawHash,
    pub rec: Arc<MemoRec>,
}

/// Make the memo of every file read in full hold what was mirrored from it:
/// entries of records that are gone are dropped, new ones added (no copies of
/// the entries that stay). O(changes) for a file the memo already covered.
pub(super) fn commit_memo(spec: &SourceSpec, memo: &mut Memo, scanned: &Scanned, next: Vec<MemoEntry>) {
    for rel in &scanned.missing {
        memo.remove(rel);
    }
    if scanned.complete {
        // Files of this source that are gone (the memo holds every source's files).
        memo.retain(|rel, _| !spec.owns_rel(rel) || scanned.read_ok.contains(rel) || scanned.bad.contains(rel));
    }
    for rel in &scanned.read_ok {
        let m = memo.entry(rel.clone()).or_default();
        m.digest = scanned.digests.get(rel).copied();
        if !scanned.memo_covered.contains(rel) {
            // Not looked up in this scan: everything it holds now is in `next`.
            m.recs.clear();
        }
    }
    for v in &scanned.vanished {
        if let Some(m) = memo.get_mut(&*v.rel) {
            m.recs.remove(&v.raw_hash);
        }
    }
    for e in next {
        memo.entry(e.rel.to_string()).or_default().recs.insert(e.raw_hash, e.rec);
    }
}

/// What a reconcile of one source learnt, for the picture.
pub(super) struct Learnt<'a> {
    /// The scan covered every file of the source.
    pub complete: bool,
    /// What the target held when the reconcile started (hashes, at least).
    pub existing: &'a HashMap<String, Existing>,
    /// Full details read later (sources of documents that were looked up).
    pub details: &'a HashMap<String, Existing>,
    /// The file each mapped record came from.
    pub rel_of: &'a HashMap<String, Arc<str>>,
    /// What was written.
    pub written: Vec<(String, Known)>,
    /// What was deleted.
    pub removed: Vec<String>,
}

/// Update the picture of the collection after a reconcile.
pub(super) fn remember(memory: &Memory, spec: &SourceSpec, learnt: Learnt<'_>) {
    let Ok(mut picture) = memory.picture.lock() else { return };
    // A picture is only ever started by a full scan; until then (at start, or
    // after a failure made watch forget it) changes are compared with the target.
    let coll = if learnt.complete {
        let coll = picture.entry(spec.collection.clone()).or_default();
        coll.clear();
        coll
    } else {
        match picture.get_mut(&spec.collection) {
            Some(coll) => coll,
            None => return,
        }
    };
    // After a partial scan the picture already holds everything but what changed.
    for (id, ex) in learnt.existing.iter().filter(|_| learnt.complete) {
        let Some(hash) = &ex.hash else { continue };
        let source = learnt
            .details
            .get(id)
            .and_then(|d| d.source.as_deref())
            .map(Arc::from)
            .or_else(|| learnt.rel_of.get(id).cloned());
        if let Some(source) = source {
            coll.insert(id.clone(), Known { hash: hash.clone(), source });
        }
    }
    for (id, k) in learnt.written {
        coll.insert(id, k);
    }
    for id in learnt.removed {
        coll.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn entry(rel: &str, h: RawHash, id: &str) -> MemoEntry {
        MemoEntry { rel: Arc::from(rel), raw_hash: h, rec: Arc::new(MemoRec::new(Arc::from(id), Vec::new())) }
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
            read_ok: HashSet::from(["data/users.json".to_string()]),
            ..Default::default()
        };
        commit_memo(&users_spec, &mut memo, &scanned, vec![entry("data/users.json", 1, "u1")]);
        memo.insert("artifacts/jobs/gone.json".into(), FileMemo::default());
        let scanned = Scanned {
            spec: jobs,
            complete: true,
            read_ok: HashSet::from(["artifacts/jobs/j1.json".to_string()]),
            ..Default::default()
        };
        commit_memo(&jobs_spec, &mut memo, &scanned, vec![entry("artifacts/jobs/j1.json", 2, "j1")]);
        assert_eq!(memo.get("data/users.json").map(|m| m.recs.len()), Some(1), "users' memo must survive");
        assert_eq!(memo.get("artifacts/jobs/j1.json").map(|m| m.recs.len()), Some(1));
        assert!(!memo.contains_key("artifacts/jobs/gone.json"), "a vanished file of the scanned source goes");
    }

    #[test]
    fn a_failure_forgets_what_it_may_have_half_written() {
        let layout = Layout::builtin();
        let memory = Memory::default();
        let (users, users_spec) = spec_of(&layout, "users");
        let users_file = SourceFile { spec: users, rel: "data/users.json".into(), path: "/p/data/users.json".into() };
        {
            let mut memo = memory.memo.lock().unwrap();
            memo.insert("data/users.json".into(), FileMemo { digest: Some(7), recs: Default::default() });
            memo.insert("artifacts/jobs/j1.json".into(), FileMemo::default());
            let mut picture = memory.picture.lock().unwrap();
            let k = Known { hash: "h".into(), source: Arc::from("data/users.json") };
            picture.entry("users".into()).or_default().insert("u1".into(), k.clone());
            picture.entry("training_jobs".into()).or_default().insert("j1".into(), k);
        }
        memory.forget(&layout, Some(std::slice::from_ref(&users_file)));
        {
            let memo = memory.memo.lock().unwrap();
            assert!(!memo.contains_key("data/users.json"), "the failed file's memo (and digest) must go");
            assert!(memo.contains_key("artifacts/jobs/j1.json"));
            let picture = memory.picture.lock().unwrap();
            assert!(!picture.contains_key("users") && picture.contains_key("training_jobs"));
        }
        // No picture is started again by a partial reconcile.
        let written = vec![("u2".to_string(), Known { hash: "h2".into(), source: Arc::from("data/users.json") })];
        let (existing, details, rel_of) = (HashMap::new(), HashMap::new(), HashMap::new());
        let learnt = Learnt {
            complete: false,
            existing: &existing,
            details: &details,
            rel_of: &rel_of,
            written,
            removed: vec![],
        };
        remember(&memory, &users_spec, learnt);
        assert!(!memory.picture.lock().unwrap().contains_key("users"));
        memory.forget(&layout, None);
        assert!(memory.memo.lock().unwrap().is_empty());
        assert!(memory.picture.lock().unwrap().is_empty());
    }
}
