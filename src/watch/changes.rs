//! Where watch's change hints come from: file events, or a poller (network
//! filesystems may not deliver events).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{events, poll, Hint, WatchOptions};
use crate::error::Fatal;
use crate::source::fstype;
use crate::source::Tree;

/// Where change hints come from: file events, or a poller.
pub(super) enum ChangeSource {
    Events(events::FsWatch),
    /// Held only to keep the poller alive: dropping it stops polling.
    Poll(#[allow(dead_code)] poll::PollTask),
}

impl ChangeSource {
    pub(super) fn start(
        tree: &Tree,
        opts: &WatchOptions,
        tx: mpsc::Sender<Hint>,
        overflow: Arc<AtomicBool>,
    ) -> Result<ChangeSource, Fatal> {
        let roots: Vec<PathBuf> = vec![tree.roots.data.clone(), tree.roots.artifacts.clone()];
        for root in &roots {
            if let Some(kind) = fstype::network_fs(root) {
                if opts.poll_interval.is_none() {
                    tracing::warn!(folder = %root.display(), filesystem = %kind,
                        "This folder is on a network filesystem, which may not deliver change events; use --poll-interval-ms");
                }
            }
        }
        match opts.poll_interval {
            Some(every) => {
                tracing::info!(interval_ms = every.as_millis(), "Polling the folders for changes");
                Ok(ChangeSource::Poll(poll::PollTask::start(tree.clone(), every, tx, overflow)))
            }
            None => Ok(ChangeSource::Events(events::FsWatch::start(tree.clone(), tx, overflow)?)),
        }
    }

    /// Re-establish watches (a watched folder may have been removed and
    /// recreated, or replaced under its name).
    pub(super) fn refresh(&mut self, tree: &Tree) {
        if let ChangeSource::Events(w) = self {
            w.ensure_watches(tree);
        }
    }

    /// Whether a watched folder was replaced under its name since its watch went in.
    pub(super) fn replaced(&self) -> bool {
        matches!(self, ChangeSource::Events(w) if w.replaced())
    }
}
