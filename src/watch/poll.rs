//! Polling for filesystems that deliver no change events (NFS, CIFS, some
//! container mounts). Unlike notify's `PollWatcher`, which compares
//! whole-second modification times, a file counts as changed when its size,
//! inode, device or nanosecond modification time differs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Hint;
use crate::source::{self, SourceFile, Stamp, Tree};

/// The background polling task; dropping it stops polling.
pub struct PollTask {
    handle: JoinHandle<()>,
}

impl Drop for PollTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl PollTask {
    pub fn start(tree: Tree, every: Duration, tx: mpsc::Sender<Hint>, overflow: Arc<AtomicBool>) -> PollTask {
        let handle = tokio::spawn(async move {
            let mut poller = Poller::default();
            // The first sweep only records what is there: the initial reconcile reads it all.
            let e = tree.clone();
            poller = match tokio::task::spawn_blocking(move || {
                poller.sweep(&e);
                poller
            })
            .await
            {
                Ok(p) => p,
                Err(_) => return,
            };
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let e = tree.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let hints = poller.sweep(&e);
                    (poller, hints)
                })
                .await;
                let Ok((p, hints)) = result else { return };
                poller = p;
                for h in hints {
                    match tx.try_send(h) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => overflow.store(true, Ordering::Release),
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        });
        PollTask { handle }
    }
}

/// What the last sweep saw.
#[derive(Default)]
pub struct Poller {
    seen: HashMap<PathBuf, (SourceFile, Option<Stamp>)>,
    primed: bool,
}

impl Poller {
    /// Stat every source file; return hints for those that changed, appeared
    /// or vanished since the last sweep (none on the first sweep).
    pub fn sweep(&mut self, tree: &Tree) -> Vec<Hint> {
        let mut now: HashMap<PathBuf, (SourceFile, Option<Stamp>)> = HashMap::new();
        for i in 0..tree.layout.sources.len() {
            // A folder that cannot be listed is seen as empty; its files reappear when it can.
            let files = source::discover(&tree.layout, &tree.roots, i).unwrap_or_default();
            for f in files {
                let stamp = std::fs::metadata(f.path()).ok().map(|m| Stamp::of(&m));
                now.insert(f.path(), (f, stamp));
            }
        }
        let mut hints = Vec::new();
        if self.primed {
            for (path, (f, stamp)) in &now {
                if self.seen.get(path).map(|(_, s)| s) != Some(stamp) {
                    hints.push(Hint::File(f.clone()));
                }
            }
            for (path, (f, _)) in &self.seen {
                if !now.contains_key(path) {
                    hints.push(Hint::File(f.clone()));
                }
            }
        }
        self.seen = now;
        self.primed = true;
        hints
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::source::Roots;

    #[test]
    fn sweeps_see_same_second_rewrites_new_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots { data: dir.path().join("data"), artifacts: dir.path().join("artifacts") };
        std::fs::create_dir_all(roots.artifacts.join("jobs")).unwrap();
        std::fs::create_dir_all(&roots.data).unwrap();
        let tree = Tree { layout: Arc::new(Layout::builtin()), roots: roots.clone() };
        let job = roots.artifacts.join("jobs/j1.json");
        std::fs::write(&job, "{\"job_id\":\"j1\"}").unwrap();
        let mut p = Poller::default();
        assert!(p.sweep(&tree).is_empty(), "the first sweep only records");
        assert!(p.sweep(&tree).is_empty());
        // Same length, same second: a whole-second mtime poller would miss it.
        std::fs::write(&job, "{\"job_id\":\"j2\"}").unwrap();
        let tmp = roots.artifacts.join("jobs/j1.json.tmp");
        std::fs::write(&tmp, "{\"job_id\":\"j3\"}").unwrap();
        std::fs::rename(&tmp, &job).unwrap();
        let h = p.sweep(&tree);
        assert!(matches!(&h[..], [Hint::File(f)] if &*f.rel == "artifacts/jobs/j1.json"), "{h:?}");
        std::fs::write(roots.data.join("users.json"), "[]").unwrap();
        std::fs::remove_file(&job).unwrap();
        let mut rels: Vec<String> = p
            .sweep(&tree)
            .into_iter()
            .filter_map(|h| match h {
                Hint::File(f) => Some(f.rel.to_string()),
                _ => None,
            })
            .collect();
        rels.sort();
        assert_eq!(rels, ["artifacts/jobs/j1.json", "data/users.json"]);
    }
}
