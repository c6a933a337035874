//! Paths and keys: the addresses of the tree.
//!
//! A [`Path`] is a list of [`Key`]s, written `a/b/c`. Keys and paths are
//! validated once, when they are made (parsing or [`Key::new`]), against
//! [`PathLimits`]; every violation is a typed [`PathError`]. After that a
//! `Path` is cheap to clone (one reference count) and to compare.
//!
//! This module knows nothing about values or time.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// Limits on keys and paths (DESIGN §1). Every limit has a default and is
/// configurable; the server maps its config keys onto these fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathLimits {
    /// Longest key in bytes of UTF-8 (config `limits.max_key_bytes`).
    pub max_key_bytes: usize,
    /// Most keys in one path (config `limits.max_path_depth`).
    pub max_depth: usize,
    /// Longest path in bytes, written with `/` separators
    /// (config `limits.max_path_bytes`).
    pub max_path_bytes: usize,
}

impl Default for PathLimits {
    fn default() -> Self {
        PathLimits {
            max_key_bytes: 256,
            max_depth: 32,
            max_path_bytes: 1024,
        }
    }
}

/// Why a key or path is not acceptable. `index` is the key's position in
/// the path (0 = first key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A key with no bytes, as in `a//b`.
    #[error("key {index} is empty (two slashes in a row, or an empty key)")]
    EmptyKey {
        /// Position of the key in the path.
        index: usize,
    },
    /// A key longer than [`PathLimits::max_key_bytes`].
    #[error("key {index} is {len} bytes long; the limit is {max} bytes")]
    KeyTooLong {
        /// Position of the key in the path.
        index: usize,
        /// Length of the key in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A key containing `/` (only possible when a key is made directly).
    #[error("key {index} contains '/', which separates keys")]
    SlashInKey {
        /// Position of the key in the path.
        index: usize,
    },
    /// A key containing a control character (U+0000..U+001F, U+007F..U+009F).
    #[error("key {index} contains control character U+{code:04X} at byte {byte}")]
    ControlChar {
        /// Position of the key in the path.
        index: usize,
        /// Byte offset of the character within the key.
        byte: usize,
        /// The character's code point.
        code: u32,
    },
    /// A path with more keys than [`PathLimits::max_depth`].
    #[error("path has {depth} keys; the limit is {max}")]
    TooDeep {
        /// Number of keys in the path.
        depth: usize,
        /// The configured limit.
        max: usize,
    },
    /// A path longer than [`PathLimits::max_path_bytes`].
    #[error("path is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the path in bytes, with separators.
        len: usize,
        /// The configured limit.
        max: usize,
    },
}

/// One key of a path: 1..=`max_key_bytes` bytes of UTF-8, no `/`, no
/// control characters. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Makes a key, checking it against `limits`.
    pub fn new(text: &str, limits: &PathLimits) -> Result<Key, PathError> {
        check_key(text, 0, limits)?;
        Ok(Key(Arc::from(text)))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

fn check_key(text: &str, index: usize, limits: &PathLimits) -> Result<(), PathError> {
    if text.is_empty() {
        return Err(PathError::EmptyKey { index });
    }
    if text.len() > limits.max_key_bytes {
        return Err(PathError::KeyTooLong {
            index,
            len: text.len(),
            max: limits.max_key_bytes,
        });
    }
    for (byte, c) in text.char_indices() {
        if c == '/' {
            return Err(PathError::SlashInKey { index });
        }
        if c.is_control() {
            return Err(PathError::ControlChar {
                index,
                byte,
                code: c as u32,
            });
        }
    }
    Ok(())
}

/// A path in the tree: a list of keys. The empty path is the root.
///
/// Invariant: every key is valid and the depth and length were within the
/// limits the path was made with. Paths order key by key (so every path
/// under a prefix sorts contiguously, right after the prefix itself).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Path {
    keys: Arc<[Key]>,
}

impl Path {
    /// The root: the empty path.
    pub fn root() -> Path {
        Path {
            keys: Arc::from(Vec::new()),
        }
    }

    /// Parses `a/b/c` with the default limits. One leading and one
    /// trailing `/` are ignored; the empty string and `/` are the root.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        Path::parse_with(text, &PathLimits::default())
    }

    /// Parses `a/b/c`, checking every key and the whole path against
    /// `limits`.
    pub fn parse_with(text: &str, limits: &PathLimits) -> Result<Path, PathError> {
        let trimmed = text.strip_prefix('/').unwrap_or(text);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Ok(Path::root());
        }
        if trimmed.len() > limits.max_path_bytes {
            return Err(PathError::TooLong {
                len: trimmed.len(),
                max: limits.max_path_bytes,
            });
        }
        let mut keys = Vec::new();
        for (index, part) in trimmed.split('/').enumerate() {
            if index >= limits.max_depth {
                return Err(PathError::TooDeep {
                    depth: trimmed.split('/').count(),
                    max: limits.max_depth,
                });
            }
            check_key(part, index, limits)?;
            keys.push(Key(Arc::from(part)));
        }
        Ok(Path {
            keys: Arc::from(keys),
        })
    }

    /// Builds a path from keys that are already valid, checking depth and
    /// length against `limits`.
    pub fn from_keys(keys: Vec<Key>, limits: &PathLimits) -> Result<Path, PathError> {
        let path = Path {
            keys: Arc::from(keys),
        };
        path.check(limits)?;
        Ok(path)
    }

    /// Checks depth, length and every key's length against `limits` (a
    /// path made under looser limits may not fit tighter ones). The
    /// characters need no second look: a `Key` cannot hold a `/`, a control
    /// character or nothing, whatever the limits.
    pub fn check(&self, limits: &PathLimits) -> Result<(), PathError> {
        if self.keys.len() > limits.max_depth {
            return Err(PathError::TooDeep {
                depth: self.keys.len(),
                max: limits.max_depth,
            });
        }
        let mut len = self.keys.len().saturating_sub(1);
        for (index, key) in self.keys.iter().enumerate() {
            let key_len = key.as_str().len();
            if key_len > limits.max_key_bytes {
                return Err(PathError::KeyTooLong {
                    index,
                    len: key_len,
                    max: limits.max_key_bytes,
                });
            }
            len += key_len;
        }
        if len > limits.max_path_bytes {
            return Err(PathError::TooLong {
                len,
                max: limits.max_path_bytes,
            });
        }
        Ok(())
    }

    /// The path extended by one key, checked against `limits`.
    pub fn child(&self, key: Key, limits: &PathLimits) -> Result<Path, PathError> {
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        keys.extend(self.keys.iter().cloned());
        keys.push(key);
        Path::from_keys(keys, limits)
    }

    /// The path extended by `rest`, checked against `limits`.
    pub fn join(&self, rest: &[Key], limits: &PathLimits) -> Result<Path, PathError> {
        if rest.is_empty() {
            return Ok(self.clone());
        }
        let mut keys = Vec::with_capacity(self.keys.len() + rest.len());
        keys.extend(self.keys.iter().cloned());
        keys.extend(rest.iter().cloned());
        Path::from_keys(keys, limits)
    }

    /// The path extended by a key of a node that already exists in a tree
    /// built from checked paths (so no limit can be exceeded).
    pub(crate) fn with_key(&self, key: Key) -> Path {
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        keys.extend(self.keys.iter().cloned());
        keys.push(key);
        Path {
            keys: Arc::from(keys),
        }
    }

    /// The first `depth` keys of this path. `depth` must be at most
    /// [`Path::depth`].
    pub fn prefix(&self, depth: usize) -> Path {
        debug_assert!(depth <= self.keys.len());
        if depth == self.keys.len() {
            return self.clone();
        }
        Path {
            keys: Arc::from(&self.keys[..depth]),
        }
    }

    /// The keys, root first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Number of keys (0 for the root).
    pub fn depth(&self) -> usize {
        self.keys.len()
    }

    /// True for the root.
    pub fn is_root(&self) -> bool {
        self.keys.is_empty()
    }

    /// The last key, or `None` for the root.
    pub fn last(&self) -> Option<&Key> {
        self.keys.last()
    }

    /// The path without its last key, or `None` for the root.
    pub fn parent(&self) -> Option<Path> {
        if self.keys.is_empty() {
            None
        } else {
            Some(self.prefix(self.keys.len() - 1))
        }
    }

    /// True if `self` equals `other` or lies under it.
    pub fn starts_with(&self, other: &Path) -> bool {
        self.keys.len() >= other.keys.len() && self.keys[..other.keys.len()] == other.keys[..]
    }

    /// True for paths whose first key starts with `$` (the system's).
    pub fn is_reserved(&self) -> bool {
        self.keys
            .first()
            .is_some_and(|k| k.as_str().starts_with('$'))
    }

    /// Length of the written form `a/b/c` in bytes.
    pub fn byte_len(&self) -> usize {
        let keys: usize = self.keys.iter().map(|k| k.as_str().len()).sum();
        keys + self.keys.len().saturating_sub(1)
    }
}

impl Ord for Path {
    fn cmp(&self, other: &Self) -> Ordering {
        self.keys[..].cmp(&other.keys[..])
    }
}

impl PartialOrd for Path {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(key.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let p = Path::parse("rooms/lobby/players").unwrap();
        assert_eq!(p.depth(), 3);
        assert_eq!(p.to_string(), "rooms/lobby/players");
        assert_eq!(Path::parse("/a/b/").unwrap(), Path::parse("a/b").unwrap());
        assert!(Path::parse("").unwrap().is_root());
        assert!(Path::parse("/").unwrap().is_root());
    }

    #[test]
    fn prefixes_sort_before_their_descendants() {
        let a = Path::parse("a").unwrap();
        let ab = Path::parse("a/b").unwrap();
        let a0 = Path::parse("a0").unwrap();
        let b = Path::parse("b").unwrap();
        assert!(a < ab && ab < a0 && a0 < b);
        assert!(ab.starts_with(&a) && !a0.starts_with(&a));
        assert_eq!(ab.parent().unwrap(), a);
    }
}
