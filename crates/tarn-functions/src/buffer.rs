//! What one run of a function read and wrote: the reads become the
//! transaction's reads (each `(path, seen)` once, as first seen), the
//! writes its writes, and reads after writes see the run's own writes
//! laid over the store (read-your-writes).

use std::collections::HashMap;

use tarn_core::{Observed, Path, Read, ReadKind, Time, Txn, Value, Write, tree};

/// Reads and writes of one run.
#[derive(Debug, Default)]
pub struct Buffer {
    reads: Vec<Read>,
    read_at: HashMap<Path, usize>,
    /// Only `Set` (a `null` value deletes) and `Delete`: a patch is
    /// recorded as a set of each of its children.
    writes: Vec<Write>,
    /// The highest log sequence number any read may have seen: what must
    /// be durable before a read-only answer is shown.
    pub(crate) lsn: u64,
}

impl Buffer {
    /// Records a read of `path` that saw `seen` (first read wins: if a
    /// later read of the same path saw a newer version, the first one is
    /// stale and the commit is refused, so the run is redone). A subtree
    /// read upgrades an earlier value read of the same path.
    pub fn read(&mut self, path: &Path, kind: ReadKind, seen: Time) {
        match self.read_at.get(path) {
            Some(&i) => {
                if kind == ReadKind::Subtree {
                    self.reads[i].kind = ReadKind::Subtree;
                }
            }
            None => {
                self.read_at.insert(path.clone(), self.reads.len());
                self.reads.push(Read {
                    path: path.clone(),
                    kind,
                    seen: tarn_core::Seen::At(seen),
                });
            }
        }
    }

    /// The value at `path` given what the store holds there (`stored`):
    /// the run's own writes at, above or under `path` laid over it in
    /// order.
    pub fn overlay(&self, path: &Path, stored: Observed) -> Value {
        let mut value = stored.value.unwrap_or(Value::Null);
        if self.writes.is_empty() {
            return value;
        }
        let at: Vec<&str> = path.keys().iter().map(|k| k.as_str()).collect();
        for write in &self.writes {
            let (wpath, new) = match write {
                Write::Set { path, value } => (path, value),
                Write::Delete { path } => (path, &Value::Null),
                // Never recorded (see `patch`).
                Write::Patch { .. } => continue,
            };
            let wkeys: Vec<&str> = wpath.keys().iter().map(|k| k.as_str()).collect();
            if let Some(rel) = tree::strip(&at, &wkeys) {
                // Written at or above the path: the path now holds what
                // the write put there.
                // Empty objects in what was written are absent, as in
                // the store.
                value = Value::Null;
                tree::set(&mut value, &[], tree::get(new, rel).clone());
            } else if let Some(rel) = tree::strip(&wkeys, &at) {
                tree::set(&mut value, rel, new.clone());
            }
        }
        value
    }

    /// Whether any write is at, above or under `path`.
    pub fn touches(&self, path: &Path) -> bool {
        self.writes.iter().any(|w| {
            let p = w.path();
            p.starts_with(path) || path.starts_with(p)
        })
    }

    /// Sets `path` to `value` (`Null` deletes). Earlier writes at or under
    /// `path` are dropped: this one replaces all of them.
    pub fn set(&mut self, path: Path, value: Value) {
        self.writes.retain(|w| !w.path().starts_with(&path));
        self.writes.push(if value.is_absent() {
            Write::Delete { path }
        } else {
            Write::Set { path, value }
        });
    }

    /// Number of writes recorded.
    pub fn writes(&self) -> usize {
        self.writes.len()
    }

    /// Number of reads recorded.
    pub fn reads(&self) -> usize {
        self.reads.len()
    }

    /// The transaction: these reads and writes.
    pub fn into_txn(self) -> Txn {
        Txn::new(self.reads, self.writes)
    }

    /// The transaction with the reads only (a run whose writes are
    /// discarded because it failed: its answer still has to be consistent).
    pub fn into_reads(self) -> Txn {
        Txn::new(self.reads, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("path")
    }

    fn json(s: &str) -> Value {
        let v: serde_json::Value = serde_json::from_str(s).expect("json");
        from_json(v)
    }

    fn from_json(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::String(s) => Value::str(&s),
            serde_json::Value::Array(a) => Value::Array(a.into_iter().map(from_json).collect()),
            serde_json::Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| (k.into(), from_json(v)))
                    .collect(),
            ),
        }
    }

    fn stored(s: &str) -> Observed {
        Observed {
            value: Some(json(s)).filter(|v| !v.is_absent()),
            seen: Time::ZERO,
        }
    }

    #[test]
    fn reads_see_the_runs_own_writes_at_above_and_under_the_path() {
        let mut b = Buffer::default();
        b.set(p("a/b"), Value::Int(1));
        assert_eq!(
            b.overlay(&p("a"), stored(r#"{"c": 2}"#)),
            json(r#"{"b": 1, "c": 2}"#)
        );
        assert_eq!(b.overlay(&p("a/b"), stored("5")), Value::Int(1));
        assert_eq!(b.overlay(&p("a/b/x"), stored("null")), Value::Null);
        assert_eq!(b.overlay(&p("z"), stored("7")), Value::Int(7));
        b.set(p("a"), json(r#"{"x": {"y": 3}}"#));
        assert_eq!(b.overlay(&p("a/x/y"), stored("null")), Value::Int(3));
        assert_eq!(
            b.overlay(&p("a"), stored(r#"{"c": 2}"#)),
            json(r#"{"x": {"y": 3}}"#)
        );
        b.set(p("a/x"), Value::Null);
        assert_eq!(b.overlay(&p("a"), stored(r#"{"c": 2}"#)), Value::Null);
    }

    #[test]
    fn a_write_replaces_earlier_writes_at_or_under_its_path() {
        let mut b = Buffer::default();
        b.set(p("a/b"), Value::Int(1));
        b.set(p("a/c"), Value::Int(2));
        b.set(p("x"), Value::Int(0));
        b.set(p("a"), Value::Int(3));
        b.set(p("x"), Value::Null);
        let txn = b.into_txn();
        assert_eq!(
            txn.writes,
            vec![
                Write::Set {
                    path: p("a"),
                    value: Value::Int(3)
                },
                Write::Delete { path: p("x") },
            ]
        );
    }

    #[test]
    fn each_path_is_read_once_as_first_seen_and_keys_upgrade_to_subtree() {
        let mut b = Buffer::default();
        let t1 = Time {
            ms: 1,
            logical: 0,
            node: 1,
        };
        let t2 = Time {
            ms: 2,
            logical: 0,
            node: 1,
        };
        b.read(&p("a"), ReadKind::Value, t1);
        b.read(&p("a"), ReadKind::Subtree, t2);
        b.read(&p("b"), ReadKind::Value, t2);
        let txn = b.into_txn();
        assert_eq!(txn.reads.len(), 2);
        assert_eq!(txn.reads[0].kind, ReadKind::Subtree);
        assert_eq!(txn.reads[0].seen, tarn_core::Seen::At(t1));
    }
}
