//! Large array files read in a stream ([`source::stream`]), never held
//! whole: in a full scan, record by record ([`Pass::stream_file`]); changed
//! under watch, compared with the file's memo by the records' hashes, with
//! only the texts that may be needed read again ([`Pass::stream_hits`]).

use std::collections::HashMap;

use super::{read_file, Emit, Hits, Looked, Pass, Scanned, Texts, STREAM_BLOCK};
use crate::reconcile::memo::{raw_hash, raw_hash_of, RawHash};
use crate::source::{self, SourceFile};

impl Pass<'_> {
    /// Whether this file is read in a stream ([`source::stream`]): a large
    /// array file, in a scan that looks no record up in watch's memo (one
    /// that does streams it by [`Pass::stream_hits`]).
    pub(super) fn streams(&self, file: &SourceFile) -> bool {
        let limits = self.engine.limits;
        self.spec.shape == crate::layout::Shape::Array
            && !self.use_hits
            && self.memory.is_none_or(|m| m.read.lock().is_ok_and(|r| !r.contains_key(&*file.rel)))
            && std::fs::metadata(file.path()).is_ok_and(|m| source::stream::worth_it(m.len(), limits))
    }

    /// One large array file, checked whole and then read record by record
    /// in blocks; `false` when nobody listens any more.
    pub(super) fn stream_file(
        &mut self,
        file: &SourceFile,
        texts: &mut Texts,
        out: &mut Scanned,
        emit: &mut Option<Emit<'_>>,
    ) -> bool {
        let mut streamed = match source::stream::open(&file.path(), self.engine.limits) {
            Ok(Some(s)) => s,
            Ok(None) => {
                out.files += 1;
                self.missing(file, out);
                return true;
            }
            // Not an array after all (or not a file): read whole, as usual.
            Err(None) => return self.file(file, read_file(self.memory, file, self.engine.limits), texts, out, emit),
            Err(Some(problem)) => {
                out.files += 1;
                return self.refuse(file, problem, out);
            }
        };
        tracing::debug!(file = %file.rel, records = streamed.count, "Reading a large file in a stream (checked whole first)");
        self.firsts.reserve(streamed.count, &self.unique_fields);
        out.files += 1;
        out.read_ok.insert(file.rel.clone());
        let known = texts.get().and_then(|t| t.get(&file.rel));
        // A block's texts one after the other in one buffer, with their places.
        let mut block = Block::default();
        let mut going = true;
        let mut flush = |pass: &mut Self, block: &mut Block| {
            let raws: Vec<(Option<usize>, &str)> =
                block.spans.iter().map(|(i, r)| (Some(*i), block.text.get(r.clone()).unwrap_or_default())).collect();
            let going = pass.records(file, raws, known.map(|m| (m, Hits::Target)), out, emit);
            block.text.clear();
            block.spans.clear();
            going
        };
        let read = streamed.records(&mut |i, raw| {
            let at = block.text.len();
            block.text.push_str(raw);
            block.spans.push((i, at..block.text.len()));
            if block.spans.len() >= STREAM_BLOCK {
                going = flush(self, &mut block);
            }
            going
        });
        if going && read.is_ok() && !block.spans.is_empty() {
            going = flush(self, &mut block);
        }
        if !going {
            return false;
        }
        // Written in place between the passes: what was mirrored from it
        // stands, but it is judged again (no deletes from it, no digest).
        let read = read.and_then(|()| if streamed.changed() { Err(source::FileProblem::Unstable) } else { Ok(()) });
        match read {
            Err(problem) => {
                out.read_ok.remove(&file.rel);
                self.refuse(file, problem, out)
            }
            Ok(()) => {
                if self.memory.is_some() {
                    let settled = streamed.settled().ok().flatten();
                    out.digests.insert(file.rel.clone(), (streamed.digest, settled));
                }
                true
            }
        }
    }

    /// Whether this file, changed under watch, is compared with its memo in a
    /// stream: a large array file, alone in its scan, whose memo stands for it.
    pub(super) fn streams_hits(&self, file: &SourceFile) -> bool {
        let Some(memory) = self.memory else { return false };
        let limits = self.engine.limits;
        self.spec.shape == crate::layout::Shape::Array
            && self.use_hits
            && self.single_file
            && memory.read.lock().is_ok_and(|r| !r.contains_key(&*file.rel))
            && memory.memo.lock().is_ok_and(|m| m.get(&file.rel).is_some_and(|m| !m.recs.is_short()))
            && std::fs::metadata(file.path()).is_ok_and(|m| source::stream::worth_it(m.len(), limits))
    }

    /// One large array file changed under watch, never held whole: its
    /// records' hashes taken as it is checked, looked up in its memo all at
    /// once, and then only the texts of the records that are not hits (and
    /// of the hits that may clash with them) read again. What follows is
    /// [`Pass::records`]' own judgement; `false` when nobody listens any more.
    pub(super) fn stream_hits(&mut self, file: &SourceFile, out: &mut Scanned, emit: &mut Option<Emit<'_>>) -> bool {
        let Some(memory) = self.memory else { return true };
        let whole = |pass: &mut Self, out: &mut Scanned, emit: &mut Option<Emit<'_>>| {
            pass.file(file, read_file(pass.memory, file, pass.engine.limits), &mut Texts::None, out, emit)
        };
        let Ok(guard) = memory.memo.lock() else { return whole(self, out, emit) };
        let Some(m) = guard.get(&file.rel).filter(|m| !m.recs.is_short()) else {
            drop(guard);
            return whole(self, out, emit);
        };
        let (opened, mut hashes, places) = open_hashed(file, self.engine.limits, self.seed);
        let streamed = match opened {
            Ok(Some(s)) => s,
            Ok(None) => {
                drop(guard);
                out.files += 1;
                self.missing(file, out);
                return true;
            }
            // Not an array after all: read whole, which words its problem.
            Err(None) => {
                drop(guard);
                return whole(self, out, emit);
            }
            Err(Some(problem)) => {
                out.files += 1;
                return self.refuse(file, problem, out);
            }
        };
        hashes.truncate(streamed.count);
        // Byte for byte as last settled (a rewrite that changed nothing).
        if m.digest == Some(streamed.digest) {
            out.files += 1;
            out.identical.insert(file.rel.clone());
            return true;
        }
        tracing::debug!(file = %file.rel, records = streamed.count, "Comparing a large file with its memo in a stream");
        #[cfg(test)]
        tests::counted();
        let found = m.recs.look_up_all(&hashes);
        let n = hashes.len();
        let changed: Vec<usize> = (0..n).filter(|i| found.slot(*i).is_none()).collect();
        let at = Places { places: &places, hashes: &hashes, seed: self.seed };
        let fetched = at.fetch(&streamed, &changed);
        // A text that is not JSON: the whole read refuses the file, and words why.
        if fetched.as_ref().is_ok_and(|t| t.values().any(|t| source::parse_value(t).is_err())) {
            drop(guard);
            return whole(self, out, emit);
        }
        out.files += 1;
        let mut texts = match fetched {
            Ok(t) => t,
            Err(problem) => return self.refuse(file, problem, out),
        };
        let twice = (0..n).filter(|i| found.twice(*i) && found.slot(*i).is_some()).map(|i| (i, None));
        let keyed = changed.iter().map(|i| (*i, texts.get(i).map(String::as_str))).chain(twice);
        let flagged = self.flag(file, m, &found, keyed);
        // The hits the first-keeps-it rule looks at: one that lost its id or
        // unique value to an earlier record is mapped again, from its text.
        let checked: Vec<usize> = (0..n).filter(|i| found.slot(*i).is_some_and(|s| flagged.contains(s.at()))).collect();
        match at.fetch(&streamed, &checked) {
            Ok(t) => texts.extend(t),
            Err(problem) => return self.refuse(file, problem, out),
        }
        out.read_ok.insert(file.rel.clone());
        let text = |i: usize| (Some(i), texts.get(&i).map(String::as_str));
        let looked = Looked { memo: Some((m, Hits::Memo)), found, flagged: Some(flagged) };
        if !self.judge(file, &hashes, &text, looked, out, emit) {
            return false;
        }
        // Written in place between the passes: judged again later (no deletes
        // from it, no digest), as a streamed full scan does.
        if streamed.changed() {
            out.read_ok.remove(&file.rel);
            return self.refuse(file, source::FileProblem::Unstable, out);
        }
        let settled = streamed.settled().ok().flatten();
        out.digests.insert(file.rel.clone(), (streamed.digest, settled));
        true
    }
}

/// Records of a streamed file mapped together: their texts, and each one's
/// index in the file and place in `text`.
#[derive(Default)]
struct Block {
    text: String,
    spans: Vec<(usize, std::ops::Range<usize>)>,
}

/// The first pass over a large array file ([`source::stream::open_hashing`]):
/// what it gave, and each record's hash and place (offset and length).
type Opened = (Result<Option<source::stream::Streamed>, Option<source::FileProblem>>, Vec<RawHash>, Vec<(u64, u32)>);

fn open_hashed(file: &SourceFile, limits: source::ReadLimits, seed: u64) -> Opened {
    let mut hashes: Vec<RawHash> = Vec::new();
    // Where each text is in the file, to read again the few that are needed.
    let mut places: Vec<(u64, u32)> = Vec::new();
    let mut hash = |i: usize, at: u64, text: &[u8]| {
        hashes.truncate(i);
        places.truncate(i);
        hashes.push(raw_hash_of(seed, text));
        // (A record of 4 GiB is far over any read limit: 1 GiB by default.)
        places.push((at, u32::try_from(text.len()).unwrap_or(u32::MAX)));
    };
    let opened = source::stream::open_hashing(&file.path(), limits, &mut hash);
    (opened, hashes, places)
}

/// Where a streamed file's records are, by index, and their hashes.
struct Places<'a> {
    places: &'a [(u64, u32)],
    hashes: &'a [RawHash],
    seed: u64,
}

impl Places<'_> {
    /// The texts of these records read again, each checked against its
    /// hash from the first pass: one that differs (or cannot be read) means
    /// the file was written in place since.
    fn fetch(&self, streamed: &source::stream::Streamed, wanted: &[usize]) -> Result<Fetched, source::FileProblem> {
        let mut texts = Fetched::default();
        for &i in wanted {
            let (Some(&(at, len)), Some(hash)) = (self.places.get(i), self.hashes.get(i)) else {
                return Err(source::FileProblem::Unstable);
            };
            let len = usize::try_from(len).map_err(|_| source::FileProblem::Unstable)?;
            match streamed.text_at(at, len) {
                Some(t) if raw_hash(self.seed, &t) == *hash => texts.insert(i, t),
                _ => return Err(source::FileProblem::Unstable),
            };
        }
        Ok(texts)
    }
}

/// Texts read again, by index (looked up once per record: a fast hash).
type Fetched = HashMap<usize, String, foldhash::fast::RandomState>;

#[cfg(test)]
#[path = "streamed_tests.rs"]
mod tests;
