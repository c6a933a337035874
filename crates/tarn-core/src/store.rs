//! The versioned store: the tree of paths, each with its recent history.
//!
//! Every path that holds or held a value is a [`Node`] in a tree keyed by
//! [`Key`]. A node keeps its history: versions newer than the history
//! horizon, plus the newest version older than it (the *golden* value).
//! A version whose value is `None` records a deletion.
//!
//! Each node also keeps two summaries of its subtree, updated on the way
//! down every write (so a write costs O(depth)):
//! - `subtree_max`: the newest version time at or under it, which is what a
//!   read of the path must not have missed (DESIGN §2);
//! - `live`: how many leaves at or under it hold a value now, so child
//!   listings and deletes skip empty branches.
//!
//! Invariants (checked by [`Store::check_invariants`] in tests):
//! - a node's versions are sorted by time, strictly increasing;
//! - at every time, a path holds a leaf or has live descendants, never
//!   both (Firebase's rule, kept by [`Store::apply`]);
//! - `subtree_max` is at least the time of every version at or under the
//!   node; `live` counts exactly the live leaves at or under it.
//!
//! The store does not validate transactions, stamp times or know about
//! watchers: the engine does. It never reads a clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::path::{Key, Path};
use crate::time::Time;
use crate::value::Value;

/// One version of one path.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// When it was written (the commit time of its transaction).
    pub time: Time,
    /// The leaf written, or `None` for a deletion.
    pub value: Option<Value>,
}

/// One leaf-level change made by a commit: the path now holds `value`
/// (`None`: deleted). A commit's changes are sorted by path, one per path.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The leaf path that changed.
    pub path: Path,
    /// Its new value, or `None` if it was deleted.
    pub value: Option<Value>,
}

/// What a read saw: the value (assembled for a subtree) and the version
/// time the reader must quote as `seen` in its transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The value, or `None` if absent.
    pub value: Option<Value>,
    /// Newest version time at or under the path as of the read.
    pub seen: Time,
}

/// What a child-key listing saw.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedKeys {
    /// The keys of the children that hold values, sorted.
    pub keys: Vec<Key>,
    /// Newest version time at or under the path as of the read.
    pub seen: Time,
}

/// Why a read of the past cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The time is older than the history the store keeps.
    #[error(
        "time {at} is before the history horizon {floor}: history older than the horizon has been compacted (raise the retention to keep more)"
    )]
    BeforeHorizon {
        /// The time asked for.
        at: Time,
        /// The oldest time the store can answer for.
        floor: Time,
    },
    /// The time is after the newest commit: its state is not final yet.
    #[error(
        "time {at} is after the newest commit {newest}; the state at that time is not known yet"
    )]
    AfterNewest {
        /// The time asked for.
        at: Time,
        /// The newest commit time.
        newest: Time,
    },
}

/// Why a logged commit cannot be replayed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// A commit time not newer than the commit before it: the log is out
    /// of order or damaged.
    #[error(
        "commit at {time} is not newer than the previous commit {newest}; the log is out of order or damaged"
    )]
    OutOfOrder {
        /// The commit's time.
        time: Time,
        /// The newest time replayed before it.
        newest: Time,
    },
    /// A commit time beyond the clock's range (year 10889).
    #[error("commit time {time} is beyond the clock's range; the log is damaged")]
    TimeOutOfRange {
        /// The commit's time.
        time: Time,
    },
    /// A commit's changes not strictly sorted by path (as every commit
    /// writes them).
    #[error("commit at {time} lists its changes out of order at '{path}'; the log is damaged")]
    Unsorted {
        /// The commit's time.
        time: Time,
        /// The first change out of order.
        path: Path,
    },
}

/// How a read has gone stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The path (or something under it) was written at this newer time.
    Newer(Time),
    /// The path's history was compacted away after the version seen; it
    /// may have been deleted since.
    Compacted {
        /// The store's history floor.
        floor: Time,
    },
}

/// Counts for diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Nodes in the tree (paths that hold history or children).
    pub nodes: u64,
    /// Versions kept across all paths.
    pub versions: u64,
    /// Leaves that hold a value now.
    pub live_leaves: u64,
}

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<Key, Node>,
    /// Sorted by time, strictly increasing. A deque so compaction drops
    /// old versions from the front in O(1).
    history: VecDeque<Version>,
    subtree_max: Time,
    live: u64,
}

impl Node {
    fn own_live(&self) -> bool {
        self.history.back().is_some_and(|v| v.value.is_some())
    }

    fn own_value(&self) -> Option<&Value> {
        self.history.back().and_then(|v| v.value.as_ref())
    }

    fn version_at(&self, at: Time) -> Option<&Version> {
        let i = self.history.partition_point(|v| v.time <= at);
        if i == 0 {
            None
        } else {
            self.history.get(i - 1)
        }
    }

    fn value_at(&self, at: Time) -> Option<&Value> {
        self.version_at(at).and_then(|v| v.value.as_ref())
    }

    /// Writes a version of this node's own value at `time` and returns the
    /// change in its own liveness (-1, 0, +1). A second write in the same
    /// transaction (same time) replaces the first.
    fn put(&mut self, time: Time, value: Option<Value>) -> (i64, bool) {
        let was = i64::from(self.own_live());
        let now = i64::from(value.is_some());
        let pushed = match self.history.back_mut() {
            Some(last) if last.time == time => {
                last.value = value;
                false
            }
            last => {
                debug_assert!(last.is_none_or(|l| l.time < time), "versions go forward");
                self.history.push_back(Version { time, value });
                true
            }
        };
        if time > self.subtree_max {
            self.subtree_max = time;
        }
        (now - was, pushed)
    }

    fn get(&self, keys: &[Key]) -> Option<&Node> {
        let mut node = self;
        for key in keys {
            node = node.children.get(key)?;
        }
        Some(node)
    }
}

/// The tree of versioned paths. See the module docs for its invariants.
#[derive(Debug, Default)]
pub struct Store {
    root: Node,
    /// Reads at times before this are refused: history older than it may
    /// have been compacted.
    floor: Time,
    /// The newest commit time applied.
    newest: Time,
    /// `(time, path)` of every pushed version, in time order: the paths
    /// compaction has to look at once `time` falls behind the horizon.
    compaction_queue: VecDeque<(Time, Path)>,
    versions: u64,
}

/// What a write does to the tree, after validation.
#[derive(Clone, Debug)]
pub(crate) enum LeafOp {
    /// Delete every leaf at or under the path.
    Delete(Path),
    /// Replace the subtree at `at` with exactly these leaves (at or under
    /// `at`; never empty).
    Replace {
        at: Path,
        leaves: Vec<(Path, Value)>,
    },
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// The newest commit time applied.
    pub fn newest(&self) -> Time {
        self.newest
    }

    /// Reads of times before this are refused (history compacted).
    pub fn floor(&self) -> Time {
        self.floor
    }

    /// The latest value at `path` (assembled if it has descendants) and
    /// its version time.
    pub fn get(&self, path: &Path) -> Observed {
        match self.root.get(path.keys()) {
            None => Observed {
                value: None,
                seen: Time::ZERO,
            },
            Some(node) => Observed {
                value: assemble_latest(node),
                seen: node.subtree_max,
            },
        }
    }

    /// The value at `path` as of time `at` (time travel within the
    /// history horizon).
    pub fn get_at(&self, path: &Path, at: Time) -> Result<Observed, HistoryError> {
        self.check_past(at)?;
        Ok(match self.root.get(path.keys()) {
            None => Observed {
                value: None,
                seen: Time::ZERO,
            },
            Some(node) => {
                let mut seen = Time::ZERO;
                let value = assemble_at(node, at, &mut seen);
                Observed { value, seen }
            }
        })
    }

    /// The keys of the children of `path` that hold values now, sorted.
    /// A path that holds a leaf has no children.
    pub fn keys(&self, path: &Path) -> ObservedKeys {
        match self.root.get(path.keys()) {
            None => ObservedKeys {
                keys: Vec::new(),
                seen: Time::ZERO,
            },
            Some(node) => ObservedKeys {
                keys: node
                    .children
                    .iter()
                    .filter(|(_, c)| c.live > 0)
                    .map(|(k, _)| k.clone())
                    .collect(),
                seen: node.subtree_max,
            },
        }
    }

    /// The child keys of `path` as of time `at`.
    pub fn keys_at(&self, path: &Path, at: Time) -> Result<ObservedKeys, HistoryError> {
        self.check_past(at)?;
        Ok(match self.root.get(path.keys()) {
            None => ObservedKeys {
                keys: Vec::new(),
                seen: Time::ZERO,
            },
            Some(node) => {
                let mut seen = Time::ZERO;
                let _ = assemble_at(node, at, &mut seen);
                let keys = node
                    .children
                    .iter()
                    .filter(|(_, c)| {
                        let mut ignored = Time::ZERO;
                        assemble_at(c, at, &mut ignored).is_some()
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                ObservedKeys { keys, seen }
            }
        })
    }

    /// Up to `limit` leaves at or under `prefix` that hold a value at time
    /// `at` (`None`: now), in path order, starting after the path `after`
    /// (`None`: from the start). Page through a large subtree by passing
    /// the last path of one page as `after` of the next: each page costs
    /// O(depth + page), so a long walk (export, backup) never holds a lock
    /// for long.
    pub fn leaves(
        &self,
        prefix: &Path,
        at: Option<Time>,
        after: Option<&Path>,
        limit: usize,
    ) -> Result<Vec<(Path, Version)>, HistoryError> {
        if let Some(at) = at {
            self.check_past(at)?;
        }
        let mut out = Vec::new();
        if let Some(node) = self.root.get(prefix.keys()) {
            let after = after.filter(|a| a.starts_with(prefix) || *a > prefix);
            if after.is_some_and(|a| !a.starts_with(prefix)) {
                return Ok(out); // `after` is past the whole subtree
            }
            collect_leaves(node, prefix, at, after, limit, &mut out);
        }
        Ok(out)
    }

    /// The newest version time at or under `path` (`Time::ZERO` if
    /// nothing is known there). A read of `path` that saw an older time
    /// has missed a write.
    pub fn version(&self, path: &Path) -> Time {
        self.root
            .get(path.keys())
            .map_or(Time::ZERO, |n| n.subtree_max)
    }

    /// If a reader that saw `path` (and everything under it) as of version
    /// `seen` has missed a write, how.
    ///
    /// A path missing from the tree is absent now; its history may have
    /// been compacted away, so a reader whose `seen` is older than the
    /// floor may have seen a value that was deleted since: it conflicts
    /// (with the floor as the newer time). `seen = ZERO` ("I saw it never
    /// written") and a `seen` past the floor both saw absence, as now.
    pub fn stale(&self, path: &Path, seen: Time) -> Option<Stale> {
        match self.root.get(path.keys()) {
            Some(node) => (node.subtree_max > seen).then_some(Stale::Newer(node.subtree_max)),
            None => (!seen.is_zero() && seen < self.floor)
                .then_some(Stale::Compacted { floor: self.floor }),
        }
    }

    /// Like [`Store::stale`] for a read of predicted writes: stale iff a
    /// version at or under `path` newer than `base` was written at a time
    /// not in `allowed` (the commit times of the reader's own
    /// dependencies).
    pub fn stale_except(&self, path: &Path, base: Time, allowed: &[Time]) -> Option<Stale> {
        let compacted = !base.is_zero() && base < self.floor;
        match self.root.get(path.keys()) {
            None => compacted.then_some(Stale::Compacted { floor: self.floor }),
            Some(node) if node.subtree_max <= base => None,
            Some(_) if compacted => Some(Stale::Compacted { floor: self.floor }),
            Some(node) => newest_except(node, base, allowed).map(Stale::Newer),
        }
    }

    /// The versions written at `path` (or at and under it, if `subtree`)
    /// after time `after`, as `(time, change)` in time order, then path
    /// order. This is how a watch resumes from the last time it received.
    pub fn changes_since(
        &self,
        path: &Path,
        subtree: bool,
        after: Time,
    ) -> Result<Vec<(Time, Change)>, HistoryError> {
        if after < self.floor {
            return Err(HistoryError::BeforeHorizon {
                at: after,
                floor: self.floor,
            });
        }
        let mut out = Vec::new();
        if let Some(node) = self.root.get(path.keys()) {
            collect_since(node, path, subtree, after, &mut out);
        }
        out.sort_by(|a, b| (a.0, &a.1.path).cmp(&(b.0, &b.1.path)));
        Ok(out)
    }

    /// Applies validated write operations as one commit at `time`, which
    /// must be newer than every commit applied before. Returns the leaf
    /// changes, sorted by path, one per path (the last write to a path in
    /// the transaction wins).
    /// An upper bound of the changes `ops` would make: the leaves written,
    /// the live leaves under every replaced or deleted path, and one
    /// replaced ancestor leaf per write (a path has at most one live leaf
    /// above it).
    pub(crate) fn max_changes(&self, ops: &[LeafOp]) -> u64 {
        let live = |p: &Path| self.root.get(p.keys()).map_or(0, |n| n.live);
        ops.iter()
            .map(|op| match op {
                LeafOp::Delete(path) => live(path),
                LeafOp::Replace { at, leaves } => live(at) + leaves.len() as u64 + 1,
            })
            .sum()
    }

    pub(crate) fn apply(&mut self, time: Time, ops: &[LeafOp]) -> Vec<Change> {
        assert!(
            time > self.newest,
            "commit times strictly increase: {time} after {}",
            self.newest
        );
        self.newest = time;
        let mut changes = Vec::new();
        for op in ops {
            match op {
                LeafOp::Delete(path) => {
                    let live = self.root.get(path.keys()).is_some_and(|n| n.live > 0);
                    if live {
                        self.write(path, time, None, &mut changes);
                    }
                }
                LeafOp::Replace { at, leaves } => {
                    let single_leaf_at_root = leaves.len() == 1 && leaves[0].0 == *at;
                    if !single_leaf_at_root {
                        let live = self.root.get(at.keys()).is_some_and(|n| n.live > 0);
                        if live {
                            self.write(at, time, None, &mut changes);
                        }
                    }
                    for (path, leaf) in leaves {
                        self.write(path, time, Some(leaf), &mut changes);
                    }
                }
            }
        }
        if changes.len() > 1 {
            // One change per path, the last one written: a stable sort
            // keeps each path's changes in write order, then each run of
            // equal paths collapses onto its first slot with the last
            // value.
            if !changes.is_sorted_by(|a, b| a.path < b.path) {
                changes.sort_by(|a, b| a.path.cmp(&b.path));
                changes.dedup_by(|later, kept| {
                    let same = later.path == kept.path;
                    if same {
                        std::mem::swap(&mut later.value, &mut kept.value);
                    }
                    same
                });
            }
        }
        changes
    }

    /// Applies the changes of one commit exactly as recorded (recovery
    /// from a log). `time` must be newer than every commit applied before,
    /// and `changes` sorted by path, one per path, as [`Store::apply`]
    /// returns them. Recovery from a partial history (an archive plus a log
    /// tail) must also restore the floor with [`Store::compact`], so reads
    /// older than what was kept are refused rather than answered wrongly.
    ///
    /// The log is input from disk, so an out-of-order time is an error,
    /// never a panic, and leaves the store unchanged.
    pub fn replay(&mut self, time: Time, changes: &[Change]) -> Result<(), ReplayError> {
        if time <= self.newest {
            return Err(ReplayError::OutOfOrder {
                time,
                newest: self.newest,
            });
        }
        if time.ms > Time::MAX_MS {
            return Err(ReplayError::TimeOutOfRange { time });
        }
        if let Some(i) = changes.windows(2).position(|w| w[0].path >= w[1].path) {
            return Err(ReplayError::Unsorted {
                time,
                path: changes[i + 1].path.clone(),
            });
        }
        self.newest = time;
        for change in changes {
            let pushed = put_exact(
                &mut self.root,
                change.path.keys(),
                time,
                change.value.clone(),
            );
            if pushed {
                self.versions += 1;
                self.compaction_queue.push_back((time, change.path.clone()));
            }
        }
        Ok(())
    }

    /// Calls `f` with every path that has history and its versions
    /// (oldest first), in path order. For checkpoints and backups.
    pub fn visit_histories(&self, mut f: impl FnMut(&Path, &mut dyn Iterator<Item = &Version>)) {
        fn visit(
            node: &Node,
            path: &Path,
            f: &mut dyn FnMut(&Path, &mut dyn Iterator<Item = &Version>),
        ) {
            if !node.history.is_empty() {
                f(path, &mut node.history.iter());
            }
            for (key, child) in &node.children {
                visit(child, &path.with_key(key.clone()), f);
            }
        }
        visit(&self.root, &Path::root(), &mut f);
    }

    /// Drops versions older than `horizon`, keeping per path the newest
    /// one older than it (the golden value), and removes paths whose only
    /// remaining version is an old deletion. Reads before `horizon` are
    /// refused afterwards.
    pub fn compact(&mut self, horizon: Time) {
        let horizon = horizon.min(self.newest);
        if horizon <= self.floor {
            return;
        }
        self.floor = horizon;
        while let Some((time, _)) = self.compaction_queue.front() {
            if *time >= horizon {
                break;
            }
            let Some((_, path)) = self.compaction_queue.pop_front() else {
                break;
            };
            let (dropped, _) = trim(&mut self.root, path.keys(), horizon);
            self.versions -= dropped;
        }
    }

    /// Counts of nodes, versions and live leaves.
    pub fn stats(&self) -> StoreStats {
        fn count(node: &Node) -> u64 {
            1 + node.children.values().map(count).sum::<u64>()
        }
        StoreStats {
            nodes: count(&self.root),
            versions: self.versions,
            live_leaves: self.root.live,
        }
    }

    /// Checks every invariant in the module docs over the whole tree.
    /// Slow: for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut versions = 0;
        check_node(&self.root, &Path::root(), &mut versions)?;
        if versions != self.versions {
            return Err(format!(
                "version count {} != {} versions in the tree",
                self.versions, versions
            ));
        }
        Ok(())
    }

    fn check_past(&self, at: Time) -> Result<(), HistoryError> {
        if at < self.floor {
            return Err(HistoryError::BeforeHorizon {
                at,
                floor: self.floor,
            });
        }
        if at > self.newest {
            return Err(HistoryError::AfterNewest {
                at,
                newest: self.newest,
            });
        }
        Ok(())
    }

    /// Writes a leaf (`Some`) at `path` with the tree rules, or deletes
    /// everything at and under it (`None`).
    fn write(&mut self, path: &Path, time: Time, leaf: Option<&Value>, changes: &mut Vec<Change>) {
        let before = self.compaction_queue.len();
        write_rec(
            &mut self.root,
            path,
            0,
            time,
            leaf,
            changes,
            &mut self.compaction_queue,
        );
        self.versions += (self.compaction_queue.len() - before) as u64;
    }
}

/// Descends to `path`, deleting a live leaf on the way (writing under a
/// leaf replaces it), then writes at the target. Returns the change in the
/// number of live leaves under `node`.
fn write_rec(
    node: &mut Node,
    path: &Path,
    depth: usize,
    time: Time,
    leaf: Option<&Value>,
    changes: &mut Vec<Change>,
    pushed: &mut VecDeque<(Time, Path)>,
) -> i64 {
    let delta = if depth == path.depth() {
        let mut delta = 0;
        // A leaf replaces descendants; a delete removes them.
        if node.live > u64::from(node.own_live()) {
            for (key, child) in node.children.iter_mut() {
                if child.live > 0 {
                    let child_path = path.with_key(key.clone());
                    delta += delete_live(child, &child_path, time, changes, pushed);
                }
            }
        }
        if leaf.is_some() || node.own_live() {
            let (own, was_pushed) = node.put(time, leaf.cloned());
            delta += own;
            if was_pushed {
                pushed.push_back((time, path.clone()));
            }
            changes.push(Change {
                path: path.clone(),
                value: leaf.cloned(),
            });
        }
        delta
    } else {
        let mut delta = 0;
        if leaf.is_some() && node.own_live() {
            // Writing under a leaf replaces the leaf.
            let (own, was_pushed) = node.put(time, None);
            delta += own;
            let here = path.prefix(depth);
            if was_pushed {
                pushed.push_back((time, here.clone()));
            }
            changes.push(Change {
                path: here,
                value: None,
            });
        }
        let key = &path.keys()[depth];
        let child = match node.children.get_mut(key) {
            Some(child) => child,
            None if leaf.is_some() => node.children.entry(key.clone()).or_default(),
            None => return 0,
        };
        delta += write_rec(child, path, depth + 1, time, leaf, changes, pushed);
        delta
    };
    if time > node.subtree_max && (delta != 0 || leaf.is_some()) {
        node.subtree_max = time;
    }
    node.live = node
        .live
        .checked_add_signed(delta)
        .expect("live leaf count never goes below zero");
    delta
}

/// Deletes every live leaf at or under `node`; returns the (negative)
/// change in live leaves.
fn delete_live(
    node: &mut Node,
    path: &Path,
    time: Time,
    changes: &mut Vec<Change>,
    pushed: &mut VecDeque<(Time, Path)>,
) -> i64 {
    let mut delta = 0;
    if node.own_live() {
        let (own, was_pushed) = node.put(time, None);
        delta += own;
        if was_pushed {
            pushed.push_back((time, path.clone()));
        }
        changes.push(Change {
            path: path.clone(),
            value: None,
        });
    }
    if node.live > 0 {
        for (key, child) in node.children.iter_mut() {
            if child.live > 0 {
                let child_path = path.with_key(key.clone());
                delta += delete_live(child, &child_path, time, changes, pushed);
            }
        }
    }
    if time > node.subtree_max {
        node.subtree_max = time;
    }
    node.live = node
        .live
        .checked_add_signed(delta)
        .expect("live leaf count never goes below zero");
    delta
}

/// Puts a version exactly at `keys` (no tree rules: the recorded changes
/// already include every deletion). Returns whether a version was pushed.
fn put_exact(node: &mut Node, keys: &[Key], time: Time, value: Option<Value>) -> bool {
    let (delta, pushed) = put_exact_rec(node, keys, time, value);
    let _ = delta;
    pushed
}

fn put_exact_rec(node: &mut Node, keys: &[Key], time: Time, value: Option<Value>) -> (i64, bool) {
    let (delta, pushed) = match keys.split_first() {
        None => node.put(time, value),
        Some((key, rest)) => {
            let child = node.children.entry(key.clone()).or_default();
            put_exact_rec(child, rest, time, value)
        }
    };
    if time > node.subtree_max {
        node.subtree_max = time;
    }
    node.live = node
        .live
        .checked_add_signed(delta)
        .expect("live leaf count never goes below zero");
    (delta, pushed)
}

/// Trims the history at `keys` to the horizon; removes nodes left with
/// nothing but an old deletion and no children. Returns the number of
/// versions dropped and whether `node` itself is now empty and removable.
fn trim(node: &mut Node, keys: &[Key], horizon: Time) -> (u64, bool) {
    let dropped = match keys.split_first() {
        None => trim_history(&mut node.history, horizon),
        Some((key, rest)) => {
            let Some(child) = node.children.get_mut(key) else {
                return (0, false);
            };
            let (dropped, remove) = trim(child, rest, horizon);
            if remove {
                node.children.remove(key);
            }
            dropped
        }
    };
    let removable = node.children.is_empty() && node.history.is_empty();
    (dropped, removable)
}

/// Keeps the versions at or after `horizon` plus the newest one before it
/// (the golden value); a golden deletion is dropped too, since absence
/// before the first version is implied. Returns how many were dropped.
fn trim_history(history: &mut VecDeque<Version>, horizon: Time) -> u64 {
    let older = history.partition_point(|v| v.time < horizon);
    let mut dropped = 0;
    for _ in 1..older {
        history.pop_front();
        dropped += 1;
    }
    if older >= 1 && history.front().is_some_and(|v| v.value.is_none()) {
        history.pop_front();
        dropped += 1;
    }
    dropped
}

fn assemble_latest(node: &Node) -> Option<Value> {
    if let Some(leaf) = node.own_value() {
        return Some(leaf.clone());
    }
    if node.live == 0 {
        return None;
    }
    let map: BTreeMap<Arc<str>, Value> = node
        .children
        .iter()
        .filter(|(_, c)| c.live > 0)
        .filter_map(|(k, c)| assemble_latest(c).map(|v| (Arc::from(k.as_str()), v)))
        .collect();
    Some(Value::Object(map))
}

fn assemble_at(node: &Node, at: Time, seen: &mut Time) -> Option<Value> {
    if let Some(v) = node.version_at(at)
        && v.time > *seen
    {
        *seen = v.time;
    }
    let mut map = BTreeMap::new();
    for (k, c) in &node.children {
        if let Some(v) = assemble_at(c, at, seen) {
            map.insert(Arc::from(k.as_str()), v);
        }
    }
    if let Some(leaf) = node.value_at(at) {
        debug_assert!(
            map.is_empty(),
            "a path holds a leaf or children, never both"
        );
        return Some(leaf.clone());
    }
    (!map.is_empty()).then_some(Value::Object(map))
}

/// The newest version time at or under `node` after `after` that is not
/// in `allowed`.
fn newest_except(node: &Node, after: Time, allowed: &[Time]) -> Option<Time> {
    if node.subtree_max <= after {
        return None;
    }
    let mut newest = node
        .history
        .iter()
        .rev()
        .take_while(|v| v.time > after)
        .map(|v| v.time)
        .find(|t| !allowed.contains(t));
    for child in node.children.values() {
        if let Some(t) = newest_except(child, after, allowed) {
            newest = newest.max(Some(t));
        }
    }
    newest
}

fn collect_leaves(
    node: &Node,
    path: &Path,
    at: Option<Time>,
    after: Option<&Path>,
    limit: usize,
    out: &mut Vec<(Path, Version)>,
) {
    if out.len() >= limit || (at.is_none() && node.live == 0) {
        return;
    }
    // Leaves strictly after `after`: this node itself only if `after` is
    // not at or under it.
    let following = after.filter(|a| a.starts_with(path));
    if following.is_none() {
        let version = match at {
            None => node.history.back().filter(|v| v.value.is_some()),
            Some(at) => node.version_at(at).filter(|v| v.value.is_some()),
        };
        if let Some(v) = version {
            out.push((path.clone(), v.clone()));
        }
    }
    let children: Box<dyn Iterator<Item = (&Key, &Node)>> = match following {
        Some(a) if a.depth() > path.depth() => {
            let key = &a.keys()[path.depth()];
            Box::new(node.children.range::<Key, _>(key..))
        }
        // `after` is this node: all children follow it.
        _ => Box::new(node.children.iter()),
    };
    for (key, child) in children {
        if out.len() >= limit {
            return;
        }
        let child_path = path.with_key(key.clone());
        let child_after = following.filter(|a| a.starts_with(&child_path) && **a != *path);
        collect_leaves(child, &child_path, at, child_after, limit, out);
    }
}

fn collect_since(
    node: &Node,
    path: &Path,
    subtree: bool,
    after: Time,
    out: &mut Vec<(Time, Change)>,
) {
    if node.subtree_max <= after {
        return;
    }
    let start = node.history.partition_point(|v| v.time <= after);
    for v in node.history.range(start..) {
        out.push((
            v.time,
            Change {
                path: path.clone(),
                value: v.value.clone(),
            },
        ));
    }
    if subtree {
        for (key, child) in &node.children {
            collect_since(child, &path.with_key(key.clone()), true, after, out);
        }
    }
}

fn check_node(node: &Node, path: &Path, versions: &mut u64) -> Result<(), String> {
    *versions += node.history.len() as u64;
    for pair in node.history.iter().collect::<Vec<_>>().windows(2) {
        if pair[0].time >= pair[1].time {
            return Err(format!("{path}: versions out of order"));
        }
    }
    let mut live = u64::from(node.own_live());
    let mut max = node.history.back().map_or(Time::ZERO, |v| v.time);
    for (key, child) in &node.children {
        check_node(child, &path.with_key(key.clone()), versions)?;
        live += child.live;
        max = max.max(child.subtree_max);
    }
    if live != node.live {
        return Err(format!(
            "{path}: live count {} but {live} live leaves",
            node.live
        ));
    }
    if node.subtree_max < max {
        return Err(format!(
            "{path}: subtree_max {} < newest version {max}",
            node.subtree_max
        ));
    }
    if node.own_live() && live > 1 {
        return Err(format!("{path}: holds a leaf and live descendants"));
    }
    Ok(())
}
