//! A large array file read without holding it: a full scan of a 320 MB
//! `users.json` would otherwise keep all of it in memory while its records
//! are mapped and written.
//!
//! Two passes over one open file. The first checks it whole (UTF-8, JSON, an
//! array at the top) and hashes its bytes, holding nothing; only a file that
//! passes is read again, record by record, so a broken file is still refused
//! whole before any of its records is written. A file that fails the check
//! is left to the whole read ([`super::read_stable`], [`super::json::parse_raw`]),
//! which words its problem exactly as for a small file (line and column; the
//! streaming parser counts some columns differently). Both passes
//! read the file that was open (a rename over it meanwhile does not mix two
//! files); a write in place between them is caught by the stamp
//! ([`Streamed::changed`]).

use std::fs;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::json::FileProblem;
use super::{ReadLimits, Stamp};

/// Array files of at least this many bytes are streamed by default
/// (`DOCMIRROR_STREAM_FROM_BYTES` sets another size; 0 streams every one).
pub const STREAM_FROM: u64 = 8 << 20;

/// The size from which array files are streamed: [`STREAM_FROM`], or the
/// environment's `DOCMIRROR_STREAM_FROM_BYTES` (a value that is not a
/// number of bytes is warned about, and the default used).
pub fn stream_from_env() -> u64 {
    let set = std::env::var("DOCMIRROR_STREAM_FROM_BYTES").ok();
    stream_from(set.as_deref()).unwrap_or_else(|value| {
        tracing::warn!(%value, default = STREAM_FROM, "DOCMIRROR_STREAM_FROM_BYTES is not a number of bytes; using the default");
        STREAM_FROM
    })
}

/// [`stream_from_env`]'s reading of the variable's value (`Err`: the value, not a number).
fn stream_from(value: Option<&str>) -> Result<u64, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(STREAM_FROM),
        Some(v) => v.parse().map_err(|_| v.to_string()),
    }
}

/// An array file that passed the first pass.
pub struct Streamed {
    file: fs::File,
    /// The hash of the whole file (as [`super::read_stable`]'s bytes would give).
    pub digest: u128,
    pub stamp: Stamp,
    /// Its records, as the first pass counted them (a scan sizes its tables once).
    pub count: usize,
    began: std::time::SystemTime,
}

impl Streamed {
    /// The stamp as it proves the bytes hashed, unless the file changed
    /// since the first pass began (then `None`: nothing may be believed).
    pub fn settled(&self) -> Result<Option<Stamp>, FileProblem> {
        let now = Stamp::of(&self.file.metadata().map_err(io)?);
        Ok(if now == self.stamp { self.stamp.settled(self.began) } else { None })
    }

    /// The file was written in place after the first pass began.
    pub fn changed(&self) -> bool {
        self.file.metadata().map_or(true, |m| Stamp::of(&m) != self.stamp)
    }

    /// The second pass: each record's raw text, in order, to `each` (which
    /// returns `false` to stop). A problem here means the file changed
    /// between the passes.
    pub fn records(&mut self, each: &mut dyn FnMut(usize, Box<RawValue>) -> bool) -> Result<(), FileProblem> {
        self.file.rewind().map_err(io)?;
        let mut reader = BufReader::with_capacity(BUF, &self.file);
        skip_bom(&mut reader)?;
        let mut de = serde_json::Deserializer::from_reader(reader);
        let stopped = serde::Deserializer::deserialize_seq(&mut de, Each { each }).map_err(|e| json_problem(&e))?;
        if !stopped {
            de.end().map_err(|e| json_problem(&e))?;
        }
        Ok(())
    }
}

const BUF: usize = 1 << 20;

fn io(e: std::io::Error) -> FileProblem {
    FileProblem::Io(e.to_string())
}

fn json_problem(e: &serde_json::Error) -> FileProblem {
    FileProblem::Json { line: e.line(), column: e.column(), reason: super::json::json_reason(e) }
}

/// Whether a file of this size is read by [`open`] rather than whole.
pub fn worth_it(len: u64, limits: ReadLimits) -> bool {
    len >= limits.stream_from
}

/// The first pass (see the module docs). `Ok(None)`: the file is gone.
/// `Err(None)`: it does not start as an array, or is not valid UTF-8 JSON,
/// so it is read whole (which words its problem). A file that changes while it is checked is checked
/// again, as [`super::read_stable`] reads again.
pub fn open(path: &Path, limits: ReadLimits) -> Result<Option<Streamed>, Option<FileProblem>> {
    use std::os::unix::fs::OpenOptionsExt;
    const ATTEMPTS: usize = 5;
    for attempt in 0..ATTEMPTS {
        let began = std::time::SystemTime::now();
        let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Some(io(e))),
        };
        let before = file.metadata().map_err(|e| Some(io(e)))?;
        if !before.is_file() || before.len() > limits.max_file_bytes {
            return Err(None); // Refused as a whole read refuses it.
        }
        let stamp = Stamp::of(&before);
        let checked = check(&file).map_err(|e| e.map(io))?;
        let after = Stamp::of(&file.metadata().map_err(|e| Some(io(e)))?);
        if after == stamp {
            let (digest, len, count) = checked.ok_or(None)?;
            if len == stamp.len {
                return Ok(Some(Streamed { file, digest, stamp, count, began }));
            }
        }
        if attempt + 1 < ATTEMPTS {
            std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
        }
    }
    Err(Some(FileProblem::Unstable))
}

/// Hash, and check as UTF-8 JSON with an array at the top: the file's
/// digest, length and number of records, or `None` (read it whole); `Err`
/// where it cannot be read.
fn check(file: &fs::File) -> Result<Option<(u128, u64, usize)>, Option<std::io::Error>> {
    use std::io::BufRead;
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let mut buffered = BufReader::with_capacity(BUF, file);
    let head = buffered.fill_buf().map_err(Some)?;
    let bom = head.starts_with(BOM);
    let text = if bom { &head[BOM.len()..] } else { head };
    // Only a file that starts as an array (after JSON's own whitespace) is
    // streamed; anything else is read whole, which words its problem.
    if text.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) != Some(&b'[') {
        return Ok(None);
    }
    let mut reader =
        Checked { inner: buffered, hash: xxhash_rust::xxh3::Xxh3::new(), len: 0, carry: Vec::new(), utf8: true };
    if bom {
        reader.hash.update(BOM);
        reader.len = 3;
        reader.inner.consume(BOM.len());
    }
    let mut de = serde_json::Deserializer::from_reader(&mut reader);
    let parsed = serde::Deserializer::deserialize_seq(&mut de, Skip).and_then(|n| de.end().map(|()| n));
    drop(de);
    let count = match parsed {
        Ok(n) => n,
        Err(e) => {
            return match e.io_error_kind() {
                Some(_) => Err(None),
                None => Ok(None),
            }
        }
    };
    Ok((reader.utf8 && reader.carry.is_empty()).then(|| (reader.hash.digest128(), reader.len, count)))
}

fn skip_bom(reader: &mut impl std::io::BufRead) -> Result<(), FileProblem> {
    if reader.fill_buf().map_err(io)?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    Ok(())
}

/// A reader that hashes what passes and checks it as UTF-8.
struct Checked<R> {
    inner: R,
    hash: xxhash_rust::xxh3::Xxh3,
    len: u64,
    /// Bytes of a character cut by the end of the last read.
    carry: Vec<u8>,
    utf8: bool,
}

impl<R> Checked<R> {
    /// Check the next bytes as UTF-8, after any carried over.
    fn check_utf8(&mut self, bytes: &[u8]) {
        if !self.utf8 {
            return;
        }
        let mut joined;
        let text: &[u8] = if self.carry.is_empty() {
            bytes
        } else {
            joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(bytes);
            &joined
        };
        if let Err(e) = std::str::from_utf8(text) {
            let rest = &text[e.valid_up_to()..];
            match e.error_len() {
                // A character cut by the end of this read: checked with the next.
                None if rest.len() < 4 => self.carry = rest.to_vec(),
                _ => self.utf8 = false,
            }
        }
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += u64::try_from(n).unwrap_or(u64::MAX);
        self.check_utf8(&buf[..n]);
        Ok(n)
    }
}

/// Every element of the top-level array, skipped and counted.
struct Skip;

impl<'de> Visitor<'de> for Skip {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// Every element of the top-level array, handed on as raw text; `true`
/// when the receiver stopped early.
struct Each<'a> {
    each: &'a mut dyn FnMut(usize, Box<RawValue>) -> bool,
}

impl<'de> Visitor<'de> for Each<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut i = 0;
        while let Some(raw) = seq.next_element_seed(Raw)? {
            if !(self.each)(i, raw) {
                return Ok(true);
            }
            i += 1;
        }
        Ok(false)
    }
}

struct Raw;

impl<'de> DeserializeSeed<'de> for Raw {
    type Value = Box<RawValue>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Box<RawValue>, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Shape;
    use crate::source::json::parse_raw;

    /// What the stream makes of these bytes: the records' texts, or `None`
    /// where it leaves the file to the whole read.
    fn streamed(bytes: &[u8]) -> Option<Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, bytes).unwrap();
        let limits = ReadLimits { stream_from: 0, ..ReadLimits::default() };
        let mut s = match open(&path, limits) {
            Ok(s) => s.expect("the file is there"),
            Err(None) => return None,
            Err(Some(p)) => panic!("{p}"),
        };
        assert_eq!(s.digest, xxhash_rust::xxh3::xxh3_128(bytes), "the digest is the whole file's");
        let mut texts = Vec::new();
        s.records(&mut |i, raw| {
            assert_eq!(i, texts.len());
            texts.push(raw.get().to_string());
            true
        })
        .unwrap();
        assert!(!s.changed());
        assert_eq!(s.count, texts.len(), "the first pass counts the records the second reads");
        Some(texts)
    }

    fn whole(bytes: &[u8]) -> Result<Vec<String>, FileProblem> {
        parse_raw(bytes, Shape::Array).map(|r| r.into_iter().map(|(_, t)| t.to_string()).collect())
    }

    #[test]
    fn the_stream_size_is_a_number_of_bytes_or_the_default_and_a_word_is_refused() {
        assert_eq!(stream_from(None), Ok(STREAM_FROM));
        assert_eq!(stream_from(Some(" ")), Ok(STREAM_FROM));
        assert_eq!(stream_from(Some("0")), Ok(0));
        assert_eq!(stream_from(Some(" 1048576\n")), Ok(1 << 20));
        assert_eq!(stream_from(Some("8MiB")), Err("8MiB".to_string()));
        assert_eq!(stream_from(Some("-1")), Err("-1".to_string()));
    }

    #[test]
    fn a_streamed_file_gives_the_records_a_whole_read_gives_and_a_broken_one_is_left_to_it() {
        let big_name = "é".repeat(700_000); // 1.4 MB of two-byte characters: crosses the 1 MiB buffer
        let good: Vec<Vec<u8>> = vec![
            b"[]".to_vec(),
            b" \n\t[ {\"id\": \"u1\", \"a\": [1, {\"b\": null}]} ,\n {\"id\":\"u2\"}, 3, \"x\" ]\n".to_vec(),
            b"\xEF\xBB\xBF[{\"id\":\"u1\"}]".to_vec(),
            b"[{\"id\":\"u1\",\"id\":\"u2\"}]".to_vec(),
            format!("[{{\"id\":\"u1\",\"name\":\"{big_name}\"}},\n{{\"id\":\"u2\"}}]").into_bytes(),
        ];
        for bytes in &good {
            let label = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).to_string();
            let got = streamed(bytes).unwrap_or_else(|| panic!("{label:?} is a good array: streamed"));
            assert_eq!(Ok(got), whole(bytes), "{label:?}");
        }
        let broken: Vec<Vec<u8>> = vec![
            b"[{\"id\":\"u1\"},\n {\"id\": \"u2\",}]".to_vec(),
            b"[{\"id\":\"u1\"}] trailing".to_vec(),
            b"[{\"id\":\"u1\"}".to_vec(),
            b"[{\"id\":\"\xff\"}]".to_vec(),
            b"[{\"id\":\"u1\"}]\n\xc3".to_vec(),
            b"[{\"id\":\"\\q\"}]".to_vec(),
            b"[{\"id\":\"\x01\"}]".to_vec(),
            format!("[{{\"id\":\"u1\",\"name\":\"{big_name}\"}},\n{{\"id\":\"u2\" \"x\"}}]").into_bytes(),
            {
                let mut b = format!("[{{\"id\":\"u1\",\"name\":\"{big_name}").into_bytes();
                b.extend_from_slice(b"\xe9\x80\"}]");
                b
            },
            format!("[{}{{\"id\":1}}]", "[".repeat(200)).into_bytes(),
        ];
        for bytes in &broken {
            let label = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).to_string();
            assert!(whole(bytes).is_err(), "{label:?} is broken");
            assert_eq!(streamed(bytes), None, "{label:?} is left to the whole read, which words its problem");
        }
        // So is anything that does not start as an array.
        for bytes in [&b""[..], b"  ", b"{\"id\":\"u1\"}", b"null", b"\xEF\xBB\xBF{}", b"\x0c[]"] {
            assert!(streamed(bytes).is_none(), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn a_file_written_in_place_between_the_passes_is_seen_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, b"[{\"id\":\"u1\"}]").unwrap();
        let limits = ReadLimits { stream_from: 0, ..ReadLimits::default() };
        let s = open(&path, limits).unwrap().unwrap();
        assert!(!s.changed());
        std::fs::write(&path, b"[{\"id\":\"u1\"},{\"id\":\"u2\"}]").unwrap();
        assert!(s.changed());
        assert_eq!(s.settled(), Ok(None), "nothing is believed of a changed file");
        // A file renamed over it is another file: the open one is read as it was.
        let mut s = open(&path, limits).unwrap().unwrap();
        let other = dir.path().join("tmp.json");
        std::fs::write(&other, b"[]").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let mut n = 0;
        s.records(&mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 2);
        assert!(!worth_it(STREAM_FROM - 1, ReadLimits::default()) && worth_it(STREAM_FROM, ReadLimits::default()));
    }
}
