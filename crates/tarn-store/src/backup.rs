//! Backups of a consistent point in time, and restore.
//!
//! A backup is itself a tarn data directory: its identity file, an empty
//! WAL, and one base archive holding every leaf as of the snapshot time
//! (with the version time it was written at), whose manifest sets the
//! history floor to that time. It is written while commits go on: the
//! snapshot is pinned and read in pages. Restore copies a backup into a
//! new, empty data directory, which then opens like any other.

use std::fs;
use std::path::Path as FsPath;

use tarn_core::{Path, Time};

use crate::archive::{self, ArchiveMeta, ArchiveStore, Manifest, Versions};
use crate::db::{Db, IDENTITY_FILE, StoreError, prepare_data_dir, write_identity};
use crate::wal;

/// Leaves read per page while backing up.
const BACKUP_PAGE: usize = 4096;

/// What a backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The snapshot time: the backup holds exactly the state as of it.
    pub time: Time,
    /// Leaves in it.
    pub leaves: u64,
    /// Size of its archive in bytes.
    pub bytes: u64,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

fn require_empty(dir: &FsPath, what: &str) -> Result<(), StoreError> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))?;
        if entries.next().is_some() {
            return Err(StoreError::Io {
                context: format!(
                    "{what} {} is not empty; choose a new or empty directory",
                    dir.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
    }
    Ok(())
}

/// Writes a backup of `db` as of now into `dest` (new or empty).
pub fn backup(db: &Db, dest: &FsPath) -> Result<BackupInfo, StoreError> {
    require_empty(dest, "backup destination")?;
    let snapshot = db.pin()?;
    let time = snapshot.time();
    let mut versions = Versions::new();
    let mut after: Option<Path> = None;
    loop {
        let page = snapshot.read(|e| {
            e.store()
                .leaves(&Path::root(), Some(time), after.as_ref(), BACKUP_PAGE)
        })?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (path, version) in page {
            versions.insert(path, vec![(version.time, version.value)]);
        }
    }
    drop(snapshot);
    // Everything first, the identity file last: an interrupted backup is
    // never mistaken for a (smaller) database.
    fs::create_dir_all(dest.join("wal")).map_err(io(format!("creating {}", dest.display())))?;
    let archives = ArchiveStore::local(dest.join("archive"))?;
    let name = "b-backup.tarc".to_string();
    let encoded = archive::encode_archive(&versions);
    let info = BackupInfo {
        time,
        leaves: versions.len() as u64,
        bytes: encoded.len() as u64,
    };
    let manifest = Manifest {
        archives: vec![ArchiveMeta {
            name: name.clone(),
            first_segment: 0,
            last_segment: 0,
            through: time.into(),
            paths: info.leaves,
            versions: info.leaves,
            bytes: info.bytes,
        }],
        next_segment: 1,
        cut: time.into(),
        floor: time.into(),
        ..Manifest::default()
    };
    archives.put(&name, encoded)?;
    archives.put_manifest(&manifest)?;
    write_identity(dest)?;
    Ok(info)
}

/// Copies the backup (or any closed data directory whose archives are
/// local) at `from` into `to`, which must be new or empty. Refuses anything that is not a tarn
/// data directory this build can read, without changing it.
pub fn restore(from: &FsPath, to: &FsPath) -> Result<(), StoreError> {
    if !from.join(IDENTITY_FILE).exists() {
        return Err(StoreError::NotADataDir {
            dir: from.to_path_buf(),
        });
    }
    // Validates the identity file (format not newer than this build);
    // it exists, so nothing is created.
    prepare_data_dir(from)?;
    require_empty(to, "restore target")?;
    // The identity file last: an interrupted restore is not a database.
    copy_dir(from, to, true)?;
    fs::copy(from.join(IDENTITY_FILE), to.join(IDENTITY_FILE))
        .map_err(io(format!("copying the identity file to {}", to.display())))?;
    fs::File::open(to.join(IDENTITY_FILE))
        .and_then(|f| f.sync_all())
        .map_err(io("syncing the identity file".into()))?;
    wal::sync_dir(to).map_err(io(format!("syncing {}", to.display())))?;
    Ok(())
}

fn copy_dir(from: &FsPath, to: &FsPath, skip_identity: bool) -> Result<(), StoreError> {
    fs::create_dir_all(to).map_err(io(format!("creating {}", to.display())))?;
    for entry in fs::read_dir(from).map_err(io(format!("reading {}", from.display())))? {
        let entry = entry.map_err(io(format!("reading {}", from.display())))?;
        if skip_identity && (entry.file_name() == IDENTITY_FILE || entry.file_name() == "TARN.tmp")
        {
            continue;
        }
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(io(format!("reading {}", entry.path().display())))?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target, false)?;
        } else {
            fs::copy(entry.path(), &target).map_err(io(format!(
                "copying {} to {}",
                entry.path().display(),
                target.display()
            )))?;
            fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io(format!("syncing {}", target.display())))?;
        }
    }
    wal::sync_dir(to).map_err(io(format!("syncing {}", to.display())))
}
