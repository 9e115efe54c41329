//! Fatal errors and the exit codes they map to. Per-record problems are not
//! errors here: they are [`crate::mapping::Reject`]s, counted and stored.

/// Exit codes, documented in the README. Stable: scripts rely on them.
pub mod exit {
    /// Success: every record mirrored (sync), or MongoDB matches the files (verify).
    pub const OK: u8 = 0;
    /// `verify` found differences.
    pub const DIFFERENCES: u8 = 1;
    /// Bad command line or configuration (layout, index files, URI).
    pub const USAGE: u8 = 2;
    /// `sync` finished, but some records or files were rejected (see `mirror_rejects`).
    pub const REJECTED: u8 = 3;
    /// The database (MongoDB, or PostgreSQL with `--target postgres`) could not be reached in time,
    /// refused the credentials, or a write failed.
    pub const MONGODB: u8 = 4;
    /// An index could not be built (for example two documents already share an email).
    pub const INDEX: u8 = 5;
    /// A source folder could not be read (or, for `export` and `reverse`, the output folder written).
    pub const SOURCE: u8 = 6;
    /// The MongoDB server lacks what the command needs: `reverse` without
    /// change streams (a standalone server) and without `--poll-interval-ms`.
    pub const UNSUPPORTED: u8 = 7;
    /// A task inside docmirror failed (a bug: please report it with the log).
    pub const INTERNAL: u8 = 70;
    /// Stopped by SIGINT/SIGTERM before finishing (sync, verify).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("configuration: {0}")]
    Config(String),
    #[error("source: {0}")]
    Source(String),
    #[error("MongoDB: {0}")]
    Mongo(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// MongoDB could not be reached or refused to log in: one line a person
    /// can act on, and what the driver said (shown at `-v`).
    #[error("{message}")]
    Connect { message: String, detail: String },
    #[error("index: {0}")]
    Index(String),
    /// The server cannot do what the command needs (change streams for `reverse`).
    #[error("{0}")]
    Unsupported(String),
    #[error("interrupted before finishing")]
    Interrupted,
    /// A task of docmirror's own failed (it panicked): a bug, not the input's fault.
    #[error("internal error (a bug; please report it with the log): {0}")]
    Internal(String),
}

impl Fatal {
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Config(_) => exit::USAGE,
            Fatal::Source(_) => exit::SOURCE,
            Fatal::Mongo(_) | Fatal::Postgres(_) | Fatal::Connect { .. } => exit::MONGODB,
            Fatal::Index(_) => exit::INDEX,
            Fatal::Unsupported(_) => exit::UNSUPPORTED,
            Fatal::Interrupted => exit::INTERRUPTED,
            Fatal::Internal(_) => exit::INTERNAL,
        }
    }

    /// A blocking task that did not finish: cancelled at shutdown, or a bug.
    pub fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Fatal {
        move |e| if e.is_cancelled() { Fatal::Interrupted } else { Fatal::Internal(format!("{what} task failed: {e}")) }
    }

    /// The underlying error's own words, when they are worth showing at `-v`.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Fatal::Connect { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_task_is_an_internal_error_not_a_source_error() {
        let failed = tokio::spawn(async { panic!("a bug") }).await.expect_err("the task panicked");
        let fatal = Fatal::task("scan")(failed);
        assert_eq!(fatal.exit_code(), exit::INTERNAL);
        assert!(fatal.to_string().contains("scan task failed"), "{fatal}");
    }
}
