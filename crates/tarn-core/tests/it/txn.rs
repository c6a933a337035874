//! Transactions: validity, rejections that explain themselves, phantoms,
//! dependent transactions and their cascade, malformed input.

use tarn_core::{
    ClientId, InvalidTxn, Outcome, Path, Read, ReadKind, Rejection, Seen, Time, Txn, TxnError,
    TxnId, Write,
};

use crate::support::{engine, get, int, p, set};

fn w(path: &str, v: i64) -> Write {
    Write::Set {
        path: p(path),
        value: int(v),
    }
}

#[test]
fn a_current_read_commits_and_a_stale_one_is_rejected_with_reasons() {
    let mut e = engine();
    set(&mut e, "n", int(1), 1);
    let seen = e.store().get(&p("n")).seen;
    let t_other = set(&mut e, "n", int(10), 2).time;
    let txn = Txn::new(vec![Read::value(p("n"), seen)], vec![w("n", 2)]);
    let err = e.commit(txn, 3).unwrap_err();
    assert_eq!(
        err,
        TxnError::Rejected(Rejection::Conflict {
            path: p("n"),
            kind: ReadKind::Value,
            seen,
            newer: t_other,
        })
    );
    assert_eq!(get(&e, "n"), Some(int(10)));
    // Reading again and retrying commits.
    let seen = e.store().get(&p("n")).seen;
    let c = e
        .commit(
            Txn::new(vec![Read::value(p("n"), seen)], vec![w("n", 11)]),
            4,
        )
        .unwrap();
    assert!(c.time > t_other);
}

#[test]
fn commit_times_increase_even_when_the_wall_clock_goes_back() {
    let mut e = engine();
    let mut last = Time::ZERO;
    for wall in [100, 50, 50, 10, 200, 0] {
        let t = set(&mut e, "x", int(1), wall).time;
        assert!(t > last);
        last = t;
    }
}

#[test]
fn a_write_under_a_read_path_conflicts() {
    let mut e = engine();
    // Read `a` when absent; someone creates a/b: a is now an object.
    let seen = e.store().get(&p("a")).seen;
    set(&mut e, "a/b", int(1), 1);
    let err = e.commit(
        Txn::new(vec![Read::value(p("a"), seen)], vec![w("x", 1)]),
        2,
    );
    assert!(matches!(
        err,
        Err(TxnError::Rejected(Rejection::Conflict { .. }))
    ));
}

#[test]
fn an_unrelated_write_does_not_conflict() {
    let mut e = engine();
    set(&mut e, "a/x", int(1), 1);
    let seen = e.store().get(&p("a/x")).seen;
    set(&mut e, "a/y", int(1), 2);
    set(&mut e, "b", int(1), 3);
    e.commit(
        Txn::new(vec![Read::value(p("a/x"), seen)], vec![w("a/x", 2)]),
        4,
    )
    .unwrap();
}

#[test]
fn phantoms_are_rejected() {
    let mut e = engine();
    set(&mut e, "players/alice", int(1), 1);
    // Count the players, then write the count.
    let keys = e.store().keys(&p("players"));
    assert_eq!(keys.keys.len(), 1);
    // A new player joins: a phantom for the count.
    set(&mut e, "players/bob", int(1), 2);
    let txn = Txn::new(
        vec![Read::subtree(p("players"), keys.seen)],
        vec![w("count", 1)],
    );
    let err = e.commit(txn, 3).unwrap_err();
    assert!(matches!(
        err,
        TxnError::Rejected(Rejection::Conflict {
            kind: ReadKind::Subtree,
            ..
        })
    ));
    // A deletion under the prefix is caught too.
    let keys = e.store().keys(&p("players"));
    e.commit(
        Txn::new(
            vec![],
            vec![Write::Delete {
                path: p("players/alice"),
            }],
        ),
        4,
    )
    .unwrap();
    let txn = Txn::new(
        vec![Read::subtree(p("players"), keys.seen)],
        vec![w("count", 2)],
    );
    assert!(e.commit(txn, 5).is_err());
}

#[test]
fn read_only_transactions_commit_and_are_ordered() {
    let mut e = engine();
    set(&mut e, "a", int(1), 1);
    let seen = e.store().get(&p("a")).seen;
    let c = e
        .commit(Txn::new(vec![Read::value(p("a"), seen)], vec![]), 2)
        .unwrap();
    assert!(c.time > seen);
    assert!(c.changes.is_empty());
}

#[test]
fn duplicates_and_bad_input_are_refused_and_change_nothing() {
    let mut e = engine();
    set(&mut e, "a", int(1), 1);
    let seen = e.store().get(&p("a")).seen;
    let before = (e.store().get(&Path::root()), e.newest());

    let twice = Txn::new(
        vec![Read::value(p("a"), seen), Read::subtree(p("a"), seen)],
        vec![w("b", 1)],
    );
    assert_eq!(
        e.commit(twice, 2),
        Err(TxnError::Invalid(InvalidTxn::DuplicateRead {
            path: p("a")
        }))
    );
    // Long lists take the hashed path of the duplicate check.
    let mut reads: Vec<Read> = (0..20)
        .map(|i| Read::value(p(&format!("r{i}")), Time::ZERO))
        .collect();
    reads.push(Read::value(p("r7"), Time::ZERO));
    assert!(matches!(
        e.commit(Txn::new(reads, vec![w("b", 1)]), 2),
        Err(TxnError::Invalid(InvalidTxn::DuplicateRead { .. }))
    ));
    let twice = Txn::new(vec![], vec![w("b", 1), w("b", 2)]);
    assert_eq!(
        e.commit(twice, 2),
        Err(TxnError::Invalid(InvalidTxn::DuplicateWrite {
            path: p("b")
        }))
    );
    let future = Time {
        ms: 1 << 40,
        logical: 0,
        node: 1,
    };
    assert!(matches!(
        e.commit(
            Txn::new(vec![Read::value(p("a"), future)], vec![w("b", 1)]),
            2
        ),
        Err(TxnError::Invalid(InvalidTxn::SeenInFuture { .. }))
    ));
    assert_eq!(before, (e.store().get(&Path::root()), e.newest()));
}

#[test]
fn transaction_limits_are_enforced() {
    let mut e = tarn_core::Engine::new(tarn_core::EngineConfig {
        txns: tarn_core::TxnLimits {
            max_reads: 2,
            max_writes: 2,
            max_leaves: 3,
            max_bytes: 10,
            max_dependencies: 1,
            max_changes: 1_000_000,
        },
        ..tarn_core::EngineConfig::default()
    });
    let reads = (0..3)
        .map(|i| Read::value(p(&format!("r{i}")), Time::ZERO))
        .collect();
    assert!(matches!(
        e.commit(Txn::new(reads, vec![]), 1),
        Err(TxnError::Invalid(InvalidTxn::TooManyReads {
            count: 3,
            max: 2
        }))
    ));
    let writes = (0..3).map(|i| w(&format!("w{i}"), 1)).collect();
    assert!(matches!(
        e.commit(Txn::new(vec![], writes), 1),
        Err(TxnError::Invalid(InvalidTxn::TooManyWrites {
            count: 3,
            max: 2
        }))
    ));
    let four: tarn_core::Value = (0..4).map(|i| (format!("k{i}"), int(1))).collect();
    assert!(matches!(
        e.commit(Txn::set(p("o"), four), 1),
        Err(TxnError::Invalid(InvalidTxn::TooManyLeaves {
            count: 4,
            max: 3
        }))
    ));
    assert!(matches!(
        e.commit(Txn::set(p("s"), tarn_core::Value::str("0123456789")), 1),
        Err(TxnError::Invalid(InvalidTxn::TooLarge {
            bytes: 12,
            max: 10
        }))
    ));
    assert_eq!(e.newest(), Time::ZERO);
}

#[test]
fn paths_over_the_engine_limits_are_refused() {
    let mut e = tarn_core::Engine::new(tarn_core::EngineConfig {
        paths: tarn_core::PathLimits {
            max_depth: 2,
            ..tarn_core::PathLimits::default()
        },
        ..tarn_core::EngineConfig::default()
    });
    assert!(matches!(
        e.commit(Txn::set(p("a/b/c"), int(1)), 1),
        Err(TxnError::Invalid(InvalidTxn::BadPath { .. }))
    ));
    assert!(matches!(
        e.commit(
            Txn::new(vec![Read::value(p("a/b/c"), Time::ZERO)], vec![]),
            1
        ),
        Err(TxnError::Invalid(InvalidTxn::BadPath { .. }))
    ));
    // An object whose leaves end up too deep.
    let nested: tarn_core::Value = [(
        "b",
        [("c", int(1))].into_iter().collect::<tarn_core::Value>(),
    )]
    .into_iter()
    .collect();
    assert!(e.commit(Txn::set(p("a"), nested), 1).is_err());
    assert_eq!(e.newest(), Time::ZERO);
}

fn id(client: u64, seq: u64) -> TxnId {
    TxnId {
        client: ClientId(client),
        seq,
    }
}

fn with_id(mut txn: Txn, tid: TxnId) -> Txn {
    txn.id = Some(tid);
    txn
}

#[test]
fn dependent_transactions_commit_after_their_dependency() {
    let mut e = engine();
    // Client 1 predicts n = 1, then reads its own prediction and writes n = 2.
    let p1 = with_id(Txn::set(p("n"), int(1)), id(1, 1));
    let p2 = with_id(
        Txn::new(
            vec![Read {
                path: p("n"),
                kind: ReadKind::Value,
                seen: Seen::Pending {
                    on: id(1, 1),
                    base: Time::ZERO,
                },
            }],
            vec![w("n", 2)],
        ),
        id(1, 2),
    );
    let t1 = e.commit(p1, 1).unwrap().time;
    let t2 = e.commit(p2, 2).unwrap().time;
    assert!(t2 > t1);
    assert_eq!(get(&e, "n"), Some(int(2)));
    assert_eq!(e.outcome(id(1, 1)), Some(Outcome::Committed(t1)));
}

#[test]
fn a_rejection_cascades_to_dependents_only() {
    let mut e = engine();
    set(&mut e, "n", int(0), 1);
    let stale = e.store().get(&p("n")).seen;
    set(&mut e, "n", int(100), 2); // another client wins the race

    let pending_n = |seq| Read {
        path: p("n"),
        kind: ReadKind::Value,
        seen: Seen::Pending {
            on: id(1, seq),
            base: stale,
        },
    };
    // 1: read n (stale) and increment: rejected by the conflict.
    let t1 = with_id(
        Txn::new(vec![Read::value(p("n"), stale)], vec![w("n", 1)]),
        id(1, 1),
    );
    // 2: independent of 1: commits.
    let t2 = with_id(Txn::set(p("other"), int(7)), id(1, 2));
    // 3: read 1's predicted n: rejected with 1.
    let t3 = with_id(Txn::new(vec![pending_n(1)], vec![w("n", 2)]), id(1, 3));
    // 4: depends on 3 (explicitly): rejected in turn.
    let mut t4 = with_id(Txn::set(p("m"), int(1)), id(1, 4));
    t4.depends_on = vec![id(1, 3)];
    // 5: depends on 2: commits.
    let t5 = with_id(
        Txn::new(
            vec![Read {
                path: p("other"),
                kind: ReadKind::Value,
                seen: Seen::Pending {
                    on: id(1, 2),
                    base: Time::ZERO,
                },
            }],
            vec![w("other", 8)],
        ),
        id(1, 5),
    );

    assert!(matches!(
        e.commit(t1, 3),
        Err(TxnError::Rejected(Rejection::Conflict { .. }))
    ));
    e.commit(t2, 4).unwrap();
    assert_eq!(
        e.commit(t3, 5),
        Err(TxnError::Rejected(Rejection::Dependency { on: id(1, 1) }))
    );
    assert_eq!(
        e.commit(t4, 6),
        Err(TxnError::Rejected(Rejection::Dependency { on: id(1, 3) }))
    );
    e.commit(t5, 7).unwrap();
    assert_eq!(get(&e, "n"), Some(int(100)));
    assert_eq!(get(&e, "other"), Some(int(8)));
    assert_eq!(get(&e, "m"), None);
}

#[test]
fn a_dependency_read_still_checks_for_newer_writes() {
    let mut e = engine();
    e.commit(with_id(Txn::set(p("n"), int(1)), id(1, 1)), 1)
        .unwrap();
    set(&mut e, "n", int(50), 2); // someone else writes after our commit
    let t2 = with_id(
        Txn::new(
            vec![Read {
                path: p("n"),
                kind: ReadKind::Value,
                seen: Seen::Pending {
                    on: id(1, 1),
                    base: Time::ZERO,
                },
            }],
            vec![w("n", 2)],
        ),
        id(1, 2),
    );
    assert!(matches!(
        e.commit(t2, 3),
        Err(TxnError::Rejected(Rejection::Conflict { .. }))
    ));
}

#[test]
fn dependency_errors_are_typed() {
    let mut e = engine();
    e.commit(with_id(Txn::set(p("a"), int(1)), id(1, 1)), 1)
        .unwrap();
    let mut foreign = with_id(Txn::set(p("b"), int(1)), id(2, 1));
    foreign.depends_on = vec![id(1, 1)];
    assert!(matches!(
        e.commit(foreign, 2),
        Err(TxnError::Invalid(InvalidTxn::ForeignDependency { .. }))
    ));
    let mut later = with_id(Txn::set(p("b"), int(1)), id(1, 2));
    later.depends_on = vec![id(1, 3)];
    assert!(matches!(
        e.commit(later, 2),
        Err(TxnError::Invalid(InvalidTxn::DependencyNotEarlier { .. }))
    ));
    let mut unsent = with_id(Txn::set(p("b"), int(1)), id(3, 5));
    unsent.depends_on = vec![id(3, 4)];
    assert!(matches!(
        e.commit(unsent, 2),
        Err(TxnError::Invalid(InvalidTxn::DependencyNotSubmitted { .. }))
    ));
    let mut no_id = Txn::set(p("b"), int(1));
    no_id.depends_on = vec![id(1, 1)];
    assert_eq!(
        e.commit(no_id, 2),
        Err(TxnError::Invalid(InvalidTxn::MissingId))
    );
}

#[test]
fn a_retry_gets_the_recorded_outcome() {
    let mut e = engine();
    let txn = with_id(Txn::set(p("a"), int(1)), id(1, 1));
    let t = e.commit(txn.clone(), 1).unwrap().time;
    assert_eq!(
        e.commit(txn, 2),
        Err(TxnError::Invalid(InvalidTxn::AlreadyDecided {
            id: id(1, 1),
            outcome: Outcome::Committed(t)
        }))
    );
    assert_eq!(e.newest(), t, "the retry wrote nothing");
}

#[test]
fn forgotten_outcomes_are_not_trusted() {
    let mut e = tarn_core::Engine::new(tarn_core::EngineConfig {
        max_outcomes_per_client: 2,
        ..tarn_core::EngineConfig::default()
    });
    for seq in 1..=3 {
        e.commit(with_id(Txn::set(p("a"), int(seq as i64)), id(1, seq)), seq)
            .unwrap();
    }
    let mut t = with_id(Txn::set(p("b"), int(1)), id(1, 4));
    t.depends_on = vec![id(1, 1)];
    assert_eq!(
        e.commit(t, 5),
        Err(TxnError::Rejected(Rejection::DependencyForgotten {
            on: id(1, 1)
        }))
    );
    // Out of order: seq 1 again, its outcome gone.
    assert!(matches!(
        e.commit(with_id(Txn::set(p("c"), int(1)), id(1, 1)), 6),
        Err(TxnError::Invalid(InvalidTxn::OutOfOrder { .. }))
    ));
    e.forget_client(ClientId(1));
    assert_eq!(e.outcome(id(1, 3)), None);
}

/// A client reads its own predicted patch of `a` and writes from it. If
/// another client wrote under `a` after the client's base but before the
/// prediction committed, the read saw a state that never existed.
#[test]
fn a_pending_read_does_not_hide_earlier_writes() {
    let mut e = engine();
    set(&mut e, "a/x", int(1), 1);
    let base = e.store().get(&p("a")).seen;
    let p1 = with_id(
        Txn::new(
            vec![],
            vec![Write::Patch {
                path: p("a"),
                value: crate::support::obj([("y", int(1))]),
            }],
        ),
        id(1, 1),
    );
    let p2 = with_id(
        Txn::new(
            vec![Read {
                path: p("a"),
                kind: ReadKind::Value,
                seen: Seen::Pending { on: id(1, 1), base },
            }],
            vec![w("sum", 2)],
        ),
        id(1, 2),
    );
    let other = set(&mut e, "a/x", int(10), 2).time; // another client, before p1 arrives
    e.commit(p1, 3).unwrap();
    assert_eq!(
        e.commit(p2, 4),
        Err(TxnError::Rejected(Rejection::Conflict {
            path: p("a"),
            kind: ReadKind::Value,
            seen: base,
            newer: other
        }))
    );
}

/// Without interference, the same chain commits: the dependency's own
/// write under the read path is allowed.
#[test]
fn a_pending_read_of_a_partial_write_commits_when_undisturbed() {
    let mut e = engine();
    set(&mut e, "a/x", int(1), 1);
    let base = e.store().get(&p("a")).seen;
    let p1 = with_id(
        Txn::new(
            vec![],
            vec![Write::Patch {
                path: p("a"),
                value: crate::support::obj([("y", int(1))]),
            }],
        ),
        id(1, 1),
    );
    let p2 = with_id(
        Txn::new(
            vec![Read {
                path: p("a"),
                kind: ReadKind::Value,
                seen: Seen::Pending { on: id(1, 1), base },
            }],
            vec![w("sum", 2)],
        ),
        id(1, 2),
    );
    set(&mut e, "b", int(10), 2); // unrelated
    e.commit(p1, 3).unwrap();
    e.commit(p2, 4).unwrap();
    assert_eq!(get(&e, "sum"), Some(int(2)));
}

#[test]
fn deleting_a_huge_subtree_is_refused_before_anything_changes() {
    let mut e = tarn_core::Engine::new(tarn_core::EngineConfig {
        txns: tarn_core::TxnLimits {
            max_changes: 50,
            ..tarn_core::TxnLimits::default()
        },
        ..tarn_core::EngineConfig::default()
    });
    let many: tarn_core::Value = (0..40).map(|i| (format!("k{i}"), int(i))).collect();
    e.commit(Txn::set(p("big"), many.clone()), 1).unwrap();
    e.commit(Txn::set(p("big2"), many), 2).unwrap();
    let before = e.store().get(&Path::root());
    let txn = Txn::new(
        vec![],
        vec![
            Write::Delete { path: p("big") },
            Write::Delete { path: p("big2") },
        ],
    );
    assert!(matches!(
        e.commit(txn, 3),
        Err(TxnError::Invalid(InvalidTxn::TooManyChanges {
            count: 80,
            max: 50
        }))
    ));
    assert_eq!(e.store().get(&Path::root()), before);
    // In parts, it works.
    e.commit(Txn::new(vec![], vec![Write::Delete { path: p("big") }]), 4)
        .unwrap();
}

#[test]
fn a_seq_skipped_inside_the_kept_window_reads_as_rejected() {
    let mut e = engine();
    e.commit(with_id(Txn::set(p("a"), int(1)), id(1, 1)), 1)
        .unwrap();
    e.commit(with_id(Txn::set(p("a"), int(3)), id(1, 3)), 2)
        .unwrap();
    // Seq 2 was never decided as a commit: nothing was written by it.
    assert_eq!(
        e.commit(with_id(Txn::set(p("a"), int(2)), id(1, 2)), 3),
        Err(TxnError::Invalid(InvalidTxn::AlreadyDecided {
            id: id(1, 2),
            outcome: Outcome::Rejected
        }))
    );
}

#[test]
fn replayed_commits_keep_their_outcomes() {
    let mut e = engine();
    let c = e
        .commit(with_id(Txn::set(p("a"), int(1)), id(7, 4)), 1)
        .unwrap();
    let mut fresh = engine();
    fresh.replay_logged(c.time, c.id, &c.changes).unwrap();
    assert_eq!(
        fresh.commit(with_id(Txn::set(p("a"), int(1)), id(7, 4)), 2),
        Err(TxnError::Invalid(InvalidTxn::AlreadyDecided {
            id: id(7, 4),
            outcome: Outcome::Committed(c.time)
        }))
    );
    // A client idle past the history horizon is forgotten with it.
    fresh.compact_to(tarn_core::Time::from_ms(c.time.ms + 1));
    assert_eq!(fresh.outcome(id(7, 4)), None);
    assert!(
        fresh
            .commit(with_id(Txn::set(p("b"), int(1)), id(7, 5)), 3)
            .is_ok()
    );
}

/// The client read its dependency's prediction over a base that already
/// held it and a newer write by someone else: laying the prediction over
/// again would hide that write. Refused.
#[test]
fn a_pending_read_over_a_base_newer_than_its_dependency_is_refused() {
    let mut e = engine();
    let p1 = with_id(Txn::new(vec![], vec![w("x", 1)]), id(1, 1));
    e.commit(p1, 1).unwrap();
    let other = set(&mut e, "x", int(2), 2).time;
    // The client's base is after both; it overlays p1's x = 1 again.
    let p2 = with_id(
        Txn::new(
            vec![Read {
                path: p("x"),
                kind: ReadKind::Value,
                seen: Seen::Pending {
                    on: id(1, 1),
                    base: other,
                },
            }],
            vec![w("x", 2)],
        ),
        id(1, 2),
    );
    assert!(matches!(
        e.commit(p2, 3),
        Err(TxnError::Rejected(Rejection::Conflict { .. }))
    ));
    // Undisturbed, the same shape commits.
    let q1 = with_id(Txn::new(vec![], vec![w("y", 1)]), id(2, 1));
    let t1 = e.commit(q1, 4).unwrap().time;
    let q2 = with_id(
        Txn::new(
            vec![Read {
                path: p("y"),
                kind: ReadKind::Value,
                seen: Seen::Pending {
                    on: id(2, 1),
                    base: t1,
                },
            }],
            vec![w("y", 2)],
        ),
        id(2, 2),
    );
    e.commit(q2, 5).unwrap();
}

#[test]
fn a_dependency_refused_before_the_engine_reads_as_rejected() {
    let mut e = engine();
    e.commit(with_id(Txn::set(p("a"), int(1)), id(1, 1)), 1)
        .unwrap();
    e.commit(with_id(Txn::set(p("a"), int(3)), id(1, 3)), 2)
        .unwrap();
    // Seq 2 never reached the engine (refused at the edge).
    let mut t = with_id(Txn::set(p("b"), int(1)), id(1, 4));
    t.depends_on = vec![id(1, 2)];
    assert_eq!(
        e.commit(t, 3),
        Err(TxnError::Rejected(Rejection::Dependency { on: id(1, 2) }))
    );
}
