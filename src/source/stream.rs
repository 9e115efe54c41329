//! A large array file read without holding it: a full scan of a 320 MB
//! `users.json` would otherwise keep all of it in memory while its records
//! are mapped and written.
//!
//! Two passes over one open file, each reading it in blocks and finding the
//! records in them with [`super::split`]. The first checks it whole (UTF-8,
//! an array at the top, each record JSON) and hashes its bytes, holding
//! nothing; only a file that passes is read again, record by record, so a
//! broken file is still refused whole before any of its records is written.
//! A file that fails the check is left to the whole read
//! ([`super::read_stable`], [`super::json::parse_raw`]), which words its
//! problem exactly as for a small file (line and column). Both passes read
//! the file that was open (a rename over it meanwhile does not mix two
//! files); a write in place between them is caught by the stamp
//! ([`Streamed::changed`]).
//!
//! A first pass may instead hand each record's text on unchecked
//! ([`open_hashing`]): watch compares a changed file's records with its
//! memo by their hashes, and parses only the texts it needs.

use std::fs;
use std::io::{Read, Seek};
use std::path::Path;

use serde::de::IgnoredAny;

use super::json::FileProblem;
use super::split::{Each, Split};
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

    /// The text of `len` bytes at `at` (a place the first pass handed on),
    /// or `None` when it cannot be read or is not UTF-8.
    pub fn text_at(&self, at: u64, len: usize) -> Option<String> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, at).ok()?;
        String::from_utf8(buf).ok()
    }

    /// The second pass: each record's raw text, in order, to `each` (which
    /// returns `false` to stop), checked as JSON again. A problem here means
    /// the file changed between the passes.
    pub fn records(&mut self, each: &mut dyn FnMut(usize, &str) -> bool) -> Result<(), FileProblem> {
        self.file.rewind().map_err(io)?;
        let mut failed = false;
        let mut split = Split::default();
        let mut on = |i: usize, _: u64, bytes: &[u8]| match text(bytes) {
            Some(t) => each(i, t),
            None => {
                failed = true;
                false
            }
        };
        // (Bytes that are not an array now were one in the first pass: changed.)
        let going = read_split(&mut &self.file, &mut split, &mut on).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => FileProblem::Unstable,
            _ => io(e),
        })?;
        if failed {
            return Err(FileProblem::Unstable);
        }
        if going {
            split.finish().map_err(|_| FileProblem::Unstable)?;
        }
        Ok(())
    }
}

/// An element's text, if it is UTF-8 JSON.
fn text(bytes: &[u8]) -> Option<&str> {
    let t = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str::<IgnoredAny>(t).is_ok().then_some(t)
}

/// Read `from` to its end (or until `each` stops: `Ok(false)`) through
/// `split`, skipping a leading byte-order mark. A block is at least as
/// large as an element cut by the last one, so a record of any size is
/// scanned a few times at most.
fn read_split(from: &mut impl Read, split: &mut Split, each: &mut Each<'_>) -> std::io::Result<bool> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let mut buf = vec![0u8; BUF];
    let mut first = true;
    loop {
        let want = BUF.max(split.carried());
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let n = read_full(from, &mut buf[..want])?;
        if n == 0 {
            return Ok(true);
        }
        let mut block = &buf[..n];
        if std::mem::take(&mut first) && block.starts_with(BOM) {
            block = &block[BOM.len()..];
            split.skipped(BOM.len());
        }
        if !split.feed(block, each).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))? {
            return Ok(false);
        }
    }
}

/// Fill `buf` as far as the reader goes (short only at its end).
fn read_full(from: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

const BUF: usize = 1 << 20;

fn io(e: std::io::Error) -> FileProblem {
    FileProblem::Io(e.to_string())
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
    open_each(path, limits, None)
}

/// What the first pass hands each record to: its index, where its text
/// starts in the file, and the text's bytes (UTF-8: the file is checked as
/// a whole, a block at a time, which is much faster than record by record).
pub type Hand<'a> = dyn FnMut(usize, u64, &[u8]) + 'a;

/// [`open`], but each record's raw text is handed to `each` in the first
/// pass (with its index and place: a pass that starts again, for a file that changed
/// while it was checked, starts again from 0) and not checked as JSON: the
/// caller parses the texts it uses, and reads the file whole if one is not
/// JSON. The array around them, and UTF-8, are checked.
pub fn open_hashing(
    path: &Path,
    limits: ReadLimits,
    each: &mut Hand<'_>,
) -> Result<Option<Streamed>, Option<FileProblem>> {
    open_each(path, limits, Some(each))
}

fn open_each(
    path: &Path,
    limits: ReadLimits,
    mut each: Option<&mut Hand<'_>>,
) -> Result<Option<Streamed>, Option<FileProblem>> {
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
        let checked = check(&file, each.as_mut().map(|f| &mut **f as &mut Hand<'_>)).map_err(|e| e.map(io))?;
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

/// Hash, and check as UTF-8 JSON with an array at the top (each record
/// as JSON only without `each`, which is handed the texts instead): the
/// file's digest, length and number of records, or `None` (read it whole);
/// `Err` where it cannot be read.
fn check(
    file: &fs::File,
    mut each: Option<&mut Hand<'_>>,
) -> Result<Option<(u128, u64, usize)>, Option<std::io::Error>> {
    let mut reader =
        Hashed { inner: file, hash: xxhash_rust::xxh3::Xxh3::new(), len: 0, carry: Vec::new(), utf8: true };
    let mut split = Split::default();
    let mut bad = false;
    let mut on = |i: usize, at: u64, bytes: &[u8]| match each.as_deref_mut() {
        Some(each) => {
            each(i, at, bytes);
            true
        }
        None if serde_json::from_slice::<IgnoredAny>(bytes).is_ok() => true,
        None => {
            bad = true;
            false
        }
    };
    match read_split(&mut reader, &mut split, &mut on) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Ok(None),
        Err(e) => return Err(Some(e)),
    }
    let Ok(count) = split.finish() else { return Ok(None) };
    let utf8 = reader.utf8 && reader.carry.is_empty();
    Ok((!bad && utf8).then(|| (reader.hash.digest128(), reader.len, count)))
}

/// A reader that hashes what passes and checks it as UTF-8.
struct Hashed<R> {
    inner: R,
    hash: xxhash_rust::xxh3::Xxh3,
    len: u64,
    /// Bytes of a character cut by the end of the last read.
    carry: Vec<u8>,
    utf8: bool,
}

impl<R> Hashed<R> {
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

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += u64::try_from(n).unwrap_or(u64::MAX);
        self.check_utf8(&buf[..n]);
        Ok(n)
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
            texts.push(raw.to_string());
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
        // One no longer an array by the second pass is called changed, not unreadable.
        let mut s = open(&path, limits).unwrap().unwrap();
        std::fs::write(&path, b"[{\"id\":\"u1\"},").unwrap();
        assert_eq!(s.records(&mut |_, _| true), Err(FileProblem::Unstable));
        std::fs::write(&path, b"[{\"id\":\"u1\"},{\"id\":\"u2\"}]").unwrap();
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
