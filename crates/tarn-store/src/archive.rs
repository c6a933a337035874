//! Archives: immutable, path-sorted files of versions, kept in any
//! object store (a local directory by default, S3-compatible by URL), and
//! the manifest that says which archives make up the database.
//!
//! An archive file holds, per path in path order, versions in time order:
//! ```text
//! "TARNARC\0"  u32 format  u32 reserved(0)  u64 path count
//! per path: path, var version count, per version: time, value-or-absent
//! u32 CRC32C of everything before it   "TARNEND\0"
//! ```
//! The manifest (`MANIFEST`, JSON) is the commit point: an archive not
//! listed in it does not exist (a crash between writing the file and the
//! manifest leaves an orphan, removed at the next open).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tarn_core::{Path, Time, Value};

use crate::codec::{self, DecodeError, Reader};
use crate::wal::sync_dir;

/// Format version of archive files written by this build.
pub const ARCHIVE_FORMAT: u32 = 1;
/// Format version of the manifest written by this build.
pub const MANIFEST_FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"TARNARC\0";
const END: &[u8; 8] = b"TARNEND\0";
const MANIFEST: &str = "MANIFEST";

/// Versions of many paths: path → versions, oldest first.
pub type Versions = BTreeMap<Path, Vec<(Time, Option<Value>)>>;

/// Why an archive or the manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// An archive file is damaged.
    #[error("archive {name} is damaged: {reason}")]
    Damaged {
        /// The archive's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Written by a newer tarn.
    #[error("{what} has format {found}, newer than this build reads ({max}); upgrade tarn")]
    Newer {
        /// Which file.
        what: String,
        /// Its format.
        found: u32,
        /// The newest this build reads.
        max: u32,
    },
    /// The archive location could not be understood.
    #[error("archive location '{url}': {reason}")]
    BadUrl {
        /// The configured URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// A time as JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeJson {
    /// Milliseconds.
    pub ms: u64,
    /// Logical counter.
    pub logical: u32,
    /// Node id.
    pub node: u32,
}

impl From<Time> for TimeJson {
    fn from(t: Time) -> TimeJson {
        TimeJson {
            ms: t.ms,
            logical: t.logical,
            node: t.node,
        }
    }
}

impl From<TimeJson> for Time {
    fn from(t: TimeJson) -> Time {
        Time {
            ms: t.ms,
            logical: t.logical,
            node: t.node,
        }
    }
}

/// One archive listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMeta {
    /// Object name under the archive location.
    pub name: String,
    /// WAL segments it was made from (inclusive), or (0, 0) for a backup
    /// checkpoint.
    pub first_segment: u64,
    /// Last WAL segment it covers.
    pub last_segment: u64,
    /// Newest version time in it.
    pub through: TimeJson,
    /// Paths in it.
    pub paths: u64,
    /// Versions in it.
    pub versions: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// Which archives make up the database, and where the WAL continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: u32,
    /// Archives, oldest first; together they hold every version up to
    /// `cut`.
    pub archives: Vec<ArchiveMeta>,
    /// The first WAL segment not covered by the archives.
    pub next_segment: u64,
    /// Every commit at or before this time is in the archives.
    pub cut: TimeJson,
    /// History before this was trimmed (only golden values kept): reads
    /// before it are refused after a restart.
    pub floor: TimeJson,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            archives: Vec::new(),
            next_segment: 1,
            cut: TimeJson::default(),
            floor: TimeJson::default(),
        }
    }
}

/// Encodes versions as an archive file.
pub fn encode_archive(versions: &Versions) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ARCHIVE_FORMAT.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(versions.len() as u64).to_le_bytes());
    for (path, history) in versions {
        codec::put_path(&mut out, path);
        codec::put_var(&mut out, history.len() as u64);
        for (time, value) in history {
            codec::put_time(&mut out, *time);
            codec::put_value(&mut out, value.as_ref());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(END);
    out
}

/// Decodes an archive into `into`, after any archives decoded before it
/// (whose versions of a path must be older). Returns how many versions it
/// held.
pub fn decode_archive(name: &str, buf: &[u8], into: &mut Versions) -> Result<u64, ArchiveError> {
    decode_with(name, buf, |path, time, value| {
        let history = into.entry(path.clone()).or_default();
        if history.last().is_some_and(|(t, _)| *t >= time) {
            return Err(format!("versions of '{path}' out of order"));
        }
        history.push((time, value));
        Ok(())
    })
}

/// One archived version: its time, path and value (`None`: deleted).
pub type Entry = (Time, Path, Option<Value>);

/// Decodes an archive into a list of its versions, in path order (then
/// time order per path).
pub fn decode_archive_entries(name: &str, buf: &[u8]) -> Result<Vec<Entry>, ArchiveError> {
    let mut out = Vec::new();
    decode_with(name, buf, |path, time, value| {
        out.push((time, path.clone(), value));
        Ok(())
    })?;
    Ok(out)
}

/// Checks an archive (magic, format, checksum, order) and calls `f` with
/// each version, in path order then time order; `f` may refuse one (the
/// archive is then damaged, for the reason it gives). Returns how many
/// versions there were.
fn decode_with(
    name: &str,
    buf: &[u8],
    mut f: impl FnMut(&Path, Time, Option<Value>) -> Result<(), String>,
) -> Result<u64, ArchiveError> {
    let damaged = |reason: String| ArchiveError::Damaged {
        name: name.to_string(),
        reason,
    };
    if buf.len() < 16 + 12 || &buf[..8] != MAGIC {
        return Err(damaged(
            "not a tarn archive (bad magic or too short)".into(),
        ));
    }
    let format = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if format > ARCHIVE_FORMAT {
        return Err(ArchiveError::Newer {
            what: format!("archive {name}"),
            found: format,
            max: ARCHIVE_FORMAT,
        });
    }
    let body_end = buf.len() - 12;
    if &buf[body_end + 4..] != END {
        return Err(damaged("missing end marker (truncated?)".into()));
    }
    let crc = u32::from_le_bytes([
        buf[body_end],
        buf[body_end + 1],
        buf[body_end + 2],
        buf[body_end + 3],
    ]);
    if crc32c::crc32c(&buf[..body_end]) != crc {
        return Err(damaged("checksum mismatch".into()));
    }
    let decode = |e: DecodeError| damaged(e.to_string());
    let mut r = Reader::new(&buf[16..body_end]);
    let paths = r.u64().map_err(decode)?;
    let mut count = 0;
    let mut last_path: Option<Path> = None;
    for _ in 0..paths {
        let path = r.path().map_err(decode)?;
        if last_path.as_ref().is_some_and(|l| *l >= path) {
            return Err(damaged(format!("paths out of order at '{path}'")));
        }
        let n = r.count().map_err(decode)?;
        let mut last_time = None;
        for _ in 0..n {
            let time = r.time().map_err(decode)?;
            let value = r.value().map_err(decode)?;
            if last_time.is_some_and(|t| t >= time) {
                return Err(damaged(format!("versions of '{path}' out of order")));
            }
            last_time = Some(time);
            f(&path, time, value).map_err(damaged)?;
            count += 1;
        }
        last_path = Some(path);
    }
    r.finish().map_err(decode)?;
    Ok(count)
}

/// Keeps, per path, the versions at or after `horizon` plus the newest one
/// before it (unless that one is a deletion), and drops paths left empty.
pub fn trim(versions: &mut Versions, horizon: Time) {
    versions.retain(|_, history| {
        let older = history.partition_point(|(t, _)| *t < horizon);
        if older > 1 {
            history.drain(..older - 1);
        }
        if older >= 1 && history.first().is_some_and(|(_, v)| v.is_none()) {
            history.remove(0);
        }
        !history.is_empty()
    });
}

/// Where archives live: an object store, plus the local directory behind
/// it (if any) so writes can be made durable with fsync before the WAL
/// they replace is deleted.
pub struct ArchiveStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    local: Option<PathBuf>,
    /// `Some` until drop (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ArchiveStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another
        // runtime (a server dropping its database); shut it down in the
        // background instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveStore({} {})", self.store, self.prefix)
    }
}

impl ArchiveStore {
    /// Archives in a local directory (created if missing).
    pub fn local(dir: PathBuf) -> Result<ArchiveStore, ArchiveError> {
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io {
                context: format!("creating archive directory {}", dir.display()),
                source,
            })?;
            // The directory entry must survive a crash: the WAL is deleted
            // on the strength of what is inside.
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|source| ArchiveError::Io {
                    context: format!("syncing {}", parent.display()),
                    source,
                })?;
            }
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
        ArchiveStore::new(Arc::new(store), ObjPath::default(), Some(dir))
    }

    /// Archives at an object store URL (`file:///dir`, `s3://bucket/prefix`,
    /// ...). Options are object_store's keys (`aws_endpoint`,
    /// `aws_access_key_id`, `aws_region`, `allow_http`, ...): first those
    /// set in the environment (`AWS_*` variables), then `options`, which
    /// win.
    pub fn from_url(url: &str, options: &[(String, String)]) -> Result<ArchiveStore, ArchiveError> {
        let bad = |reason: String| ArchiveError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|_| bad("not a local path".into()))?;
            return ArchiveStore::local(dir);
        }
        let options = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .chain(options.iter().cloned());
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        ArchiveStore::new(Arc::from(store), prefix, None)
    }

    fn new(
        store: Arc<dyn ObjectStore>,
        prefix: ObjPath,
        local: Option<PathBuf>,
    ) -> Result<ArchiveStore, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ArchiveError::Io {
                context: "starting the archive I/O runtime".into(),
                source,
            })?;
        Ok(ArchiveStore {
            store,
            prefix,
            local,
            runtime: Some(runtime),
        })
    }

    /// Runs an object store call to completion from any thread, including
    /// threads of another tokio runtime.
    fn block_on<T: Send>(&self, fut: impl std::future::Future<Output = T> + Send) -> T {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives until the store is dropped");
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(fut))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn location(&self, name: &str) -> ObjPath {
        self.prefix.clone().join(name)
    }

    /// Stores an object durably.
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        let location = self.location(name);
        self.block_on(self.store.put(&location, PutPayload::from(bytes)))?;
        if let Some(dir) = &self.local {
            // object_store's local put renames a staged file into place but
            // does not fsync; the WAL is deleted on the strength of this.
            let io = |source| ArchiveError::Io {
                context: format!("syncing archive {name}"),
                source,
            };
            std::fs::File::open(dir.join(name))
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            sync_dir(dir).map_err(io)?;
        }
        Ok(())
    }

    /// Reads an object, or `None` if it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<Bytes>, ArchiveError> {
        let location = self.location(name);
        let result = self.block_on(async {
            match self.store.get(&location).await {
                Ok(got) => got.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        Ok(result?)
    }

    /// Deletes an object (no error if it is already gone).
    pub fn delete(&self, name: &str) -> Result<(), ArchiveError> {
        let location = self.location(name);
        match self.block_on(self.store.delete(&location)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of all objects.
    pub fn list(&self) -> Result<Vec<String>, ArchiveError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<object_store::ObjectMeta> =
            self.block_on(self.store.list(prefix).try_collect())?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    /// True if a manifest exists.
    pub fn has_manifest(&self) -> Result<bool, ArchiveError> {
        Ok(self.get(MANIFEST)?.is_some())
    }

    /// Reads the manifest; a missing one is an empty database.
    pub fn manifest(&self) -> Result<Manifest, ArchiveError> {
        let Some(bytes) = self.get(MANIFEST)? else {
            return Ok(Manifest::default());
        };
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let damaged = |e: serde_json::Error| ArchiveError::Damaged {
            name: MANIFEST.into(),
            reason: e.to_string(),
        };
        let v: Version = serde_json::from_slice(&bytes).map_err(damaged)?;
        if v.format > MANIFEST_FORMAT {
            return Err(ArchiveError::Newer {
                what: "the archive manifest".into(),
                found: v.format,
                max: MANIFEST_FORMAT,
            });
        }
        serde_json::from_slice(&bytes).map_err(damaged)
    }

    /// Replaces the manifest (the commit point of archiving).
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<(), ArchiveError> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| ArchiveError::Damaged {
            name: MANIFEST.into(),
            reason: e.to_string(),
        })?;
        self.put(MANIFEST, bytes)
    }

    /// Removes objects that the manifest does not list (left by a crash
    /// between writing an archive and the manifest).
    pub fn remove_orphans(&self, manifest: &Manifest) -> Result<Vec<String>, ArchiveError> {
        let mut removed = Vec::new();
        for name in self.list()? {
            let listed = name == MANIFEST || manifest.archives.iter().any(|a| a.name == name);
            if !listed && name.ends_with(".tarc") {
                self.delete(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("valid test path")
    }

    fn t(ms: u64) -> Time {
        Time {
            ms,
            logical: 0,
            node: 1,
        }
    }

    #[test]
    fn archives_round_trip_and_detect_damage() {
        let mut v = Versions::new();
        v.insert(p("a"), vec![(t(1), Some(Value::Int(1))), (t(2), None)]);
        v.insert(p("a/b"), vec![(t(3), Some(Value::str("x")))]);
        let bytes = encode_archive(&v);
        let mut back = Versions::new();
        assert_eq!(decode_archive("x", &bytes, &mut back).expect("decodes"), 3);
        assert_eq!(back, v);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                decode_archive("x", &bad, &mut Versions::new()).is_err(),
                "flip at {i}"
            );
        }
        for len in 0..bytes.len() {
            assert!(decode_archive("x", &bytes[..len], &mut Versions::new()).is_err());
        }
    }

    #[test]
    fn trim_keeps_golden_values() {
        let mut v = Versions::new();
        v.insert(
            p("a"),
            vec![
                (t(1), Some(Value::Int(1))),
                (t(2), Some(Value::Int(2))),
                (t(9), Some(Value::Int(9))),
            ],
        );
        v.insert(p("gone"), vec![(t(1), Some(Value::Int(1))), (t(2), None)]);
        v.insert(p("new"), vec![(t(8), Some(Value::Int(8)))]);
        trim(&mut v, t(5));
        assert_eq!(
            v[&p("a")],
            vec![(t(2), Some(Value::Int(2))), (t(9), Some(Value::Int(9)))]
        );
        assert!(!v.contains_key(&p("gone")));
        assert_eq!(v[&p("new")].len(), 1);
    }
}
