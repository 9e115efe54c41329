//! The file side of a start from the checkpoint: which source files are
//! still what the checkpoint's proof read, by their stamp where it proves
//! them and by their digest where it does not (see [`super::warm`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::checkpoint::{self, FileEntry, Head};
use crate::error::Fatal;
use crate::reconcile::Engine;
use crate::source::{self, SourceFile};

/// The groups of the large files (each a group of its own) whose stamp
/// shows now that they changed since the checkpoint, or that have no stamp
/// recorded (the file changed just before the checkpoint read it): their
/// memos will likely be needed, and the digest that decides for a file
/// without a stamp reads all of it meanwhile. (Only where stamps are
/// believed; elsewhere the digests decide.)
pub fn changed_large_files(engine: &Engine, head: &Head) -> HashSet<String> {
    let mut out = HashSet::new();
    for (rel, entry) in head.files.iter().filter(|(_, f)| f.group.starts_with(checkpoint::OWN_GROUP)) {
        let (Some(_), Some(file)) = (entry.digest, file_of(engine, rel)) else { continue };
        if !source::fstype::stamps_prove(engine.roots.dir(engine.layout.sources[file.spec].root)) {
            continue;
        }
        let changed = entry
            .stamp
            .is_none_or(|stamp| std::fs::metadata(file.path()).ok().map(|m| source::Stamp::of(&m)) != Some(stamp));
        if changed {
            out.insert(entry.group.clone());
        }
    }
    out
}

/// Files (by their index in the list) with their digests, and the stamp
/// that proves each digest now (if one does).
type Digested = Vec<(usize, Option<u128>, Option<source::Stamp>)>;
/// What one digest thread gives: its files, how many its stamps proved, the bytes it kept.
type Part = (Digested, usize, Kept);
/// The bytes of the large files read, by label.
pub type Kept = Vec<(String, source::FileBytes)>;
/// Every source file by its label, with its digest and stamp.
pub type Now = BTreeMap<Arc<str>, (SourceFile, Option<u128>, Option<source::Stamp>)>;

/// Every source file now, with the digest of its bytes (`None`: unreadable)
/// and the stamp that proves them where there is one, and how many files
/// were proven by their stamp instead of read: a file whose stamp is the one
/// the checkpoint's list (`recorded`) has with its digest gets that digest.
/// (Read and hashed on every core: 20,000 small files are mostly system calls.)
/// The bytes of the large files read are kept, for the scan that compares
/// them next if they changed.
pub fn digests(engine: &Engine, recorded: &BTreeMap<String, FileEntry>) -> Result<(Now, usize, Kept), Fatal> {
    let mut files = Vec::new();
    for i in 0..engine.layout.sources.len() {
        files.extend(source::discover(&engine.layout, &engine.roots, i).map_err(|(rel, problem)| {
            Fatal::Source(format!("{rel} ({}): {problem}", engine.roots.dir(engine.layout.sources[i].root).display()))
        })?);
    }
    // Times on a network filesystem come from the server's clock, and a FUSE
    // filesystem may not keep a ctime at all: stamps prove files only on the
    // local filesystems known to set it.
    let local: Vec<bool> =
        engine.layout.sources.iter().map(|s| source::fstype::stamps_prove(engine.roots.dir(s.root))).collect();
    let proven = |f: &SourceFile| {
        let now = || std::fs::metadata(f.path()).ok().map(|m| (m.is_file(), source::Stamp::of(&m)));
        let stamped = recorded.get(&*f.rel).and_then(|e| Some((e.stamp?, e.digest?)));
        stamp_proof(stamped.as_ref(), local.get(f.spec) == Some(&true), now)
    };
    let digest = |f: &SourceFile| {
        if let Some((d, stamp)) = proven(f) {
            return Some((Some(d), Some(stamp), true, None));
        }
        match source::read_stable(&f.path(), engine.limits) {
            Ok(None) => None,
            Ok(Some(mut read)) => {
                let d = xxhash_rust::xxh3::xxh3_128(&read.bytes);
                let keep = read.bytes.len() >= KEEP_READ_FROM;
                read.digest = Some(d);
                Some((Some(d), read.settled, false, keep.then_some(read)))
            }
            Err(_) => Some((None, None, false, None)),
        }
    };
    let found = in_blocks(&files, &digest);
    let mut slots: Vec<Option<(Option<u128>, Option<source::Stamp>)>> = vec![None; files.len()];
    let mut by_stamp = 0;
    let mut read = Vec::new();
    for part in found {
        let (part, n, kept) = part.ok_or_else(|| Fatal::Internal("a file digest thread failed".into()))?;
        by_stamp += n;
        read.extend(kept);
        for (i, d, stamp) in part {
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some((d, stamp));
            }
        }
    }
    let out = files
        .into_iter()
        .zip(slots)
        .filter_map(|(f, slot)| slot.map(|(d, stamp)| (f.rel.clone(), (f, d, stamp))))
        .collect();
    Ok((out, by_stamp, read))
}

/// What [`digests`] learns of one file: its digest, the stamp that proves
/// it, whether the stamp alone did, and the bytes kept (a large file read).
type Proven = (Option<u128>, Option<source::Stamp>, bool, Option<source::FileBytes>);

/// `digest` over every file, on every core. Files are handed out in blocks
/// as threads ask: the large file one thread reads does not leave the
/// others idle. `None` for a thread that panicked (its files must not look gone).
fn in_blocks(files: &[SourceFile], digest: &(dyn Fn(&SourceFile) -> Option<Proven> + Sync)) -> Vec<Option<Part>> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 8);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let next = &next;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut by_stamp = 0;
                    let mut part = Vec::new();
                    let mut kept = Vec::new();
                    loop {
                        let start = next.fetch_add(BLOCK, Ordering::Relaxed);
                        let block = files.get(start..files.len().min(start.saturating_add(BLOCK))).unwrap_or(&[]);
                        if block.is_empty() {
                            break;
                        }
                        for (i, f) in block.iter().enumerate() {
                            if let Some((d, stamp, proven, keep)) = digest(f) {
                                by_stamp += usize::from(proven);
                                kept.extend(keep.map(|b| (f.rel.to_string(), b)));
                                part.push((start + i, d, stamp));
                            }
                        }
                    }
                    (part, by_stamp, kept)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    })
}

/// Files a digest thread takes at a time.
const BLOCK: usize = 256;

/// A changed file at least this large is read once, not twice (see [`digests`]).
const KEEP_READ_FROM: usize = 1 << 20;

/// The digest a file's stamp proves, if it proves one: the checkpoint
/// recorded this very stamp with the digest, the file's filesystem is one
/// whose stamps are believed (`local`), and the file is still a regular file
/// with that stamp (`now`, looked up only when the rest holds: a stat per file).
fn stamp_proof(
    recorded: Option<&(source::Stamp, u128)>,
    local: bool,
    now: impl FnOnce() -> Option<(bool, source::Stamp)>,
) -> Option<(u128, source::Stamp)> {
    let (stamp, digest) = recorded.filter(|_| local)?;
    let (is_file, now) = now()?;
    (is_file && now == *stamp).then_some((*digest, *stamp))
}

/// The source file a label names (`data/users.json`), wherever it is now.
pub fn file_of(engine: &Engine, rel: &str) -> Option<SourceFile> {
    let (i, spec) = engine.layout.sources.iter().enumerate().find(|(_, s)| s.owns_rel(rel))?;
    let inner = rel.strip_prefix(spec.root.label())?.strip_prefix('/')?;
    Some(source::source_file(i, spec, engine.roots.dir(spec.root), inner))
}

#[cfg(test)]
mod tests {
    use super::stamp_proof;
    use crate::source::Stamp;

    #[test]
    fn a_stamp_proves_a_file_only_on_a_filesystem_whose_stamps_are_believed() {
        let stamp = Stamp { len: 10, mtime_ns: 1, ctime_ns: 2, ino: 3, dev: 4 };
        let recorded = (stamp, 0xfeed_u128);
        let same = || Some((true, stamp));
        assert_eq!(stamp_proof(Some(&recorded), true, same), Some((0xfeed, stamp)));
        // NFS, SMB, FUSE or unknown: hashed, and not even stat'ed.
        assert_eq!(stamp_proof(Some(&recorded), false, || -> Option<(bool, Stamp)> { unreachable!() }), None);
        // Any part of the stamp moved (here the ctime alone), or no longer a file, or gone.
        assert_eq!(stamp_proof(Some(&recorded), true, || Some((true, Stamp { ctime_ns: 5, ..stamp }))), None);
        assert_eq!(stamp_proof(Some(&recorded), true, || Some((false, stamp))), None);
        assert_eq!(stamp_proof(Some(&recorded), true, || None), None);
        // No stamp recorded (a file read too soon after its last change).
        assert_eq!(stamp_proof(None, true, same), None);
    }
}
