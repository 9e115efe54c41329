//! The command line, in two steps: what was typed ([`Cli`], parsed by clap)
//! and what it means ([`Settings`]: validated, with the layout and index
//! definitions loaded), so the commands never see a half-checked value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::Fatal;
use crate::indexes::IndexSet;
use crate::layout::Layout;
use crate::reconcile::{Conflict, Engine, OnDelete};
use crate::sink::{SinkOptions, WriteMode};
use crate::source::{stream, ReadLimits, Roots};

pub const DEFAULT_URI: &str = "mongodb://localhost:27017/ml_training_platform";

#[derive(Debug, Parser)]
#[command(name = "docmirror", version, about = "Mirror the ML Training Platform's JSON files into MongoDB")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr: text for people, json for journald and containers
    /// (auto: text on a terminal, json otherwise).
    #[arg(long, global = true, value_enum, default_value = "auto", env = "DOCMIRROR_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log only warnings and errors (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// A TOML file whose keys are these flags' long names; flags and environment win over it.
    #[arg(long, global = true, env = "DOCMIRROR_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

impl LogFormat {
    /// Whether log lines (and the fatal error) are JSON: `auto` means JSON
    /// unless stderr is a terminal.
    pub fn is_json(self) -> bool {
        match self {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mirror every record into MongoDB once, then exit.
    Sync(SyncArgs),
    /// Compare the files with MongoDB and report every difference (writes nothing).
    Verify(VerifyArgs),
    /// Mirror everything once, then follow every change until SIGTERM/SIGINT.
    Watch(WatchArgs),
    /// Show what the mirror last recorded in MongoDB (mirror_state).
    Status(StatusArgs),
    /// Write MongoDB back into the platform's file layout (the way back after a cutover).
    Export(ExportArgs),
    /// End the dual-write window: wait for quiet files and watch, verify, and record the cutover.
    Cutover(CutoverArgs),
    /// After the cutover: keep the platform's file layout in a folder current from MongoDB's change stream.
    Reverse(ReverseArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    Man,
}

/// The built-in source folders, used when none is named.
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_ARTIFACTS_DIR: &str = "./artifacts";

/// Where the files are, where MongoDB is, and how to write.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// The platform's data folder (users.json, datasets/metadata.json) [default: ./data].
    /// A folder named here (or by the environment or the config file) must exist for sync and verify.
    #[arg(long, env = "DOCMIRROR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The platform's artifacts folder (jobs/*.json) [default: ./artifacts].
    /// A folder named here (or by the environment or the config file) must exist for sync and verify.
    #[arg(long, env = "DOCMIRROR_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<PathBuf>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// A layout file describing sources and mappings (default: the platform's, built in).
    #[arg(long, env = "DOCMIRROR_LAYOUT")]
    pub layout: Option<PathBuf>,

    /// A folder of <collection>.json index definitions (default: built in, as in indexes/).
    #[arg(long, env = "DOCMIRROR_INDEXES_DIR")]
    pub indexes_dir: Option<PathBuf>,

    /// How batches are written: bulk-write needs MongoDB 8.0+, commands works on 3.6+.
    #[arg(long, value_enum, default_value = "auto")]
    pub write_mode: WriteMode,

    /// Operations per write batch.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Write batches in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,

    /// Files larger than this are rejected unread.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_file_bytes: u64,

    /// The time zone of times written without an offset (`2025-10-13T12:00:00`, as Python's
    /// `isoformat()` writes), as an IANA name such as `Europe/Berlin`. Default: UTC, or the layout's.
    #[arg(long, env = "DOCMIRROR_NAIVE_TIMEZONE")]
    pub naive_timezone: Option<String>,
}

/// Which database docmirror mirrors into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// MongoDB (the default): one collection per source.
    Mongodb,
    /// PostgreSQL: the migration guide's tables (schema.sql), created if missing.
    Postgres,
}

/// Where MongoDB is and how long to wait for it: all that `status` needs.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// The database to mirror into: mongodb, or postgres (the migration guide's tables; every
    /// command but reverse, and no change streams: a start is a full reconcile).
    #[arg(long, value_enum, default_value = "mongodb", env = "DOCMIRROR_TARGET")]
    pub target: TargetKind,

    /// PostgreSQL connection URL for --target postgres
    /// (postgresql://user:password@host:5432/ml_training_platform, as in the guide's .env).
    /// TLS: ?sslmode=disable|prefer (default)|require|verify-ca|verify-full and
    /// sslrootcert=/path/ca.pem; require checks the certificate and host name (README).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// MongoDB connection string; the database is its path unless --database is given
    /// [default: mongodb://localhost:27017/ml_training_platform].
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,

    /// Read the connection string from a file (keeps the password out of the
    /// environment). systemd's LoadCredential=mongodb-uri:... is read without this flag.
    #[arg(long, env = "DOCMIRROR_MONGODB_URI_FILE", conflicts_with = "mongodb_uri")]
    pub mongodb_uri_file: Option<PathBuf>,

    /// Database name (overrides the URI's path).
    #[arg(long, env = "DOCMIRROR_DATABASE")]
    pub database: Option<String>,

    /// Seconds to keep retrying an unreachable MongoDB before giving up (sync, verify,
    /// status; watch never gives up).
    #[arg(long, default_value_t = 30)]
    pub mongodb_timeout: u64,

    /// Longest wait for one MongoDB operation before it is retried (a frozen server).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub operation_timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Read, map and compare; print what would be written; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// PostgreSQL: load empty tables in batches, not in one transaction that locks them (README).
    #[arg(long)]
    pub no_exclusive_load: bool,

    #[command(flatten)]
    pub write: WriteArgs,
}

/// How changes are applied (sync and watch).
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// What to do with a document whose record is gone from the files.
    #[arg(long, value_enum, default_value = "archive")]
    pub on_delete: OnDelete,

    /// newer-wins: never replace a document whose version time (updatedAt /
    /// updated_at) is newer than the file's; file-wins: the file always wins.
    #[arg(long, value_enum, default_value = "newer-wins")]
    pub conflict: Conflict,

    /// Apply deletes even when they would remove more than --mass-delete-fraction of a collection.
    #[arg(long)]
    pub allow_mass_delete: bool,

    /// Mirror the files into MongoDB even though the migration was cut over
    /// (`docmirror cutover`): after a cutover MongoDB is the truth.
    #[arg(long)]
    pub after_cutover: bool,

    /// Fraction of a collection that may be deleted within --mass-delete-window-secs before
    /// further deletes are held back.
    #[arg(long, default_value_t = 0.5)]
    pub mass_delete_fraction: f64,

    /// The time over which watch adds deletes up for the mass-delete guard (sync: one run).
    #[arg(long, default_value_t = 60)]
    pub mass_delete_window_secs: u64,

    /// Reconcile everything at start, whatever the checkpoint proves (a
    /// start otherwise checks only what changed since the last checkpoint,
    /// where the server has change streams). On PostgreSQL: map every
    /// record, even one found with the text its row was written from.
    #[arg(long)]
    pub full: bool,

    /// A start reconciles in full when more documents than this changed in
    /// MongoDB since the checkpoint (checking them one by one would cost more).
    #[arg(long, default_value_t = 50_000)]
    pub checkpoint_max_changes: u64,

    /// Records mapped, compared and written together while a whole source is
    /// scanned: bounds memory (a few KB per record), not the write batch size
    /// [default: 1000 for MongoDB, 5000 for PostgreSQL]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub chunk_records: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub write: WriteArgs,

    /// Quiet period per file before it is read: a burst of writes becomes one read.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,

    /// Poll the folders every N ms instead of using file events (NFS, CIFS, some container mounts).
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_interval_ms: Option<u64>,

    /// Full rescan period, the safety net for anything events missed (0: never).
    #[arg(long, default_value_t = 600)]
    pub rescan_interval_secs: u64,

    /// On SIGTERM, how long to wait for writes in flight before stopping them.
    #[arg(long, default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Change hints that may queue up before the daemon falls back to a full
    /// rescan (a test knob: small values force the overflow path).
    #[arg(long, default_value_t = crate::watch::events::CHANNEL_CAPACITY, hide = true)]
    pub event_queue_capacity: usize,

    /// Serve Prometheus /metrics, /healthz and /readyz on this address (off unless given).
    #[arg(long, env = "DOCMIRROR_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// How long a document written by someone else may differ from its file
    /// record (and not be newer) before it is reported as drift.
    #[arg(long, default_value_t = 30)]
    pub drift_grace_secs: u64,
}

impl WatchArgs {
    pub fn options(&self) -> crate::watch::WatchOptions {
        let debounce = Duration::from_millis(self.debounce_ms);
        crate::watch::WatchOptions {
            debounce,
            max_delay: (debounce * 10).max(Duration::from_secs(1)),
            poll_interval: self.poll_interval_ms.map(Duration::from_millis),
            rescan_interval: match self.rescan_interval_secs {
                0 => Duration::from_secs(100 * 365 * 24 * 3600),
                s => Duration::from_secs(s),
            },
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            parse_retries: 3,
            queue_capacity: self.event_queue_capacity,
            after_cutover: self.write.after_cutover,
            full: self.write.full,
            drift_grace: Duration::from_secs(self.drift_grace_secs),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The files must not have changed for this many seconds (the app stopped writing them).
    #[arg(long, default_value_t = 30)]
    pub quiet_secs: u64,

    /// How long to wait for quiet files and for watch to apply the last change before giving up.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,

    /// Output format of the verify report.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// A layout file describing sources and mappings (default: the platform's, built in).
    #[arg(long, env = "DOCMIRROR_LAYOUT")]
    pub layout: Option<PathBuf>,

    /// Where to write the platform's folders: DIR/data/users.json, DIR/artifacts/jobs/..., and so on
    /// (required; it may come from the config file's [export] table).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Update a folder that is not empty; only files whose content changes are replaced.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ReverseArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// A layout file describing sources and mappings (default: the platform's, built in).
    #[arg(long, env = "DOCMIRROR_LAYOUT")]
    pub layout: Option<PathBuf>,

    /// The folder to keep current: DIR/data/users.json, DIR/artifacts/jobs/..., and so on
    /// (required; it may come from the config file's [reverse] table). Never a folder watch reads.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// The forward mirror's data folder, which reverse refuses to write into [default: ./data].
    #[arg(long, env = "DOCMIRROR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The forward mirror's artifacts folder, which reverse refuses to write into [default: ./artifacts].
    #[arg(long, env = "DOCMIRROR_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<PathBuf>,

    /// Changes are written at most this often, and at the latest this long after they happen.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub debounce_ms: u64,

    /// Without change streams (a standalone server): compare everything every N ms instead.
    #[arg(long, env = "DOCMIRROR_REVERSE_POLL_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_interval_ms: Option<u64>,

    /// Run although no cutover is recorded: a rehearsal, into a folder of its own.
    #[arg(long)]
    pub before_cutover: bool,

    /// Compare every file with MongoDB at start even when the stored resume token resumes.
    #[arg(long)]
    pub full: bool,

    /// On SIGTERM, how long to wait for the last flush.
    #[arg(long, default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

impl ReverseArgs {
    /// The folders a forward mirror reads (named, or the defaults).
    pub fn forward_roots(&self) -> Vec<PathBuf> {
        vec![
            self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            self.artifacts_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ARTIFACTS_DIR)),
        ]
    }
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Validated settings shared by every command.
pub struct Settings {
    pub engine: Engine,
    pub sink: SinkOptions,
}

impl CommonArgs {
    /// The data folder, named or the default.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The artifacts folder, named or the default.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.artifacts_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ARTIFACTS_DIR))
    }

    /// Load the layout and indexes and check the folders.
    pub fn settings(&self, retry_forever: bool) -> Result<Settings, Fatal> {
        let mut layout = match &self.layout {
            Some(p) => Layout::from_file(p).map_err(|e| Fatal::Config(e.to_string()))?,
            None => Layout::builtin(),
        };
        if let Some(zone) = &self.naive_timezone {
            layout = layout.with_naive_timezone(zone).map_err(|e| Fatal::Config(format!("--naive-timezone: {e}")))?;
        }
        let indexes = match &self.indexes_dir {
            Some(d) => IndexSet::from_dir(d)?,
            None => IndexSet::builtin(),
        };
        let roots = Roots { data: self.data_dir(), artifacts: self.artifacts_dir() };
        let mut engine = Engine::new(layout, roots, indexes);
        engine.limits = ReadLimits { max_file_bytes: self.max_file_bytes, stream_from: stream::stream_from_env() };
        let mut sink = self.connection.sink_options(retry_forever, engine.metrics.clone())?;
        sink.write_mode = self.write_mode;
        sink.batch_size = usize::try_from(self.batch_size).unwrap_or(1000);
        sink.concurrency = usize::try_from(self.concurrency).unwrap_or(4);
        Ok(Settings { engine, sink })
    }

    /// For the one-shot commands (sync, verify): a folder that was named (by a
    /// flag, the environment or the config file) must exist, because a typo
    /// would otherwise read as an empty platform. A default folder that is
    /// missing is read as empty, but not both: two missing folders mean a
    /// wrong working directory, not an empty platform.
    pub fn check_roots(&self) -> Result<(), Fatal> {
        let folders = [
            ("--data-dir", "DOCMIRROR_DATA_DIR", "data-dir", self.data_dir.as_ref(), self.data_dir()),
            (
                "--artifacts-dir",
                "DOCMIRROR_ARTIFACTS_DIR",
                "artifacts-dir",
                self.artifacts_dir.as_ref(),
                self.artifacts_dir(),
            ),
        ];
        for (flag, env, key, named, path) in &folders {
            if named.is_some() && !path.is_dir() {
                let what = if path.exists() { "is not a folder" } else { "does not exist" };
                return Err(Fatal::Source(format!(
                    "{flag} {} {what}: check {flag} (or {env}, or {key} in the config file)",
                    path.display()
                )));
            }
        }
        let missing: Vec<_> = folders.iter().filter(|f| !f.4.is_dir()).collect();
        if missing.len() == 2 {
            return Err(Fatal::Source(format!(
                "neither {} nor {} is a folder; set --data-dir/--artifacts-dir (or DOCMIRROR_DATA_DIR/DOCMIRROR_ARTIFACTS_DIR)",
                folders[0].4.display(),
                folders[1].4.display()
            )));
        }
        for (flag, _, _, _, p) in missing {
            tracing::warn!(folder = %p.display(), "{flag} folder does not exist; reading it as empty");
        }
        Ok(())
    }
}

impl ConnectionArgs {
    /// How to reach MongoDB; the write settings are the defaults (the
    /// commands that write set their own).
    pub fn sink_options(
        &self,
        retry_forever: bool,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<SinkOptions, Fatal> {
        Ok(SinkOptions {
            uri: self.resolve_uri()?,
            database: self.database.clone(),
            write_mode: WriteMode::Auto,
            batch_size: 1000,
            concurrency: 4,
            retry_budget: (!retry_forever).then(|| Duration::from_secs(self.mongodb_timeout)),
            op_timeout: Duration::from_secs(self.operation_timeout_secs),
            metrics,
        })
    }

    /// Where PostgreSQL is, for `--target postgres`.
    pub fn pg_options(
        &self,
        retry_forever: bool,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<crate::postgres::PgOptions, Fatal> {
        let url = self.postgres_url.clone().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
            Fatal::Config(
                "--target postgres needs --postgres-url URL (or DATABASE_URL), e.g. \
                 postgresql://ml_admin:PASSWORD@localhost:5432/ml_training_platform"
                    .into(),
            )
        })?;
        Ok(crate::postgres::PgOptions {
            url,
            retry_budget: (!retry_forever).then(|| Duration::from_secs(self.mongodb_timeout)),
            metrics,
        })
    }

    /// The URI from, in order: --mongodb-uri / MONGODB_URI, --mongodb-uri-file,
    /// the systemd credential `mongodb-uri`, the guide's default.
    fn resolve_uri(&self) -> Result<String, Fatal> {
        if let Some(uri) = &self.mongodb_uri {
            return Ok(uri.clone());
        }
        let file = self.mongodb_uri_file.clone().or_else(|| {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
            let p = PathBuf::from(dir).join("mongodb-uri");
            p.is_file().then_some(p)
        });
        match file {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| Fatal::Config(format!("cannot read the MongoDB URI from {}: {e}", p.display())))?;
                let uri = text.trim().to_string();
                if uri.is_empty() {
                    return Err(Fatal::Config(format!("{} is empty; it should hold a mongodb:// URI", p.display())));
                }
                Ok(uri)
            }
            None => Ok(DEFAULT_URI.to_string()),
        }
    }
}

impl WriteArgs {
    pub fn apply(&self, engine: &mut Engine, target: TargetKind) -> Result<(), Fatal> {
        if !(self.mass_delete_fraction > 0.0 && self.mass_delete_fraction <= 1.0) {
            return Err(Fatal::Config("--mass-delete-fraction must be above 0 and at most 1".into()));
        }
        engine.on_delete = self.on_delete;
        engine.conflict = self.conflict;
        engine.allow_mass_delete = self.allow_mass_delete;
        engine.mass_delete_fraction = self.mass_delete_fraction;
        engine.mass_delete_window = std::time::Duration::from_secs(self.mass_delete_window_secs);
        // PostgreSQL loads a chunk as one COPY per lane and table: 5,000 records
        // took an initial sync of the 130k tree from 4.2 s to 3.3 s (three runs
        // each, side by side; 10,000 and 20,000 were no faster). MongoDB's writes
        // go in batches of --batch-size anyway: no difference there, and watch's
        // memory stays as it was.
        let default = match target {
            TargetKind::Mongodb => crate::reconcile::CHUNK,
            TargetKind::Postgres => crate::postgres::CHUNK,
        };
        engine.chunk = self.chunk_records.and_then(|n| usize::try_from(n).ok()).unwrap_or(default);
        engine.checkpoint_max_changes = usize::try_from(self.checkpoint_max_changes).unwrap_or(usize::MAX);
        Ok(())
    }
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
