//! The versioned store: time travel, compaction, resuming from history.

use tarn_core::{
    Engine, EngineConfig, HistoryError, Path, Read, Rejection, Retention, Time, Txn, TxnError,
};

use crate::support::{get, int, obj, p, set};

const MIN: u64 = 60_000;

fn engine_with_horizon(ms: u64) -> Engine {
    Engine::new(EngineConfig {
        retention: Retention::HorizonMs(ms),
        ..EngineConfig::default()
    })
}

#[test]
fn time_travel_reads_each_version() {
    let mut e = engine_with_horizon(10 * MIN);
    let t1 = set(&mut e, "a", int(1), 1_000).time;
    let t2 = set(&mut e, "a", int(2), 2_000).time;
    let t3 = set(&mut e, "a/b", int(3), 3_000).time;
    let s = e.store();
    assert_eq!(s.get_at(&p("a"), t1).unwrap().value, Some(int(1)));
    assert_eq!(s.get_at(&p("a"), t2).unwrap().value, Some(int(2)));
    assert_eq!(
        s.get_at(&p("a"), t3).unwrap().value,
        Some(obj([("b", int(3))]))
    );
    // Between commits: the newest version at or before the time.
    let between = Time {
        ms: 1_500,
        logical: 0,
        node: 0,
    };
    assert_eq!(s.get_at(&p("a"), between).unwrap().value, Some(int(1)));
    assert_eq!(s.get_at(&p("a"), between).unwrap().seen, t1);
    // Before the first write: absent.
    assert_eq!(s.get_at(&p("a"), Time::from_ms(500)).unwrap().value, None);
    assert_eq!(s.keys_at(&Path::root(), t1).unwrap().keys.len(), 1);
    assert!(s.keys_at(&p("a"), t2).unwrap().keys.is_empty());
    assert_eq!(s.keys_at(&p("a"), t3).unwrap().keys.len(), 1);
}

#[test]
fn reads_of_the_future_are_refused() {
    let mut e = engine_with_horizon(10 * MIN);
    let t1 = set(&mut e, "a", int(1), 1_000).time;
    let later = Time { ms: 5_000, ..t1 };
    assert_eq!(
        e.store().get_at(&p("a"), later),
        Err(HistoryError::AfterNewest {
            at: later,
            newest: t1
        })
    );
}

#[test]
fn time_travel_across_compaction() {
    let mut e = engine_with_horizon(10 * MIN);
    let t1 = set(&mut e, "a", int(1), MIN).time;
    let t2 = set(&mut e, "a", int(2), 2 * MIN).time;
    let _t3 = set(&mut e, "gone", int(9), 3 * MIN).time;
    let t4 = e
        .commit(
            Txn::new(vec![], vec![tarn_core::Write::Delete { path: p("gone") }]),
            4 * MIN,
        )
        .unwrap()
        .time;
    let t5 = set(&mut e, "a", int(5), 20 * MIN).time;
    let versions_before = e.store().stats().versions;

    // Horizon at 15 min: versions of `a` before it collapse into the golden
    // value (2, written at t2); `gone` (deleted at t4) disappears.
    e.compact(25 * MIN);
    let floor = e.store().floor();
    assert_eq!(floor, Time::from_ms(15 * MIN));
    assert!(e.store().stats().versions < versions_before);
    e.store().check_invariants().unwrap();

    let s = e.store();
    assert_eq!(s.get_at(&p("a"), floor).unwrap().value, Some(int(2)));
    assert_eq!(s.get_at(&p("a"), floor).unwrap().seen, t2);
    assert_eq!(s.get_at(&p("a"), t5).unwrap().value, Some(int(5)));
    assert_eq!(s.get_at(&p("gone"), floor).unwrap().value, None);
    assert_eq!(s.get(&p("a")).value, Some(int(5)));
    // Before the floor: a clear error, never a wrong answer.
    for t in [t1, t2, t4] {
        assert_eq!(
            s.get_at(&p("a"), t),
            Err(HistoryError::BeforeHorizon { at: t, floor })
        );
    }
    assert!(s.changes_since(&p("a"), true, t1).is_err());
    let since = s.changes_since(&p("a"), true, floor).unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].0, t5);
}

#[test]
fn a_read_from_before_compaction_of_a_deleted_path_is_rejected() {
    let mut e = engine_with_horizon(10 * MIN);
    let t1 = set(&mut e, "x", int(1), MIN).time;
    e.commit(
        Txn::new(vec![], vec![tarn_core::Write::Delete { path: p("x") }]),
        2 * MIN,
    )
    .unwrap();
    set(&mut e, "other", int(1), 30 * MIN);
    e.compact(30 * MIN);
    assert_eq!(
        e.store().stats().nodes,
        2,
        "x was removed: only the root and 'other' remain"
    );
    // A transaction that saw x = 1 long ago must not commit: x is gone.
    let txn = Txn::new(
        vec![Read::value(p("x"), t1)],
        vec![tarn_core::Write::Set {
            path: p("y"),
            value: int(1),
        }],
    );
    let err = e.commit(txn, 31 * MIN).unwrap_err();
    assert!(
        matches!(err, TxnError::Rejected(Rejection::Compacted { .. })),
        "{err}"
    );
    // One that saw it never written commits: it is absent now as then.
    let txn = Txn::new(
        vec![Read::value(p("x"), Time::ZERO)],
        vec![tarn_core::Write::Set {
            path: p("y"),
            value: int(1),
        }],
    );
    e.commit(txn, 31 * MIN).unwrap();
}

#[test]
fn forever_keeps_everything() {
    let mut e = Engine::new(EngineConfig {
        retention: Retention::Forever,
        ..EngineConfig::default()
    });
    let t1 = set(&mut e, "a", int(1), MIN).time;
    set(&mut e, "a", int(2), 100 * MIN);
    e.compact(1_000 * MIN);
    assert_eq!(e.store().floor(), Time::ZERO);
    assert_eq!(e.store().get_at(&p("a"), t1).unwrap().value, Some(int(1)));
}

#[test]
fn changes_since_gives_every_version_in_time_order() {
    let mut e = engine_with_horizon(10 * MIN);
    let t1 = set(&mut e, "r/a", int(1), 1).time;
    let t2 = set(&mut e, "r/b", int(2), 2).time;
    let t3 = set(&mut e, "r", int(3), 3).time; // deletes r/a and r/b
    set(&mut e, "elsewhere", int(4), 4);
    let all = e.store().changes_since(&p("r"), true, Time::ZERO).unwrap();
    let got: Vec<(Time, String, bool)> = all
        .iter()
        .map(|(t, c)| (*t, c.path.to_string(), c.value.is_some()))
        .collect();
    assert_eq!(
        got,
        vec![
            (t1, "r/a".into(), true),
            (t2, "r/b".into(), true),
            (t3, "r".into(), true),
            (t3, "r/a".into(), false),
            (t3, "r/b".into(), false),
        ]
    );
    let after = e.store().changes_since(&p("r"), true, t2).unwrap();
    assert_eq!(after.len(), 3);
    let exact = e
        .store()
        .changes_since(&p("r/a"), false, Time::ZERO)
        .unwrap();
    assert_eq!(exact.len(), 2);
}

#[test]
fn replay_rebuilds_the_same_store_and_clock() {
    let mut e = engine_with_horizon(10 * MIN);
    let mut log = Vec::new();
    for (i, (path, v)) in [
        ("a", int(1)),
        ("a/b", int(2)),
        ("c", obj([("d", int(3))])),
        ("a", int(4)),
    ]
    .into_iter()
    .enumerate()
    {
        let c = set(&mut e, path, v, 1_000 + i as u64);
        log.push((c.time, c.changes.to_vec()));
    }
    let mut r = engine_with_horizon(10 * MIN);
    for (time, changes) in &log {
        r.replay(*time, changes).unwrap();
    }
    assert_eq!(r.store().get(&Path::root()), e.store().get(&Path::root()));
    assert_eq!(r.store().stats(), e.store().stats());
    r.store().check_invariants().unwrap();
    // The clock resumes past the log even when the wall clock is behind.
    let next = set(&mut r, "z", int(0), 5).time;
    assert!(next > log.last().unwrap().0);
    assert_eq!(get(&r, "c/d"), Some(int(3)));
}

#[test]
fn replay_refuses_damaged_logs_without_changing_anything() {
    use tarn_core::{Change, ReplayError};
    let mut e = engine_with_horizon(10 * MIN);
    let t = set(&mut e, "a", int(1), 1_000).time;
    let before = e.store().get(&Path::root());
    assert!(matches!(
        e.replay(Time::from_ms(1), &[]),
        Err(ReplayError::OutOfOrder { .. })
    ));
    let far = Time {
        ms: u64::MAX,
        logical: u32::MAX,
        node: 1,
    };
    assert!(matches!(
        e.replay(far, &[]),
        Err(ReplayError::TimeOutOfRange { .. })
    ));
    let unsorted = [
        Change {
            path: p("b"),
            value: Some(int(1)),
        },
        Change {
            path: p("a/x"),
            value: Some(int(1)),
        },
    ];
    let later = Time { ms: t.ms + 1, ..t };
    assert!(matches!(
        e.replay(later, &unsorted),
        Err(ReplayError::Unsorted { .. })
    ));
    assert_eq!(e.store().get(&Path::root()), before);
    assert_eq!(e.newest(), t);
    // The engine still commits after the refusals.
    assert!(set(&mut e, "c", int(1), 2_000).time > t);
}

#[test]
fn leaves_pages_through_a_subtree_at_a_time() {
    let mut e = engine_with_horizon(10 * MIN);
    for i in 0..10 {
        set(&mut e, &format!("r/k{i}/v"), int(i), 1_000 + i as u64);
    }
    let t = e.newest();
    set(&mut e, "r/k3/v", int(99), 2_000);
    set(&mut e, "r/k5", obj([]), 2_001); // deleted after t
    let mut after: Option<Path> = None;
    let mut seen = Vec::new();
    loop {
        let page = e
            .store()
            .leaves(&p("r"), Some(t), after.as_ref(), 3)
            .unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        seen.extend(
            page.into_iter()
                .map(|(path, v)| (path.to_string(), v.value)),
        );
    }
    assert_eq!(seen.len(), 10);
    assert_eq!(seen[3], ("r/k3/v".to_string(), Some(int(3))));
    assert_eq!(seen[5], ("r/k5/v".to_string(), Some(int(5))));
    let now = e.store().leaves(&p("r"), None, None, 100).unwrap();
    assert_eq!(now.len(), 9);
    assert_eq!(now[3].1.value, Some(int(99)));
    // A page starting after a path outside the prefix.
    assert!(
        e.store()
            .leaves(&p("r"), None, Some(&p("s")), 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        e.store()
            .leaves(&p("r"), None, Some(&p("a")), 100)
            .unwrap()
            .len(),
        9
    );
}
