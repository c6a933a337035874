//! Error codes: every error on the wire is `{code, message}` with a code
//! from this list. Codes are stable (clients match on them); messages are
//! for people. docs/protocol.md lists them all.

use serde::{Deserialize, Serialize};

use crate::message::WireTime;

/// A stable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body is not a valid message (bad JSON/MessagePack,
    /// unknown type, wrong field types).
    BadRequest,
    /// A path breaks the path rules or limits.
    BadPath,
    /// A value breaks the value rules or limits.
    BadValue,
    /// A transaction is malformed (duplicate paths, too many reads, ...).
    BadTransaction,
    /// A message or body is larger than the limit.
    TooLarge,
    /// A read was overtaken by a newer write: read again and retry.
    Conflict,
    /// A read saw a version whose history was compacted: read again.
    Compacted,
    /// A dependency of the transaction was rejected.
    DependencyRejected,
    /// A retried transaction id whose first submission was rejected:
    /// nothing was written. Read again and retry with a new id.
    AlreadyRejected,
    /// A resent transaction id from a client the server no longer knows
    /// (idle past the history horizon, or its record was archived): it
    /// may or may not have committed. Read the data to find out.
    UnknownOutcome,
    /// A time before the history horizon.
    BeforeHorizon,
    /// A time after the newest commit.
    AfterNewest,
    /// Too many watches on this connection.
    TooManyWatches,
    /// Too many requests in flight or per second on this connection.
    RateLimited,
    /// Too many connections to the server.
    TooManyConnections,
    /// The client did not read fast enough; the connection is closed.
    SlowConsumer,
    /// An unknown watch id.
    UnknownWatch,
    /// The client's protocol version is not supported.
    UnsupportedVersion,
    /// The server's storage stopped after a failure; restart it.
    Unavailable,
    /// No such route or method (HTTP).
    NotFound,
    /// A function was called and no module is deployed.
    NoModule,
    /// The deployed module exports no function of that name.
    UnknownFunction,
    /// The function threw (its message says what and where).
    FunctionError,
    /// The function ran past its time limit (`functions.timeout_ms`).
    Timeout,
    /// The function used more memory than its limit
    /// (`functions.memory_bytes`).
    OutOfMemory,
    /// The function recursed past its stack limit
    /// (`functions.stack_bytes`).
    StackOverflow,
    /// A deployed module does not compile or its top-level code throws:
    /// `line` and `column` say where. The previous module keeps serving.
    BadModule,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::BadValue => "bad_value",
            ErrorCode::BadTransaction => "bad_transaction",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Compacted => "compacted",
            ErrorCode::DependencyRejected => "dependency_rejected",
            ErrorCode::AlreadyRejected => "already_rejected",
            ErrorCode::UnknownOutcome => "unknown_outcome",
            ErrorCode::BeforeHorizon => "before_horizon",
            ErrorCode::AfterNewest => "after_newest",
            ErrorCode::TooManyWatches => "too_many_watches",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::UnknownWatch => "unknown_watch",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NoModule => "no_module",
            ErrorCode::UnknownFunction => "unknown_function",
            ErrorCode::FunctionError => "function_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::OutOfMemory => "out_of_memory",
            ErrorCode::StackOverflow => "stack_overflow",
            ErrorCode::BadModule => "bad_module",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error as sent: a code, a message, and for rejections the path and
/// versions that explain it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The path involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For conflicts: the version the transaction saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<WireTime>,
    /// For conflicts: the newer write that beat it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer: Option<WireTime>,
    /// For `bad_module`: the 1-based line of the error in the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// For `bad_module`: the 1-based column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl ErrorBody {
    /// An error with a code and message only.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            path: None,
            seen: None,
            newer: None,
            line: None,
            column: None,
        }
    }
}

impl ErrorCode {
    /// The code named `s` on the wire, if it is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}
