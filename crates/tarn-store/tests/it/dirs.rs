//! A data directory of a newer format, or not a data directory, is refused
//! with a clear message and left exactly as it was.

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use tarn_store::{Db, StoreError, StoreOptions};

use crate::support::{options, set};

/// Every file under `dir` with its bytes.
fn contents(dir: &FsPath) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn a_directory_that_is_not_a_data_dir_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "my files").unwrap();
    let before = contents(dir.path());
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(matches!(err, StoreError::NotADataDir { .. }), "{err}");
    assert!(
        err.to_string().contains("not a tarn data directory"),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn a_newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        set(&db, "a", 1);
    }
    std::fs::write(
        dir.path().join("TARN"),
        r#"{"tarn": "data-dir", "format": 99}"#,
    )
    .unwrap();
    let before = contents(dir.path());
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerFormat { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade tarn"), "{err}");
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn a_damaged_identity_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("TARN"), "garbage").unwrap();
    let before = contents(dir.path());
    assert!(matches!(
        Db::open(dir.path(), options()),
        Err(StoreError::BadIdentity { .. })
    ));
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn a_newer_segment_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        set(&db, "a", 1);
    }
    let seg = dir
        .path()
        .join("wal")
        .join(tarn_store::wal::segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    let crc = crc32c_of(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let before = contents(dir.path());
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerFormat { found: 7, .. }),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

/// CRC32C (Castagnoli), bit by bit: the test's own, independent of the
/// crate the store uses.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_record_from_a_newer_tarn_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        set(&db, "a", 1);
        set(&db, "b", 2);
    }
    // Rewrite the last record's payload version byte, with a valid CRC.
    let seg = dir
        .path()
        .join("wal")
        .join(tarn_store::wal::segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut at = tarn_store::wal::SEGMENT_HEADER_BYTES;
    let mut last = at;
    while let tarn_store::wal::RecordRead::Ok { next, .. } =
        tarn_store::wal::read_record(&bytes, at, usize::MAX)
    {
        last = at;
        at = next;
    }
    let payload = last + tarn_store::wal::RECORD_HEADER_BYTES;
    bytes[payload] = 9;
    let crc = crc32c_of(&bytes[payload..at]);
    bytes[last + 8..last + 12].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let before = contents(dir.path());
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerFormat { found: 9, .. }),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn archives_without_their_manifest_are_not_thrown_away() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(
            dir.path(),
            StoreOptions {
                segment_bytes: 256,
                ..options()
            },
        )
        .unwrap();
        for i in 0..50 {
            set(&db, &format!("k{i}"), i);
        }
        assert!(db.archive_now().unwrap() > 0);
    }
    std::fs::remove_file(dir.path().join("archive/MANIFEST")).unwrap();
    let before = contents(dir.path());
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(matches!(err, StoreError::ManifestMissing { .. }), "{err}");
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn leftovers_of_an_interrupted_creation_are_a_new_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("TARN.tmp"), "{").unwrap();
    std::fs::create_dir(dir.path().join("wal")).unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    set(&db, "a", 1);
}

#[test]
fn an_interrupted_backup_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    set(&db, "a", 1);
    let out = tempfile::tempdir().unwrap();
    let backup = out.path().join("b");
    tarn_store::backup(&db, &backup).unwrap();
    // Simulate a crash before the identity file was written.
    std::fs::remove_file(backup.join("TARN")).unwrap();
    assert!(matches!(
        tarn_store::restore(&backup, &out.path().join("r")),
        Err(StoreError::NotADataDir { .. })
    ));
    assert!(matches!(
        Db::open(&backup, options()),
        Err(StoreError::NotADataDir { .. })
    ));
}

#[test]
fn an_orphan_of_a_crashed_first_archive_pass_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        set(&db, "a", 1);
    }
    // The first pass wrote its archive, then crashed before the manifest;
    // the WAL still starts at segment 1.
    std::fs::write(
        dir.path().join("archive/d-00000000000000000001.tarc"),
        b"partial",
    )
    .unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert!(
        db.get(&tarn_core::Path::parse("a").unwrap())
            .unwrap()
            .value
            .is_some()
    );
    assert!(
        !dir.path()
            .join("archive/d-00000000000000000001.tarc")
            .exists()
    );
}

#[test]
fn one_process_at_a_time_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    set(&db, "a", 1);
    let before = contents(dir.path());
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another tarn process"),
        "{err}"
    );
    drop(db);
    assert_eq!(contents(dir.path()).len(), before.len());
    let db = Db::open(dir.path(), options()).unwrap();
    assert!(
        db.get(&tarn_core::Path::parse("a").unwrap())
            .unwrap()
            .value
            .is_some()
    );
}
