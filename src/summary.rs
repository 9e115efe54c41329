//! The counters of a reconcile ([`Summary`]): what the `sync` line prints,
//! what metrics export and what `mirror_state` records. Shared by the core,
//! the sink and metrics, so it depends on none of them.

use serde::Serialize;

use crate::source::SourceFile;

/// Counters for one reconcile; the `sync` summary line prints them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub skipped_newer: u64,
    pub rejected: u64,
    pub bad_files: u64,
    pub deleted: u64,
    pub archived: u64,
    pub deletes_held: u64,
    /// Files that could not be read or parsed (watch retries them).
    #[serde(skip)]
    pub bad_paths: Vec<SourceFile>,
    /// Collections in which something was written.
    #[serde(skip)]
    pub changed_collections: Vec<String>,
}

impl Summary {
    pub fn add(&mut self, o: &Summary) {
        self.files += o.files;
        self.read += o.read;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.skipped_newer += o.skipped_newer;
        self.rejected += o.rejected;
        self.bad_files += o.bad_files;
        self.deleted += o.deleted;
        self.archived += o.archived;
        self.deletes_held += o.deletes_held;
        self.bad_paths.extend(o.bad_paths.iter().cloned());
        for c in &o.changed_collections {
            if !self.changed_collections.contains(c) {
                self.changed_collections.push(c.clone());
            }
        }
    }

    pub fn changed(&self) -> bool {
        self.inserted + self.updated + self.deleted + self.archived > 0
    }
}

/// A count as u64 (lossless on every platform Rust supports).
pub fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
