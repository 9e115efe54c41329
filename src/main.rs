//! The `docmirror` binary: parse arguments, set up logging and signals, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use docmirror::cli::Cli;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match docmirror::config::parse_cli(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("docmirror: cannot start the async runtime: {e}");
            return ExitCode::from(docmirror::error::exit::USAGE);
        }
    };
    let code = runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(cancel_on_signals(cancel.clone()));
        docmirror::app::run(cli, cancel).await
    });
    ExitCode::from(code)
}

/// SIGINT and SIGTERM cancel the token; the commands wind down from there.
async fn cancel_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("Cannot install signal handlers; SIGTERM will stop the process abruptly");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "Stopping"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "Stopping"),
    }
    cancel.cancel();
}

fn init_logging(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "info,docmirror=debug",
        (false, _) => "debug,docmirror=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // The PostgreSQL driver logs each statement with its parameters at debug
    // level: password hashes, whatever RUST_LOG says. Its warnings stay.
    let filter = match "tokio_postgres=info".parse() {
        Ok(quiet_driver) => filter.add_directive(quiet_driver),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format.is_json() {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        // Colour only on a terminal, and never under NO_COLOR (https://no-color.org).
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        builder.with_target(false).with_ansi(colour).init();
    }
}
