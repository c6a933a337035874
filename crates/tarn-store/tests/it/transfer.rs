//! JSON export and import, backup and restore.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tarn_core::{Path, Txn, Value};
use tarn_store::{Db, ImportMode, StoreError, export_json, import_json};

use crate::support::{get, options, p, set};

fn tree(db: &Db) -> Option<Value> {
    db.get(&Path::root()).unwrap().value
}

fn to_json(db: &Db, at: &str) -> serde_json::Value {
    let mut out = Vec::new();
    export_json(db, &p(at), &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn export_writes_what_a_read_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(to_json(&db, ""), serde_json::Value::Null);
    set(&db, "rooms/lobby/players/alice/x", 1);
    set(&db, "rooms/lobby/players/bob/x", 2);
    set(&db, "rooms/lobby/topic", 3);
    set(&db, "rooms/zeta", 4);
    db.commit(Txn::set(
        p("users/u\"1"),
        Value::from(vec![Value::str("a\nb"), Value::Float(1.5)]),
    ))
    .unwrap();
    let json = to_json(&db, "");
    assert_eq!(
        json,
        serde_json::json!({
            "rooms": {"lobby": {"players": {"alice": {"x": 1}, "bob": {"x": 2}}, "topic": 3}, "zeta": 4},
            "users": {"u\"1": ["a\nb", 1.5]}
        })
    );
    assert_eq!(to_json(&db, "rooms/lobby/topic"), serde_json::json!(3));
    assert_eq!(
        to_json(&db, "rooms/lobby/players"),
        serde_json::json!({"alice": {"x": 1}, "bob": {"x": 2}})
    );
    assert_eq!(to_json(&db, "nothing/here"), serde_json::Value::Null);
}

#[test]
fn import_round_trips_an_export_in_batches() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Db::open(src_dir.path(), options()).unwrap();
    let n = 2_500;
    let big: Value = (0..n)
        .map(|i| {
            (
                format!("u{i}"),
                [
                    ("score", Value::Int(i)),
                    ("tags", Value::from(vec![Value::str("t")])),
                ]
                .into_iter()
                .collect::<Value>(),
            )
        })
        .collect();
    src.commit(Txn::set(p("users"), big)).unwrap();
    set(&src, "meta/version", 7);
    let mut exported = Vec::new();
    let stats = export_json(&src, &Path::root(), &mut exported).unwrap();
    assert_eq!(stats.leaves, 2 * n as u64 + 1);

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Db::open(dst_dir.path(), options()).unwrap();
    set(&dst, "old/stuff", 1);
    let stats = import_json(
        &dst,
        &Path::root(),
        exported.as_slice(),
        ImportMode::Replace,
        1000,
    )
    .unwrap();
    assert_eq!(stats.leaves, 2 * n as u64 + 1);
    assert_eq!(
        stats.commits,
        1 + 6,
        "one delete, then batches of 1000 leaves"
    );
    assert_eq!(tree(&dst), tree(&src));
    assert_eq!(get(&dst, "old/stuff"), None);
}

#[test]
fn import_merges_under_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    set(&db, "cfg/keep", 1);
    let input = br#"{"a": {"b": 2, "c": null, "d": {}}, "n": 1e3, "big": 18446744073709551615}"#;
    import_json(&db, &p("cfg"), &input[..], ImportMode::Merge, 10).unwrap();
    assert_eq!(get(&db, "cfg/keep"), Some(Value::Int(1)));
    assert_eq!(get(&db, "cfg/a/b"), Some(Value::Int(2)));
    assert_eq!(get(&db, "cfg/n"), Some(Value::Float(1000.0)));
    assert_eq!(
        get(&db, "cfg/big"),
        Some(Value::Float(18446744073709551615.0))
    );
    assert_eq!(db.keys(&p("cfg/a")).unwrap().keys.len(), 1);
}

#[test]
fn bad_imports_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    for (input, expect) in [
        (&br#"{"a/b": 1}"#[..], "cannot be a path"),
        (br#"{"a": 1"#, "EOF"),
        (br#"{"a": 1} trailing"#, "trailing"),
        (br#"{"": 1}"#, "cannot be a path"),
    ] {
        let err = import_json(&db, &Path::root(), input, ImportMode::Merge, 10).unwrap_err();
        assert!(matches!(err, StoreError::Import(_)), "{err}");
        assert!(err.to_string().contains(expect), "{err}");
    }
    // Nesting beyond serde_json's recursion limit is an error, not a crash.
    let deep = "[".repeat(10_000);
    assert!(import_json(&db, &Path::root(), deep.as_bytes(), ImportMode::Merge, 10).is_err());
}

#[test]
fn a_backup_taken_during_writes_restores_one_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), options()).unwrap());
    for i in 0..500 {
        set(&db, &format!("k/{i}"), i);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                db.commit(Txn::set(p(&format!("k/{}", i % 500)), Value::Int(-i)))
                    .unwrap();
                db.commit(Txn::set(p(&format!("new/{i}")), Value::Int(i)))
                    .unwrap();
                i += 1;
            }
        })
    };
    crate::support::wait_for("writes during the backup", || db.stats().commits > 600);
    let backup_dir = tempfile::tempdir().unwrap();
    let target = backup_dir.path().join("b");
    let info = tarn_store::backup(&db, &target).unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // The backup equals the source as of the backup's time (retention is
    // forever in the test options, so the source can answer for it).
    let expected = db.get_at(&Path::root(), info.time).unwrap().value;
    let restored_dir = backup_dir.path().join("restored");
    tarn_store::restore(&target, &restored_dir).unwrap();
    let restored = Db::open(&restored_dir, options()).unwrap();
    assert_eq!(tree(&restored), expected);
    // The restored database carries on, its clock past the backup.
    assert!(set(&restored, "after", 1).time > info.time);
    // Restoring over a non-empty directory is refused.
    assert!(tarn_store::restore(&target, &restored_dir).is_err());
    // And a directory that is not a data dir is not a backup.
    assert!(matches!(
        tarn_store::restore(backup_dir.path(), &backup_dir.path().join("x")),
        Err(StoreError::NotADataDir { .. })
    ));
}
