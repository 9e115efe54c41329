//! What a new user meets in the first hour (issue 13): a mistyped folder,
//! MongoDB not running, a bad URI, flags on either side of the command name,
//! colour in pipes, and a watch stopped before it ever connected.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// The binary with no environment of the test harness: no RUST_LOG, no NO_COLOR.
fn bare() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"));
    for var in
        ["RUST_LOG", "NO_COLOR", "MONGODB_URI", "DOCMIRROR_DATA_DIR", "DOCMIRROR_ARTIFACTS_DIR", "DOCMIRROR_CONFIG"]
    {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

async fn output(cmd: &mut tokio::process::Command) -> Run {
    run_command(cmd, Duration::from_secs(120)).await
}

/// The `docmirror: ...` lines of a run: a fatal error is printed exactly once.
fn fatal_lines(run: &Run) -> Vec<&str> {
    run.stderr.lines().filter(|l| l.starts_with("docmirror: ")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_source_folder_that_does_not_exist_is_fatal_for_sync_and_verify() {
    let db = TestDb::new("named_folder").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let typo = p.path("dat");
    let typo_s = typo.to_str().unwrap();

    // By flag: sync exits 6, naming the folder and the flag, and writes nothing.
    let run = docmirror(&db, &p, &["sync", "--data-dir", typo_s]).await;
    assert_eq!(run.code, 6, "{run:?}");
    let lines = fatal_lines(&run);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(lines[0].contains(typo_s) && lines[0].contains("--data-dir"), "{}", lines[0]);
    assert_eq!(db.count("users").await, 0);

    // By environment variable: verify too.
    let run = docmirror_env(&db, &p, &["verify"], &[("DOCMIRROR_ARTIFACTS_DIR", typo_s)]).await;
    assert_eq!(run.code, 6, "{run:?}");
    assert!(fatal_lines(&run)[0].contains("--artifacts-dir") && run.stderr.contains(typo_s), "{}", run.stderr);

    // By the config file.
    let cfg = p.dir.path().join("docmirror.toml");
    std::fs::write(&cfg, format!("data-dir = {typo_s:?}\n")).unwrap();
    p.settle();
    let run =
        bare().args(["--config", cfg.to_str().unwrap(), "sync", "--mongodb-uri", &db.uri()]).output().await.unwrap();
    assert_eq!(run.status.code(), Some(6), "{}", String::from_utf8_lossy(&run.stderr));

    // A default folder that is missing is still read as empty (with a warning).
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("data")).unwrap();
    std::fs::copy(p.path("data/users.json"), cwd.path().join("data/users.json")).unwrap();
    let run =
        output(bare().current_dir(cwd.path()).args(["--log-format", "text", "sync", "--mongodb-uri", &db.uri()])).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("./artifacts") && run.stderr.contains("reading it as empty"), "{}", run.stderr);
    assert_eq!(db.count("users").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_watch_a_named_folder_may_appear_later() {
    let db = TestDb::new("folder_later").await;
    let p = Platform::new();
    let later = p.path("later-artifacts");
    let w = WatchProc::start(&db.uri(), &p, &["--artifacts-dir", later.to_str().unwrap()]).await;
    p.job("unused", &job("unused", "queued", "2025-10-12T09:00:00.000Z"));
    p.write(
        "later-artifacts/jobs/j1.json",
        serde_json::to_vec(&job("j1", "queued", "2025-10-12T09:00:00.000Z")).unwrap(),
    );
    eventually(30, "a job in a folder created after start", || async { db.doc("training_jobs", "j1").await.is_some() })
        .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_not_running_is_one_line_saying_what_to_check() {
    let p = Platform::new();
    let port = free_port();
    let uri = format!("mongodb://127.0.0.1:{port}/db");
    let started = Instant::now();
    let run =
        output(bare().args(["--log-format", "text", "sync", "--mongodb-timeout", "2", "--mongodb-uri", &uri]).args([
            "--data-dir",
            p.data().to_str().unwrap(),
            "--artifacts-dir",
            p.artifacts().to_str().unwrap(),
        ]))
        .await;
    // Logged, not asserted: wall-clock time on a shared machine is not a test.
    eprintln!("sync --mongodb-timeout 2 against a closed port took {:?}", started.elapsed());
    assert_eq!(run.code, 4, "{run:?}");
    let lines = fatal_lines(&run);
    assert_eq!(lines.len(), 1, "printed once: {}", run.stderr);
    let want = format!("docmirror: cannot reach MongoDB at 127.0.0.1:{port} (connection refused; gave up after ");
    assert!(lines[0].starts_with(&want), "{}", lines[0]);
    assert!(lines[0].ends_with(" s): is mongod running? check --mongodb-uri"), "{}", lines[0]);
    // It says how long it waited: the budget, not more attempts' worth.
    let waited: f64 = lines[0][want.len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(waited >= 2.0, "{}", lines[0]);
    for noise in ["Topology", "Kind:", "ERROR", "labels"] {
        assert!(!run.stderr.contains(noise), "{noise:?} in {}", run.stderr);
    }

    // At -v, the driver's own words follow the line.
    let run = output(
        bare()
            .args(["--log-format", "text", "-v", "sync", "--mongodb-timeout", "1", "--mongodb-uri", &uri])
            .args(["--data-dir", p.data().to_str().unwrap()]),
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    let first = run.stderr.find("docmirror: cannot reach MongoDB").expect("the fatal line");
    let cause = run.stderr.find("Caused by: ").expect("the driver's detail at -v");
    assert!(first < cause, "{}", run.stderr);
    assert!(run.stderr[cause..].contains("Server selection timeout"), "{}", run.stderr);
    assert_eq!(fatal_lines(&run).len(), 1, "{}", run.stderr);

    // JSON logs: the error is one JSON line, not a JSON line and a text line.
    let run = output(
        bare()
            .args(["--log-format", "json", "sync", "--mongodb-timeout", "1", "--mongodb-uri", &uri])
            .args(["--data-dir", p.data().to_str().unwrap()]),
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(fatal_lines(&run).is_empty(), "{}", run.stderr);
    let errors: Vec<_> = run.stderr.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains("connection refused") && errors[0].contains("\"exit_code\":4"), "{}", errors[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_uri_is_one_line_without_the_password() {
    let p = Platform::new();
    for uri in ["mongodb://admin:s3cret-uri-pw@127.0.0.1:notaport/db", "mongodb//admin:s3cret-uri-pw@127.0.0.1/db"] {
        let run = output(
            bare()
                .args(["--log-format", "text", "sync", "--mongodb-uri", uri])
                .args(["--data-dir", p.data().to_str().unwrap()]),
        )
        .await;
        assert_eq!(run.code, 2, "{uri}: {run:?}");
        let lines = fatal_lines(&run);
        assert_eq!(lines.len(), 1, "{}", run.stderr);
        assert!(lines[0].contains("invalid MongoDB URI") && lines[0].contains("admin:***@127.0.0.1"), "{}", lines[0]);
        assert!(lines[0].ends_with("check --mongodb-uri"), "{}", lines[0]);
        assert!(!run.stderr.contains("Kind:"), "{}", run.stderr);
    }
}

/// Starts a SecantusDB of its own with `--auth` (`OwnServer`), whatever MONGODB_URI says.
#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_are_one_line_saying_what_to_check() {
    // The user must survive the kill below.
    let mut server = OwnServer::start_with(free_port(), &["--sync-on-commit"]);
    let client = mongodb::Client::with_uri_str(server.uri("authdb")).await.unwrap();
    client
        .database("authdb")
        .run_command(bson::doc! {"createUser": "docmirror", "pwd": "correct-horse-plain", "roles": ["readWrite"]})
        .await
        .unwrap();
    drop(client);
    server.kill();
    server.restart_with(&["--auth"]);
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let host = format!("127.0.0.1:{}", server.port);
    let sync = |password: &str| {
        let uri = format!("mongodb://docmirror:{password}@{host}/authdb");
        let mut cmd = bare();
        cmd.args(["--log-format", "text", "sync", "--mongodb-timeout", "5", "--mongodb-uri", &uri]).args([
            "--data-dir",
            p.data().to_str().unwrap(),
            "--artifacts-dir",
            p.artifacts().to_str().unwrap(),
        ]);
        cmd
    };
    let run = output(&mut sync("s3cret-uri-pw")).await;
    assert_eq!(run.code, 4, "{run:?}");
    let lines = fatal_lines(&run);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert_eq!(
        lines[0],
        format!(
            "docmirror: MongoDB at {host} refused to log in (authentication failed): \
             check the user name, the password and authSource in --mongodb-uri"
        )
    );
    // The right password works, so it was the credentials.
    let run = output(&mut sync("correct-horse-plain")).await;
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_go_before_or_after_the_command_name() {
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let (data, artifacts) = (p.data(), p.artifacts());
    let (data, artifacts) = (data.to_str().unwrap(), artifacts.to_str().unwrap());
    // The environment points elsewhere: only the flags can make these runs work.
    let wrong = [("DOCMIRROR_DATA_DIR", "/nonexistent/d"), ("DOCMIRROR_ARTIFACTS_DIR", "/nonexistent/a")];
    let before = TestDb::new("flags_before").await;
    let run = docmirror_env(
        &before,
        &p,
        &["--data-dir", data, "--artifacts-dir", artifacts, "--batch-size=1", "sync"],
        &wrong,
    )
    .await;
    assert_eq!((run.code, run.count("inserted")), (0, 1), "{run:?}");
    let after = TestDb::new("flags_after").await;
    let run = docmirror_env(
        &after,
        &p,
        &["sync", "--data-dir", data, "--artifacts-dir", artifacts, "--batch-size=1"],
        &wrong,
    )
    .await;
    assert_eq!((run.code, run.count("inserted")), (0, 1), "{run:?}");
    let run = docmirror_env(&after, &p, &["--data-dir", data, "--artifacts-dir", artifacts, "verify"], &wrong).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = docmirror(&after, &p, &["--database", &after.name, "--format", "json", "status"]).await;
    assert_eq!(run.code, 0, "{run:?}");

    // A flag the command does not take is refused on either side.
    for args in [&["--batch-size", "5", "status"][..], &["status", "--data-dir", data][..]] {
        let run = docmirror(&after, &p, args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_help_lists_only_what_status_uses() {
    let run = output(bare().args(["status", "--help"])).await;
    assert_eq!(run.code, 0, "{run:?}");
    for flag in [
        "--mongodb-uri",
        "--mongodb-uri-file",
        "--database",
        "--mongodb-timeout",
        "--format",
        "--log-format",
        "--config",
    ] {
        assert!(run.stdout.contains(flag), "{flag} missing from\n{}", run.stdout);
    }
    for flag in ["--batch-size", "--data-dir", "--artifacts-dir", "--write-mode", "--layout", "--max-file-bytes"] {
        assert!(!run.stdout.contains(flag), "{flag} in\n{}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_have_no_colour_codes_in_a_pipe() {
    let db = TestDb::new("no_colour").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    // NO_COLOR is unset: stderr being a pipe is reason enough.
    let run = output(bare().args(["--log-format", "text", "sync", "--mongodb-uri", &db.uri()]).args([
        "--data-dir",
        p.data().to_str().unwrap(),
        "--artifacts-dir",
        p.artifacts().to_str().unwrap(),
    ]))
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("INFO"), "{}", run.stderr);
    assert!(!run.stderr.contains("\x1b["), "ANSI escapes in a pipe: {:?}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_stopped_before_it_connected_logs_its_summary() {
    let p = Platform::new();
    let uri = format!("mongodb://127.0.0.1:{}/x?serverSelectionTimeoutMS=200", free_port());
    let w = WatchProc::spawn(&uri, &p, &[]);
    // Each retry says why, in a few words (the driver's topology dump is debug detail).
    eventually(30, "a retry line with its cause", || async {
        w.log_text().lines().any(|l| l.contains("MongoDB not available") && l.contains("error=connection refused"))
    })
    .await;
    // stop() checks for the exit code 0 and the "Stopped" line.
    let log = w.stop().await;
    assert!(log.contains("Stopping"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_text_logs_are_coloured_unless_no_color_is_set() {
    // `script` (util-linux) gives the binary a terminal for stderr.
    let p = Platform::new();
    let line = format!(
        "{} --log-format text sync --data-dir {} --mongodb-uri mongodb://127.0.0.1:{}/x --mongodb-timeout 1",
        env!("CARGO_BIN_EXE_docmirror"),
        p.data().display(),
        free_port()
    );
    let on_terminal = |no_color: Option<&str>| {
        let mut cmd = tokio::process::Command::from({
            let mut std = std::process::Command::new("script");
            std.args(["-qec", &line, "/dev/null"]).env_remove("NO_COLOR").env_remove("RUST_LOG");
            if let Some(v) = no_color {
                std.env("NO_COLOR", v);
            }
            std
        });
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    };
    let run = output(&mut on_terminal(None)).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stdout.contains("\x1b["), "no colour on a terminal: {:?}", run.stdout);
    let run = output(&mut on_terminal(Some("1"))).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stdout.contains("WARN") && !run.stdout.contains("\x1b["), "colour under NO_COLOR: {:?}", run.stdout);
}
