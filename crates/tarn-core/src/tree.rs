//! Values as trees: reading under a path and applying writes to a value
//! (tarn-client's cache and predictions, a server function's own writes).
//! Keys are path keys; an object with no children is absent (`Null`), as
//! in the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Value;

/// The value at `rel` under `v` (`Null` if absent).
pub fn get<'a>(v: &'a Value, rel: &[&str]) -> &'a Value {
    let mut at = v;
    for key in rel {
        match at {
            Value::Object(children) => match children.get(*key) {
                Some(child) => at = child,
                None => return &Value::Null,
            },
            _ => return &Value::Null,
        }
    }
    at
}

/// Sets `rel` under `v` to `new` (`Null` deletes), creating objects on the
/// way (replacing leaves there) and pruning objects left empty.
pub fn set(v: &mut Value, rel: &[&str], new: Value) {
    let Some((first, rest)) = rel.split_first() else {
        *v = normalize(new);
        return;
    };
    if !matches!(v, Value::Object(_)) {
        if new.is_absent() {
            return;
        }
        *v = Value::Object(BTreeMap::new());
    }
    if let Value::Object(children) = v {
        let key: Arc<str> = Arc::from(*first);
        let child = children.entry(key.clone()).or_insert(Value::Null);
        set(child, rest, new);
        if child.is_absent() {
            children.remove(&key);
        }
        if children.is_empty() {
            *v = Value::Null;
        }
    }
}

/// Merges the children of `obj` into `rel` under `v`.
pub fn patch(v: &mut Value, rel: &[&str], obj: &Value) {
    if let Value::Object(children) = obj {
        for (k, child) in children {
            let mut at: Vec<&str> = rel.to_vec();
            at.push(k);
            set(v, &at, child.clone());
        }
    }
}

/// Drops empty objects (absent) anywhere in `v`.
fn normalize(v: Value) -> Value {
    match v {
        Value::Object(children) => {
            let kept: BTreeMap<Arc<str>, Value> = children
                .into_iter()
                .map(|(k, c)| (k, normalize(c)))
                .filter(|(_, c)| !c.is_absent())
                .collect();
            if kept.is_empty() {
                Value::Null
            } else {
                Value::Object(kept)
            }
        }
        other => other,
    }
}

/// The keys of a path (`""` and `/` are the root).
pub fn keys(path: &str) -> Vec<&str> {
    path.split('/').filter(|k| !k.is_empty()).collect()
}

/// `Some(rest)` if `path` is `prefix` or under it.
pub fn strip<'a, 'k>(path: &'a [&'k str], prefix: &[&str]) -> Option<&'a [&'k str]> {
    let n = prefix.len();
    (path.len() >= n && path[..n].iter().zip(prefix).all(|(a, b)| a == b)).then(|| &path[n..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(pairs: &[(&str, Value)]) -> Value {
        pairs.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    #[test]
    fn set_creates_replaces_and_prunes() {
        let mut v = Value::Null;
        set(&mut v, &["a", "b"], Value::Int(1));
        assert_eq!(v, obj(&[("a", obj(&[("b", Value::Int(1))]))]));
        // Writing under a leaf replaces it.
        set(&mut v, &["a", "b", "c"], Value::Int(2));
        assert_eq!(*get(&v, &["a", "b", "c"]), Value::Int(2));
        // Deleting the only leaf leaves nothing.
        set(&mut v, &["a", "b", "c"], Value::Null);
        assert_eq!(v, Value::Null);
        set(&mut v, &[], obj(&[("x", obj(&[]))]));
        assert_eq!(v, Value::Null, "empty objects are absent");
    }

    #[test]
    fn patch_merges_children() {
        let mut v = obj(&[("a", Value::Int(1)), ("b", Value::Int(2))]);
        patch(
            &mut v,
            &[],
            &obj(&[("b", Value::Null), ("c", Value::Int(3))]),
        );
        assert_eq!(v, obj(&[("a", Value::Int(1)), ("c", Value::Int(3))]));
        assert_eq!(keys("/a//b/"), vec!["a", "b"]);
    }
}
