//! Integration tests: the `docmirror` binary against a real MongoDB
//! wire-protocol server (SecantusDB by default, any mongod via MONGODB_URI).
//! One test binary, one server per run, one database per test; the PostgreSQL
//! target's tests likewise start one PostgreSQL cluster per run (support_pg.rs).

// Test helpers panic on purpose: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod support_pg;
mod support_targets;

mod behaviour;
mod behaviour_ops;
mod checkpoint;
mod checkpoint_prop;
mod cutover;
mod drift;
mod export;
mod faults;
mod first_hour;
mod model;
mod poison;
mod postgres;
mod postgres_copy;
mod postgres_fresh;
mod postgres_texts;
mod postgres_tls;
mod property;
mod readiness;
mod reverse;
mod service;
mod sync;
mod target;
mod target_pg;
mod verify;
mod watch;
