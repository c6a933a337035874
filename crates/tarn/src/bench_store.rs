//! `tarn bench store`: the durable store's figures, each measured in the
//! same run as its baseline on the same disk.
//!
//! - `store.fsync_per_sec`: a bare loop of 4 KiB append + fdatasync, the
//!   ceiling for one-commit-per-sync designs.
//! - `store.durable_commits_per_sec`: `sync = always` with many concurrent
//!   committers; the ratio to fsync_per_sec shows how well group commit
//!   amortises the sync (`store.commits_per_fsync` prints it).
//! - `store.commits_per_sec_batch`: the default `sync = batch(2)`.
//! - `store.replay_mb_per_sec`: reopening a data directory whose WAL holds
//!   `--replay-mib` MiB of commits of 1 KiB values.

use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tarn_core::{EngineConfig, Path, Retention, Txn, Value};
use tarn_store::{Db, StoreOptions, SyncPolicy};

/// Removes the benchmark directory when dropped, even on error.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(dir: &FsPath, duration: Duration, committers: usize, replay_mib: u64) -> Result<()> {
    if dir.exists() {
        anyhow::bail!(
            "{} already exists; pass --dir with a path that does not exist (it is removed afterwards)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = Scratch(dir.to_path_buf());

    let fsyncs = fsync_loop(&scratch.0.join("fsync"), duration)?;
    out!("store.fsync_per_sec {fsyncs:.0} fsyncs/s");

    let (always, stats) = commits(
        &scratch.0.join("always"),
        SyncPolicy::Always,
        committers,
        duration,
    )?;
    out!("store.durable_commits_per_sec {always:.0} commits/s");
    out!(
        "store.commits_per_fsync {:.1} commits/fsync",
        stats.commits as f64 / stats.flushes.max(1) as f64
    );
    out!(
        "store.durable_vs_fsync_ratio {:.1} x",
        always / fsyncs.max(1.0)
    );

    let (batch, _) = commits(
        &scratch.0.join("batch"),
        SyncPolicy::Batch(2),
        committers,
        duration,
    )?;
    out!("store.commits_per_sec_batch {batch:.0} commits/s");

    let (mb, secs) = replay(&scratch.0.join("replay"), replay_mib)?;
    out!("store.replay_mb_per_sec {mb:.0} MB/s");
    out!("store.replay_secs {secs:.2} s");
    Ok(())
}

fn fsync_loop(path: &FsPath, duration: Duration) -> Result<f64> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let block = [0xA5u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        file.write_all(&block)?;
        file.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn bench_options(sync: SyncPolicy) -> StoreOptions {
    StoreOptions {
        sync,
        archive: false,
        engine: EngineConfig {
            retention: Retention::HorizonMs(1_000),
            ..EngineConfig::default()
        },
        ..StoreOptions::default()
    }
}

/// Blind writes from `committers` threads for `duration`; commits/s.
fn commits(
    dir: &FsPath,
    sync: SyncPolicy,
    committers: usize,
    duration: Duration,
) -> Result<(f64, tarn_store::DbStats)> {
    let db = Arc::new(
        Db::open(dir, bench_options(sync)).with_context(|| format!("opening {}", dir.display()))?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let paths: Vec<Vec<Path>> = (0..committers)
        .map(|t| {
            (0..100)
                .map(|i| parse(&format!("bench/t{t}/k{i}")))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let threads: Vec<_> = paths
        .into_iter()
        .map(|paths| {
            let (db, stop, done) = (Arc::clone(&db), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || -> Result<()> {
                // At least one commit each, however late the thread starts.
                for i in 0usize.. {
                    db.commit(Txn::set(
                        paths[i % paths.len()].clone(),
                        Value::Int(i as i64),
                    ))?;
                    done.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a committer thread panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = db.stats();
    Ok((done.load(Ordering::Relaxed) as f64 / secs, stats))
}

fn parse(s: &str) -> Path {
    Path::parse(s).expect("benchmark paths are valid")
}

/// Writes `mib` MiB of WAL, then times reopening; (MB/s, seconds).
fn replay(dir: &FsPath, mib: u64) -> Result<(f64, f64)> {
    let target = mib << 20;
    {
        let db = Arc::new(Db::open(dir, bench_options(SyncPolicy::Never))?);
        let bar = indicatif::ProgressBar::new(target);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "writing a WAL to replay {bar:40} {bytes}/{total_bytes}",
        ) {
            bar.set_style(style);
        }
        let value = Value::str(&"x".repeat(1000));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (db, value, bar) = (Arc::clone(&db), value.clone(), bar.clone());
                std::thread::spawn(move || -> Result<()> {
                    let mut i = 0u64;
                    while db.stats().wal_bytes < target {
                        let path = parse(&format!("replay/t{t}/k{}", i % 10_000));
                        db.commit(Txn::set(path, value.clone()))?;
                        i += 1;
                        if i.is_multiple_of(256) {
                            bar.set_position(db.stats().wal_bytes.min(target));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        }
        bar.finish_and_clear();
        let db =
            Arc::try_unwrap(db).map_err(|_| anyhow::anyhow!("writers still hold the database"))?;
        db.close()?;
    }
    // Time the replay in a fresh process, as a restart would run it (not
    // in this one, whose heap the writers just churned through).
    let exe = std::env::current_exe().context("finding the tarn executable")?;
    let out = std::process::Command::new(exe)
        .args(["bench", "replay-probe", "--dir"])
        .arg(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the replay probe")?;
    anyhow::ensure!(out.status.success(), "the replay probe failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let (Some(bytes), Some(secs)) = (parts.next(), parts.next()) else {
        anyhow::bail!("the replay probe printed {text:?}");
    };
    let (bytes, secs): (f64, f64) = (bytes.parse()?, secs.parse()?);
    Ok((bytes / 1e6 / secs, secs))
}

/// Opens `dir` (replaying its WAL) and prints `<wal bytes> <seconds>`.
pub fn replay_probe(dir: &FsPath) -> Result<()> {
    let start = Instant::now();
    let db = Db::open(
        dir,
        StoreOptions {
            progress: true,
            ..bench_options(SyncPolicy::Never)
        },
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    let secs = start.elapsed().as_secs_f64();
    out!("{} {secs}", db.recovery().wal_bytes);
    // Exit without tearing down a gigabyte of tree: not part of startup.
    std::process::exit(0)
}
