//! Format version 1, frozen: a data directory written by this format
//! version is committed under tests/fixtures/v1 (an archive, a manifest
//! and a WAL tail) and must keep loading with the same contents. Run with
//! `TARN_WRITE_FIXTURES=1` only when deliberately creating a new format
//! version's fixture.

use std::path::PathBuf;

use tarn_core::{Path, Txn, Value, Write};
use tarn_store::{Db, StoreOptions};

use crate::support::{get, options, p};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn expected() -> Vec<(&'static str, Value)> {
    vec![
        ("users/alice/name", Value::str("Alice")),
        ("users/bob/age", Value::Int(42)),
        (
            "arr",
            Value::from(vec![
                Value::Int(1),
                Value::str("two"),
                Value::Null,
                [("k", Value::Bool(true))].into_iter().collect(),
            ]),
        ),
        ("float", Value::Float(1.5)),
        ("neg", Value::Int(-7)),
        ("tail/after/archive", Value::str("in the WAL")),
    ]
}

fn write_fixture() {
    let dir = fixture();
    let _ = std::fs::remove_dir_all(&dir);
    let db = Db::open(
        &dir,
        StoreOptions {
            segment_bytes: 256,
            ..options()
        },
    )
    .unwrap();
    for (path, value) in expected()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("tail"))
    {
        db.commit(Txn::set(p(path), value)).unwrap();
    }
    db.commit(Txn::set(p("gone"), Value::Int(1))).unwrap();
    db.commit(Txn::new(vec![], vec![Write::Delete { path: p("gone") }]))
        .unwrap();
    db.commit(Txn::set(p("pad"), Value::str(&"x".repeat(300))))
        .unwrap();
    db.archive_now().unwrap();
    db.commit(Txn::set(p("tail/after/archive"), Value::str("in the WAL")))
        .unwrap();
    db.commit(Txn::new(vec![], vec![Write::Delete { path: p("pad") }]))
        .unwrap();
    db.close().unwrap();
}

#[test]
fn format_v1_fixture_loads() {
    if std::env::var_os("TARN_WRITE_FIXTURES").is_some() {
        write_fixture();
    }
    assert!(
        fixture().join("TARN").exists(),
        "missing fixture {}",
        fixture().display()
    );
    // Open a copy: opening may clean up (it never does for a clean dir,
    // but the committed fixture must stay byte-for-byte as it is).
    let copy = tempfile::tempdir().unwrap();
    let target = copy.path().join("v1");
    tarn_store::restore(&fixture(), &target).unwrap();
    let db = Db::open(&target, options()).unwrap();
    assert!(
        db.recovery().archived_versions > 0,
        "the fixture has an archive"
    );
    assert!(
        db.recovery().replayed_commits > 0,
        "the fixture has a WAL tail"
    );
    for (path, value) in expected() {
        assert_eq!(get(&db, path), Some(value), "{path}");
    }
    assert_eq!(get(&db, "gone"), None);
    assert_eq!(get(&db, "pad"), None);
    let keys: Vec<String> = db
        .keys(&Path::root())
        .unwrap()
        .keys
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys, ["arr", "float", "neg", "tail", "users"]);
    assert!(db.recovery().truncated.is_empty() && db.recovery().skipped.is_empty());
}
