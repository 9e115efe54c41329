//! The reconcile core shared by `sync`, `watch` and `verify`: read a set of
//! source files, map their records, compare them with what MongoDB holds, and
//! write only the difference. `sync` reconciles everything once; `watch`
//! reconciles everything once and then the files that changed; `verify` stops
//! after the comparison.
//!
//! Conservation rule: every record read ends in exactly one bucket:
//! inserted, updated, unchanged, skipped (newer in MongoDB) or rejected.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bson::{doc, Bson, Document};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::layout::{Layout, SourceSpec};
use crate::mapping::{self, map_record, Mapped, Reject};
use crate::sink::indexes::IndexSet;
use crate::sink::{OpResult, Sink, SinkError, WriteOp};
use crate::source::{self, FileProblem, ReadLimits, Roots, SourceFile};

pub const REJECTS: &str = "mirror_rejects";
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
    pub layout: Layout,
    pub fingerprints: Vec<String>,
    pub roots: Roots,
    pub limits: ReadLimits,
    pub indexes: IndexSet,
    pub on_delete: OnDelete,
    pub conflict: Conflict,
    /// Hold deletes that would remove more than this fraction of a collection.
    pub mass_delete_fraction: f64,
    pub allow_mass_delete: bool,
    /// Records per chunk of a streamed scan ([`CHUNK`] by default).
    pub chunk: usize,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// watch only: what each collection holds as far as the mirror knows
    /// (id → content hash and source file), so a change to one record of a
    /// large file is compared without reading the whole collection again.
    /// Stale entries are safe: every write is checked by the server (version
    /// filter, duplicate keys) and anything surprising is planned again from
    /// a fresh read; the periodic full rescan rebuilds it.
    pub known: Option<std::sync::Mutex<HashMap<String, HashMap<String, Known>>>>,
    /// watch only: per source file, the records mirrored from it by raw-text hash.
    pub memo: Option<std::sync::Mutex<Memo>>,
    /// Numbers the passes of scans over the memo (marks in [`MemoRec::seen`]).
    pub scans: AtomicU64,
}

/// One document as the mirror last left it.
#[derive(Debug, Clone)]
pub struct Known {
    pub hash: String,
    pub source: Arc<str>,
}

impl Engine {
    pub fn new(layout: Layout, roots: Roots, indexes: IndexSet) -> Self {
        let fingerprints = layout.sources.iter().map(Layout::fingerprint).collect();
        Engine {
            layout,
            fingerprints,
            roots,
            limits: ReadLimits::default(),
            indexes,
            on_delete: OnDelete::Archive,
            conflict: Conflict::NewerWins,
            mass_delete_fraction: 0.5,
            allow_mass_delete: false,
            chunk: CHUNK,
            metrics: Arc::default(),
            known: None,
            memo: None,
            scans: AtomicU64::new(0),
        }
    }

    /// Forget what the memo and the picture say about these files (all, with
    /// `None`): a reconcile that failed may have written part of its changes,
    /// so they may no longer match MongoDB. The next reconcile of them compares
    /// with MongoDB itself.
    pub fn forget(&self, files: Option<&[SourceFile]>) {
        if let Some(Ok(mut memo)) = self.memo.as_ref().map(|m| m.lock()) {
            match files {
                None => memo.clear(),
                Some(files) => files.iter().for_each(|f| {
                    memo.remove(&f.rel);
                }),
            }
        }
        if let Some(Ok(mut known)) = self.known.as_ref().map(|k| k.lock()) {
            match files {
                None => known.clear(),
                Some(files) => {
                    for f in files {
                        if let Some(spec) = self.layout.sources.get(f.spec) {
                            known.remove(&spec.collection);
                        }
                    }
                }
            }
        }
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

/// Counters for one reconcile; the `sync` summary line prints them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub skipped_newer: u64,
    pub rejected: u64,
    pub bad_files: u64,
    pub deleted: u64,
    pub archived: u64,
    pub deletes_held: u64,
    /// Files that could not be read or parsed (watch retries them).
    #[serde(skip)]
    pub bad_paths: Vec<SourceFile>,
    /// Collections in which something was written.
    #[serde(skip)]
    pub changed_collections: Vec<String>,
}

impl Summary {
    pub fn add(&mut self, o: &Summary) {
        self.files += o.files;
        self.read += o.read;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.skipped_newer += o.skipped_newer;
        self.rejected += o.rejected;
        self.bad_files += o.bad_files;
        self.deleted += o.deleted;
        self.archived += o.archived;
        self.deletes_held += o.deletes_held;
        self.bad_paths.extend(o.bad_paths.iter().cloned());
        for c in &o.changed_collections {
            if !self.changed_collections.contains(c) {
                self.changed_collections.push(c.clone());
            }
        }
    }

    pub fn changed(&self) -> bool {
        self.inserted + self.updated + self.deleted + self.archived > 0
    }
}

/// A mapped record that is ready to be compared.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub mapped: Mapped,
    pub rel: String,
    pub position: Option<usize>,
    /// Hash of the record's raw JSON text (watch's per-file memo).
    pub raw_hash: Option<RawHash>,
    /// The record's unique values (`(field, value)`), shared with the memo.
    pub emails: Vec<(Arc<str>, Arc<str>)>,
}

/// What watch remembers of a record it mirrored, keyed by the hash of the
/// record's raw JSON text: an identical text is the same record, so a change
/// to one user of a 100,000-user file maps one record, not all of them.
#[derive(Debug)]
pub struct MemoRec {
    pub id: Arc<str>,
    pub emails: Vec<(Arc<str>, Arc<str>)>,
    /// The last scan pass that met this record (see [`Engine::scans`]).
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

impl Candidate {
    pub fn locate(&self) -> String {
        match self.position {
            Some(p) => format!("{}[{p}]", self.rel),
            None => self.rel.clone(),
        }
    }
}

/// A record or file that cannot be mirrored, as stored in `mirror_rejects`.
#[derive(Debug, Clone)]
pub struct RejectRecord {
    pub key: String,
    pub collection: String,
    pub rel: String,
    pub position: Option<usize>,
    pub id: Option<String>,
    pub reason: Reject,
    pub record: Option<Bson>,
}

impl RejectRecord {
    pub fn locate(&self) -> String {
        match self.position {
            Some(p) => format!("{}[{p}]", self.rel),
            None => self.rel.clone(),
        }
    }

    fn to_document(&self) -> Document {
        let mut d = doc! {
            "_id": &self.key,
            "collection": &self.collection,
            "source": &self.rel,
            "position": self.position.and_then(|p| i64::try_from(p).ok()),
            "record_id": self.id.clone(),
            "reason_code": self.reason.code(),
            "reason": self.reason.to_string(),
            "first_seen": bson::DateTime::now(),
        };
        if let Reject::EmailTaken { other_id, .. } = &self.reason {
            // Both ids of an identity clash, for people and for scripts.
            d.insert("clashes_with_id", other_id.clone());
        }
        if let Some(r) = &self.record {
            d.insert("record", r.clone());
        }
        d
    }
}

/// One source's files, read and mapped.
#[derive(Debug, Default)]
pub struct Scanned {
    pub spec: usize,
    pub candidates: Vec<Candidate>,
    pub rejects: Vec<RejectRecord>,
    /// Files read completely (their records are the whole truth for them).
    pub read_ok: HashSet<String>,
    /// Files confirmed absent.
    pub missing: HashSet<String>,
    /// Files that could not be read or parsed: documents from them are left alone.
    pub bad: HashSet<String>,
    /// Ids of rejected records: never deleted because of the reject.
    pub protected_ids: HashSet<String>,
    /// Files with a rejected record that has no usable id: no deletes from them.
    pub no_deletes: HashSet<String>,
    /// Whether the scan covered every file of the source.
    pub complete: bool,
    pub files: u64,
    pub records: u64,
    /// Records whose raw text is the same as when they were last mirrored.
    pub unchanged: Vec<MemoEntry>,
    /// Files whose every mirrored record is in the memo.
    pub memo_covered: HashSet<String>,
    /// Memoised records of those files whose text is gone (changed or removed),
    /// or that are no longer settled (now a duplicate).
    pub vanished: Vec<MemoEntry>,
    /// Files found byte-for-byte as last settled (watch): not read further.
    pub identical: u64,
    /// The hash of every file read in full (watch).
    pub digests: HashMap<String, RawHash>,
}

/// By default, candidates are handed on in chunks of this many during a full
/// scan (`--chunk-records`), so a source's mapped documents never all exist at once.
pub const CHUNK: usize = 1_000;

/// Where a scan hands on full chunks of candidates; `false` means nobody is
/// listening any more (the run failed), and the scan stops.
pub type Emit<'a> = &'a mut dyn FnMut(Vec<Candidate>) -> bool;

/// Read and map one source's files (blocking: run it on the blocking pool).
/// With `emit`, candidates are handed on in chunks of `engine.chunk` as they are
/// mapped, and `candidates` holds only the last, partial chunk at the end.
pub fn scan_source(
    engine: &Engine,
    spec_idx: usize,
    files: Option<Vec<SourceFile>>,
    mut emit: Option<Emit<'_>>,
) -> Result<Scanned, Fatal> {
    let spec = &engine.layout.sources[spec_idx];
    let fingerprint = &engine.fingerprints[spec_idx];
    let mut out = Scanned { spec: spec_idx, complete: files.is_none(), ..Default::default() };
    let files = match files {
        Some(f) => f,
        None => match source::discover(&engine.layout, &engine.roots, spec_idx) {
            Ok(f) => f,
            Err((rel, problem)) => {
                return Err(Fatal::Source(format!("{rel} ({}): {problem}", engine.roots.dir(spec.root).display())))
            }
        },
    };
    let mut firsts = Firsts::default();
    let memo_on = engine.memo.is_some();
    let single_file = files.len() == 1;
    // Two marks per scan: the look-ahead below, then the settled hits.
    let ahead = engine.scans.fetch_add(2, Ordering::Relaxed) + 1;
    let mark = ahead + 1;
    // Memo hits are trusted only for changed files: full scans check every
    // record against MongoDB, which is what makes them a safety net.
    let use_hits = memo_on && !out.complete;
    for file in files {
        out.files += 1;
        let bytes = match source::read_stable(&file.path, engine.limits) {
            Ok(None) => {
                out.missing.insert(file.rel.clone());
                continue;
            }
            Ok(Some((bytes, _))) => bytes,
            Err(problem) => {
                out.bad.insert(file.rel.clone());
                out.rejects.push(file_reject(spec, &file.rel, problem));
                continue;
            }
        };
        // A changed file's bytes may be just as they were last settled (a writer
        // that rewrites without changing anything, or a second event for one write).
        let digest = memo_on.then(|| xxhash_rust::xxh3::xxh3_128(&bytes));
        if use_hits {
            let settled = engine.memo.as_ref().and_then(|m| m.lock().ok()).and_then(|m| m.get(&file.rel)?.digest);
            if settled.is_some() && settled == digest {
                out.identical += 1;
                continue;
            }
        }
        // The content hash covers the file's name too: a record that moves
        // to another file is written again (its `_mirror.source` changes).
        let salt = format!("{fingerprint}\u{0}{}", file.rel);
        let file_idx = firsts.file(&file.rel);
        // Records are split out as raw text and turned into values one at a
        // time: a 100,000-record file never exists as 100,000 values at once.
        let raws = match source::parse_raw(&bytes, spec.shape) {
            Ok(r) => r,
            Err(problem) => {
                out.bad.insert(file.rel.clone());
                out.rejects.push(file_reject(spec, &file.rel, problem));
                continue;
            }
        };
        out.read_ok.insert(file.rel.clone());
        if let Some(d) = digest {
            out.digests.insert(file.rel.clone(), d);
        }
        // Held for this file's loop only; reconciles run one at a time.
        let memo_guard = if use_hits { engine.memo.as_ref().and_then(|m| m.lock().ok()) } else { None };
        let memo = memo_guard.as_ref().and_then(|m| m.get(&file.rel));
        let rel_arc: Arc<str> = Arc::from(file.rel.as_str());
        let hashes: Vec<RawHash> = if memo_on { raws.iter().map(|(_, t)| raw_hash(t)).collect() } else { Vec::new() };
        // In a scan of one file, only the hits that share a key with a record
        // that is not a hit need the first-keeps-it check.
        let clash_keys = match memo {
            Some(m) if single_file => Some(clash_keys(spec, &salt, m, &raws, &hashes, ahead)),
            _ => None,
        };
        for (i, (position, text)) in raws.into_iter().enumerate() {
            let raw_hash = hashes.get(i).copied().unwrap_or(0);
            if let Some(rec) = memo.and_then(|m| m.recs.get(&raw_hash)) {
                let check = clash_keys
                    .as_ref()
                    .is_none_or(|k| k.contains(&*rec.id) || rec.emails.iter().any(|(_, v)| k.contains(&**v)));
                if !check || firsts.clash(spec, &rec.id, &rec.emails).is_none() {
                    rec.seen.store(mark, Ordering::Relaxed);
                    out.records += 1;
                    if check {
                        firsts.claim(&rec.id, &rec.emails, file_idx, position);
                    }
                    out.unchanged.push(MemoEntry { rel: rel_arc.clone(), raw_hash, rec: rec.clone() });
                    continue;
                }
                // Now a duplicate of an earlier record: no longer settled, mapped again below.
            }
            let value = match source::parse_value(text) {
                Ok(v) => v,
                Err(problem) => {
                    out.records += 1;
                    out.no_deletes.insert(file.rel.clone());
                    let reason = Reject::Unparsable(problem);
                    let pos = position.map(|p| p.to_string()).unwrap_or_default();
                    out.rejects.push(RejectRecord {
                        key: reject_key(&[
                            &spec.collection,
                            &file.rel,
                            &pos,
                            reason.code(),
                            &format!("{:x}", self::raw_hash(text)),
                        ]),
                        collection: spec.collection.clone(),
                        rel: file.rel.clone(),
                        position,
                        id: None,
                        reason,
                        record: None,
                    });
                    continue;
                }
            };
            let raw = source::RawRecord { position, value };
            add_record(spec, &salt, &file.rel, file_idx, raw, memo_on.then_some(raw_hash), &mut firsts, &mut out);
            if out.candidates.len() >= engine.chunk.max(1) {
                if let Some(emit) = emit.as_mut() {
                    if !emit(std::mem::take(&mut out.candidates)) {
                        return Ok(out);
                    }
                }
            }
        }
        // Records mirrored from this file whose text is no longer there: changed or gone.
        if let Some(m) = memo {
            out.memo_covered.insert(file.rel.clone());
            out.vanished.extend(
                m.recs.iter().filter(|(_, r)| r.seen.load(Ordering::Relaxed) != mark).map(|(h, rec)| MemoEntry {
                    rel: rel_arc.clone(),
                    raw_hash: *h,
                    rec: rec.clone(),
                }),
            );
        }
    }
    Ok(out)
}

/// The ids and unique values that a memo hit of one file could share with
/// another record of the file: those of the records that are not hits
/// (changed or new), and those of texts that occur twice. The hits of a file
/// were settled together in its last scan, so they cannot clash with each other.
fn clash_keys(
    spec: &SourceSpec,
    salt: &str,
    memo: &FileMemo,
    raws: &[(Option<usize>, &str)],
    hashes: &[RawHash],
    ahead: u64,
) -> HashSet<Arc<str>> {
    let mut keys: HashSet<Arc<str>> = HashSet::new();
    for ((_, text), h) in raws.iter().zip(hashes) {
        match memo.recs.get(h) {
            Some(rec) if rec.seen.swap(ahead, Ordering::Relaxed) != ahead => {}
            Some(rec) => {
                keys.insert(rec.id.clone());
                keys.extend(rec.emails.iter().map(|(_, v)| v.clone()));
            }
            None => {
                // Mapped here only for its keys; the scan maps it again in order.
                let Ok(value) = source::parse_value(text) else { continue };
                if let Ok(m) = map_record(spec, salt, &value) {
                    keys.extend(emails_of(spec, &m).into_iter().map(|(_, v)| v));
                    keys.insert(Arc::from(m.id));
                }
            }
        }
    }
    keys
}

/// The hash of a record's raw text (kept in memory only; the content hash
/// in `_mirror` stays SHA-256).
fn raw_hash(text: &str) -> RawHash {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// Which record first used each id and each email: the first keeps it.
/// Where a record sits: file (index into `rels`) and position.
type Loc = (usize, Option<usize>);

#[derive(Default)]
struct Firsts {
    rels: Vec<String>,
    by_id: HashMap<Arc<str>, Loc>,
    /// By (field, value).
    by_unique: HashMap<(Arc<str>, Arc<str>), Loc>,
}

impl Firsts {
    fn file(&mut self, rel: &str) -> usize {
        self.rels.push(rel.to_string());
        self.rels.len() - 1
    }

    fn locate(&self, (file, position): (usize, Option<usize>)) -> String {
        let rel = self.rels.get(file).map(String::as_str).unwrap_or("?");
        match position {
            Some(p) => format!("{rel}[{p}]"),
            None => rel.to_string(),
        }
    }

    fn clash(&self, spec: &SourceSpec, id: &str, emails: &[(Arc<str>, Arc<str>)]) -> Option<Reject> {
        if let Some(first) = self.by_id.get(id) {
            return Some(Reject::DuplicateId { id: id.to_string(), first: self.locate(*first) });
        }
        let _ = spec;
        emails.iter().find_map(|(field, v)| {
            let first = self.by_unique.get(&(field.clone(), v.clone()))?;
            Some(Reject::DuplicateEmail { email: v.to_string(), first: self.locate(*first) })
        })
    }

    fn claim(&mut self, id: &Arc<str>, emails: &[(Arc<str>, Arc<str>)], file: usize, position: Option<usize>) {
        self.by_id.insert(id.clone(), (file, position));
        for (field, v) in emails {
            self.by_unique.insert((field.clone(), v.clone()), (file, position));
        }
    }
}

fn emails_of(spec: &SourceSpec, m: &Mapped) -> Vec<(Arc<str>, Arc<str>)> {
    spec.normalize_email
        .iter()
        .filter_map(|f| m.doc.get_str(f).ok().map(|v| (Arc::from(f.as_str()), Arc::from(v))))
        .collect()
}

/// Map one record and file it as a candidate or a reject.
#[allow(clippy::too_many_arguments)]
fn add_record(
    spec: &SourceSpec,
    salt: &str,
    rel: &str,
    file_idx: usize,
    raw: source::RawRecord,
    raw_hash: Option<RawHash>,
    firsts: &mut Firsts,
    out: &mut Scanned,
) {
    out.records += 1;
    match map_record(spec, salt, &raw.value) {
        Ok(m) => {
            let emails = emails_of(spec, &m);
            if let Some(reason) = firsts.clash(spec, &m.id, &emails) {
                out.protected_ids.insert(m.id.clone());
                let id = Some(m.id.clone());
                out.rejects.push(record_reject(spec, rel, raw.position, id, reason, &raw.value));
                return;
            }
            firsts.claim(&Arc::from(m.id.as_str()), &emails, file_idx, raw.position);
            out.candidates.push(Candidate {
                mapped: m,
                rel: rel.to_string(),
                position: raw.position,
                raw_hash,
                emails,
            });
        }
        Err(reason) => {
            let id = raw.value.get(&spec.id_field).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
            match id {
                Some(id) => {
                    out.protected_ids.insert(id.to_string());
                }
                None => {
                    out.no_deletes.insert(rel.to_string());
                }
            }
            let id = id.map(str::to_string);
            out.rejects.push(record_reject(spec, rel, raw.position, id, reason, &raw.value));
        }
    }
}

fn reject_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    mapping::hex(&h.finalize()[..12])
}

fn record_reject(
    spec: &SourceSpec,
    rel: &str,
    position: Option<usize>,
    id: Option<String>,
    reason: Reject,
    value: &serde_json::Value,
) -> RejectRecord {
    let content = match value {
        serde_json::Value::Object(obj) => {
            let skip = spec
                .password_field
                .as_deref()
                .filter(|f| obj.get(*f).and_then(|v| v.as_str()).is_some_and(mapping::password_needs_hiding));
            mapping::content_hash("", obj, skip)
        }
        other => mapping::hex(&Sha256::digest(other.to_string().as_bytes())[..12]),
    };
    let pos = position.map(|p| p.to_string()).unwrap_or_default();
    RejectRecord {
        key: reject_key(&[&spec.collection, rel, &pos, reason.code(), &content]),
        collection: spec.collection.clone(),
        rel: rel.to_string(),
        position,
        id,
        reason,
        // Filled in (with plaintext passwords hashed) only when it is stored.
        record: Some(Bson::String(value.to_string())),
    }
}

fn file_reject(spec: &SourceSpec, rel: &str, problem: FileProblem) -> RejectRecord {
    let detail = problem.to_string();
    RejectRecord {
        key: reject_key(&[&spec.collection, rel, "file", problem.code(), &detail]),
        collection: spec.collection.clone(),
        rel: rel.to_string(),
        position: None,
        id: None,
        reason: Reject::File(problem),
        record: None,
    }
}

impl Known {
    fn existing(&self) -> Existing {
        Existing { hash: Some(self.hash.clone()), source: Some(self.source.to_string()), ..Default::default() }
    }
}

/// What MongoDB holds for one document, as far as the mirror cares.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    pub hash: Option<String>,
    pub source: Option<String>,
    pub fields: Vec<String>,
    pub version: Option<bson::DateTime>,
}

fn existing_projection(spec: &SourceSpec) -> Document {
    let mut p = doc! { "_mirror.hash": 1, "_mirror.source": 1, "_mirror.fields": 1 };
    if let Some(v) = &spec.version_field {
        p.insert(v.clone(), 1);
    }
    p
}

fn existing_from(spec: &SourceSpec, d: &Document) -> Option<(String, Existing)> {
    let id = match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => return None,
    };
    let m = d.get_document("_mirror").ok();
    let ex = Existing {
        hash: m.and_then(|m| m.get_str("hash").ok()).map(str::to_string),
        source: m.and_then(|m| m.get_str("source").ok()).map(str::to_string),
        fields: m
            .and_then(|m| m.get_array("fields").ok())
            .map(|a| a.iter().filter_map(|b| b.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        version: spec.version_field.as_ref().and_then(|v| d.get_datetime(v).ok().copied()),
    };
    Some((id, ex))
}

/// The planned writes for one source, and the bookkeeping to check their results.
#[derive(Debug, Default)]
struct Plan {
    inserts: Vec<Candidate>,
    updates: Vec<(Candidate, Existing)>,
    deletes: Vec<(String, Existing)>,
    unchanged: u64,
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
}

/// Reconcile a scope: the heart of sync and watch.
pub async fn reconcile(
    engine: &Arc<Engine>,
    sink: &Sink,
    scope: Scope,
    opts: RunOptions,
    cancel: &CancellationToken,
) -> Result<Summary, Fatal> {
    let mut total = Summary::default();
    let mut per_spec: Vec<Option<Vec<SourceFile>>> = vec![None; engine.layout.sources.len()];
    let mut wanted: Vec<bool> = vec![matches!(scope, Scope::Full); engine.layout.sources.len()];
    let mut whole: Vec<bool> = wanted.clone();
    match scope {
        Scope::Full => {}
        Scope::Sources(specs) => {
            let n = wanted.len();
            for s in specs.into_iter().filter(|s| *s < n) {
                wanted[s] = true;
                whole[s] = true;
            }
        }
        Scope::Files(files) => {
            for f in files {
                if let Some(slot) = per_spec.get_mut(f.spec) {
                    if !slot.as_ref().is_some_and(|v| v.contains(&f)) {
                        slot.get_or_insert_with(Vec::new).push(f.clone());
                    }
                    wanted[f.spec] = true;
                }
            }
        }
    }
    // Whole sources: their collections' hashes are read one collection after
    // the other in the background, and each source is reconciled as soon as its
    // hashes are in, so one source's files are read and compared while MongoDB
    // serves the next collection. (Dropping the set stops the reads, should a
    // source fail.)
    let whole_specs: Vec<usize> = (0..per_spec.len()).filter(|i| wanted[*i] && whole[*i]).collect();
    let (fetched_tx, mut fetched) = tokio::sync::mpsc::channel(whole_specs.len().max(1));
    let mut reader = tokio::task::JoinSet::new();
    let (e, s) = (engine.clone(), sink.clone());
    reader.spawn(async move {
        for spec_idx in whole_specs {
            let t = std::time::Instant::now();
            let existing = fetch_all_hashes(&e, &s, spec_idx).await;
            tracing::debug!(collection = %e.layout.sources[spec_idx].collection, documents = existing.as_ref().map_or(0, HashMap::len), elapsed_ms = t.elapsed().as_millis(), "Fetched what MongoDB holds");
            let failed = existing.is_err();
            if fetched_tx.send((spec_idx, existing)).await.is_err() || failed {
                return;
            }
        }
    });
    while let Some((spec_idx, existing)) = fetched.recv().await {
        if cancel.is_cancelled() {
            return Err(Fatal::Interrupted);
        }
        engine.metrics.set_phase(format!("{}: reading", engine.layout.sources[spec_idx].collection));
        total.add(&reconcile_whole_source(engine, sink, spec_idx, existing?, opts).await?);
    }
    for (spec_idx, files) in per_spec.into_iter().enumerate() {
        let Some(files) = files.filter(|_| wanted[spec_idx] && !whole[spec_idx]) else { continue };
        if cancel.is_cancelled() {
            return Err(Fatal::Interrupted);
        }
        engine.metrics.set_phase(format!("{}: reading", engine.layout.sources[spec_idx].collection));
        total.add(&reconcile_files(engine, sink, spec_idx, files, opts).await?);
    }
    Ok(total)
}

/// A whole source, streamed, given what its collection holds: each chunk of
/// mapped records is compared and written while the next one is mapped.
/// Memory holds a few chunks, not the source.
async fn reconcile_whole_source(
    engine: &Arc<Engine>,
    sink: &Sink,
    spec_idx: usize,
    existing: HashMap<String, Existing>,
    opts: RunOptions,
) -> Result<Summary, Fatal> {
    let t = std::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Candidate>>(1);
    let e = engine.clone();
    // If anything below fails, `rx` is dropped and the scan stops at its next chunk.
    let scan = tokio::task::spawn_blocking(move || {
        let mut emit = |chunk: Vec<Candidate>| tx.blocking_send(chunk).is_ok();
        scan_source(&e, spec_idx, None, Some(&mut emit))
    });
    let mut run = SourceRun::new(engine, sink, spec_idx, opts);
    while let Some(chunk) = rx.recv().await {
        run.chunk(chunk, &existing).await?;
    }
    let mut scanned = scan.await.map_err(|e| Fatal::Source(format!("scan task failed: {e}")))??;
    tracing::debug!(source = %engine.layout.sources[spec_idx].name, records = scanned.records, elapsed_ms = t.elapsed().as_millis(), "Scanned");
    let last = std::mem::take(&mut scanned.candidates);
    run.chunk(last, &existing).await?;
    run.finish(scanned, existing).await
}

/// Some files of a source (watch): scanned in full (the memo keeps that
/// cheap), then compared with what MongoDB holds for them.
async fn reconcile_files(
    engine: &Arc<Engine>,
    sink: &Sink,
    spec_idx: usize,
    files: Vec<SourceFile>,
    opts: RunOptions,
) -> Result<Summary, Fatal> {
    let e = engine.clone();
    let t = std::time::Instant::now();
    let mut scanned = tokio::task::spawn_blocking(move || scan_source(&e, spec_idx, Some(files), None))
        .await
        .map_err(|e| Fatal::Source(format!("scan task failed: {e}")))??;
    tracing::debug!(source = %engine.layout.sources[spec_idx].name, records = scanned.records, unchanged = scanned.unchanged.len(), mapped = scanned.candidates.len(), identical = scanned.identical, elapsed_ms = t.elapsed().as_millis(), "Scanned");
    let existing = fetch_existing(engine, sink, &scanned).await?;
    let mut run = SourceRun::new(engine, sink, spec_idx, opts);
    let mut candidates = std::mem::take(&mut scanned.candidates).into_iter();
    loop {
        let chunk: Vec<Candidate> = candidates.by_ref().take(engine.chunk.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        run.chunk(chunk, &existing).await?;
    }
    run.finish(scanned, existing).await
}

/// Fetch what MongoDB holds for the scanned files of one source.
async fn fetch_existing(
    engine: &Engine,
    sink: &Sink,
    scanned: &Scanned,
) -> Result<HashMap<String, Existing>, SinkError> {
    let spec = &engine.layout.sources[scanned.spec];
    if scanned.complete {
        return fetch_all_hashes(engine, sink, scanned.spec).await;
    }
    if let Some(known) = engine.known.as_ref().and_then(|k| k.lock().ok()) {
        if let Some(coll) = known.get(&spec.collection) {
            let mut out = HashMap::new();
            for c in &scanned.candidates {
                if let Some(k) = coll.get(&c.mapped.id) {
                    out.insert(c.mapped.id.clone(), k.existing());
                }
            }
            // Documents of these files whose records are no longer there. When the
            // memo covers every file read, they are among the vanished records;
            // otherwise look through the picture of the whole collection.
            let covered =
                scanned.read_ok.iter().all(|r| scanned.memo_covered.contains(r)) && scanned.missing.is_empty();
            if covered {
                for v in &scanned.vanished {
                    if let Some(k) = coll.get(&*v.rec.id) {
                        out.entry(v.rec.id.to_string()).or_insert_with(|| k.existing());
                    }
                }
                return Ok(out);
            }
            let present: HashSet<&str> = scanned
                .candidates
                .iter()
                .map(|c| c.mapped.id.as_str())
                .chain(scanned.unchanged.iter().map(|u| &*u.rec.id))
                .collect();
            for (id, k) in coll {
                if (scanned.read_ok.contains(&*k.source) || scanned.missing.contains(&*k.source))
                    && !present.contains(id.as_str())
                {
                    out.entry(id.clone()).or_insert_with(|| k.existing());
                }
            }
            return Ok(out);
        }
    }
    let projection = Some(existing_projection(spec));
    let docs = {
        let mut ids: Vec<String> = scanned.candidates.iter().map(|c| c.mapped.id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut docs = sink.find_by_ids(&spec.collection, &ids, projection.clone()).await?;
        let rels: Vec<Bson> = scanned.read_ok.iter().chain(&scanned.missing).map(|r| Bson::String(r.clone())).collect();
        if !rels.is_empty() {
            docs.extend(sink.find_all(&spec.collection, doc! { "_mirror.source": { "$in": rels } }, projection).await?);
        }
        docs
    };
    Ok(docs.iter().filter_map(|d| existing_from(spec, d)).collect())
}

/// Every document's id and content hash (only the hash: on a large
/// collection every projected field costs the server).
async fn fetch_all_hashes(
    engine: &Engine,
    sink: &Sink,
    spec_idx: usize,
) -> Result<HashMap<String, Existing>, SinkError> {
    let spec = &engine.layout.sources[spec_idx];
    sink.find_map(&spec.collection, doc! {}, Some(doc! { "_mirror.hash": 1 }), |d| existing_from(spec, &d)).await
}

/// One source's reconcile in progress: chunks of candidates are compared and
/// written as they come ([`SourceRun::chunk`]); deletes, the memo, watch's
/// picture and the rejects are settled once the whole scan is in
/// ([`SourceRun::finish`]).
struct SourceRun<'a> {
    engine: &'a Arc<Engine>,
    sink: &'a Sink,
    spec: SourceSpec,
    opts: RunOptions,
    summary: Summary,
    /// Rejects found while comparing and writing (the scan's come at the end).
    rejects: Vec<RejectRecord>,
    ids_in_files: HashSet<String>,
    /// watch: the memo entries of the candidates, committed once settled.
    memo_pending: Vec<MemoEntry>,
    /// watch: which file each candidate came from, for the picture.
    rel_of: HashMap<String, Arc<str>>,
    rels: HashMap<String, Arc<str>>,
    /// watch: what was written, for the picture.
    fresh: Vec<(String, Known)>,
}

impl<'a> SourceRun<'a> {
    fn new(engine: &'a Arc<Engine>, sink: &'a Sink, spec_idx: usize, opts: RunOptions) -> Self {
        SourceRun {
            engine,
            sink,
            spec: engine.layout.sources[spec_idx].clone(),
            opts,
            summary: Summary::default(),
            rejects: Vec::new(),
            ids_in_files: HashSet::new(),
            memo_pending: Vec::new(),
            rel_of: HashMap::new(),
            rels: HashMap::new(),
            fresh: Vec::new(),
        }
    }

    /// Compare one chunk of candidates with what MongoDB holds and write the difference.
    async fn chunk(&mut self, candidates: Vec<Candidate>, existing: &HashMap<String, Existing>) -> Result<(), Fatal> {
        if candidates.is_empty() {
            return Ok(());
        }
        let (engine, sink, opts) = (self.engine, self.sink, self.opts);
        let spec = &self.spec;
        if engine.known.is_some() || engine.memo.is_some() {
            for c in &candidates {
                let rel = match self.rels.get(c.rel.as_str()) {
                    Some(r) => r.clone(),
                    None => {
                        let r: Arc<str> = Arc::from(c.rel.as_str());
                        self.rels.insert(c.rel.clone(), r.clone());
                        r
                    }
                };
                if engine.known.is_some() {
                    self.rel_of.insert(c.mapped.id.clone(), rel.clone());
                }
                if let (Some(h), true) = (c.raw_hash, engine.memo.is_some()) {
                    let rec = MemoRec::new(Arc::from(c.mapped.id.as_str()), c.emails.clone());
                    self.memo_pending.push(MemoEntry { rel, raw_hash: h, rec: Arc::new(rec) });
                }
            }
        }
        // Plan: compare content hashes.
        let mut plan = Plan::default();
        let mut plaintext_same = Vec::new();
        for c in candidates {
            self.ids_in_files.insert(c.mapped.id.clone());
            match existing.get(&c.mapped.id) {
                None => plan.inserts.push(c),
                Some(ex) => {
                    if let Some(other) = other_live_source(engine, spec, &c, ex) {
                        let reason = Reject::DuplicateId { id: c.mapped.id.clone(), first: other };
                        self.rejects.push(candidate_reject(spec, &c, reason));
                        continue;
                    }
                    if ex.hash.as_deref() == Some(c.mapped.hash.as_str()) {
                        if c.mapped.plaintext.is_some() {
                            plaintext_same.push((c, ex.clone()));
                        } else {
                            plan.unchanged += 1;
                        }
                    } else {
                        plan.updates.push((c, ex.clone()));
                    }
                }
            }
        }
        // Plaintext passwords are not in the content hash: check them with bcrypt.
        if !plaintext_same.is_empty() {
            for (c, ex, differs) in plaintext_changed(sink, spec, plaintext_same).await? {
                if differs {
                    plan.updates.push((c, ex));
                } else {
                    plan.unchanged += 1;
                }
            }
        }
        self.summary.unchanged += plan.unchanged;
        // Updates need the fields the mirror owns and the version: one batched read.
        if !plan.updates.is_empty() {
            let ids: Vec<String> = plan.updates.iter().map(|(c, _)| c.mapped.id.clone()).collect();
            let details: HashMap<String, Existing> = sink
                .find_by_ids(&spec.collection, &ids, Some(existing_projection(spec)))
                .await?
                .iter()
                .filter_map(|d| existing_from(spec, d))
                .collect();
            for (c, ex) in plan.updates.iter_mut() {
                if let Some(d) = details.get(&c.mapped.id) {
                    *ex = d.clone();
                }
            }
        }
        if opts.dry_run {
            print_plan(spec, &plan, engine.on_delete);
            self.summary.inserted += count(plan.inserts.len());
            self.summary.updated += count(plan.updates.len());
            return Ok(());
        }
        engine.metrics.set_phase(format!("{}: writing", spec.collection));
        engine
            .metrics
            .ops_planned
            .fetch_add(count(plan.inserts.len() + plan.updates.len()), std::sync::atomic::Ordering::Relaxed);
        self.apply_writes(plan.inserts, plan.updates).await
    }

    /// Deletes, the memo, watch's picture and `mirror_rejects`, once every chunk is in.
    async fn finish(self, mut scanned: Scanned, existing: HashMap<String, Existing>) -> Result<Summary, Fatal> {
        let SourceRun {
            engine,
            sink,
            spec,
            opts,
            mut summary,
            rejects: run_rejects,
            ids_in_files,
            memo_pending,
            rel_of,
            fresh,
            ..
        } = self;
        let spec = &spec;
        summary.files = scanned.files;
        summary.read = scanned.records;
        summary.unchanged += count(scanned.unchanged.len());
        let mut rejects = std::mem::take(&mut scanned.rejects);
        rejects.extend(run_rejects);
        // Deletes: documents the mirror wrote from files it has now read in full
        // (or that are gone) whose records are no longer there.
        let mut gone: Vec<String> = existing
            .keys()
            .filter(|id| !ids_in_files.contains(*id) && !scanned.protected_ids.contains(*id))
            .cloned()
            .collect();
        drop(ids_in_files);
        if !gone.is_empty() && !scanned.unchanged.is_empty() {
            let unchanged: HashSet<&str> = scanned.unchanged.iter().map(|u| &*u.rec.id).collect();
            gone.retain(|id| !unchanged.contains(id.as_str()));
        }
        let details: HashMap<String, Existing> = if gone.is_empty() {
            HashMap::new()
        } else {
            sink.find_by_ids(&spec.collection, &gone, Some(existing_projection(spec)))
                .await?
                .iter()
                .filter_map(|d| existing_from(spec, d))
                .collect()
        };
        let mut deletes: Vec<(String, Existing)> = Vec::new();
        for id in &gone {
            let Some(ex) = details.get(id) else { continue };
            let Some(src) = &ex.source else { continue };
            if scanned.no_deletes.contains(src) {
                continue;
            }
            let authoritative = scanned.read_ok.contains(src)
                || scanned.missing.contains(src)
                || (scanned.complete && !scanned.bad.contains(src) && belongs_to(engine, spec, src));
            if authoritative {
                deletes.push((id.clone(), ex.clone()));
            }
        }
        deletes.sort_by(|a, b| a.0.cmp(&b.0));
        if opts.dry_run {
            if engine.on_delete != OnDelete::Keep {
                summary.deleted = count(deletes.len());
            }
            print_plan(spec, &Plan { deletes, ..Default::default() }, engine.on_delete);
            summary.rejected = count(rejects.len());
            summary.bad_files = count(scanned.bad.len());
            for r in &rejects {
                println!("would reject {} {}: {}", spec.collection, r.locate(), r.reason);
            }
            return Ok(summary);
        }
        engine.metrics.records_scanned.fetch_add(scanned.records, std::sync::atomic::Ordering::Relaxed);
        let mut removed: Vec<String> = Vec::new();
        apply_deletes(engine, sink, spec, deletes, existing.len(), &mut summary, &mut removed).await?;
        if let Some(memo) = &engine.memo {
            // Every record that was settled (written, unchanged, or left alone because
            // MongoDB is newer) is memoised; rejected ones are mapped again next time.
            let rejected: HashSet<&str> = rejects.iter().filter_map(|r| r.id.as_deref()).collect();
            let next: Vec<MemoEntry> = memo_pending.into_iter().filter(|e| !rejected.contains(&*e.rec.id)).collect();
            // A file with a rejected record is read again even when its bytes are
            // the same: a reject can clear without the file changing (an email
            // released by another document).
            let rejected_files: HashSet<&str> = rejects.iter().map(|r| r.rel.as_str()).collect();
            for rel in rejected_files {
                scanned.digests.remove(rel);
            }
            if let Ok(mut memo) = memo.lock() {
                commit_memo(engine, spec, &mut memo, &scanned, next);
            }
        }
        if engine.known.is_some() {
            remember(engine, spec, scanned.complete, &existing, &details, &rel_of, fresh, removed);
        }
        drop(existing);
        summary.bad_files = count(scanned.bad.len());
        let mut bad_paths: Vec<&String> = scanned.bad.iter().collect();
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
        if opts.defer_bad_files {
            rejects.retain(|r| !matches!(r.reason, Reject::File(_)));
            report_bad.clear();
        }
        summary.rejected = count(rejects.len());
        // A deferred bad file keeps its earlier rejects until it is judged.
        let complete = scanned.complete && report_bad.len() == scanned.bad.len();
        let scope = RejectScope { read_ok: &scanned.read_ok, bad: &report_bad, missing: &scanned.missing, complete };
        store_rejects(sink, spec, scope, rejects, opts).await?;
        if summary.changed() {
            summary.changed_collections.push(spec.collection.clone());
        }
        engine.metrics.record_summary(&spec.collection, &summary);
        Ok(summary)
    }
}

/// Make the memo of every file read in full hold what was mirrored from it:
/// entries of records that are gone are dropped, new ones added (no copies of
/// the entries that stay). O(changes) for a file the memo already covered.
fn commit_memo(engine: &Engine, spec: &SourceSpec, memo: &mut Memo, scanned: &Scanned, next: Vec<MemoEntry>) {
    for rel in &scanned.missing {
        memo.remove(rel);
    }
    if scanned.complete {
        // Files of this source that are gone (the memo holds every source's files).
        memo.retain(|rel, _| {
            !belongs_to(engine, spec, rel) || scanned.read_ok.contains(rel) || scanned.bad.contains(rel)
        });
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

/// Update watch's picture of the collection after a reconcile.
#[allow(clippy::too_many_arguments)]
fn remember(
    engine: &Engine,
    spec: &SourceSpec,
    complete: bool,
    existing: &HashMap<String, Existing>,
    details: &HashMap<String, Existing>,
    rel_of: &HashMap<String, Arc<str>>,
    fresh: Vec<(String, Known)>,
    removed: Vec<String>,
) {
    let Some(Ok(mut known)) = engine.known.as_ref().map(|k| k.lock()) else { return };
    // A picture is only ever started by a full scan; until then (at start, or
    // after a failure made watch forget it) changes are compared with MongoDB.
    let coll = if complete {
        let coll = known.entry(spec.collection.clone()).or_default();
        coll.clear();
        coll
    } else {
        match known.get_mut(&spec.collection) {
            Some(coll) => coll,
            None => return,
        }
    };
    // After a partial scan the picture already holds everything but what changed.
    for (id, ex) in existing.iter().filter(|_| complete) {
        let Some(hash) = &ex.hash else { continue };
        let source =
            details.get(id).and_then(|d| d.source.as_deref()).map(Arc::from).or_else(|| rel_of.get(id).cloned());
        if let Some(source) = source {
            coll.insert(id.clone(), Known { hash: hash.clone(), source });
        }
    }
    for (id, k) in fresh {
        coll.insert(id, k);
    }
    for id in removed {
        coll.remove(&id);
    }
}

/// Whether `rel` names a file of this source (used to find documents whose file is gone).
fn belongs_to(engine: &Engine, spec: &SourceSpec, rel: &str) -> bool {
    let prefix = format!("{}/", spec.root.label());
    let _ = engine;
    rel.strip_prefix(&prefix).is_some_and(|r| spec.matches_rel(std::path::Path::new(r)))
}

/// For one-record-per-file sources: another file that still exists already holds this id.
fn other_live_source(engine: &Engine, spec: &SourceSpec, c: &Candidate, ex: &Existing) -> Option<String> {
    let src = ex.source.as_ref()?;
    if src == &c.rel || !spec.is_pattern() || !belongs_to(engine, spec, src) {
        return None;
    }
    let rel = src.strip_prefix(&format!("{}/", spec.root.label()))?;
    let path = engine.roots.dir(spec.root).join(rel);
    // Only a file that still holds the same id keeps it.
    let (bytes, _) = source::read_stable(&path, engine.limits).ok()??;
    let records = source::parse(&bytes, spec.shape).ok()?;
    records
        .iter()
        .any(|r| r.value.get(&spec.id_field).and_then(|v| v.as_str()) == Some(c.mapped.id.as_str()))
        .then(|| src.clone())
}

fn candidate_reject(spec: &SourceSpec, c: &Candidate, reason: Reject) -> RejectRecord {
    let pos = c.position.map(|p| p.to_string()).unwrap_or_default();
    RejectRecord {
        key: reject_key(&[&spec.collection, &c.rel, &pos, reason.code(), &c.mapped.hash]),
        collection: spec.collection.clone(),
        rel: c.rel.clone(),
        position: c.position,
        id: Some(c.mapped.id.clone()),
        reason,
        record: Some(Bson::Document(c.mapped.doc.clone())),
    }
}

async fn plaintext_changed(
    sink: &Sink,
    spec: &SourceSpec,
    same: Vec<(Candidate, Existing)>,
) -> Result<Vec<(Candidate, Existing, bool)>, Fatal> {
    let Some(field) = spec.password_field.clone() else {
        return Ok(same.into_iter().map(|(c, e)| (c, e, false)).collect());
    };
    let ids: Vec<String> = same.iter().map(|(c, _)| c.mapped.id.clone()).collect();
    let docs = sink.find_by_ids(&spec.collection, &ids, Some(doc! { field.clone(): 1 })).await?;
    let stored: HashMap<String, String> = docs
        .iter()
        .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d.get_str(&field).ok()?.to_string())))
        .collect();
    let checked = tokio::task::spawn_blocking(move || {
        same.into_iter()
            .map(|(c, e)| {
                let ok = match (c.mapped.plaintext.as_ref(), stored.get(&c.mapped.id)) {
                    (Some(p), Some(h)) => bcrypt::verify(p.expose(), h).unwrap_or(false),
                    _ => false,
                };
                (c, e, !ok)
            })
            .collect()
    })
    .await
    .map_err(|e| Fatal::Source(format!("bcrypt task failed: {e}")))?;
    Ok(checked)
}

/// Hash plaintext passwords of the records about to be written, on all cores
/// of the blocking pool.
async fn hash_plaintexts(spec: &SourceSpec, cands: Vec<Candidate>) -> Result<Vec<Candidate>, Fatal> {
    let Some(field) = spec.password_field.clone() else {
        return Ok(cands);
    };
    if cands.iter().all(|c| c.mapped.plaintext.is_none()) {
        return Ok(cands);
    }
    tokio::task::spawn_blocking(move || {
        let mut cands = cands;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let chunk = cands.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for part in cands.chunks_mut(chunk) {
                let field = field.as_str();
                s.spawn(move || {
                    for c in part {
                        // bcrypt fails only on an over-long password; such a record is
                        // written without its password rather than in plaintext.
                        if mapping::hash_password(&mut c.mapped, field).is_err() {
                            c.mapped.plaintext = None;
                        }
                    }
                });
            }
        });
        cands
    })
    .await
    .map_err(|e| Fatal::Source(format!("bcrypt task failed: {e}")))
}

fn mirror_doc(c: &Candidate) -> Document {
    doc! {
        "source": &c.rel,
        "hash": &c.mapped.hash,
        "fields": c.mapped.fields(),
        "at": bson::DateTime::now(),
    }
}

fn insert_op(spec: &SourceSpec, c: &Candidate) -> WriteOp {
    let mut d = c.mapped.doc.clone();
    d.insert("_mirror", mirror_doc(c));
    WriteOp::Insert { coll: spec.collection.clone(), doc: d }
}

fn update_op(engine: &Engine, spec: &SourceSpec, c: &Candidate, ex: &Existing) -> WriteOp {
    let mut set = c.mapped.doc.clone();
    set.remove("_id");
    set.insert("_mirror", mirror_doc(c));
    let mut update = doc! { "$set": set };
    let fields = c.mapped.fields();
    let removed: Document = ex
        .fields
        .iter()
        .filter(|f| !fields.contains(f) && f.as_str() != "_id" && f.as_str() != "_mirror")
        .map(|f| (f.clone(), Bson::String(String::new())))
        .collect();
    if !removed.is_empty() {
        update.insert("$unset", removed);
    }
    WriteOp::Update { coll: spec.collection.clone(), filter: update_filter(engine, spec, c), update, upsert: false }
}

/// `{_id}` plus, under newer-wins, "MongoDB's version is not newer than the file's".
/// The check and the write are one server-side operation.
fn update_filter(engine: &Engine, spec: &SourceSpec, c: &Candidate) -> Document {
    let mut f = doc! { "_id": &c.mapped.id };
    if let (Conflict::NewerWins, Some(vf), Some(v)) = (engine.conflict, &spec.version_field, c.mapped.version) {
        // "Not newer than the file": `$gt` with a date matches only later dates,
        // so its negation also matches a missing, null or non-date version.
        // (One condition rather than an `$or`, so every planner uses the _id index.)
        f.insert(vf.clone(), doc! { "$not": { "$gt": v } });
    }
    f
}

impl SourceRun<'_> {
    /// Write inserts and updates, then settle every outcome: duplicates become
    /// rejects, updates refused by the version check become `skipped_newer`, and
    /// anything that raced with another writer is planned again (a few rounds).
    /// Write in slices, so that memory for the operations stays bounded however
    /// large the backfill (the documents are copied into a slice's operations only).
    async fn apply_writes(
        &mut self,
        inserts: Vec<Candidate>,
        updates: Vec<(Candidate, Existing)>,
    ) -> Result<(), Fatal> {
        const SLICE: usize = 10_000;
        let mut inserts = inserts.into_iter();
        loop {
            let slice: Vec<Candidate> = inserts.by_ref().take(SLICE).collect();
            if slice.is_empty() {
                break;
            }
            self.apply_slice(slice, Vec::new()).await?;
        }
        let mut updates = updates.into_iter();
        loop {
            let slice: Vec<(Candidate, Existing)> = updates.by_ref().take(SLICE).collect();
            if slice.is_empty() {
                break;
            }
            self.apply_slice(Vec::new(), slice).await?;
        }
        Ok(())
    }

    async fn apply_slice(&mut self, inserts: Vec<Candidate>, updates: Vec<(Candidate, Existing)>) -> Result<(), Fatal> {
        let (engine, sink, opts) = (self.engine, self.sink, self.opts);
        let spec = &self.spec;
        let (summary, rejects, written) = (&mut self.summary, &mut self.rejects, &mut self.fresh);
        let mut log = |c: &Candidate, action: &str| {
            if opts.log_changes {
                tracing::info!(collection = %spec.collection, id = %c.mapped.id, source = %c.locate(), action, "Mirrored change");
            }
            if engine.known.is_some() {
                written.push((
                    c.mapped.id.clone(),
                    Known { hash: c.mapped.hash.clone(), source: Arc::from(c.rel.as_str()) },
                ));
            }
        };
        const ROUNDS: usize = 4;
        let mut inserts = hash_plaintexts(spec, inserts).await?;
        let (mut upd_c, mut upd_e): (Vec<Candidate>, Vec<Existing>) = updates.into_iter().unzip();
        upd_c = hash_plaintexts(spec, upd_c).await?;
        let mut updates: Vec<(Candidate, Existing)> = upd_c.into_iter().zip(upd_e.drain(..)).collect();

        for round in 0..ROUNDS {
            if inserts.is_empty() && updates.is_empty() {
                break;
            }
            let mut ops: Vec<WriteOp> = inserts.iter().map(|c| insert_op(spec, c)).collect();
            ops.extend(updates.iter().map(|(c, ex)| update_op(engine, spec, c, ex)));
            let results = sink.write(ops).await?;
            let n_ins = inserts.len();
            let mut unsure: Vec<(Candidate, bool, OpResult)> = Vec::new();
            let mut pending =
                inserts.into_iter().map(|c| (c, true)).chain(updates.into_iter().map(|(c, _)| (c, false)));
            for (i, r) in results.into_iter().enumerate() {
                let Some((c, is_insert)) = pending.next() else {
                    break;
                };
                debug_assert_eq!(is_insert, i < n_ins);
                match (&r, is_insert) {
                    (OpResult::Applied { .. }, true) => {
                        summary.inserted += 1;
                        log(&c, "inserted");
                    }
                    (OpResult::Applied { matched: Some(n) }, false) if *n > 0 => {
                        summary.updated += 1;
                        log(&c, "updated");
                    }
                    (OpResult::Failed { message, .. }, _) => {
                        let reason = Reject::IdTaken { id: c.mapped.id.clone(), detail: message.clone() };
                        rejects.push(candidate_reject(spec, &c, reason));
                    }
                    _ => unsure.push((c, is_insert, r)),
                }
            }
            inserts = Vec::new();
            updates = Vec::new();
            if unsure.is_empty() {
                break;
            }
            // Look at what MongoDB holds now for every op whose effect is unknown.
            let ids: Vec<String> = unsure.iter().map(|(c, _, _)| c.mapped.id.clone()).collect();
            let now: HashMap<String, Existing> = sink
                .find_by_ids(&spec.collection, &ids, Some(existing_projection(spec)))
                .await?
                .iter()
                .filter_map(|d| existing_from(spec, d))
                .collect();
            for (c, is_insert, r) in unsure {
                let held = now.get(&c.mapped.id);
                match held {
                    Some(ex)
                        if ex.hash.as_deref() == Some(c.mapped.hash.as_str())
                            && ex.source.as_deref() == Some(c.rel.as_str()) =>
                    {
                        // Our write is there (an earlier attempt of a retried batch, or a
                        // command that reports no per-op counts).
                        if is_insert {
                            summary.inserted += 1;
                            log(&c, "inserted");
                        } else {
                            summary.updated += 1;
                            log(&c, "updated");
                        }
                    }
                    Some(ex) if !is_insert && is_newer(engine, &c, ex) => {
                        summary.skipped_newer += 1;
                        tracing::info!(collection = %spec.collection, id = %c.mapped.id, source = %c.locate(), "Kept newer document in MongoDB (newer-wins)");
                    }
                    None if matches!(r, OpResult::DuplicateKey { .. }) => {
                        match unique_clash(engine, sink, spec, &c).await? {
                            Some(reason) => rejects.push(candidate_reject(spec, &c, reason)),
                            None if round + 1 < ROUNDS => inserts.push(c),
                            None => rejects.push(candidate_reject(spec, &c, retry_exhausted(&c))),
                        }
                    }
                    Some(_) if matches!(r, OpResult::DuplicateKey { .. }) && !is_insert => {
                        match unique_clash(engine, sink, spec, &c).await? {
                            Some(reason) => rejects.push(candidate_reject(spec, &c, reason)),
                            None if round + 1 < ROUNDS => updates.push((c, held.cloned().unwrap_or_default())),
                            None => rejects.push(candidate_reject(spec, &c, retry_exhausted(&c))),
                        }
                    }
                    _ if round + 1 == ROUNDS => rejects.push(candidate_reject(spec, &c, retry_exhausted(&c))),
                    None => inserts.push(c),
                    Some(ex) => updates.push((c, ex.clone())),
                }
            }
        }
        Ok(())
    }
}

fn retry_exhausted(c: &Candidate) -> Reject {
    Reject::IdTaken {
        id: c.mapped.id.clone(),
        detail: "another writer kept changing this document; will be tried again on the next run".into(),
    }
}

fn is_newer(engine: &Engine, c: &Candidate, ex: &Existing) -> bool {
    engine.conflict == Conflict::NewerWins
        && matches!((ex.version, c.mapped.version), (Some(held), Some(file)) if held > file)
}

/// Find the other document that holds one of this record's unique values.
async fn unique_clash(engine: &Engine, sink: &Sink, spec: &SourceSpec, c: &Candidate) -> Result<Option<Reject>, Fatal> {
    let mut fields = engine.indexes.unique_fields(&spec.collection);
    fields.extend(spec.normalize_email.iter().filter(|f| !fields.contains(f)).cloned().collect::<Vec<_>>());
    for field in fields {
        let Ok(value) = c.mapped.doc.get_str(&field) else {
            continue;
        };
        let filter = doc! { field.clone(): value, "_id": { "$ne": &c.mapped.id } };
        let found = sink.find_all(&spec.collection, filter, Some(doc! { "_id": 1 })).await?;
        if let Some(other) = found.first().and_then(|d| d.get("_id")) {
            let other_id = match other {
                Bson::String(s) => s.clone(),
                b => b.to_string(),
            };
            return Ok(Some(Reject::EmailTaken { email: value.to_string(), other_id }));
        }
    }
    Ok(None)
}

async fn apply_deletes(
    engine: &Engine,
    sink: &Sink,
    spec: &SourceSpec,
    deletes: Vec<(String, Existing)>,
    held_total: usize,
    summary: &mut Summary,
    removed: &mut Vec<String>,
) -> Result<(), Fatal> {
    if deletes.is_empty() || engine.on_delete == OnDelete::Keep {
        return Ok(());
    }
    let total = if held_total > deletes.len() {
        held_total
    } else {
        usize::try_from(sink.collection(&spec.collection).estimated_document_count().await.unwrap_or(0))
            .unwrap_or(usize::MAX)
    };
    let n = deletes.len();
    let fraction = if total == 0 { 1.0 } else { ratio(n, total) };
    if n >= 2 && fraction > engine.mass_delete_fraction && !engine.allow_mass_delete {
        summary.deletes_held += count(n);
        tracing::warn!(
            collection = %spec.collection,
            deletes = n,
            documents = total,
            "Holding back deletes: they would remove more than {:.0}% of the collection in one change \
             (a file truncated or removed by mistake?). Rerun with --allow-mass-delete if this is intended",
            engine.mass_delete_fraction * 100.0
        );
        return Ok(());
    }
    let ids: Vec<String> = deletes.iter().map(|(id, _)| id.clone()).collect();
    if engine.on_delete == OnDelete::Archive {
        let docs = sink.find_by_ids(&spec.collection, &ids, None).await?;
        let now = bson::DateTime::now();
        let ops: Vec<WriteOp> = docs
            .into_iter()
            .map(|d| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                let hash =
                    d.get_document("_mirror").ok().and_then(|m| m.get_str("hash").ok()).unwrap_or("").to_string();
                WriteOp::Insert {
                    coll: ARCHIVE.to_string(),
                    doc: doc! {
                        "_id": { "collection": &spec.collection, "id": id.clone(), "hash": hash },
                        "collection": &spec.collection,
                        "doc_id": id,
                        "deleted_at": now,
                        "document": d,
                    },
                }
            })
            .collect();
        for r in sink.write(ops).await? {
            if let OpResult::Failed { message, .. } = r {
                return Err(Fatal::Mongo(format!(
                    "cannot archive a document of {} before deleting it: {message}",
                    spec.collection
                )));
            }
        }
    }
    let ops: Vec<WriteOp> = deletes
        .iter()
        .map(|(id, ex)| {
            let mut filter = doc! { "_id": id };
            if let Some(h) = &ex.hash {
                filter.insert("_mirror.hash", h);
            }
            WriteOp::Delete { coll: spec.collection.clone(), filter }
        })
        .collect();
    let results = sink.write(ops).await?;
    for ((id, ex), r) in deletes.iter().zip(results) {
        if matches!(r, OpResult::Applied { .. }) {
            removed.push(id.clone());
            if engine.on_delete == OnDelete::Archive {
                summary.archived += 1;
            } else {
                summary.deleted += 1;
            }
            tracing::info!(collection = %spec.collection, id = %id, source = ex.source.as_deref().unwrap_or(""), action = if engine.on_delete == OnDelete::Archive { "archived" } else { "deleted" }, "Record gone from the files");
        }
    }
    Ok(())
}

/// The files whose rejects a reconcile is the authority on.
struct RejectScope<'a> {
    read_ok: &'a HashSet<String>,
    bad: &'a HashSet<String>,
    missing: &'a HashSet<String>,
    /// Every file of the source (rejects of vanished files are cleared too).
    complete: bool,
}

/// Make `mirror_rejects` hold exactly the current rejects of the scanned files:
/// new ones are inserted (plaintext passwords hashed), cleared ones removed.
async fn store_rejects(
    sink: &Sink,
    spec: &SourceSpec,
    scope: RejectScope<'_>,
    rejects: Vec<RejectRecord>,
    opts: RunOptions,
) -> Result<(), Fatal> {
    let scope_filter = if scope.complete {
        doc! { "collection": &spec.collection }
    } else {
        let rels: Vec<Bson> =
            scope.read_ok.iter().chain(scope.bad).chain(scope.missing).map(|r| Bson::String(r.clone())).collect();
        doc! { "collection": &spec.collection, "source": { "$in": rels } }
    };
    let stored: HashSet<String> = sink
        .find_all(REJECTS, scope_filter.clone(), Some(doc! { "_id": 1 }))
        .await?
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect();
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
    let new = hash_reject_records(spec, new).await?;
    let ops: Vec<WriteOp> =
        new.iter().map(|r| WriteOp::Insert { coll: REJECTS.to_string(), doc: r.to_document() }).collect();
    for r in sink.write(ops).await? {
        if let OpResult::Failed { message, .. } = r {
            return Err(Fatal::Mongo(format!("cannot store a reject in {REJECTS}: {message}")));
        }
    }
    let stale: Vec<Bson> =
        stored.iter().filter(|k| !current.contains(k.as_str())).map(|k| Bson::String(k.clone())).collect();
    if !stale.is_empty() {
        let ops = vec![WriteOp::DeleteMany { coll: REJECTS.to_string(), filter: doc! { "_id": { "$in": stale } } }];
        sink.write(ops).await?;
    }
    Ok(())
}

/// Turn the raw JSON kept in each new reject into the stored copy (bcrypt for
/// plaintext passwords: CPU work, off the async workers).
async fn hash_reject_records(spec: &SourceSpec, rejects: Vec<RejectRecord>) -> Result<Vec<RejectRecord>, Fatal> {
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
    .map_err(|e| Fatal::Source(format!("reject task failed: {e}")))
}

fn print_plan(spec: &SourceSpec, plan: &Plan, on_delete: OnDelete) {
    for c in &plan.inserts {
        println!("would insert {}/{} from {}", spec.collection, c.mapped.id, c.locate());
    }
    for (c, ex) in &plan.updates {
        let fields = c.mapped.fields();
        let removed: Vec<&String> = ex.fields.iter().filter(|f| !fields.contains(f)).collect();
        if removed.is_empty() {
            println!("would update {}/{} from {}", spec.collection, c.mapped.id, c.locate());
        } else {
            println!("would update {}/{} from {} (removing {:?})", spec.collection, c.mapped.id, c.locate(), removed);
        }
    }
    if on_delete != OnDelete::Keep {
        for (id, ex) in &plan.deletes {
            let verb = if on_delete == OnDelete::Archive { "archive" } else { "delete" };
            println!("would {verb} {}/{} (gone from {})", spec.collection, id, ex.source.as_deref().unwrap_or("?"));
        }
    }
}

fn ratio(n: usize, total: usize) -> f64 {
    // Counts of documents are far below 2^53, where f64 is exact.
    f64::from(u32::try_from(n).unwrap_or(u32::MAX)) / f64::from(u32::try_from(total).unwrap_or(u32::MAX))
}

/// A count as u64 (lossless on every platform Rust supports).
pub fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Roots;
    use std::path::PathBuf;

    fn engine() -> Engine {
        let roots = Roots { data: PathBuf::from("/p/data"), artifacts: PathBuf::from("/p/artifacts") };
        let mut e = Engine::new(Layout::builtin(), roots, IndexSet::builtin());
        e.memo = Some(std::sync::Mutex::default());
        e.known = Some(std::sync::Mutex::default());
        e
    }

    fn entry(rel: &str, h: RawHash, id: &str) -> MemoEntry {
        MemoEntry { rel: Arc::from(rel), raw_hash: h, rec: Arc::new(MemoRec::new(Arc::from(id), Vec::new())) }
    }

    fn spec_of(e: &Engine, collection: &str) -> (usize, SourceSpec) {
        let i = e.layout.sources.iter().position(|s| s.collection == collection).unwrap();
        (i, e.layout.sources[i].clone())
    }

    #[test]
    fn a_full_scan_keeps_the_memo_of_other_sources() {
        let e = engine();
        let (users, users_spec) = spec_of(&e, "users");
        let (jobs, jobs_spec) = spec_of(&e, "training_jobs");
        let mut memo = Memo::new();
        // A full scan of users, then of jobs (one job file left, one gone).
        let scanned = Scanned {
            spec: users,
            complete: true,
            read_ok: HashSet::from(["data/users.json".to_string()]),
            ..Default::default()
        };
        commit_memo(&e, &users_spec, &mut memo, &scanned, vec![entry("data/users.json", 1, "u1")]);
        memo.insert("artifacts/jobs/gone.json".into(), FileMemo::default());
        let scanned = Scanned {
            spec: jobs,
            complete: true,
            read_ok: HashSet::from(["artifacts/jobs/j1.json".to_string()]),
            ..Default::default()
        };
        commit_memo(&e, &jobs_spec, &mut memo, &scanned, vec![entry("artifacts/jobs/j1.json", 2, "j1")]);
        assert_eq!(memo.get("data/users.json").map(|m| m.recs.len()), Some(1), "users' memo must survive");
        assert_eq!(memo.get("artifacts/jobs/j1.json").map(|m| m.recs.len()), Some(1));
        assert!(!memo.contains_key("artifacts/jobs/gone.json"), "a vanished file of the scanned source goes");
    }

    #[test]
    fn a_failure_forgets_what_it_may_have_half_written() {
        let e = engine();
        let (users, _) = spec_of(&e, "users");
        let users_file = SourceFile { spec: users, rel: "data/users.json".into(), path: "/p/data/users.json".into() };
        {
            let mut memo = e.memo.as_ref().unwrap().lock().unwrap();
            memo.insert("data/users.json".into(), FileMemo { digest: Some(7), recs: Default::default() });
            memo.insert("artifacts/jobs/j1.json".into(), FileMemo::default());
            let mut known = e.known.as_ref().unwrap().lock().unwrap();
            let k = Known { hash: "h".into(), source: Arc::from("data/users.json") };
            known.entry("users".into()).or_default().insert("u1".into(), k.clone());
            known.entry("training_jobs".into()).or_default().insert("j1".into(), k);
        }
        e.forget(Some(std::slice::from_ref(&users_file)));
        {
            let memo = e.memo.as_ref().unwrap().lock().unwrap();
            assert!(!memo.contains_key("data/users.json"), "the failed file's memo (and digest) must go");
            assert!(memo.contains_key("artifacts/jobs/j1.json"));
            let known = e.known.as_ref().unwrap().lock().unwrap();
            assert!(!known.contains_key("users") && known.contains_key("training_jobs"));
        }
        // No picture is started again by a partial reconcile.
        let (_, users_spec) = spec_of(&e, "users");
        let fresh = vec![("u2".to_string(), Known { hash: "h2".into(), source: Arc::from("data/users.json") })];
        remember(&e, &users_spec, false, &HashMap::new(), &HashMap::new(), &HashMap::new(), fresh, Vec::new());
        assert!(!e.known.as_ref().unwrap().lock().unwrap().contains_key("users"));
        e.forget(None);
        assert!(e.memo.as_ref().unwrap().lock().unwrap().is_empty());
        assert!(e.known.as_ref().unwrap().lock().unwrap().is_empty());
    }
}
