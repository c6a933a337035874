//! tarn-store: durable storage for one node. All of tarn's disk I/O lives
//! here; tarn-core stays pure.
//!
//! - [`codec`]: the binary encoding of commits and versions.
//! - [`wal`]: write-ahead log segments, record framing, sync policies.
//! - [`archive`]: archive files and the manifest, through `object_store`.
//! - [`db`]: [`Db`], the durable database: group commit, recovery,
//!   background archiving.
//! - [`export`]: streaming JSON export and import.
//! - [`backup`]: consistent backups and restore.

pub mod archive;
pub mod backup;
pub mod codec;
pub mod db;
pub mod export;
pub mod wal;

pub use backup::{backup, restore};
pub use db::{CommitError, Db, DbStats, Pending, Recovery, StoreError, StoreOptions};
pub use export::{ImportMode, TransferStats, export_json, import_json, import_json_guarded};
pub use wal::SyncPolicy;
