//! Conversions between wire messages (tarn-proto) and core types, and the
//! mapping of every core and store error to a stable wire error.

use tarn_core::{
    Change, ClientId, InvalidTxn, Path, PathLimits, Read, ReadKind, Rejection, Seen, Txn, TxnError,
    TxnId, Write,
};
use tarn_proto::{ErrorBody, ErrorCode, WireChange, WireRead, WireValue, WireWrite};
use tarn_store::{CommitError, StoreError};

/// Parses a wire path, or a `bad_path` error naming it.
pub fn path(text: &str, limits: &PathLimits) -> Result<Path, ErrorBody> {
    Path::parse_with(text, limits).map_err(|e| ErrorBody {
        path: Some(text.to_string()),
        ..ErrorBody::new(ErrorCode::BadPath, format!("path {text:?}: {e}"))
    })
}

/// Builds a transaction from wire reads and writes.
pub fn txn(
    reads: Vec<WireRead>,
    writes: Vec<WireWrite>,
    limits: &PathLimits,
) -> Result<Txn, ErrorBody> {
    txn_with_id(reads, writes, None, Vec::new(), limits)
}

/// A transaction with an id `(client, seq)` and dependencies (seqs of the
/// same client) from the wire.
pub fn txn_with_id(
    reads: Vec<WireRead>,
    writes: Vec<WireWrite>,
    id: Option<(u64, u64)>,
    depends_on: Vec<u64>,
    limits: &PathLimits,
) -> Result<Txn, ErrorBody> {
    let id = id.map(|(client, seq)| TxnId {
        client: ClientId(client),
        seq,
    });
    let on = |seq: u64| {
        id.map(|id| TxnId { seq, ..id }).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::BadTransaction,
                "a read of a pending transaction, or a dependency, needs the commit's `client` and `seq`",
            )
        })
    };
    let reads = reads
        .into_iter()
        .map(|r| {
            Ok(Read {
                path: path(&r.path, limits)?,
                kind: if r.subtree {
                    ReadKind::Subtree
                } else {
                    ReadKind::Value
                },
                seen: match r.pending_on {
                    None => Seen::At(r.seen.into()),
                    Some(seq) => Seen::Pending {
                        on: on(seq)?,
                        base: r.seen.into(),
                    },
                },
            })
        })
        .collect::<Result<_, ErrorBody>>()?;
    let depends_on = depends_on
        .into_iter()
        .map(on)
        .collect::<Result<_, ErrorBody>>()?;
    let writes = writes
        .into_iter()
        .map(|w| {
            let w = match w {
                WireWrite::Set { path: p, value } => Write::Set {
                    path: path(&p, limits)?,
                    value: value.0,
                },
                WireWrite::Patch { path: p, value } => Write::Patch {
                    path: path(&p, limits)?,
                    value: value.0,
                },
                WireWrite::Delete { path: p } => Write::Delete {
                    path: path(&p, limits)?,
                },
            };
            writable(&w)?;
            Ok(w)
        })
        .collect::<Result<_, ErrorBody>>()?;
    Ok(Txn {
        id,
        depends_on,
        reads,
        writes,
    })
}

/// A change as pushed to watchers.
pub fn change(c: &Change) -> WireChange {
    WireChange {
        path: c.path.to_string(),
        value: WireValue(c.value.clone().unwrap_or(tarn_core::Value::Null)),
    }
}

/// Refuses client writes that would touch `$sys/` (call outcomes, timers,
/// modules: only the system writes them): a path under it, a set or delete
/// of the root (which holds it), a patch of the root naming it. Every
/// client write path (WebSocket, REST, transactions, import) goes through
/// here.
pub fn writable(w: &Write) -> Result<(), ErrorBody> {
    let path = w.path();
    let refuse = |why: String| {
        Err(ErrorBody {
            path: Some(path.to_string()),
            ..ErrorBody::new(ErrorCode::BadPath, why)
        })
    };
    if path
        .keys()
        .first()
        .is_some_and(|k| k.as_str() == SYSTEM_KEY)
    {
        return refuse(format!(
            "'{path}' is under {SYSTEM_KEY}/, which only the system writes"
        ));
    }
    if path.is_root() {
        match w {
            Write::Set { .. } | Write::Delete { .. } => {
                return refuse(format!(
                    "the root also holds {SYSTEM_KEY}/, which only the system writes: set or delete its children, or patch the root"
                ));
            }
            Write::Patch {
                value: tarn_core::Value::Object(children),
                ..
            } if children.contains_key(SYSTEM_KEY) => {
                return refuse(format!("a patch of the root may not name {SYSTEM_KEY}"));
            }
            Write::Patch { .. } => {}
        }
    }
    Ok(())
}

/// The system's top-level key.
pub const SYSTEM_KEY: &str = "$sys";

/// The wire error for a failed commit.
pub fn commit_error(e: &CommitError) -> ErrorBody {
    match e {
        CommitError::Txn(e) => txn_error(e),
        CommitError::Store(e) => store_error(e),
    }
}

/// The wire error for a refused transaction.
pub fn txn_error(e: &TxnError) -> ErrorBody {
    let message = e.to_string();
    match e {
        TxnError::Rejected(r) => match r {
            Rejection::Conflict {
                path, seen, newer, ..
            } => ErrorBody {
                path: Some(path.to_string()),
                seen: Some((*seen).into()),
                newer: Some((*newer).into()),
                ..ErrorBody::new(ErrorCode::Conflict, message)
            },
            Rejection::Compacted { path, seen, floor } => ErrorBody {
                path: Some(path.to_string()),
                seen: Some((*seen).into()),
                newer: Some((*floor).into()),
                ..ErrorBody::new(ErrorCode::Compacted, message)
            },
            Rejection::Dependency { .. } | Rejection::DependencyForgotten { .. } => {
                ErrorBody::new(ErrorCode::DependencyRejected, message)
            }
        },
        TxnError::Invalid(i) => {
            let code = match i {
                InvalidTxn::AlreadyDecided { .. } => ErrorCode::AlreadyRejected,
                InvalidTxn::BadPath { .. } => ErrorCode::BadPath,
                InvalidTxn::BadValue(_) | InvalidTxn::PatchNotObject { .. } => ErrorCode::BadValue,
                InvalidTxn::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::BadTransaction,
            };
            ErrorBody::new(code, message)
        }
    }
}

/// The wire error for a store failure.
pub fn store_error(e: &StoreError) -> ErrorBody {
    use tarn_core::HistoryError;
    match e {
        StoreError::History(HistoryError::BeforeHorizon { .. }) => {
            ErrorBody::new(ErrorCode::BeforeHorizon, e.to_string())
        }
        StoreError::History(HistoryError::AfterNewest { .. }) => {
            ErrorBody::new(ErrorCode::AfterNewest, e.to_string())
        }
        StoreError::Stopped(_) => ErrorBody::new(ErrorCode::Unavailable, e.to_string()),
        _ => ErrorBody::new(ErrorCode::Internal, e.to_string()),
    }
}

/// The wire error for a failed function call.
pub fn call_error(e: &tarn_functions::CallError) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::parse(e.code()).unwrap_or(ErrorCode::Internal),
        e.to_string(),
    )
}

/// The wire error for a refused deploy.
pub fn deploy_error(e: &tarn_functions::DeployError) -> ErrorBody {
    use tarn_functions::DeployError;
    let code = match e {
        DeployError::Invalid { .. } => ErrorCode::BadModule,
        DeployError::TooLarge { .. } => ErrorCode::TooLarge,
        DeployError::Raced => ErrorCode::Conflict,
        DeployError::Unavailable(_) => ErrorCode::Unavailable,
    };
    let (line, column) = match e {
        DeployError::Invalid { line, column, .. } => (*line, *column),
        _ => (None, None),
    };
    ErrorBody {
        line,
        column,
        ..ErrorBody::new(code, e.to_string())
    }
}
