//! JSON export and import of the tree, streaming both ways.
//!
//! Export pins a snapshot time and walks the leaves under a path in pages
//! (`Store::leaves`), writing JSON text as it goes: memory stays at one
//! page, and commits continue meanwhile (the pin keeps the snapshot's
//! history from being trimmed). The output is exactly what a read of the
//! path at that time returns.
//!
//! Import parses JSON from a reader with serde's streaming deserializer,
//! turning each leaf into a write as soon as it is parsed and committing
//! them in batches: the file is never held in memory, only one batch of
//! leaves (and one array, since an array is one leaf). An import of many
//! batches is not atomic: each batch is one transaction.

use std::collections::HashSet;
use std::fmt;
use std::io::{Read, Write};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use tarn_core::value_serde::ValueVisitor;
use tarn_core::{Key, Path, PathLimits, Txn, Value, Write as TxnWrite};

use crate::db::{CommitError, Db, StoreError};

/// Leaves read per page while exporting.
const EXPORT_PAGE: usize = 4096;

/// What an export or import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Leaves written or read.
    pub leaves: u64,
    /// Transactions committed (import).
    pub commits: u64,
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        context: context.to_string(),
        source,
    }
}

/// Writes the tree at `prefix`, as of now, as JSON to `out` (`null` if
/// absent).
pub fn export_json(db: &Db, prefix: &Path, out: impl Write) -> Result<TransferStats, StoreError> {
    let mut out = std::io::BufWriter::new(out);
    let snapshot = db.pin()?;
    let at = snapshot.time();
    let mut stats = TransferStats::default();
    // Keys of the objects currently open below `prefix`.
    let mut open: Vec<Key> = Vec::new();
    let mut started = false;
    let mut after: Option<Path> = None;
    let write_err = io("writing the export");
    let json_err = |e: serde_json::Error| StoreError::Io {
        context: "writing the export".into(),
        source: e.into(),
    };
    let mut wrote_bare_leaf = false;
    loop {
        let page = snapshot.read(|e| {
            e.store()
                .leaves(prefix, Some(at), after.as_ref(), EXPORT_PAGE)
        })?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (path, version) in &page {
            let Some(value) = &version.value else {
                continue;
            };
            stats.leaves += 1;
            let rel = &path.keys()[prefix.depth()..];
            if rel.is_empty() {
                // The prefix itself is a leaf: the whole export is one value.
                serde_json::to_writer(&mut out, value).map_err(json_err)?;
                wrote_bare_leaf = true;
                continue;
            }
            let parents = &rel[..rel.len() - 1];
            let common = open.iter().zip(parents).take_while(|(a, b)| a == b).count();
            if !started {
                out.write_all(b"{").map_err(io("writing the export"))?;
                started = true;
            } else {
                while open.len() > common {
                    out.write_all(b"}").map_err(io("writing the export"))?;
                    open.pop();
                }
                out.write_all(b",").map_err(io("writing the export"))?;
            }
            for key in &parents[open.len()..] {
                serde_json::to_writer(&mut out, key.as_str()).map_err(json_err)?;
                out.write_all(b":{").map_err(io("writing the export"))?;
                open.push(key.clone());
            }
            let leaf = &rel[rel.len() - 1];
            serde_json::to_writer(&mut out, leaf.as_str()).map_err(json_err)?;
            out.write_all(b":").map_err(io("writing the export"))?;
            serde_json::to_writer(&mut out, value).map_err(json_err)?;
        }
    }
    if started {
        for _ in 0..=open.len() {
            out.write_all(b"}").map_err(io("writing the export"))?;
        }
    } else if !wrote_bare_leaf {
        out.write_all(b"null").map_err(write_err)?;
    }
    out.flush().map_err(io("writing the export"))?;
    Ok(stats)
}

/// How an import treats what is already at the target path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// Delete the target subtree first (one transaction), then import.
    Replace,
    /// Write the imported leaves over what is there (like `patch`).
    Merge,
}

/// Reads JSON from `input` and writes it into the tree at `at`, committing
/// every `batch_leaves` leaves.
pub fn import_json(
    db: &Db,
    at: &Path,
    input: impl Read,
    mode: ImportMode,
    batch_leaves: usize,
) -> Result<TransferStats, StoreError> {
    import_json_guarded(db, at, input, mode, batch_leaves, &|_| Ok(()))
}

/// [`import_json`], with every write (the initial delete of `Replace`,
/// then each leaf) first passed to `guard`, whose refusal stops the import
/// (the server refuses writes to the system's paths this way).
pub fn import_json_guarded(
    db: &Db,
    at: &Path,
    input: impl Read,
    mode: ImportMode,
    batch_leaves: usize,
    guard: &dyn Fn(&TxnWrite) -> Result<(), String>,
) -> Result<TransferStats, StoreError> {
    let mut sink = Sink {
        db,
        batch: Vec::new(),
        paths: HashSet::new(),
        batch_leaves: batch_leaves.max(1),
        limits: db.read(|e| e.config().paths)?,
        stats: TransferStats::default(),
        failed: None,
        guard,
    };
    if mode == ImportMode::Replace {
        let delete = TxnWrite::Delete { path: at.clone() };
        guard(&delete).map_err(StoreError::Import)?;
        sink.commit(vec![delete])?;
    }
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(input));
    let result = TreeSeed {
        path: at.clone(),
        sink: &mut sink,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(e) = sink.failed.take() {
        return Err(e);
    }
    result
        .map_err(|e| StoreError::Import(format!("{e}; leaves before this point were imported")))?;
    sink.flush()?;
    Ok(sink.stats)
}

struct Sink<'a> {
    db: &'a Db,
    batch: Vec<TxnWrite>,
    paths: HashSet<Path>,
    batch_leaves: usize,
    limits: PathLimits,
    stats: TransferStats,
    /// A store error that stopped the parse.
    failed: Option<StoreError>,
    guard: &'a dyn Fn(&TxnWrite) -> Result<(), String>,
}

impl Sink<'_> {
    fn leaf(&mut self, path: Path, value: Value) -> Result<(), StoreError> {
        if self.paths.contains(&path) || self.batch.len() >= self.batch_leaves {
            self.flush()?;
        }
        let write = TxnWrite::Set {
            path: path.clone(),
            value,
        };
        (self.guard)(&write).map_err(StoreError::Import)?;
        self.paths.insert(path);
        self.batch.push(write);
        self.stats.leaves += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.batch);
        self.paths.clear();
        self.commit(writes)
    }

    fn commit(&mut self, writes: Vec<TxnWrite>) -> Result<(), StoreError> {
        match self.db.commit(Txn::new(Vec::new(), writes)) {
            Ok(_) => {
                self.stats.commits += 1;
                Ok(())
            }
            Err(CommitError::Store(e)) => Err(e),
            Err(CommitError::Txn(e)) => Err(StoreError::Import(format!(
                "{e}; leaves before this batch were imported"
            ))),
        }
    }
}

/// Deserializes the JSON at `path`: objects recurse into children,
/// anything else is one leaf.
struct TreeSeed<'a, 'b> {
    path: Path,
    sink: &'a mut Sink<'b>,
}

impl<'de> DeserializeSeed<'de> for TreeSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl TreeSeed<'_, '_> {
    fn leaf<E: de::Error>(self, value: Value) -> Result<(), E> {
        if matches!(value, Value::Null) {
            return Ok(());
        }
        if let Err(e) = self.sink.leaf(self.path, value) {
            let msg = e.to_string();
            self.sink.failed = Some(e);
            return Err(E::custom(msg));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for TreeSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let child = Key::new(&key, &self.sink.limits)
                .and_then(|k| self.path.child(k, &self.sink.limits))
                .map_err(|e| {
                    de::Error::custom(format!(
                        "key {key:?} under '{}' cannot be a path: {e}",
                        self.path
                    ))
                })?;
            map.next_value_seed(TreeSeed {
                path: child,
                sink: &mut *self.sink,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value = ValueVisitor::new().visit_seq(seq)?;
        self.leaf(value)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(ValueVisitor::new().visit_u64::<E>(v)?)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(Value::str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}
