//! The serializability check: random concurrent transaction workloads
//! against a plain model.
//!
//! Several clients each take a snapshot (reads of values and of whole
//! subtrees, with the `seen` versions the store returns), then commit
//! writes computed from what they read, interleaved with other clients'
//! commits, wall-clock jumps (also backwards), compaction and restarts
//! (the engine rebuilt from its commit log). Afterwards the committed
//! transactions are replayed one by one, in commit-time order, against a
//! naive nested-map model of the tree that shares no code with the
//! engine. Each must have read exactly what the model holds at its point
//! in that order (so the history is serializable, phantoms included), and
//! the model's final state must equal the engine's. Every rejection must
//! name a read that really was overtaken by a later commit.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tarn_core::{
    Change, Engine, EngineConfig, Path, Read, ReadKind, Rejection, Retention, Time, Txn, TxnError,
    Value, Write,
};

// ---------------------------------------------------------------------
// The model: a nested map, written the obvious way.

#[derive(Clone, Debug, PartialEq)]
enum M {
    Leaf(Value),
    /// Never empty.
    Obj(BTreeMap<String, M>),
}

fn to_model(v: &Value) -> Option<M> {
    match v {
        Value::Null => None,
        Value::Object(map) => {
            let children: BTreeMap<String, M> = map
                .iter()
                .filter_map(|(k, v)| to_model(v).map(|m| (k.to_string(), m)))
                .collect();
            (!children.is_empty()).then_some(M::Obj(children))
        }
        leaf => Some(M::Leaf(leaf.clone())),
    }
}

fn to_value(m: &M) -> Value {
    match m {
        M::Leaf(v) => v.clone(),
        M::Obj(map) => map.iter().map(|(k, m)| (k.as_str(), to_value(m))).collect(),
    }
}

fn model_get<'a>(root: &'a Option<M>, path: &[String]) -> Option<&'a M> {
    let mut node = root.as_ref()?;
    for key in path {
        match node {
            M::Obj(map) => node = map.get(key)?,
            M::Leaf(_) => return None,
        }
    }
    Some(node)
}

fn model_set(node: &mut Option<M>, path: &[String], new: Option<M>) {
    let Some((key, rest)) = path.split_first() else {
        *node = new;
        return;
    };
    if new.is_none() && !matches!(node, Some(M::Obj(_))) {
        return; // deleting under a leaf or nothing: no change
    }
    if !matches!(node, Some(M::Obj(_))) {
        *node = Some(M::Obj(BTreeMap::new())); // writing under a leaf replaces it
    }
    let Some(M::Obj(map)) = node else {
        unreachable!()
    };
    let mut child = map.remove(key);
    model_set(&mut child, rest, new);
    if let Some(child) = child {
        map.insert(key.clone(), child);
    }
    if map.is_empty() {
        *node = None;
    }
}

fn model_write(root: &mut Option<M>, write: &Write) {
    let keys = |p: &Path| p.keys().iter().map(|k| k.to_string()).collect::<Vec<_>>();
    match write {
        Write::Set { path, value } => model_set(root, &keys(path), to_model(value)),
        Write::Delete { path } => model_set(root, &keys(path), None),
        Write::Patch {
            path,
            value: Value::Object(children),
        } => {
            for (k, v) in children {
                let mut at = keys(path);
                at.push(k.to_string());
                model_set(root, &at, to_model(v));
            }
        }
        Write::Patch { .. } => unreachable!("the generator patches with objects"),
    }
}

/// What a read observed: the value, and for subtree reads the child keys.
#[derive(Clone, Debug, PartialEq)]
struct Observation {
    value: Option<Value>,
    keys: Option<Vec<String>>,
}

fn model_observe(root: &Option<M>, path: &Path, kind: ReadKind) -> Observation {
    let keys: Vec<String> = path.keys().iter().map(|k| k.to_string()).collect();
    let node = model_get(root, &keys);
    Observation {
        value: node.map(to_value),
        keys: (kind == ReadKind::Subtree).then(|| match node {
            Some(M::Obj(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }),
    }
}

fn engine_observe(e: &Engine, path: &Path, kind: ReadKind) -> (Observation, Time) {
    let got = e.store().get(path);
    let keys = (kind == ReadKind::Subtree).then(|| {
        let k = e.store().keys(path);
        assert_eq!(k.seen, got.seen);
        k.keys.iter().map(|k| k.to_string()).collect()
    });
    (
        Observation {
            value: got.value,
            keys,
        },
        got.seen,
    )
}

// ---------------------------------------------------------------------
// The workload.

const KEYS: [&str; 3] = ["a", "b", "c"];
const CLIENTS: usize = 4;
const HORIZON_MS: u64 = 50;

fn paths_of_depth(depth: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Path> {
    prop::collection::vec(0..KEYS.len(), depth).prop_map(|ks| {
        let text: Vec<&str> = ks.into_iter().map(|k| KEYS[k]).collect();
        Path::parse(&text.join("/")).unwrap()
    })
}

fn path_strategy() -> impl Strategy<Value = Path> {
    paths_of_depth(0..=3)
}

/// Writes stay below the root (generated directly, not filtered: a
/// filter's rejects would cap a long run).
fn write_path() -> impl Strategy<Value = Path> {
    paths_of_depth(1..=3)
}

fn value_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => (0i64..5).prop_map(Value::Int),
        1 => Just(Value::Null),
        1 => Just(Value::from(vec![Value::Int(1), Value::str("x")])),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), inner, 0..3)
            .prop_map(|m| m.into_iter().collect::<Value>())
    })
}

#[derive(Clone, Debug)]
enum WriteSpec {
    Set(Path, Value),
    Patch(Path, Vec<(&'static str, Value)>),
    Delete(Path),
    /// Write (what read `i` saw) + 1 at the path: a read-modify-write.
    Increment(usize, Path),
}

#[derive(Clone, Debug)]
enum Op {
    Begin {
        client: usize,
        reads: Vec<(Path, ReadKind)>,
        writes: Vec<WriteSpec>,
    },
    Commit {
        client: usize,
    },
    Clock {
        delta_ms: i64,
    },
    Compact,
    Restart,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let read = (
        path_strategy(),
        prop_oneof![Just(ReadKind::Value), Just(ReadKind::Subtree)],
    );
    let write = prop_oneof![
        3 => (write_path(), value_strategy()).prop_map(|(p, v)| WriteSpec::Set(p, v)),
        1 => (write_path(), prop::collection::vec((prop::sample::select(KEYS.to_vec()), value_strategy()), 1..3))
            .prop_map(|(p, kids)| WriteSpec::Patch(p, kids)),
        1 => write_path().prop_map(WriteSpec::Delete),
        3 => (0usize..3, write_path()).prop_map(|(i, p)| WriteSpec::Increment(i, p)),
    ];
    prop_oneof![
        6 => (0..CLIENTS, prop::collection::vec(read, 0..4), prop::collection::vec(write, 0..3))
            .prop_map(|(client, reads, writes)| Op::Begin { client, reads, writes }),
        6 => (0..CLIENTS).prop_map(|client| Op::Commit { client }),
        2 => (-20i64..40).prop_map(|delta_ms| Op::Clock { delta_ms }),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

/// An open transaction: the snapshot a client took.
struct Open {
    reads: Vec<(Read, Observation)>,
    writes: Vec<WriteSpec>,
}

/// A committed transaction, for the replay.
struct Committed {
    time: Time,
    reads: Vec<(Read, Observation)>,
    writes: Vec<Write>,
    changes: Vec<Change>,
}

fn config() -> EngineConfig {
    EngineConfig {
        retention: Retention::HorizonMs(HORIZON_MS),
        ..EngineConfig::default()
    }
}

fn build_writes(open: &Open) -> Vec<Write> {
    let mut writes: Vec<Write> = Vec::new();
    for spec in &open.writes {
        let w = match spec {
            WriteSpec::Set(p, v) => Write::Set {
                path: p.clone(),
                value: v.clone(),
            },
            WriteSpec::Delete(p) => Write::Delete { path: p.clone() },
            WriteSpec::Patch(p, kids) => Write::Patch {
                path: p.clone(),
                value: kids.iter().map(|(k, v)| (*k, v.clone())).collect(),
            },
            WriteSpec::Increment(i, p) => {
                let seen = open.reads.get(*i).and_then(|(_, o)| o.value.clone());
                let next = match seen {
                    Some(Value::Int(n)) => n + 1,
                    Some(_) => 100,
                    None => 0,
                };
                Write::Set {
                    path: p.clone(),
                    value: Value::Int(next),
                }
            }
        };
        if !writes.iter().any(|x| x.path() == w.path()) {
            writes.push(w);
        }
    }
    writes
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut engine = Engine::new(config());
    let mut wall: u64 = 1_000;
    let mut open: Vec<Option<Open>> = (0..CLIENTS).map(|_| None).collect();
    let mut committed: Vec<Committed> = Vec::new();
    let mut rejected: Vec<(Vec<(Read, Observation)>, Rejection)> = Vec::new();
    let mut snapshots: Vec<(Time, Option<Value>)> = Vec::new();

    for op in ops {
        match op {
            Op::Begin {
                client,
                reads,
                writes,
            } => {
                let mut taken: Vec<(Read, Observation)> = Vec::new();
                for (path, kind) in reads {
                    if taken.iter().any(|(r, _)| r.path == path) {
                        continue;
                    }
                    let (obs, seen) = engine_observe(&engine, &path, kind);
                    let read = match kind {
                        ReadKind::Value => Read::value(path, seen),
                        ReadKind::Subtree => Read::subtree(path, seen),
                    };
                    taken.push((read, obs));
                }
                open[client] = Some(Open {
                    reads: taken,
                    writes,
                });
            }
            Op::Commit { client } => {
                let Some(txn) = open[client].take() else {
                    continue;
                };
                let writes = build_writes(&txn);
                let reads: Vec<Read> = txn.reads.iter().map(|(r, _)| r.clone()).collect();
                match engine.commit(Txn::new(reads, writes.clone()), wall) {
                    Ok(c) => {
                        if let Some(last) = committed.last() {
                            prop_assert!(c.time > last.time, "commit times increase");
                        }
                        snapshots.push((c.time, engine.store().get(&Path::root()).value));
                        committed.push(Committed {
                            time: c.time,
                            reads: txn.reads,
                            writes,
                            changes: c.changes.to_vec(),
                        });
                    }
                    Err(TxnError::Rejected(r)) => rejected.push((txn.reads, r)),
                    Err(TxnError::Invalid(e)) => {
                        return Err(TestCaseError::fail(format!(
                            "generator made an invalid txn: {e}"
                        )));
                    }
                }
            }
            Op::Clock { delta_ms } => wall = wall.saturating_add_signed(delta_ms),
            Op::Compact => engine.compact(wall),
            Op::Restart => {
                // Rebuild from the log, as recovery does; open snapshots stay.
                let mut fresh = Engine::new(config());
                for c in &committed {
                    fresh.replay(c.time, &c.changes).unwrap();
                }
                prop_assert_eq!(
                    fresh.store().get(&Path::root()),
                    engine.store().get(&Path::root())
                );
                engine = fresh;
            }
        }
        engine
            .store()
            .check_invariants()
            .map_err(TestCaseError::fail)?;
    }

    // Serial replay in commit-time order against the model.
    let mut model: Option<M> = None;
    for c in &committed {
        for (read, observed) in &c.reads {
            let now = model_observe(&model, &read.path, read.kind);
            prop_assert_eq!(
                &now,
                observed,
                "txn at {} read {} ({:?}) and saw something the serial order contradicts",
                c.time,
                read.path,
                read.kind
            );
        }
        for w in &c.writes {
            model_write(&mut model, w);
        }
    }
    prop_assert_eq!(
        model.as_ref().map(to_value),
        engine.store().get(&Path::root()).value
    );

    // Every rejection names a read that a later commit really overtook.
    for (reads, rejection) in &rejected {
        match rejection {
            Rejection::Conflict {
                path, seen, newer, ..
            } => {
                prop_assert!(reads.iter().any(|(r, _)| &r.path == path));
                prop_assert!(newer > seen);
                let overtaken = committed.iter().any(|c| {
                    c.time == *newer && c.changes.iter().any(|ch| ch.path.starts_with(path))
                });
                prop_assert!(
                    overtaken,
                    "rejection of {} names {} which wrote nothing there",
                    path,
                    newer
                );
            }
            Rejection::Compacted { path, seen, floor } => {
                prop_assert!(reads.iter().any(|(r, _)| &r.path == path));
                prop_assert!(seen < floor);
            }
            other => return Err(TestCaseError::fail(format!("unexpected rejection {other}"))),
        }
    }

    // Time travel: every state since the history floor reads back.
    let floor = engine.store().floor();
    for (time, root) in snapshots.iter().filter(|(t, _)| *t >= floor) {
        let past = engine
            .store()
            .get_at(&Path::root(), *time)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&past.value, root, "state at {} differs", time);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::support::cases(300)))]

    #[test]
    fn committed_histories_are_serializable(ops in prop::collection::vec(op_strategy(), 1..80)) {
        run(ops)?;
    }
}

/// The property above would pass if the engine rejected everything; this
/// fixed interleaving must commit the first writer and reject the second.
#[test]
fn a_lost_update_is_prevented_and_the_winner_commits() {
    let p = Path::parse("counter").unwrap();
    let ops = vec![
        Op::Begin {
            client: 0,
            reads: vec![(p.clone(), ReadKind::Value)],
            writes: vec![WriteSpec::Increment(0, p.clone())],
        },
        Op::Begin {
            client: 1,
            reads: vec![(p.clone(), ReadKind::Value)],
            writes: vec![WriteSpec::Increment(0, p.clone())],
        },
        Op::Commit { client: 0 },
        Op::Commit { client: 1 },
    ];
    run(ops.clone()).unwrap();
    let mut e = Engine::new(config());
    let seen0 = e.store().get(&p).seen;
    let seen1 = e.store().get(&p).seen;
    e.commit(
        Txn::new(
            vec![Read::value(p.clone(), seen0)],
            vec![Write::Set {
                path: p.clone(),
                value: Value::Int(0),
            }],
        ),
        1,
    )
    .unwrap();
    assert!(
        e.commit(
            Txn::new(
                vec![Read::value(p.clone(), seen1)],
                vec![Write::Set {
                    path: p.clone(),
                    value: Value::Int(0)
                }]
            ),
            2
        )
        .is_err()
    );
}
