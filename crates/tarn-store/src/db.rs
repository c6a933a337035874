//! `Db`: the durable database of one node — the commit engine wrapped in
//! a write-ahead log with group commit, recovery on open, and archives.
//!
//! The life of a durable commit:
//! 1. `Db::commit` takes the state lock, lets the [`Engine`] decide and
//!    apply the transaction in memory, frames its [`codec`] record into the
//!    shared pending buffer (so log order is commit order) and notes its
//!    log sequence number (`lsn`).
//! 2. The flusher thread takes the whole pending buffer at once, writes it
//!    to the current segment and, unless `sync = never`, `fdatasync`s it:
//!    every commit that arrived meanwhile shares that one sync (group
//!    commit). With `batch(ms)` it syncs at most once per `ms`: after a
//!    quiet spell a commit is written at once, under load commits gather
//!    until `ms` after the previous sync.
//! 3. It publishes the durable lsn; the committer, waiting on a condition
//!    variable, returns. A commit is acknowledged only when durable under
//!    the policy. Reads wait for the durability of what they saw, so no
//!    caller ever observes a write that a crash could take back.
//!
//! A failed write or sync stops the database: the page cache can no
//! longer be trusted, so every later call fails with [`StoreError::Stopped`]
//! and the operator restarts, which recovers from the log.
//!
//! The archiver thread seals history into archives: each WAL segment, once
//! the flusher has rolled past it, becomes a delta archive of its
//! versions; deltas are merged into one base archive (trimmed to the
//! history horizon) once there are `archive_merge_after` of them; WAL
//! segments covered by the manifest are deleted. It also trims in-memory
//! history to the horizon (`Engine::compact_to`), never past a pinned
//! snapshot (an export or backup in progress).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tarn_core::{
    Change, Commit, Engine, EngineConfig, HistoryError, Observed, ObservedKeys, Path, Retention,
    Time, Txn, TxnError,
};

use crate::archive::{self, ArchiveError, ArchiveMeta, ArchiveStore, Manifest, Versions};
use crate::codec;
use crate::wal::{self, BadRecord, RecordRead, SegmentWriter, SyncPolicy};

/// Format version of the data directory layout written by this build.
pub const DATA_DIR_FORMAT: u32 = 1;
/// The file that marks a directory as a tarn data directory.
pub const IDENTITY_FILE: &str = "TARN";

/// Settings of the durable store. Every field has a default and a config
/// key.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// When a commit counts as durable (`wal.sync`, default `batch(2)`).
    pub sync: SyncPolicy,
    /// Roll to a new WAL segment past this size (`wal.segment_bytes`,
    /// default 64 MiB).
    pub segment_bytes: u64,
    /// Largest record accepted when reading the WAL
    /// (`wal.max_record_bytes`, default 4 GiB - 1, the frame's limit).
    /// Records written are bounded well below by the transaction limits
    /// (`limits.max_txn_changes`, values and path sizes).
    pub max_record_bytes: usize,
    /// Skip damaged records in the middle of the WAL instead of refusing
    /// to open (`--recover`). Every skip is logged with its offsets.
    pub recover: bool,
    /// Where archives live (`archive.url`): `None` is `<data dir>/archive`;
    /// else an object store URL such as `s3://bucket/prefix`.
    pub archive_url: Option<String>,
    /// Options of the archive object store (`archive.options.<key>`), by
    /// object_store's key names: `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `allow_http`, ...
    /// They override the `AWS_*` environment variables.
    pub archive_options: Vec<(String, String)>,
    /// Archive sealed WAL segments in the background (`archive.enabled`).
    pub archive: bool,
    /// Merge delta archives into one once there are this many
    /// (`archive.merge_after`, default 8).
    pub archive_merge_after: usize,
    /// How often the archiver wakes to trim history and archive
    /// (`archive.interval_ms`, default 1000).
    pub archive_interval_ms: u64,
    /// Show a progress bar when replay on open takes over a second.
    pub progress: bool,
    /// The commit engine's settings (limits, retention, node id).
    pub engine: EngineConfig,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: SyncPolicy::default(),
            segment_bytes: 64 << 20,
            max_record_bytes: u32::MAX as usize,
            recover: false,
            archive_url: None,
            archive_options: Vec::new(),
            archive: true,
            archive_merge_after: 8,
            archive_interval_ms: 1000,
            progress: false,
            engine: EngineConfig::default(),
        }
    }
}

/// Why the store failed. Each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The directory holds files but is not a tarn data directory.
    #[error(
        "{dir} is not a tarn data directory (no {IDENTITY_FILE} file, and it is not empty); point --data at an empty or new directory, or at an existing tarn data directory"
    )]
    NotADataDir {
        /// The directory.
        dir: PathBuf,
    },
    /// Written by a newer tarn.
    #[error(
        "{what} was written by a newer tarn (format {found}; this build reads up to {max}); upgrade tarn to open it. Nothing was changed."
    )]
    NewerFormat {
        /// What was found.
        what: String,
        /// Its format.
        found: u32,
        /// The newest this build reads.
        max: u32,
    },
    /// The identity file is damaged.
    #[error(
        "{path} is damaged ({reason}); it should hold {{\"tarn\": \"data-dir\", \"format\": N}}"
    )]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A damaged record in the middle of the log.
    #[error("WAL segment {segment} is damaged at byte {offset}: {reason}; {}", match next_good { Some(at) => format!("the next good record is at byte {at}; reopen with --recover to skip the damaged bytes (logged)"), None => "reopen with --recover to skip the rest of this segment (logged)".to_string() })]
    Corrupt {
        /// The segment's number.
        segment: u64,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// Where the next good record starts, if in the same segment.
        next_good: Option<u64>,
    },
    /// A WAL segment is missing.
    #[error(
        "WAL segment {expected} is missing (found {found} next); restore it from a backup, or reopen with --recover to continue without it (its commits are lost)"
    )]
    MissingSegment {
        /// The segment that should be there.
        expected: u64,
        /// The one found instead.
        found: u64,
    },
    /// A WAL segment's header is bad.
    #[error("WAL segment {segment}: {source}")]
    BadSegment {
        /// The segment's number.
        segment: u64,
        /// What is wrong.
        source: wal::HeaderError,
    },
    /// The archives cannot be read or written.
    #[error("archives: {0}")]
    Archive(#[from] ArchiveError),
    /// The log holds commits out of time order.
    #[error("WAL segment {segment} at byte {offset}: {source}")]
    Replay {
        /// The segment's number.
        segment: u64,
        /// The record's offset.
        offset: u64,
        /// What is wrong.
        source: tarn_core::ReplayError,
    },
    /// The archives hold versions out of time order.
    #[error("the archives are damaged: {source}")]
    ArchiveReplay {
        /// What is wrong.
        source: tarn_core::ReplayError,
    },
    /// The archive manifest is missing but archives exist.
    #[error(
        "the archive manifest is missing but {count} archive files exist at the archive location; restore the MANIFEST from a backup (opening now would lose the archived data)"
    )]
    ManifestMissing {
        /// Archive files found.
        count: usize,
    },
    /// Another process has the data directory open.
    #[error(
        "{dir} is in use by another tarn process; stop it, or point --data at another directory"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A write or sync of the log failed earlier; the database stopped.
    #[error(
        "the database stopped after a write-ahead log failure ({0}); restart tarn to recover from the log"
    )]
    Stopped(String),
    /// A read of the past that cannot be answered.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Bad input to an import.
    #[error("import: {0}")]
    Import(String),
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The engine refused the transaction; nothing was written.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// The store failed; the transaction may not be durable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What recovery found on open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Versions loaded from archives.
    pub archived_versions: u64,
    /// Commits replayed from the WAL.
    pub replayed_commits: u64,
    /// Bytes of WAL read.
    pub wal_bytes: u64,
    /// Torn or damaged tails truncated: (segment, offset, bytes dropped).
    pub truncated: Vec<(u64, u64, u64)>,
    /// Damaged ranges skipped with `recover`: (segment, from, to).
    pub skipped: Vec<(u64, u64, u64)>,
    /// Segments that were missing and skipped with `recover`.
    pub missing_segments: Vec<u64>,
}

/// A submitted commit: decided and queued, durable once `lsn` is.
#[derive(Debug)]
pub struct Pending {
    /// The commit (its time, changes and watch deliveries).
    pub commit: Arc<Commit>,
    /// Its log sequence number.
    pub lsn: u64,
}

/// What the flusher publishes to async waiters.
#[derive(Clone, Copy, Debug, Default)]
struct Durable {
    lsn: u64,
    failed: bool,
}

/// Counters for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Commits logged since open.
    pub commits: u64,
    /// Log writes (each followed by one fsync unless `sync = never`).
    pub flushes: u64,
    /// Bytes appended to the log since open.
    pub wal_bytes: u64,
    /// Archives written since open (deltas and merges).
    pub archives_written: u64,
    /// WAL segments deleted after archiving.
    pub segments_deleted: u64,
}

struct State {
    engine: Engine,
    /// Framed records not yet handed to the flusher.
    pending: Vec<u8>,
    /// Lsn of the newest record added.
    next_lsn: u64,
    /// Every record up to this lsn is durable under the policy.
    durable_lsn: u64,
    /// The segment the flusher writes.
    current_segment: u64,
    failed: Option<String>,
    closing: bool,
    /// Commits logged but not yet durable, for the feed: published in log
    /// order once durable.
    unpublished: std::collections::VecDeque<(u64, Arc<Commit>)>,
    /// Snapshot times pinned by exports and backups: in-memory history
    /// is not trimmed past the oldest.
    pins: BTreeMap<Time, usize>,
    stats: DbStats,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when `durable_lsn` advances or the store fails.
    flushed: Condvar,
    /// Signalled when records are pending or on close.
    work: Condvar,
    /// Signalled when a segment is sealed or on close.
    archive_wake: Condvar,
    wal_dir: PathBuf,
    archives: ArchiveStore,
    /// Where durable commits are published in log order, if anyone
    /// subscribed at open (the server's fan-out).
    feed: Option<tokio::sync::mpsc::UnboundedSender<(u64, Arc<Commit>)>>,
    /// The durable lsn, for async waiters.
    durable_tx: tokio::sync::watch::Sender<Durable>,
    durable_rx: tokio::sync::watch::Receiver<Durable>,
    /// The manifest as last written. Held for a whole archive pass, so the
    /// background archiver and `Db::archive_now` never race.
    manifest: Mutex<Manifest>,
    options: StoreOptions,
}

/// The durable database. See the module docs. Cheap to share: all methods
/// take `&self`.
pub struct Db {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    dir: PathBuf,
    recovery: Recovery,
    /// Holds the data directory's lock until the database is dropped.
    _lock: fs::File,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({})", self.dir.display())
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// The wall clock in ms, the only clock the engine is given.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks that `dir` is a tarn data directory this build can open,
/// creating it (and marking it) if it is new or empty. Never modifies a
/// directory it refuses.
pub fn prepare_data_dir(dir: &FsPath) -> Result<(), StoreError> {
    let identity = dir.join(IDENTITY_FILE);
    if identity.exists() {
        let text = fs::read_to_string(&identity)
            .map_err(io_err(format!("reading {}", identity.display())))?;
        #[derive(serde::Deserialize)]
        struct Identity {
            tarn: String,
            format: u32,
        }
        let id: Identity = serde_json::from_str(&text).map_err(|e| StoreError::BadIdentity {
            path: identity.clone(),
            reason: e.to_string(),
        })?;
        if id.tarn != "data-dir" {
            return Err(StoreError::BadIdentity {
                path: identity,
                reason: format!("\"tarn\" is {:?}", id.tarn),
            });
        }
        if id.format > DATA_DIR_FORMAT {
            return Err(StoreError::NewerFormat {
                what: format!("data directory {}", dir.display()),
                found: id.format,
                max: DATA_DIR_FORMAT,
            });
        }
        return Ok(());
    }
    if dir.exists() {
        // A crash while creating the directory may leave the identity
        // file's temporary copy, or an empty wal/: still a new directory.
        for entry in fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
            let name = entry.file_name();
            let leftover = name == "TARN.tmp"
                || (name == "wal"
                    && fs::read_dir(entry.path()).is_ok_and(|mut d| d.next().is_none()));
            if !leftover {
                return Err(StoreError::NotADataDir {
                    dir: dir.to_path_buf(),
                });
            }
        }
    }
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    write_identity(dir)?;
    fs::create_dir_all(dir.join("wal")).map_err(io_err(format!("creating {}", dir.display())))?;
    wal::sync_dir(dir).map_err(io_err(format!("syncing {}", dir.display())))?;
    Ok(())
}

/// Writes the identity file atomically (temporary file, fsync, rename,
/// fsync of the directory). Whoever builds a data directory writes it
/// last, so an interrupted build is never mistaken for a database.
pub fn write_identity(dir: &FsPath) -> Result<(), StoreError> {
    let text = format!("{{\"tarn\": \"data-dir\", \"format\": {DATA_DIR_FORMAT}}}\n");
    let tmp = dir.join("TARN.tmp");
    fs::write(&tmp, text).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing the identity file"))?;
    fs::rename(&tmp, dir.join(IDENTITY_FILE)).map_err(io_err("placing the identity file"))?;
    wal::sync_dir(dir).map_err(io_err(format!("syncing {}", dir.display())))
}

fn open_archives(dir: &FsPath, options: &StoreOptions) -> Result<ArchiveStore, StoreError> {
    Ok(match &options.archive_url {
        Some(url) => ArchiveStore::from_url(url, &options.archive_options)?,
        None => ArchiveStore::local(dir.join("archive"))?,
    })
}

impl Db {
    /// Opens (or creates) the data directory `dir`: loads the archives,
    /// replays the WAL, truncates a torn tail, and starts the flusher and
    /// archiver threads.
    pub fn open(dir: impl AsRef<FsPath>, options: StoreOptions) -> Result<Db, StoreError> {
        Db::open_with_feed(dir, options, None)
    }

    /// Like [`Db::open`], and publishes every commit that changed
    /// something a watch sees (a non-empty [`Commit::deliveries`]) on
    /// `feed` with its log sequence number once it is durable, in log
    /// (commit time) order:
    /// what a fan-out to watchers needs, since watches never show a change
    /// before it is durable.
    pub fn open_with_feed(
        dir: impl AsRef<FsPath>,
        options: StoreOptions,
        feed: Option<tokio::sync::mpsc::UnboundedSender<(u64, Arc<Commit>)>>,
    ) -> Result<Db, StoreError> {
        let (durable_tx, durable_rx) = tokio::sync::watch::channel(Durable::default());
        let dir = dir.as_ref().to_path_buf();
        prepare_data_dir(&dir)?;
        // One process per data directory: an exclusive lock on the identity
        // file (no new file, so a refused open leaves the directory as it
        // was), released when the process ends, even by kill -9.
        let identity = dir.join(IDENTITY_FILE);
        let lock =
            fs::File::open(&identity).map_err(io_err(format!("opening {}", identity.display())))?;
        // A process that just exited, or a child forked by this one and
        // not yet exec'd, may hold the lock for a moment: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked { dir: dir.clone() });
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(io_err(format!("locking {}", identity.display()))(e));
                }
            }
        }
        let wal_dir = dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err(format!("creating {}", wal_dir.display())))?;
        let archives = open_archives(&dir, &options)?;
        let manifest = archives.manifest()?;
        if manifest.archives.is_empty() && !archives.has_manifest()? {
            // Archives without a manifest are orphans of a first archive
            // pass that crashed before its manifest (the WAL still starts
            // at segment 1: nothing was deleted), or the manifest was lost
            // (segments were deleted on its strength): refuse that.
            let stray = archives
                .list()?
                .into_iter()
                .filter(|n| n.ends_with(".tarc"))
                .count();
            let first_segment = wal::list_segments(&wal_dir)
                .map_err(io_err("listing WAL segments"))?
                .first()
                .map(|(seq, _)| *seq);
            if stray > 0 && first_segment != Some(1) {
                return Err(StoreError::ManifestMissing { count: stray });
            }
        }

        let mut engine = Engine::new(options.engine.clone());
        let mut recovery = Recovery::default();
        load_archives(&archives, &manifest, &mut engine, &mut recovery)?;
        let (segment, len) = replay_wal(&wal_dir, &manifest, &options, &mut engine, &mut recovery)?;
        if let Some((seg, off, bytes)) = recovery.truncated.first() {
            tracing::warn!(
                segment = seg,
                offset = off,
                bytes,
                "truncated a torn WAL tail"
            );
        }
        let writer =
            SegmentWriter::open(&wal_dir, segment, len, options.segment_bytes, options.sync)
                .map_err(io_err(format!("opening WAL segment {segment}")))?;
        let removed = archives.remove_orphans(&manifest)?;
        if !removed.is_empty() {
            tracing::info!(?removed, "removed archives not listed in the manifest");
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                engine,
                pending: Vec::new(),
                next_lsn: 0,
                durable_lsn: 0,
                current_segment: writer.seq(),
                failed: None,
                closing: false,
                pins: BTreeMap::new(),
                unpublished: std::collections::VecDeque::new(),
                stats: DbStats::default(),
            }),
            flushed: Condvar::new(),
            work: Condvar::new(),
            archive_wake: Condvar::new(),
            wal_dir,
            archives,
            manifest: Mutex::new(manifest),
            feed,
            durable_tx,
            durable_rx,
            options,
        });
        let mut threads = Vec::new();
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("tarn-wal-flusher".into())
                .spawn(move || flusher(&s, writer))
                .map_err(io_err("starting the WAL flusher thread"))?,
        );
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("tarn-archiver".into())
                .spawn(move || archiver(&s))
                .map_err(io_err("starting the archiver thread"))?,
        );
        Ok(Db {
            shared,
            threads,
            dir,
            recovery,
            _lock: lock,
        })
    }

    /// What recovery found on open.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The data directory.
    pub fn dir(&self) -> &FsPath {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Decides `txn` and returns once its commit is durable under the sync
    /// policy.
    pub fn commit(&self, txn: Txn) -> Result<Arc<Commit>, CommitError> {
        let pending = self.submit(txn)?;
        let state = self.lock();
        self.wait_durable(state, pending.lsn)?;
        Ok(pending.commit)
    }

    /// Decides `txn` and queues its record for the log, without waiting:
    /// the commit is not acknowledged until [`Db::durable`] (or
    /// [`Db::wait`]) says its `lsn` is durable. Submissions from one caller
    /// are decided in the order they are made, so a pipelining client keeps
    /// its order while waiting for many syncs at once.
    pub fn submit(&self, txn: Txn) -> Result<Pending, CommitError> {
        let mut state = self.lock();
        let was_idle = state.pending.is_empty();
        let out = self.submit_locked(&mut state, txn);
        if was_idle && !state.pending.is_empty() {
            self.shared.work.notify_one();
        }
        out
    }

    /// [`Db::submit`] for several transactions, decided in order under one
    /// acquisition of the lock (a pipelining connection's frame of
    /// commits): each gets its own result, as if submitted one by one.
    pub fn submit_all(
        &self,
        txns: impl IntoIterator<Item = Txn>,
    ) -> Vec<Result<Pending, CommitError>> {
        let mut state = self.lock();
        let was_idle = state.pending.is_empty();
        let out = txns
            .into_iter()
            .map(|txn| self.submit_locked(&mut state, txn))
            .collect();
        if was_idle && !state.pending.is_empty() {
            self.shared.work.notify_one();
        }
        out
    }

    fn submit_locked(&self, state: &mut State, txn: Txn) -> Result<Pending, CommitError> {
        if let Some(why) = &state.failed {
            return Err(StoreError::Stopped(why.clone()).into());
        }
        let commit = Arc::new(state.engine.commit(txn, wall_ms())?);
        if !commit.changes.is_empty() {
            // The flusher sleeps only when nothing is pending (or until a
            // batch window ends): the caller wakes it on the first record
            // of a group, not on every one.
            append_record(state, &commit);
            if self.shared.feed.is_some() && !commit.deliveries.is_empty() {
                let lsn = state.next_lsn;
                state.unpublished.push_back((lsn, Arc::clone(&commit)));
            }
        }
        // A read-only commit logs nothing, but what it read must be durable
        // before it is acknowledged: it waits for everything before it.
        Ok(Pending {
            lsn: state.next_lsn,
            commit,
        })
    }

    /// Waits (blocking) until `lsn` is durable.
    pub fn wait(&self, lsn: u64) -> Result<(), StoreError> {
        let state = self.lock();
        self.wait_durable(state, lsn)
    }

    /// The highest lsn known durable now.
    pub fn durable_lsn(&self) -> u64 {
        self.shared.durable_rx.borrow().lsn
    }

    /// Waits (async) until `lsn` is durable.
    pub async fn durable(&self, lsn: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.durable_rx.clone();
        let result = rx.wait_for(|d| d.lsn >= lsn || d.failed).await;
        match result {
            Ok(d) if d.lsn >= lsn => Ok(()),
            _ => Err(StoreError::Stopped(
                self.lock()
                    .failed
                    .clone()
                    .unwrap_or_else(|| "the database closed".into()),
            )),
        }
    }

    fn wait_durable(&self, mut state: MutexGuard<'_, State>, lsn: u64) -> Result<(), StoreError> {
        while state.durable_lsn < lsn {
            if let Some(why) = &state.failed {
                return Err(StoreError::Stopped(why.clone()));
            }
            state = self
                .shared
                .flushed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Runs `f` on the engine under the state lock and returns once
    /// everything it could have seen is durable. For reads and watch
    /// registration; commits go through [`Db::commit`].
    pub fn read<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> Result<R, StoreError> {
        let mut state = self.lock();
        if let Some(why) = &state.failed {
            return Err(StoreError::Stopped(why.clone()));
        }
        let out = f(&mut state.engine);
        let lsn = state.next_lsn;
        self.wait_durable(state, lsn)?;
        Ok(out)
    }

    /// Runs `f` on the engine under the state lock without waiting;
    /// returns its result and the lsn to await with [`Db::durable`] before
    /// showing the result to anyone (it may include commits not yet
    /// durable). For async callers, which must not block on a sync.
    pub fn peek<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> Result<(R, u64), StoreError> {
        let mut state = self.lock();
        if let Some(why) = &state.failed {
            return Err(StoreError::Stopped(why.clone()));
        }
        let out = f(&mut state.engine);
        Ok((out, state.next_lsn))
    }

    /// The latest value at `path`.
    pub fn get(&self, path: &Path) -> Result<Observed, StoreError> {
        self.read(|e| e.store().get(path))
    }

    /// The value at `path` as of `at`.
    pub fn get_at(&self, path: &Path, at: Time) -> Result<Observed, StoreError> {
        self.read(|e| e.store().get_at(path, at))?
            .map_err(StoreError::from)
    }

    /// The child keys of `path`.
    pub fn keys(&self, path: &Path) -> Result<ObservedKeys, StoreError> {
        self.read(|e| e.store().keys(path))
    }

    /// Counters since open.
    pub fn stats(&self) -> DbStats {
        self.lock().stats
    }

    /// Pins the newest commit time as a snapshot: in-memory history is
    /// not trimmed past it until the pin is dropped.
    pub fn pin(&self) -> Result<Snapshot<'_>, StoreError> {
        let mut state = self.lock();
        let time = state.engine.newest();
        *state.pins.entry(time).or_default() += 1;
        let lsn = state.next_lsn;
        self.wait_durable(state, lsn)?;
        Ok(Snapshot { db: self, time })
    }

    /// Waits until every commit so far is durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let state = self.lock();
        let lsn = state.next_lsn;
        self.wait_durable(state, lsn)
    }

    /// Archives every sealed WAL segment now and merges archives if due
    /// (the archiver does this in the background; tests and tools call it
    /// to be deterministic). Returns the number of archives written.
    pub fn archive_now(&self) -> Result<u64, StoreError> {
        let mut manifest = self
            .shared
            .manifest
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let result = archive_pass(&self.shared, &mut manifest, true);
        if result.is_err() {
            // Start the next pass from what is really stored.
            if let Ok(stored) = self.shared.archives.manifest() {
                *manifest = stored;
            }
        }
        result
    }

    /// Flushes the log, stops the threads and closes the files.
    pub fn close(mut self) -> Result<(), StoreError> {
        let result = self.flush();
        self.stop();
        result
    }

    fn stop(&mut self) {
        {
            let mut state = self.lock();
            state.closing = true;
        }
        self.shared.work.notify_all();
        self.shared.archive_wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pinned snapshot time; see [`Db::pin`].
pub struct Snapshot<'a> {
    db: &'a Db,
    time: Time,
}

impl Snapshot<'_> {
    /// The snapshot's time.
    pub fn time(&self) -> Time {
        self.time
    }

    /// Runs `f` on the engine under the lock (reads at `self.time()`).
    pub fn read<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.db.lock().engine)
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        let mut state = self.db.lock();
        if let Some(n) = state.pins.get_mut(&self.time) {
            *n -= 1;
            if *n == 0 {
                state.pins.remove(&self.time);
            }
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the engine half-changed
    // (a commit changes nothing until it cannot fail), so keep going.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

fn append_record(state: &mut State, commit: &Commit) {
    wal::frame_with(&mut state.pending, |buf| {
        codec::encode_commit(buf, commit.time, commit.id, &commit.changes);
    });
    state.next_lsn += 1;
    state.stats.commits += 1;
}

/// The flusher thread: writes pending records and syncs them, one group
/// at a time.
fn flusher(shared: &Shared, mut writer: SegmentWriter) {
    let mut buf = Vec::new();
    let mut last_flush = Instant::now() - Duration::from_secs(1);
    loop {
        let mut state = lock(shared);
        loop {
            if state.pending.is_empty() {
                if state.closing {
                    return;
                }
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if let SyncPolicy::Batch(ms) = shared.options.sync {
                // At most one sync per `ms`: a commit after a quiet spell
                // is written at once; under load, commits gather until the
                // window since the last sync has passed.
                let due = last_flush + Duration::from_millis(ms);
                let now = Instant::now();
                if now < due && !state.closing {
                    state = shared
                        .work
                        .wait_timeout(state, due - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
            }
            break;
        }
        std::mem::swap(&mut buf, &mut state.pending);
        let upto = state.next_lsn;
        drop(state);

        last_flush = Instant::now();
        // The group's sync marker, in the same write and the same sync.
        wal::push_sync_marker(&mut buf);
        let result = writer.append(&buf);
        let mut state = lock(shared);
        match result {
            Ok(sealed) => {
                state.durable_lsn = upto;
                if let Some(feed) = &shared.feed {
                    while state
                        .unpublished
                        .front()
                        .is_some_and(|(lsn, _)| *lsn <= upto)
                    {
                        if let Some(published) = state.unpublished.pop_front() {
                            // A closed feed (server shutting down) is fine.
                            let _ = feed.send(published);
                        }
                    }
                }
                state.stats.flushes += 1;
                state.stats.wal_bytes += buf.len() as u64;
                state.current_segment = writer.seq();
                if sealed.is_some() {
                    shared.archive_wake.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL write failed; stopping the database");
                state.failed = Some(format!("writing WAL segment {}: {e}", writer.seq()));
            }
        }
        let failed = state.failed.is_some();
        let durable = Durable {
            lsn: state.durable_lsn,
            failed,
        };
        drop(state);
        shared.durable_tx.send_replace(durable);
        shared.flushed.notify_all();
        buf.clear();
        if failed {
            return;
        }
    }
}

/// The archiver thread: trims in-memory history and archives sealed
/// segments, until close.
fn archiver(shared: &Shared) {
    let interval = Duration::from_millis(shared.options.archive_interval_ms.max(1));
    loop {
        {
            let state = lock(shared);
            if state.closing {
                return;
            }
            let mut state = shared
                .archive_wake
                .wait_timeout(state, interval)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if state.closing || state.failed.is_some() {
                // Closed, or stopped after a WAL failure: nothing more to
                // archive until a restart recovers.
                return;
            }
            trim_memory(shared, &mut state);
        }
        if shared.options.archive {
            let mut manifest = shared.manifest.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = archive_pass(shared, &mut manifest, false) {
                // The WAL still holds everything: archiving retries later,
                // from what is really stored.
                tracing::warn!(error = %e, "archiving failed; will retry");
                if let Ok(stored) = shared.archives.manifest() {
                    *manifest = stored;
                }
            }
        }
    }
}

fn horizon_now(options: &StoreOptions) -> Option<Time> {
    match options.engine.retention {
        Retention::Forever => None,
        Retention::HorizonMs(ms) => Some(Time::from_ms(wall_ms().saturating_sub(ms))),
    }
}

fn trim_memory(shared: &Shared, state: &mut State) {
    if let Some(mut horizon) = horizon_now(&shared.options) {
        if let Some((&pinned, _)) = state.pins.iter().next() {
            horizon = horizon.min(pinned);
        }
        state.engine.compact_to(horizon);
    }
}

/// Archives every sealed segment not yet archived, then merges if due.
fn archive_pass(
    shared: &Shared,
    manifest: &mut Manifest,
    force_merge: bool,
) -> Result<u64, StoreError> {
    let current = lock(shared).current_segment;
    let mut written = 0;
    for (seq, path) in
        wal::list_segments(&shared.wal_dir).map_err(io_err("listing WAL segments"))?
    {
        if seq < manifest.next_segment || seq >= current {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        wal::check_header(&bytes, seq).map_err(|source| StoreError::BadSegment {
            segment: seq,
            source,
        })?;
        let mut versions = Versions::new();
        let mut through = Time::from(manifest.cut);
        let mut at = wal::SEGMENT_HEADER_BYTES;
        loop {
            match wal::read_record(&bytes, at, shared.options.max_record_bytes) {
                RecordRead::Ok { record, next } => {
                    through = through.max(record.time);
                    for change in record.changes {
                        versions
                            .entry(change.path)
                            .or_default()
                            .push((record.time, change.value));
                    }
                    at = next;
                }
                RecordRead::Marker { next } => at = next,
                RecordRead::End => break,
                RecordRead::Bad(bad) if shared.options.recover => {
                    // Damage skipped at open with --recover: skip it here
                    // too, logged; the good records around it are kept.
                    tracing::warn!(segment = seq, offset = at, reason = %bad, "archiving skips damaged WAL bytes (--recover)");
                    match wal::find_next_record(&bytes, at + 1, shared.options.max_record_bytes) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
                RecordRead::Bad(bad) => {
                    // A sealed segment went bad after open: keep it (and
                    // the WAL) and report; never archive it silently.
                    let next =
                        wal::find_next_record(&bytes, at + 1, shared.options.max_record_bytes);
                    return Err(StoreError::Corrupt {
                        segment: seq,
                        offset: at as u64,
                        reason: describe(&bad),
                        next_good: next.map(|n| n as u64),
                    });
                }
            }
        }
        let name = format!("d-{seq:020}.tarc");
        let encoded = archive::encode_archive(&versions);
        let meta = ArchiveMeta {
            name: name.clone(),
            first_segment: seq,
            last_segment: seq,
            through: through.into(),
            paths: versions.len() as u64,
            versions: versions.values().map(|v| v.len() as u64).sum(),
            bytes: encoded.len() as u64,
        };
        shared.archives.put(&name, encoded)?;
        manifest.archives.push(meta);
        manifest.next_segment = seq + 1;
        manifest.cut = through.into();
        shared.archives.put_manifest(manifest)?;
        written += 1;
        fs::remove_file(&path).map_err(io_err(format!("removing archived {}", path.display())))?;
        wal::sync_dir(&shared.wal_dir).map_err(io_err("syncing the WAL directory"))?;
        let mut state = lock(shared);
        state.stats.archives_written += 1;
        state.stats.segments_deleted += 1;
    }
    let merge_due = manifest.archives.len() >= shared.options.archive_merge_after.max(2)
        || (force_merge && manifest.archives.len() > 1);
    if merge_due {
        merge(shared, manifest)?;
        written += 1;
        lock(shared).stats.archives_written += 1;
    }
    Ok(written)
}

/// Merges all archives into one base archive, trimmed to the horizon.
fn merge(shared: &Shared, manifest: &mut Manifest) -> Result<(), StoreError> {
    let mut versions = Versions::new();
    for meta in &manifest.archives {
        let bytes = shared
            .archives
            .get(&meta.name)?
            .ok_or_else(|| ArchiveError::Damaged {
                name: meta.name.clone(),
                reason: "listed in the manifest but missing".into(),
            })?;
        archive::decode_archive(&meta.name, &bytes, &mut versions)?;
    }
    let cut = Time::from(manifest.cut);
    let mut floor = Time::from(manifest.floor);
    if let Some(horizon) = horizon_now(&shared.options) {
        // Never trim past the cut: later versions are still in the WAL.
        let horizon = horizon.min(cut);
        if horizon > floor {
            archive::trim(&mut versions, horizon);
            floor = horizon;
        }
    }
    let last = manifest.archives.last().map_or(0, |a| a.last_segment);
    let name = format!("b-{last:020}.tarc");
    let encoded = archive::encode_archive(&versions);
    let meta = ArchiveMeta {
        name: name.clone(),
        first_segment: manifest.archives.first().map_or(0, |a| a.first_segment),
        last_segment: last,
        through: manifest.cut,
        paths: versions.len() as u64,
        versions: versions.values().map(|v| v.len() as u64).sum(),
        bytes: encoded.len() as u64,
    };
    let old: Vec<String> = manifest.archives.iter().map(|a| a.name.clone()).collect();
    shared.archives.put(&name, encoded)?;
    manifest.archives = vec![meta];
    manifest.floor = floor.into();
    shared.archives.put_manifest(manifest)?;
    for name in old.iter().filter(|n| **n != name) {
        shared.archives.delete(name)?;
    }
    Ok(())
}

/// Loads every archive in the manifest into the engine.
fn load_archives(
    archives: &ArchiveStore,
    manifest: &Manifest,
    engine: &mut Engine,
    recovery: &mut Recovery,
) -> Result<(), StoreError> {
    let mut versions = decode_archives(archives, &manifest.archives)?;
    recovery.archived_versions += versions.len() as u64;
    // The engine takes history in time order, one commit (time) at a
    // time, each commit's changes in path order.
    versions.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    if let Some(w) = versions
        .windows(2)
        .find(|w| (w[0].0, &w[0].1) == (w[1].0, &w[1].1))
    {
        return Err(ArchiveError::Damaged {
            name: "(manifest)".into(),
            reason: format!("two archived versions of '{}' at {:?}", w[0].1, w[0].0),
        }
        .into());
    }
    let mut versions = versions.into_iter().peekable();
    let mut changes = Vec::new();
    while let Some((time, path, value)) = versions.next() {
        changes.clear();
        changes.push(Change { path, value });
        while let Some((_, path, value)) = versions.next_if(|v| v.0 == time) {
            changes.push(Change { path, value });
        }
        engine
            .replay(time, &changes)
            .map_err(|source| StoreError::ArchiveReplay { source })?;
    }
    // The clock resumes past the cut even if the newest archived version
    // is older (a backup's snapshot time may follow deletions).
    let cut = Time::from(manifest.cut);
    if cut > engine.newest() {
        engine
            .replay(cut, &[])
            .map_err(|source| StoreError::ArchiveReplay { source })?;
    }
    engine.compact_to(Time::from(manifest.floor));
    Ok(())
}

/// Fetches the archives (on this thread, one at a time) and decodes them
/// on as many threads as there are cores: decoding is most of a restart.
/// Returns every version, unordered.
fn decode_archives(
    archives: &ArchiveStore,
    metas: &[ArchiveMeta],
) -> Result<Vec<archive::Entry>, StoreError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, metas.len().max(1));
    // Bounded: at most `workers` fetched archives wait in memory.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, bytes::Bytes)>(workers);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let decoders: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    let mut failed = None;
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((name, bytes)) = next else {
                            return failed.map_or(Ok(out), Err);
                        };
                        // After a failure, keep taking archives (so the
                        // fetcher never blocks) without decoding them. A
                        // decoder that panics fails like a damaged archive.
                        if failed.is_none() {
                            let decoded = std::panic::catch_unwind(|| {
                                archive::decode_archive_entries(&name, &bytes)
                            });
                            match decoded {
                                Ok(Ok(entries)) => out.extend(entries),
                                Ok(Err(e)) => failed = Some(e),
                                Err(_) => {
                                    failed = Some(ArchiveError::Damaged {
                                        name: name.clone(),
                                        reason: "decoding it panicked".into(),
                                    })
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let mut fetched = Ok(());
        for meta in metas {
            match archives.get(&meta.name) {
                Ok(Some(bytes)) => {
                    if tx.send((meta.name.clone(), bytes)).is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    fetched = Err(ArchiveError::Damaged {
                        name: meta.name.clone(),
                        reason: "listed in the manifest but missing".into(),
                    });
                    break;
                }
                Err(e) => {
                    fetched = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        // Every decoder is joined before any error is returned.
        let parts: Vec<_> = decoders
            .into_iter()
            .map(|decoder| {
                decoder.join().unwrap_or_else(|_| {
                    Err(ArchiveError::Damaged {
                        name: "(decoder)".into(),
                        reason: "a decoding thread panicked".into(),
                    })
                })
            })
            .collect();
        fetched?;
        let mut all = Vec::new();
        for part in parts {
            all.extend(part?);
        }
        Ok(all)
    })
}

/// Commits replayed between in-memory history trims during recovery.
const REPLAY_COMPACT_EVERY: u64 = 16 * 1024;

/// Replays the WAL segments after the manifest's cut. Returns the segment
/// to continue writing and its valid length (`None`: create it).
///
/// Two stages on two threads: a scanner reads segments, checks frames and
/// CRCs, decodes records and decides about damage; the caller's thread
/// applies the records to the engine in log order. Replay is bound by the
/// slower stage instead of their sum.
fn replay_wal(
    wal_dir: &FsPath,
    manifest: &Manifest,
    options: &StoreOptions,
    engine: &mut Engine,
    recovery: &mut Recovery,
) -> Result<(u64, Option<u64>), StoreError> {
    type Batch = Vec<(u64, u64, codec::CommitRecord)>;
    const BATCH: usize = 256;
    let cut = Time::from(manifest.cut);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(16);
    let (scanned, notes, applied) = std::thread::scope(|s| {
        let scanner = s.spawn(move || {
            let mut notes = Recovery::default();
            let mut batch: Batch = Vec::with_capacity(BATCH);
            let mut emit = |seg: u64, offset: u64, record: codec::CommitRecord| {
                batch.push((seg, offset, record));
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    // The applier stopped (it hit an error it reports).
                    tx.send(full)
                        .map_err(|_| StoreError::Stopped("replay stopped".into()))?;
                }
                Ok(())
            };
            let result = scan_wal(wal_dir, manifest, options, &mut notes, &mut emit);
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            (result, notes)
        });
        let mut applied: Result<u64, StoreError> = Ok(0);
        'batches: for batch in rx.iter() {
            for (segment, offset, record) in batch {
                if record.time <= cut {
                    continue;
                }
                if let Err(source) = engine.replay_logged(record.time, record.id, &record.changes) {
                    applied = Err(StoreError::Replay {
                        segment,
                        offset,
                        source,
                    });
                    break 'batches;
                }
                let Ok(n) = applied.as_mut() else {
                    break 'batches;
                };
                *n += 1;
                if *n % REPLAY_COMPACT_EVERY == 0 {
                    // Trim history beyond the horizon as we go, as the
                    // running server would have: startup memory stays at
                    // the steady state's.
                    if let Some(horizon) = horizon_now(options) {
                        engine.compact_to(horizon);
                    }
                }
            }
        }
        drop(rx);
        let (scanned, notes) = scanner
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (scanned, notes, applied)
    });
    recovery.replayed_commits += applied?;
    recovery.wal_bytes += notes.wal_bytes;
    recovery.truncated.extend(notes.truncated);
    recovery.skipped.extend(notes.skipped);
    recovery.missing_segments.extend(notes.missing_segments);
    scanned
}

/// Reads the WAL segments after the manifest's cut, calling `emit` with
/// every good record in log order, and applies the damage rules: a torn
/// or damaged tail is cut (the writer truncates to the returned length),
/// damage in the middle is an error or, with `recover`, skipped.
fn scan_wal(
    wal_dir: &FsPath,
    manifest: &Manifest,
    options: &StoreOptions,
    recovery: &mut Recovery,
    emit: &mut dyn FnMut(u64, u64, codec::CommitRecord) -> Result<(), StoreError>,
) -> Result<(u64, Option<u64>), StoreError> {
    let mut segments = wal::list_segments(wal_dir).map_err(io_err("listing WAL segments"))?;
    // Segments the archives cover were about to be deleted when we stopped.
    segments.retain(|(seq, path)| {
        if *seq < manifest.next_segment {
            let _ = fs::remove_file(path);
            false
        } else {
            true
        }
    });
    if segments.is_empty() {
        return Ok((manifest.next_segment, None));
    }
    let total: u64 = segments
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok().map(|m| m.len()))
        .sum();
    let progress = Progress::new(options.progress, total);
    let mut expected = manifest.next_segment;
    let count = segments.len();
    let mut last = (expected, None);
    let mut cache = codec::PathCache::default();
    // One buffer for every segment: no fresh pages to fault in per segment.
    let mut bytes: Vec<u8> = Vec::new();
    for (i, (seq, path)) in segments.into_iter().enumerate() {
        let is_last = i + 1 == count;
        if seq != expected {
            if !options.recover {
                return Err(StoreError::MissingSegment {
                    expected,
                    found: seq,
                });
            }
            tracing::warn!(
                expected,
                found = seq,
                "WAL segments missing; continuing (--recover)"
            );
            recovery.missing_segments.extend(expected..seq);
        }
        expected = seq + 1;
        bytes.clear();
        fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut bytes))
            .map_err(io_err(format!("reading {}", path.display())))?;
        if let Err(e) = wal::check_header(&bytes, seq) {
            match e {
                // A crash while creating the newest segment: start it anew.
                wal::HeaderError::Short { .. } if is_last => {
                    fs::remove_file(&path)
                        .map_err(io_err(format!("removing torn {}", path.display())))?;
                    recovery.truncated.push((seq, 0, bytes.len() as u64));
                    last = (seq, None);
                    continue;
                }
                wal::HeaderError::Newer { found, max } => {
                    return Err(StoreError::NewerFormat {
                        what: format!("WAL segment {}", path.display()),
                        found,
                        max,
                    });
                }
                source => {
                    return Err(StoreError::BadSegment {
                        segment: seq,
                        source,
                    });
                }
            }
        }
        let mut at = wal::SEGMENT_HEADER_BYTES;
        let mut valid_end = at;
        loop {
            match wal::read_record_cached(&bytes, at, options.max_record_bytes, &mut cache) {
                RecordRead::Ok { record, next } => {
                    emit(seq, at as u64, record)?;
                    at = next;
                    valid_end = at;
                    progress.set(recovery.wal_bytes + at as u64);
                }
                RecordRead::Marker { next } => {
                    at = next;
                    valid_end = at;
                }
                RecordRead::End => break,
                RecordRead::Bad(BadRecord::Decode(codec::DecodeError::NewerVersion {
                    found,
                    max,
                })) => {
                    // A whole, checksummed record from a newer tarn: not
                    // damage, and not ours to cut.
                    return Err(StoreError::NewerFormat {
                        what: format!("a record at byte {at} of WAL segment {}", path.display()),
                        found: u32::from(found),
                        max: u32::from(max),
                    });
                }
                RecordRead::Bad(bad) => {
                    let next = wal::find_next_record(&bytes, at + 1, options.max_record_bytes);
                    // In the newest segment, damage that no intact sync
                    // marker follows belongs to the final group, whose sync
                    // never completed (nothing in it was acknowledged), even
                    // if some of its records persisted past the hole.
                    let torn_group = is_last
                        && wal::segment_format(&bytes) >= 2
                        && !wal::marker_after(&bytes, at + 1, options.max_record_bytes);
                    match next {
                        _ if torn_group || (next.is_none() && is_last) => {
                            // A torn or damaged tail: cut it.
                            let dropped = (bytes.len() - at) as u64;
                            tracing::warn!(segment = seq, offset = at, dropped, reason = %bad, "truncating damaged WAL tail");
                            recovery.truncated.push((seq, at as u64, dropped));
                            break;
                        }
                        _ if !options.recover => {
                            return Err(StoreError::Corrupt {
                                segment: seq,
                                offset: at as u64,
                                reason: describe(&bad),
                                next_good: next.map(|n| n as u64),
                            });
                        }
                        Some(n) => {
                            tracing::warn!(segment = seq, from = at, to = n, reason = %bad, "skipping damaged WAL bytes (--recover)");
                            recovery.skipped.push((seq, at as u64, n as u64));
                            at = n;
                        }
                        None => {
                            tracing::warn!(segment = seq, from = at, reason = %bad, "skipping the damaged rest of a WAL segment (--recover)");
                            recovery.skipped.push((seq, at as u64, bytes.len() as u64));
                            break;
                        }
                    }
                }
            }
        }
        recovery.wal_bytes += bytes.len() as u64;
        last = (seq, Some(valid_end as u64));
    }
    progress.finish();
    Ok(last)
}

fn describe(bad: &BadRecord) -> String {
    bad.to_string()
}

/// A progress bar that appears only when replay takes over a second.
struct Progress {
    enabled: bool,
    total: u64,
    start: Instant,
    bar: std::cell::OnceCell<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Progress {
        Progress {
            enabled,
            total,
            start: Instant::now(),
            bar: std::cell::OnceCell::new(),
        }
    }

    fn set(&self, done: u64) {
        if !self.enabled || self.start.elapsed() < Duration::from_secs(1) {
            return;
        }
        let bar = self.bar.get_or_init(|| {
            let bar = indicatif::ProgressBar::new(self.total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "replaying the write-ahead log {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            ) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(done);
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}
