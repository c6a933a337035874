//! The benchmark workloads of the engine, shared by the criterion benches
//! and `tarn bench core` so both measure the same thing.
//!
//! A workload owns an engine and does a number of operations when asked;
//! the caller times it (this crate reads no clock). Wall time is
//! synthetic: one millisecond per 1,000 operations, with compaction to a
//! one-second horizon every 4,096 operations, so a long run measures the
//! steady state (history trimmed as it would be in service) rather than a
//! store that only grows.

use crate::engine::{Engine, EngineConfig, Retention};
use crate::path::Path;
use crate::store::Observed;
use crate::txn::{Read, Txn, Write};
use crate::value::Value;
use crate::watch::WatchKind;

/// One benchmark workload.
pub trait Workload {
    /// The metric it reports, as `core.<metric>`.
    fn metric(&self) -> &'static str;
    /// The unit of what [`Workload::run`] counts.
    fn unit(&self) -> &'static str;
    /// Does `ops` operations; returns how many units (commits,
    /// deliveries) they produced.
    fn run(&mut self, ops: u64) -> u64;
}

/// Synthetic time and periodic compaction shared by the workloads.
struct Clock {
    ops: u64,
}

impl Clock {
    const OPS_PER_MS: u64 = 1_000;
    const COMPACT_EVERY: u64 = 4_096;

    fn tick(&mut self, engine: &mut Engine) -> u64 {
        self.ops += 1;
        let wall_ms = 1_000_000 + self.ops / Clock::OPS_PER_MS;
        if self.ops.is_multiple_of(Clock::COMPACT_EVERY) {
            engine.compact(wall_ms);
        }
        wall_ms
    }
}

fn bench_engine() -> Engine {
    Engine::new(EngineConfig {
        retention: Retention::HorizonMs(1_000),
        ..EngineConfig::default()
    })
}

fn path(text: &str) -> Path {
    Path::parse(text).expect("benchmark paths are valid")
}

/// `core.commits_per_sec`: blind writes of an integer to one path, one
/// transaction each.
pub struct BlindWrites {
    engine: Engine,
    clock: Clock,
    path: Path,
}

impl BlindWrites {
    /// A fresh engine and the path `bench/counter`.
    pub fn new() -> BlindWrites {
        BlindWrites {
            engine: bench_engine(),
            clock: Clock { ops: 0 },
            path: path("bench/counter"),
        }
    }
}

impl Default for BlindWrites {
    fn default() -> Self {
        BlindWrites::new()
    }
}

impl Workload for BlindWrites {
    fn metric(&self) -> &'static str {
        "commits_per_sec"
    }
    fn unit(&self) -> &'static str {
        "commits/s"
    }
    fn run(&mut self, ops: u64) -> u64 {
        for _ in 0..ops {
            let wall_ms = self.clock.tick(&mut self.engine);
            let value = Value::Int(self.clock.ops as i64);
            let commit = self
                .engine
                .commit(Txn::set(self.path.clone(), value), wall_ms);
            debug_assert!(commit.is_ok());
        }
        ops
    }
}

/// `core.txn_commits_per_sec`: read-modify-write of 4 counters chosen at
/// random among 1,024: four reads, four writes, one transaction. Single
/// threaded, so every transaction commits.
pub struct ReadModifyWrite {
    engine: Engine,
    clock: Clock,
    paths: Vec<Path>,
    rng: u64,
}

impl ReadModifyWrite {
    /// A fresh engine and 1,024 counters under `bench/rmw/`.
    pub fn new() -> ReadModifyWrite {
        ReadModifyWrite {
            engine: bench_engine(),
            clock: Clock { ops: 0 },
            paths: (0..1024)
                .map(|i| path(&format!("bench/rmw/c{i}")))
                .collect(),
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn pick(&mut self) -> usize {
        // xorshift64: deterministic and cheap.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % self.paths.len() as u64) as usize
    }
}

impl Default for ReadModifyWrite {
    fn default() -> Self {
        ReadModifyWrite::new()
    }
}

impl Workload for ReadModifyWrite {
    fn metric(&self) -> &'static str {
        "txn_commits_per_sec"
    }
    fn unit(&self) -> &'static str {
        "commits/s"
    }
    fn run(&mut self, ops: u64) -> u64 {
        let mut committed = 0;
        for _ in 0..ops {
            let mut reads = Vec::with_capacity(4);
            let mut writes = Vec::with_capacity(4);
            while reads.len() < 4 {
                let i = self.pick();
                let p = &self.paths[i];
                if reads.iter().any(|r: &Read| r.path == *p) {
                    continue;
                }
                let Observed { value, seen } = self.engine.store().get(p);
                let n = match value {
                    Some(Value::Int(n)) => n,
                    _ => 0,
                };
                reads.push(Read::value(p.clone(), seen));
                writes.push(Write::Set {
                    path: p.clone(),
                    value: Value::Int(n + 1),
                });
            }
            let wall_ms = self.clock.tick(&mut self.engine);
            if self.engine.commit(Txn::new(reads, writes), wall_ms).is_ok() {
                committed += 1;
            }
        }
        committed
    }
}

/// `core.fanout_deliveries_per_sec`: 10,000 subtree watchers on
/// `rooms/lobby`, and blind writes to `rooms/lobby/p{i}/x`; counts the
/// deliveries the commits produce.
pub struct Fanout {
    engine: Engine,
    clock: Clock,
    paths: Vec<Path>,
}

impl Fanout {
    /// Watchers on one prefix.
    pub const WATCHERS: usize = 10_000;

    /// A fresh engine with [`Fanout::WATCHERS`] subtree watchers.
    pub fn new() -> Fanout {
        let mut engine = bench_engine();
        let prefix = path("rooms/lobby");
        for _ in 0..Fanout::WATCHERS {
            engine
                .watch(prefix.clone(), WatchKind::Subtree)
                .expect("10,000 watchers are within the default limit");
        }
        Fanout {
            engine,
            clock: Clock { ops: 0 },
            paths: (0..100)
                .map(|i| path(&format!("rooms/lobby/p{i}/x")))
                .collect(),
        }
    }
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout::new()
    }
}

impl Workload for Fanout {
    fn metric(&self) -> &'static str {
        "fanout_deliveries_per_sec"
    }
    fn unit(&self) -> &'static str {
        "deliveries/s"
    }
    fn run(&mut self, ops: u64) -> u64 {
        let mut delivered = 0;
        for _ in 0..ops {
            let wall_ms = self.clock.tick(&mut self.engine);
            let p = self.paths[(self.clock.ops % self.paths.len() as u64) as usize].clone();
            let txn = Txn::set(p, Value::Int(self.clock.ops as i64));
            if let Ok(commit) = self.engine.commit(txn, wall_ms) {
                delivered += commit.deliveries.len() as u64;
            }
        }
        delivered
    }
}
