//! The commands, as library functions: `main` only parses arguments, sets up
//! logging and signals, and calls [`run`]. Tests call the binary.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::cli::{
    Cli, Command, CutoverArgs, ExportArgs, OutputFormat, ReverseArgs, StatusArgs, SyncArgs, TargetKind, VerifyArgs,
    WatchArgs,
};
use crate::error::{exit, Fatal};
use crate::postgres::Pg;
use crate::reconcile::target::Target;
use crate::reconcile::{reconcile, Core, RunOptions, Scope};
use crate::sink::Sink;
use crate::state::StateStore;
use crate::summary::Summary;
use crate::verify::{render_text, verify};

/// Run a parsed command until it finishes or `cancel` fires; returns the exit code.
pub async fn run(cli: Cli, cancel: CancellationToken) -> u8 {
    let show_progress = !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = cli.log_format.is_json();
    let result = match cli.command {
        Command::Sync(args) => sync(args, show_progress, cancel).await,
        Command::Verify(args) => verify_cmd(args, cancel).await,
        Command::Watch(args) => watch_cmd(args, cancel).await,
        Command::Status(args) => status_cmd(args, cancel).await,
        Command::Export(args) => export_cmd(args, cancel).await,
        Command::Cutover(args) => cutover_cmd(args, cancel).await,
        Command::Reverse(args) => reverse_cmd(args, cancel).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "docmirror", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map(|()| exit::OK).or_else(|e| match e
                .kind()
            {
                std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
                _ => Err(Fatal::Source(format!("cannot write the man page: {e}"))),
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(fatal) => {
            report(&fatal, json);
            fatal.exit_code()
        }
    }
}

/// Print a fatal error once: as a `docmirror: ...` line for people, or as
/// one JSON log line when the logs are JSON. What the driver said, if
/// anything, follows at debug level (`-v`).
fn report(fatal: &Fatal, json: bool) {
    if json {
        tracing::error!(exit_code = fatal.exit_code(), "{fatal}");
    } else {
        eprintln!("docmirror: {fatal}");
    }
    if let Some(detail) = fatal.detail() {
        tracing::debug!("Caused by: {detail}");
    }
}

async fn sync(args: SyncArgs, show_progress: bool, cancel: CancellationToken) -> Result<u8, Fatal> {
    let started = Instant::now();
    let mut settings = args.common.settings(false)?;
    args.write.apply(&mut settings.engine, args.common.connection.target)?;
    settings.engine.exclusive_load = !args.no_exclusive_load;
    args.common.check_roots()?;
    let engine = Arc::new(settings.engine);
    let opts = RunOptions {
        dry_run: args.dry_run,
        log_all_rejects: true,
        defer_bad_files: false,
        log_changes: false,
        texts: false,
    };
    let summary = match args.common.connection.target {
        TargetKind::Mongodb => {
            let sink = Sink::connect(settings.sink, cancel.clone()).await?;
            let summary = sync_into(&engine, &sink, &args, opts, show_progress, &cancel).await?;
            let read: Vec<String> = engine.metrics.documents_read().iter().map(|(c, n)| format!("{c}={n}")).collect();
            tracing::info!(documents_read = %read.join(" "), "Documents read from MongoDB");
            summary
        }
        TargetKind::Postgres => {
            let pg = connect_pg(&args.common.connection, &engine, &cancel).await?;
            if args.dry_run {
                pg.check_schema().await?;
            }
            sync_into(&engine, &pg, &args, opts, show_progress, &cancel).await?
        }
    };
    let target = match args.common.connection.target {
        TargetKind::Mongodb => "MongoDB",
        TargetKind::Postgres => "PostgreSQL",
    };
    println!("{}", summary_line(&summary, args.dry_run, started, target));
    Ok(if summary.rejected > 0 { exit::REJECTED } else { exit::OK })
}

/// sync's work on any target: the cutover guard and the target made ready
/// (unless a dry run), one full reconcile, the run recorded in `mirror_state`.
async fn sync_into<T: crate::watch::Mirror>(
    engine: &Arc<crate::reconcile::Engine>,
    target: &T,
    args: &SyncArgs,
    opts: RunOptions,
    show_progress: bool,
    cancel: &CancellationToken,
) -> Result<Summary, Fatal> {
    let started = Instant::now();
    if !args.dry_run {
        crate::cutover::refuse_after_cutover(target, args.write.after_cutover).await?;
        target.prepare(engine).await?;
    }
    // From the checkpoint where the target proves enough (MongoDB), else in full.
    let progress = show_progress.then(|| crate::progress::Bar::start(engine.metrics.clone()));
    let first = target.start(engine, None, args.write.full || args.dry_run, opts, cancel).await;
    drop(progress);
    let mut summary = first?;
    // Rows whose referring rows (a user's jobs) went later in the same run:
    // another pass deletes them, one level of references per pass.
    let mut removed = summary.archived + summary.deleted;
    for _ in 0..2 {
        if args.dry_run || removed == 0 || target.take_blocked_deletes() == 0 {
            break;
        }
        tracing::info!("Deleting again the rows that were still referred to by rows deleted since");
        let again = reconcile_all(engine, target, opts, false, cancel).await?;
        removed = again.archived + again.deleted;
        summary.archived += again.archived;
        summary.deleted += again.deleted;
    }
    if !args.dry_run {
        if let Err(e) = crate::state::record_full(engine, target, None, "sync", &summary, started.elapsed()).await {
            tracing::warn!(error = %e, "Cannot record the run in mirror_state");
        }
    }
    Ok(summary)
}

/// One full reconcile into any target, with the progress bar on a terminal.
async fn reconcile_all<T: Target>(
    engine: &Arc<crate::reconcile::Engine>,
    target: &T,
    opts: RunOptions,
    show_progress: bool,
    cancel: &CancellationToken,
) -> Result<Summary, Fatal> {
    let progress = show_progress.then(|| crate::progress::Bar::start(engine.metrics.clone()));
    let core = Core { engine, target, memory: None };
    let summary = reconcile(core, Scope::Full, opts, cancel).await;
    drop(progress);
    summary
}

async fn connect_pg(
    connection: &crate::cli::ConnectionArgs,
    engine: &crate::reconcile::Engine,
    cancel: &CancellationToken,
) -> Result<Pg, Fatal> {
    Pg::connect(connection.pg_options(false, engine.metrics.clone())?, cancel.clone()).await
}

/// The one line `sync` ends with.
pub fn summary_line(s: &Summary, dry_run: bool, started: Instant, target: &str) -> String {
    let (head, verb) = if dry_run { ("sync (dry run)", "would be ") } else { ("sync", "") };
    format!(
        "{head}: {} records read from {} files; {verb}inserted {}, {verb}updated {}, unchanged {}, \
         skipped (newer in {target}) {}, rejected {} (bad files {}), {verb}archived {}, {verb}deleted {}, \
         deletes held back {}; {:.2}s",
        s.read,
        s.files,
        s.inserted,
        s.updated,
        s.unchanged,
        s.skipped_newer,
        s.rejected,
        s.bad_files,
        s.archived,
        s.deleted,
        s.deletes_held,
        started.elapsed().as_secs_f64()
    )
}

async fn verify_cmd(args: VerifyArgs, cancel: CancellationToken) -> Result<u8, Fatal> {
    let settings = args.common.settings(false)?;
    args.common.check_roots()?;
    let engine = Arc::new(settings.engine);
    let report = match args.common.connection.target {
        TargetKind::Mongodb => {
            let sink = Sink::connect(settings.sink, cancel.clone()).await?;
            verify_and_record(&engine, &sink, &cancel).await?
        }
        TargetKind::Postgres => {
            let pg = connect_pg(&args.common.connection, &engine, &cancel).await?;
            verify_and_record(&engine, &pg, &cancel).await?
        }
    };
    match args.format {
        OutputFormat::Text => print!("{}", render_text(&report)),
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(&report).map_err(|e| Fatal::Source(e.to_string()))?;
            println!("{text}");
        }
    }
    Ok(if report.in_sync { exit::OK } else { exit::DIFFERENCES })
}

async fn watch_cmd(args: WatchArgs, cancel: CancellationToken) -> Result<u8, Fatal> {
    let mut common = args.common.clone();
    // Events carry absolute paths; so must the roots they are matched against.
    common.data_dir = Some(std::path::absolute(common.data_dir()).map_err(|e| Fatal::Source(e.to_string()))?);
    common.artifacts_dir = Some(std::path::absolute(common.artifacts_dir()).map_err(|e| Fatal::Source(e.to_string()))?);
    let mut settings = common.settings(true)?;
    args.write.apply(&mut settings.engine, common.connection.target)?;
    let engine = Arc::new(settings.engine);
    if let Some(addr) = args.metrics_addr {
        // /progress reads mirror_state in MongoDB (on PostgreSQL, `status` shows the same).
        let progress = matches!(common.connection.target, TargetKind::Mongodb)
            .then(|| progress_fn(settings.sink.clone(), cancel.clone()));
        crate::http::start(addr, engine.metrics.clone(), progress, cancel.clone()).await?;
    }
    let mut lifecycle = crate::watch::systemd::Systemd::new(2);
    let ran = match common.connection.target {
        TargetKind::Mongodb => {
            let connect = |stop| Sink::connect(settings.sink, stop);
            crate::watch::run(engine, connect, args.options(), cancel, &mut lifecycle).await
        }
        TargetKind::Postgres => {
            let pg_opts = common.connection.pg_options(true, engine.metrics.clone())?;
            let connect = |stop| Pg::connect(pg_opts, stop);
            crate::watch::run(engine, connect, args.options(), cancel, &mut lifecycle).await
        }
    };
    match ran {
        Ok(_) | Err(Fatal::Interrupted) => Ok(exit::OK),
        Err(e) => Err(e),
    }
}

/// Verify, then record the outcome (the only write verify makes, for
/// `status` and `/progress`).
async fn verify_and_record<T: StateStore>(
    engine: &Arc<crate::reconcile::Engine>,
    target: &T,
    cancel: &CancellationToken,
) -> Result<crate::verify::Report, Fatal> {
    let report = tokio::select! {
        r = verify(engine, target) => r?,
        () = cancel.cancelled() => return Err(Fatal::Interrupted),
    };
    if let Err(e) = crate::state::record_verify(target, &report, &crate::cutover::digest(&report)).await {
        tracing::warn!(error = %e, "Cannot record the verify in mirror_state");
    }
    Ok(report)
}

/// `GET /progress`: the readiness `status --format json` shows, from a
/// connection of its own (made at the first request, kept after).
fn progress_fn(mut opts: crate::sink::SinkOptions, cancel: CancellationToken) -> crate::http::ProgressFn {
    opts.retry_budget = Some(std::time::Duration::from_secs(5));
    let cell = Arc::new(tokio::sync::OnceCell::<Sink>::new());
    Arc::new(move || {
        let (cell, opts, cancel) = (cell.clone(), opts.clone(), cancel.clone());
        Box::pin(async move {
            let sink = cell.get_or_try_init(|| Sink::connect(opts, cancel)).await.map_err(|e| e.to_string())?;
            let v = crate::state::progress(sink).await.map_err(|e| e.to_string())?;
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
        })
    })
}

async fn status_cmd(args: StatusArgs, cancel: CancellationToken) -> Result<u8, Fatal> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    match args.connection.target {
        TargetKind::Mongodb => {
            let sink = Sink::connect(args.connection.sink_options(false, metrics)?, cancel).await?;
            status_of(&sink, args.format).await
        }
        TargetKind::Postgres => {
            let pg = Pg::connect(args.connection.pg_options(false, metrics)?, cancel).await?;
            status_of(&pg, args.format).await
        }
    }
}

async fn status_of<T: StateStore>(target: &T, format: OutputFormat) -> Result<u8, Fatal> {
    let database = target.place();
    let Some(mut state) = crate::state::read(target).await? else {
        eprintln!("docmirror: no mirror_state in database {database}: docmirror has not run against it yet");
        return Ok(exit::DIFFERENCES);
    };
    crate::state::add_live(target, &mut state).await?;
    match format {
        OutputFormat::Text => print!("{}", crate::state::render_text(&state, &database)),
        OutputFormat::Json => {
            let v = bson::Bson::Document(state).into_relaxed_extjson();
            let text = serde_json::to_string_pretty(&v).map_err(|e| Fatal::Source(e.to_string()))?;
            println!("{text}");
        }
    }
    Ok(exit::OK)
}

async fn export_cmd(args: ExportArgs, cancel: CancellationToken) -> Result<u8, Fatal> {
    let started = Instant::now();
    let out =
        args.out.clone().ok_or_else(|| Fatal::Config("export needs --out DIR: where to write the files".into()))?;
    let layout = match &args.layout {
        Some(p) => crate::layout::Layout::from_file(p).map_err(|e| Fatal::Config(e.to_string()))?,
        None => crate::layout::Layout::builtin(),
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let done = match args.connection.target {
        TargetKind::Mongodb => {
            let sink = Sink::connect(args.connection.sink_options(false, metrics)?, cancel.clone()).await?;
            tokio::select! {
                r = crate::export::export(&layout, &sink, &out, args.overwrite) => r?,
                () = cancel.cancelled() => return Err(Fatal::Interrupted),
            }
        }
        TargetKind::Postgres => {
            let pg = Pg::connect(args.connection.pg_options(false, metrics)?, cancel.clone()).await?;
            tokio::select! {
                r = crate::export::export(&layout, &pg, &out, args.overwrite) => r?,
                () = cancel.cancelled() => return Err(Fatal::Interrupted),
            }
        }
    };
    println!(
        "export: {} records into {} files in {} (written {}, unchanged {}); {:.2}s",
        done.records,
        done.files,
        out.display(),
        done.written,
        done.unchanged,
        started.elapsed().as_secs_f64()
    );
    Ok(exit::OK)
}

async fn cutover_cmd(args: CutoverArgs, cancel: CancellationToken) -> Result<u8, Fatal> {
    let settings = args.common.settings(false)?;
    args.common.check_roots()?;
    let engine = Arc::new(settings.engine);
    match args.common.connection.target {
        TargetKind::Mongodb => {
            let sink = Sink::connect(settings.sink, cancel.clone()).await?;
            cutover_on(&engine, &sink, &args, &cancel).await
        }
        TargetKind::Postgres => {
            let pg = connect_pg(&args.common.connection, &engine, &cancel).await?;
            cutover_on(&engine, &pg, &args, &cancel).await
        }
    }
}

async fn cutover_on<T: StateStore>(
    engine: &Arc<crate::reconcile::Engine>,
    target: &T,
    args: &CutoverArgs,
    cancel: &CancellationToken,
) -> Result<u8, Fatal> {
    let opts = crate::cutover::Options {
        quiet: std::time::Duration::from_secs(args.quiet_secs),
        wait: std::time::Duration::from_secs(args.wait_secs),
    };
    let print = |report: &crate::verify::Report| -> Result<(), Fatal> {
        match args.format {
            OutputFormat::Text => print!("{}", render_text(report)),
            OutputFormat::Json => {
                let text = serde_json::to_string_pretty(report).map_err(|e| Fatal::Internal(e.to_string()))?;
                println!("{text}");
            }
        }
        Ok(())
    };
    match crate::cutover::cutover(engine, target, opts, cancel).await? {
        Ok((report, at)) => {
            print(&report)?;
            println!(
                "cutover: recorded at {} (verify digest {}); {} is the truth from now on: sync and watch refuse \
                 to run without --after-cutover, and `docmirror export` writes the files back",
                at.try_to_rfc3339_string().unwrap_or_default(),
                crate::cutover::digest(&report),
                target.name()
            );
            Ok(exit::OK)
        }
        Err(not_ready) => {
            if let crate::cutover::NotReady::Differences(report) = &not_ready {
                print(report)?;
            }
            println!("cutover: not ready: {not_ready}");
            Ok(exit::DIFFERENCES)
        }
    }
}

async fn reverse_cmd(args: ReverseArgs, cancel: CancellationToken) -> Result<u8, Fatal> {
    let out =
        args.out.clone().ok_or_else(|| Fatal::Config("reverse needs --out DIR: the folder to keep current".into()))?;
    let layout = match &args.layout {
        Some(p) => crate::layout::Layout::from_file(p).map_err(|e| Fatal::Config(e.to_string()))?,
        None => crate::layout::Layout::builtin(),
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    // A daemon: it waits for MongoDB however long it is away.
    let sink = args.connection.sink_options(true, metrics)?;
    let opts = crate::reverse::Options {
        out,
        debounce: std::time::Duration::from_millis(args.debounce_ms),
        poll_interval: args.poll_interval_ms.map(std::time::Duration::from_millis),
        before_cutover: args.before_cutover,
        full: args.full,
        forward_roots: args.forward_roots(),
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_secs),
    };
    match crate::reverse::run(layout, sink, opts, cancel).await {
        Ok(()) | Err(Fatal::Interrupted) => Ok(exit::OK),
        Err(e) => Err(e),
    }
}
