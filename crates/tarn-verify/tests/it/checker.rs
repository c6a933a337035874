//! Hand-made histories, one per anomaly: the checker must name each, and
//! pass clean ones.

use proptest::prelude::*;
use tarn_verify::{AnomalyKind, CheckOptions, History, Mop, Observed, Outcome, Workload, check};

fn a(key: u64, value: i64) -> Mop {
    Mop::Append { key, value }
}

fn r(key: u64, list: &[i64]) -> Mop {
    Mop::Read {
        key,
        value: Observed::List(list.to_vec()),
    }
}

fn w(key: u64, value: i64) -> Mop {
    Mop::Write { key, value }
}

fn rr(key: u64, value: Option<i64>) -> Mop {
    Mop::Read {
        key,
        value: Observed::Register(value),
    }
}

/// Operations all concurrent (invoked at 0, completed at 100): only the
/// data orders them.
fn concurrent(workload: Workload, txns: Vec<(Outcome, Vec<Mop>)>) -> History {
    let mut h = History::new(workload);
    for (i, (outcome, mops)) in txns.into_iter().enumerate() {
        h.push(i as u64, outcome, mops, 0, Some(100));
    }
    h
}

fn ok(mops: Vec<Mop>) -> (Outcome, Vec<Mop>) {
    (Outcome::Ok, mops)
}

fn kinds(h: &History) -> Vec<AnomalyKind> {
    let report = check(h, CheckOptions::default()).expect("a well-formed history");
    println!("{report}");
    report.counts.keys().copied().collect()
}

fn assert_names(h: &History, kind: AnomalyKind) {
    let report = check(h, CheckOptions::default()).expect("a well-formed history");
    println!("{report}");
    assert!(report.has(kind), "expected {kind}, got {report}");
    let example = report
        .examples
        .iter()
        .find(|e| e.kind == kind)
        .expect("an example of each kind found");
    assert!(
        !example.ops.is_empty(),
        "the offending transactions are named"
    );
    assert!(
        example
            .explanation
            .contains(&format!("T{}", example.ops[0])),
        "the explanation prints the transactions: {}",
        example.explanation
    );
}

#[test]
fn a_clean_list_append_history_passes() {
    let mut h = History::new(Workload::ListAppend);
    h.push(0, Outcome::Ok, vec![a(1, 1), r(1, &[1])], 0, Some(10));
    h.push(
        1,
        Outcome::Ok,
        vec![r(1, &[1]), a(1, 2), a(2, 3)],
        20,
        Some(30),
    );
    h.push(0, Outcome::Fail, vec![a(1, 4)], 25, Some(35));
    h.push(2, Outcome::Info, vec![a(2, 5)], 25, None);
    h.push(
        1,
        Outcome::Ok,
        vec![r(1, &[1, 2]), r(2, &[3, 5])],
        40,
        Some(50),
    );
    assert_eq!(kinds(&h), Vec::<AnomalyKind>::new());
}

#[test]
fn g0_write_cycle() {
    let h = concurrent(
        Workload::ListAppend,
        vec![
            ok(vec![a(1, 1), a(2, 11)]),
            ok(vec![a(1, 2), a(2, 12)]),
            ok(vec![r(1, &[1, 2]), r(2, &[12, 11])]),
        ],
    );
    assert_names(&h, AnomalyKind::G0);
}

#[test]
fn g1a_aborted_read() {
    let h = concurrent(
        Workload::ListAppend,
        vec![(Outcome::Fail, vec![a(1, 1)]), ok(vec![r(1, &[1])])],
    );
    assert_names(&h, AnomalyKind::G1a);
}

#[test]
fn g1b_intermediate_read() {
    let h = concurrent(
        Workload::ListAppend,
        vec![ok(vec![a(1, 1), a(1, 2)]), ok(vec![r(1, &[1])])],
    );
    assert_names(&h, AnomalyKind::G1b);
}

#[test]
fn g1c_circular_information_flow() {
    let h = concurrent(
        Workload::ListAppend,
        vec![ok(vec![a(1, 1), r(2, &[2])]), ok(vec![a(2, 2), r(1, &[1])])],
    );
    assert_names(&h, AnomalyKind::G1c);
}

#[test]
fn g_single_read_skew() {
    let h = concurrent(
        Workload::ListAppend,
        vec![
            ok(vec![r(1, &[]), r(2, &[2])]),
            ok(vec![a(1, 1), a(2, 2)]),
            ok(vec![r(1, &[1])]),
        ],
    );
    assert_names(&h, AnomalyKind::GSingle);
}

#[test]
fn g2_write_skew() {
    let h = concurrent(
        Workload::ListAppend,
        vec![
            ok(vec![r(1, &[]), a(2, 2)]),
            ok(vec![r(2, &[]), a(1, 1)]),
            ok(vec![r(1, &[1]), r(2, &[2])]),
        ],
    );
    let report = check(&h, CheckOptions::default()).expect("well formed");
    assert!(report.has(AnomalyKind::G2), "{report}");
    assert!(!report.has(AnomalyKind::GSingle), "{report}");
}

#[test]
fn lost_update() {
    let h = concurrent(
        Workload::ListAppend,
        vec![
            ok(vec![r(1, &[]), a(1, 1)]),
            ok(vec![r(1, &[]), a(1, 2)]),
            ok(vec![r(1, &[1, 2])]),
        ],
    );
    assert_names(&h, AnomalyKind::LostUpdate);
}

#[test]
fn lost_acknowledged_write() {
    let mut h = History::new(Workload::ListAppend);
    h.push(0, Outcome::Ok, vec![a(1, 1)], 0, Some(10));
    let fin = h.push(1, Outcome::Ok, vec![r(1, &[])], 20, Some(30));
    h.ops[fin].final_read = true;
    assert_names(&h, AnomalyKind::LostAckedWrite);
}

#[test]
fn stale_read_only_under_strict_serializability() {
    let mut h = History::new(Workload::ListAppend);
    h.push(0, Outcome::Ok, vec![a(1, 1)], 0, Some(10));
    h.push(1, Outcome::Ok, vec![r(1, &[])], 20, Some(30));
    h.push(2, Outcome::Ok, vec![r(1, &[1])], 40, Some(50));
    assert_names(&h, AnomalyKind::StaleRead);
    let serializable = check(
        &h,
        CheckOptions {
            strict: false,
            ..CheckOptions::default()
        },
    )
    .expect("well formed");
    assert!(serializable.is_valid(), "{serializable}");
}

#[test]
fn stale_read_through_a_longer_cycle() {
    // T0 completes before T1 begins, T1 before T2; T2 misses T0's
    // append: no single edge is inverted, the cycle goes through time.
    let mut h = History::new(Workload::ListAppend);
    h.push(0, Outcome::Ok, vec![a(1, 1)], 0, Some(10));
    h.push(1, Outcome::Ok, vec![a(2, 2)], 20, Some(30));
    h.push(2, Outcome::Ok, vec![r(1, &[]), r(2, &[2])], 40, Some(50));
    h.push(3, Outcome::Ok, vec![r(1, &[1])], 60, Some(70));
    assert_names(&h, AnomalyKind::StaleRead);
}

#[test]
fn garbage_duplicates_incompatible_orders_and_internal_reads() {
    let h = concurrent(
        Workload::ListAppend,
        vec![
            ok(vec![a(1, 1), a(1, 2)]),
            ok(vec![r(1, &[9])]),
            ok(vec![r(1, &[1, 2, 1])]),
            ok(vec![r(1, &[2])]),
            ok(vec![a(1, 3), r(1, &[1])]),
        ],
    );
    let found = kinds(&h);
    for kind in [
        AnomalyKind::GarbageRead,
        AnomalyKind::DuplicateElements,
        AnomalyKind::IncompatibleOrder,
        AnomalyKind::Internal,
    ] {
        assert!(found.contains(&kind), "{kind} not in {found:?}");
    }
}

#[test]
fn rw_register_anomalies() {
    let clean = concurrent(
        Workload::RwRegister,
        vec![
            ok(vec![rr(1, None), w(1, 1)]),
            ok(vec![rr(1, Some(1)), w(1, 2)]),
            ok(vec![rr(1, Some(2))]),
        ],
    );
    assert_eq!(kinds(&clean), Vec::<AnomalyKind>::new());

    let lost = concurrent(
        Workload::RwRegister,
        vec![
            ok(vec![rr(1, Some(1)), w(1, 2)]),
            ok(vec![rr(1, Some(1)), w(1, 3)]),
            ok(vec![w(1, 1)]),
        ],
    );
    assert_names(&lost, AnomalyKind::LostUpdate);
    assert_names(&lost, AnomalyKind::G2);

    let aborted = concurrent(
        Workload::RwRegister,
        vec![(Outcome::Fail, vec![w(1, 1)]), ok(vec![rr(1, Some(1))])],
    );
    assert_names(&aborted, AnomalyKind::G1a);

    let intermediate = concurrent(
        Workload::RwRegister,
        vec![ok(vec![w(1, 1), w(1, 2)]), ok(vec![rr(1, Some(1))])],
    );
    assert_names(&intermediate, AnomalyKind::G1b);

    // Read skew: T0 sees the initial x but T1's y; T1 wrote both.
    let skew = concurrent(
        Workload::RwRegister,
        vec![
            ok(vec![rr(1, None), rr(2, Some(2))]),
            ok(vec![w(1, 1), w(2, 2)]),
        ],
    );
    assert_names(&skew, AnomalyKind::GSingle);
}

#[test]
fn malformed_histories_are_refused_with_a_reason() {
    let twice = concurrent(
        Workload::ListAppend,
        vec![ok(vec![a(1, 1)]), ok(vec![a(1, 1)])],
    );
    let e = check(&twice, CheckOptions::default()).expect_err("a value written twice");
    assert!(e.to_string().contains("unique"), "{e}");
    let wrong = concurrent(Workload::ListAppend, vec![ok(vec![w(1, 1)])]);
    assert!(check(&wrong, CheckOptions::default()).is_err());
}

#[test]
fn histories_round_trip_through_json_lines() {
    let mut h = History::new(Workload::ListAppend);
    h.push(0, Outcome::Ok, vec![a(1, 1), r(1, &[1])], 0, Some(10));
    h.push(1, Outcome::Info, vec![a(2, 2)], 5, None);
    let text = h.to_json_lines();
    assert_eq!(History::from_json_lines(&text).expect("parses"), h);
    assert!(History::from_json_lines("").is_err());
    assert!(History::from_json_lines("{\"workload\":\"list-append\"}\n{").is_err());
}

/// Runs random transactions one after another on a model and records
/// what they saw: a strictly serializable history by construction.
fn serial_history(txns: &[Vec<(bool, u64)>]) -> History {
    let mut lists: std::collections::HashMap<u64, Vec<i64>> = Default::default();
    let mut h = History::new(Workload::ListAppend);
    let mut next = 0;
    for (i, txn) in txns.iter().enumerate() {
        let mut mops = Vec::new();
        for (append, key) in txn {
            if *append {
                next += 1;
                lists.entry(*key).or_default().push(next);
                mops.push(a(*key, next));
            } else {
                mops.push(r(*key, lists.get(key).map_or(&[][..], Vec::as_slice)));
            }
        }
        let t = i as u64 * 10;
        h.push(i as u64 % 4, Outcome::Ok, mops, t, Some(t + 5));
    }
    h
}

proptest! {
    #[test]
    fn serial_executions_are_clean(
        txns in prop::collection::vec(prop::collection::vec((any::<bool>(), 0u64..4), 1..5), 1..60)
    ) {
        let h = serial_history(&txns);
        let report = check(&h, CheckOptions::default()).expect("well formed");
        prop_assert!(report.is_valid(), "{}", report);
    }

    #[test]
    fn a_read_moved_back_in_time_is_caught(
        txns in prop::collection::vec(prop::collection::vec((any::<bool>(), 0u64..3), 1..5), 4..40),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut h = serial_history(&txns);
        // Make one non-empty read see one fewer element: what a skipped
        // read check lets through.
        let reads: Vec<(usize, usize)> = h.ops.iter().enumerate().flat_map(|(i, op)| {
            op.mops.iter().enumerate().filter_map(move |(j, m)| match m {
                Mop::Read { value: Observed::List(l), .. } if !l.is_empty() => Some((i, j)),
                _ => None,
            })
        }).collect();
        prop_assume!(!reads.is_empty());
        let (i, j) = reads[pick.index(reads.len())];
        let own: Vec<i64> = h.ops[i].mops[..j].iter().filter_map(|m| match m {
            Mop::Append { value, .. } => Some(*value),
            _ => None,
        }).collect();
        if let Mop::Read { value: Observed::List(l), .. } = &mut h.ops[i].mops[j] {
            // Only reads of others' writes: dropping an own append would
            // be an internal anomaly instead.
            prop_assume!(l.last().is_some_and(|v| !own.contains(v)));
            l.pop();
        }
        let report = check(&h, CheckOptions::default()).expect("well formed");
        prop_assert!(!report.is_valid(), "a stale read went unnoticed");
    }
}

#[test]
fn reading_ones_own_future_write_is_internal() {
    let lists = concurrent(Workload::ListAppend, vec![ok(vec![r(1, &[5]), a(1, 5)])]);
    assert_names(&lists, AnomalyKind::Internal);
    let registers = concurrent(
        Workload::RwRegister,
        vec![ok(vec![rr(1, Some(5)), w(1, 5)])],
    );
    assert_names(&registers, AnomalyKind::Internal);
}

#[test]
fn an_intermediate_read_is_found_before_the_readers_own_appends() {
    // T1 saw T0's first append, then its own: the list ends with its own
    // value, but what it saw from outside ends at T0's intermediate one.
    let h = concurrent(
        Workload::ListAppend,
        vec![ok(vec![a(1, 1), a(1, 2)]), ok(vec![a(1, 3), r(1, &[1, 3])])],
    );
    assert_names(&h, AnomalyKind::G1b);
}

#[test]
fn a_register_read_missing_an_earlier_blind_write_is_stale() {
    // w 1 completes, then w 2 completes, then a read sees 1.
    let mut h = History::new(Workload::RwRegister);
    h.push(0, Outcome::Ok, vec![w(1, 1)], 0, Some(10));
    h.push(1, Outcome::Ok, vec![w(1, 2)], 20, Some(30));
    h.push(2, Outcome::Ok, vec![rr(1, Some(1))], 40, Some(50));
    assert_names(&h, AnomalyKind::StaleRead);
    // Concurrent writes: either order is fine.
    let mut ok_h = History::new(Workload::RwRegister);
    ok_h.push(0, Outcome::Ok, vec![w(1, 1)], 0, Some(30));
    ok_h.push(1, Outcome::Ok, vec![w(1, 2)], 5, Some(35));
    ok_h.push(2, Outcome::Ok, vec![rr(1, Some(1))], 40, Some(50));
    assert_eq!(kinds(&ok_h), Vec::<AnomalyKind>::new());
}
