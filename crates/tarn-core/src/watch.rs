//! The watch index: which watchers a commit's changes reach.
//!
//! Watchers hang in a tree keyed like the data tree. An exact watcher on
//! `P` hangs at `P` and matches a change at `P`; a subtree watcher on `P`
//! hangs at `P` and matches a change at `P` or under it. Matching one
//! changed path walks the index once from the root along the path, so its
//! cost is the path's depth plus the watchers it hits, however many
//! watchers exist elsewhere.
//!
//! A commit's changes are sorted by path, and every path under a prefix
//! sorts right after the prefix, so the changes a watcher receives from
//! one commit are one contiguous range: a [`Delivery`] is a watcher and a
//! range of indices into the commit's changes, with no copy.
//!
//! This module does not send anything; the server turns deliveries into
//! messages, coalesced per connection.

use std::collections::HashMap;
use std::ops::Range;

use crate::path::{Key, Path};
use crate::store::Change;

/// A watcher's handle. Ids are not reused while the watcher exists; a
/// stale id is simply unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchId {
    slot: u32,
    generation: u32,
}

/// What a watcher matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// Changes at exactly the path: a leaf watch (positions, counters).
    /// It does not hear changes under the path, so a path that holds (or
    /// may come to hold) an object must be watched with `Subtree`, which is
    /// what `watch(path)` of DESIGN §3 means.
    Exact,
    /// Changes at the path or anywhere under it (`prefix/**`).
    Subtree,
}

/// The changes one watcher must receive from one commit: indices into
/// the commit's changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The watcher.
    pub watch: WatchId,
    /// Indices into [`crate::Commit::changes`], contiguous.
    pub changes: Range<u32>,
}

/// Why a watcher could not be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The index holds as many watchers as it may.
    #[error(
        "{max} watchers are registered, the limit (config `limits.max_watches`); close some watches"
    )]
    TooMany {
        /// The configured limit.
        max: usize,
    },
}

#[derive(Debug, Default)]
struct WatchNode {
    /// std's hasher (randomly keyed): watch paths are chosen by clients,
    /// so the index must not be open to hash flooding.
    children: HashMap<Key, WatchNode>,
    exact: Vec<u32>,
    subtree: Vec<u32>,
}

impl WatchNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.exact.is_empty() && self.subtree.is_empty()
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    /// `None` while the slot is free.
    watch: Option<(Path, WatchKind)>,
    /// Position in its node's `exact` or `subtree` list.
    position: u32,
    /// Commit number of the last delivery made to this watcher, and that
    /// delivery's index: lets matching merge hits without a hash map.
    mark_commit: u64,
    mark_index: u32,
}

/// The index of watchers. See the module docs.
#[derive(Debug)]
pub struct WatchIndex {
    root: WatchNode,
    slots: Vec<Slot>,
    free: Vec<u32>,
    count: usize,
    max_watches: usize,
    commits: u64,
}

impl WatchIndex {
    /// An empty index holding at most `max_watches` watchers.
    pub fn new(max_watches: usize) -> WatchIndex {
        WatchIndex {
            root: WatchNode::default(),
            slots: Vec::new(),
            free: Vec::new(),
            count: 0,
            max_watches: max_watches.min(u32::MAX as usize),
            commits: 0,
        }
    }

    /// Number of watchers.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if no watcher is registered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Registers a watcher on `path`.
    pub fn add(&mut self, path: Path, kind: WatchKind) -> Result<WatchId, WatchError> {
        if self.count >= self.max_watches {
            return Err(WatchError::TooMany {
                max: self.max_watches,
            });
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    watch: None,
                    position: 0,
                    mark_commit: 0,
                    mark_index: 0,
                });
                u32::try_from(self.slots.len() - 1).expect("slots are bounded by max_watches")
            }
        };
        let mut node = &mut self.root;
        for key in path.keys() {
            node = node.children.entry(key.clone()).or_default();
        }
        let list = match kind {
            WatchKind::Exact => &mut node.exact,
            WatchKind::Subtree => &mut node.subtree,
        };
        let position = u32::try_from(list.len()).expect("lists are bounded by max_watches");
        list.push(slot);
        let s = &mut self.slots[slot as usize];
        s.watch = Some((path, kind));
        s.position = position;
        self.count += 1;
        Ok(WatchId {
            slot,
            generation: s.generation,
        })
    }

    /// Removes a watcher; false if the id is unknown (already removed).
    pub fn remove(&mut self, id: WatchId) -> bool {
        let Some(s) = self.slots.get_mut(id.slot as usize) else {
            return false;
        };
        if s.generation != id.generation {
            return false;
        }
        let Some((path, kind)) = s.watch.take() else {
            return false;
        };
        let position = s.position as usize;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.count -= 1;
        let moved = remove_rec(&mut self.root, path.keys(), kind, position);
        if let Some(moved) = moved {
            self.slots[moved as usize].position = position as u32;
        }
        true
    }

    /// The path and kind of a watcher, if it exists.
    pub fn get(&self, id: WatchId) -> Option<(&Path, WatchKind)> {
        let s = self.slots.get(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.watch.as_ref().map(|(p, k)| (p, *k))
    }

    /// The deliveries for one commit's changes (sorted by path, as
    /// [`crate::Commit::changes`] are): one per watcher hit, in order of
    /// first hit.
    pub fn deliveries(&mut self, changes: &[Change]) -> Vec<Delivery> {
        let mut out = Vec::new();
        if self.count == 0 {
            return out;
        }
        self.commits += 1;
        let commit = self.commits;
        for (i, change) in changes.iter().enumerate() {
            let i = u32::try_from(i).expect("a commit cannot hold 2^32 changes in memory");
            let mut node = &self.root;
            hit(&mut self.slots, &node.subtree, commit, i, &mut out);
            let mut reached = true;
            for key in change.path.keys() {
                match node.children.get(key) {
                    Some(child) => {
                        node = child;
                        hit(&mut self.slots, &node.subtree, commit, i, &mut out);
                    }
                    None => {
                        reached = false;
                        break;
                    }
                }
            }
            if reached {
                hit(&mut self.slots, &node.exact, commit, i, &mut out);
            }
        }
        out
    }
}

fn hit(slots: &mut [Slot], watchers: &[u32], commit: u64, change: u32, out: &mut Vec<Delivery>) {
    for &slot in watchers {
        let s = &mut slots[slot as usize];
        if s.mark_commit == commit {
            let delivery = &mut out[s.mark_index as usize];
            debug_assert_eq!(
                delivery.changes.end, change,
                "a watcher's changes are contiguous"
            );
            delivery.changes.end = change + 1;
        } else {
            s.mark_commit = commit;
            s.mark_index = u32::try_from(out.len()).expect("deliveries are bounded by max_watches");
            out.push(Delivery {
                watch: WatchId {
                    slot,
                    generation: s.generation,
                },
                changes: change..change + 1,
            });
        }
    }
}

/// Removes the watcher at `position` of the node at `keys`, pruning empty
/// nodes. Returns the slot that was moved into `position`, if any.
fn remove_rec(node: &mut WatchNode, keys: &[Key], kind: WatchKind, position: usize) -> Option<u32> {
    match keys.split_first() {
        None => {
            let list = match kind {
                WatchKind::Exact => &mut node.exact,
                WatchKind::Subtree => &mut node.subtree,
            };
            list.swap_remove(position);
            list.get(position).copied()
        }
        Some((key, rest)) => {
            let child = node.children.get_mut(key)?;
            let moved = remove_rec(child, rest, kind, position);
            if child.is_empty() {
                node.children.remove(key);
            }
            moved
        }
    }
}
