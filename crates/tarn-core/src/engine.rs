//! The commit engine: validates transactions, stamps commit times, applies
//! writes, and tells which watchers must hear of them.
//!
//! [`Engine::commit`] is the authority's whole decision for one
//! transaction (DESIGN §2):
//! 1. check its shape against the limits (typed [`InvalidTxn`]);
//! 2. resolve its dependencies on the same client's earlier transactions
//!    (a rejected dependency rejects it: the cascade);
//! 3. check every read is still current in the [`Store`] (else a
//!    [`Rejection`] naming the path, the version seen and the newer one);
//! 4. stamp a commit time from the [`Hlc`], newer than every earlier
//!    commit, and apply the writes;
//! 5. match the changes against the [`WatchIndex`].
//!
//! Nothing is written unless all checks pass, so a failed commit leaves
//! the store exactly as it was. The engine is single-threaded and pure:
//! the caller owns it (one task per authority) and passes the wall time
//! in; durability (the WAL) wraps it from outside.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::path::{Path, PathLimits};
use crate::store::{Change, LeafOp, ReplayError, Stale, Store};
use crate::time::{Hlc, NodeId, Time};
use crate::txn::{
    ClientId, InvalidTxn, Outcome, Read, Rejection, Seen, Txn, TxnError, TxnId, TxnLimits, Write,
};
use crate::value::{Value, ValueLimits};
use crate::watch::{Delivery, WatchError, WatchId, WatchIndex, WatchKind};

/// How much history the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Versions newer than this many milliseconds, plus the golden value
    /// (config `history.horizon_ms`, default 10 minutes).
    HorizonMs(u64),
    /// Everything, for time travel and undo (config
    /// `history.horizon = "forever"`).
    Forever,
}

/// The engine's settings. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// This node's id, the tiebreak of its commit times.
    pub node: NodeId,
    /// Key and path limits.
    pub paths: PathLimits,
    /// Value limits.
    pub values: ValueLimits,
    /// Transaction limits.
    pub txns: TxnLimits,
    /// History retention.
    pub retention: Retention,
    /// Outcomes kept per client for dependencies and retries (config
    /// `limits.max_outcomes_per_client`).
    pub max_outcomes_per_client: usize,
    /// Most watchers at once (config `limits.max_watches`).
    pub max_watches: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node: 1,
            paths: PathLimits::default(),
            values: ValueLimits::default(),
            txns: TxnLimits::default(),
            retention: Retention::HorizonMs(10 * 60 * 1000),
            max_outcomes_per_client: 4096,
            max_watches: 1_000_000,
        }
    }
}

/// A committed transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// Its commit time: newer than every earlier commit; all its writes
    /// carry it.
    pub time: Time,
    /// Its id, if it carried one.
    pub id: Option<TxnId>,
    /// The leaf changes it made, sorted by path, one per path; includes
    /// the deletions implied by object and leaf replacement.
    pub changes: Arc<[Change]>,
    /// For each watcher it reaches, which of `changes` it must receive.
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Default)]
struct ClientLog {
    /// Highest sequence number decided.
    last_seq: Option<u64>,
    /// `(seq, outcome)`, seq strictly increasing, bounded.
    outcomes: VecDeque<(u64, Outcome)>,
    /// When the last decision was made: a log idle past the history
    /// horizon is dropped with the history.
    last_time: Time,
}

impl ClientLog {
    fn outcome(&self, seq: u64) -> Option<Outcome> {
        let i = self.outcomes.partition_point(|(s, _)| *s < seq);
        match self.outcomes.get(i) {
            Some((s, o)) if *s == seq => Some(*o),
            _ => None,
        }
    }
}

/// The commit engine of one authority. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    store: Store,
    hlc: Hlc,
    watches: WatchIndex,
    clients: FxHashMap<ClientId, ClientLog>,
}

impl Engine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            hlc: Hlc::new(config.node),
            watches: WatchIndex::new(config.max_watches),
            store: Store::new(),
            clients: FxHashMap::default(),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The versioned store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The newest commit time.
    pub fn newest(&self) -> Time {
        self.store.newest()
    }

    /// Decides one transaction; see the module docs for the steps. On
    /// error nothing was written.
    pub fn commit(&mut self, txn: Txn, wall_ms: u64) -> Result<Commit, TxnError> {
        let result = self.decide(&txn, wall_ms);
        if let Some(id) = txn.id {
            match &result {
                Ok(commit) => self.record(id, Outcome::Committed(commit.time)),
                // A retry or an out-of-order id is not a new decision.
                Err(TxnError::Invalid(
                    InvalidTxn::AlreadyDecided { .. } | InvalidTxn::OutOfOrder { .. },
                )) => {}
                Err(_) => self.record(id, Outcome::Rejected),
            }
        }
        result
    }

    fn decide(&mut self, txn: &Txn, wall_ms: u64) -> Result<Commit, TxnError> {
        self.check_id(txn)?;
        self.check_shape(txn)?;
        let ops = self.prepare_writes(&txn.writes)?;
        let changes = self.store.max_changes(&ops);
        if changes > self.config.txns.max_changes as u64 {
            return Err(InvalidTxn::TooManyChanges {
                count: changes,
                max: self.config.txns.max_changes,
            }
            .into());
        }
        // The deliberately broken build (feature `broken-engine`, used
        // only by tarn-verify's test that its runner catches it) commits
        // without checking what the transaction read.
        let checked = self.check_reads(txn);
        #[cfg(not(feature = "broken-engine"))]
        checked?;
        #[cfg(feature = "broken-engine")]
        let _ = checked;

        let time = self.hlc.now(wall_ms);
        let changes: Arc<[Change]> = self.store.apply(time, &ops).into();
        let deliveries = self.watches.deliveries(&changes);
        Ok(Commit {
            time,
            id: txn.id,
            changes,
            deliveries,
        })
    }

    fn check_id(&self, txn: &Txn) -> Result<(), InvalidTxn> {
        let needs_id = !txn.depends_on.is_empty()
            || txn
                .reads
                .iter()
                .any(|r| matches!(r.seen, Seen::Pending { .. }));
        let Some(id) = txn.id else {
            return if needs_id {
                Err(InvalidTxn::MissingId)
            } else {
                Ok(())
            };
        };
        let Some(log) = self.clients.get(&id.client) else {
            return Ok(());
        };
        match log.last_seq {
            Some(last) if id.seq <= last => match log.outcome(id.seq) {
                Some(outcome) => Err(InvalidTxn::AlreadyDecided { id, outcome }),
                // Within the kept window every commit is kept (also when
                // replayed from the log): a missing one never committed.
                None if log.outcomes.front().is_some_and(|(s, _)| *s < id.seq) => {
                    Err(InvalidTxn::AlreadyDecided {
                        id,
                        outcome: Outcome::Rejected,
                    })
                }
                None => Err(InvalidTxn::OutOfOrder { id, last }),
            },
            _ => Ok(()),
        }
    }

    fn check_shape(&self, txn: &Txn) -> Result<(), InvalidTxn> {
        let limits = &self.config.txns;
        if txn.reads.len() > limits.max_reads {
            return Err(InvalidTxn::TooManyReads {
                count: txn.reads.len(),
                max: limits.max_reads,
            });
        }
        if txn.writes.len() > limits.max_writes {
            return Err(InvalidTxn::TooManyWrites {
                count: txn.writes.len(),
                max: limits.max_writes,
            });
        }
        if txn.depends_on.len() > limits.max_dependencies {
            return Err(InvalidTxn::TooManyDependencies {
                count: txn.depends_on.len(),
                max: limits.max_dependencies,
            });
        }
        for read in &txn.reads {
            self.check_path(&read.path)?;
        }
        for write in &txn.writes {
            self.check_path(write.path())?;
        }
        if let Some(path) = first_duplicate(txn.reads.iter().map(|r| &r.path)) {
            return Err(InvalidTxn::DuplicateRead { path: path.clone() });
        }
        if let Some(path) = first_duplicate(txn.writes.iter().map(Write::path)) {
            return Err(InvalidTxn::DuplicateWrite { path: path.clone() });
        }
        let newest = self.store.newest();
        for read in &txn.reads {
            if let Seen::At(seen) = read.seen
                && seen > newest
            {
                return Err(InvalidTxn::SeenInFuture {
                    path: read.path.clone(),
                    seen,
                    newest,
                });
            }
        }
        Ok(())
    }

    fn check_path(&self, path: &Path) -> Result<(), InvalidTxn> {
        path.check(&self.config.paths)
            .map_err(|source| InvalidTxn::BadPath {
                path: path.clone(),
                source,
            })
    }

    /// Flattens the writes into leaf operations, checking every value and
    /// the transaction's totals.
    fn prepare_writes(&self, writes: &[Write]) -> Result<Vec<LeafOp>, InvalidTxn> {
        let (paths, values) = (&self.config.paths, &self.config.values);
        let mut ops = Vec::with_capacity(writes.len());
        let mut leaves_total = 0usize;
        let mut bytes_total = 0usize;
        let mut count = |leaves: &[(Path, Value)]| {
            leaves_total += leaves.len();
            bytes_total += leaves.iter().map(|(_, v)| v.json_len()).sum::<usize>();
        };
        for write in writes {
            match write {
                Write::Delete { path } => ops.push(LeafOp::Delete(path.clone())),
                Write::Set { path, value } => {
                    let op = replace_op(path, value, paths, values)?;
                    if let LeafOp::Replace { leaves, .. } = &op {
                        count(leaves);
                    }
                    ops.push(op);
                }
                Write::Patch { path, value } => {
                    let Value::Object(children) = value else {
                        return Err(InvalidTxn::PatchNotObject { path: path.clone() });
                    };
                    for (key, child) in children {
                        let key = crate::path::Key::new(key, paths).map_err(|source| {
                            crate::value::ValueError::BadKey {
                                path: path.clone(),
                                key: key.to_string(),
                                source,
                            }
                        })?;
                        let at = path
                            .child(key, paths)
                            .map_err(|source| InvalidTxn::BadPath {
                                path: path.clone(),
                                source,
                            })?;
                        let op = replace_op(&at, child, paths, values)?;
                        if let LeafOp::Replace { leaves, .. } = &op {
                            count(leaves);
                        }
                        ops.push(op);
                    }
                }
            }
        }
        let limits = &self.config.txns;
        if leaves_total > limits.max_leaves {
            return Err(InvalidTxn::TooManyLeaves {
                count: leaves_total,
                max: limits.max_leaves,
            });
        }
        if bytes_total > limits.max_bytes {
            return Err(InvalidTxn::TooLarge {
                bytes: bytes_total,
                max: limits.max_bytes,
            });
        }
        Ok(ops)
    }

    /// The commit time of dependency `on` of transaction `id`, or why the
    /// dependency fails `id`.
    fn dependency_outcome(&self, id: TxnId, on: TxnId) -> Result<Time, TxnError> {
        if on.client != id.client {
            return Err(InvalidTxn::ForeignDependency { txn: id, on }.into());
        }
        if on.seq >= id.seq {
            return Err(InvalidTxn::DependencyNotEarlier { txn: id, on }.into());
        }
        let log = self.clients.get(&on.client);
        match log.and_then(|l| l.outcome(on.seq)) {
            Some(Outcome::Committed(time)) => Ok(time),
            Some(Outcome::Rejected) => Err(Rejection::Dependency { on }.into()),
            // Not kept: forgotten if older than every outcome kept, else
            // never submitted (skipped, or not yet sent).
            None => match log.and_then(|l| l.outcomes.front()) {
                Some((oldest, _)) if on.seq < *oldest => {
                    Err(Rejection::DependencyForgotten { on }.into())
                }
                // Decided but not kept as a commit: it never committed
                // (refused before the engine, or rejected).
                _ if log
                    .and_then(|l| l.last_seq)
                    .is_some_and(|last| on.seq <= last) =>
                {
                    Err(Rejection::Dependency { on }.into())
                }
                _ => Err(InvalidTxn::DependencyNotSubmitted { txn: id, on }.into()),
            },
        }
    }

    fn check_reads(&self, txn: &Txn) -> Result<(), TxnError> {
        // Commit times of every dependency: the only writers a pending
        // read may have seen since its base.
        let mut allowed: Vec<Time> = Vec::new();
        if let Some(id) = txn.id {
            let pending = txn.reads.iter().filter_map(|r| match r.seen {
                Seen::Pending { on, .. } => Some(on),
                Seen::At(_) => None,
            });
            for on in txn.depends_on.iter().copied().chain(pending) {
                allowed.push(self.dependency_outcome(id, on)?);
            }
        }
        for read in &txn.reads {
            let stale = match read.seen {
                Seen::At(seen) => self.store.stale(&read.path, seen).map(|s| (seen, s)),
                Seen::Pending { base, .. } => {
                    if txn.id.is_none() {
                        return Err(InvalidTxn::MissingId.into());
                    }
                    // If a dependency committed before `base`, the client
                    // laid its writes over a state that already held them
                    // and maybe newer writes by others: check from the
                    // earlier of the two, so such a read is refused
                    // rather than hiding those writes.
                    let from = allowed.iter().copied().fold(base, Time::min);
                    self.store
                        .stale_except(&read.path, from, &allowed)
                        .map(|s| (from, s))
                }
            };
            if let Some((seen, stale)) = stale {
                return Err(self.rejection(read, seen, stale).into());
            }
        }
        Ok(())
    }

    fn rejection(&self, read: &Read, seen: Time, stale: Stale) -> Rejection {
        match stale {
            Stale::Compacted { floor } => Rejection::Compacted {
                path: read.path.clone(),
                seen,
                floor,
            },
            Stale::Newer(newer) => Rejection::Conflict {
                path: read.path.clone(),
                kind: read.kind,
                seen,
                newer,
            },
        }
    }

    fn record(&mut self, id: TxnId, outcome: Outcome) {
        let max = self.config.max_outcomes_per_client.max(1);
        let now = self.hlc.last();
        let log = self.clients.entry(id.client).or_default();
        debug_assert!(log.last_seq.is_none_or(|l| l < id.seq));
        log.last_seq = Some(id.seq);
        log.last_time = match outcome {
            Outcome::Committed(t) => t,
            Outcome::Rejected => now,
        };
        log.outcomes.push_back((id.seq, outcome));
        while log.outcomes.len() > max {
            log.outcomes.pop_front();
        }
    }

    /// True while the engine keeps outcomes of `client` (it decided one of
    /// its transactions within the history horizon, or replayed one).
    pub fn knows_client(&self, client: ClientId) -> bool {
        self.clients.contains_key(&client)
    }

    /// The recorded outcome of a transaction, while it is kept.
    pub fn outcome(&self, id: TxnId) -> Option<Outcome> {
        self.clients.get(&id.client)?.outcome(id.seq)
    }

    /// Drops what the engine remembers of a client (on disconnect).
    /// Transactions depending on its forgotten ones are refused afterwards.
    pub fn forget_client(&mut self, client: ClientId) {
        self.clients.remove(&client);
    }

    /// Registers a watcher. Its first deliveries come from the next
    /// commit; the caller sends the current value ([`Store::get`]) or the
    /// history since a resume time ([`Store::changes_since`]) first.
    pub fn watch(&mut self, path: Path, kind: WatchKind) -> Result<WatchId, WatchError> {
        self.watches.add(path, kind)
    }

    /// Removes a watcher; false if it was unknown.
    pub fn unwatch(&mut self, id: WatchId) -> bool {
        self.watches.remove(id)
    }

    /// The watch index, to look watchers up.
    pub fn watches(&self) -> &WatchIndex {
        &self.watches
    }

    /// Compacts history older than the retention horizon as of `wall_ms`.
    pub fn compact(&mut self, wall_ms: u64) {
        if let Retention::HorizonMs(horizon_ms) = self.config.retention {
            self.compact_to(Time::from_ms(wall_ms.saturating_sub(horizon_ms)));
        }
    }

    /// Like [`Engine::replay`], for a commit logged with its transaction
    /// id: the outcome is recorded as when it was decided, so a client
    /// retrying it after a restart gets the recorded answer instead of a
    /// second commit.
    pub fn replay_logged(
        &mut self,
        time: Time,
        id: Option<TxnId>,
        changes: &[Change],
    ) -> Result<Vec<Delivery>, ReplayError> {
        let deliveries = self.replay(time, changes)?;
        if let Some(id) = id
            && self
                .clients
                .get(&id.client)
                .and_then(|l| l.last_seq)
                .is_none_or(|last| last < id.seq)
        {
            self.record(id, Outcome::Committed(time));
        }
        Ok(deliveries)
    }

    /// Applies a commit recovered from a log, in time order, and moves the
    /// clock past it: after replaying the log, new commits are newer than
    /// everything in it, even if the wall clock went back. Returns the
    /// deliveries for watchers registered meanwhile. An out-of-order
    /// commit is refused and changes nothing.
    pub fn replay(&mut self, time: Time, changes: &[Change]) -> Result<Vec<Delivery>, ReplayError> {
        self.store.replay(time, changes)?;
        self.hlc = Hlc::resume(self.config.node, time.max(self.hlc.last()));
        Ok(self.watches.deliveries(changes))
    }

    /// Compacts history older than `horizon` (an explicit time, as when
    /// history before an archive's cut was dropped on disk).
    pub fn compact_to(&mut self, horizon: Time) {
        self.store.compact(horizon);
        // Outcomes are kept as long as history: a client idle past the
        // horizon is forgotten (its retries then get `OutOfOrder`).
        self.clients.retain(|_, log| log.last_time >= horizon);
    }
}

fn replace_op(
    path: &Path,
    value: &Value,
    paths: &PathLimits,
    values: &ValueLimits,
) -> Result<LeafOp, InvalidTxn> {
    let mut leaves = Vec::new();
    value.flatten_into(path, paths, values, &mut leaves)?;
    Ok(if leaves.is_empty() {
        LeafOp::Delete(path.clone())
    } else {
        LeafOp::Replace {
            at: path.clone(),
            leaves,
        }
    })
}

/// The first path listed twice. Pairwise for short lists (no allocation),
/// hashed for long ones.
fn first_duplicate<'a>(paths: impl ExactSizeIterator<Item = &'a Path> + Clone) -> Option<&'a Path> {
    if paths.len() <= 8 {
        let mut rest = paths.clone();
        while let Some(p) = rest.next() {
            if rest.clone().any(|q| q == p) {
                return Some(p);
            }
        }
        return None;
    }
    let mut seen = FxHashSet::default();
    paths.into_iter().find(|&p| !seen.insert(p))
}
