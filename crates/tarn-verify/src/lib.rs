//! tarn-verify: the machinery that proves tarn keeps its promises.
//!
//! - [`history`]: what a test did, operation by operation.
//! - [`check`]: the Elle-style checker that names every anomaly.
//! - [`workload`]: the `list-append` and `rw-register` generators and how
//!   each transaction runs through `tarn-client`.
//! - [`runner`]: a real server in a child process, clients, faults (kill
//!   -9, pause, restart, slow clients), the final recovery read.
//! - [`watches`]: subscribers and the check of what they received.
//! - [`fuzz`]: the bodies of the fuzz targets, also run over the corpus by
//!   `cargo test`.

pub mod check;
pub mod fuzz;
pub mod history;
pub mod runner;
pub mod watches;
pub mod workload;

pub use check::{Anomaly, AnomalyKind, CheckOptions, Report, check};
pub use history::{History, Mop, Observed, Op, Outcome, Recorder, Workload};
