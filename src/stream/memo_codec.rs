//! watch's per-file memo (see [`crate::reconcile::memo`]) as bytes, for the
//! checkpoint: per file its name, the digest of its bytes as last settled,
//! and per record the hash of its raw text, its id and its unique values.
//!
//! The format is length-prefixed and little-endian; a decoder that meets a
//! short or malformed buffer says so instead of guessing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::reconcile::memo::{FileMemo, MemoRec, RawHash};
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

/// Append one file's memo to `out`.
pub fn encode_file(rel: &str, memo: &FileMemo, out: &mut Vec<u8>) {
    put_str(out, rel);
    put_digest(out, memo.digest);
    put_len(out, memo.recs.len());
    // Sorted, so that the same memo always gives the same bytes.
    let mut recs: Vec<(&RawHash, &Arc<MemoRec>)> = memo.recs.iter().collect();
    recs.sort_unstable_by_key(|(h, _)| **h);
    for (h, rec) in recs {
        out.extend_from_slice(&h.to_le_bytes());
        put_str(out, &rec.id);
        put_len(out, rec.emails.len());
        for (field, value) in &rec.emails {
            put_str(out, field);
            put_str(out, value);
        }
    }
}

/// How many bytes [`encode_file`] writes for this file, without writing them.
pub fn encoded_len(rel: &str, memo: &FileMemo) -> usize {
    const LEN: usize = 8;
    let digest = 1 + memo.digest.map_or(0, |d| d.to_le_bytes().len());
    let recs: usize = memo
        .recs
        .values()
        .map(|rec| {
            let emails: usize = rec.emails.iter().map(|(f, v)| 2 * LEN + f.len() + v.len()).sum();
            16 + LEN + rec.id.len() + LEN + emails
        })
        .sum();
    LEN + rel.len() + digest + LEN + recs
}

/// Every file memo in `bytes`.
pub fn decode_files(bytes: &[u8]) -> Result<Vec<(String, FileMemo)>, String> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    while r.at < bytes.len() {
        let rel = r.string()?;
        let digest = r.digest()?;
        let n = r.len()?;
        let mut memo = FileMemo { digest, stamp: None, recs: HashMap::default() };
        memo.recs.reserve(n.min(1 << 20));
        for _ in 0..n {
            let h = r.u128()?;
            let id: Arc<str> = Arc::from(r.string()?);
            let m = r.len()?;
            let mut emails = Vec::with_capacity(m.min(16));
            for _ in 0..m {
                let field: Arc<str> = Arc::from(r.string()?);
                let value: Arc<str> = Arc::from(r.string()?);
                emails.push((field, value));
            }
            memo.recs.insert(h, Arc::new(MemoRec::new(id, emails)));
        }
        out.push((rel, memo));
    }
    Ok(out)
}

/// The checkpoint head's file list, packed: per file its name, digest, the
/// group of its memo and its record count. (One binary value: a server
/// stores and returns it without walking 20,000 small documents.)
pub fn encode_entries(files: &std::collections::BTreeMap<String, FileEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(files.len() * 96);
    for (rel, f) in files {
        put_str(&mut out, rel);
        put_digest(&mut out, f.digest);
        put_stamp(&mut out, f.stamp);
        put_str(&mut out, &f.group);
        out.extend_from_slice(&f.records.to_le_bytes());
    }
    out
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

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u64::try_from(n).unwrap_or(u64::MAX).to_le_bytes());
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
            out.extend_from_slice(&s.mtime_ns.to_le_bytes());
            out.extend_from_slice(&s.ctime_ns.to_le_bytes());
            out.extend_from_slice(&s.ino.to_le_bytes());
            out.extend_from_slice(&s.dev.to_le_bytes());
        }
        None => out.push(0),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated at byte {} (wanted {n} more)", self.at));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self) -> Result<usize, String> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "short length".to_string())?;
        usize::try_from(u64::from_le_bytes(b)).map_err(|_| "length does not fit this machine".to_string())
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
                Ok(Some(Stamp { len, mtime_ns, ctime_ns, ino: self.u64()?, dev: self.u64()? }))
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
        let n = self.len()?;
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("text at byte {at} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rec<'a> = (RawHash, &'a str, &'a [(&'a str, &'a str)]);

    fn memo(digest: Option<RawHash>, recs: &[Rec<'_>]) -> FileMemo {
        let mut m = FileMemo { digest, stamp: None, recs: HashMap::default() };
        for (h, id, emails) in recs {
            let emails = emails.iter().map(|(f, v)| (Arc::from(*f), Arc::from(*v))).collect();
            m.recs.insert(*h, Arc::new(MemoRec::new(Arc::from(*id), emails)));
        }
        m
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
        assert_eq!(&*m.recs[&1].id, "u1");
        assert_eq!(&*m.recs[&1].emails[0].1, "a@x.org");
        assert_eq!(&*m.recs[&u128::MAX].id, "u-é");
        assert_eq!(back[1].1.digest, None);
        assert!(back[1].1.recs.is_empty());
        // The same memo gives the same bytes (records are sorted).
        let mut again = Vec::new();
        encode_file("data/users.json", &a, &mut again);
        assert_eq!(&bytes[..again.len()], &again[..]);
    }

    #[test]
    fn a_file_list_comes_back_as_it_went() {
        use super::FileEntry;
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            "data/users.json".to_string(),
            FileEntry { digest: Some(u128::MAX), stamp: None, group: "f:x".into(), records: 7 },
        );
        let stamp = Stamp { len: 9, mtime_ns: -5, ctime_ns: i128::MAX, ino: u64::MAX, dev: 3 };
        files.insert(
            "artifacts/jobs/a.json".to_string(),
            FileEntry { digest: Some(1), stamp: Some(stamp), group: "b:1".into(), records: 1 },
        );
        files.insert(
            "artifacts/jobs/b.json".to_string(),
            FileEntry { digest: None, stamp: None, group: String::new(), records: 0 },
        );
        let bytes = encode_entries(&files);
        assert_eq!(decode_entries(&bytes).unwrap(), files);
        assert!(decode_entries(&bytes[..bytes.len() - 1]).is_err());
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
        flag[8 + "data/users.json".len()] = 9;
        assert!(decode_files(&flag).unwrap_err().contains("digest flag"));
    }
}
