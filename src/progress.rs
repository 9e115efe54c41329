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
        let writing =
            ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} writes ({per_sec}, {eta})")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        // Before anything is planned there is no total to show a bar against.
        let reading =
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(reading.clone());
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let mut has_total = false;
            loop {
                let planned = metrics.ops_planned.load(Ordering::Relaxed);
                if (planned > 0) != has_total {
                    has_total = planned > 0;
                    b.set_style(if has_total { writing.clone() } else { reading.clone() });
                }
                b.set_length(planned);
                b.set_position(metrics.ops_done.load(Ordering::Relaxed));
                let phase = metrics.phase.lock().map(|p| p.clone()).unwrap_or_default();
                b.set_message(message(&phase, metrics.records_scanned.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar { task, bar }
    }
}

/// The text beside the bar: the phase, and the records read once any are
/// counted (they are counted per source, when it is done).
fn message(phase: &str, read: u64) -> String {
    let phase = if phase.is_empty() { "starting" } else { phase };
    match read {
        0 => phase.to_string(),
        n => format!("{phase} ({n} read)"),
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_not_known_yet_are_not_shown() {
        assert_eq!(message("", 0), "starting");
        assert_eq!(message("users: reading", 0), "users: reading");
        assert_eq!(message("training_jobs: writing", 10), "training_jobs: writing (10 read)");
    }
}
