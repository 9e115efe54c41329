//! systemd integration for `watch` (Type=notify): READY=1 after the first full
//! reconcile, WATCHDOG=1 from the main loop (so a hung loop gets restarted),
//! STATUS= lines for `systemctl status`, STOPPING=1 on shutdown. Without
//! NOTIFY_SOCKET every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use super::Lifecycle;
use crate::summary::Summary;

pub struct Systemd {
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    folders: usize,
    records_at_start: u64,
    changes: u64,
    last_change: Option<Instant>,
    last_status: Option<Instant>,
}

impl Systemd {
    pub fn new(folders: usize) -> Self {
        Systemd {
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: None,
            folders,
            records_at_start: 0,
            changes: 0,
            last_change: None,
            last_status: None,
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "Cannot notify systemd");
        }
    }

    fn status(&self) -> String {
        let last = match self.last_change {
            Some(t) => format!("last change {} s ago", t.elapsed().as_secs()),
            None => "no change since start".to_string(),
        };
        format!(
            "watching {} folders, {} records at start, {} changes mirrored, {last}",
            self.folders, self.records_at_start, self.changes
        )
    }
}

fn changes(s: &Summary) -> u64 {
    s.inserted + s.updated + s.archived + s.deleted
}

impl Lifecycle for Systemd {
    fn ready(&mut self, summary: &Summary) {
        self.records_at_start = summary.read;
        self.changes = changes(summary);
        let status = self.status();
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    fn tick(&mut self, totals: &Summary) {
        let now = Instant::now();
        if changes(totals) != self.changes {
            self.changes = changes(totals);
            self.last_change = Some(now);
        }
        if let Some(wd) = self.watchdog {
            if self.last_ping.is_none_or(|t| now.duration_since(t) >= wd / 4) {
                self.send(&[NotifyState::Watchdog]);
                self.last_ping = Some(now);
            }
        }
        if self.last_status.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5)) {
            let status = self.status();
            self.send(&[NotifyState::Status(&status)]);
            self.last_status = Some(now);
        }
    }

    fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}
