//! The progress bar `sync` draws on stderr when it is a terminal (not under
//! `--quiet`). It only reads the run's [`Metrics`]; the pipeline knows nothing
//! about it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::Metrics;

/// Draws until dropped.
pub struct Bar {
    task: tokio::task::JoinHandle<()>,
    bar: ProgressBar,
}

impl Bar {
    pub fn start(metrics: Arc<Metrics>) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
        let style =
            ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} writes ({per_sec}, {eta})")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                b.set_length(metrics.ops_planned.load(Ordering::Relaxed));
                b.set_position(metrics.ops_done.load(Ordering::Relaxed));
                let phase = metrics.phase.lock().map(|p| p.clone()).unwrap_or_default();
                b.set_message(format!("{phase} ({} read)", metrics.records_scanned.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar { task, bar }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
