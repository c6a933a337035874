//! The checker: infers the dependencies between the transactions of a
//! [`History`] and names every way they break serializability (and, with
//! [`CheckOptions::strict`], strict serializability), in the style of
//! Jepsen's Elle (Kingsbury and Alvaro, "Elle: Inferring Isolation
//! Anomalies from Experimental Observations", 2020) over Adya's anomaly
//! classes.
//!
//! How it works:
//! 1. Every written value is unique per key, so each value read names the
//!    transaction that wrote it. A read of a value nobody wrote is a
//!    *garbage read*, of a value a failed transaction wrote is *G1a*
//!    (aborted read), of a value its writer overwrote in the same
//!    transaction is *G1b* (intermediate read).
//! 2. The order of versions of each key: for lists, every read must be a
//!    prefix of the longest (else *incompatible order*); for registers, a
//!    transaction that read `v1` and wrote `v2` puts `v1` before `v2`, and
//!    the initial absent state comes before every write.
//! 3. Edges between transactions: *ww* (wrote the next version), *wr*
//!    (read what the other wrote), *rw* (read a version the other
//!    overwrote), and with `strict`, *rt* (completed before the other was
//!    invoked; kept linear by a chain of time nodes).
//! 4. Cycles, most specific first: only ww (*G0*, dirty write); ww and wr
//!    (*G1c*, circular information flow); exactly one rw (*G-single*,
//!    read skew); more rw (*G2*, anti-dependency cycle); through rt with an
//!    rw (*stale read*) or without (*G1c-realtime*).
//! 5. Two transactions that read the same version of a key and both wrote
//!    it: *lost update*. A write acknowledged `ok` missing from the final
//!    read after recovery: *lost acknowledged write*.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde::Serialize;

use crate::history::{History, Mop, Observed, Outcome, Workload};

/// What the checker assumes and how much it prints.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Check strict serializability: a transaction that completed before
    /// another was invoked must be ordered before it.
    pub strict: bool,
    /// Examples kept per anomaly kind (every instance is counted).
    pub max_examples: usize,
    /// Most cycle searches per strongly connected component and kind:
    /// bounds the time spent on a badly broken history.
    pub max_searches: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            strict: true,
            max_examples: 5,
            max_searches: 200,
        }
    }
}

/// The anomalies the checker names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum AnomalyKind {
    /// A cycle of write-write dependencies (dirty write).
    G0,
    /// A read of a value written by a transaction that failed.
    G1a,
    /// A read of a value its writer overwrote in the same transaction.
    G1b,
    /// A cycle of write-write and write-read dependencies.
    G1c,
    /// A cycle with exactly one read-write anti-dependency (read skew).
    GSingle,
    /// A cycle with more than one read-write anti-dependency.
    G2,
    /// Two committed transactions read the same version of a key and both
    /// wrote it.
    LostUpdate,
    /// A write acknowledged `ok` is missing after the final recovery.
    LostAckedWrite,
    /// A read missed a write that completed before the read began.
    StaleRead,
    /// A transaction ordered (by ww/wr) before one that completed before
    /// it began.
    G1cRealtime,
    /// Two reads of one list that are not prefixes of each other.
    IncompatibleOrder,
    /// A list holding a value twice.
    DuplicateElements,
    /// A read of a value no transaction wrote.
    GarbageRead,
    /// A transaction whose reads disagree with its own earlier reads or
    /// writes.
    Internal,
}

impl AnomalyKind {
    /// The name printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::G0 => "G0",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::G1b => "G1b",
            AnomalyKind::G1c => "G1c",
            AnomalyKind::GSingle => "G-single",
            AnomalyKind::G2 => "G2",
            AnomalyKind::LostUpdate => "lost-update",
            AnomalyKind::LostAckedWrite => "lost-acknowledged-write",
            AnomalyKind::StaleRead => "stale-read",
            AnomalyKind::G1cRealtime => "G1c-realtime",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::DuplicateElements => "duplicate-elements",
            AnomalyKind::GarbageRead => "garbage-read",
            AnomalyKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One anomaly found, with the transactions involved.
#[derive(Clone, Debug, Serialize)]
pub struct Anomaly {
    /// Its class.
    pub kind: AnomalyKind,
    /// The transactions involved (for a cycle, in cycle order).
    pub ops: Vec<usize>,
    /// What happened, naming the transactions, keys and values.
    pub explanation: String,
}

/// The checker's verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Operations in the history.
    pub ops: usize,
    /// Of which `ok`.
    pub ok: usize,
    /// Of which `fail`.
    pub fail: usize,
    /// Of which `info`.
    pub info: usize,
    /// Instances found, by kind.
    pub counts: BTreeMap<AnomalyKind, usize>,
    /// Up to [`CheckOptions::max_examples`] of each kind.
    pub examples: Vec<Anomaly>,
}

impl Report {
    /// Every anomaly found, of any kind.
    pub fn anomalies(&self) -> usize {
        self.counts.values().sum()
    }

    /// Lost acknowledged writes.
    pub fn lost_acked(&self) -> usize {
        self.counts
            .get(&AnomalyKind::LostAckedWrite)
            .copied()
            .unwrap_or(0)
    }

    /// True when nothing was found.
    pub fn is_valid(&self) -> bool {
        self.anomalies() == 0
    }

    /// Whether an anomaly of `kind` was found.
    pub fn has(&self, kind: AnomalyKind) -> bool {
        self.counts.get(&kind).is_some_and(|n| *n > 0)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} operations: {} ok, {} fail, {} info",
            self.ops, self.ok, self.fail, self.info
        )?;
        if self.is_valid() {
            return writeln!(f, "no anomalies");
        }
        for (kind, n) in &self.counts {
            writeln!(f, "{kind}: {n}")?;
        }
        for a in &self.examples {
            writeln!(f, "- {}: {}", a.kind, a.explanation)?;
        }
        Ok(())
    }
}

/// Writers of one register key beyond which no real-time version order
/// is inferred (the inference is quadratic).
const REALTIME_WRITERS_PER_KEY: usize = 2_000;

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;

fn edge_name(kind: u8) -> &'static str {
    if kind & WW != 0 {
        "ww"
    } else if kind & WR != 0 {
        "wr"
    } else if kind & RW != 0 {
        "rw"
    } else {
        "rt"
    }
}

/// Collects anomalies, counting all and keeping a few examples of each.
struct Found<'h> {
    history: &'h History,
    options: CheckOptions,
    report: Report,
}

impl Found<'_> {
    fn add(&mut self, kind: AnomalyKind, ops: Vec<usize>, explanation: impl FnOnce() -> String) {
        let n = self.report.counts.entry(kind).or_insert(0);
        *n += 1;
        if *n <= self.options.max_examples {
            self.report.examples.push(Anomaly {
                kind,
                ops,
                explanation: explanation(),
            });
        }
    }
}

/// Where a value came from: the operation that wrote it and whether it
/// was that operation's last write to the key.
#[derive(Clone, Copy)]
struct Source {
    op: usize,
    last: bool,
}

/// What one `ok` transaction saw of one key from outside itself: the
/// version before its own writes.
#[derive(Clone, Debug, PartialEq)]
enum External {
    List(Vec<i64>),
    Register(Option<i64>),
}

/// Checks `history`.
///
/// # Errors
/// When the history is malformed: a value written twice to one key, or a
/// read of the wrong shape for the workload.
pub fn check(history: &History, options: CheckOptions) -> anyhow::Result<Report> {
    let mut found = Found {
        history,
        options,
        report: Report::default(),
    };
    for op in &history.ops {
        found.report.ops += 1;
        match op.outcome {
            Outcome::Ok => found.report.ok += 1,
            Outcome::Fail => found.report.fail += 1,
            Outcome::Info => found.report.info += 1,
        }
    }

    // 1. Who wrote what.
    let mut sources: HashMap<(u64, i64), Source> = HashMap::new();
    for op in &history.ops {
        let mut last_of_key: HashMap<u64, i64> = HashMap::new();
        for m in &op.mops {
            let (key, value) = match (history.workload, m) {
                (Workload::ListAppend, Mop::Append { key, value })
                | (Workload::RwRegister, Mop::Write { key, value }) => (*key, *value),
                (_, Mop::Read { .. }) => continue,
                (w, m) => anyhow::bail!("T{}: `{m}` is not an operation of {}", op.id, w.name()),
            };
            if let Some(prev) = sources.insert(
                (key, value),
                Source {
                    op: op.id,
                    last: true,
                },
            ) {
                anyhow::bail!(
                    "value {value} is written to key {key} by both T{} and T{}; values must be unique per key",
                    prev.op,
                    op.id
                );
            }
            if let Some(before) = last_of_key.insert(key, value)
                && let Some(s) = sources.get_mut(&(key, before))
            {
                s.last = false;
            }
        }
    }

    // 2. What each ok transaction saw from outside, per key, and the
    //    values it read: garbage, aborted, intermediate, duplicated, or
    //    its own future writes; internal consistency on the way.
    let read_value = |found: &mut Found, reader: usize, key: u64, v: i64, at_end: bool| {
        match sources.get(&(key, v)) {
            None => found.add(AnomalyKind::GarbageRead, vec![reader], || {
                format!(
                    "{} read value {v} at key {key}, which no transaction wrote",
                    found_op(history, reader)
                )
            }),
            Some(s) if history.ops[s.op].outcome == Outcome::Fail => {
                found.add(AnomalyKind::G1a, vec![s.op, reader], || {
                    format!(
                        "{} read value {v} at key {key}, written by {}, which failed",
                        found_op(history, reader),
                        found_op(history, s.op)
                    )
                });
            }
            Some(s) if s.op == reader => {
                found.add(AnomalyKind::Internal, vec![reader], || {
                    format!(
                        "{} read value {v} at key {key} before writing it itself",
                        found_op(history, reader)
                    )
                });
            }
            Some(s) if at_end && !s.last => {
                found.add(AnomalyKind::G1b, vec![s.op, reader], || {
                    format!(
                        "{} read value {v} at key {key}, an intermediate value of {}, which wrote the key again",
                        found_op(history, reader),
                        found_op(history, s.op)
                    )
                });
            }
            Some(_) => {}
        }
    };
    let mut external: HashMap<(usize, u64), External> = HashMap::new();
    // Every full list read, for the version order.
    let mut list_reads: HashMap<u64, Vec<(usize, Vec<i64>)>> = HashMap::new();
    for op in history.ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        let mut own: HashMap<u64, Vec<i64>> = HashMap::new();
        for m in &op.mops {
            match m {
                Mop::Append { key, value } | Mop::Write { key, value } => {
                    own.entry(*key).or_default().push(*value);
                }
                Mop::Read { key, value } => {
                    let mine = own.get(key).map(Vec::as_slice).unwrap_or(&[]);
                    let ext = match (history.workload, value) {
                        (Workload::ListAppend, Observed::List(list)) => {
                            list_reads
                                .entry(*key)
                                .or_default()
                                .push((op.id, list.clone()));
                            let mut seen = HashSet::new();
                            for v in list {
                                if !seen.insert(*v) {
                                    found.add(AnomalyKind::DuplicateElements, vec![op.id], || {
                                        format!(
                                            "{} read {list:?} at key {key}: {v} appears twice",
                                            found_op(history, op.id)
                                        )
                                    });
                                }
                            }
                            if !list.ends_with(mine) {
                                found.add(AnomalyKind::Internal, vec![op.id], || {
                                    format!(
                                        "{} read {list:?} at key {key} after appending {mine:?} itself",
                                        found_op(history, op.id)
                                    )
                                });
                                for v in list {
                                    read_value(&mut found, op.id, *key, *v, false);
                                }
                                continue;
                            }
                            let prefix = &list[..list.len() - mine.len()];
                            for (i, v) in prefix.iter().enumerate() {
                                read_value(&mut found, op.id, *key, *v, i + 1 == prefix.len());
                            }
                            External::List(prefix.to_vec())
                        }
                        (Workload::RwRegister, Observed::Register(v)) => {
                            if let Some(last) = mine.last() {
                                if *v != Some(*last) {
                                    found.add(AnomalyKind::Internal, vec![op.id], || {
                                        format!(
                                            "{} read {v:?} at key {key} after writing {last} itself",
                                            found_op(history, op.id)
                                        )
                                    });
                                }
                                continue;
                            }
                            if let Some(v) = v {
                                read_value(&mut found, op.id, *key, *v, true);
                            }
                            External::Register(*v)
                        }
                        (_, Observed::Unknown) => {
                            anyhow::bail!("T{} is ok but its read of key {key} has no value", op.id)
                        }
                        (w, v) => anyhow::bail!(
                            "T{}: a read of {v:?} is not a read of {}",
                            op.id,
                            w.name()
                        ),
                    };
                    match external.get(&(op.id, *key)) {
                        Some(first) if *first != ext => {
                            found.add(AnomalyKind::Internal, vec![op.id], || {
                                format!(
                                    "{} read key {key} twice from outside and saw {first:?}, then {ext:?}",
                                    found_op(history, op.id)
                                )
                            });
                        }
                        Some(_) => {}
                        None => {
                            external.insert((op.id, *key), ext);
                        }
                    }
                }
            }
        }
    }

    // 4. Version orders and the dependency graph.
    let mut edges: HashMap<(usize, usize), u8> = HashMap::new();
    let in_graph = |id: usize| history.ops[id].outcome != Outcome::Fail;
    let edge = |edges: &mut HashMap<(usize, usize), u8>, from: usize, to: usize, kind: u8| {
        if from != to && in_graph(from) && in_graph(to) {
            *edges.entry((from, to)).or_insert(0) |= kind;
        }
    };
    let writer = |key: u64, v: i64| sources.get(&(key, v)).map(|s| s.op);
    match history.workload {
        Workload::ListAppend => {
            // The longest read of each key is its order; every read must
            // be a prefix of it.
            let mut orders: HashMap<u64, Vec<i64>> = HashMap::new();
            let mut keys: Vec<_> = list_reads.keys().copied().collect();
            keys.sort_unstable();
            for key in keys {
                let reads = &list_reads[&key];
                let Some((longest_op, longest)) = reads.iter().max_by_key(|(_, l)| l.len()) else {
                    continue;
                };
                for (op, list) in reads {
                    if !longest.starts_with(list) {
                        found.add(AnomalyKind::IncompatibleOrder, vec![*op, *longest_op], || {
                            format!(
                                "key {key}: {} read {list:?} but {} read {longest:?}; one must be a prefix of the other",
                                found_op(history, *op),
                                found_op(history, *longest_op)
                            )
                        });
                    }
                }
                orders.insert(key, longest.clone());
            }
            for (key, order) in &orders {
                for pair in order.windows(2) {
                    if let (Some(a), Some(b)) = (writer(*key, pair[0]), writer(*key, pair[1])) {
                        edge(&mut edges, a, b, WW);
                    }
                }
            }
            // Committed appends no read shows come after every read
            // version, in an unknown order.
            let shown: HashMap<u64, HashSet<i64>> = orders
                .iter()
                .map(|(k, o)| (*k, o.iter().copied().collect()))
                .collect();
            let mut unread: HashMap<u64, Vec<usize>> = HashMap::new();
            for ((key, value), s) in &sources {
                let shown = shown.get(key).is_some_and(|o| o.contains(value));
                if !shown && history.ops[s.op].outcome == Outcome::Ok {
                    unread.entry(*key).or_default().push(s.op);
                }
            }
            for ((reader, key), ext) in &external {
                let External::List(prefix) = ext else {
                    continue;
                };
                if let Some(w) = prefix.last().and_then(|v| writer(*key, *v)) {
                    edge(&mut edges, w, *reader, WR);
                }
                match orders.get(key).and_then(|o| o.get(prefix.len())) {
                    Some(next) => {
                        if let Some(w) = writer(*key, *next) {
                            edge(&mut edges, *reader, w, RW);
                        }
                    }
                    None => {
                        for w in unread.get(key).into_iter().flatten() {
                            edge(&mut edges, *reader, *w, RW);
                        }
                    }
                }
            }
        }
        Workload::RwRegister => {
            // v1 before v2 when a transaction read v1 and then wrote v2;
            // the absent initial state before every write.
            let mut successors: HashMap<(u64, Option<i64>), Vec<i64>> = HashMap::new();
            for ((op, key), ext) in &external {
                let External::Register(v1) = ext else {
                    continue;
                };
                let last_write = history.ops[*op].mops.iter().rev().find_map(|m| match m {
                    Mop::Write { key: k, value } if k == key => Some(*value),
                    _ => None,
                });
                if let Some(v2) = last_write {
                    successors.entry((*key, *v1)).or_default().push(v2);
                }
            }
            let mut writers_of: HashMap<u64, Vec<usize>> = HashMap::new();
            for ((key, _), s) in &sources {
                if s.last {
                    writers_of.entry(*key).or_default().push(s.op);
                }
            }
            // Strict serializability orders the versions of writes that
            // follow one another in real time: an ok write completed
            // before another was invoked installed the older version.
            // Quadratic per key, so only for keys of a bounded number of
            // writers (keys rotate; a key with more gets no such order).
            if options.strict {
                for (key, writers) in &writers_of {
                    if writers.len() > REALTIME_WRITERS_PER_KEY {
                        continue;
                    }
                    let last_write = |op: usize| {
                        history.ops[op].mops.iter().rev().find_map(|m| match m {
                            Mop::Write { key: k, value } if k == key => Some(*value),
                            _ => None,
                        })
                    };
                    for a in writers {
                        let oa = &history.ops[*a];
                        let Some(done) = oa.completed_ns.filter(|_| oa.outcome == Outcome::Ok)
                        else {
                            continue;
                        };
                        for b in writers {
                            if history.ops[*b].invoked_ns > done
                                && let (Some(v1), Some(v2)) = (last_write(*a), last_write(*b))
                            {
                                successors.entry((*key, Some(v1))).or_default().push(v2);
                            }
                        }
                    }
                }
            }
            for ((key, v1), nexts) in &successors {
                for v2 in nexts {
                    if let (Some(v1), Some(b)) = (v1, writer(*key, *v2))
                        && let Some(a) = writer(*key, *v1)
                    {
                        edge(&mut edges, a, b, WW);
                    }
                }
            }
            for ((reader, key), ext) in &external {
                let External::Register(v) = ext else {
                    continue;
                };
                match v {
                    Some(v) => {
                        if let Some(w) = writer(*key, *v) {
                            edge(&mut edges, w, *reader, WR);
                        }
                        for next in successors.get(&(*key, Some(*v))).into_iter().flatten() {
                            if let Some(w) = writer(*key, *next) {
                                edge(&mut edges, *reader, w, RW);
                            }
                        }
                    }
                    // Read the initial state: before every write of the key.
                    None => {
                        for w in writers_of.get(key).into_iter().flatten() {
                            edge(&mut edges, *reader, *w, RW);
                        }
                    }
                }
            }
        }
    }

    // 5. Lost updates: two committed transactions that read the same
    //    version of a key and both wrote it.
    // A list version is its length and last element; a register's, its
    // value.
    let mut by_version: BTreeMap<(u64, usize, Option<i64>), Vec<usize>> = BTreeMap::new();
    for ((op, key), ext) in &external {
        let writes_key = history.ops[*op].mops.iter().any(|m| match m {
            Mop::Append { key: k, .. } | Mop::Write { key: k, .. } => k == key,
            Mop::Read { .. } => false,
        });
        if writes_key {
            let version = match ext {
                External::List(l) => (*key, l.len(), l.last().copied()),
                External::Register(v) => (*key, 0, *v),
            };
            by_version.entry(version).or_default().push(*op);
        }
    }
    for ((key, _, _), mut ops) in by_version {
        if ops.len() > 1 {
            ops.sort_unstable();
            found.add(AnomalyKind::LostUpdate, ops.clone(), || {
                let names: Vec<String> = ops.iter().map(|o| found_op(history, *o)).collect();
                format!(
                    "key {key}: {} all read the same version and wrote the key; one update is lost",
                    names.join(" and ")
                )
            });
        }
    }

    // 6. Lost acknowledged writes: missing from the final read.
    let mut finals: HashMap<u64, (usize, Option<HashSet<i64>>)> = HashMap::new();
    for (fin, key, value) in history.final_reads() {
        match value {
            Observed::List(list) => {
                finals.insert(key, (fin, Some(list.iter().copied().collect())));
            }
            // A register's final value: only its absence proves a loss.
            Observed::Register(None) => {
                finals.insert(key, (fin, None));
            }
            _ => {}
        }
    }
    for op in history.ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        for w in &op.mops {
            let lost = match w {
                Mop::Append { key, value } => finals
                    .get(key)
                    .filter(|(_, shown)| shown.as_ref().is_some_and(|s| !s.contains(value))),
                Mop::Write { key, .. } => finals.get(key).filter(|(_, shown)| shown.is_none()),
                Mop::Read { .. } => None,
            };
            if let Some((fin, _)) = lost {
                let fin = *fin;
                found.add(AnomalyKind::LostAckedWrite, vec![op.id, fin], || {
                    format!(
                        "{} was acknowledged, but its `{w}` is missing from the final read {}",
                        found_op(history, op.id),
                        found_op(history, fin)
                    )
                });
            }
        }
    }

    // 7. Cycles.
    let mut graph: DiGraph<(), u8> = DiGraph::with_capacity(history.ops.len(), edges.len());
    for _ in &history.ops {
        graph.add_node(());
    }
    let mut edges: Vec<_> = edges.into_iter().collect();
    edges.sort_unstable();
    for ((a, b), kind) in edges {
        graph.add_edge(NodeIndex::new(a), NodeIndex::new(b), kind);
    }
    let explained = cycles(&mut found, &graph);
    if options.strict {
        realtime(&mut found, &mut graph, &explained);
    }
    Ok(found.report)
}

fn found_op(history: &History, id: usize) -> String {
    history
        .ops
        .get(id)
        .map_or_else(|| format!("T{id}"), ToString::to_string)
}

/// Strongly connected components (of more than one node) of the edges
/// whose kinds meet `mask`.
fn sccs(graph: &DiGraph<(), u8>, mask: u8) -> Vec<Vec<NodeIndex>> {
    let filtered = petgraph::visit::EdgeFiltered::from_fn(graph, |e| *e.weight() & mask != 0);
    petgraph::algo::tarjan_scc(&filtered)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect()
}

/// The shortest path from `from` to `to` over edges meeting `mask`,
/// within `within`: each step is (node, kind of the edge into it).
fn path(
    graph: &DiGraph<(), u8>,
    from: NodeIndex,
    to: NodeIndex,
    mask: u8,
    within: &HashSet<NodeIndex>,
) -> Option<Vec<(NodeIndex, u8)>> {
    let mut prev: HashMap<NodeIndex, (NodeIndex, u8)> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = HashSet::from([from]);
    while let Some(n) = queue.pop_front() {
        if n == to {
            let mut steps = Vec::new();
            let mut at = to;
            while at != from {
                let (p, kind) = prev[&at];
                steps.push((at, kind));
                at = p;
            }
            steps.reverse();
            return Some(steps);
        }
        for e in graph.edges(n) {
            let kind = *e.weight() & mask;
            let t = e.target();
            if kind != 0 && within.contains(&t) && seen.insert(t) {
                prev.insert(t, (n, kind));
                queue.push_back(t);
            }
        }
    }
    None
}

/// Describes a cycle: `start`, then each (node, edge kind into it).
fn describe(found: &Found, start: NodeIndex, steps: &[(NodeIndex, u8)]) -> (Vec<usize>, String) {
    let mut ops = vec![start.index()];
    let mut text = found_op(found.history, start.index());
    for (n, kind) in steps {
        text.push_str(&format!(" -{}-> ", edge_name(*kind)));
        if *n == start {
            text.push_str(&format!("T{}", n.index()));
        } else {
            ops.push(n.index());
            text.push_str(&found_op(found.history, n.index()));
        }
    }
    (ops, text)
}

/// The cycle through edge `a -kind-> b`, closing over `mask` edges.
fn cycle_through(
    graph: &DiGraph<(), u8>,
    (a, b, kind): (NodeIndex, NodeIndex, u8),
    mask: u8,
    within: &HashSet<NodeIndex>,
) -> Option<Vec<(NodeIndex, u8)>> {
    let back = path(graph, b, a, mask, within)?;
    let mut steps = vec![(b, kind)];
    steps.extend(back);
    Some(steps)
}

/// Reports the cycles without real-time edges; returns each node's
/// strongly connected component (of ww, wr and rw edges) that holds one.
fn cycles(found: &mut Found, graph: &DiGraph<(), u8>) -> HashMap<NodeIndex, usize> {
    let searches = found.options.max_searches;
    // G0: write-write only.
    for scc in sccs(graph, WW) {
        let within: HashSet<_> = scc.iter().copied().collect();
        let start = scc[0];
        if let Some(e) = graph
            .edges(start)
            .find(|e| *e.weight() & WW != 0 && within.contains(&e.target()))
            && let Some(steps) = cycle_through(graph, (start, e.target(), WW), WW, &within)
        {
            let (ops, text) = describe(found, start, &steps);
            found.add(AnomalyKind::G0, ops, || text);
        }
    }
    // G1c: write-write and write-read, through at least one wr.
    for scc in sccs(graph, WW | WR) {
        let within: HashSet<_> = scc.iter().copied().collect();
        let wr = scc.iter().find_map(|n| {
            graph
                .edges(*n)
                .find(|e| *e.weight() & WR != 0 && within.contains(&e.target()))
                .map(|e| (*n, e.target()))
        });
        if let Some((a, b)) = wr
            && let Some(steps) = cycle_through(graph, (a, b, WR), WW | WR, &within)
        {
            let (ops, text) = describe(found, a, &steps);
            found.add(AnomalyKind::G1c, ops, || text);
        }
    }
    // G-single (exactly one rw) and G2 (more).
    let mut explained = HashMap::new();
    for (i, scc) in sccs(graph, WW | WR | RW).into_iter().enumerate() {
        explained.extend(scc.iter().map(|n| (*n, i)));
        let within: HashSet<_> = scc.iter().copied().collect();
        let rws: Vec<(NodeIndex, NodeIndex)> = scc
            .iter()
            .flat_map(|n| {
                graph
                    .edges(*n)
                    // An rw edge that is also ww or wr closes a cycle
                    // of a lower class, reported above.
                    .filter(|e| {
                        *e.weight() & RW != 0
                            && *e.weight() & (WW | WR) == 0
                            && within.contains(&e.target())
                    })
                    .map(|e| (*n, e.target()))
            })
            .take(searches)
            .collect();
        let mut single = false;
        for (a, b) in &rws {
            if let Some(steps) = cycle_through(graph, (*a, *b, RW), WW | WR, &within) {
                single = true;
                let (ops, text) = describe(found, *a, &steps);
                found.add(AnomalyKind::GSingle, ops, || text);
            }
        }
        if !single
            && let Some((a, b)) = rws.first()
            && let Some(steps) = cycle_through(graph, (*a, *b, RW), WW | WR | RW, &within)
        {
            let (ops, text) = describe(found, *a, &steps);
            found.add(AnomalyKind::G2, ops, || text);
        }
    }
    explained
}

/// Strict serializability: adds real-time edges (an `ok` transaction
/// before every transaction invoked after it completed) as a chain of
/// time nodes, then looks for cycles through them.
fn realtime(found: &mut Found, graph: &mut DiGraph<(), u8>, explained: &HashMap<NodeIndex, usize>) {
    let history = found.history;
    let ops = graph.node_count();
    // Direct inversions first: a dependency on a transaction invoked only
    // after this one completed.
    let mut inversions = Vec::new();
    for e in graph.edge_references() {
        let (a, b) = (e.source().index(), e.target().index());
        let (oa, ob) = (&history.ops[a], &history.ops[b]);
        if ob.outcome == Outcome::Ok
            && let Some(done) = ob.completed_ns
            && done < oa.invoked_ns
        {
            inversions.push((a, b, *e.weight()));
        }
    }
    for (a, b, kind) in inversions {
        let anomaly = if kind & (WW | WR) != 0 {
            AnomalyKind::G1cRealtime
        } else {
            AnomalyKind::StaleRead
        };
        found.add(anomaly, vec![a, b], || {
            format!(
                "{} -{}-> {}, but the latter completed before the former was invoked",
                found_op(history, a),
                edge_name(kind),
                found_op(history, b)
            )
        });
    }

    // The chain: one time node per completion of an ok transaction.
    let mut done: Vec<(u64, usize)> = history
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| o.completed_ns.map(|c| (c, o.id)))
        .collect();
    done.sort_unstable();
    let times: Vec<NodeIndex> = done.iter().map(|_| graph.add_node(())).collect();
    for (i, (_, op)) in done.iter().enumerate() {
        graph.add_edge(NodeIndex::new(*op), times[i], RT);
        if i + 1 < times.len() {
            graph.add_edge(times[i], times[i + 1], RT);
        }
    }
    for op in history.ops.iter().filter(|o| o.outcome != Outcome::Fail) {
        // The last completion strictly before this invocation.
        let n = done.partition_point(|(c, _)| *c < op.invoked_ns);
        if n > 0 {
            graph.add_edge(times[n - 1], NodeIndex::new(op.id), RT);
        }
    }
    for scc in sccs(graph, WW | WR | RW | RT) {
        // Transactions all in one cycle already reported without time:
        // nothing new.
        let mut components = scc
            .iter()
            .filter(|n| n.index() < ops)
            .map(|n| explained.get(n));
        let first = components.next().flatten();
        if first.is_some() && components.all(|c| c == first) {
            continue;
        }
        let within: HashSet<_> = scc.iter().copied().collect();
        // A cycle through an ok transaction's edge into the chain.
        let into_chain = scc.iter().filter(|n| n.index() < ops).find_map(|n| {
            graph
                .edges(*n)
                .find(|e| *e.weight() & RT != 0 && within.contains(&e.target()))
                .map(|e| (*n, e.target()))
        });
        let Some((a, t)) = into_chain else { continue };
        let Some(steps) = cycle_through(graph, (a, t, RT), WW | WR | RW | RT, &within) else {
            continue;
        };
        // Collapse the time nodes into rt edges between transactions.
        let mut collapsed: Vec<(NodeIndex, u8)> = Vec::new();
        let mut via_time = false;
        for (n, kind) in steps {
            if n.index() >= ops {
                via_time = true;
                continue;
            }
            collapsed.push((n, if via_time { RT } else { kind }));
            via_time = false;
        }
        let has_rw = collapsed.iter().any(|(_, k)| *k & RW != 0);
        let kind = if has_rw {
            AnomalyKind::StaleRead
        } else {
            AnomalyKind::G1cRealtime
        };
        let (ops_in, text) = describe(found, a, &collapsed);
        found.add(kind, ops_in, || text);
    }
}
