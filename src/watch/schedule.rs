//! What watch reconciles next, and when: the daemon's decisions without any
//! I/O, so they are tested with plain values and clocks.
//!
//! Hints come in (a file changed, a folder changed, everything must be
//! rescanned); a file is due once its writer went quiet (`debounce`), at the
//! latest `max_delay` after its first hint, and at once when its writer closed
//! it or renamed it into place. One batch runs at a time: everything if a full
//! rescan is asked for, else whole sources, else the files that are due.
//! A batch that fails hands its files back and backs off; a file that did
//! not parse is read again a few times before it is reported.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::Hint;
use crate::source::SourceFile;

/// The timing rules of a schedule.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet period per file before it is read.
    pub debounce: Duration,
    /// A file that never goes quiet is read at least this often.
    pub max_delay: Duration,
    /// How many times an unparsable file is read again before it is reported.
    pub parse_retries: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    last: Instant,
    attempts: u32,
    /// The last hint said the file is complete (closed after writing, renamed in).
    done: bool,
}

/// A reconcile to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Every file, and why (the files that were pending are covered by it).
    Full { why: String, covered: Vec<(SourceFile, u32)> },
    /// Every file of these sources.
    Sources(Vec<usize>),
    /// These files, with how often each was already read unparsable.
    Files { files: Vec<(SourceFile, u32)>, defer_bad_files: bool },
}

impl Batch {
    /// The files to hand back if the batch fails.
    pub fn covered(&self) -> &[(SourceFile, u32)] {
        match self {
            Batch::Full { covered, .. } => covered,
            Batch::Files { files, .. } => files,
            Batch::Sources(_) => &[],
        }
    }
}

/// The pending work and the back-off state.
#[derive(Debug)]
pub struct Schedule {
    timing: Timing,
    pending: HashMap<SourceFile, Pending>,
    sources: HashSet<usize>,
    full: Option<String>,
    retry_after: Option<Instant>,
    failures: u32,
}

impl Schedule {
    pub fn new(timing: Timing) -> Self {
        Schedule {
            timing,
            pending: HashMap::new(),
            sources: HashSet::new(),
            full: None,
            retry_after: None,
            failures: 0,
        }
    }

    /// Take in one hint.
    pub fn hint(&mut self, hint: Hint, now: Instant) {
        match hint {
            Hint::File(f) => self.touch(f, now, false),
            Hint::FileDone(f) => self.touch(f, now, true),
            Hint::Source(s) => {
                self.sources.insert(s);
            }
            Hint::Full(why) => self.request_full(why),
        }
    }

    fn touch(&mut self, f: SourceFile, now: Instant, done: bool) {
        self.pending
            .entry(f)
            .and_modify(|p| {
                p.last = now;
                p.done = done;
            })
            .or_insert(Pending { first: now, last: now, attempts: 0, done });
    }

    /// Ask for a full rescan (the first reason given is kept).
    pub fn request_full(&mut self, why: impl Into<String>) {
        self.full.get_or_insert_with(|| why.into());
    }

    pub fn full_requested(&self) -> bool {
        self.full.is_some()
    }

    /// Files waiting for their quiet period or for the batch in flight.
    pub fn pending_files(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest change still waiting was first seen.
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.first).min()
    }

    /// When the next pending file is due (`None`: nothing pending).
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| self.due(p)).min()
    }

    /// When a failed batch may be retried (`None`: not backing off).
    pub fn retry_after(&self) -> Option<Instant> {
        self.retry_after
    }

    /// When a pending file should be read: now if its writer is done, else
    /// after the quiet period, and never later than `max_delay` after its first hint.
    fn due(&self, p: &Pending) -> Instant {
        if p.done {
            p.last
        } else {
            (p.last + self.timing.debounce).min(p.first + self.timing.max_delay)
        }
    }

    /// The next batch to start, if any may start now (call when none is in flight).
    pub fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        if self.retry_after.is_some_and(|t| t > now) {
            return None;
        }
        self.retry_after = None;
        if let Some(why) = self.full.take() {
            // Files pending now are covered: the scan reads them after this point.
            let covered = self.pending.drain().map(|(f, p)| (f, p.attempts)).collect();
            self.sources.clear();
            return Some(Batch::Full { why, covered });
        }
        if !self.sources.is_empty() {
            let mut specs: Vec<usize> = self.sources.drain().collect();
            specs.sort_unstable();
            self.pending.retain(|f, _| !specs.contains(&f.spec));
            return Some(Batch::Sources(specs));
        }
        let ready: Vec<SourceFile> =
            self.pending.iter().filter(|(_, p)| now >= self.due(p)).map(|(f, _)| f.clone()).collect();
        if ready.is_empty() {
            return None;
        }
        // A batch either reports the files that do not parse (their last
        // read) or defers them (earlier reads), so the two kinds never share
        // one: the others are due too and go in the next batch.
        let retries = self.timing.parse_retries;
        let reporting = ready.iter().any(|f| self.pending.get(f).is_some_and(|p| p.attempts >= retries));
        let mut files: Vec<(SourceFile, u32)> = Vec::new();
        for f in ready {
            if self.pending.get(&f).is_some_and(|p| (p.attempts >= retries) == reporting) {
                if let Some(p) = self.pending.remove(&f) {
                    files.push((f, p.attempts));
                }
            }
        }
        files.sort();
        Some(Batch::Files { files, defer_bad_files: !reporting })
    }

    /// A batch finished: files that did not parse are read again after
    /// another quiet period (they may be half-written), a few times.
    pub fn succeeded(&mut self, covered: &[(SourceFile, u32)], bad: &[SourceFile], now: Instant) {
        self.failures = 0;
        for f in bad {
            let attempts = covered.iter().find(|(x, _)| x == f).map(|(_, a)| *a).unwrap_or(self.timing.parse_retries);
            if attempts < self.timing.parse_retries {
                self.pending.entry(f.clone()).or_insert(Pending {
                    first: now,
                    last: now,
                    attempts: attempts + 1,
                    done: false,
                });
            }
        }
    }

    /// A batch failed: its files are handed back and retried after a back-off
    /// that doubles with each failure in a row (2 s to 32 s). Returns the wait.
    pub fn failed(&mut self, batch: &Batch, now: Instant) -> Duration {
        self.failures += 1;
        let wait = Duration::from_secs(2u64.saturating_pow(self.failures.min(5)));
        for (f, attempts) in batch.covered() {
            self.pending.entry(f.clone()).or_insert(Pending {
                first: now,
                last: now,
                attempts: *attempts,
                done: false,
            });
        }
        match batch {
            Batch::Full { .. } => self.request_full("retry after a failure"),
            Batch::Sources(specs) => self.sources.extend(specs.iter().copied()),
            Batch::Files { .. } => {}
        }
        self.retry_after = Some(now + wait);
        wait
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn timing() -> Timing {
        Timing { debounce: 100 * MS, max_delay: 1000 * MS, parse_retries: 3 }
    }

    fn file(name: &str) -> SourceFile {
        SourceFile::at(2, &format!("artifacts/jobs/{name}"), &format!("/p/jobs/{name}"))
    }

    fn files(b: &Option<Batch>) -> Vec<String> {
        match b {
            Some(Batch::Files { files, .. }) => files.iter().map(|(f, _)| f.rel.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_file_is_read_once_its_writer_goes_quiet_or_closes_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(timing());
        s.hint(Hint::File(file("a.json")), t0);
        s.hint(Hint::File(file("a.json")), t0 + 50 * MS);
        assert_eq!(s.next_due(), Some(t0 + 150 * MS));
        assert_eq!(s.next_batch(t0 + 149 * MS), None, "still inside the quiet period");
        assert_eq!(files(&s.next_batch(t0 + 150 * MS)), ["artifacts/jobs/a.json"]);
        s.hint(Hint::FileDone(file("b.json")), t0);
        assert_eq!(files(&s.next_batch(t0)), ["artifacts/jobs/b.json"], "a closed file is read at once");
    }

    #[test]
    fn a_file_that_never_goes_quiet_is_still_read_within_max_delay() {
        let t0 = Instant::now();
        let mut s = Schedule::new(timing());
        for i in 0..30 {
            s.hint(Hint::File(file("busy.json")), t0 + i * 50 * MS);
        }
        assert_eq!(s.next_due(), Some(t0 + 1000 * MS));
    }

    #[test]
    fn a_full_rescan_comes_first_and_covers_pending_files() {
        let t0 = Instant::now();
        let mut s = Schedule::new(timing());
        s.hint(Hint::File(file("a.json")), t0);
        s.hint(Hint::Source(2), t0);
        s.hint(Hint::Full("overflow".into()), t0);
        s.hint(Hint::Full("later reason".into()), t0);
        let b = s.next_batch(t0);
        assert!(matches!(&b, Some(Batch::Full { why, covered }) if why == "overflow" && covered.len() == 1), "{b:?}");
        assert_eq!(s.next_batch(t0 + 10_000 * MS), None, "the full rescan took the source and the file along");
    }

    #[test]
    fn a_failed_batch_hands_its_files_back_and_backs_off() {
        let t0 = Instant::now();
        let mut s = Schedule::new(timing());
        s.hint(Hint::FileDone(file("a.json")), t0);
        let b = s.next_batch(t0).expect("due");
        assert_eq!(s.failed(&b, t0), Duration::from_secs(2));
        assert_eq!(s.next_batch(t0 + 1999 * MS), None, "backing off");
        assert_eq!(files(&s.next_batch(t0 + 2000 * MS)), ["artifacts/jobs/a.json"]);
        let full = Batch::Full { why: "x".into(), covered: Vec::new() };
        assert_eq!(s.failed(&full, t0), Duration::from_secs(4), "the back-off doubles");
        assert!(s.full_requested(), "a failed full rescan is asked for again");
    }

    #[test]
    fn a_failed_folder_rescan_is_retried() {
        let t0 = Instant::now();
        let mut s = Schedule::new(timing());
        s.hint(Hint::Source(2), t0);
        let b = s.next_batch(t0).expect("a source rescan");
        assert_eq!(b, Batch::Sources(vec![2]));
        s.failed(&b, t0);
        assert_eq!(
            s.next_batch(t0 + 2000 * MS),
            Some(Batch::Sources(vec![2])),
            "the sources come back after the back-off"
        );
    }

    #[test]
    fn a_file_on_its_last_read_is_reported_even_beside_a_fresh_one() {
        let t0 = Instant::now();
        let mut s = Schedule::new(timing());
        s.hint(Hint::File(file("half.json")), t0);
        let mut now = t0 + 100 * MS;
        for _ in 0..3 {
            let Some(Batch::Files { files, .. }) = s.next_batch(now) else { panic!("due") };
            s.succeeded(&files, &[file("half.json")], now);
            now += 100 * MS;
        }
        // The last read of the broken file falls due together with a fresh file.
        s.hint(Hint::FileDone(file("fresh.json")), now);
        let first = s.next_batch(now);
        assert_eq!(first, Some(Batch::Files { files: vec![(file("half.json"), 3)], defer_bad_files: false }));
        s.succeeded(first.as_ref().map(Batch::covered).unwrap_or_default(), &[file("half.json")], now);
        let second = s.next_batch(now);
        assert_eq!(second, Some(Batch::Files { files: vec![(file("fresh.json"), 0)], defer_bad_files: true }));
        assert_eq!(s.pending_files(), 0, "the broken file was reported, not dropped or queued forever");
    }

    #[test]
    fn an_unparsable_file_is_read_again_then_reported() {
        let t0 = Instant::now();
        let mut s = Schedule::new(timing());
        s.hint(Hint::File(file("half.json")), t0);
        let mut now = t0 + 100 * MS;
        for attempt in 0..=3u32 {
            let Some(Batch::Files { files, defer_bad_files }) = s.next_batch(now) else { panic!("due at {attempt}") };
            assert_eq!(files[0].1, attempt);
            assert_eq!(defer_bad_files, attempt < 3, "only the last read reports the file");
            s.succeeded(&files, &[file("half.json")], now);
            now += 100 * MS;
        }
        assert_eq!(s.pending_files(), 0, "after the last read it is reported, not queued again");
    }
}
