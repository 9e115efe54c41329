//! Integration tests: the `docmirror` binary against a real MongoDB
//! wire-protocol server (SecantusDB by default, any mongod via MONGODB_URI).
//! One test binary, one server per run, one database per test.

// Test helpers panic on purpose: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod checkpoint;
mod cutover;
mod drift;
mod export;
mod faults;
mod first_hour;
mod model;
mod poison;
mod property;
mod readiness;
mod reverse;
mod service;
mod sync;
mod target;
mod verify;
mod watch;
