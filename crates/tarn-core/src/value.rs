//! JSON values, and how they map onto the tree.
//!
//! A [`Value`] is any JSON value. In the tree, objects are not stored: an
//! object written at a path is *flattened* into leaves at the paths below
//! it ([`Value::flatten_into`]), and reading a path with descendants
//! assembles the object again. Arrays, strings, numbers and booleans are
//! leaves; `null` means absent; an empty object is absent.
//!
//! This module knows nothing about JSON text or any other encoding: the
//! wire crate converts to and from [`Value`] at the edge.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::path::{Key, Path, PathError, PathLimits};

/// A JSON value. Cheap to clone for strings and arrays (shared).
///
/// Invariant (checked by [`Value::check`], not by construction): floats
/// are finite. Object keys are arbitrary strings; they only have to be
/// valid [`Key`]s where the object is flattened into the tree (an object
/// nested in an array is part of a leaf and keeps any key).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// JSON `null`: absent.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number that is an integer in the i64 range.
    Int(i64),
    /// Any other number; must be finite.
    Float(f64),
    /// A string.
    String(Arc<str>),
    /// An array: always one leaf, never split into paths.
    Array(Arc<[Value]>),
    /// An object: split into paths when written into the tree.
    Object(BTreeMap<Arc<str>, Value>),
}

/// Limits on values (DESIGN §10). Every limit has a default and a config
/// key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueLimits {
    /// Largest leaf, measured as its JSON text (config
    /// `limits.max_value_bytes`).
    pub max_value_bytes: usize,
    /// Deepest nesting of arrays and objects inside one value (config
    /// `limits.max_value_nesting`).
    pub max_nesting: usize,
}

impl Default for ValueLimits {
    fn default() -> Self {
        ValueLimits {
            max_value_bytes: 1 << 20,
            max_nesting: 64,
        }
    }
}

/// Why a value is not acceptable.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// A NaN or infinite float: JSON has no such number.
    #[error(
        "value at '{path}' holds a number that is not finite ({value}); JSON numbers must be finite"
    )]
    NonFinite {
        /// The leaf that holds the number.
        path: Path,
        /// The number, as Rust prints it.
        value: String,
    },
    /// A leaf larger than [`ValueLimits::max_value_bytes`].
    #[error("value at '{path}' is {bytes} bytes as JSON; the limit is {max} bytes")]
    TooLarge {
        /// The leaf's path.
        path: Path,
        /// Its size as JSON text.
        bytes: usize,
        /// The configured limit.
        max: usize,
    },
    /// Arrays and objects nested deeper than [`ValueLimits::max_nesting`].
    #[error("value at '{path}' nests arrays/objects deeper than {max} levels")]
    TooDeep {
        /// The path the value was written at.
        path: Path,
        /// The configured limit.
        max: usize,
    },
    /// An object key that cannot be a path key, or a path made too deep or
    /// too long by the object's nesting.
    #[error("object written at '{path}' has key {key:?} that cannot be a path: {source}")]
    BadKey {
        /// The path the object was written at.
        path: Path,
        /// The offending key.
        key: String,
        /// What is wrong with it.
        source: PathError,
    },
}

impl Value {
    /// A string value.
    pub fn str(s: &str) -> Value {
        Value::String(Arc::from(s))
    }

    /// True for `null` and for objects with no leaves (both mean absent in
    /// the tree).
    pub fn is_absent(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Object(map) => map.values().all(Value::is_absent),
            _ => false,
        }
    }

    /// True for values stored as one leaf (everything but objects and
    /// null).
    pub fn is_leaf(&self) -> bool {
        !matches!(self, Value::Null | Value::Object(_))
    }

    /// Size of the value written as compact JSON text, in bytes (strings
    /// are counted unescaped plus quotes: close enough for a limit, and
    /// independent of any encoder).
    pub fn json_len(&self) -> usize {
        match self {
            Value::Null => 4,
            Value::Bool(true) => 4,
            Value::Bool(false) => 5,
            Value::Int(i) => decimal_len(*i),
            Value::Float(_) => 24,
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                2 + items.iter().map(Value::json_len).sum::<usize>() + items.len().saturating_sub(1)
            }
            Value::Object(map) => {
                2 + map
                    .iter()
                    .map(|(k, v)| k.len() + 3 + v.json_len())
                    .sum::<usize>()
                    + map.len().saturating_sub(1)
            }
        }
    }

    /// Checks a leaf value against `limits`: finite numbers, nesting depth,
    /// size. `path` names the leaf in errors.
    pub fn check_leaf(&self, path: &Path, limits: &ValueLimits) -> Result<(), ValueError> {
        check_nested(self, path, 0, limits)?;
        let bytes = self.json_len();
        if bytes > limits.max_value_bytes {
            return Err(ValueError::TooLarge {
                path: path.clone(),
                bytes,
                max: limits.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Flattens the value written at `at` into the leaves it stores, as
    /// `(path, leaf)` pairs, appending to `out`. `null` and empty objects
    /// add nothing. Every leaf is checked with [`Value::check_leaf`] and
    /// every object key becomes a checked path key.
    pub fn flatten_into(
        &self,
        at: &Path,
        paths: &PathLimits,
        values: &ValueLimits,
        out: &mut Vec<(Path, Value)>,
    ) -> Result<(), ValueError> {
        self.flatten_rec(at, at, 0, paths, values, out)
    }

    fn flatten_rec(
        &self,
        root: &Path,
        at: &Path,
        nesting: usize,
        paths: &PathLimits,
        values: &ValueLimits,
        out: &mut Vec<(Path, Value)>,
    ) -> Result<(), ValueError> {
        match self {
            Value::Null => Ok(()),
            Value::Object(map) => {
                if nesting >= values.max_nesting {
                    return Err(ValueError::TooDeep {
                        path: root.clone(),
                        max: values.max_nesting,
                    });
                }
                for (k, v) in map {
                    if matches!(v, Value::Null) {
                        continue;
                    }
                    let bad_key = |source| ValueError::BadKey {
                        path: root.clone(),
                        key: k.to_string(),
                        source,
                    };
                    let key = Key::new(k, paths).map_err(bad_key)?;
                    let child = at.child(key, paths).map_err(bad_key)?;
                    v.flatten_rec(root, &child, nesting + 1, paths, values, out)?;
                }
                Ok(())
            }
            leaf => {
                leaf.check_leaf(at, values)?;
                out.push((at.clone(), leaf.clone()));
                Ok(())
            }
        }
    }
}

fn check_nested(
    value: &Value,
    path: &Path,
    nesting: usize,
    limits: &ValueLimits,
) -> Result<(), ValueError> {
    match value {
        Value::Float(f) if !f.is_finite() => Err(ValueError::NonFinite {
            path: path.clone(),
            value: f.to_string(),
        }),
        Value::Array(_) | Value::Object(_) if nesting >= limits.max_nesting => {
            Err(ValueError::TooDeep {
                path: path.clone(),
                max: limits.max_nesting,
            })
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_nested(v, path, nesting + 1, limits)),
        Value::Object(map) => map
            .values()
            .try_for_each(|v| check_nested(v, path, nesting + 1, limits)),
        _ => Ok(()),
    }
}

fn decimal_len(i: i64) -> usize {
    let sign = usize::from(i < 0);
    let mut n = i.unsigned_abs();
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    sign + digits
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::str(s)
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Value {
        Value::Array(Arc::from(items))
    }
}

impl<K: AsRef<str>> FromIterator<(K, Value)> for Value {
    /// Builds an object; a later duplicate key replaces an earlier one, as
    /// in JSON parsers.
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Value {
        Value::Object(
            iter.into_iter()
                .map(|(k, v)| (Arc::from(k.as_ref()), v))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_matches_compact_json_for_plain_values() {
        assert_eq!(Value::Int(-120).json_len(), "-120".len());
        assert_eq!(Value::Int(0).json_len(), 1);
        assert_eq!(Value::str("ab").json_len(), "\"ab\"".len());
        let v: Value = [("a", Value::Int(1)), ("bc", Value::Bool(true))]
            .into_iter()
            .collect();
        assert_eq!(v.json_len(), r#"{"a":1,"bc":true}"#.len());
        let arr = Value::from(vec![Value::Int(1), Value::Null]);
        assert_eq!(arr.json_len(), "[1,null]".len());
    }

    #[test]
    fn absent_values() {
        assert!(Value::Null.is_absent());
        let empty: Value = std::iter::empty::<(&str, Value)>().collect();
        assert!(empty.is_absent());
        let nested: Value = [("a", empty.clone())].into_iter().collect();
        assert!(nested.is_absent());
        assert!(!Value::Int(0).is_absent());
    }
}
