//! Every key and path error, and the limits being configurable.

use tarn_core::{Key, Path, PathError, PathLimits};

#[test]
fn empty_key_is_an_error() {
    assert_eq!(Path::parse("a//b"), Err(PathError::EmptyKey { index: 1 }));
    assert_eq!(
        Key::new("", &PathLimits::default()),
        Err(PathError::EmptyKey { index: 0 })
    );
}

#[test]
fn long_key_is_an_error() {
    let ok = "k".repeat(256);
    assert!(Path::parse(&ok).is_ok());
    let long = format!("a/{}", "k".repeat(257));
    assert_eq!(
        Path::parse(&long),
        Err(PathError::KeyTooLong {
            index: 1,
            len: 257,
            max: 256
        })
    );
}

#[test]
fn multibyte_keys_are_measured_in_bytes() {
    // 86 three-byte characters = 258 bytes: over the limit though 86 chars.
    let key = "€".repeat(86);
    assert!(matches!(
        Path::parse(&key),
        Err(PathError::KeyTooLong { len: 258, .. })
    ));
    assert!(Path::parse("rooms/lobby/ü").is_ok());
}

#[test]
fn control_characters_are_errors() {
    assert_eq!(
        Path::parse("a/b\u{0}c"),
        Err(PathError::ControlChar {
            index: 1,
            byte: 1,
            code: 0
        })
    );
    assert!(matches!(
        Path::parse("a\nb"),
        Err(PathError::ControlChar { code: 10, .. })
    ));
    assert!(matches!(
        Path::parse("\u{7f}"),
        Err(PathError::ControlChar { code: 0x7f, .. })
    ));
    assert!(matches!(
        Path::parse("x\u{85}"),
        Err(PathError::ControlChar { code: 0x85, .. })
    ));
}

#[test]
fn slash_in_a_made_key_is_an_error() {
    assert_eq!(
        Key::new("a/b", &PathLimits::default()),
        Err(PathError::SlashInKey { index: 0 })
    );
}

#[test]
fn depth_limit() {
    let ok = ["k"; 32].join("/");
    assert_eq!(Path::parse(&ok).unwrap().depth(), 32);
    let deep = ["k"; 33].join("/");
    assert_eq!(
        Path::parse(&deep),
        Err(PathError::TooDeep { depth: 33, max: 32 })
    );
}

#[test]
fn path_length_limit() {
    // 5 keys of 200 bytes + 4 slashes = 1004 bytes: fits; 6 keys do not.
    let key = "k".repeat(200);
    let ok = [key.as_str(); 5].join("/");
    assert!(Path::parse(&ok).is_ok());
    let long = [key.as_str(); 6].join("/");
    assert_eq!(
        Path::parse(&long),
        Err(PathError::TooLong {
            len: 1205,
            max: 1024
        })
    );
}

#[test]
fn limits_are_configurable_and_rechecked() {
    let tight = PathLimits {
        max_key_bytes: 3,
        max_depth: 2,
        max_path_bytes: 7,
    };
    assert!(Path::parse_with("abc/def", &tight).is_ok());
    assert!(matches!(
        Path::parse_with("abcd", &tight),
        Err(PathError::KeyTooLong { max: 3, .. })
    ));
    assert!(matches!(
        Path::parse_with("a/b/c", &tight),
        Err(PathError::TooDeep { max: 2, .. })
    ));
    // A path made under the defaults does not fit the tight limits.
    let loose = Path::parse("abcd/e").unwrap();
    assert!(loose.check(&tight).is_err());
    let k = Key::new("x", &tight).unwrap();
    assert!(matches!(
        Path::parse_with("abc/def", &tight)
            .unwrap()
            .child(k, &tight),
        Err(PathError::TooDeep { depth: 3, max: 2 })
    ));
}

#[test]
fn reserved_paths() {
    assert!(Path::parse("$sys/timers/t1").unwrap().is_reserved());
    assert!(Path::parse("$presence/alice").unwrap().is_reserved());
    assert!(!Path::parse("users/$alice").unwrap().is_reserved());
}
