//! Unit tests of the command line (`cli.rs`).
use super::*;
use clap::CommandFactory;

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn the_postgres_target_is_chosen_by_flag_or_environment_and_needs_a_url() {
    let cli = Cli::try_parse_from(["docmirror", "sync", "--target", "postgres", "--postgres-url", "postgresql://h/db"])
        .unwrap();
    let Command::Sync(s) = cli.command else { panic!() };
    assert_eq!(s.common.connection.target, TargetKind::Postgres);
    assert_eq!(s.common.connection.postgres_url.as_deref(), Some("postgresql://h/db"));
    let metrics = std::sync::Arc::default();
    assert_eq!(s.common.connection.pg_options(false, metrics).unwrap().url, "postgresql://h/db");
    let cli = Cli::try_parse_from(["docmirror", "status", "--target", "postgres"]).unwrap();
    let Command::Status(st) = cli.command else { panic!() };
    let err = st.connection.pg_options(false, std::sync::Arc::default()).unwrap_err().to_string();
    assert!(err.contains("--postgres-url") && err.contains("DATABASE_URL"), "{err}");
    let cli = Cli::try_parse_from(["docmirror", "verify"]).unwrap();
    let Command::Verify(v) = cli.command else { panic!() };
    assert_eq!(v.common.connection.target, TargetKind::Mongodb, "MongoDB stays the default");
}

#[test]
fn defaults_follow_the_guide() {
    let cli = Cli::try_parse_from(["docmirror", "sync"]).unwrap();
    let Command::Sync(s) = cli.command else { panic!() };
    assert_eq!(s.common.data_dir(), PathBuf::from("./data"));
    assert_eq!(s.common.artifacts_dir(), PathBuf::from("./artifacts"));
    assert_eq!(s.common.data_dir, None, "the default is not a named folder");
    assert!(!s.dry_run);
    assert_eq!(s.write.on_delete, OnDelete::Archive);
}

#[test]
fn chunks_are_larger_on_postgres_unless_given() {
    let chunk = |args: &[&str], target: TargetKind| {
        let mut all = vec!["docmirror", "sync"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).unwrap();
        let Command::Sync(s) = cli.command else { panic!() };
        let mut settings = s.common.settings(false).unwrap();
        s.write.apply(&mut settings.engine, target).unwrap();
        settings.engine.chunk
    };
    assert_eq!(chunk(&[], TargetKind::Mongodb), crate::reconcile::CHUNK);
    assert_eq!(chunk(&[], TargetKind::Postgres), crate::postgres::CHUNK);
    assert_eq!((crate::reconcile::CHUNK, crate::postgres::CHUNK), (1000, 5000), "README gives these numbers");
    assert_eq!(chunk(&["--chunk-records", "70"], TargetKind::Postgres), 70);
    assert_eq!(chunk(&["--chunk-records", "70"], TargetKind::Mongodb), 70);
}
