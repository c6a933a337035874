//! Transactions: what a client submits, and why one fails.
//!
//! A [`Txn`] is `{reads, writes}` (DESIGN §2). Each [`Read`] says "I read
//! this path (or this whole subtree) and saw the version written at
//! `seen`"; the engine commits the transaction iff no read has missed a
//! write. A read may also quote a *pending* transaction of the same client
//! ([`Seen::Pending`]): the client read its own predicted write, so the new
//! transaction depends on that one and fails with it.
//!
//! A failure is either [`InvalidTxn`] (the transaction is malformed: fix
//! the request) or a [`Rejection`] (it was well formed but lost a race or
//! depends on one that did: read again and retry).

use std::fmt;

use crate::path::{Path, PathError};
use crate::time::Time;
use crate::value::{Value, ValueError};

/// Who submitted a transaction: one client connection or session. A
/// chain of dependent transactions never crosses clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// A transaction's id: its client and its sequence number there. A
/// client numbers its transactions in submission order, strictly
/// increasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId {
    /// The submitting client.
    pub client: ClientId,
    /// Position in that client's submissions.
    pub seq: u64,
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.client.0, self.seq)
    }
}

/// Which version a read saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A committed version: the `seen` time a read returned
    /// (`Time::ZERO`: never written).
    At(Time),
    /// The predicted, not yet committed, writes of an earlier transaction
    /// `on` of the same client, laid over the committed version `base` the
    /// client's cache held for the path. The read is valid iff `on`
    /// commits and every version at or under the path newer than `base`
    /// was written by one of this transaction's dependencies: a write by
    /// anyone else since `base` invalidates it, even one that landed
    /// before `on` did.
    Pending {
        /// The transaction whose predicted writes were read.
        on: TxnId,
        /// The committed version under the prediction (`Time::ZERO`:
        /// never written).
        base: Time,
    },
}

/// What a read covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadKind {
    /// `(path, seen)`: the value at the path. A write at the path or under
    /// it (which changes the assembled value) invalidates it.
    Value,
    /// `(prefix/**, seen)`: everything under the prefix, including which
    /// children exist (so a child created later, a phantom, invalidates
    /// it).
    Subtree,
}

/// One read of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    /// The path read.
    pub path: Path,
    /// Value or subtree.
    pub kind: ReadKind,
    /// The version seen.
    pub seen: Seen,
}

impl Read {
    /// A read of the value at `path` that saw version `seen`.
    pub fn value(path: Path, seen: Time) -> Read {
        Read {
            path,
            kind: ReadKind::Value,
            seen: Seen::At(seen),
        }
    }

    /// A read of the subtree (and its child keys) under `path` that saw
    /// version `seen`.
    pub fn subtree(path: Path, seen: Time) -> Read {
        Read {
            path,
            kind: ReadKind::Subtree,
            seen: Seen::At(seen),
        }
    }
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Replace the value at `path`: a leaf replaces any descendants, an
    /// object replaces the whole subtree, `null` deletes it. Writing under
    /// a leaf replaces the leaf.
    Set {
        /// Where.
        path: Path,
        /// What; `Value::Null` deletes.
        value: Value,
    },
    /// Merge: each child of `value` (an object) is set at `path/child`;
    /// other children of `path` are untouched; a `null` child is deleted.
    Patch {
        /// Where.
        path: Path,
        /// An object of children to set.
        value: Value,
    },
    /// Delete the value at `path` and everything under it.
    Delete {
        /// Where.
        path: Path,
    },
}

impl Write {
    /// The path written.
    pub fn path(&self) -> &Path {
        match self {
            Write::Set { path, .. } | Write::Patch { path, .. } | Write::Delete { path } => path,
        }
    }
}

/// A transaction as submitted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Txn {
    /// Needed when the transaction depends on earlier ones or may be
    /// depended on (predictions), and to answer a retry with the recorded
    /// outcome.
    pub id: Option<TxnId>,
    /// Earlier pending transactions of the same client this one depends
    /// on, besides those its reads quote.
    pub depends_on: Vec<TxnId>,
    /// What the transaction read.
    pub reads: Vec<Read>,
    /// What it writes, applied in order.
    pub writes: Vec<Write>,
}

impl Txn {
    /// A transaction with these reads and writes and no id.
    pub fn new(reads: Vec<Read>, writes: Vec<Write>) -> Txn {
        Txn {
            id: None,
            depends_on: Vec::new(),
            reads,
            writes,
        }
    }

    /// A single blind write.
    pub fn set(path: Path, value: Value) -> Txn {
        Txn::new(Vec::new(), vec![Write::Set { path, value }])
    }
}

/// How a decided transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed at this time.
    Committed(Time),
    /// Rejected or invalid; nothing was written.
    Rejected,
}

/// Limits on one transaction. Every limit has a default and a config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    /// Most reads (config `limits.max_txn_reads`).
    pub max_reads: usize,
    /// Most writes as submitted (config `limits.max_txn_writes`).
    pub max_writes: usize,
    /// Most leaves written once objects are flattened (config
    /// `limits.max_txn_leaves`).
    pub max_leaves: usize,
    /// Most bytes of values written, as JSON (config
    /// `limits.max_txn_bytes`).
    pub max_bytes: usize,
    /// Most dependencies (config `limits.max_txn_dependencies`).
    pub max_dependencies: usize,
    /// Most leaf changes one commit may make, counting the deletions it
    /// implies (replacing or deleting a subtree deletes its leaves)
    /// (config `limits.max_txn_changes`). Bounds the size of a log record.
    pub max_changes: usize,
}

impl Default for TxnLimits {
    fn default() -> Self {
        TxnLimits {
            max_reads: 10_000,
            max_writes: 10_000,
            max_leaves: 100_000,
            max_bytes: 16 << 20,
            max_dependencies: 1_000,
            max_changes: 1_000_000,
        }
    }
}

/// A malformed transaction. Nothing was written; fix the request.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidTxn {
    /// A path that does not fit the engine's path limits.
    #[error("path '{path}': {source}")]
    BadPath {
        /// The path.
        path: Path,
        /// What is wrong with it.
        source: PathError,
    },
    /// A value that does not fit the value limits.
    #[error(transparent)]
    BadValue(#[from] ValueError),
    /// The same path listed twice among the reads.
    #[error("path '{path}' is read twice; list each read once")]
    DuplicateRead {
        /// The path.
        path: Path,
    },
    /// The same path listed twice among the writes.
    #[error("path '{path}' is written twice; combine the writes into one")]
    DuplicateWrite {
        /// The path.
        path: Path,
    },
    /// A patch whose value is not an object.
    #[error("patch at '{path}' needs an object of children to merge")]
    PatchNotObject {
        /// The path.
        path: Path,
    },
    /// Too many reads.
    #[error("transaction has {count} reads; the limit is {max}")]
    TooManyReads {
        /// Reads in the transaction.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// Too many writes.
    #[error("transaction has {count} writes; the limit is {max}")]
    TooManyWrites {
        /// Writes in the transaction.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// Too many leaves once objects are flattened.
    #[error("transaction writes {count} leaves; the limit is {max}")]
    TooManyLeaves {
        /// Leaves written.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// Too many bytes of values.
    #[error("transaction writes {bytes} bytes of values; the limit is {max}")]
    TooLarge {
        /// Bytes written, as JSON.
        bytes: usize,
        /// The configured limit.
        max: usize,
    },
    /// Too many leaf changes, counting implied deletions.
    #[error(
        "transaction would change {count} leaves (deleting or replacing subtrees counts their leaves); the limit is {max}: delete large subtrees in parts"
    )]
    TooManyChanges {
        /// Changes it would make (an upper bound).
        count: u64,
        /// The configured limit.
        max: usize,
    },
    /// Too many dependencies.
    #[error("transaction depends on {count} transactions; the limit is {max}")]
    TooManyDependencies {
        /// Dependencies listed.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// A read quoting a version newer than any commit.
    #[error(
        "read of '{path}' quotes version {seen}, newer than the newest commit {newest}; quote the `seen` a read returned"
    )]
    SeenInFuture {
        /// The path.
        path: Path,
        /// The quoted version.
        seen: Time,
        /// The newest commit.
        newest: Time,
    },
    /// Dependencies need the transaction to carry an id.
    #[error("a transaction that depends on pending transactions must carry an id")]
    MissingId,
    /// A dependency on another client's transaction.
    #[error(
        "transaction {txn} depends on {on}, a transaction of another client; dependencies stay within one client"
    )]
    ForeignDependency {
        /// The transaction.
        txn: TxnId,
        /// Its dependency.
        on: TxnId,
    },
    /// A dependency on a transaction that was not submitted earlier.
    #[error("transaction {txn} depends on {on}, which is not earlier than it")]
    DependencyNotEarlier {
        /// The transaction.
        txn: TxnId,
        /// Its dependency.
        on: TxnId,
    },
    /// A dependency the engine has not seen yet: the client sent out of
    /// order.
    #[error(
        "transaction {txn} depends on {on}, which has not been submitted; submit transactions in order"
    )]
    DependencyNotSubmitted {
        /// The transaction.
        txn: TxnId,
        /// Its dependency.
        on: TxnId,
    },
    /// The transaction id was decided before: this is a retry.
    #[error("transaction {id} was already decided ({outcome:?}); a retry does not run it again")]
    AlreadyDecided {
        /// The id.
        id: TxnId,
        /// The recorded outcome.
        outcome: Outcome,
    },
    /// The id is not newer than the client's last one and its outcome is
    /// no longer kept.
    #[error(
        "transaction {id} is not newer than the client's last transaction (#{last}); number transactions in increasing order"
    )]
    OutOfOrder {
        /// The id.
        id: TxnId,
        /// The client's last sequence number.
        last: u64,
    },
}

/// A well-formed transaction that did not commit. Nothing was written;
/// read again and retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A read missed a write: `path` (or something under it) was written
    /// at `newer`, after the version `seen` the transaction read.
    #[error("read of '{path}' ({kind:?}) saw version {seen}, but it was written at {newer}")]
    Conflict {
        /// The read's path.
        path: Path,
        /// The read's kind.
        kind: ReadKind,
        /// The version the transaction saw.
        seen: Time,
        /// The newer write that beat it.
        newer: Time,
    },
    /// A read saw a version older than the history horizon of a path
    /// whose history has since been compacted: it may have been deleted.
    #[error(
        "read of '{path}' saw version {seen}, older than the history horizon {floor}; read it again"
    )]
    Compacted {
        /// The read's path.
        path: Path,
        /// The version the transaction saw.
        seen: Time,
        /// The store's history floor.
        floor: Time,
    },
    /// A transaction this one depends on was rejected.
    #[error("depends on transaction {on}, which was rejected")]
    Dependency {
        /// The rejected dependency.
        on: TxnId,
    },
    /// A dependency's outcome is no longer kept, so it cannot be trusted.
    #[error(
        "depends on transaction {on}, whose outcome is no longer kept; read again and resubmit"
    )]
    DependencyForgotten {
        /// The forgotten dependency.
        on: TxnId,
    },
}

/// Why `commit` failed. Either way nothing was written.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TxnError {
    /// Malformed: fix the request.
    #[error("invalid transaction: {0}")]
    Invalid(#[from] InvalidTxn),
    /// Lost a race or depends on one that did: read again and retry.
    #[error("transaction rejected: {0}")]
    Rejected(#[from] Rejection),
}
