//! tarn-core: the data model and the commit engine of tarn.
//!
//! - [`path`]: keys and paths, with their limits.
//! - [`value`]: JSON values and how objects flatten into leaves.
//! - [`time`]: hybrid logical clock stamps.
//! - [`store`]: the versioned tree: history, time travel, compaction.
//! - [`txn`]: transactions, reads, writes, and why one fails.
//! - [`watch`]: which watchers a commit reaches.
//! - [`engine`]: the authority's commit decision, tying them together.
//! - [`workload`]: the benchmark workloads, shared by `cargo bench` and
//!   `tarn bench core`.
//!
//! This crate is pure: no I/O, no async, no clock reads (time comes in as
//! `wall_ms` arguments), no serialization format. The same inputs always
//! give the same commits.

pub mod engine;
pub mod path;
pub mod store;
pub mod time;
pub mod tree;
pub mod txn;
pub mod value;
#[cfg(feature = "serde")]
pub mod value_serde;
pub mod watch;
pub mod workload;

pub use engine::{Commit, Engine, EngineConfig, Retention};
pub use path::{Key, Path, PathError, PathLimits};
pub use store::{
    Change, HistoryError, Observed, ObservedKeys, ReplayError, Stale, Store, StoreStats, Version,
};
pub use time::{Hlc, HlcError, NodeId, Time};
pub use txn::{
    ClientId, InvalidTxn, Outcome, Read, ReadKind, Rejection, Seen, Txn, TxnError, TxnId,
    TxnLimits, Write,
};
pub use value::{Value, ValueError, ValueLimits};
pub use watch::{Delivery, WatchError, WatchId, WatchIndex, WatchKind};
