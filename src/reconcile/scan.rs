//! Stage 1, scan: read a source's files, split them into records, map each
//! record, and apply the first-keeps-it rule for ids and unique values (the
//! first record that uses an id or an email keeps it; later ones are
//! rejected). With watch's [`Memory`], records whose raw text is unchanged
//! are neither parsed nor mapped again; nor are those whose text the target
//! itself keeps beside the row it wrote from it (PostgreSQL's `sync`: see
//! [`scan_source`]'s `texts`).
//!
//! Blocking file I/O and CPU work: async callers run it on the blocking pool.
//! Invariant: every record read ends in exactly one of `candidates`
//! (or emitted chunks), `unchanged` or `rejects`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::firsts::Firsts;
use super::hits::{clash_keys, emails_of, Flagged, Hit};
use super::lookup::Found;
use super::memo::{raw_hash, text_seed, FileMemo, Ids, Marked, Memo, MemoEntry, Memory, RawHash};
use super::packed::{self, mark, Places};
use super::rejects::{file_reject, mapped_reject, record_reject, unparsable_reject, RejectRecord};
use super::Engine;
use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::mapping::{map_record, Mapped, Reject};
use crate::source::{self, SourceFile};

mod streamed;

/// A mapped record that is ready to be compared.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub mapped: Mapped,
    pub rel: Arc<str>,
    pub position: Option<usize>,
    /// Hash of the record's raw JSON text (watch's per-file memo).
    pub raw_hash: Option<RawHash>,
    /// The same, where the target may keep it beside the row (PostgreSQL):
    /// `None` for a record with a plaintext password, whose text must not
    /// be recognisable from a fast hash stored in the database.
    pub stored_text: Option<RawHash>,
    /// The record's unique values (`(field, value)`), shared with the memo.
    pub emails: Vec<(Arc<str>, Arc<str>)>,
    /// `mapped.id`, shared by the scan's first-keeps-it table, the memo and
    /// the picture (one copy of each id however many remember it).
    pub id: Arc<str>,
}

impl Candidate {
    /// A mapped record from outside a scan (no raw-text hashes, no unique
    /// values noted): what tests hand a target directly.
    pub fn unhashed(mapped: Mapped, rel: &str, position: Option<usize>) -> Candidate {
        let id = Arc::from(mapped.id.as_str());
        Candidate { mapped, rel: Arc::from(rel), position, raw_hash: None, stored_text: None, emails: Vec::new(), id }
    }

    pub fn locate(&self) -> String {
        match self.position {
            Some(p) => format!("{}[{p}]", self.rel),
            None => self.rel.to_string(),
        }
    }

    /// This record as a reject: it was mapped, but cannot be written.
    pub fn reject(&self, spec: &SourceSpec, reason: Reject) -> RejectRecord {
        mapped_reject(spec, &self.rel, self.position, &self.mapped, reason)
    }
}

/// One source's files, read and mapped.
#[derive(Debug, Default)]
pub struct Scanned {
    pub spec: usize,
    pub candidates: Vec<Candidate>,
    pub rejects: Vec<RejectRecord>,
    /// Files read completely (their records are the whole truth for them).
    pub read_ok: HashSet<Arc<str>>,
    /// Files confirmed absent.
    pub missing: HashSet<Arc<str>>,
    /// Files that could not be read or parsed: documents from them are left alone.
    pub bad: HashSet<Arc<str>>,
    /// Ids of rejected records: never deleted because of the reject.
    pub protected_ids: HashSet<String>,
    /// Files with a rejected record that has no usable id: no deletes from them.
    pub no_deletes: HashSet<Arc<str>>,
    /// Whether the scan covered every file of the source.
    pub complete: bool,
    pub files: u64,
    pub records: u64,
    /// Records whose raw text is the same as when they were last mirrored
    /// (those of the target's texts; watch's are [`Scanned::marked`]).
    pub unchanged: Ids,
    /// Unchanged records left in watch's memo, marked.
    pub marked: Marked,
    /// Files whose every mirrored record is in the memo.
    pub memo_covered: HashSet<Arc<str>>,
    /// Memoised records of those files whose text is gone (changed or removed),
    /// or that are no longer settled (now a duplicate).
    pub vanished: Vec<MemoEntry>,
    /// Files found byte-for-byte as last settled (watch): not read further.
    pub identical: HashSet<Arc<str>>,
    /// The hash of every file read in full (watch), with its stamp where
    /// the stamp proves those bytes ([`source::Stamp::settled`]).
    pub digests: HashMap<Arc<str>, (RawHash, Option<source::Stamp>)>,
    /// The ids the records kept, and their files (see [`Firsts`]).
    pub firsts: Firsts,
}

impl Scanned {
    /// How many records were found unchanged.
    pub fn unchanged_len(&self) -> usize {
        self.unchanged.len() + self.marked.count
    }
}

/// By default, candidates are handed on in chunks of this many during a full
/// scan (`--chunk-records`), so a source's mapped documents never all exist at once.
pub const CHUNK: usize = 1_000;

/// Where a scan hands on full chunks of candidates; `false` means nobody is
/// listening any more (the run failed), and the scan stops.
pub type Emit<'a> = &'a mut dyn FnMut(Vec<Candidate>) -> bool;

/// Read and map one source's files: all of them (`files: None`) or these.
/// With `emit`, candidates are handed on in chunks of `engine.chunk` as they
/// are mapped, and `candidates` holds only the last, partial chunk at the end.
///
/// `texts`: per file, the texts of the records the target holds rows of,
/// as the target keeps them (read in this run, with the content hashes). A
/// record whose text is among its file's was written from exactly that text
/// under these rules, so its row holds what mapping it would give: it is
/// unchanged without being mapped, once the first-keeps-it rule (checked
/// for every such record) lets it keep its id and unique values. They may
/// come `Later`: the files are read (and split and hashed) meanwhile, and
/// the scan waits for them before its first lookup.
pub fn scan_source(
    engine: &Engine,
    memory: Option<&Memory>,
    texts: Texts,
    spec_idx: usize,
    files: Option<Vec<SourceFile>>,
    mut emit: Option<Emit<'_>>,
) -> Result<Scanned, Fatal> {
    let spec = &engine.layout.sources[spec_idx];
    // The settled hits' mark: this scan's own.
    let pass = memory.map_or(0, |m| m.scans.fetch_add(1, Ordering::Relaxed) + 1);
    let marked = Marked { pass: mark(pass), ..Marked::default() };
    let mut out = Scanned { spec: spec_idx, complete: files.is_none(), marked, ..Default::default() };
    let files = match files {
        Some(f) => f,
        None => source::discover(&engine.layout, &engine.roots, spec_idx).map_err(|(rel, problem)| {
            Fatal::Source(format!("{rel} ({}): {problem}", engine.roots.dir(spec.root).display()))
        })?,
    };
    // The target's texts serve only scans without watch's memory.
    let mut texts = if memory.is_some() { Texts::None } else { texts };
    let mut pass = Pass {
        engine,
        memory,
        spec,
        fingerprint: &engine.fingerprints[spec_idx],
        seed: text_seed(&engine.fingerprints[spec_idx]),
        firsts: Firsts::default(),
        unique_fields: spec.normalize_email.iter().map(|f| Arc::from(f.as_str())).collect(),
        single_file: files.len() == 1,
        mark: out.marked.pass,
        // Memo hits are trusted only for changed files: full scans check every
        // record against the target, which is what makes them a safety net.
        use_hits: memory.is_some() && !out.complete,
    };
    if files.len() < READ_AHEAD_FROM {
        for file in files {
            if pass.streams(&file) {
                if !pass.stream_file(&file, &mut texts, &mut out, &mut emit) {
                    break;
                }
                continue;
            }
            if pass.streams_hits(&file) {
                if !pass.stream_hits(&file, &mut out, &mut emit) {
                    break;
                }
                continue;
            }
            let read = read_file(memory, &file, engine.limits);
            if !pass.file(&file, read, &mut texts, &mut out, &mut emit) {
                break;
            }
        }
    } else {
        pass.read_ahead(files, &mut texts, &mut out, &mut emit);
    }
    out.firsts = std::mem::take(&mut pass.firsts);
    out.firsts.done();
    Ok(out)
}

impl Pass<'_> {
    /// A file that could not be read or parsed: a reject, and its documents left alone.
    fn refuse(&mut self, file: &SourceFile, problem: source::FileProblem, out: &mut Scanned) -> bool {
        out.bad.insert(file.rel.clone());
        out.rejects.push(file_reject(self.spec, &file.rel, problem));
        true
    }

    /// The files of a scan of many, read on a second thread (see below).
    fn read_ahead(
        &mut self,
        files: Vec<SourceFile>,
        texts: &mut Texts,
        out: &mut Scanned,
        emit: &mut Option<Emit<'_>>,
    ) {
        let memory = self.memory;
        // Many files (a folder of job files): a second thread reads them in
        // order while this one maps, so the system calls of one file overlap
        // the mapping of the one before. A bounded queue: at most a few files
        // wait in memory.
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(SourceFile, Read)>>(2);
            let limits = self.engine.limits;
            let reader = scope.spawn(move || {
                let mut files = files.into_iter().peekable();
                while files.peek().is_some() {
                    let batch: Vec<_> = files
                        .by_ref()
                        .take(READ_AHEAD)
                        .map(|f| {
                            let read = read_file(memory, &f, limits);
                            (f, read)
                        })
                        .collect();
                    if tx.send(batch).is_err() {
                        return; // The scan stopped.
                    }
                }
            });
            'all: for batch in rx.iter() {
                for (file, read) in batch {
                    if !self.file(&file, read, texts, out, emit) {
                        break 'all;
                    }
                }
            }
            drop(rx);
            let _ = reader.join();
        });
    }
}

/// The memo covers this file (it holds every record mirrored from it), and
/// these of its records are gone from it.
fn covered<'a>(out: &mut Scanned, rel: &Arc<str>, gone: impl Iterator<Item = (RawHash, packed::Rec<'a>)>) {
    out.memo_covered.insert(rel.clone());
    out.vanished.extend(gone.map(|(raw_hash, rec)| MemoEntry { rel: rel.clone(), raw_hash, id: rec.id().into() }));
}

/// A file's bytes: those a start from the checkpoint read already, or read now.
fn read_file(memory: Option<&Memory>, file: &SourceFile, limits: source::ReadLimits) -> Read {
    match memory.and_then(|m| m.take_read(&file.rel)) {
        Some(bytes) => Ok(Some(bytes)),
        None => source::read_stable(&file.path(), limits),
    }
}

/// Records of a streamed file mapped together (see [`Pass::stream_file`]).
const STREAM_BLOCK: usize = 1_024;

/// Scans of at least this many files read them on a second thread.
const READ_AHEAD_FROM: usize = 64;
/// Files read ahead in one go (twice this many wait at most).
const READ_AHEAD: usize = 32;

/// The target's texts for [`scan_source`].
pub enum Texts {
    None,
    /// Sent once the target has answered (`None`: no texts after all).
    Later(std::sync::mpsc::Receiver<Option<Memo>>),
    Ready(Memo),
}

impl Texts {
    /// The texts, waiting for them the first time if they come later.
    fn get(&mut self) -> Option<&Memo> {
        if let Texts::Later(rx) = self {
            *self = match rx.recv() {
                Ok(Some(m)) => Texts::Ready(m),
                _ => Texts::None,
            };
        }
        match self {
            Texts::Ready(m) => Some(m),
            Texts::None | Texts::Later(_) => None,
        }
    }
}

/// A file's records as looked up: where its known texts come from, each
/// record's entry there, and the hits to check (`None`: all of them).
struct Looked<'m> {
    memo: Option<(&'m FileMemo, Hits)>,
    found: Found<'m, packed::Slot>,
    flagged: Option<Flagged>,
}

/// What reading one file gave.
type Read = Result<Option<source::FileBytes>, source::FileProblem>;

/// One scan over a source's files.
struct Pass<'a> {
    engine: &'a Engine,
    memory: Option<&'a Memory>,
    spec: &'a SourceSpec,
    fingerprint: &'a str,
    /// [`raw_hash`]'s seed for this source's rules.
    seed: u64,
    firsts: Firsts,
    /// The names of the unique fields, made once and shared by every record.
    unique_fields: Vec<Arc<str>>,
    single_file: bool,
    /// The mark of this pass in [`super::memo::Rec::seen`].
    mark: u32,
    use_hits: bool,
}

impl Pass<'_> {
    /// Read one file into `out`; `false` when nobody listens any more.
    fn file(
        &mut self,
        file: &SourceFile,
        read: Read,
        texts: &mut Texts,
        out: &mut Scanned,
        emit: &mut Option<Emit<'_>>,
    ) -> bool {
        out.files += 1;
        let (bytes, settled, known) = match read {
            Ok(None) => {
                self.missing(file, out);
                return true;
            }
            Ok(Some(f)) => (f.bytes, f.settled, f.digest),
            Err(problem) => return self.refuse(file, problem, out),
        };
        let memory = self.memory;
        // A changed file's bytes may be just as they were last settled (a writer
        // that rewrites without changing anything, or a second event for one write).
        let digest = memory.map(|_| known.unwrap_or_else(|| xxhash_rust::xxh3::xxh3_128(&bytes)));
        if self.use_hits {
            let settled = memory.and_then(|m| m.memo.lock().ok()).and_then(|m| m.get(&file.rel)?.digest);
            if settled.is_some() && settled == digest {
                out.identical.insert(file.rel.clone());
                return true;
            }
        }
        // Records are split out as raw text and turned into values one at a
        // time: a 100,000-record file never exists as 100,000 values at once.
        let raws = match source::parse_raw(&bytes, self.spec.shape) {
            Ok(r) => r,
            Err(problem) => return self.refuse(file, problem, out),
        };
        out.read_ok.insert(file.rel.clone());
        if let Some(d) = digest {
            out.digests.insert(file.rel.clone(), (d, settled));
        }
        // Held for this file's records only; reconciles run one at a time.
        let guard = if self.use_hits { memory.and_then(|m| m.memo.lock().ok()) } else { None };
        let memo = match guard.as_ref() {
            // (A memo short of some records does not stand for the file.)
            Some(m) => m.get(&file.rel).filter(|m| !m.recs.is_short()).map(|m| (m, Hits::Memo)),
            None => texts.get().and_then(|t| t.get(&file.rel)).map(|m| (m, Hits::Target)),
        };
        self.records(file, raws, memo, out, emit)
    }

    /// A file found absent. Where watch's memo holds what was mirrored from
    /// it, every record there is gone and the memo covers the file: its
    /// documents are found by id, not by their source.
    fn missing(&mut self, file: &SourceFile, out: &mut Scanned) {
        out.missing.insert(file.rel.clone());
        let Some(memo) = self.memory.filter(|_| self.use_hits).and_then(|m| m.memo.lock().ok()) else { return };
        let Some(m) = memo.get(&file.rel).filter(|m| !m.recs.is_short()) else { return };
        covered(out, &file.rel, m.recs.iter());
    }

    /// The records of one file, in order, all at hand.
    fn records(
        &mut self,
        file: &SourceFile,
        raws: Vec<(Option<usize>, &str)>,
        memo: Option<(&FileMemo, Hits)>,
        out: &mut Scanned,
        emit: &mut Option<Emit<'_>>,
    ) -> bool {
        let hashes: Vec<RawHash> = raws.iter().map(|(_, t)| raw_hash(self.seed, t)).collect();
        // Each text looked up once (both passes below use the answer).
        let found = memo.map(|(m, _)| m.recs.look_up_all(&hashes)).unwrap_or_default();
        // In a scan of one file, only the hits that share a key with a record
        // that is not a hit need the first-keeps-it check. (The target's texts
        // were not necessarily settled together: every hit is checked.)
        let flagged = match memo {
            Some((m, Hits::Memo)) if self.single_file => {
                Some(self.flag(file, m, &found, raws.iter().enumerate().map(|(i, (_, t))| (i, Some(*t)))))
            }
            _ => None,
        };
        let text = |i: usize| raws.get(i).map_or((None, None), |(p, t)| (*p, Some(*t)));
        self.judge(file, &hashes, &text, Looked { memo, found, flagged }, out, emit)
    }

    /// The hits of a file that share an id or a unique value with a record
    /// that is not one (see [`clash_keys`]; `keyed`: the records that may).
    fn flag<'t>(
        &self,
        file: &SourceFile,
        m: &FileMemo,
        found: &Found<'_, packed::Slot>,
        keyed: impl Iterator<Item = (usize, Option<&'t str>)>,
    ) -> Flagged {
        let salt = self.salt(file);
        let keys = clash_keys((self.spec, &self.unique_fields), &salt, keyed, (found, &m.recs));
        Flagged(if keys.is_empty() { Places::default() } else { m.recs.places_where(|r| keys.touches(r)) })
    }

    /// The content hash covers the file's name too: a record that moves
    /// to another file is written again (its `_mirror.source` changes).
    fn salt(&self, file: &SourceFile) -> String {
        format!("{}\u{0}{}", self.fingerprint, file.rel)
    }

    /// The records of one file, in order, by their hashes: `text(i)` gives
    /// the `i`th record's position and, where the scan has it, its text (a
    /// file compared in a stream has only those that may be needed).
    fn judge<'t>(
        &mut self,
        file: &SourceFile,
        hashes: &[RawHash],
        text: &dyn Fn(usize) -> (Option<usize>, Option<&'t str>),
        Looked { memo, found, flagged }: Looked<'_>,
        out: &mut Scanned,
        emit: &mut Option<Emit<'_>>,
    ) -> bool {
        let from_memory = matches!(memo, Some((_, Hits::Memo)));
        let memo = memo.map(|(m, _)| m);
        let spec = self.spec;
        let salt = self.salt(file);
        let file_idx = self.firsts.file(&file.rel);
        if from_memory {
            out.marked.rels.push(file.rel.clone());
        }
        for (i, raw_hash) in hashes.iter().copied().enumerate() {
            let (position, text) = text(i);
            if let (Some(m), Some(slot)) = (memo, found.slot(i)) {
                let hit = Hit { slot, flagged: flagged.as_ref(), from_memory, file_idx, position };
                if self.hit(&m.recs, hit, out) {
                    continue;
                }
                // Now a duplicate of an earlier record: no longer settled, mapped again below.
            }
            let Some(text) = text else {
                // (Never: a streamed file's texts include every hit that is checked.)
                tracing::error!(file = %file.rel, ?position, "A record's text was not at hand; nothing is deleted from the file");
                out.records += 1;
                out.no_deletes.insert(file.rel.clone());
                continue;
            };
            let value = match source::parse_value(text) {
                Ok(v) => v,
                Err(problem) => {
                    out.records += 1;
                    out.no_deletes.insert(file.rel.clone());
                    out.rejects.push(unparsable_reject(spec, &file.rel, position, text, problem));
                    continue;
                }
            };
            let raw = source::RawRecord { position, value };
            self.add_record((&salt, &file.rel, file_idx), raw, raw_hash, out);
            if out.candidates.len() >= self.engine.chunk.max(1) {
                if let Some(emit) = emit.as_mut() {
                    if !emit(std::mem::take(&mut out.candidates)) {
                        return false;
                    }
                }
            }
        }
        // Records mirrored from this file whose text is no longer there: changed or gone.
        if let (Some(m), true) = (memo, from_memory) {
            covered(out, &file.rel, m.recs.marked(self.mark, false));
        }
        true
    }

    /// A memo hit: unchanged when the first-keeps-it rule lets it keep its id
    /// and unique values (`false`: it is mapped again). An unflagged hit's
    /// bytes are not read: the memo keeps it, marked (see [`Marked`]).
    fn hit(&mut self, recs: &packed::Recs, hit: Hit<'_>, out: &mut Scanned) -> bool {
        // (Only a scan of watch's memo flags hits: the target's are all checked.)
        if hit.flagged.is_none_or(|f| f.contains(hit.slot.at())) {
            let Some(rec) = recs.rec(hit.slot) else { return false };
            if self.firsts.clash(rec.id(), rec.uniques()).is_some() {
                return false;
            }
            self.firsts.claim(rec.id(), rec.uniques(), hit.file_idx, hit.position);
            if !hit.from_memory {
                out.unchanged.push(rec.id());
            }
        }
        hit.slot.mark(self.mark);
        out.records += 1;
        out.marked.count += usize::from(hit.from_memory);
        true
    }
}

/// Where a file's known texts come from.
#[derive(Clone, Copy)]
enum Hits {
    /// watch's memo.
    Memo,
    /// The target's own record of the texts it holds rows of.
    Target,
}

impl Pass<'_> {
    /// Map one record and file it as a candidate or a reject.
    fn add_record(
        &mut self,
        (salt, rel, file_idx): (&str, &Arc<str>, usize),
        raw: source::RawRecord,
        raw_hash: RawHash,
        out: &mut Scanned,
    ) {
        let spec = self.spec;
        out.records += 1;
        match map_record(spec, salt, &raw.value) {
            Ok(m) => {
                let emails = emails_of(&self.unique_fields, &m);
                if let Some(reason) = self.firsts.clash(&m.id, emails.iter().map(|(f, v)| (f, &**v))) {
                    out.protected_ids.insert(m.id.clone());
                    let id = Some(m.id.clone());
                    out.rejects.push(record_reject(spec, rel, raw.position, id, reason, &raw.value));
                    return;
                }
                let id: Arc<str> = Arc::from(m.id.as_str());
                self.firsts.claim(&id, emails.iter().map(|(f, v)| (f, &**v)), file_idx, raw.position);
                let stored_text = m.plaintext.is_none().then_some(raw_hash);
                out.candidates.push(Candidate {
                    mapped: m,
                    rel: rel.clone(),
                    position: raw.position,
                    raw_hash: Some(raw_hash),
                    stored_text,
                    emails,
                    id,
                });
            }
            Err(reason) => {
                let id = raw.value.get(&spec.id_field).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
                match id {
                    Some(id) => {
                        out.protected_ids.insert(id.to_string());
                    }
                    None => {
                        out.no_deletes.insert(rel.clone());
                    }
                }
                let id = id.map(str::to_string);
                out.rejects.push(record_reject(spec, rel, raw.position, id, reason, &raw.value));
            }
        }
    }
}
