//! Conversions between wire messages (tarn-proto) and core types, and the
//! mapping of every core and store error to a stable wire error.

use tarn_core::{
    Change, InvalidTxn, Path, PathLimits, Read, ReadKind, Rejection, Seen, Txn, TxnError, Write,
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
                seen: Seen::At(r.seen.into()),
            })
        })
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
            // `$sys/` is the system's (call outcomes, timers, modules):
            // clients never write it directly.
            if w.path()
                .keys()
                .first()
                .is_some_and(|k| k.as_str() == "$sys")
            {
                return Err(ErrorBody {
                    path: Some(w.path().to_string()),
                    ..ErrorBody::new(
                        ErrorCode::BadPath,
                        format!(
                            "'{}' is under $sys/, which only the system writes",
                            w.path()
                        ),
                    )
                });
            }
            Ok(w)
        })
        .collect::<Result<_, ErrorBody>>()?;
    Ok(Txn::new(reads, writes))
}

/// A change as pushed to watchers.
pub fn change(c: &Change) -> WireChange {
    WireChange {
        path: c.path.to_string(),
        value: WireValue(c.value.clone().unwrap_or(tarn_core::Value::Null)),
    }
}

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
