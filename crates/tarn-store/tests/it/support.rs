//! Shared builders.

use std::time::{Duration, Instant};

use tarn_core::{EngineConfig, Path, Retention, Txn, Value};
use tarn_store::{Db, StoreOptions, SyncPolicy};

pub fn p(s: &str) -> Path {
    Path::parse(s).unwrap()
}

/// Options for tests: no background archiving (tests call
/// `archive_now` to be deterministic), small segments.
pub fn options() -> StoreOptions {
    StoreOptions {
        sync: SyncPolicy::Always,
        segment_bytes: 4 << 10,
        archive: false,
        engine: EngineConfig {
            retention: Retention::Forever,
            ..EngineConfig::default()
        },
        ..StoreOptions::default()
    }
}

pub fn set(db: &Db, path: &str, v: i64) -> std::sync::Arc<tarn_core::Commit> {
    db.commit(Txn::set(p(path), Value::Int(v))).unwrap()
}

pub fn get(db: &Db, path: &str) -> Option<Value> {
    db.get(&p(path)).unwrap().value
}

/// Waits for `cond` with a deadline (tests never sleep to wait).
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}
