//! Integration tests of tarn-store: one binary, one module per area.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod crash;
mod dirs;
mod durability;
mod faults;
mod fixtures;
mod s3;
mod support;
mod transfer;
