//! The watch checker: subscribers watch every key of the workload and
//! record what they receive; afterwards each one's stream is checked
//! against the committed history.
//!
//! For `list-append`, per key, each update must show a committed state
//! (a prefix of the key's final list), extend the state shown before (no
//! reordering, no duplicate), by exactly the appends of one transaction
//! (no gap: every commit is delivered, coalescing never merges two), and
//! the last state shown must be the final one (nothing lost at the end).
//! For both workloads, update times must strictly increase. A `resynced`
//! update (a reconnect past the server's history) resets the baseline and
//! is counted, not flagged. All of it holds across reconnects and server
//! restarts: the client resumes each watch from the last time it saw.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tarn_client::{Client, Time, UpdateKind, Value};

use crate::history::{History, Mop, Observed, Workload};
use crate::workload::{key_of, observe, prefix};

/// One update as a subscriber received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The update's time.
    pub time: Time,
    /// Why it came.
    pub kind: Kind,
    /// The keys it shows (for `Initial`/`Resynced`, every key), with their
    /// values.
    pub keys: Vec<(u64, Value)>,
}

/// Why an update came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The first value.
    Initial,
    /// After a reconnect that could not resume.
    Resynced,
    /// A commit.
    Committed,
    /// Anything else (a subscriber never writes, so never expected).
    Other,
}

/// What one subscriber received, shared with the task that receives it.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Received>>>);

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything received so far.
    pub fn snapshot(&self) -> Vec<Received> {
        self.lock().clone()
    }

    /// The latest value shown for each key.
    pub fn latest(&self) -> HashMap<u64, Value> {
        let mut out = HashMap::new();
        for r in self.lock().iter() {
            if matches!(r.kind, Kind::Initial | Kind::Resynced) {
                out.clear();
            }
            for (k, v) in &r.keys {
                out.insert(*k, v.clone());
            }
        }
        out
    }
}

/// Subscribes `client` to every key of `workload` and records into `log`
/// until the client closes.
pub async fn subscribe(client: Client, workload: Workload, log: Log) -> anyhow::Result<()> {
    let root = prefix(workload);
    let mut watch = client.watch_subtree(root).await?;
    while let Some(update) = watch.recv().await {
        let (kind, keys) = match &update.kind {
            UpdateKind::Initial | UpdateKind::Resynced => {
                let kind = if update.kind == UpdateKind::Initial {
                    Kind::Initial
                } else {
                    Kind::Resynced
                };
                let keys = match &update.value {
                    Value::Object(children) => children
                        .iter()
                        .filter_map(|(name, v)| key_of(name).map(|k| (k, v.clone())))
                        .collect(),
                    _ => Vec::new(),
                };
                (kind, keys)
            }
            UpdateKind::Committed(changes) => {
                let keys = changes
                    .iter()
                    .filter_map(|(path, v)| {
                        let name = path.strip_prefix(root)?.strip_prefix('/')?;
                        key_of(name.split('/').next()?).map(|k| (k, v.clone()))
                    })
                    .collect();
                (Kind::Committed, keys)
            }
            _ => (Kind::Other, Vec::new()),
        };
        log.lock().push(Received {
            time: update.time,
            kind,
            keys,
        });
    }
    Ok(())
}

/// The watch checker's verdict over every subscriber.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchReport {
    /// Updates received, over all subscribers.
    pub updates: usize,
    /// Resyncs (reconnects that could not resume).
    pub resyncs: usize,
    /// Problems found, by kind: `gap`, `duplicate`, `reorder`,
    /// `uncommitted`, `stale-end`, `unexpected`.
    pub counts: BTreeMap<String, usize>,
    /// A few of them, explained.
    pub examples: Vec<String>,
}

impl WatchReport {
    /// Every problem found.
    pub fn anomalies(&self) -> usize {
        self.counts.values().sum()
    }

    fn add(&mut self, kind: &str, text: impl FnOnce() -> String) {
        let n = self.counts.entry(kind.to_string()).or_insert(0);
        *n += 1;
        if *n <= 5 {
            self.examples.push(format!("{kind}: {}", text()));
        }
    }
}

/// Checks every subscriber's log against `history` (which must hold the
/// final read).
pub fn check(history: &History, logs: &[Log]) -> WatchReport {
    let mut report = WatchReport::default();
    // The final state of each key, and who appended each value.
    let finals: HashMap<u64, Vec<i64>> = history
        .final_reads()
        .filter_map(|(_, key, value)| match value {
            Observed::List(l) => Some((key, l.clone())),
            Observed::Register(v) => Some((key, v.iter().copied().collect())),
            Observed::Unknown => None,
        })
        .collect();
    let mut writers: HashMap<(u64, i64), usize> = HashMap::new();
    let mut appends: HashMap<(usize, u64), Vec<i64>> = HashMap::new();
    for op in &history.ops {
        for m in &op.mops {
            if let Mop::Append { key, value } | Mop::Write { key, value } = m {
                writers.insert((*key, *value), op.id);
                appends.entry((op.id, *key)).or_default().push(*value);
            }
        }
    }
    for (n, log) in logs.iter().enumerate() {
        let received = log.snapshot();
        report.updates += received.len();
        let mut last_time: Option<Time> = None;
        let mut shown: HashMap<u64, Value> = HashMap::new();
        for r in &received {
            match r.kind {
                Kind::Initial | Kind::Resynced => {
                    if r.kind == Kind::Resynced {
                        report.resyncs += 1;
                    }
                    shown = r.keys.iter().cloned().collect();
                    last_time = Some(r.time);
                    continue;
                }
                Kind::Other => {
                    report.add("unexpected", || {
                        format!("subscriber {n} received an update a subscriber never should (a prediction)")
                    });
                    continue;
                }
                Kind::Committed => {}
            }
            if let Some(t) = last_time {
                if r.time == t {
                    report.add("duplicate", || {
                        format!("subscriber {n} received time {:?} twice", r.time)
                    });
                } else if r.time < t {
                    report.add("reorder", || {
                        format!("subscriber {n} received time {:?} after {t:?}", r.time)
                    });
                }
            }
            last_time = Some(r.time);
            for (key, value) in &r.keys {
                let before = shown.insert(*key, value.clone()).unwrap_or(Value::Null);
                if history.workload != Workload::ListAppend {
                    continue;
                }
                let (Ok(Observed::List(old)), Ok(Observed::List(new))) = (
                    observe(Workload::ListAppend, &before),
                    observe(Workload::ListAppend, value),
                ) else {
                    report.add("uncommitted", || {
                        format!("subscriber {n}: key {key} shows {value:?}, not a list")
                    });
                    continue;
                };
                let last = finals.get(key).map(Vec::as_slice).unwrap_or(&[]);
                if !last.starts_with(&new) {
                    report.add("uncommitted", || {
                        format!(
                            "subscriber {n}: key {key} shows {new:?}, not a prefix of its final list {last:?}"
                        )
                    });
                    continue;
                }
                if !new.starts_with(&old) || new.len() == old.len() {
                    report.add("reorder", || {
                        format!("subscriber {n}: key {key} went from {old:?} to {new:?}")
                    });
                    continue;
                }
                // The values added must be exactly one transaction's
                // appends to the key.
                let added = &new[old.len()..];
                let writer = writers.get(&(*key, added[0]));
                let whole = writer.and_then(|w| appends.get(&(*w, *key)));
                if whole.map(Vec::as_slice) != Some(added) {
                    report.add("gap", || {
                        format!(
                            "subscriber {n}: key {key} went from {old:?} to {new:?} in one update; {added:?} is not one transaction's appends"
                        )
                    });
                }
            }
        }
        if history.workload == Workload::ListAppend {
            for (key, last) in &finals {
                let seen = shown.get(key).cloned().unwrap_or(Value::Null);
                if observe(Workload::ListAppend, &seen) != Ok(Observed::List(last.clone())) {
                    report.add("stale-end", || {
                        format!(
                            "subscriber {n}: key {key} last showed {seen:?}, but its final list is {last:?}"
                        )
                    });
                }
            }
        }
    }
    report
}

/// True when every subscriber shows the final state of every key (what
/// the runner waits for before checking).
pub fn caught_up(history: &History, logs: &[Log]) -> bool {
    logs.iter().all(|log| {
        let latest = log.latest();
        history.final_reads().all(|(_, key, want)| {
            let got = latest.get(&key).cloned().unwrap_or(Value::Null);
            observe(history.workload, &got).as_ref() == Ok(want)
        })
    })
}
