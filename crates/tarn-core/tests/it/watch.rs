//! The watch index: who hears of a commit, and what they hear.

use tarn_core::{Commit, Engine, EngineConfig, Path, Txn, WatchError, WatchId, WatchKind, Write};

use crate::support::{engine, int, obj, p, set};

/// The changed paths each delivery of `c` carries, for watcher `id`.
fn heard(c: &Commit, id: WatchId) -> Vec<String> {
    c.deliveries
        .iter()
        .filter(|d| d.watch == id)
        .flat_map(|d| c.changes[d.changes.start as usize..d.changes.end as usize].iter())
        .map(|ch| ch.path.to_string())
        .collect()
}

#[test]
fn exact_and_subtree_watchers_hear_what_they_match() {
    let mut e = engine();
    let exact = e.watch(p("rooms/lobby/topic"), WatchKind::Exact).unwrap();
    let lobby = e.watch(p("rooms/lobby"), WatchKind::Subtree).unwrap();
    let all = e.watch(Path::root(), WatchKind::Subtree).unwrap();
    let other = e.watch(p("rooms/other"), WatchKind::Subtree).unwrap();

    let c = set(&mut e, "rooms/lobby/topic", int(1), 1);
    assert_eq!(heard(&c, exact), ["rooms/lobby/topic"]);
    assert_eq!(heard(&c, lobby), ["rooms/lobby/topic"]);
    assert_eq!(heard(&c, all), ["rooms/lobby/topic"]);
    assert!(heard(&c, other).is_empty());
    assert_eq!(c.deliveries.len(), 3, "one delivery per watcher hit");

    // A commit with several changes: each watcher gets its own contiguous
    // share, once.
    let c = set(
        &mut e,
        "rooms",
        obj([
            ("lobby", obj([("a", int(1)), ("b", int(2))])),
            ("other", obj([("c", int(3))])),
        ]),
        2,
    );
    assert_eq!(
        heard(&c, lobby),
        ["rooms/lobby/a", "rooms/lobby/b", "rooms/lobby/topic"]
    );
    assert_eq!(heard(&c, other), ["rooms/other/c"]);
    assert_eq!(heard(&c, all).len(), 4);
    assert_eq!(
        heard(&c, exact),
        ["rooms/lobby/topic"],
        "its leaf was deleted by the replace"
    );
    assert_eq!(c.deliveries.len(), 4);
}

#[test]
fn an_exact_watcher_does_not_hear_descendants() {
    let mut e = engine();
    let exact = e.watch(p("a"), WatchKind::Exact).unwrap();
    let c = set(&mut e, "a/b", int(1), 1);
    assert!(heard(&c, exact).is_empty());
    let c = set(&mut e, "a", int(1), 2);
    assert_eq!(heard(&c, exact), ["a"]);
}

#[test]
fn removed_watchers_hear_nothing_and_ids_are_not_reused() {
    let mut e = engine();
    let a = e.watch(p("x"), WatchKind::Subtree).unwrap();
    let b = e.watch(p("x"), WatchKind::Subtree).unwrap();
    let c = e.watch(p("x"), WatchKind::Subtree).unwrap();
    assert!(e.unwatch(a));
    assert!(!e.unwatch(a), "a second removal is a no-op");
    let d = e.watch(p("x"), WatchKind::Subtree).unwrap();
    assert_ne!(a, d, "a reused slot gets a new id");
    assert!(e.watches().get(a).is_none());
    let commit = set(&mut e, "x/y", int(1), 1);
    let mut hit: Vec<WatchId> = commit.deliveries.iter().map(|d| d.watch).collect();
    hit.sort();
    let mut want = vec![b, c, d];
    want.sort();
    assert_eq!(hit, want);
    for id in [b, c, d] {
        assert!(e.unwatch(id));
    }
    assert!(e.watches().is_empty());
    assert!(set(&mut e, "x/y", int(2), 2).deliveries.is_empty());
}

#[test]
fn the_watcher_limit_is_enforced() {
    let mut e = Engine::new(EngineConfig {
        max_watches: 2,
        ..EngineConfig::default()
    });
    e.watch(p("a"), WatchKind::Exact).unwrap();
    let b = e.watch(p("b"), WatchKind::Exact).unwrap();
    assert_eq!(
        e.watch(p("c"), WatchKind::Exact),
        Err(WatchError::TooMany { max: 2 })
    );
    e.unwatch(b);
    e.watch(p("c"), WatchKind::Exact).unwrap();
}

#[test]
fn deletions_reach_watchers() {
    let mut e = engine();
    set(&mut e, "a/b/c", int(1), 1);
    let w = e.watch(p("a/b"), WatchKind::Subtree).unwrap();
    let c = e
        .commit(Txn::new(vec![], vec![Write::Delete { path: p("a") }]), 2)
        .unwrap();
    assert_eq!(heard(&c, w), ["a/b/c"]);
    assert_eq!(c.changes[0].value, None);
}

/// Cost check without timing: matching walks only the path, so a write
/// far from 10,000 watchers reaches none of them, and one under them
/// reaches each exactly once.
#[test]
fn many_watchers_on_one_prefix() {
    let mut e = engine();
    for _ in 0..10_000 {
        e.watch(p("rooms/lobby"), WatchKind::Subtree).unwrap();
    }
    assert!(
        set(&mut e, "rooms/elsewhere/x", int(1), 1)
            .deliveries
            .is_empty()
    );
    let c = set(&mut e, "rooms/lobby/p1/x", int(1), 2);
    assert_eq!(c.deliveries.len(), 10_000);
    assert!(c.deliveries.iter().all(|d| d.changes == (0..1)));
}
