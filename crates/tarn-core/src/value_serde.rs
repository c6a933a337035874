//! serde support for [`Value`] (feature `serde`): a value (de)serializes
//! as plain data in any self-describing format. tarn-core itself knows no
//! format; the wire crate and the JSON export choose theirs.
//!
//! Integers that fit i64 stay integers; larger unsigned integers become
//! floats (as JSON parsers do). Nesting is bounded while decoding
//! ([`MAX_DECODE_NESTING`]), so no input can overflow the stack; the
//! configurable limit (`ValueLimits::max_nesting`) is checked afterwards.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::value::Value;

/// Deepest nesting of arrays and objects any decoder accepts.
pub const MAX_DECODE_NESTING: usize = 128;

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(t) => s.serialize_str(t),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(&**k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor::new())
    }
}

/// Builds a [`Value`] from any serde data, bounding nesting. Public so a
/// streaming reader can build the values it keeps whole (arrays).
pub struct ValueVisitor {
    depth: usize,
}

impl ValueVisitor {
    /// A visitor at nesting depth 0.
    pub fn new() -> ValueVisitor {
        ValueVisitor { depth: 0 }
    }
}

impl Default for ValueVisitor {
    fn default() -> Self {
        ValueVisitor::new()
    }
}

/// A nested value, one level deeper.
struct Nested(usize);

impl<'de> DeserializeSeed<'de> for Nested {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0 > MAX_DECODE_NESTING {
            return Err(de::Error::custom(format!(
                "value nests arrays/objects deeper than {MAX_DECODE_NESTING} levels"
            )));
        }
        d.deserialize_any(ValueVisitor { depth: self.0 })
    }
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        // MessagePack bin: accept UTF-8 only, as JSON has no bytes.
        std::str::from_utf8(v)
            .map(Value::str)
            .map_err(|_| E::custom("binary data is not UTF-8 text; send strings"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(Nested(self.depth + 1))? {
            items.push(v);
        }
        Ok(Value::Array(Arc::from(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Nested(self.depth + 1))?;
            out.insert(Arc::from(k.as_str()), v);
        }
        Ok(Value::Object(out))
    }
}
