//! Small builders shared by the tests.

use tarn_core::{Engine, EngineConfig, Path, Txn, Value, Write};

pub fn p(text: &str) -> Path {
    Path::parse(text).unwrap()
}

pub fn int(i: i64) -> Value {
    Value::Int(i)
}

/// An object from pairs.
pub fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    pairs.into_iter().collect()
}

pub fn engine() -> Engine {
    Engine::new(EngineConfig::default())
}

/// Commits one blind set at wall time `ms`; panics if it fails.
pub fn set(engine: &mut Engine, path: &str, value: Value, ms: u64) -> tarn_core::Commit {
    engine.commit(Txn::set(p(path), value), ms).unwrap()
}

pub fn patch(engine: &mut Engine, path: &str, value: Value, ms: u64) -> tarn_core::Commit {
    let txn = Txn::new(
        vec![],
        vec![Write::Patch {
            path: p(path),
            value,
        }],
    );
    engine.commit(txn, ms).unwrap()
}

pub fn get(engine: &Engine, path: &str) -> Option<Value> {
    engine.store().get(&p(path)).value
}

/// Proptest cases: `default`, or `TARN_PROPTEST_CASES` for a long run.
pub fn cases(default: u32) -> u32 {
    std::env::var("TARN_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
