//! Integration tests of tarn-core: one binary, one module per area.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
