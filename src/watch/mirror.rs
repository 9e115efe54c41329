//! What `sync` and `watch` do differently per target, beside the reconcile
//! core they share: MongoDB starts from its change-stream checkpoint where it
//! proves enough, stores a new one after each full reconcile, and follows its
//! own stream for drift (issue 14; `mongo.rs`); PostgreSQL has no such
//! stream, so every start is a full reconcile and nothing else is followed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Hint;
use crate::error::Fatal;
use crate::reconcile::memo::Memory;
use crate::reconcile::{reconcile, Core, Engine, RunOptions, Scope};
use crate::state::StateStore;
use crate::summary::Summary;

/// A target `sync` and `watch` can run against.
pub trait Mirror: StateStore {
    /// The start of `sync` (no memory) and `watch`: a full reconcile, or
    /// where the target can prove it enough, only what changed since.
    fn start(
        &self,
        engine: &Arc<Engine>,
        memory: Option<&Arc<Memory>>,
        full: bool,
        opts: RunOptions,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Summary, Fatal>> + Send;

    /// After watch's first reconcile.
    fn started(&self, memory: &Memory) -> impl Future<Output = ()> + Send;

    /// One of watch's reconciles.
    fn reconcile_scope(
        &self,
        engine: &Arc<Engine>,
        memory: &Arc<Memory>,
        scope: Scope,
        opts: RunOptions,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Summary, Fatal>> + Send;

    /// watch stopping cleanly (before its state is recorded).
    fn stopping(&self, engine: &Arc<Engine>, memory: &Memory) -> impl Future<Output = ()> + Send;

    /// Follow the target's own changes beside the files, asking for rescans
    /// through `hints`; `None` where there is nothing to follow.
    fn follow(
        &self,
        engine: &Arc<Engine>,
        memory: &Arc<Memory>,
        grace: Duration,
        hints: mpsc::Sender<Hint>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Option<JoinHandle<()>>> + Send;
}

impl Mirror for crate::postgres::Pg {
    async fn start(
        &self,
        engine: &Arc<Engine>,
        memory: Option<&Arc<Memory>>,
        full: bool,
        opts: RunOptions,
        cancel: &CancellationToken,
    ) -> Result<Summary, Fatal> {
        // sync: records whose text the rows were written from is unchanged are
        // not mapped again (the table keeps the texts' hashes); `--full` maps all.
        let opts = RunOptions { texts: !full, ..opts };
        // sync into empty tables: one transaction, keys and indexes made after
        // the load; whatever it refuses, it is undone and the rows go in again
        // in batches, each refusal one record's reject (`postgres/fresh.rs`).
        if memory.is_none() && !opts.dry_run && engine.exclusive_load && self.begin_fresh(engine).await {
            let undone = match reconcile(Core { engine, target: self, memory }, Scope::Full, opts, cancel).await {
                Ok(summary) => match self.finish_fresh().await {
                    Ok(()) => return Ok(summary),
                    Err(reason) => reason,
                },
                Err(e) => {
                    self.abandon_fresh();
                    match e {
                        Fatal::Postgres(reason) if !cancel.is_cancelled() => reason,
                        e => return Err(e),
                    }
                }
            };
            tracing::info!(
                reason = %undone,
                "The load into empty tables was rolled back: loading again in batches, where each refusal is one record's reject"
            );
        }
        reconcile(Core { engine, target: self, memory }, Scope::Full, opts, cancel).await
    }

    async fn started(&self, _memory: &Memory) {}

    async fn reconcile_scope(
        &self,
        engine: &Arc<Engine>,
        memory: &Arc<Memory>,
        scope: Scope,
        opts: RunOptions,
        cancel: &CancellationToken,
    ) -> Result<Summary, Fatal> {
        let full = matches!(scope, Scope::Full);
        let mut total = reconcile(Core { engine, target: self, memory: Some(memory) }, scope, opts, cancel).await?;
        // A record refused because its parent was not there yet (a job before
        // its user) is tried again as soon as something was written, not only
        // at the next full rescan. (A full reconcile loads parents first.)
        if !full && total.inserted + total.updated > 0 {
            let files: Vec<_> = self
                .waiting_for_parents()
                .await?
                .iter()
                .filter_map(|rel| crate::stream::proof::file_of(engine, rel))
                .collect();
            if !files.is_empty() {
                tracing::info!(files = files.len(), "Trying again the records that waited for a parent");
                let again = Core { engine, target: self, memory: Some(memory) };
                total.add(&reconcile(again, Scope::Files(files), opts, cancel).await?);
            }
        }
        Ok(total)
    }

    async fn stopping(&self, _engine: &Arc<Engine>, _memory: &Memory) {}

    async fn follow(
        &self,
        _engine: &Arc<Engine>,
        _memory: &Arc<Memory>,
        _grace: Duration,
        _hints: mpsc::Sender<Hint>,
        _cancel: &CancellationToken,
    ) -> Option<JoinHandle<()>> {
        None
    }
}
