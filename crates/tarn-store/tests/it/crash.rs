//! The crash test: a real writer process (the `tarn-crash-writer` binary)
//! commits transactions from several threads and prints each
//! acknowledged commit; the test kill -9's it at a random moment, reopens
//! the data directory and checks that every acknowledged transaction is
//! there, that no transaction is half there, and that the read-modify-write
//! counter equals the number of transactions present. Many cycles, over
//! every sync policy, with tiny segments and constant archiving so kills
//! also land in segment rolls, archive writes and merges.
//!
//! `TARN_CRASH_CYCLES` sets the number of cycles (default 200; more for a
//! long run).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tarn_core::{EngineConfig, Path, Retention, Value};
use tarn_store::{Db, StoreOptions, SyncPolicy};

use crate::support::p;

fn options(sync: SyncPolicy) -> StoreOptions {
    // Must match the writer's (src/bin/tarn-crash-writer.rs), except that
    // the checker does not archive.
    StoreOptions {
        sync,
        segment_bytes: 16 << 10,
        archive: false,
        engine: EngineConfig {
            retention: Retention::HorizonMs(50),
            ..EngineConfig::default()
        },
        ..StoreOptions::default()
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let cycles: u64 = std::env::var("TARN_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5EED_1234_ABCD);
    let mut acked_total = 0u64;
    for cycle in 0..cycles {
        let sync = match cycle % 3 {
            0 => SyncPolicy::Always,
            1 => SyncPolicy::Batch(2),
            _ => SyncPolicy::Never,
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_tarn-crash-writer"))
            .arg(dir.path())
            .arg(sync.to_string())
            .arg(cycle.to_string())
            .arg("3")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        if !matches!(&first, Some(Ok(l)) if l == "ready") {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "cycle {cycle}: writer did not start: {first:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Kill after a random number of acknowledgements (0 = right away).
        let want = rng.below(40);
        let mut acked = BTreeSet::new();
        while (acked.len() as u64) < want {
            match lines.next() {
                Some(Ok(line)) => {
                    let n: u64 = line.strip_prefix("ack ").unwrap().parse().unwrap();
                    acked.insert(n);
                }
                other => panic!("cycle {cycle}: writer stopped: {other:?}"),
            }
        }
        child.kill().unwrap(); // SIGKILL
        // Acks printed before the kill landed count too.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("ack ") {
                acked.insert(n.parse().unwrap());
            }
        }
        let _ = child.wait();
        acked_total += acked.len() as u64;

        let db = Db::open(dir.path(), options(sync))
            .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        let here = p(&format!("c/{cycle}"));
        let present: BTreeSet<u64> = db
            .keys(&here)
            .unwrap()
            .keys
            .iter()
            .map(|k| k.as_str().parse().unwrap())
            .collect();
        for n in &acked {
            assert!(
                present.contains(n),
                "cycle {cycle} ({sync}): acknowledged txn {n} lost"
            );
        }
        // No half transactions, in this cycle or any earlier one.
        let mut total = 0i64;
        for c in db.keys(&p("c")).unwrap().keys {
            for n in db.keys(&p(&format!("c/{c}"))).unwrap().keys {
                let txn = Path::parse(&format!("c/{c}/{n}")).unwrap();
                let leaves = db.keys(&txn).unwrap().keys.len();
                assert_eq!(leaves, 3, "cycle {cycle}: txn c/{c}/{n} is partial");
                total += 1;
            }
        }
        let counter = db.get(&p("counter")).unwrap().value;
        assert_eq!(
            counter.unwrap_or(Value::Int(0)),
            Value::Int(total),
            "cycle {cycle}: counter != transactions"
        );
        db.close().unwrap();
    }
    assert!(
        acked_total > cycles * 5,
        "the writer acknowledged too little to prove anything: {acked_total}"
    );
}
