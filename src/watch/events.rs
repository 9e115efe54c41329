//! File events from the `notify` crate (inotify on Linux), turned into
//! [`Hint`]s. The callback runs on notify's thread and must never block: it
//! converts the event (string and path work only, no I/O for files that are
//! not sources) and `try_send`s the hints; when the channel is full it sets
//! the overflow flag, which makes the daemon rescan everything.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Hint;
use crate::error::Fatal;
use crate::layout::Root;
use crate::source::{source_file, Tree};

/// Hints that may wait in the channel; beyond that the daemon rescans.
pub const CHANNEL_CAPACITY: usize = 65_536;

pub struct FsWatch {
    watcher: RecommendedWatcher,
    /// Roots watched recursively, with the folder each one was when its watch
    /// went in (device and inode): a watch follows the folder, not the name.
    roots: HashMap<PathBuf, (u64, u64)>,
    /// Parents of the roots, watched to see a root appear or vanish.
    parents: HashSet<PathBuf>,
    tx: mpsc::Sender<Hint>,
    overflow: Arc<AtomicBool>,
}

impl FsWatch {
    pub fn start(tree: Tree, tx: mpsc::Sender<Hint>, overflow: Arc<AtomicBool>) -> Result<FsWatch, Fatal> {
        let cb_tx = tx.clone();
        let cb_overflow = overflow.clone();
        let cb_tree = tree.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let send = |h: Hint| {
                if let Err(mpsc::error::TrySendError::Full(_)) = cb_tx.try_send(h) {
                    cb_overflow.store(true, Ordering::Release);
                }
            };
            match res {
                Ok(event) => {
                    for h in hints_for(&cb_tree, &event) {
                        send(h);
                    }
                }
                Err(e) => {
                    let why = match e.kind {
                        notify::ErrorKind::MaxFilesWatch => {
                            "the inotify watch limit was reached (raise fs.inotify.max_user_watches, or use --poll-interval-ms)".to_string()
                        }
                        _ => format!("the file watcher reported an error: {e}"),
                    };
                    send(Hint::Full(why));
                }
            }
        })
        .map_err(|e| Fatal::Source(format!("cannot start the file watcher: {e}")))?;
        let mut w = FsWatch { watcher, roots: HashMap::new(), parents: HashSet::new(), tx, overflow };
        w.ensure_watches(&tree);
        Ok(w)
    }

    /// Watch every root that exists (recursively) and each root's parent
    /// (to see roots appear and vanish). Safe to call again at any time.
    /// A root that is now another folder than the one watched (replaced,
    /// renamed over, a symlink swapped) is watched again.
    pub fn ensure_watches(&mut self, tree: &Tree) {
        for root in [&tree.roots.data, &tree.roots.artifacts] {
            if let Some(parent) = root.parent().filter(|p| p.is_dir()) {
                if !self.parents.contains(parent) {
                    match self.watcher.watch(parent, RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            self.parents.insert(parent.to_path_buf());
                        }
                        Err(e) => self.watch_failed(parent, &e),
                    }
                }
            }
            let now = folder_id(root);
            let exists = now.is_some();
            let watched = self.roots.get(root.as_path()).copied();
            if let (Some(id), true) = (now, watched != now) {
                // A root that was removed and recreated, or replaced under its
                // name, needs a fresh watch: the old one follows the old folder.
                if watched.is_some() {
                    tracing::warn!(folder = %root.display(), "Watched folder was replaced; watching the new one");
                }
                let _ = self.watcher.unwatch(root);
                self.roots.remove(root.as_path());
                match self.watcher.watch(root, RecursiveMode::Recursive) {
                    Ok(()) => {
                        tracing::info!(folder = %root.display(), "Watching");
                        self.roots.insert(root.clone(), id);
                    }
                    Err(e) => self.watch_failed(root, &e),
                }
            } else if !exists && self.roots.remove(root.as_path()).is_some() {
                let _ = self.watcher.unwatch(root);
                tracing::warn!(folder = %root.display(), "Watched folder is gone; waiting for it to come back");
            } else if !exists {
                tracing::warn!(folder = %root.display(), "Folder does not exist yet; it will be picked up when it appears");
            }
        }
    }

    /// Whether a watched root is now another folder than the one its watch
    /// follows (a cheap `stat` per root; nothing is logged or re-watched).
    pub fn replaced(&self) -> bool {
        self.roots.iter().any(|(root, id)| folder_id(root).is_some_and(|now| now != *id))
    }

    fn watch_failed(&self, path: &Path, e: &notify::Error) {
        let hint = if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
            " (the inotify watch limit was reached: raise fs.inotify.max_user_watches, or use --poll-interval-ms)"
        } else {
            ""
        };
        tracing::warn!(folder = %path.display(), error = %e, "Cannot watch folder{hint}; relying on rescans");
        // Changes there are only seen by rescans: do one now.
        if self.tx.try_send(Hint::Full(format!("cannot watch {}", path.display()))).is_err() {
            self.overflow.store(true, Ordering::Release);
        }
    }
}

/// The device and inode of a folder (following symlinks), `None` if it is not one.
fn folder_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok().filter(std::fs::Metadata::is_dir)?;
    Some((m.dev(), m.ino()))
}

/// What an event may have changed. No I/O except for paths that could be a
/// folder holding sources (a `stat`); other files are dismissed by name.
pub fn hints_for(tree: &Tree, event: &notify::Event) -> Vec<Hint> {
    let mut out = Vec::new();
    if event.need_rescan() {
        out.push(Hint::Full("file events were lost (the kernel's event queue overflowed)".into()));
    }
    // A writer closed the file, or a file was renamed into place: it is
    // complete, so it can be read without waiting for the quiet period.
    let complete = matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    );
    if matches!(event.kind, EventKind::Access(_)) && !complete {
        return out;
    }
    for path in &event.paths {
        for (root_kind, root) in [(Root::Data, &tree.roots.data), (Root::Artifacts, &tree.roots.artifacts)] {
            if path == root {
                out.push(Hint::Full(format!("folder {} was created, moved or removed", root.display())));
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else { continue };
            let Some(rel_str) = rel.to_str() else { continue };
            for (i, spec) in tree.layout.sources.iter().enumerate().filter(|(_, s)| s.root == root_kind) {
                if spec.matches_rel(rel) {
                    let f = source_file(i, spec, root, rel_str);
                    out.push(if complete { Hint::FileDone(f) } else { Hint::File(f) });
                } else if Path::new(spec.split_path().0).starts_with(rel) && may_be_folder(&event.kind, path) {
                    // A folder on the way to this source's files appeared, vanished or
                    // moved: files written into a new folder before its watch existed
                    // produce no events, so read the whole source.
                    out.push(Hint::Source(i));
                }
            }
        }
    }
    out
}

fn may_be_folder(kind: &EventKind, path: &Path) -> bool {
    match kind {
        EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => true,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Any => {
            path.is_dir() || !path.exists()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::source::Roots;

    fn tree() -> Tree {
        let roots = Roots { data: PathBuf::from("/p/data"), artifacts: PathBuf::from("/p/artifacts") };
        Tree { layout: Arc::new(Layout::builtin()), roots }
    }

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn source_files_become_file_hints_and_others_are_ignored() {
        let e = tree();
        let modify = EventKind::Modify(ModifyKind::Any);
        let h = hints_for(&e, &event(modify, "/p/artifacts/jobs/j1.json"));
        assert!(matches!(&h[..], [Hint::File(f)] if &*f.rel == "artifacts/jobs/j1.json" && f.spec == 2));
        let h = hints_for(&e, &event(modify, "/p/data/users.json"));
        assert!(matches!(&h[..], [Hint::File(f)] if &*f.rel == "data/users.json" && f.spec == 0));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(matches!(&hints_for(&e, &event(closed, "/p/data/users.json"))[..], [Hint::FileDone(_)]));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(matches!(&hints_for(&e, &event(renamed, "/p/data/users.json"))[..], [Hint::FileDone(_)]));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(hints_for(&e, &event(opened, "/p/data/users.json")).is_empty());
        for ignored in [
            "/p/artifacts/jobs/j1.json.tmp",
            "/p/artifacts/jobs/j1.log",
            "/p/artifacts/checkpoints/model.bin",
            "/p/data/datasets/ds1/upload.csv",
            "/p/data/.users.json.swp",
            "/elsewhere/users.json",
        ] {
            assert!(hints_for(&e, &event(modify, ignored)).is_empty(), "{ignored}");
        }
    }

    #[test]
    fn new_folders_and_lost_events_ask_for_rescans() {
        let e = tree();
        let h = hints_for(&e, &event(EventKind::Create(CreateKind::Folder), "/p/artifacts/jobs"));
        assert_eq!(h, [Hint::Source(2)]);
        let h = hints_for(&e, &event(EventKind::Remove(RemoveKind::Folder), "/p/data/datasets"));
        assert_eq!(h, [Hint::Source(1)]);
        let h = hints_for(&e, &event(EventKind::Create(CreateKind::Folder), "/p/data"));
        assert!(matches!(&h[..], [Hint::Full(_)]));
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(matches!(&hints_for(&e, &overflow)[..], [Hint::Full(_)]));
    }
}
