//! MongoDB's side, for watch: the change-stream follower and its drift
//! tracker run beside the daemon, and ask it for rescans and repairs through
//! the same hints the file watchers send.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Hint;
use crate::reconcile::memo::Memory;
use crate::reconcile::{Conflict, Engine};
use crate::sink::Sink;
use crate::source::SourceFile;
use crate::stream::drift::{Requests, Tracker};

struct Hints(mpsc::Sender<Hint>);

impl Requests for Hints {
    fn full(&self, why: String) {
        tracing::warn!(reason = %why, "MongoDB's side asks for a full rescan");
        if self.0.try_send(Hint::Full(why)).is_err() {
            tracing::debug!("The hint queue is full; the rescan it holds covers this");
        }
    }

    fn file(&self, file: SourceFile) {
        if self.0.try_send(Hint::FileDone(file)).is_err() {
            tracing::debug!("The hint queue is full; the rescan it holds covers this");
        }
    }
}

/// Start following the stream from the checkpoint the first reconcile
/// stored (`None` when there is none: no change streams here).
pub async fn start(
    engine: &Arc<Engine>,
    sink: &Sink,
    memory: &Arc<Memory>,
    grace: Duration,
    hints: mpsc::Sender<Hint>,
    cancel: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let head = match crate::stream::checkpoint::load_head(sink).await {
        Ok(Some(h)) => h,
        Ok(None) => {
            tracing::info!("No checkpoint (no change streams?): drift is found by full rescans and verify only");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the checkpoint; MongoDB's side is not followed");
            return None;
        }
    };
    let repair = engine.conflict == Conflict::FileWins;
    let tracker = Tracker::new(engine.clone(), sink.clone(), memory.clone(), grace, repair);
    let requests: Arc<dyn Requests> = Arc::new(Hints(hints));
    Some(tokio::spawn(crate::stream::follow::run(tracker, head.token, requests, cancel.clone())))
}
