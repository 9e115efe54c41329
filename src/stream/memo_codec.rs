//! watch's per-file memo (see [`crate::reconcile::memo`]) as bytes, for the
//! checkpoint: per file its name, the digest of its bytes as last settled,
//! and per record the hash of its raw text, its id and its unique values.
//!
//! The format is length-prefixed (LEB128 varints) and little-endian; a decoder that meets a
//! short or malformed buffer says so instead of guessing.

use std::sync::Arc;

use crate::reconcile::memo::{FileMemo, RawHash, Recs};
use crate::reconcile::packed::{put_str, put_varint, str_len, varint_len, Packed, Rec};
use crate::source::Stamp;

/// One file as the checkpoint knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The digest of its bytes when every record was settled (`None`: compare it).
    pub digest: Option<u128>,
    /// The file's stamp with those bytes, where it proves them (`None`: hash the file).
    pub stamp: Option<Stamp>,
    /// The group holding its memo (empty: none).
    pub group: String,
    /// Its records, when all were settled (a start that finds the file
    /// unchanged counts them as read and unchanged).
    pub records: u64,
}

/// Append one file's memo to `out`: its name, digest and record count,
/// the names of its unique fields (once per file), then per record the hash
/// of its text, its id and its unique values (each by the index of its
/// field). Lengths and counts are LEB128 varints: a million users' memo is
/// mostly ids and emails, not the numbers around them.
pub fn encode_file(rel: &str, memo: &FileMemo, out: &mut Vec<u8>) {
    let files = [Snapshot::of(rel, memo)];
    let mut encoder = Encoder::new(&files);
    while encoder.fill(out, usize::MAX) {}
}

/// One file's memo held for encoding without the memo's lock: its bytes
/// shared (not copied), and its records in the order [`encode_file`] writes
/// them (by hash, so that the same memo always gives the same bytes).
pub struct Snapshot {
    rel: String,
    digest: Option<RawHash>,
    /// The unique fields its records name, sorted (an index into this list
    /// stands for the name).
    fields: Vec<Arc<str>>,
    recs: Packed,
}

impl Snapshot {
    pub fn of(rel: &str, memo: &FileMemo) -> Snapshot {
        let recs = memo.recs.packed();
        let mut fields = recs.fields().to_vec();
        fields.sort_unstable();
        Snapshot { rel: rel.to_string(), digest: memo.digest, fields, recs }
    }

    fn header(&self, out: &mut Vec<u8>) {
        put_str(out, &self.rel);
        put_digest(out, self.digest);
        put_varint(out, self.recs.len());
        put_varint(out, self.fields.len());
        for f in &self.fields {
            put_str(out, f);
        }
    }

    fn record(&self, (h, rec): (RawHash, Rec<'_>), out: &mut Vec<u8>) {
        out.extend_from_slice(&h.to_le_bytes());
        put_str(out, rec.id());
        put_varint(out, rec.uniques().count());
        for (field, value) in rec.uniques() {
            put_varint(out, self.fields.binary_search(field).unwrap_or(0));
            put_str(out, value);
        }
    }
}

/// The bytes of some files' memos ([`encode_file`]'s, one file after the
/// other), a piece at a time: a million-record memo is stored without its
/// bytes ever existing whole.
pub struct Encoder<'a> {
    files: &'a [Snapshot],
    file: usize,
    /// The next record of the current file (`None`: its header is next).
    rec: Option<usize>,
}

impl<'a> Encoder<'a> {
    pub fn new(files: &'a [Snapshot]) -> Encoder<'a> {
        Encoder { files, file: 0, rec: None }
    }

    /// Append to `out` until it holds `upto` bytes or more, or everything is
    /// in; `false` once everything is in.
    pub fn fill(&mut self, out: &mut Vec<u8>, upto: usize) -> bool {
        while out.len() < upto {
            let Some(file) = self.files.get(self.file) else { return false };
            match self.rec {
                None => {
                    file.header(out);
                    self.rec = Some(0);
                }
                Some(i) => match file.recs.get(i) {
                    Some(r) => {
                        file.record(r, out);
                        self.rec = Some(i + 1);
                    }
                    None => {
                        self.file += 1;
                        self.rec = None;
                    }
                },
            }
        }
        self.file < self.files.len()
    }
}

/// How many bytes [`encode_file`] writes for this file, without writing them.
pub fn encoded_len(rel: &str, memo: &FileMemo) -> usize {
    let digest = 1 + memo.digest.map_or(0, |d| d.to_le_bytes().len());
    let mut fields = memo.recs.fields().to_vec();
    fields.sort_unstable();
    let names: usize = fields.iter().map(|f| str_len(f)).sum();
    let recs: usize = memo
        .recs
        .values()
        .map(|rec| {
            let uniques: usize =
                rec.uniques().map(|(f, v)| varint_len(fields.binary_search(f).unwrap_or(0)) + str_len(v)).sum();
            16 + str_len(rec.id()) + varint_len(rec.uniques().count()) + uniques
        })
        .sum();
    str_len(rel) + digest + varint_len(memo.recs.len()) + varint_len(fields.len()) + names + recs
}

/// Every file memo in `bytes`.
pub fn decode_files(bytes: &[u8]) -> Result<Vec<(String, FileMemo)>, String> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    while r.at < bytes.len() {
        let rel = r.string()?;
        let digest = r.digest()?;
        let n = r.varint()?;
        let mut memo = FileMemo { digest, stamp: None, recs: Recs::with_capacity(n.min(1 << 20)) };
        // Each field name once, shared by every record that has it.
        let nf = r.varint()?;
        let mut fields: Vec<Arc<str>> = Vec::with_capacity(nf.min(64));
        for _ in 0..nf {
            fields.push(Arc::from(r.str()?));
        }
        let mut uniques: Vec<(&str, &str)> = Vec::new();
        for _ in 0..n {
            let h = r.u128()?;
            let id = r.str()?;
            let m = r.varint()?;
            uniques.clear();
            for _ in 0..m {
                let at = r.at;
                let field = fields.get(r.varint()?).ok_or_else(|| format!("bad field index at byte {at}"))?;
                uniques.push((field, r.str()?));
            }
            memo.recs.insert(h, id, uniques.iter().copied());
        }
        // Stored in hash order: sealed as it is.
        memo.recs.seal();
        out.push((rel, memo));
    }
    Ok(out)
}

/// The checkpoint head's file list, packed: per file its name, digest, the
/// group of its memo and its record count. (One binary value: a server
/// stores and returns it without walking 20,000 small documents.)
pub fn encode_entries<K: AsRef<str>>(files: &std::collections::BTreeMap<K, FileEntry>) -> Vec<u8> {
    // Sized once, exactly: 200,000 job files' list is about 27 MB, which
    // grown by doubling would for a moment exist twice.
    let len: usize = files.iter().map(|(rel, f)| entry_len(rel.as_ref(), f)).sum();
    let mut out = Vec::with_capacity(len);
    for (rel, f) in files {
        encode_entry(&mut out, rel.as_ref(), f);
    }
    out
}

/// One file's entry in the list [`encode_entries`] packs.
pub fn encode_entry(out: &mut Vec<u8>, rel: &str, f: &FileEntry) {
    put_str(out, rel);
    put_digest(out, f.digest);
    put_stamp(out, f.stamp);
    put_str(out, &f.group);
    out.extend_from_slice(&f.records.to_le_bytes());
}

/// How many bytes [`encode_entry`] writes.
fn entry_len(rel: &str, f: &FileEntry) -> usize {
    let digest = 1 + f.digest.map_or(0, |_| 16);
    let stamp = 1 + f.stamp.map_or(0, |_| 8 + 16 + 16 + 8 + 8);
    str_len(rel) + digest + stamp + str_len(&f.group) + 8
}

/// The file list [`encode_entries`] packed.
pub fn decode_entries(bytes: &[u8]) -> Result<std::collections::BTreeMap<String, FileEntry>, String> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = std::collections::BTreeMap::new();
    while r.at < bytes.len() {
        let rel = r.string()?;
        let digest = r.digest()?;
        let stamp = r.stamp()?;
        let group = r.string()?;
        let b: [u8; 8] = r.take(8)?.try_into().map_err(|_| "short count".to_string())?;
        out.insert(rel, FileEntry { digest, stamp, group, records: u64::from_le_bytes(b) });
    }
    Ok(out)
}

/// A digest or none: a flag byte, then the digest's 16 bytes.
fn put_digest(out: &mut Vec<u8>, digest: Option<RawHash>) {
    match digest {
        Some(d) => {
            out.push(1);
            out.extend_from_slice(&d.to_le_bytes());
        }
        None => out.push(0),
    }
}

/// A stamp or none: a flag byte, then its five fields (little-endian).
fn put_stamp(out: &mut Vec<u8>, stamp: Option<Stamp>) {
    match stamp {
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&s.len.to_le_bytes());
            // Stored in 128 bits, as when the times were kept so.
            out.extend_from_slice(&i128::from(s.mtime_ns).to_le_bytes());
            out.extend_from_slice(&i128::from(s.ctime_ns).to_le_bytes());
            out.extend_from_slice(&s.ino.to_le_bytes());
            out.extend_from_slice(&s.dev.to_le_bytes());
        }
        None => out.push(0),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated at byte {} (wanted {n} more)", self.at));
        };
        let bytes: &'a [u8] = self.bytes;
        let s = &bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// What [`put_varint`] wrote.
    fn varint(&mut self) -> Result<usize, String> {
        let start = self.at;
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return usize::try_from(n).map_err(|_| format!("length at byte {start} does not fit this machine"));
            }
        }
        Err(format!("bad length at byte {start}"))
    }

    /// What [`put_digest`] wrote.
    fn digest(&mut self) -> Result<Option<RawHash>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.u128()?)),
            other => Err(format!("bad digest flag {other} at byte {}", self.at)),
        }
    }

    /// What [`put_stamp`] wrote.
    fn stamp(&mut self) -> Result<Option<Stamp>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => {
                let len = self.u64()?;
                let mtime_ns = i128::from_le_bytes(self.u128()?.to_le_bytes());
                let ctime_ns = i128::from_le_bytes(self.u128()?.to_le_bytes());
                let (ino, dev) = (self.u64()?, self.u64()?);
                // A time no stamp holds now: no stamp (the file is hashed).
                Ok(match (i64::try_from(mtime_ns), i64::try_from(ctime_ns)) {
                    (Ok(mtime_ns), Ok(ctime_ns)) => Some(Stamp { len, mtime_ns, ctime_ns, ino, dev }),
                    _ => None,
                })
            }
            other => Err(format!("bad stamp flag {other} at byte {}", self.at)),
        }
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "short number".to_string())?;
        Ok(u64::from_le_bytes(b))
    }

    fn u128(&mut self) -> Result<u128, String> {
        let b: [u8; 16] = self.take(16)?.try_into().map_err(|_| "short hash".to_string())?;
        Ok(u128::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_string)
    }

    /// A text, borrowed from the buffer.
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.varint()?;
        let at = self.at;
        std::str::from_utf8(self.take(n)?).map_err(|_| format!("text at byte {at} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rec<'a> = (RawHash, &'a str, &'a [(&'a str, &'a str)]);

    fn memo(digest: Option<RawHash>, recs: &[Rec<'_>]) -> FileMemo {
        let mut m = FileMemo { digest, stamp: None, recs: Recs::default() };
        for (h, id, emails) in recs {
            m.recs.insert(*h, id, emails.iter().copied());
        }
        m
    }

    #[test]
    fn a_memo_encoded_a_piece_at_a_time_is_the_same_bytes() {
        let emails: &[(&str, &str)] = &[("email", "a@x.org"), ("backup", "b@x.org")];
        let recs: Vec<(RawHash, String)> = (0..50u128).map(|i| (i * 7919, format!("user-{i}"))).collect();
        let recs: Vec<Rec<'_>> = recs.iter().map(|(h, id)| (*h, id.as_str(), emails)).collect();
        let (a, b) = (memo(Some(9), &recs), memo(None, &[]));
        let mut whole = Vec::new();
        encode_file("data/users.json", &a, &mut whole);
        encode_file("artifacts/jobs/j.json", &b, &mut whole);
        let files = [Snapshot::of("data/users.json", &a), Snapshot::of("artifacts/jobs/j.json", &b)];
        for piece in [1, 7, 64, 1 << 20] {
            let (mut encoder, mut buf, mut joined) = (Encoder::new(&files), Vec::new(), Vec::new());
            let mut pieces = 0;
            loop {
                let more = encoder.fill(&mut buf, piece);
                joined.append(&mut buf);
                pieces += 1;
                if !more {
                    break;
                }
            }
            assert_eq!(joined, whole, "pieces of {piece} bytes");
            assert!(piece > whole.len() || pieces > 1, "{piece}: {pieces}");
        }
    }

    #[test]
    fn a_memo_comes_back_as_it_went() {
        let a = memo(Some(u128::MAX - 3), &[(1, "u1", &[("email", "a@x.org")]), (u128::MAX, "u-é", &[])]);
        let b = memo(None, &[]);
        let mut bytes = Vec::new();
        encode_file("data/users.json", &a, &mut bytes);
        encode_file("artifacts/jobs/j.json", &b, &mut bytes);
        assert_eq!(encoded_len("data/users.json", &a) + encoded_len("artifacts/jobs/j.json", &b), bytes.len());
        let back = decode_files(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        let (rel, m) = &back[0];
        assert_eq!(rel, "data/users.json");
        assert_eq!(m.digest, Some(u128::MAX - 3));
        let rec = |h: RawHash| m.recs.get(&h).unwrap();
        assert_eq!(rec(1).id(), "u1");
        assert_eq!(rec(1).uniques().next().map(|(_, v)| v), Some("a@x.org"));
        assert_eq!(rec(u128::MAX).id(), "u-é");
        assert_eq!(back[1].1.digest, None);
        assert!(back[1].1.recs.is_empty());
        // The same memo gives the same bytes (records are sorted).
        let mut again = Vec::new();
        encode_file("data/users.json", &a, &mut again);
        assert_eq!(&bytes[..again.len()], &again[..]);
    }

    #[test]
    fn long_texts_and_many_fields_come_back_as_they_went() {
        // Lengths of one, two and three varint bytes, and fields shared or not.
        let (id, email, huge) = ("i".repeat(127), "e".repeat(128), "h".repeat(20_000));
        let recs: &[Rec<'_>] =
            &[(1, &id, &[("email", &email), ("alt", &huge)]), (2, &huge, &[("email", "a@x.org")]), (3, "", &[])];
        let a = memo(None, recs);
        let mut bytes = Vec::new();
        encode_file(&huge, &a, &mut bytes);
        assert_eq!(encoded_len(&huge, &a), bytes.len());
        let back = decode_files(&bytes).unwrap();
        let (rel, m) = &back[0];
        assert_eq!(rel, &huge);
        assert_eq!(m.recs.len(), 3);
        let rec = |h: RawHash| m.recs.get(&h).unwrap();
        assert_eq!(rec(1).id(), id);
        let fields: Vec<(&str, &str)> = rec(1).uniques().map(|(f, v)| (&**f, v)).collect();
        assert_eq!(fields, vec![("email", email.as_str()), ("alt", huge.as_str())]);
        assert_eq!(rec(2).id(), huge);
        assert_eq!(rec(2).uniques().next().map(|(f, _)| &**f), Some("email"));
        assert_eq!(rec(3).uniques().count(), 0);
        for n in [0, 1, 127, 128, 16_383, 16_384, usize::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            assert_eq!(Reader { bytes: &out, at: 0 }.varint(), Ok(n), "what the memo writes, the codec reads");
        }
        // A field index past the file's list of names is refused.
        // (The first record's first value is its email: its field's index is
        // the byte before the value's two length bytes.)
        let mut bad = bytes.clone();
        let index = bytes.windows(email.len()).position(|w| w == email.as_bytes()).unwrap() - 2 - 1;
        assert_eq!(bad[index], 1, "the index of \"email\" among [alt, email]");
        bad[index] = 9;
        assert!(decode_files(&bad).unwrap_err().contains("field index"), "{:?}", decode_files(&bad).err());
    }

    #[test]
    fn a_file_list_comes_back_as_it_went() {
        use super::FileEntry;
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            "data/users.json".to_string(),
            FileEntry { digest: Some(u128::MAX), stamp: None, group: "f:x".into(), records: 7 },
        );
        let stamp = Stamp { len: 9, mtime_ns: -5, ctime_ns: i64::MAX, ino: u64::MAX, dev: 3 };
        files.insert(
            "artifacts/jobs/a.json".to_string(),
            FileEntry { digest: Some(1), stamp: Some(stamp), group: "b:1".into(), records: 1 },
        );
        files.insert(
            "artifacts/jobs/b.json".to_string(),
            FileEntry { digest: None, stamp: None, group: String::new(), records: 0 },
        );
        let bytes = encode_entries(&files);
        assert_eq!(bytes.capacity(), bytes.len(), "the list is sized once, exactly");
        assert_eq!(decode_entries(&bytes).unwrap(), files);
        assert!(decode_entries(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_stored_time_past_what_a_stamp_holds_is_no_stamp() {
        use super::FileEntry;
        let stamp = Stamp { len: 9, mtime_ns: 5, ctime_ns: 6, ino: 7, dev: 8 };
        let entry = FileEntry { digest: Some(1), stamp: Some(stamp), group: "b:1".into(), records: 1 };
        let files = std::collections::BTreeMap::from([("a.json".to_string(), entry)]);
        let mut bytes = encode_entries(&files);
        // The change time is the second 16-byte time after the stamp's length: make it 2^64.
        let at = bytes.windows(16).position(|w| w == 6i128.to_le_bytes()).expect("the stored change time");
        bytes[at..at + 16].copy_from_slice(&(1i128 << 64).to_le_bytes());
        let back = decode_entries(&bytes).unwrap();
        assert_eq!(back["a.json"].stamp, None, "the file is hashed, not proven by a time cut short");
        assert_eq!(back["a.json"].digest, Some(1));
    }

    #[test]
    fn a_damaged_memo_is_refused_not_guessed() {
        let a = memo(Some(7), &[(1, "u1", &[("email", "a@x.org")])]);
        let mut bytes = Vec::new();
        encode_file("data/users.json", &a, &mut bytes);
        for cut in [1, 10, bytes.len() - 1] {
            assert!(decode_files(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flag = bytes.clone();
        flag[1 + "data/users.json".len()] = 9;
        assert!(decode_files(&flag).unwrap_err().contains("digest flag"));
    }
}
