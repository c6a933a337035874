//! A test helper, not a tool: the writer process of the kill -9 crash
//! test (tests/it/crash.rs). It opens a data directory and commits
//! transactions from several threads, printing `ack <n>` after each
//! commit is acknowledged (durable under the sync policy), until killed.
//!
//! Every transaction `n` writes `c/<cycle>/<n>/{a,b,c} = n` and increments
//! `counter` with a read-modify-write, so a checker can tell that
//! acknowledged transactions survived and no transaction is half there.
//!
//! Usage: tarn-crash-writer <dir> <always|batch(ms)|never> <cycle> <threads>

use std::io::Write as _;
use std::sync::Arc;

use tarn_core::{EngineConfig, Path, Read, Retention, Txn, Value, Write};
use tarn_store::{CommitError, Db, StoreOptions, SyncPolicy};

fn main() {
    if let Err(e) = run() {
        eprintln!("tarn-crash-writer: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, sync, cycle, threads] = &args[..] else {
        return Err("usage: tarn-crash-writer <dir> <sync> <cycle> <threads>".into());
    };
    let sync: SyncPolicy = sync.parse()?;
    let cycle: u64 = cycle.parse().map_err(|e| format!("cycle: {e}"))?;
    let threads: u64 = threads.parse().map_err(|e| format!("threads: {e}"))?;
    let db = Arc::new(Db::open(dir, options(sync)).map_err(|e| e.to_string())?);
    println!("ready");
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || writer(&db, cycle, t))
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| "writer thread panicked".to_string())??;
    }
    Ok(())
}

/// The options the crash test uses on both sides: tiny segments and
/// frequent archiving, so kills land during rolls, archive writes and
/// merges too.
pub fn options(sync: SyncPolicy) -> StoreOptions {
    StoreOptions {
        sync,
        segment_bytes: 16 << 10,
        archive_merge_after: 3,
        archive_interval_ms: 5,
        engine: EngineConfig {
            retention: Retention::HorizonMs(50),
            ..EngineConfig::default()
        },
        ..StoreOptions::default()
    }
}

fn path(s: &str) -> Result<Path, String> {
    Path::parse(s).map_err(|e| e.to_string())
}

fn writer(db: &Db, cycle: u64, thread: u64) -> Result<(), String> {
    let counter = path("counter")?;
    for i in 0.. {
        let n = thread * 1_000_000 + i;
        let base = format!("c/{cycle}/{n}");
        loop {
            let seen = db.get(&counter).map_err(|e| e.to_string())?;
            let count = match seen.value {
                Some(Value::Int(c)) => c,
                _ => 0,
            };
            let mut writes: Vec<Write> = ["a", "b", "c"]
                .iter()
                .map(|leaf| {
                    Ok(Write::Set {
                        path: path(&format!("{base}/{leaf}"))?,
                        value: Value::Int(n as i64),
                    })
                })
                .collect::<Result<_, String>>()?;
            writes.push(Write::Set {
                path: counter.clone(),
                value: Value::Int(count + 1),
            });
            let txn = Txn::new(vec![Read::value(counter.clone(), seen.seen)], writes);
            match db.commit(txn) {
                Ok(_) => break,
                Err(CommitError::Txn(_)) => continue, // lost the race: retry
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "ack {n}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
