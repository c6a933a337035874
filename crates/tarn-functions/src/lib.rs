//! tarn-functions: the app's server functions (DESIGN §4).
//!
//! An app is one ES module; its exported functions `f(ctx, args)` read and
//! write the tree through `ctx`. This crate runs them:
//!
//! - [`sandbox`]: one QuickJS runtime (through `rquickjs`) per engine
//!   thread, with a wall-time limit (interrupt handler), a memory limit and
//!   a stack limit; no I/O, no imports, no timers; `Date` and
//!   `Math.random` are the call's (`ctx.now`, and a generator seeded by
//!   the call id), so the same call on the same data gives the same
//!   writes anywhere. Built-ins and the global object are frozen, and
//!   every call gets a fresh instance of the module, so nothing a call
//!   does to module state is seen by another.
//! - [`buffer`]: what a run read (each `(path, seen)`) and wrote, with its
//!   own writes visible to its later reads.
//! - [`runner`]: [`Functions`], the pool of engine threads and the call
//!   loop: run, commit the reads and writes as one transaction, rerun on
//!   conflict (bounded, with backoff), and store the outcome of a call
//!   with an id under `$sys/calls/` in the same transaction, so a repeated
//!   id is answered from it and never runs twice.
//! - [`stats`]: diagnostics per function.
//!
//! The byte-level contract (outcome records, the random generator) is in
//! docs/functions.md.

pub mod buffer;
pub mod runner;
pub mod sandbox;
pub mod stats;

use std::time::Duration;

pub use runner::{Answer, Call, Deployed, Functions, LocalEngine, ModuleInfo};
pub use sandbox::{Compiled, Sandbox};
pub use stats::FunctionStats;

/// Limits of one run of a function, and of the runner. Every limit has a
/// default and a config key (`[functions]` in the server's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Wall time of one run (`functions.timeout_ms`, default 100 ms).
    pub timeout: Duration,
    /// Memory one run may allocate in the JavaScript heap
    /// (`functions.memory_bytes`, default 64 MiB).
    pub memory_bytes: usize,
    /// JavaScript stack (`functions.stack_bytes`, default 1 MiB).
    pub stack_bytes: usize,
    /// Reruns after a conflict before the call fails with `conflict`
    /// (`functions.max_reruns`, default 16).
    pub max_reruns: u32,
    /// Engine threads (`functions.engines`; 0, the default, means one per
    /// core).
    pub engines: usize,
    /// Calls queued or running at once before new ones are refused with
    /// `rate_limited` (`functions.max_pending_calls`, default 4096).
    pub max_pending_calls: usize,
    /// How long the outcome of a call with an id is kept under
    /// `$sys/calls/` (`functions.outcome_retention_ms`, default 1 hour):
    /// a repeat within it is answered from the outcome, a repeat after it
    /// runs again.
    pub outcome_retention: Duration,
}

impl Default for FunctionLimits {
    fn default() -> Self {
        FunctionLimits {
            timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            stack_bytes: 1 << 20,
            max_reruns: 16,
            engines: 0,
            max_pending_calls: 4096,
            outcome_retention: Duration::from_secs(3600),
        }
    }
}

/// Why a call failed. [`CallError::code`] is the stable wire code.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Nothing is deployed.
    #[error("no module is deployed: deploy one with `tarn deploy app.js` (PUT /v1/module)")]
    NoModule,
    /// The module exports no function of that name.
    #[error("the deployed module (version {version}) exports no function `{name}`")]
    UnknownFunction {
        /// The name called.
        name: String,
        /// The module version.
        version: u64,
    },
    /// The call itself is malformed (bad call id, arguments that are not
    /// JSON).
    #[error("{0}")]
    BadCall(String),
    /// The function threw (or its promise rejected).
    #[error("{message}")]
    Threw {
        /// `Name: message`, and where it was thrown.
        message: String,
    },
    /// The function returned something that is not a JSON value.
    #[error("the function returned a value that cannot be stored or sent: {0}")]
    BadReturn(String),
    /// The run took longer than the limit.
    #[error("the function ran longer than {ms} ms (functions.timeout_ms) and was stopped")]
    Timeout {
        /// The limit.
        ms: u64,
    },
    /// The run allocated more than the limit.
    #[error(
        "the function used more than {bytes} bytes of memory (functions.memory_bytes) and was stopped"
    )]
    OutOfMemory {
        /// The limit.
        bytes: usize,
    },
    /// The run recursed past the stack limit.
    #[error(
        "the function overflowed its stack of {bytes} bytes (functions.stack_bytes): unbounded recursion?"
    )]
    StackOverflow {
        /// The limit.
        bytes: usize,
    },
    /// The writes cannot be committed (a limit, a bad value).
    #[error("the function's writes cannot be committed: {0}")]
    BadWrites(String),
    /// Still conflicting after the allowed reruns.
    #[error(
        "the function's reads were overtaken {reruns} times in a row (functions.max_reruns); the data it reads is too contended: try again"
    )]
    Contention {
        /// Reruns made.
        reruns: u32,
    },
    /// Too many calls pending.
    #[error("{0} calls are pending (functions.max_pending_calls); slow down")]
    Busy(usize),
    /// The store stopped.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A bug.
    #[error("internal error running the function: {0}")]
    Internal(String),
    /// The stored failure of an earlier call with the same id.
    #[error("{message}")]
    Recorded {
        /// Its code.
        code: &'static str,
        /// Its message.
        message: String,
    },
}

/// The stored outcome codes, as static strings (unknown ones read as
/// `function_error`).
pub(crate) fn static_code(code: &str) -> &'static str {
    [
        "function_error",
        "bad_value",
        "timeout",
        "out_of_memory",
        "stack_overflow",
        "bad_transaction",
    ]
    .into_iter()
    .find(|c| *c == code)
    .unwrap_or("function_error")
}

impl CallError {
    /// The stable wire code (docs/protocol.md).
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NoModule => "no_module",
            CallError::UnknownFunction { .. } => "unknown_function",
            CallError::BadCall(_) => "bad_request",
            CallError::Threw { .. } => "function_error",
            CallError::BadReturn(_) => "bad_value",
            CallError::Timeout { .. } => "timeout",
            CallError::OutOfMemory { .. } => "out_of_memory",
            CallError::StackOverflow { .. } => "stack_overflow",
            CallError::BadWrites(_) => "bad_transaction",
            CallError::Contention { .. } => "conflict",
            CallError::Busy(_) => "rate_limited",
            CallError::Unavailable(_) => "unavailable",
            CallError::Internal(_) => "internal",
            CallError::Recorded { code, .. } => code,
        }
    }

    /// Whether this is the call's outcome, stored for its call id (the
    /// function ran and this is what it did), rather than a failure to run
    /// it (which a retry of the same id may get past).
    pub fn is_outcome(&self) -> bool {
        matches!(
            self,
            CallError::Threw { .. }
                | CallError::BadReturn(_)
                | CallError::Timeout { .. }
                | CallError::OutOfMemory { .. }
                | CallError::StackOverflow { .. }
                | CallError::BadWrites(_)
                | CallError::Recorded { .. }
        )
    }
}

/// Why a module was not deployed. The module that was serving keeps
/// serving.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DeployError {
    /// It does not compile, or its top-level code throws.
    #[error("{message}")]
    Invalid {
        /// What is wrong, with the place.
        message: String,
        /// 1-based line, when known.
        line: Option<u32>,
        /// 1-based column, when known.
        column: Option<u32>,
    },
    /// Larger than a value may be.
    #[error("the module is {len} bytes; the limit is {max} (limits.max_value_bytes)")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Another deploy won the race; deploy again.
    #[error("another deploy happened at the same time; deploy again")]
    Raced,
    /// The store stopped.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}
