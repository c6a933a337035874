//! The messages of the WebSocket protocol and the bodies of the HTTP API.
//!
//! Every request carries a client-chosen `id`; its response carries the
//! same `id`. Pushed messages (`change`, `close`) carry none. Messages are
//! tagged by `type`; see docs/protocol.md for one example of each.

use serde::{Deserialize, Serialize};
use tarn_core::Time;

use crate::error::ErrorBody;
use crate::value::WireValue;

/// A commit time on the wire: `[ms, logical, node]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WireTime(pub u64, pub u32, pub u32);

impl From<Time> for WireTime {
    fn from(t: Time) -> WireTime {
        WireTime(t.ms, t.logical, t.node)
    }
}

impl From<WireTime> for Time {
    fn from(t: WireTime) -> Time {
        Time {
            ms: t.0,
            logical: t.1,
            node: t.2,
        }
    }
}

impl WireTime {
    /// Parses `ms`, `ms.logical` or `ms.logical@node` (the form `Time`
    /// prints, used in URLs: `?at=`).
    pub fn parse(s: &str) -> Option<WireTime> {
        let (rest, node) = match s.split_once('@') {
            Some((rest, node)) => (rest, node.parse().ok()?),
            None => (s, 0),
        };
        let (ms, logical) = match rest.split_once('.') {
            Some((ms, logical)) => (ms.parse().ok()?, logical.parse().ok()?),
            None => (rest.parse().ok()?, 0),
        };
        Some(WireTime(ms, logical, node))
    }
}

/// A read of a transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireRead {
    /// The path read.
    pub path: String,
    /// The `seen` time a read returned (`[0,0,0]`: never written).
    pub seen: WireTime,
    /// True for a subtree read (`prefix/**`: child keys too).
    #[serde(default)]
    pub subtree: bool,
    /// Set when the read saw this client's own predicted (not yet
    /// answered) transaction `seq` laid over `seen`: the commit then
    /// depends on that one and fails with it. Needs the commit's `client`
    /// and `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_on: Option<u64>,
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WireWrite {
    /// Replace the value at `path` (`null` deletes).
    Set {
        /// Where.
        path: String,
        /// What.
        value: WireValue,
    },
    /// Merge the children of `value` (an object) into `path`.
    Patch {
        /// Where.
        path: String,
        /// The children to set.
        value: WireValue,
    },
    /// Delete `path` and everything under it.
    Delete {
        /// Where.
        path: String,
    },
}

/// One leaf change pushed to a watcher (`value: null`: deleted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireChange {
    /// The leaf path that changed.
    pub path: String,
    /// Its new value, `null` if deleted.
    pub value: WireValue,
}

/// A message from a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Opens the session: protocol version and an optional bearer token.
    Hello {
        /// Request id.
        id: u64,
        /// The client's protocol version.
        version: u32,
        /// A bearer token (JWT), if any.
        #[serde(default)]
        token: Option<String>,
    },
    /// Reads a value (assembled for a subtree), now or at a past time.
    Get {
        /// Request id.
        id: u64,
        /// The path.
        path: String,
        /// A past time to read at.
        #[serde(default)]
        at: Option<WireTime>,
    },
    /// Watches a path (and, by default, everything under it).
    Watch {
        /// Request id.
        id: u64,
        /// The path.
        path: String,
        /// False for a leaf watch of exactly this path.
        #[serde(default = "yes")]
        subtree: bool,
        /// Resume after this time (the last change received) instead of
        /// sending the current value.
        #[serde(default)]
        since: Option<WireTime>,
    },
    /// Stops a watch.
    Unwatch {
        /// Request id.
        id: u64,
        /// The watch id from `watching`.
        watch: u64,
    },
    /// Commits a transaction.
    Commit {
        /// Request id.
        id: u64,
        /// What the transaction read.
        #[serde(default)]
        reads: Vec<WireRead>,
        /// What it writes, in order.
        #[serde(default)]
        writes: Vec<WireWrite>,
        /// The transaction's client: a random id chosen by the client.
        /// With `seq`, the transaction's id: sending the same id again
        /// (after a lost answer or a reconnect) answers with the recorded
        /// outcome instead of committing twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<u64>,
        /// The client's strictly increasing sequence number for this
        /// transaction (with `client`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// Earlier transactions (`seq`s of the same client) this one
        /// depends on: it fails if any of them did.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        depends_on: Vec<u64>,
        /// True when this id was sent before (on a lost connection): if
        /// the server no longer knows the client, the answer is
        /// `unknown_outcome` rather than a second decision.
        #[serde(default, skip_serializing_if = "is_false")]
        retry: bool,
    },
    /// Asks for a `pong`.
    Ping {
        /// Request id.
        id: u64,
    },
    /// Calls a function of the deployed module.
    Call {
        /// Request id.
        id: u64,
        /// The exported function.
        #[serde(rename = "fn")]
        function: String,
        /// Its arguments (any JSON value; absent is `null`).
        #[serde(default = "null_value")]
        args: WireValue,
        /// The caller's id for this call (one path key): a repeat is
        /// answered with the first one's outcome and never runs again.
        #[serde(
            default,
            rename = "callId",
            alias = "call_id",
            skip_serializing_if = "Option::is_none"
        )]
        call_id: Option<String>,
    },
}

fn null_value() -> WireValue {
    WireValue(tarn_core::Value::Null)
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !b
}

impl Request {
    /// A `commit` without a transaction id or dependencies.
    pub fn commit(id: u64, reads: Vec<WireRead>, writes: Vec<WireWrite>) -> Request {
        Request::Commit {
            id,
            reads,
            writes,
            client: None,
            seq: None,
            depends_on: Vec::new(),
            retry: false,
        }
    }

    /// The request's id.
    pub fn id(&self) -> u64 {
        match self {
            Request::Hello { id, .. }
            | Request::Get { id, .. }
            | Request::Watch { id, .. }
            | Request::Unwatch { id, .. }
            | Request::Commit { id, .. }
            | Request::Call { id, .. }
            | Request::Ping { id } => *id,
        }
    }
}

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answers `hello`.
    Hello {
        /// Request id.
        id: u64,
        /// The server's protocol version.
        version: u32,
        /// The server's node id.
        node: u32,
    },
    /// Answers `get`.
    Value {
        /// Request id.
        id: u64,
        /// The value, `null` if absent.
        value: WireValue,
        /// The version to quote as `seen` in a transaction's read.
        seen: WireTime,
    },
    /// Answers `watch`: the watch id, then the current value (or, when
    /// resuming, nothing: the missed changes follow as `change` messages).
    Watching {
        /// Request id.
        id: u64,
        /// The watch id, for `change` and `unwatch`.
        watch: u64,
        /// The current value (absent when resuming).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<WireValue>,
        /// The time the value is as of; changes after it follow.
        time: WireTime,
        /// True when resumed from `since` without a gap.
        #[serde(default)]
        resumed: bool,
    },
    /// Changes committed at `time`, pushed to a watch. One transaction's
    /// changes always arrive in one message.
    Change {
        /// The watch id.
        watch: u64,
        /// The commit time.
        time: WireTime,
        /// The leaf changes under the watch.
        changes: Vec<WireChange>,
    },
    /// Answers `unwatch`.
    Unwatched {
        /// Request id.
        id: u64,
    },
    /// Answers `commit`.
    Committed {
        /// Request id.
        id: u64,
        /// The commit time.
        time: WireTime,
    },
    /// Answers any request that failed.
    Error {
        /// Request id (0 if the request could not be read).
        id: u64,
        /// What went wrong.
        error: ErrorBody,
    },
    /// Answers `ping`.
    Pong {
        /// Request id.
        id: u64,
    },
    /// Answers `call`: what the function returned, once its writes are
    /// durable.
    Result {
        /// Request id.
        id: u64,
        /// The return value.
        value: WireValue,
        /// The commit time of its writes, if it wrote (or has a call id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time: Option<WireTime>,
        /// Times it was rerun after a conflict.
        #[serde(default)]
        reruns: u32,
        /// True when answered from an earlier call with the same id.
        #[serde(default, skip_serializing_if = "is_false")]
        replayed: bool,
    },
    /// Sent before the server closes the connection.
    Close {
        /// Why.
        error: ErrorBody,
    },
}

/// Body of `POST /v1/tx`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxBody {
    /// What the transaction read.
    #[serde(default)]
    pub reads: Vec<WireRead>,
    /// What it writes.
    #[serde(default)]
    pub writes: Vec<WireWrite>,
}

/// Answer of `POST /v1/call/{fn}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallResultBody {
    /// The return value.
    pub result: WireValue,
    /// The commit time of its writes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<WireTime>,
    /// Times it was rerun after a conflict.
    #[serde(default)]
    pub reruns: u32,
    /// True when answered from an earlier call with the same id.
    #[serde(default)]
    pub replayed: bool,
}

/// Answer of `PUT /v1/module` and `GET /v1/module`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleBody {
    /// The module version (1, 2, ...).
    pub version: u64,
    /// Its exported functions.
    pub functions: Vec<String>,
    /// Its source (`GET` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Answer of a successful commit over HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommittedBody {
    /// The commit time.
    pub time: WireTime,
}

/// An error over HTTP: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// What went wrong.
    pub error: ErrorBody,
}
