//! Fault injection at the file layer: every damage to the WAL gets its
//! specified outcome.
//! - A torn or damaged tail (nothing good after it) is truncated: every
//!   record before it survives, the file is cut at the damage.
//! - Damage in the middle is refused with the segment and offset, and with
//!   `recover` skipped to the next good record, logged.
//! - A missing segment is refused, and with `recover` skipped.

use std::path::{Path as FsPath, PathBuf};

use tarn_core::{Path, Value};
use tarn_store::wal::{self, RecordRead};
use tarn_store::{Db, StoreError, StoreOptions};

use crate::support::{get, options, set};

/// A data dir with `n` commits in one segment; returns the segment file
/// and the offsets of its records (plus the end).
fn wal_with(n: i64) -> (tempfile::TempDir, PathBuf, Vec<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        StoreOptions {
            segment_bytes: 64 << 20,
            ..options()
        },
    )
    .unwrap();
    for i in 0..n {
        set(&db, &format!("k{i}"), i);
    }
    db.close().unwrap();
    let seg = dir.path().join("wal").join(wal::segment_name(1));
    let offsets = record_offsets(&std::fs::read(&seg).unwrap());
    assert_eq!(offsets.len() as i64, n + 1);
    (dir, seg, offsets)
}

/// The start of every commit record, then the end of the file (sync
/// markers between them are skipped).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = wal::SEGMENT_HEADER_BYTES;
    loop {
        match wal::read_record(bytes, at, usize::MAX) {
            RecordRead::Ok { next, .. } => {
                out.push(at);
                at = next;
            }
            RecordRead::Marker { next } => at = next,
            _ => break,
        }
    }
    out.push(at);
    out
}

/// The end of the commit record that starts at `start`.
fn record_end(bytes: &[u8], start: usize) -> usize {
    match wal::read_record(bytes, start, usize::MAX) {
        RecordRead::Ok { next, .. } => next,
        other => panic!("no record at {start}: {other:?}"),
    }
}

fn present(db: &Db) -> usize {
    db.keys(&Path::root()).unwrap().keys.len()
}

fn copy_of(dir: &FsPath) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    std::fs::remove_dir(copy.path()).unwrap();
    tarn_store::restore(dir, copy.path()).unwrap();
    copy
}

#[test]
fn a_torn_tail_at_every_byte_of_the_last_record_is_truncated() {
    let (dir, seg, offsets) = wal_with(5);
    let last_start = offsets[4];
    let end = offsets[5];
    let original = std::fs::read(&seg).unwrap();
    let last_end = record_end(&original, last_start); // its sync marker follows
    for cut in last_start..end {
        let copy = copy_of(dir.path());
        let seg_copy = copy.path().join("wal").join(wal::segment_name(1));
        std::fs::write(&seg_copy, &original[..cut]).unwrap();
        let db = Db::open(copy.path(), options()).unwrap();
        // Cut inside the record: it is lost (it was never acknowledged:
        // its group's sync covers the marker too). Cut inside the marker:
        // the record is whole and kept.
        let kept = if cut < last_end { 4 } else { 5 };
        assert_eq!(present(&db), kept, "cut at byte {cut}");
        let torn_at = if cut < last_end { last_start } else { last_end };
        if cut > torn_at {
            assert_eq!(
                db.recovery().truncated,
                vec![(1, torn_at as u64, (cut - torn_at) as u64)]
            );
        }
        // New commits append after the good records and survive.
        set(&db, "after", 1);
        db.close().unwrap();
        let db = Db::open(copy.path(), options()).unwrap();
        assert_eq!(present(&db), kept + 1, "cut at byte {cut}");
        assert_eq!(get(&db, "after"), Some(Value::Int(1)));
        assert!(db.recovery().truncated.is_empty());
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_is_corruption_but_in_its_marker_a_torn_tail() {
    let (dir, seg, offsets) = wal_with(5);
    let original = std::fs::read(&seg).unwrap();
    // The last record's group was synced (its marker is intact), so the
    // record was acknowledged: a flipped bit there is corruption, refused
    // rather than silently cut.
    let mut bytes = original.clone();
    bytes[offsets[4] + 20] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        Db::open(dir.path(), options()),
        Err(StoreError::Corrupt { .. })
    ));
    let db = Db::open(
        dir.path(),
        StoreOptions {
            recover: true,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(present(&db), 4);
    drop(db);
    // A flipped bit in the final marker: a torn tail, cut; the record stays.
    let mut bytes = original;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(present(&db), 5);
    assert_eq!(db.recovery().truncated.len(), 1);
}

#[test]
fn a_flipped_bit_in_the_middle_is_refused_then_skipped_with_recover() {
    let (dir, seg, offsets) = wal_with(6);
    let mut bytes = std::fs::read(&seg).unwrap();
    let end2 = record_end(&bytes, offsets[2]);
    bytes[offsets[2] + 14] ^= 0x80;
    std::fs::write(&seg, &bytes).unwrap();
    let err = Db::open(dir.path(), options()).unwrap_err();
    match &err {
        StoreError::Corrupt {
            segment,
            offset,
            next_good,
            ..
        } => {
            assert_eq!(*segment, 1);
            assert_eq!(*offset, offsets[2] as u64);
            // The next good record is the damaged group's sync marker.
            assert_eq!(*next_good, Some(end2 as u64));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(err.to_string().contains("--recover"), "{err}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "a refused open changes nothing"
    );
    let db = Db::open(
        dir.path(),
        StoreOptions {
            recover: true,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(present(&db), 5);
    assert_eq!(get(&db, "k2"), None);
    assert_eq!(get(&db, "k3"), Some(Value::Int(3)));
    assert_eq!(
        db.recovery().skipped,
        vec![(1, offsets[2] as u64, end2 as u64)]
    );
}

#[test]
fn a_zeroed_page_in_the_middle_is_refused_then_skipped_with_recover() {
    let dir = tempfile::tempdir().unwrap();
    let n = 200;
    {
        let db = Db::open(
            dir.path(),
            StoreOptions {
                segment_bytes: 64 << 20,
                ..options()
            },
        )
        .unwrap();
        for i in 0..n {
            db.commit(tarn_core::Txn::set(
                crate::support::p(&format!("k{i}")),
                Value::str(&"v".repeat(40)),
            ))
            .unwrap();
        }
    }
    let seg = dir.path().join("wal").join(wal::segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    assert!(bytes.len() > 3 * 4096);
    bytes[4096..8192].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        Db::open(dir.path(), options()),
        Err(StoreError::Corrupt { .. })
    ));
    let db = Db::open(
        dir.path(),
        StoreOptions {
            recover: true,
            ..options()
        },
    )
    .unwrap();
    let kept = present(&db);
    assert!(kept < n && kept > n - 80, "kept {kept}");
    let (_, from, to) = db.recovery().skipped[0];
    assert!(from <= 4096 && to >= 8192, "skipped {from}..{to}");
}

#[test]
fn a_missing_segment_is_refused_then_skipped_with_recover() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap(); // 4 KiB segments
        for i in 0..150 {
            db.commit(tarn_core::Txn::set(
                crate::support::p(&format!("k{i}")),
                Value::str(&"v".repeat(60)),
            ))
            .unwrap();
        }
    }
    let segments = wal::list_segments(&dir.path().join("wal")).unwrap();
    assert!(segments.len() >= 3);
    std::fs::remove_file(&segments[1].1).unwrap();
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::MissingSegment {
                expected: 2,
                found: 3
            }
        ),
        "{err}"
    );
    let db = Db::open(
        dir.path(),
        StoreOptions {
            recover: true,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(db.recovery().missing_segments, vec![2]);
    assert!(present(&db) < 150);
    assert_eq!(get(&db, "k0"), Some(Value::str(&"v".repeat(60))));
}

#[test]
fn a_torn_segment_creation_is_repaired() {
    let (dir, _seg, _) = wal_with(3);
    // A crash right after creating segment 2, before its header was whole.
    std::fs::write(dir.path().join("wal").join(wal::segment_name(2)), b"TARN").unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(present(&db), 3);
    set(&db, "after", 1);
    db.close().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(present(&db), 4);
}

#[test]
fn garbage_segments_never_panic() {
    // Random bytes after a valid header: open refuses or recovers, never
    // panics, and with recover always opens.
    let (dir, seg, _) = wal_with(3);
    let good = std::fs::read(&seg).unwrap();
    let mut x: u64 = 0x1234_5678;
    for round in 0..40 {
        let mut bytes = good.clone();
        for _ in 0..(1 + round % 7) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = wal::SEGMENT_HEADER_BYTES
                + (x as usize % (bytes.len() - wal::SEGMENT_HEADER_BYTES));
            bytes[i] = (x >> 32) as u8;
        }
        let copy = copy_of(dir.path());
        std::fs::write(copy.path().join("wal").join(wal::segment_name(1)), &bytes).unwrap();
        let _ = Db::open(copy.path(), options());
        let db = Db::open(
            copy.path(),
            StoreOptions {
                recover: true,
                ..options()
            },
        )
        .unwrap();
        assert!(present(&db) <= 3);
    }
}

/// Appends one group of commit records (and, if `marker`, its sync
/// marker) to segment 1 of `dir`, with times after everything in it.
fn append_group(seg: &std::path::Path, values: &[i64], marker: bool) -> Vec<usize> {
    let mut bytes = std::fs::read(seg).unwrap();
    let mut starts = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let time = tarn_core::Time {
            ms: u64::MAX >> 17,
            logical: i as u32,
            node: 1,
        };
        let changes = [tarn_core::Change {
            path: crate::support::p(&format!("g{v}")),
            value: Some(Value::Int(*v)),
        }];
        let mut payload = Vec::new();
        tarn_store::codec::encode_commit(&mut payload, time, None, &changes);
        starts.push(bytes.len());
        wal::frame(&mut bytes, &payload);
    }
    if marker {
        wal::push_sync_marker(&mut bytes);
    }
    std::fs::write(seg, &bytes).unwrap();
    starts
}

#[test]
fn a_torn_final_group_with_a_hole_is_cut_not_refused() {
    // Power loss during the last group's write: the disk kept the group's
    // later records but not an earlier one, and not the marker. None of it
    // was acknowledged; recovery keeps everything before the hole.
    let (dir, seg, _) = wal_with(3);
    let starts = append_group(&seg, &[10, 11, 12], false);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[starts[1] + 14] ^= 0xFF; // the hole
    std::fs::write(&seg, &bytes).unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(get(&db, "g10"), Some(Value::Int(10)));
    assert_eq!(get(&db, "g11"), None);
    assert_eq!(
        get(&db, "g12"),
        None,
        "no record past the hole of an unacknowledged group"
    );
    assert_eq!(db.recovery().truncated[0].1, starts[1] as u64);
}

#[test]
fn a_hole_in_a_group_that_was_synced_is_corruption() {
    // The same hole, but the group's marker is intact: the group was
    // synced and acknowledged, so the damage is real corruption.
    let (dir, seg, _) = wal_with(3);
    let starts = append_group(&seg, &[10, 11, 12], true);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[starts[1] + 14] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        Db::open(dir.path(), options()),
        Err(StoreError::Corrupt { .. })
    ));
    let db = Db::open(
        dir.path(),
        StoreOptions {
            recover: true,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(get(&db, "g12"), Some(Value::Int(12)));
}
