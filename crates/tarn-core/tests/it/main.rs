//! Integration tests of tarn-core: one binary, one module per area
//! (matklad's "one integration test binary" keeps link time down).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod hlc;
mod model;
mod paths;
mod store;
mod support;
mod txn;
mod values;
mod watch;
