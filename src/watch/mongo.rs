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
    let head = match crate::stream::checkpoint::load_head_bare(sink).await {
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

impl super::Mirror for Sink {
    async fn start(
        &self,
        engine: &Arc<Engine>,
        memory: Option<&Arc<Memory>>,
        full: bool,
        opts: crate::reconcile::RunOptions,
        cancel: &CancellationToken,
    ) -> Result<crate::summary::Summary, crate::error::Fatal> {
        // sync has no memory of its own: the checkpoint needs one for the run.
        let fresh;
        let memory = match memory {
            Some(m) => m,
            None => {
                fresh = Arc::new(Memory::memo_only());
                &fresh
            }
        };
        crate::stream::warm::run(engine, self, memory, full, opts, cancel).await
    }

    async fn started(&self, memory: &Memory) {
        crate::stream::warm::load_rest(self, memory).await;
    }

    async fn reconcile_scope(
        &self,
        engine: &Arc<Engine>,
        memory: &Arc<Memory>,
        scope: crate::reconcile::Scope,
        opts: crate::reconcile::RunOptions,
        cancel: &CancellationToken,
    ) -> Result<crate::summary::Summary, crate::error::Fatal> {
        crate::stream::warm::reconcile_and_prove(engine, self, memory, scope, opts, cancel).await
    }

    async fn stopping(&self, engine: &Arc<Engine>, memory: &Memory) {
        crate::stream::warm::stopping(engine, self, memory).await;
    }

    async fn follow(
        &self,
        engine: &Arc<Engine>,
        memory: &Arc<Memory>,
        grace: Duration,
        hints: mpsc::Sender<Hint>,
        cancel: &CancellationToken,
    ) -> Option<JoinHandle<()>> {
        start(engine, self, memory, grace, hints, cancel).await
    }
}
