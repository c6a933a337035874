//! Value errors, and the tree semantics of writes: object writes replace a
//! subtree, patch merges, leaves and children never coexist, reads
//! assemble objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use tarn_core::{
    Change, Engine, EngineConfig, InvalidTxn, Path, PathError, Txn, TxnError, Value, ValueError,
    ValueLimits, Write,
};

use crate::support::{engine, get, int, obj, p, patch, set};

fn changed(commit: &tarn_core::Commit) -> Vec<(String, Option<Value>)> {
    commit
        .changes
        .iter()
        .map(|Change { path, value }| (path.to_string(), value.clone()))
        .collect()
}

#[test]
fn object_write_replaces_the_subtree() {
    let mut e = engine();
    set(
        &mut e,
        "a",
        obj([("x", int(1)), ("y", obj([("z", int(2))]))]),
        1,
    );
    assert_eq!(get(&e, "a/y/z"), Some(int(2)));
    let c = set(&mut e, "a", obj([("x", int(3))]), 2);
    assert_eq!(get(&e, "a"), Some(obj([("x", int(3))])));
    assert_eq!(get(&e, "a/y/z"), None);
    assert_eq!(get(&e, "a/y"), None);
    // The old leaf's deletion is part of the same commit.
    assert_eq!(
        changed(&c),
        vec![("a/x".into(), Some(int(3))), ("a/y/z".into(), None)]
    );
}

#[test]
fn patch_merges_children_and_null_deletes() {
    let mut e = engine();
    set(&mut e, "a", obj([("x", int(1)), ("y", int(2))]), 1);
    patch(
        &mut e,
        "a",
        obj([("y", obj([("w", int(4))])), ("z", int(5))]),
        2,
    );
    assert_eq!(
        get(&e, "a"),
        Some(obj([
            ("x", int(1)),
            ("y", obj([("w", int(4))])),
            ("z", int(5))
        ]))
    );
    patch(&mut e, "a", obj([("x", Value::Null)]), 3);
    assert_eq!(get(&e, "a/x"), None);
    assert_eq!(e.store().keys(&p("a")).keys.len(), 2);
}

#[test]
fn a_leaf_replaces_descendants() {
    let mut e = engine();
    set(&mut e, "a", obj([("x", int(1)), ("y", int(2))]), 1);
    let c = set(&mut e, "a", int(5), 2);
    assert_eq!(get(&e, "a"), Some(int(5)));
    assert_eq!(get(&e, "a/x"), None);
    assert!(e.store().keys(&p("a")).keys.is_empty());
    assert_eq!(
        changed(&c),
        vec![
            ("a".into(), Some(int(5))),
            ("a/x".into(), None),
            ("a/y".into(), None)
        ]
    );
}

#[test]
fn writing_under_a_leaf_replaces_the_leaf() {
    let mut e = engine();
    set(&mut e, "a", int(5), 1);
    let c = set(&mut e, "a/b", int(1), 2);
    assert_eq!(get(&e, "a"), Some(obj([("b", int(1))])));
    assert_eq!(
        changed(&c),
        vec![("a".into(), None), ("a/b".into(), Some(int(1)))]
    );
    e.store().check_invariants().unwrap();
}

#[test]
fn empty_objects_are_absent() {
    let mut e = engine();
    set(&mut e, "a/b", int(1), 1);
    set(&mut e, "a", obj([]), 2);
    assert_eq!(get(&e, "a"), None);
    set(&mut e, "c", obj([("d", obj([]))]), 3);
    assert_eq!(get(&e, "c"), None);
    assert!(e.store().keys(&Path::root()).keys.is_empty());
}

#[test]
fn an_object_whose_last_child_is_deleted_disappears() {
    let mut e = engine();
    set(&mut e, "rooms/lobby/players/alice", int(1), 1);
    e.commit(
        Txn::new(
            vec![],
            vec![Write::Delete {
                path: p("rooms/lobby/players/alice"),
            }],
        ),
        2,
    )
    .unwrap();
    assert_eq!(get(&e, "rooms"), None);
    assert!(e.store().keys(&Path::root()).keys.is_empty());
    assert_eq!(e.store().stats().live_leaves, 0);
}

#[test]
fn reading_a_parent_assembles_the_object() {
    let mut e = engine();
    set(&mut e, "u/alice/name", Value::str("Alice"), 1);
    set(&mut e, "u/alice/age", int(30), 2);
    set(&mut e, "u/bob/name", Value::str("Bob"), 3);
    let root = e.store().get(&Path::root());
    assert_eq!(
        root.value,
        Some(obj([(
            "u",
            obj([
                (
                    "alice",
                    obj([("age", int(30)), ("name", Value::str("Alice"))])
                ),
                ("bob", obj([("name", Value::str("Bob"))])),
            ])
        )]))
    );
    assert_eq!(root.seen, e.newest());
    let keys: Vec<String> = e
        .store()
        .keys(&p("u"))
        .keys
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys, ["alice", "bob"]);
}

#[test]
fn arrays_are_one_leaf_and_keep_any_keys() {
    let mut e = engine();
    let inner: Value = [("not/a/path", int(2)), ("", int(3))].into_iter().collect();
    let arr = Value::from(vec![int(1), inner]);
    set(&mut e, "a", arr.clone(), 1);
    assert_eq!(get(&e, "a"), Some(arr));
    assert_eq!(get(&e, "a/0"), None);
}

#[test]
fn the_root_can_be_written() {
    let mut e = engine();
    set(&mut e, "", obj([("a", int(1))]), 1);
    assert_eq!(get(&e, "a"), Some(int(1)));
    set(&mut e, "", int(7), 2);
    assert_eq!(get(&e, ""), Some(int(7)));
    assert_eq!(get(&e, "a"), None);
    e.store().check_invariants().unwrap();
}

#[test]
fn a_later_write_in_the_same_txn_wins() {
    let mut e = engine();
    set(&mut e, "a/x", int(1), 1);
    let txn = Txn::new(
        vec![],
        vec![
            Write::Set {
                path: p("a"),
                value: int(5),
            },
            Write::Set {
                path: p("a/y"),
                value: int(6),
            },
        ],
    );
    let c = e.commit(txn, 2).unwrap();
    assert_eq!(get(&e, "a"), Some(obj([("y", int(6))])));
    // One change per path: a was set then deleted in the same commit.
    assert_eq!(
        changed(&c),
        vec![
            ("a".into(), None),
            ("a/x".into(), None),
            ("a/y".into(), Some(int(6)))
        ]
    );
    e.store().check_invariants().unwrap();
}

/// Asserts that `txn` fails with an `InvalidTxn` matched by `expect` and
/// that the store is exactly as before.
fn refused(e: &mut Engine, txn: Txn, expect: impl Fn(&InvalidTxn) -> bool) {
    let before = (e.store().get(&Path::root()), e.newest(), e.store().stats());
    let err = e.commit(txn, 100).unwrap_err();
    match &err {
        TxnError::Invalid(invalid) => assert!(expect(invalid), "unexpected error: {err}"),
        other => panic!("expected an invalid transaction, got {other}"),
    }
    let after = (e.store().get(&Path::root()), e.newest(), e.store().stats());
    assert_eq!(before, after, "a refused transaction changed the store");
}

fn seeded() -> Engine {
    let mut e = engine();
    set(&mut e, "keep", obj([("x", int(1))]), 1);
    e
}

#[test]
fn non_finite_numbers_are_refused() {
    let mut e = seeded();
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        refused(&mut e, Txn::set(p("a"), Value::Float(f)), |err| {
            matches!(err, InvalidTxn::BadValue(ValueError::NonFinite { .. }))
        });
        let nested = Value::from(vec![Value::Float(f)]);
        refused(&mut e, Txn::set(p("a"), nested), |err| {
            matches!(err, InvalidTxn::BadValue(ValueError::NonFinite { .. }))
        });
    }
}

#[test]
fn oversized_values_are_refused() {
    let mut e = Engine::new(EngineConfig {
        values: ValueLimits {
            max_value_bytes: 100,
            ..ValueLimits::default()
        },
        ..EngineConfig::default()
    });
    set(&mut e, "keep", int(1), 1);
    let big = Value::str(&"x".repeat(99));
    refused(&mut e, Txn::set(p("a"), big), |err| {
        matches!(
            err,
            InvalidTxn::BadValue(ValueError::TooLarge {
                bytes: 101,
                max: 100,
                ..
            })
        )
    });
    // The limit is per leaf: an object of small leaves may exceed it.
    let many: Value = (0..20)
        .map(|i| (format!("k{i}"), Value::str(&"x".repeat(50))))
        .collect();
    e.commit(Txn::set(p("a"), many), 2).unwrap();
}

#[test]
fn deep_nesting_is_refused() {
    let mut e = seeded();
    let mut v = int(1);
    for _ in 0..70 {
        v = Value::from(vec![v]);
    }
    refused(&mut e, Txn::set(p("a"), v), |err| {
        matches!(
            err,
            InvalidTxn::BadValue(ValueError::TooDeep { max: 64, .. })
        )
    });
}

#[test]
fn object_keys_that_cannot_be_paths_are_refused() {
    let mut e = seeded();
    refused(&mut e, Txn::set(p("a"), obj([("b/c", int(1))])), |err| {
        matches!(
            err,
            InvalidTxn::BadValue(ValueError::BadKey {
                source: PathError::SlashInKey { .. },
                ..
            })
        )
    });
    refused(&mut e, Txn::set(p("a"), obj([("", int(1))])), |err| {
        matches!(
            err,
            InvalidTxn::BadValue(ValueError::BadKey {
                source: PathError::EmptyKey { .. },
                ..
            })
        )
    });
    // Nesting that makes the paths too deep.
    let mut v = int(1);
    for _ in 0..40 {
        let mut m = BTreeMap::new();
        m.insert(Arc::from("k"), v);
        v = Value::Object(m);
    }
    refused(&mut e, Txn::set(p("a"), v), |err| {
        matches!(
            err,
            InvalidTxn::BadValue(ValueError::BadKey {
                source: PathError::TooDeep { .. },
                ..
            })
        )
    });
    // A patch with a bad child key, and a patch that is not an object.
    refused(
        &mut e,
        Txn::new(
            vec![],
            vec![Write::Patch {
                path: p("keep"),
                value: obj([("a\u{1}", int(1))]),
            }],
        ),
        |err| matches!(err, InvalidTxn::BadValue(ValueError::BadKey { .. })),
    );
    refused(
        &mut e,
        Txn::new(
            vec![],
            vec![Write::Patch {
                path: p("keep"),
                value: int(1),
            }],
        ),
        |err| matches!(err, InvalidTxn::PatchNotObject { .. }),
    );
}

#[test]
fn one_bad_write_refuses_the_whole_transaction() {
    let mut e = seeded();
    let txn = Txn::new(
        vec![],
        vec![
            Write::Set {
                path: p("keep/x"),
                value: int(2),
            },
            Write::Set {
                path: p("b"),
                value: Value::Float(f64::NAN),
            },
        ],
    );
    refused(&mut e, txn, |err| matches!(err, InvalidTxn::BadValue(_)));
    assert_eq!(get(&e, "keep/x"), Some(int(1)));
}
