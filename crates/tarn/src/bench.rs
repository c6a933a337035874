//! `tarn bench`: measures tarn and prints one line per figure,
//! `<area>.<metric> <value> <unit>`, so scripts and notes can quote them.
//!
//! Each workload runs in batches until it has run for the requested time
//! (after a short warm-up); the figure is units done over wall time spent.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use tarn_core::workload::{BlindWrites, Fanout, ReadModifyWrite, Workload};

/// Arguments of `tarn bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    area: Area,
    /// How long to run each workload, in milliseconds (default 2000;
    /// `compare --quick`: 500).
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Size of the WAL written for the replay figure, in MiB (`store`).
    #[arg(long, default_value_t = 1024)]
    replay_mib: u64,
    /// Concurrent committers for the durable commit figures (`store`).
    #[arg(long, default_value_t = 64)]
    committers: usize,
    /// Where to put the benchmark's data directories (`store`): on the
    /// disk you want measured. Removed afterwards.
    #[arg(long, default_value = "tarn-bench.tmp")]
    dir: std::path::PathBuf,
    /// Also measure a peer in the same run (`server`: `redis`).
    #[arg(long)]
    vs: Option<String>,
    /// `compare`: a short run (fewer subscribers, writes and data; still
    /// `--runs` alternating runs) to check the suite works.
    #[arg(long)]
    quick: bool,
    /// `compare`: only these workloads (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<crate::compare::Workload>,
    /// `compare`: alternating runs per figure; figures quoted need >= 5.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// `compare`: data for the recovery workload, in MiB (default 1024;
    /// `--quick`: 32).
    #[arg(long)]
    recovery_mib: Option<u64>,
    /// `compare`: where the report (compare.md, compare-latency.png) goes.
    #[arg(long, default_value = "bench-results")]
    out: std::path::PathBuf,
    /// `compare`: run tarn under `perf record`, a profile per workload in
    /// `<out>/raw/perf-<workload>.data` (see README, Profiling).
    #[arg(long)]
    perf: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Area {
    /// The pure commit engine (tarn-core), one thread, no I/O.
    Core,
    /// Durable storage (tarn-store): group commit, fsync, WAL replay.
    Store,
    /// The server over its WebSocket protocol, on loopback.
    Server,
    /// tarn against redis, etcd, NATS and PostgreSQL in the same run:
    /// sets, durable transactions, fan-out, watch latency, recovery.
    Compare,
    /// tarn-client against a server in this process: transactions,
    /// prediction.
    Client,
    /// Server functions: a call in process, and calls per second over
    /// WebSocket from 8 clients.
    Functions,
    /// Internal: open the data directory `--dir` in this fresh process and
    /// print `<wal bytes> <seconds>` (how `store` times startup replay).
    #[value(hide = true)]
    ReplayProbe,
}

/// Runs the benchmarks of one area.
pub fn run(args: BenchArgs) -> Result<()> {
    let default_ms = if args.quick { 500 } else { 2_000 };
    let duration = Duration::from_millis(args.duration_ms.unwrap_or(default_ms).max(1));
    match args.area {
        Area::Core => {
            let mut workloads: Vec<Box<dyn Workload>> = vec![
                Box::new(BlindWrites::new()),
                Box::new(ReadModifyWrite::new()),
                Box::new(Fanout::new()),
            ];
            for w in &mut workloads {
                let m = measure(w.as_mut(), duration);
                out!("core.{} {:.0} {}", w.metric(), m.units_per_sec, w.unit());
                if w.metric() != "fanout_deliveries_per_sec" {
                    out!(
                        "core.{}_mean_us {:.3} us",
                        w.metric().trim_end_matches("_per_sec"),
                        m.us_per_op
                    );
                }
            }
        }
        Area::Store => {
            crate::bench_store::run(&args.dir, duration, args.committers, args.replay_mib)?
        }
        Area::Server => {
            let vs_redis = match args.vs.as_deref() {
                None => false,
                Some("redis") => true,
                Some(other) => {
                    anyhow::bail!("--vs {other}: the server benchmark compares with redis")
                }
            };
            crate::bench_server::run(duration, vs_redis)?
        }
        Area::Client => crate::bench_client::run(duration)?,
        Area::Functions => crate::bench_functions::run(duration)?,
        Area::Compare => {
            anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
            let default_mib = if args.quick { 32 } else { 1024 };
            crate::compare::run(crate::compare::Options {
                quick: args.quick,
                runs: args.runs,
                duration,
                recovery_bytes: args.recovery_mib.unwrap_or(default_mib).max(1) << 20,
                only: args.only,
                out: args.out,
                perf: args.perf,
                command: std::iter::once("tarn".to_string())
                    .chain(std::env::args().skip(1))
                    .collect::<Vec<_>>()
                    .join(" "),
            })?
        }
        Area::ReplayProbe => crate::bench_store::replay_probe(&args.dir)?,
    }
    Ok(())
}

struct Measurement {
    units_per_sec: f64,
    us_per_op: f64,
}

fn measure(w: &mut dyn Workload, duration: Duration) -> Measurement {
    const BATCH: u64 = 1_000;
    // Warm up: caches, allocator, the history reaching its steady size.
    let warm = Instant::now();
    while warm.elapsed() < duration / 4 {
        w.run(BATCH);
    }
    let start = Instant::now();
    let (mut ops, mut units) = (0u64, 0u64);
    while start.elapsed() < duration {
        units += w.run(BATCH);
        ops += BATCH;
    }
    let secs = start.elapsed().as_secs_f64();
    Measurement {
        units_per_sec: units as f64 / secs,
        us_per_op: secs * 1e6 / ops as f64,
    }
}

/// Runs `body` against a server in this process, on loopback, with
/// `sync = batch(2)` and no request rate limit, on a fresh data directory
/// under the system's temp dir; stops the server and removes the
/// directory afterwards.
pub fn with_server<F, Fut>(name: &str, body: F) -> Result<()>
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let dir = std::env::temp_dir().join(format!("tarn-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let mut config = tarn_server::ServerConfig::local(&dir);
        config.wal.sync = "batch(2)".into();
        config.limits.max_requests_per_sec = u32::MAX;
        let server = tarn_server::spawn(config).await?;
        body(server.addr).await?;
        server.stop().await
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}
