//! docmirror: mirror the ML Training Platform's JSON-file storage into MongoDB.
//!
//! The modules follow the pipeline:
//!
//! - [`source`]: find the files a [`layout`] names, read them consistently, parse them;
//! - [`mapping`]: turn each record into a BSON document, or a [`mapping::Reject`];
//! - [`sink`]: batched, retried MongoDB writes and reads, and the [`sink::indexes`];
//! - [`reconcile`]: the core shared by every command: compare the files with
//!   MongoDB and write only the difference;
//! - [`verify`]: the cutover check built on the same scan; [`export`]: MongoDB back into the files; [`cutover`]: the recorded end;
//! - [`watch`]: the daemon: file events (or polling) feed changed paths into the same core;
//! - [`cli`], [`config`] and [`app`]: the command line, the config file and the commands; [`progress`]: sync's bar;
//! - [`metrics`] and [`http`]: Prometheus counters and the health endpoints; [`state`]: `mirror_state`;
//! - [`memory`]: the allocator; [`redact`]: keeping credentials out of logs; [`error`]: fatal errors and exit codes.

pub mod app;
pub mod cli;
pub mod config;
pub mod cutover;
pub mod error;
pub mod export;
pub mod http;
pub mod indexes;
pub mod layout;
pub mod mapping;
pub mod memory;
pub mod metrics;
pub mod postgres;
pub mod progress;
pub mod reconcile;
pub mod redact;
pub mod reverse;
pub mod sink;
pub mod source;
pub mod state;
pub mod stream;
pub mod summary;
pub mod verify;
pub mod watch;

#[cfg(test)]
mod fuzz;
