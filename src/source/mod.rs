//! Sources: find the files a layout names, read each one consistently (its
//! metadata must not change during the read), and parse it into raw records.
//! Everything here is blocking file I/O and CPU work; async callers run it on
//! the blocking pool. Nothing here ever writes to the source folders.

pub mod fstype;
pub mod json;
pub mod split;
pub mod stream;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layout::{Layout, Root, SourceSpec};

pub use json::{kind_of, parse, parse_raw, parse_value, FileProblem, RawRecord, DUPLICATE_KEYS_MARKER};

/// The two configured folders.
#[derive(Debug, Clone)]
pub struct Roots {
    pub data: PathBuf,
    pub artifacts: PathBuf,
}

impl Roots {
    pub fn dir(&self, root: Root) -> &Path {
        match root {
            Root::Data => &self.data,
            Root::Artifacts => &self.artifacts,
        }
    }
}

/// The files a layout names under the two folders: all that the file
/// watchers and the poller need to know.
#[derive(Debug, Clone)]
pub struct Tree {
    pub layout: Arc<Layout>,
    pub roots: Roots,
}

/// One file of one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceFile {
    /// Index of the source in the layout.
    pub spec: usize,
    /// Stable name, used in `_mirror.source` and in messages: `data/users.json`.
    /// Shared: every table a run keeps per file (the memo, the digests, the
    /// files read) holds this one copy of it.
    pub rel: Arc<str>,
    /// Where it is on disk: its root (shared by the source's files), then
    /// `rel` past its first `skip` bytes (the root's label and a slash). A
    /// folder of 200,000 job files keeps no path of each until it is read.
    root: Arc<Path>,
    skip: usize,
}

impl SourceFile {
    /// Where it is on disk.
    pub fn path(&self) -> PathBuf {
        match self.rel.get(self.skip..) {
            Some(rest) if !rest.is_empty() => self.root.join(rest),
            _ => self.root.to_path_buf(),
        }
    }

    /// A file of source `spec` named `rel` at `path` (tests).
    #[cfg(test)]
    pub fn at(spec: usize, rel: &str, path: &str) -> SourceFile {
        SourceFile { spec, rel: Arc::from(rel), root: Arc::from(Path::new(path)), skip: rel.len() }
    }
}

/// Limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_file_bytes: u64,
    /// Array files this large or larger are read in a stream, not held
    /// whole, where a scan has no memo to look records up in
    /// ([`stream`]).
    pub stream_from: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { max_file_bytes: 1 << 30, stream_from: stream::STREAM_FROM }
    }
}

/// A file's identity and version, compared before and after each read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    /// Nanoseconds since 1970 (see [`nanos`]).
    pub mtime_ns: i64,
    /// The last change of the file or its metadata: set by the kernel on
    /// every write, and not settable by any program (unlike the mtime).
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

/// How long before a read the file's last change (its ctime) must be for
/// the stamp to prove that the bytes are still the ones read: file times
/// come from a coarse clock (a tick of a few milliseconds), so a write just
/// after a read could leave size, times and inode as the read saw them.
/// (Git's "racily clean" entries, with a wide margin.)
pub const STAMP_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// This stamp, if every later change of the file must change it: the
    /// file's last change was at least [`STAMP_MARGIN`] before the read
    /// began (`began`, on the same clock as the file times).
    pub fn settled(self, began: std::time::SystemTime) -> Option<Stamp> {
        let began = began.duration_since(std::time::UNIX_EPOCH).ok()?;
        let limit = i64::try_from(began.saturating_sub(STAMP_MARGIN).as_nanos()).ok()?;
        (self.ctime_ns < limit).then_some(self)
    }
}

/// A file time in nanoseconds since 1970, in 64 bits (eight bytes less in
/// each of a stamp's two times, kept for every file). That spans the years
/// 1678 to 2262; a time outside is held at the end of the span, which costs
/// nothing the proof needs: the change time, which proves the bytes, is set
/// by the kernel from its clock on every write, so it is never outside.
pub fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.checked_mul(1_000_000_000).and_then(|n| n.checked_add(nsec)).unwrap_or(if secs < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// A file read whole ([`read_stable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBytes {
    pub bytes: Vec<u8>,
    pub stamp: Stamp,
    /// The stamp, if it proves these bytes until it changes ([`Stamp::settled`]).
    pub settled: Option<Stamp>,
    /// Their xxh3-128, where a reader already took it (a start's proofs).
    pub digest: Option<u128>,
}

/// The files a source consists of right now, sorted by name. A folder that
/// does not exist yet yields no files (the platform creates `jobs/` lazily).
pub fn discover(layout: &Layout, roots: &Roots, spec_idx: usize) -> Result<Vec<SourceFile>, (String, FileProblem)> {
    let spec = &layout.sources[spec_idx];
    let root = roots.dir(spec.root);
    let root: Arc<Path> = Arc::from(root);
    let mut files = Vec::new();
    visit(layout, roots, spec_idx, &mut |rel| files.push(file_in(spec_idx, spec, &root, rel)))?;
    files.sort();
    Ok(files)
}

/// The names of a source's files (relative to its root, unlabelled), in no
/// particular order, one at a time: what [`discover`] finds, without a
/// [`SourceFile`] each (a checkpoint's save lists 200,000 job files).
pub fn visit(
    layout: &Layout,
    roots: &Roots,
    spec_idx: usize,
    found: &mut dyn FnMut(&str),
) -> Result<(), (String, FileProblem)> {
    let spec = &layout.sources[spec_idx];
    let root = roots.dir(spec.root);
    let (dir, _) = spec.split_path();
    if !spec.is_pattern() {
        found(&spec.path);
        return Ok(());
    }
    let folder = root.join(dir);
    let entries = match fs::read_dir(&folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err((rel_label(spec, dir), FileProblem::Io(e.to_string())));
        }
    };
    for entry in entries {
        let entry = entry.map_err(|e| (rel_label(spec, dir), FileProblem::Io(e.to_string())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !spec.matches_file_name(name) {
            continue;
        }
        if dir.is_empty() {
            found(name);
        } else {
            found(&format!("{dir}/{name}"));
        }
    }
    Ok(())
}

/// The name a file of this source goes by (`_mirror.source`, the memo):
/// its path under the root, after the root's label.
pub fn labelled(spec: &SourceSpec, rel: &str) -> String {
    rel_label(spec, rel)
}

fn rel_label(spec: &SourceSpec, rel: &str) -> String {
    if rel.is_empty() {
        spec.root.label().to_string()
    } else {
        format!("{}/{rel}", spec.root.label())
    }
}

/// The [`SourceFile`] for a path relative to the source's root.
pub fn source_file(spec_idx: usize, spec: &SourceSpec, root: &Path, rel: &str) -> SourceFile {
    file_in(spec_idx, spec, &Arc::from(root), rel)
}

/// The same, under a root the source's files share.
fn file_in(spec_idx: usize, spec: &SourceSpec, root: &Arc<Path>, rel: &str) -> SourceFile {
    let labelled = rel_label(spec, rel);
    let skip = labelled.len() - rel.len();
    SourceFile { spec: spec_idx, rel: Arc::from(labelled), root: root.clone(), skip }
}

/// Read a whole file, retrying while it changes under us. `Ok(None)` when it
/// does not exist.
pub fn read_stable(path: &Path, limits: ReadLimits) -> Result<Option<FileBytes>, FileProblem> {
    use std::os::unix::fs::OpenOptionsExt;
    const ATTEMPTS: usize = 5;
    let io = |e: std::io::Error| FileProblem::Io(e.to_string());
    for attempt in 0..ATTEMPTS {
        let began = std::time::SystemTime::now();
        // Opened first and asked through the open file (not the path, which a
        // rename may point elsewhere meanwhile: what is read is then the file
        // that was there, whole). Non-blocking, so that a FIFO in the folder
        // is refused rather than waited on.
        let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let before = file.metadata().map_err(io)?;
        if before.is_dir() {
            return Err(FileProblem::NotAFile("a directory"));
        }
        if !before.is_file() {
            return Err(FileProblem::NotAFile("a special file"));
        }
        if before.len() > limits.max_file_bytes {
            return Err(FileProblem::TooLarge { size: before.len(), limit: limits.max_file_bytes });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
        (&file).take(limits.max_file_bytes + 1).read_to_end(&mut bytes).map_err(io)?;
        // Written in place while it was read: its size or time moved.
        let stamp = Stamp::of(&file.metadata().map_err(io)?);
        if Stamp::of(&before) == stamp && u64::try_from(bytes.len()).ok() == Some(stamp.len) {
            return Ok(Some(FileBytes { bytes, stamp, settled: stamp.settled(began), digest: None }));
        }
        if attempt + 1 < ATTEMPTS {
            std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
        }
    }
    Err(FileProblem::Unstable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_visit_names_the_files_discover_finds() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots { data: tmp.path().join("data"), artifacts: tmp.path().join("artifacts") };
        fs::create_dir_all(roots.artifacts.join("jobs")).unwrap();
        for name in ["j1.json", "j2.json", "notes.txt"] {
            fs::write(roots.artifacts.join("jobs").join(name), "{}").unwrap();
        }
        let layout = Layout::builtin();
        for (i, spec) in layout.sources.iter().enumerate() {
            let mut seen = Vec::new();
            visit(&layout, &roots, i, &mut |rel| seen.push(labelled(spec, rel))).unwrap();
            seen.sort();
            let found: Vec<String> = discover(&layout, &roots, i).unwrap().iter().map(|f| f.rel.to_string()).collect();
            assert_eq!(seen, found, "{}", spec.name);
        }
        let jobs = layout.sources.iter().position(|s| s.collection == "training_jobs").unwrap();
        let mut seen = Vec::new();
        visit(&layout, &roots, jobs, &mut |rel| seen.push(labelled(&layout.sources[jobs], rel))).unwrap();
        seen.sort();
        assert_eq!(seen, ["artifacts/jobs/j1.json", "artifacts/jobs/j2.json"]);
        // Each file's path is its root's, then its name under the root; the root is one, shared.
        let files = discover(&layout, &roots, jobs).unwrap();
        assert_eq!(files[1].path(), roots.artifacts.join("jobs/j2.json"));
        assert!(Arc::ptr_eq(&files[0].root, &files[1].root));
        let users = layout.sources.iter().position(|s| s.collection == "users").unwrap();
        assert_eq!(discover(&layout, &roots, users).unwrap()[0].path(), roots.data.join("users.json"));
    }

    #[test]
    fn a_file_time_is_nanoseconds_held_at_the_ends_of_64_bits() {
        assert_eq!(nanos(1, 5), 1_000_000_005);
        assert_eq!(nanos(-1, 0), -1_000_000_000);
        assert_eq!(nanos(i64::MAX / 1_000_000_000 + 1, 0), i64::MAX);
        assert_eq!(nanos(i64::MIN / 1_000_000_000 - 1, 0), i64::MIN);
    }

    #[test]
    fn read_stable_reports_missing_dirs_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        assert_eq!(read_stable(&p, ReadLimits::default()), Ok(None));
        std::fs::create_dir(&p).unwrap();
        assert_eq!(read_stable(&p, ReadLimits::default()), Err(FileProblem::NotAFile("a directory")));
        let q = dir.path().join("y.json");
        std::fs::write(&q, b"[1,2,3]").unwrap();
        let got = read_stable(&q, ReadLimits::default()).unwrap().unwrap();
        assert_eq!(got.bytes, b"[1,2,3]");
        assert_eq!(got.stamp.len, 7);
        assert_eq!(got.settled, None, "a file written just now does not prove its next change");
        assert!(matches!(
            read_stable(&q, ReadLimits { max_file_bytes: 3, ..ReadLimits::default() }),
            Err(FileProblem::TooLarge { size: 7, limit: 3 })
        ));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipe.json");
        let made = std::process::Command::new("mkfifo").arg(&p).status().unwrap();
        assert!(made.success(), "mkfifo failed");
        // Opened without O_NONBLOCK, this would wait for a writer forever.
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_stable(&q, ReadLimits::default()));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("read_stable blocked on a FIFO");
        assert_eq!(got, Err(FileProblem::NotAFile("a special file")));
    }

    #[test]
    fn a_stamp_proves_only_a_file_changed_well_before_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z.json");
        std::fs::write(&p, b"[]").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&p).unwrap());
        let changed = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(stamp.ctime_ns).unwrap());
        // A read that began within the margin after the change: racy.
        assert_eq!(stamp.settled(changed), None);
        assert_eq!(stamp.settled(changed + STAMP_MARGIN), None);
        assert_eq!(stamp.settled(changed + STAMP_MARGIN + std::time::Duration::from_millis(1)), Some(stamp));
        // The ctime moves on any write, even one that puts size and mtime back.
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"{}").unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(stamp.mtime_ns).unwrap()))
            .unwrap();
        let after = Stamp::of(&std::fs::metadata(&p).unwrap());
        assert_eq!((after.len, after.mtime_ns, after.ino), (stamp.len, stamp.mtime_ns, stamp.ino));
        assert_ne!(after, stamp, "only the ctime tells this edit apart");
    }
}
