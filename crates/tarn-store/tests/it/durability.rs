//! Commits survive reopening; group commit shares syncs; archives keep
//! history across the archive boundary.

use std::sync::Arc;

use tarn_core::{EngineConfig, HistoryError, Path, Retention, Txn, Value};
use tarn_store::{Db, StoreError, StoreOptions, SyncPolicy};

use crate::support::{get, options, p, set};

#[test]
fn commits_survive_a_reopen_and_the_clock_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2);
    {
        let db = Db::open(dir.path(), options()).unwrap();
        t1 = set(&db, "a/b", 1).time;
        t2 = set(&db, "a/b", 2).time;
        set(&db, "c", 3);
        db.close().unwrap();
    }
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(db.recovery().replayed_commits, 3);
    assert_eq!(get(&db, "a/b"), Some(Value::Int(2)));
    assert_eq!(get(&db, "c"), Some(Value::Int(3)));
    assert_eq!(db.get_at(&p("a/b"), t1).unwrap().value, Some(Value::Int(1)));
    let t4 = set(&db, "d", 4).time;
    assert!(t4 > t2);
}

#[test]
fn every_sync_policy_is_durable_across_a_clean_close() {
    for sync in [SyncPolicy::Always, SyncPolicy::Batch(2), SyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions { sync, ..options() };
        {
            let db = Db::open(dir.path(), opts.clone()).unwrap();
            for i in 0..50 {
                set(&db, &format!("k{i}"), i);
            }
        } // dropped, not closed: drop flushes too
        let db = Db::open(dir.path(), opts).unwrap();
        assert_eq!(db.keys(&Path::root()).unwrap().keys.len(), 50, "{sync}");
    }
}

#[test]
fn concurrent_commits_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        Db::open(
            dir.path(),
            StoreOptions {
                segment_bytes: 64 << 20,
                ..options()
            },
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for i in 0..50 {
                    set(&db, &format!("t{t}/k{i}"), i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = db.stats();
    assert_eq!(stats.commits, 32 * 50);
    assert!(stats.flushes < stats.commits, "no group commit: {stats:?}");
}

#[test]
fn rejected_transactions_log_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    set(&db, "a", 1);
    let stale = tarn_core::Read::value(p("a"), tarn_core::Time::ZERO);
    let err = db.commit(Txn::new(
        vec![stale],
        vec![tarn_core::Write::Set {
            path: p("a"),
            value: Value::Int(9),
        }],
    ));
    assert!(matches!(err, Err(tarn_store::CommitError::Txn(_))));
    assert_eq!(db.stats().commits, 1);
}

fn fill(db: &Db, n: i64) -> Vec<tarn_core::Time> {
    (0..n)
        .map(|i| {
            db.commit(Txn::set(
                p(&format!("k/{}", i % 17)),
                Value::str(&format!("value {i} {}", "x".repeat(100))),
            ))
            .unwrap()
            .time
        })
        .collect()
}

#[test]
fn archives_replace_segments_and_keep_history() {
    let dir = tempfile::tempdir().unwrap();
    let times;
    let before;
    {
        let db = Db::open(dir.path(), options()).unwrap();
        times = fill(&db, 300);
        let written = db.archive_now().unwrap();
        assert!(written >= 2, "several segments archived and merged");
        assert!(db.stats().segments_deleted >= 2);
        // Commits after archiving land in the WAL tail.
        set(&db, "after", 1);
        before = db.get(&Path::root()).unwrap().value;
        db.close().unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(
        segments <= 2,
        "archived segments were deleted, {segments} remain"
    );
    let db = Db::open(dir.path(), options()).unwrap();
    assert!(db.recovery().archived_versions >= 250);
    assert_eq!(db.get(&Path::root()).unwrap().value, before);
    // Time travel across the archive boundary (retention = forever).
    for (i, t) in times.iter().enumerate().step_by(37) {
        let want = Value::str(&format!("value {i} {}", "x".repeat(100)));
        assert_eq!(
            db.get_at(&p(&format!("k/{}", i % 17)), *t).unwrap().value,
            Some(want)
        );
    }
}

#[test]
fn a_horizon_trims_archived_history_but_keeps_latest_values() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        engine: EngineConfig {
            retention: Retention::HorizonMs(0),
            ..EngineConfig::default()
        },
        ..options()
    };
    let times;
    let latest;
    {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        times = fill(&db, 300);
        db.archive_now().unwrap();
        latest = db.get(&Path::root()).unwrap().value;
        db.close().unwrap();
    }
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.get(&Path::root()).unwrap().value, latest);
    assert!(matches!(
        db.get_at(&p("k/1"), times[1]),
        Err(StoreError::History(HistoryError::BeforeHorizon { .. }))
    ));
}

#[test]
fn background_and_explicit_archiving_do_not_race() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        archive: true,
        archive_interval_ms: 1,
        archive_merge_after: 2,
        ..options()
    };
    let expected;
    {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        for round in 0..20 {
            fill(&db, 40);
            set(&db, &format!("round/{round}"), round);
            db.archive_now().unwrap();
        }
        expected = db.get(&Path::root()).unwrap().value;
        db.close().unwrap();
    }
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.get(&Path::root()).unwrap().value, expected);
    let orphans: Vec<_> = std::fs::read_dir(dir.path().join("archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(orphans.len() <= 3, "archives pile up: {orphans:?}");
}

#[test]
fn the_feed_publishes_durable_commits_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let db = Arc::new(
        Db::open_with_feed(
            dir.path(),
            StoreOptions {
                sync: SyncPolicy::Batch(1),
                ..options()
            },
            Some(tx),
        )
        .unwrap(),
    );
    // Only commits some watch sees are published: watch t0..t3.
    for t in 0..4 {
        db.peek(|e| e.watch(p(&format!("t{t}")), tarn_core::WatchKind::Subtree))
            .unwrap()
            .0
            .unwrap();
    }
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for i in 0..100 {
                    set(&db, &format!("t{t}/k{i}"), i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // A read-only commit publishes nothing.
    db.commit(Txn::new(
        vec![tarn_core::Read::value(
            p("t0/k0"),
            db.get(&p("t0/k0")).unwrap().seen,
        )],
        vec![],
    ))
    .unwrap();
    let (mut last, mut last_lsn) = (tarn_core::Time::ZERO, 0);
    let mut n = 0;
    while let Ok((lsn, commit)) = rx.try_recv() {
        assert!(commit.time > last, "feed out of order");
        assert!(lsn > last_lsn, "lsns out of order");
        assert!(!commit.deliveries.is_empty());
        (last, last_lsn) = (commit.time, lsn);
        n += 1;
    }
    assert_eq!(n, 400, "the commits under t0..t3, and only those");
}

#[test]
fn submit_keeps_order_and_durable_waits_async() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    let a = db.submit(Txn::set(p("x"), Value::Int(1))).unwrap();
    let b = db.submit(Txn::set(p("x"), Value::Int(2))).unwrap();
    assert!(b.commit.time > a.commit.time && b.lsn > a.lsn);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(db.durable(b.lsn)).unwrap();
    db.wait(a.lsn).unwrap();
    drop(db);
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(get(&db, "x"), Some(Value::Int(2)));
}

#[test]
fn submit_all_decides_in_order_each_with_its_own_result() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    let first = db.submit(Txn::set(p("x"), Value::Int(1))).unwrap();
    let seen = first.commit.time;
    // The second overwrites x, so the third, which read x at `seen`, is
    // rejected; the fourth does not depend on it.
    let results = db.submit_all([
        Txn::set(p("y"), Value::Int(1)),
        Txn::set(p("x"), Value::Int(2)),
        Txn::new(
            vec![tarn_core::Read::value(p("x"), seen)],
            vec![tarn_core::Write::Set {
                path: p("z"),
                value: Value::Int(3),
            }],
        ),
        Txn::set(p("w"), Value::Int(4)),
    ]);
    assert_eq!(results.len(), 4);
    let ok: Vec<_> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, true]);
    let lsns: Vec<u64> = results.iter().flatten().map(|p| p.lsn).collect();
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "lsns in order: {lsns:?}"
    );
    let last = results.iter().flatten().last().unwrap();
    db.wait(last.lsn).unwrap();
    drop(db);
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(get(&db, "x"), Some(Value::Int(2)));
    assert_eq!(get(&db, "z"), None);
    assert_eq!(get(&db, "w"), Some(Value::Int(4)));
}
