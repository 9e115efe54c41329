//! watch's memory: what the daemon remembers between reconciles so that a
//! change to one record of a large file costs one record. watch owns one
//! [`Memory`] and hands it to every reconcile; `sync` and `verify` run without.
//!
//! - the **memo**: per source file, the records mirrored from it, keyed by the
//!   hash of each record's raw JSON text (an identical text is the same
//!   record, so it is neither mapped nor looked up again);
//! - the **picture**: per collection, what each document holds as far as the
//!   mirror knows (id → content hash and source file), so a changed file is
//!   compared without reading the whole collection again (see [`Picture`]).
//!
//! Stale entries are safe: every write is still checked by the server (the
//! version condition, unique indexes) and anything surprising is planned again
//! from a fresh read. Only a full scan starts a picture; a failure forgets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::picture::{IdKey, IdSeed, Known, Picture};
pub use super::recs::RawHash;
use crate::layout::Layout;
use crate::source::SourceFile;

/// What watch remembers; see the module docs.
#[derive(Debug, Default)]
pub struct Memory {
    /// Per collection: id → what the mirror last left there.
    pub picture: Mutex<Picture>,
    /// The seed of the picture's id keys ([`Memory::id_key`]).
    pub ids: IdSeed,
    /// Per source file (`rel`): the records mirrored from it.
    pub memo: Mutex<Memo>,
    /// Numbers the passes of scans over the memo (marks in [`Rec::seen`]).
    pub scans: AtomicU64,
    /// Per collection, the deletes of the last while (when, how many), for
    /// the mass-delete guard: a folder emptied one file at a time adds up.
    pub deletes: Mutex<HashMap<String, Vec<(Instant, usize)>>>,
    /// The operator released the held deletes (SIGUSR1): the next full
    /// reconcile applies them, whatever the guard says.
    pub release_held: AtomicBool,
    /// Per collection, ids whose next write must happen whatever the content
    /// hash says (a drift repair under `--conflict file-wins`).
    pub forced: Mutex<HashMap<String, HashSet<String>>>,
    /// The memo holds only the files a start from a checkpoint needed (the
    /// rest is loaded once watch is going).
    pub partial: AtomicBool,
    /// Per collection, ids whose deletes the mass-delete guard held back.
    /// Their records are gone from the memo, so a start from a checkpoint
    /// would not look at them again: a checkpoint keeps them as pending.
    pub held: Mutex<HashMap<String, HashSet<String>>>,
    /// Large files a start from the checkpoint read to prove them changed:
    /// the scan that follows takes their bytes from here instead of reading
    /// them a second time (by `rel`; see [`Memory::take_read`]).
    pub read: Mutex<HashMap<String, crate::source::FileBytes>>,
    /// `sync`: the memo is kept (the checkpoint stores it) but no picture,
    /// which only watch's later changes use: at a million records it is a
    /// table of a million ids and hashes, and the list of every write that
    /// fills it.
    pub memo_only: bool,
    /// `sync`: where a large file's memo goes once its source is settled
    /// (see [`Spill`]); none otherwise.
    pub spill: Mutex<Option<Arc<dyn Spill>>>,
    /// Per collection, when the server was last asked for its document count
    /// and what it said (`None` while the answer is awaited): used while the
    /// picture cannot say (after a start from the checkpoint, until the next
    /// full scan). A heartbeat asks again only once [`COUNT_FOR`] has passed:
    /// a count is a full scan on some servers.
    pub counted: Mutex<HashMap<String, (Instant, Option<u64>)>>,
}

/// How long a server's document count stands for the picture's (see [`Memory::counted`]).
pub const COUNT_FOR: Duration = Duration::from_secs(60);

/// What [`Memory::count_due`] says of a collection's document count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// The server's count, taken less than [`COUNT_FOR`] ago (`None`: it is
    /// being taken now, or the last try failed).
    Recent(Option<u64>),
    /// Ask the server (the caller now holds the claim; [`Memory::note_count`] when done).
    Ask,
}

/// Where `sync` hands over a file's memo once its source is settled: the
/// checkpoint stores a large one then, so a million users' memo is not held
/// while the other sources are read. (watch keeps its memo: it looks records
/// up in it.)
pub trait Spill: Send + Sync + std::fmt::Debug {
    /// Whether this file's memo is taken.
    fn wants(&self, rel: &str, memo: &FileMemo) -> bool;
    /// Take it: it is no longer in the memo.
    fn take(&self, rel: Arc<str>, memo: FileMemo);
}

impl Memory {
    /// What `sync` keeps: the memo for the checkpoint, no picture.
    pub fn memo_only() -> Memory {
        Memory { memo_only: true, ..Memory::default() }
    }

    /// `sync`: hand the memos of these settled files that [`Spill`] wants
    /// over to it, out of the memo.
    pub fn spill_settled<'a>(&self, rels: impl Iterator<Item = &'a Arc<str>>) {
        let Some(spill) = self.spill.lock().ok().and_then(|s| s.clone()) else { return };
        let Ok(mut memo) = self.memo.lock() else { return };
        for rel in rels {
            if memo.get(rel).is_some_and(|m| spill.wants(rel, m)) {
                if let Some(m) = memo.remove(rel) {
                    spill.take(rel.clone(), m);
                }
            }
        }
    }

    /// Whether writes are remembered in the picture.
    pub fn keeps_picture(&self) -> bool {
        !self.memo_only
    }

    /// Forget what the memo and the picture say about these files (all, with
    /// `None`): a reconcile that failed may have written part of its changes,
    /// so they may no longer match the target. The next reconcile of them
    /// compares with the target itself.
    pub fn forget(&self, layout: &Layout, files: Option<&[SourceFile]>) {
        if let Ok(mut memo) = self.memo.lock() {
            match files {
                None => memo.clear(),
                Some(files) => files.iter().for_each(|f| {
                    memo.remove(&*f.rel);
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

    /// Forget everything about these sources (a whole-source reconcile failed).
    pub fn forget_sources(&self, layout: &Layout, specs: &[usize]) {
        let specs: Vec<_> = specs.iter().filter_map(|i| layout.sources.get(*i)).collect();
        if let Ok(mut memo) = self.memo.lock() {
            memo.retain(|rel, _| !specs.iter().any(|s| s.owns_rel(rel)));
        }
        if let Ok(mut picture) = self.picture.lock() {
            for s in &specs {
                picture.remove(&s.collection);
            }
        }
    }

    /// The bytes a start from the checkpoint read of this file, handed over
    /// once (the file is read as usual when there are none).
    pub fn take_read(&self, rel: &str) -> Option<crate::source::FileBytes> {
        self.read.lock().ok()?.remove(rel)
    }

    /// Have the next reconcile of this document write it (see [`Memory::forced`]).
    pub fn force(&self, collection: &str, id: &str) {
        if let Ok(mut f) = self.forced.lock() {
            f.entry(collection.to_string()).or_default().insert(id.to_string());
        }
    }

    /// The forced ids among `ids`, forgotten as they are handed out.
    pub fn take_forced<'a>(&self, collection: &str, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
        let Ok(mut f) = self.forced.lock() else { return Vec::new() };
        let Some(set) = f.get_mut(collection) else { return Vec::new() };
        let taken: Vec<String> = ids.filter(|id| set.remove(*id)).map(str::to_string).collect();
        if set.is_empty() {
            f.remove(collection);
        }
        taken
    }

    /// How many documents of a collection were deleted within `window`.
    pub fn recent_deletes(&self, collection: &str, window: Duration) -> usize {
        let Ok(mut deletes) = self.deletes.lock() else { return 0 };
        let Some(list) = deletes.get_mut(collection) else { return 0 };
        list.retain(|(at, _)| at.elapsed() < window);
        list.iter().map(|(_, n)| n).sum()
    }

    /// Remember that `n` documents of a collection were deleted now.
    pub fn record_deletes(&self, collection: &str, n: usize) {
        if let (true, Ok(mut deletes)) = (n > 0, self.deletes.lock()) {
            deletes.entry(collection.to_string()).or_default().push((Instant::now(), n));
        }
    }

    /// The guard held back the deletes of these documents (`held`), or they
    /// are not held any more (deleted, or found changed).
    pub fn note_held<'a>(&self, collection: &str, ids: impl Iterator<Item = &'a String>, held: bool) {
        let Ok(mut all) = self.held.lock() else { return };
        let set = all.entry(collection.to_string()).or_default();
        for id in ids {
            if held {
                set.insert(id.clone());
            } else {
                set.remove(id);
            }
        }
    }

    /// The documents whose deletes are held back: (collection, id).
    pub fn held_deletes(&self) -> Vec<(String, String)> {
        let Ok(all) = self.held.lock() else { return Vec::new() };
        all.iter().flat_map(|(c, ids)| ids.iter().map(move |id| (c.clone(), id.clone()))).collect()
    }

    /// Documents per collection as the picture has them (`None` before the
    /// first full scan of that collection).
    pub fn documents(&self, collection: &str) -> Option<usize> {
        self.picture.lock().ok()?.get(collection).map(super::picture::Coll::len)
    }

    /// How the picture knows a document.
    pub fn id_key(&self, id: &str) -> IdKey {
        self.ids.key(id)
    }

    /// Whether the server must be asked for this collection's document count
    /// now (see [`Memory::counted`]); asking is claimed at once, so heartbeats
    /// that overlap a slow count do not ask again.
    pub fn count_due(&self, collection: &str, now: Instant) -> Count {
        let Ok(mut counted) = self.counted.lock() else { return Count::Ask };
        match counted.get_mut(collection) {
            Some((at, n)) if now.saturating_duration_since(*at) < COUNT_FOR => Count::Recent(*n),
            Some((at, _)) => {
                *at = now;
                Count::Ask
            }
            None => {
                counted.insert(collection.to_string(), (now, None));
                Count::Ask
            }
        }
    }

    /// The server's answer to a count [`Memory::count_due`] asked for.
    pub fn note_count(&self, collection: &str, n: Option<u64>) {
        if let Ok(mut counted) = self.counted.lock() {
            if let Some(entry) = counted.get_mut(collection) {
                entry.1 = n.or(entry.1);
            }
        }
    }
}

/// A file's memo records (see [`super::packed::Recs`]).
pub use super::packed::{Rec, Recs};

/// The hash of a record's raw text under one source's mapping rules
/// (`seed`: [`text_seed`] of the rules' fingerprint), so a text mapped under
/// other rules never matches. The content hash in `_mirror` stays SHA-256.
pub fn raw_hash(seed: u64, text: &str) -> RawHash {
    raw_hash_of(seed, text.as_bytes())
}

/// [`raw_hash`] of a text's bytes.
pub fn raw_hash_of(seed: u64, text: &[u8]) -> RawHash {
    xxhash_rust::xxh3::xxh3_128_with_seed(text, seed)
}

/// The seed of [`raw_hash`] for a source whose rules have this fingerprint.
pub fn text_seed(fingerprint: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(fingerprint.as_bytes())
}

/// What watch remembers of one source file.
#[derive(Debug, Default)]
pub struct FileMemo {
    /// The hash of the whole file as last settled, when every record of it was
    /// settled (no rejects): identical bytes need not be read again.
    pub digest: Option<RawHash>,
    /// The file's stamp with that digest, where it proves the bytes (a
    /// start from the checkpoint then need not read the file).
    pub stamp: Option<crate::source::Stamp>,
    /// The records mirrored from it, by raw-text hash.
    pub recs: Recs,
}

/// Per source file (`rel`), what watch remembers of it.
pub type Memo = HashMap<Arc<str>, FileMemo>;

/// Per source file, the records a run mirrored, by raw-text hash: kept as
/// the entries the memo will hold, so a million-record file's entries never
/// exist twice (as a list and as the table made from it), nor 200,000 job
/// files' entries (see [`super::settle::commit_memo`]).
pub type Staged = HashMap<Arc<str>, FileMemo>;

/// A memoised record met in a scan whose text is gone: changed or deleted.
#[derive(Debug, Clone)]
pub struct MemoEntry {
    pub rel: Arc<str>,
    pub raw_hash: RawHash,
    pub id: Box<str>,
}

/// Ids in one text, one after the other: a scan's unchanged records (a
/// million of them for a one-user change in a million-user file).
#[derive(Debug, Default)]
pub struct Ids {
    text: String,
    ends: Vec<usize>,
}

impl Ids {
    pub fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).filter_map(|(a, b)| self.text.get(a..*b))
    }
}

/// A scan's unchanged records that it left in watch's memo, marked with its
/// pass (see [`super::packed::mark`]) instead of copying their ids: the
/// files they are in, the mark and how many. The marks stand until that
/// file's next scan; [`super::delete::find`] reads the ids back where it
/// needs them.
#[derive(Debug, Default)]
pub struct Marked {
    pub rels: Vec<Arc<str>>,
    pub pass: u32,
    pub count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_count_is_asked_once_a_minute_and_overlapping_heartbeats_do_not_ask_again() {
        let m = Memory::default();
        let t = Instant::now();
        assert_eq!(m.count_due("users", t), Count::Ask);
        // Asked, not answered yet: a heartbeat meanwhile does not ask again.
        assert_eq!(m.count_due("users", t + Duration::from_secs(5)), Count::Recent(None));
        m.note_count("users", Some(7));
        assert_eq!(m.count_due("users", t + Duration::from_secs(59)), Count::Recent(Some(7)));
        assert_eq!(m.count_due("jobs", t), Count::Ask, "each collection on its own");
        // A minute on: asked again; a failed answer keeps the last one.
        assert_eq!(m.count_due("users", t + COUNT_FOR), Count::Ask);
        m.note_count("users", None);
        assert_eq!(m.count_due("users", t + COUNT_FOR + Duration::from_secs(1)), Count::Recent(Some(7)));
    }

    #[test]
    fn a_known_hash_comes_back_as_the_text_it_was_and_an_odd_one_never_matches() {
        let hash = crate::mapping::hex(&[0x00, 0x1f, 0xa0, 0xff, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 0xee]);
        let source: Arc<str> = Arc::from("data/users.json");
        assert_eq!(Known::new(&hash, source.clone()).hash_text(), hash);
        let zeros = "0".repeat(32);
        assert_eq!(Known::new(&"0".repeat(31), source.clone()).hash_text(), "?");
        for odd in [hash.to_uppercase(), format!("{hash}0"), hash[1..].to_string(), "+".repeat(32), String::new()] {
            let text = Known::new(&odd, source.clone()).hash_text();
            assert!(text != odd && text.len() != 32, "{odd:?} became {text:?}");
        }
        // The one hash that shares the odd value is not mistaken for an equal one either.
        assert_ne!(Known::new(&zeros, source).hash_text(), zeros);
    }

    /// Takes the memos of files whose name says "big".
    #[derive(Debug, Default)]
    struct Taker(Mutex<Vec<(Arc<str>, usize)>>);

    impl Spill for Taker {
        fn wants(&self, rel: &str, _: &FileMemo) -> bool {
            rel.contains("big")
        }
        fn take(&self, rel: Arc<str>, memo: FileMemo) {
            self.0.lock().unwrap().push((rel, memo.recs.len()));
        }
    }

    #[test]
    fn a_settled_memo_that_the_spill_wants_leaves_the_memo_for_it() {
        let memory = Memory::memo_only();
        let (big, small): (Arc<str>, Arc<str>) = (Arc::from("data/big.json"), Arc::from("data/small.json"));
        for rel in [&big, &small] {
            let mut recs = Recs::default();
            recs.insert(1, "u1", []);
            memory.memo.lock().unwrap().insert(rel.clone(), FileMemo { recs, ..FileMemo::default() });
        }
        // Without a spill nothing moves.
        memory.spill_settled([&big, &small].into_iter());
        assert_eq!(memory.memo.lock().unwrap().len(), 2);
        let taker = Arc::new(Taker::default());
        *memory.spill.lock().unwrap() = Some(taker.clone());
        memory.spill_settled([&big, &small].into_iter());
        assert_eq!(*taker.0.lock().unwrap(), vec![(big.clone(), 1)]);
        let memo = memory.memo.lock().unwrap();
        assert!(!memo.contains_key(&big) && memo.contains_key(&small));
    }

    #[test]
    fn ids_read_back_in_the_order_they_were_given() {
        let mut ids = Ids::default();
        let given = ["u1", "", "é-2", "u1"];
        given.iter().for_each(|i| ids.push(i));
        assert_eq!(ids.iter().collect::<Vec<_>>(), given);
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn a_text_under_other_rules_is_another_text() {
        let text = r#"{"id":"u1","email":"a@b.c"}"#;
        let (a, b) = (text_seed("rules a"), text_seed("rules b"));
        assert_eq!(raw_hash(a, text), raw_hash(a, text));
        assert_ne!(raw_hash(a, text), raw_hash(b, text));
        assert_ne!(raw_hash(a, text), raw_hash(a, &text.replace("a@b", "a@c")));
    }
}
