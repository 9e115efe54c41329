//! Integration tests: the `docmirror` binary against a real MongoDB
//! wire-protocol server (SecantusDB by default, any mongod via MONGODB_URI).
//! One test binary, one server per run, one database per test.

mod support;

mod sync;
mod verify;
