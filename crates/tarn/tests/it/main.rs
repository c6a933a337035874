//! Integration tests of the `tarn` binary: each runs the real executable.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod bench;
mod client;
mod functions;
mod server;
