//! Counters and gauges for Prometheus (`watch --metrics-addr`). One
//! [`Metrics`] is created per run and handed to the engine and the sink; it
//! only counts, so recording never blocks or fails.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::summary::Summary;

/// Upper bounds (seconds) of the write-batch latency histogram.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
pub struct Metrics {
    by_collection: Mutex<BTreeMap<String, Summary>>,
    batches: AtomicU64,
    /// Counts per bucket (not cumulative), plus one for +Inf.
    batch_buckets: [AtomicU64; 12],
    batch_micros: AtomicU64,
    retries: AtomicU64,
    rescans: AtomicU64,
    mongodb_up: AtomicBool,
    last_write_unix_ms: AtomicI64,
    ready: AtomicBool,
    /// Progress of the current run, for the progress bar.
    pub ops_planned: AtomicU64,
    pub ops_done: AtomicU64,
    pub records_scanned: AtomicU64,
    pub phase: Mutex<String>,
    /// Documents read from MongoDB, by collection (every read goes through
    /// the sink's `find_map`): how a start proves it read no collection whole.
    documents_read: Mutex<BTreeMap<String, u64>>,
    /// Drifting records now, by collection and kind (watch).
    drift: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    pub fn record_summary(&self, collection: &str, s: &Summary) {
        if let Ok(mut map) = self.by_collection.lock() {
            map.entry(collection.to_string()).or_default().add(s);
        }
    }

    pub fn set_phase(&self, phase: String) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
    }

    pub fn record_batch(&self, elapsed: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.batch_buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.batch_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.last_write_unix_ms.store(bson::DateTime::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn record_read(&self, collection: &str, n: u64) {
        if let (true, Ok(mut m)) = (n > 0, self.documents_read.lock()) {
            *m.entry(collection.to_string()).or_default() += n;
        }
    }

    /// Documents read so far, by collection.
    pub fn documents_read(&self) -> BTreeMap<String, u64> {
        self.documents_read.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The drift gauge: records drifting now, by (collection, kind).
    pub fn set_drift(&self, counts: BTreeMap<(String, String), u64>) {
        if let Ok(mut m) = self.drift.lock() {
            *m = counts;
        }
    }

    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rescan(&self) {
        self.rescans.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_mongodb_up(&self, up: bool) {
        self.mongodb_up.store(up, Ordering::Relaxed);
    }

    pub fn mongodb_up(&self) -> bool {
        self.mongodb_up.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// First full reconcile done and MongoDB reachable.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.mongodb_up()
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP docmirror_{name} {help}\n# TYPE docmirror_{name} counter");
            for (labels, v) in rows {
                let _ = writeln!(out, "docmirror_{name}{labels} {v}");
            }
        };
        let per = self.by_collection.lock().map(|m| m.clone()).unwrap_or_default();
        let rows = |f: fn(&Summary) -> u64| -> Vec<(String, u64)> {
            per.iter().map(|(c, s)| (format!("{{collection=\"{c}\"}}"), f(s))).collect()
        };
        counter("files_seen_total", "Source files read.", rows(|s| s.files));
        counter("records_read_total", "Records read from the files.", rows(|s| s.read));
        counter("records_inserted_total", "Documents inserted.", rows(|s| s.inserted));
        counter("records_updated_total", "Documents updated.", rows(|s| s.updated));
        counter("records_unchanged_total", "Records found unchanged (not written).", rows(|s| s.unchanged));
        counter("records_rejected_total", "Records or files rejected (see mirror_rejects).", rows(|s| s.rejected));
        counter("records_archived_total", "Documents moved to mirror_archive.", rows(|s| s.archived));
        counter("records_deleted_total", "Documents deleted.", rows(|s| s.deleted));
        counter(
            "records_skipped_newer_total",
            "Updates skipped: MongoDB held a newer version.",
            rows(|s| s.skipped_newer),
        );
        let read = self.documents_read();
        counter(
            "documents_read_total",
            "Documents read from MongoDB.",
            read.iter().map(|(c, n)| (format!("{{collection=\"{c}\"}}"), *n)).collect(),
        );
        counter(
            "write_retries_total",
            "MongoDB operations retried after a transient error.",
            vec![(String::new(), self.retries.load(Ordering::Relaxed))],
        );
        counter(
            "rescans_total",
            "Full rescans (lost events, new folders, periodic).",
            vec![(String::new(), self.rescans.load(Ordering::Relaxed))],
        );

        let _ = writeln!(out, "# HELP docmirror_write_batch_seconds Latency of MongoDB write batches.\n# TYPE docmirror_write_batch_seconds histogram");
        let mut cumulative = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.batch_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "docmirror_write_batch_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.batch_buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "docmirror_write_batch_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let micros = self.batch_micros.load(Ordering::Relaxed);
        let _ = writeln!(out, "docmirror_write_batch_seconds_sum {}.{:06}", micros / 1_000_000, micros % 1_000_000);
        let _ = writeln!(out, "docmirror_write_batch_seconds_count {}", self.batches.load(Ordering::Relaxed));

        let _ = writeln!(out, "# HELP docmirror_mongodb_up Whether the last MongoDB operation succeeded.\n# TYPE docmirror_mongodb_up gauge");
        let _ = writeln!(out, "docmirror_mongodb_up {}", u8::from(self.mongodb_up()));
        let _ = writeln!(
            out,
            "# HELP docmirror_ready Whether the first full reconcile is done.\n# TYPE docmirror_ready gauge"
        );
        let _ = writeln!(out, "docmirror_ready {}", u8::from(self.ready.load(Ordering::Relaxed)));
        let _ = writeln!(out, "# HELP docmirror_drift_records Records whose MongoDB document differs from the file for longer than --drift-grace-secs.\n# TYPE docmirror_drift_records gauge");
        for ((c, kind), n) in self.drift.lock().map(|m| m.clone()).unwrap_or_default() {
            let _ = writeln!(out, "docmirror_drift_records{{collection=\"{c}\",kind=\"{kind}\"}} {n}");
        }
        let last = self.last_write_unix_ms.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP docmirror_seconds_since_last_write Seconds since the last successful write batch (-1: none yet).\n# TYPE docmirror_seconds_since_last_write gauge");
        let since = if last == 0 {
            -1.0
        } else {
            let ms = bson::DateTime::now().timestamp_millis().saturating_sub(last).max(0);
            f64::from(i32::try_from(ms / 1000).unwrap_or(i32::MAX))
        };
        let _ = writeln!(out, "docmirror_seconds_since_last_write {since}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.record_summary("users", &Summary { read: 3, inserted: 2, unchanged: 1, ..Default::default() });
        m.record_summary("users", &Summary { read: 3, updated: 1, ..Default::default() });
        m.record_batch(Duration::from_millis(30));
        m.record_batch(Duration::from_secs(20));
        m.set_mongodb_up(true);
        let text = m.render();
        assert!(text.contains("docmirror_records_read_total{collection=\"users\"} 6"), "{text}");
        assert!(text.contains("docmirror_records_inserted_total{collection=\"users\"} 2"));
        assert!(text.contains("docmirror_write_batch_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("docmirror_write_batch_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("docmirror_write_batch_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("docmirror_write_batch_seconds_count 2"));
        assert!(text.contains("docmirror_mongodb_up 1"));
        assert!(!m.is_ready());
        m.set_ready();
        assert!(m.is_ready());
    }
}
