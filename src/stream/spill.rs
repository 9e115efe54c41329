//! `sync`'s early store of large memos: once a source is settled, the memo
//! of each of its files large enough for a checkpoint group of its own (a
//! million users' `users.json`) is stored right away and let go, instead of
//! being held while the other sources are read (see
//! [`crate::reconcile::memo::Spill`]). The checkpoint's save at the end
//! names the groups stored so; until then no head names them, so a run cut
//! short leaves the last checkpoint as it was (a group it shares by name no
//! longer matches that head's hash, and its file is compared in full).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::checkpoint::{self, Stored};
use super::memo_codec::{FileEntry, Snapshot};
use crate::error::Fatal;
use crate::reconcile::memo::{FileMemo, Memory, Spill};
use crate::sink::Sink;

/// What the reconcile hands large memos to: a queue to [`run`].
#[derive(Debug)]
struct Spiller(mpsc::UnboundedSender<(Arc<str>, FileMemo)>);

impl Spill for Spiller {
    fn wants(&self, rel: &str, memo: &FileMemo) -> bool {
        checkpoint::own_group(rel, memo).is_some()
    }

    fn take(&self, rel: Arc<str>, memo: FileMemo) {
        // A store that failed has stopped listening; the save then is not made.
        let _ = self.0.send((rel, memo));
    }
}

/// Large memos being stored while the reconcile runs.
pub struct Spilling {
    task: JoinHandle<Result<Vec<Stored>, Fatal>>,
}

/// Have `memory` hand large memos over as their sources settle, and store them.
pub fn start(sink: &Sink, memory: &Memory) -> Spilling {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Ok(mut spill) = memory.spill.lock() {
        *spill = Some(Arc::new(Spiller(tx)));
    }
    Spilling { task: tokio::spawn(run(sink.clone(), rx)) }
}

impl Spilling {
    /// The reconcile is over: what was stored (an error when a store failed:
    /// then no checkpoint may name these groups).
    pub async fn finish(self, memory: &Memory) -> Result<Vec<Stored>, Fatal> {
        if let Ok(mut spill) = memory.spill.lock() {
            *spill = None;
        }
        self.task.await.map_err(Fatal::task("checkpoint"))?
    }
}

async fn run(sink: Sink, mut rx: mpsc::UnboundedReceiver<(Arc<str>, FileMemo)>) -> Result<Vec<Stored>, Fatal> {
    // A group the last checkpoint holds byte for byte is not written again.
    let prev = checkpoint::load_head_bare(&sink).await.ok().flatten();
    let mut stored = Vec::new();
    while let Some((rel, memo)) = rx.recv().await {
        let Some(group) = checkpoint::own_group(&rel, &memo) else { continue };
        let records = u64::try_from(memo.recs.len()).unwrap_or(u64::MAX);
        let file = FileEntry { digest: memo.digest, stamp: memo.stamp, group: group.clone(), records };
        let files = vec![Snapshot::of(&rel, &memo)];
        // The snapshot shares the records' bytes; the table goes now.
        drop(memo);
        let entry = checkpoint::store_group(&sink, &group, files, prev.as_ref()).await?;
        tracing::debug!(file = %rel, %group, parts = entry.parts, "Stored a large memo early");
        stored.push(Stored { rel, file, entry });
    }
    Ok(stored)
}
