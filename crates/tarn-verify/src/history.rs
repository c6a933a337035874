//! Histories: every transaction a test issued, what it did and how it
//! ended, as the checker reads them.
//!
//! A transaction is a list of micro-operations ([`Mop`]) on integer keys.
//! Two workloads share the format: `list-append` (each key holds a list;
//! [`Mop::Append`] adds a unique value, [`Mop::Read`] sees the whole list)
//! and `rw-register` (each key holds one integer; [`Mop::Write`] sets a
//! unique value, [`Mop::Read`] sees it or nothing). An operation is
//! recorded when invoked and again when it completes: `ok` (committed, and
//! the reads are known), `fail` (certainly not committed) or `info`
//! (unknown: it may have committed, at any time after its invocation).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Which kind of data the keys hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Keys hold lists; transactions append unique values and read lists.
    ListAppend,
    /// Keys hold one integer; transactions write unique values and read.
    RwRegister,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::ListAppend => "list-append",
            Workload::RwRegister => "rw-register",
        }
    }
}

/// What a read saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// Not known: the operation has not completed, or ended `info`/`fail`.
    Unknown,
    /// A list (list-append); empty when the key is absent.
    List(Vec<i64>),
    /// A register's value (rw-register); `None` when absent.
    Register(Option<i64>),
}

/// One micro-operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mop {
    /// Appends `value` (unique per key) to the list at `key`.
    Append {
        /// The key.
        key: u64,
        /// The value appended.
        value: i64,
    },
    /// Sets the register at `key` to `value` (unique per key).
    Write {
        /// The key.
        key: u64,
        /// The value written.
        value: i64,
    },
    /// Reads `key`.
    Read {
        /// The key.
        key: u64,
        /// What it saw.
        value: Observed,
    },
}

impl Mop {
    /// The key the micro-operation touches.
    pub fn key(&self) -> u64 {
        match self {
            Mop::Append { key, .. } | Mop::Write { key, .. } | Mop::Read { key, .. } => *key,
        }
    }
}

/// A list for people: long ones keep their ends.
fn short_list(f: &mut std::fmt::Formatter<'_>, list: &[i64]) -> std::fmt::Result {
    const ENDS: usize = 3;
    if list.len() <= 2 * ENDS + 1 {
        return write!(f, "{list:?}");
    }
    let (head, tail) = (&list[..ENDS], &list[list.len() - ENDS..]);
    let inner = |xs: &[i64]| xs.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    write!(
        f,
        "[{}, …{} more…, {}]",
        inner(head),
        list.len() - 2 * ENDS,
        inner(tail)
    )
}

impl std::fmt::Display for Mop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mop::Append { key, value } => write!(f, "append {key} {value}"),
            Mop::Write { key, value } => write!(f, "w {key} {value}"),
            Mop::Read { key, value } => match value {
                Observed::Unknown => write!(f, "r {key} ?"),
                Observed::List(l) => {
                    write!(f, "r {key} ")?;
                    short_list(f, l)
                }
                Observed::Register(Some(v)) => write!(f, "r {key} {v}"),
                Observed::Register(None) => write!(f, "r {key} nil"),
            },
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Committed; its reads are known.
    Ok,
    /// Certainly not committed.
    Fail,
    /// Unknown: may have committed, at any time after its invocation.
    Info,
}

/// One transaction of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Its index in [`History::ops`].
    pub id: usize,
    /// The logical process (client) that issued it; a process whose
    /// operation ended `info` is never reused.
    pub process: u64,
    /// The micro-operations, with what reads saw when `ok`.
    pub mops: Vec<Mop>,
    /// How it ended.
    pub outcome: Outcome,
    /// Nanoseconds since the history began, at invocation.
    pub invoked_ns: u64,
    /// Nanoseconds since the history began, at completion (`None` when it
    /// never completed).
    pub completed_ns: Option<u64>,
    /// The read of every key after the last recovery: acknowledged writes
    /// missing from it are lost.
    #[serde(default)]
    pub final_read: bool,
    /// Why it did not end `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        write!(f, "T{} (process {}, {outcome}: ", self.id, self.process)?;
        const MOPS: usize = 6;
        for (i, m) in self.mops.iter().take(MOPS).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{m}")?;
        }
        if self.mops.len() > MOPS {
            write!(f, ", …{} more", self.mops.len() - MOPS)?;
        }
        write!(f, ")")
    }
}

/// A recorded history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// What the keys hold.
    pub workload: Workload,
    /// Every operation, in invocation order.
    pub ops: Vec<Op>,
}

impl History {
    /// An empty history.
    pub fn new(workload: Workload) -> History {
        History {
            workload,
            ops: Vec::new(),
        }
    }

    /// Adds a completed operation (for hand-made histories): invoked and
    /// completed at the given nanoseconds. Returns its id.
    pub fn push(
        &mut self,
        process: u64,
        outcome: Outcome,
        mops: Vec<Mop>,
        invoked_ns: u64,
        completed_ns: Option<u64>,
    ) -> usize {
        let id = self.ops.len();
        self.ops.push(Op {
            id,
            process,
            mops,
            outcome,
            invoked_ns,
            completed_ns,
            final_read: false,
            error: None,
        });
        id
    }

    /// What the final read (every `ok` operation marked
    /// [`Op::final_read`]) saw of each key, with the operation's id.
    pub fn final_reads(&self) -> impl Iterator<Item = (usize, u64, &Observed)> {
        self.ops
            .iter()
            .filter(|o| o.final_read && o.outcome == Outcome::Ok)
            .flat_map(|o| {
                o.mops.iter().filter_map(move |m| match m {
                    Mop::Read { key, value } => Some((o.id, *key, value)),
                    _ => None,
                })
            })
    }

    /// Reads a history written by [`History::to_json_lines`].
    pub fn from_json_lines(text: &str) -> anyhow::Result<History> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("an empty file is not a history"))?;
        #[derive(Deserialize)]
        struct Header {
            workload: Workload,
        }
        let header: Header = serde_json::from_str(header)
            .map_err(|e| anyhow::anyhow!("line 1: expected {{\"workload\": ...}}: {e}"))?;
        let mut history = History::new(header.workload);
        for (n, line) in lines.enumerate() {
            let op: Op = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("line {}: not an operation: {e}", n + 2))?;
            if op.id != history.ops.len() {
                anyhow::bail!(
                    "line {}: operation id {} out of sequence (expected {})",
                    n + 2,
                    op.id,
                    history.ops.len()
                );
            }
            history.ops.push(op);
        }
        Ok(history)
    }

    /// One JSON line for the header, then one per operation.
    pub fn to_json_lines(&self) -> String {
        let mut out = serde_json::json!({"workload": self.workload}).to_string();
        out.push('\n');
        for op in &self.ops {
            out.push_str(&serde_json::to_string(op).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}

/// Records a history from many concurrent processes.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    /// A recorder for `workload`, its clock starting now.
    pub fn new(workload: Workload) -> Recorder {
        Recorder {
            start: Instant::now(),
            history: Arc::new(Mutex::new(History::new(workload))),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the invocation of `mops` by `process`; until completed the
    /// operation counts as `info`. Returns its id.
    pub fn invoke(&self, process: u64, mops: Vec<Mop>) -> usize {
        let invoked_ns = self.now();
        let mut h = self.lock();
        let id = h.ops.len();
        h.ops.push(Op {
            id,
            process,
            mops,
            outcome: Outcome::Info,
            invoked_ns,
            completed_ns: None,
            final_read: false,
            error: None,
        });
        id
    }

    /// Records how operation `id` ended; for `ok`, `mops` carries what its
    /// reads saw.
    pub fn complete(
        &self,
        id: usize,
        outcome: Outcome,
        mops: Option<Vec<Mop>>,
        error: Option<String>,
    ) {
        let now = self.now();
        let mut h = self.lock();
        if let Some(op) = h.ops.get_mut(id) {
            op.outcome = outcome;
            op.completed_ns = Some(now);
            if let Some(mops) = mops {
                op.mops = mops;
            }
            op.error = error;
        }
    }

    /// Marks operation `id` as the final read.
    pub fn mark_final(&self, id: usize) {
        if let Some(op) = self.lock().ops.get_mut(id) {
            op.final_read = true;
        }
    }

    /// The history so far.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }
}
