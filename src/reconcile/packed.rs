//! One file's memo records ([`Recs`]), packed: each record's id and unique
//! values are bytes in one buffer per file, found through a table of
//! raw-text hash → offset ([`super::recs::Recs`]). A million users' memo is
//! then about 24 bytes of table and 66 of text each, where a record of its
//! own (an entry, an id and an email, each allocated) took about 230.
//!
//! A record's bytes: its id, the number of its unique values, and each value
//! with the number of its field (an index into [`Recs`]' own field names).
//! Texts and numbers are LEB128-prefixed, as in the checkpoint's memo codec,
//! which writes the same shape.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::lookup;
use super::recs::{self, RawHash};

/// Places in a memo (looked up once per record of a changed file: a fast hash).
pub type Places = std::collections::HashSet<u32, foldhash::fast::RandomState>;

/// Where a record's bytes start, and the last scan pass that met it (see
/// [`mark`]; 0 for none).
#[derive(Debug)]
pub struct Slot {
    at: u32,
    seen: AtomicU32,
}

impl Slot {
    /// Where the record's bytes start (see [`Recs::places_where`]).
    pub fn at(&self) -> u32 {
        self.at
    }

    /// Mark the record met by a scan pass (see [`mark`]).
    pub fn mark(&self, pass: u32) {
        self.seen.store(pass, Ordering::Relaxed);
    }
}

/// One file's memo records, by raw-text hash; see the module docs.
#[derive(Debug, Default)]
pub struct Recs {
    index: recs::Recs<Slot>,
    /// The records' bytes, one after the other.
    bytes: Chunks,
    /// The unique fields' names, by number.
    fields: Box<[Arc<str>]>,
    /// Bytes of records no entry points at any more (removed or replaced).
    dead: usize,
    /// A record was refused: the bytes would pass 4 GiB (offsets are 32-bit).
    /// The memo then does not hold every record of the file.
    short: bool,
}

/// A record as the memo holds it.
#[derive(Debug, Clone, Copy)]
pub struct Rec<'a> {
    id: &'a str,
    /// Its unique values, as written (see [`Rec::uniques`]).
    rest: &'a [u8],
    fields: &'a [Arc<str>],
    seen: &'a AtomicU32,
}

impl<'a> Rec<'a> {
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// Its unique values: (field, value).
    pub fn uniques(&self) -> impl Iterator<Item = (&'a Arc<str>, &'a str)> + 'a {
        let fields = self.fields;
        let mut r = Cursor { bytes: self.rest, at: 0 };
        let n = r.varint().unwrap_or(0);
        (0..n).map_while(move |_| {
            let field = fields.get(r.varint()?)?;
            Some((field, r.str()?))
        })
    }

    /// The scan pass that last met it (see [`Slot`]).
    pub fn seen(&self) -> &'a AtomicU32 {
        self.seen
    }
}

/// A scan pass's number ([`super::memo::Memory::scans`]) as a [`Slot`]
/// keeps it: 32 bits, never 0 (a new record's), two passes in a row never
/// alike. A mark comes round again after four billion passes.
pub fn mark(pass: u64) -> u32 {
    u32::try_from(pass % u64::from(u32::MAX)).map_or(1, |m| m + 1)
}

impl Recs {
    /// Room for `n` records.
    pub fn with_capacity(n: usize) -> Recs {
        Recs { index: recs::Recs::with_capacity(n), ..Recs::default() }
    }

    /// Records to come in bulk (a whole file mapped): added as they come,
    /// without looking for the same hash, until [`Recs::seal`].
    pub fn bulk() -> Recs {
        Recs { index: recs::Recs::bulk(), ..Recs::default() }
    }

    /// The bulk is in: the table becomes a list sorted by hash (see
    /// [`super::recs::Recs::seal`]).
    pub fn seal(&mut self) {
        self.index.seal();
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Some record was refused (see [`Recs::insert`]): the memo does not
    /// stand for the whole file.
    pub fn is_short(&self) -> bool {
        self.short
    }

    pub fn clear(&mut self) {
        *self = Recs::default();
    }

    pub fn get(&self, h: &RawHash) -> Option<Rec<'_>> {
        self.index.get(h).and_then(|s| self.rec(s))
    }

    /// Every hash looked up at once (see [`super::lookup`]).
    pub fn look_up_all(&self, hashes: &[RawHash]) -> lookup::Found<'_, Slot> {
        lookup::look_up_all(&self.index, hashes)
    }

    /// The places of the records `pick` says yes to, the bytes read in the
    /// order they lie (records no entry points at any more included).
    pub fn places_where(&self, mut pick: impl FnMut(Rec<'_>) -> bool) -> Places {
        let mut out = Places::default();
        for (c, chunk) in self.bytes.list.iter().enumerate() {
            let mut offset = 0;
            while offset < chunk.len() && offset < CHUNK {
                let Some(at) = c.checked_shl(CHUNK_BITS).and_then(|c| u32::try_from(c | offset).ok()) else { break };
                let Some(rec) = read(&self.bytes, at, &self.fields, &NEVER) else { break };
                let len = self.len_at(at);
                if len == 0 {
                    break;
                }
                if pick(rec) {
                    out.insert(at);
                }
                offset += len;
            }
        }
        out
    }

    /// The records a scan pass marked (`true`) or did not.
    pub fn marked(&self, pass: u32, yes: bool) -> impl Iterator<Item = (RawHash, Rec<'_>)> {
        let slots = self.index.iter().filter(move |(_, s)| (s.seen.load(Ordering::Relaxed) == pass) == yes);
        slots.filter_map(|(h, s)| Some((h, self.rec(s)?)))
    }

    pub fn rec<'a>(&'a self, slot: &'a Slot) -> Option<Rec<'a>> {
        read(&self.bytes, slot.at, &self.fields, &slot.seen)
    }

    /// Add or replace a record. One whose bytes would take the file's memo
    /// past 4 GiB is refused (`false`) and the memo is marked short.
    pub fn insert<'a>(&mut self, h: RawHash, id: &str, uniques: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
        let uniques: Vec<(usize, &str)> = uniques.into_iter().map(|(f, v)| (self.field(f), v)).collect();
        let len = str_len(id)
            + varint_len(uniques.len())
            + uniques.iter().map(|(f, v)| varint_len(*f) + str_len(v)).sum::<usize>();
        let write = |out: &mut Vec<u8>| {
            put_str(out, id);
            put_varint(out, uniques.len());
            for (f, v) in &uniques {
                put_varint(out, *f);
                put_str(out, v);
            }
        };
        let Some(at) = self.bytes.push(len, write) else {
            self.short = true;
            return false;
        };
        // (A bulk does not look: a file's same text twice is the same id twice,
        // and the scan lets only the first of them through.)
        if !self.index.is_bulk() {
            if let Some(old) = self.index.get(&h).map(|s| s.at) {
                self.dead += self.len_at(old);
            }
        }
        self.index.insert(h, Slot { at, seen: AtomicU32::new(0) });
        true
    }

    /// The number of a unique field's name (added when new).
    fn field(&mut self, name: &str) -> usize {
        if let Some(i) = self.fields.iter().position(|f| &**f == name) {
            return i;
        }
        let mut fields = std::mem::take(&mut self.fields).into_vec();
        fields.push(Arc::from(name));
        self.fields = fields.into_boxed_slice();
        self.fields.len() - 1
    }

    /// The length of the record at `at`.
    fn len_at(&self, at: u32) -> usize {
        let Some(bytes) = self.bytes.at(at) else { return 0 };
        let mut r = Cursor { bytes, at: 0 };
        let ok = r.str().is_some() && {
            let n = r.varint().unwrap_or(0);
            (0..n).all(|_| r.varint().is_some() && r.str().is_some())
        };
        if ok {
            r.at
        } else {
            0
        }
    }

    /// Forget a record; `true` when there was one.
    pub fn remove(&mut self, h: &RawHash) -> bool {
        let Some(slot) = self.index.remove(h) else { return false };
        self.dead += self.len_at(slot.at);
        self.compact_if_sparse();
        true
    }

    /// Move a record to another hash (a record that must be looked at again:
    /// no text of the file hashes to `!h`).
    pub fn rekey(&mut self, from: &RawHash, to: RawHash) {
        if let Some(slot) = self.index.remove(from) {
            if let Some(old) = self.index.get(&to).map(|s| s.at) {
                self.dead += self.len_at(old);
            }
            self.index.insert(to, slot);
        }
    }

    /// Keep only the records `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(RawHash, Rec<'_>) -> bool) {
        let mut gone: Vec<RawHash> = Vec::new();
        for (h, slot) in self.index.iter() {
            if !self.rec(slot).is_some_and(|r| keep(h, r)) {
                gone.push(h);
            }
        }
        for h in gone {
            if let Some(slot) = self.index.remove(&h) {
                self.dead += self.len_at(slot.at);
            }
        }
        self.compact_if_sparse();
    }

    /// Add another memo's records (replacing those with the same hash).
    pub fn extend(&mut self, other: Recs) {
        if self.is_empty() && self.dead == 0 {
            *self = other;
            return;
        }
        self.index.reserve(other.len());
        for (h, r) in other.iter() {
            self.insert(h, r.id(), r.uniques().map(|(f, v)| (&**f, v)));
        }
        self.short |= other.short;
        self.compact_if_sparse();
    }

    pub fn iter(&self) -> impl Iterator<Item = (RawHash, Rec<'_>)> {
        self.index.iter().filter_map(|(h, s)| Some((h, self.rec(s)?)))
    }

    pub fn keys(&self) -> impl Iterator<Item = RawHash> + '_ {
        self.index.keys()
    }

    /// The unique fields' names its records may use.
    pub fn fields(&self) -> &[Arc<str>] {
        &self.fields
    }

    pub fn values(&self) -> impl Iterator<Item = Rec<'_>> {
        self.iter().map(|(_, r)| r)
    }

    /// The records' bytes and where each starts, for encoding them without
    /// the memo's lock (see [`Packed`]).
    pub fn packed(&self) -> Packed {
        let mut at: Vec<(recs::Key, u32)> = self.index.iter().map(|(h, s)| (recs::Key::of(h), s.at)).collect();
        at.sort_unstable_by_key(|(k, _)| k.hash());
        Packed { bytes: self.bytes.clone(), fields: self.fields.clone(), at }
    }

    /// Rewrite the bytes without the dead ones once they are most of them.
    fn compact_if_sparse(&mut self) {
        if self.dead < 4096 || self.dead * 2 < self.bytes.len {
            return;
        }
        let mut bytes = Chunks { limit: self.bytes.limit, ..Chunks::default() };
        let mut index = recs::Recs::with_capacity(self.index.len());
        for (h, slot) in self.index.iter() {
            let len = self.len_at(slot.at);
            let Some(rec) = self.bytes.at(slot.at).and_then(|b| b.get(..len)) else { continue };
            let Some(at) = bytes.push(len, |out| out.extend_from_slice(rec)) else {
                self.short = true;
                continue;
            };
            index.insert(h, Slot { at, seen: AtomicU32::new(slot.seen.load(Ordering::Relaxed)) });
        }
        index.seal();
        self.bytes = bytes;
        self.index = index;
        self.dead = 0;
    }
}

/// A file's memo held for encoding: its bytes shared, and where each record
/// starts, sorted by hash.
pub struct Packed {
    bytes: Chunks,
    fields: Box<[Arc<str>]>,
    at: Vec<(recs::Key, u32)>,
}

impl Packed {
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    pub fn fields(&self) -> &[Arc<str>] {
        &self.fields
    }

    /// The `i`th record by hash.
    pub fn get(&self, i: usize) -> Option<(RawHash, Rec<'_>)> {
        let (k, at) = self.at.get(i)?;
        Some((k.hash(), read(&self.bytes, *at, &self.fields, &NEVER)?))
    }
}

/// The record whose bytes start at `at`.
fn read<'a>(bytes: &'a Chunks, at: u32, fields: &'a [Arc<str>], seen: &'a AtomicU32) -> Option<Rec<'a>> {
    let mut r = Cursor { bytes: bytes.at(at)?, at: 0 };
    let id = r.str()?;
    Some(Rec { id, rest: r.bytes.get(r.at..)?, fields, seen })
}

/// The mark of a record read from a [`Packed`] (never a scan's).
static NEVER: AtomicU32 = AtomicU32::new(0);

/// Records' bytes in chunks of at most 1 MiB (a record larger than that
/// has one of its own): growing never copies what is there, where a 66 MB
/// buffer grown by a quarter would for a moment exist twice. A record's
/// place is its chunk (the high 12 bits) and its offset in it (the low 20).
/// Chunks are shared with a checkpoint save that encodes them without the
/// memo's lock; a chunk so shared is not written to again.
#[derive(Debug, Clone, Default)]
struct Chunks {
    list: Vec<Arc<Vec<u8>>>,
    /// Bytes written, in all chunks.
    len: usize,
    /// The most chunks it takes when fewer than [`MAX_CHUNKS`] (0: that;
    /// a test's way to reach the limit without 4 GiB).
    limit: usize,
}

/// The low bits of a place: the offset in a chunk.
const CHUNK_BITS: u32 = 20;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Chunks at most (4 GiB of records).
const MAX_CHUNKS: usize = 1 << (u32::BITS - CHUNK_BITS);

impl Chunks {
    /// The bytes from a place on, to the end of its chunk.
    fn at(&self, at: u32) -> Option<&[u8]> {
        let chunk = self.list.get(usize::try_from(at >> CHUNK_BITS).ok()?)?;
        chunk.get(usize::try_from(at & ((1 << CHUNK_BITS) - 1)).ok()?..)
    }

    /// Write a record of `len` bytes; its place (`None` past [`MAX_CHUNKS`]).
    fn push(&mut self, len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Option<u32> {
        let room = self
            .list
            .last_mut()
            .and_then(Arc::get_mut)
            .is_some_and(|c| c.len() < CHUNK && c.capacity() - c.len() >= len);
        if !room {
            let max = if self.limit == 0 { MAX_CHUNKS } else { self.limit.min(MAX_CHUNKS) };
            if self.list.len() >= max {
                return None;
            }
            // The first chunk is the first record's size (a job's status
            // file: one record), then each as large as all before, to 1 MiB.
            self.list.push(Arc::new(Vec::with_capacity(len.max(self.len.min(CHUNK)))));
        }
        let index = self.list.len().checked_sub(1)?;
        let chunk = self.list.last_mut().and_then(Arc::get_mut)?;
        let offset = chunk.len();
        write(chunk);
        self.len += chunk.len() - offset;
        u32::try_from(index << CHUNK_BITS | offset).ok()
    }
}

/// Append a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let low = u8::try_from(n & 0x7f).unwrap_or_default();
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Append a text, length first.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// How many bytes [`put_str`] writes.
pub(crate) fn str_len(s: &str) -> usize {
    varint_len(s.len()) + s.len()
}

/// How many bytes [`put_varint`] writes.
pub(crate) fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    usize::try_from(bits.max(1).div_ceil(7)).unwrap_or(10)
}

/// Reads what this module wrote; `None` where the bytes end early.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Option<usize> {
        let mut n: usize = 0;
        for shift in (0..usize::BITS).step_by(7) {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            n |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = self.varint()?;
        let end = self.at.checked_add(n)?;
        let s = std::str::from_utf8(self.bytes.get(self.at..end)?).ok()?;
        self.at = end;
        Some(s)
    }
}

#[cfg(test)]
#[path = "packed_tests.rs"]
mod tests;
