//! The stream followed while a run works: what others write meanwhile, and
//! where the stream stands once the run is done.
//!
//! A run that writes many documents (an initial sync) can push the position
//! it started from out of the server's history before it ends; a stream
//! opened at that position and read while the run works keeps its place. The
//! mirror's own writes are filtered out on the server, so the reader sees
//! only others' writes. When the run is done, a fence is written and read
//! back: the position after it is past everything the run wrote.

use std::collections::HashSet;

use bson::Bson;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{is_fence, open, read_event, write_fence, Events, Pace, Seen};
use crate::sink::Sink;

/// How long the reader may take to reach the fence once the run is done
/// (it has been reading all along; the caller then reads from the run's start).
const TAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Documents others wrote while the run worked (collection, id).
pub type Pending = Vec<(String, String)>;

/// A stream being read beside a run.
pub struct Tail {
    fence_tx: oneshot::Sender<String>,
    /// `None` once finished; a tail dropped unfinished (its run failed) stops reading.
    handle: Option<JoinHandle<Result<(Bson, Pending), String>>>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

impl Tail {
    /// Start reading from `from`, keeping at most `limit` ids.
    pub fn start(sink: &Sink, from: Bson, collections: HashSet<String>, limit: usize) -> Tail {
        let (fence_tx, fence_rx) = oneshot::channel();
        let sink = sink.clone();
        let handle = tokio::spawn(async move { read(&sink, from, &collections, limit, fence_rx).await });
        Tail { fence_tx, handle: Some(handle) }
    }

    /// The run is done: the position past it, and what others wrote meanwhile.
    pub async fn finish(mut self, sink: &Sink) -> Result<(Bson, Pending), String> {
        let handle = self.handle.take().ok_or("finished twice")?;
        // The reader learns the fence's value before it is written, so it
        // cannot pass the fence unknowing. (It may have stopped already, after
        // an error: its result says why.)
        let n = bson::oid::ObjectId::new().to_hex();
        let (tx, _) = oneshot::channel();
        let _ = std::mem::replace(&mut self.fence_tx, tx).send(n.clone());
        if let Err(e) = write_fence(sink, &n).await {
            handle.abort();
            return Err(format!("cannot write the fence: {e}"));
        }
        let mut handle = handle;
        match tokio::time::timeout(TAIL_WAIT, &mut handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("the stream reader failed: {e}")),
            Err(_) => {
                handle.abort();
                Err(format!("the stream read beside the run did not reach its fence within {TAIL_WAIT:?}"))
            }
        }
    }
}

async fn read(
    sink: &Sink,
    from: Bson,
    collections: &HashSet<String>,
    limit: usize,
    mut fence_rx: oneshot::Receiver<String>,
) -> Result<(Bson, Pending), String> {
    let mut stream = open(sink, Some(&from), Events::Others, Pace::Follow).await.map_err(|u| u.to_string())?;
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut fence_n: Option<String> = None;
    loop {
        let ev = tokio::select! {
            // The fence's value first: an event that is the fence must never
            // be read before the value that says so.
            biased;
            n = &mut fence_rx, if fence_n.is_none() => {
                fence_n = Some(n.map_err(|_| "the run ended without a fence".to_string())?);
                continue;
            }
            ev = stream.next() => match ev {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(format!("the change stream failed during the run: {e}")),
                None => return Err("the change stream ended during the run".into()),
            },
        };
        match read_event(&ev, collections) {
            Seen::Touched { collection, id, .. } => {
                seen.insert((collection, id));
                if seen.len() > limit {
                    return Err(format!("more than {limit} documents written by others during the run"));
                }
            }
            Seen::Broken(what) => return Err(format!("the change stream shows a {what} during the run")),
            Seen::Other => {
                if fence_n.is_none() {
                    fence_n = fence_rx.try_recv().ok();
                }
                if fence_n.as_deref().is_some_and(|n| is_fence(&ev, n)) {
                    let token = bson::to_bson(&ev.id).map_err(|e| e.to_string())?;
                    return Ok((token, seen.into_iter().collect()));
                }
            }
        }
    }
}
