//! The workloads: what transactions to issue, and how each runs through
//! `tarn-client`.
//!
//! Keys rotate: transactions pick from a small window of live keys that
//! moves on as the run goes, so keys are contended (conflicts, reruns)
//! while lists stay short. Values come from one counter shared by every
//! process, so each is unique.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tarn_client::{Client, Error, ErrorCode, Value};

use crate::history::{Mop, Observed, Outcome, Workload};

/// Live keys at any time.
pub const ACTIVE_KEYS: u64 = 5;
/// Transactions between two moves of the key window.
pub const TXNS_PER_KEY_STEP: u64 = 40;
/// Most micro-operations per transaction.
pub const MAX_MOPS: usize = 4;

/// The path of `key` in `workload`.
pub fn path(workload: Workload, key: u64) -> String {
    match workload {
        Workload::ListAppend => format!("verify/la/k{key}"),
        Workload::RwRegister => format!("verify/rw/k{key}"),
    }
}

/// The prefix under which every key of `workload` lives.
pub fn prefix(workload: Workload) -> &'static str {
    match workload {
        Workload::ListAppend => "verify/la",
        Workload::RwRegister => "verify/rw",
    }
}

/// The key a child name under [`prefix`] stands for.
pub fn key_of(name: &str) -> Option<u64> {
    name.strip_prefix('k')?.parse().ok()
}

/// Counters shared by every process of a run.
#[derive(Clone, Default)]
pub struct Shared {
    values: Arc<AtomicU64>,
    txns: Arc<AtomicU64>,
    keys: Arc<AtomicU64>,
}

impl Shared {
    /// The highest key used so far, plus one.
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }
}

/// Makes transactions for one process.
pub struct Generator {
    workload: Workload,
    rng: StdRng,
    shared: Shared,
}

impl Generator {
    /// A generator seeded with `seed` (each process its own).
    pub fn new(workload: Workload, seed: u64, shared: Shared) -> Generator {
        Generator {
            workload,
            rng: StdRng::seed_from_u64(seed),
            shared,
        }
    }

    /// The next transaction: 1 to [`MAX_MOPS`] reads and writes of live
    /// keys, reads left without values.
    pub fn next_txn(&mut self) -> Vec<Mop> {
        let n = self.shared.txns.fetch_add(1, Ordering::Relaxed);
        let base = n / TXNS_PER_KEY_STEP;
        let count = self.rng.random_range(1..=MAX_MOPS);
        let mut mops = Vec::with_capacity(count);
        for _ in 0..count {
            let key = base + self.rng.random_range(0..ACTIVE_KEYS);
            self.shared.keys.fetch_max(key + 1, Ordering::Relaxed);
            if self.rng.random_bool(0.5) {
                mops.push(Mop::Read {
                    key,
                    value: Observed::Unknown,
                });
            } else {
                let value = i64::try_from(self.shared.values.fetch_add(1, Ordering::Relaxed) + 1)
                    .unwrap_or(i64::MAX);
                mops.push(match self.workload {
                    Workload::ListAppend => Mop::Append { key, value },
                    Workload::RwRegister => Mop::Write { key, value },
                });
            }
        }
        mops
    }
}

/// What a read of `value` saw, for `workload`; a value of the wrong shape
/// is an error naming it.
pub fn observe(workload: Workload, value: &Value) -> Result<Observed, String> {
    match (workload, value) {
        (Workload::ListAppend, Value::Null) => Ok(Observed::List(Vec::new())),
        (Workload::ListAppend, Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Ok(*i),
                other => Err(format!("a list holds {other:?}, not an integer")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Observed::List),
        (Workload::RwRegister, Value::Null) => Ok(Observed::Register(None)),
        (Workload::RwRegister, Value::Int(i)) => Ok(Observed::Register(Some(*i))),
        (w, other) => Err(format!("a key of {} holds {other:?}", w.name())),
    }
}

/// Runs `mops` as one transaction through `client` (reruns on conflict
/// are the client's); returns the micro-operations with what the reads of
/// the attempt that committed saw. `pause`, when set, is slept between
/// micro-operations: a slow client, whose transactions stay open long.
pub async fn execute(
    client: &Client,
    workload: Workload,
    mops: &[Mop],
    pause: Option<Duration>,
) -> Result<Vec<Mop>, Error> {
    let mops = mops.to_vec();
    client
        .transact(move |tx| {
            let mops = mops.clone();
            Box::pin(async move {
                let mut done = Vec::with_capacity(mops.len());
                for m in mops {
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                    let path = path(workload, m.key());
                    match m {
                        Mop::Read { key, .. } => {
                            let value = tx.get(&path).await?;
                            let value = observe(workload, &value).map_err(Error::Aborted)?;
                            done.push(Mop::Read { key, value });
                        }
                        Mop::Append { value, .. } => {
                            let current = tx.get(&path).await?;
                            let mut list = match current {
                                Value::Null => Vec::new(),
                                Value::Array(items) => items.to_vec(),
                                other => {
                                    return Err(Error::Aborted(format!(
                                        "{path} holds {other:?}, not a list"
                                    )));
                                }
                            };
                            list.push(Value::Int(value));
                            tx.set(&path, Value::Array(list.into()))?;
                            done.push(m);
                        }
                        Mop::Write { value, .. } => {
                            tx.set(&path, Value::Int(value))?;
                            done.push(m);
                        }
                    }
                }
                Ok(done)
            })
        })
        .await
}

/// The module of a run with `functions`: `txn` runs a transaction's
/// micro-operations as [`execute`] does, and returns what each read saw.
pub const MODULE: &str = r#"
export function txn(ctx, { mops }) {
  const seen = [];
  for (const m of mops) {
    if (m.op === "read") {
      seen.push(ctx.get(m.path));
    } else if (m.op === "append") {
      const list = ctx.get(m.path) ?? [];
      if (!Array.isArray(list)) throw new Error(`${m.path} holds ${JSON.stringify(list)}, not a list`);
      list.push(m.value);
      ctx.set(m.path, list);
      seen.push(null);
    } else {
      ctx.set(m.path, m.value);
      seen.push(null);
    }
  }
  return seen;
}
"#;

/// Deploys [`MODULE`] on the server at `addr` (`PUT /v1/module`, over a
/// plain HTTP/1.1 connection).
pub async fn deploy(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "PUT /v1/module HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{MODULE}",
        MODULE.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "deploying the verify module: {answer}"
    );
    Ok(())
}

/// Runs `mops` as one call of [`MODULE`]'s `txn` through `client` (the
/// server reruns it on conflict; tarn-client resends it with its call id
/// after a reconnect); returns the micro-operations with what the reads of
/// the run that committed saw.
pub async fn call(client: &Client, workload: Workload, mops: &[Mop]) -> Result<Vec<Mop>, Error> {
    let obj = |pairs: Vec<(&str, Value)>| {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    };
    let wire: Vec<Value> = mops
        .iter()
        .map(|m| {
            let path = Value::str(&path(workload, m.key()));
            match m {
                Mop::Read { .. } => obj(vec![("op", Value::str("read")), ("path", path)]),
                Mop::Append { value, .. } => obj(vec![
                    ("op", Value::str("append")),
                    ("path", path),
                    ("value", Value::Int(*value)),
                ]),
                Mop::Write { value, .. } => obj(vec![
                    ("op", Value::str("write")),
                    ("path", path),
                    ("value", Value::Int(*value)),
                ]),
            }
        })
        .collect();
    let answer = client
        .call("txn", obj(vec![("mops", Value::Array(wire.into()))]))
        .await?;
    let Value::Array(seen) = answer.value else {
        return Err(Error::Aborted(format!(
            "txn returned {:?}, not a list",
            answer.value
        )));
    };
    mops.iter()
        .zip(seen.iter())
        .map(|(m, value)| match m {
            Mop::Read { key, .. } => Ok(Mop::Read {
                key: *key,
                value: observe(workload, value).map_err(Error::Aborted)?,
            }),
            other => Ok(other.clone()),
        })
        .collect()
}

/// How a transaction that returned `error` ended: `fail` only when it
/// certainly did not commit (refused or rejected), else `info`.
pub fn outcome_of(error: &Error) -> Outcome {
    match error {
        // Every attempt was rejected; nothing was sent, or sent and refused.
        Error::TooManyAttempts { .. }
        | Error::BadPath { .. }
        | Error::QueueFull { .. }
        | Error::Aborted(_) => Outcome::Fail,
        Error::Server(body) => match body.code {
            ErrorCode::Conflict
            | ErrorCode::Compacted
            | ErrorCode::DependencyRejected
            | ErrorCode::AlreadyRejected
            | ErrorCode::BadRequest
            | ErrorCode::BadPath
            | ErrorCode::BadValue
            | ErrorCode::TooLarge
            // A function that failed committed none of its writes (only
            // its outcome, when it has a call id).
            | ErrorCode::FunctionError
            | ErrorCode::Timeout
            | ErrorCode::OutOfMemory
            | ErrorCode::StackOverflow
            | ErrorCode::NoModule
            | ErrorCode::UnknownFunction => Outcome::Fail,
            // `rate_limited` can answer a resent commit before the server
            // looks up its id, and `bad_transaction` carries "out of
            // order" for a resent id older than the outcomes kept: either
            // may have committed. So may anything else (`unknown_outcome`,
            // `unavailable`, `internal`).
            _ => Outcome::Info,
        },
        Error::Connect { .. } | Error::Closed => Outcome::Info,
    }
}
