//! The compact binary encoding of committed transactions and versions,
//! shared by WAL records and archive files.
//!
//! Everything read back is input from disk: every decode returns a typed
//! [`DecodeError`] (never panics), checks lengths against the bytes that
//! are actually there before allocating, and bounds nesting.
//!
//! Layout of a commit payload (format version 1, little endian):
//! ```text
//! u8  version (= 1)
//! u8  kind (1 = commit)
//! u64 time.ms  u32 time.logical  u32 time.node
//! u8  flags (bit 0: a transaction id follows)
//! [u64 client  u64 seq]
//! var change count, then per change: path, value-or-absent
//! ```
//! A path is `var key count` then per key `var len, bytes`. A value is a
//! tag byte: 0 absent (deleted), 1 null, 2 false, 3 true, 4 int (zigzag
//! varint), 5 float (f64), 6 string (`var len, bytes`), 7 array (`var n`,
//! values), 8 object (`var n`, then `var len, key bytes, value`).

use std::collections::BTreeMap;
use std::sync::Arc;

use tarn_core::{Change, ClientId, Key, Path, PathLimits, Time, TxnId, Value};

/// Payload format version written by this build.
pub const PAYLOAD_VERSION: u8 = 1;
const KIND_COMMIT: u8 = 1;
/// A sync marker: written after each group of commits, in the same write
/// that the group's fsync covers (segment format 2).
const KIND_SYNC: u8 = 2;

/// The payload of a sync marker.
pub const SYNC_MARKER: [u8; 2] = [PAYLOAD_VERSION, KIND_SYNC];
/// Deepest array/object nesting accepted in a stored value.
const MAX_NESTING: usize = 128;

/// A committed transaction as logged.
#[derive(Clone, Debug, PartialEq)]
pub struct CommitRecord {
    /// Its commit time.
    pub time: Time,
    /// Its id, if it carried one.
    pub id: Option<TxnId>,
    /// Its leaf changes.
    pub changes: Vec<Change>,
}

/// Why bytes from disk could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end in the middle of an item.
    #[error("unexpected end of data at byte {at}")]
    Truncated {
        /// Offset within the payload.
        at: usize,
    },
    /// A payload version this build does not know.
    #[error("payload version {found} is newer than this build reads ({max}); upgrade tarn")]
    NewerVersion {
        /// The version found.
        found: u8,
        /// The newest this build reads.
        max: u8,
    },
    /// An unknown tag or kind byte.
    #[error("unknown {what} byte {byte} at byte {at}")]
    BadTag {
        /// What was being read.
        what: &'static str,
        /// The byte found.
        byte: u8,
        /// Offset within the payload.
        at: usize,
    },
    /// A varint longer than 10 bytes or over 64 bits.
    #[error("malformed varint at byte {at}")]
    BadVarint {
        /// Offset within the payload.
        at: usize,
    },
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 at byte {at}")]
    BadUtf8 {
        /// Offset within the payload.
        at: usize,
    },
    /// A key or path that breaks the path rules.
    #[error("invalid path at byte {at}: {reason}")]
    BadPath {
        /// Offset within the payload.
        at: usize,
        /// What is wrong.
        reason: String,
    },
    /// Values nested deeper than the decoder accepts.
    #[error("value nested deeper than {MAX_NESTING} levels at byte {at}")]
    TooDeep {
        /// Offset within the payload.
        at: usize,
    },
    /// A float that is NaN or infinite.
    #[error("non-finite number at byte {at}")]
    NonFinite {
        /// Offset within the payload.
        at: usize,
    },
    /// Not a commit but a sync marker (callers that read logs handle it;
    /// see `wal::RecordRead::Marker`).
    #[error("a sync marker, not a commit")]
    SyncMarker,
    /// Bytes left over after the item.
    #[error("{extra} unexpected bytes after the record")]
    Trailing {
        /// How many.
        extra: usize,
    },
}

// ---------------------------------------------------------------------
// Encoding.

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a time.
pub fn put_time(out: &mut Vec<u8>, t: Time) {
    out.extend_from_slice(&t.ms.to_le_bytes());
    out.extend_from_slice(&t.logical.to_le_bytes());
    out.extend_from_slice(&t.node.to_le_bytes());
}

/// Appends a path.
pub fn put_path(out: &mut Vec<u8>, path: &Path) {
    put_var(out, path.depth() as u64);
    for key in path.keys() {
        put_bytes(out, key.as_str().as_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_var(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends a value, or the "absent" tag for `None`.
pub fn put_value(out: &mut Vec<u8>, value: Option<&Value>) {
    let Some(value) = value else {
        out.push(0);
        return;
    };
    match value {
        Value::Null => out.push(1),
        Value::Bool(false) => out.push(2),
        Value::Bool(true) => out.push(3),
        Value::Int(i) => {
            out.push(4);
            put_var(out, ((*i << 1) ^ (*i >> 63)) as u64);
        }
        Value::Float(f) => {
            out.push(5);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => {
            out.push(6);
            put_bytes(out, s.as_bytes());
        }
        Value::Array(items) => {
            out.push(7);
            put_var(out, items.len() as u64);
            for item in items.iter() {
                put_value(out, Some(item));
            }
        }
        Value::Object(map) => {
            out.push(8);
            put_var(out, map.len() as u64);
            for (k, v) in map {
                put_bytes(out, k.as_bytes());
                put_value(out, Some(v));
            }
        }
    }
}

/// Appends the payload of a commit record.
pub fn encode_commit(out: &mut Vec<u8>, time: Time, id: Option<TxnId>, changes: &[Change]) {
    out.push(PAYLOAD_VERSION);
    out.push(KIND_COMMIT);
    put_time(out, time);
    match id {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(&id.client.0.to_le_bytes());
            out.extend_from_slice(&id.seq.to_le_bytes());
        }
        None => out.push(0),
    }
    put_var(out, changes.len() as u64);
    for change in changes {
        put_path(out, &change.path);
        put_value(out, change.value.as_ref());
    }
}

// ---------------------------------------------------------------------
// Decoding.

/// A cursor over bytes from disk.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: PathLimits,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; paths are checked against the default limits
    /// widened to what any configuration may have written.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            // Accept what any configuration could have stored; the rules
            // (no '/', no control characters, not empty) always hold.
            limits: PathLimits {
                max_key_bytes: usize::MAX,
                max_depth: usize::MAX,
                max_path_bytes: usize::MAX,
            },
        }
    }

    /// Current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing { extra }),
        }
    }

    /// Reads `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { at: self.pos });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads a varint.
    pub fn var(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::BadVarint { at });
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint { at })
    }

    /// Reads a count that must fit in the remaining bytes (each item takes
    /// at least one byte), so a damaged count cannot make us allocate.
    pub fn count(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.var()?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::Truncated { at });
        }
        Ok(n as usize)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.count()?;
        let at = self.pos;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::BadUtf8 { at })
    }

    /// Reads a time.
    pub fn time(&mut self) -> Result<Time, DecodeError> {
        Ok(Time {
            ms: self.u64()?,
            logical: self.u32()?,
            node: self.u32()?,
        })
    }

    /// Reads a path, checking every key.
    pub fn path(&mut self) -> Result<Path, DecodeError> {
        let n = self.count()?;
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.pos;
            let text = self.str()?;
            let key = Key::new(text, &self.limits).map_err(|e| DecodeError::BadPath {
                at,
                reason: e.to_string(),
            })?;
            keys.push(key);
        }
        Path::from_keys(keys, &self.limits).map_err(|e| DecodeError::BadPath {
            at: self.pos,
            reason: e.to_string(),
        })
    }

    /// Reads a value or the absent tag.
    pub fn value(&mut self) -> Result<Option<Value>, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(None),
            tag => self.value_tagged(tag, at, 0).map(Some),
        }
    }

    fn value_tagged(&mut self, tag: u8, at: usize, nesting: usize) -> Result<Value, DecodeError> {
        Ok(match tag {
            1 => Value::Null,
            2 => Value::Bool(false),
            3 => Value::Bool(true),
            4 => {
                let z = self.var()?;
                Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            5 => {
                let f = f64::from_bits(self.u64()?);
                if !f.is_finite() {
                    return Err(DecodeError::NonFinite { at });
                }
                Value::Float(f)
            }
            6 => Value::String(Arc::from(self.str()?)),
            7 | 8 if nesting >= MAX_NESTING => return Err(DecodeError::TooDeep { at }),
            7 => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let at = self.pos;
                    let tag = self.u8()?;
                    items.push(self.value_tagged(tag, at, nesting + 1)?);
                }
                Value::Array(Arc::from(items))
            }
            8 => {
                let n = self.count()?;
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let key = Arc::from(self.str()?);
                    let at = self.pos;
                    let tag = self.u8()?;
                    map.insert(key, self.value_tagged(tag, at, nesting + 1)?);
                }
                Value::Object(map)
            }
            byte => {
                return Err(DecodeError::BadTag {
                    what: "value tag",
                    byte,
                    at,
                });
            }
        })
    }
}

/// Recently decoded paths by their encoded bytes, so replaying a log
/// that writes the same paths again and again allocates each path once.
/// Bounded: cleared when full.
#[derive(Debug, Default)]
pub struct PathCache {
    /// Fx hashing: these keys come from our own log, not from clients.
    map: rustc_hash::FxHashMap<Box<[u8]>, Path>,
}

impl PathCache {
    /// Most paths kept.
    const MAX: usize = 1 << 18;
}

impl Reader<'_> {
    /// Reads a path, reusing `cache`'s copy when these bytes were seen.
    pub fn path_cached(&mut self, cache: &mut PathCache) -> Result<Path, DecodeError> {
        let start = self.pos;
        let path = {
            // Measure the encoded path without building it.
            let n = self.count()?;
            for _ in 0..n {
                let len = self.count()?;
                self.take(len)?;
            }
            &self.buf[start..self.pos]
        };
        if let Some(hit) = cache.map.get(path) {
            return Ok(hit.clone());
        }
        self.pos = start;
        let decoded = self.path()?;
        if cache.map.len() >= PathCache::MAX {
            cache.map.clear();
        }
        cache.map.insert(path.into(), decoded.clone());
        Ok(decoded)
    }
}

/// Decodes a commit payload (the whole slice).
pub fn decode_commit(buf: &[u8]) -> Result<CommitRecord, DecodeError> {
    decode_commit_cached(buf, &mut PathCache::default())
}

/// Decodes a commit payload, sharing decoded paths through `cache`.
pub fn decode_commit_cached(
    buf: &[u8],
    cache: &mut PathCache,
) -> Result<CommitRecord, DecodeError> {
    let mut r = Reader::new(buf);
    let version = r.u8()?;
    if version != PAYLOAD_VERSION {
        return Err(if version > PAYLOAD_VERSION {
            DecodeError::NewerVersion {
                found: version,
                max: PAYLOAD_VERSION,
            }
        } else {
            DecodeError::BadTag {
                what: "payload version",
                byte: version,
                at: 0,
            }
        });
    }
    let kind = r.u8()?;
    if kind == KIND_SYNC && r.remaining() == 0 {
        return Err(DecodeError::SyncMarker);
    }
    if kind != KIND_COMMIT {
        return Err(DecodeError::BadTag {
            what: "record kind",
            byte: kind,
            at: 1,
        });
    }
    let time = r.time()?;
    let flags_at = r.pos();
    let id = match r.u8()? {
        0 => None,
        1 => Some(TxnId {
            client: ClientId(r.u64()?),
            seq: r.u64()?,
        }),
        byte => {
            return Err(DecodeError::BadTag {
                what: "flags",
                byte,
                at: flags_at,
            });
        }
    };
    let n = r.count()?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        let path = r.path_cached(cache)?;
        let value = r.value()?;
        changes.push(Change { path, value });
    }
    r.finish()?;
    Ok(CommitRecord { time, id, changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("valid test path")
    }

    #[test]
    fn round_trips_every_value_kind() {
        let obj: Value = [("x", Value::Int(-5)), ("y/z", Value::Null)]
            .into_iter()
            .collect();
        let changes = vec![
            Change {
                path: p("a"),
                value: Some(Value::Int(i64::MIN)),
            },
            Change {
                path: p("a/b"),
                value: Some(Value::Float(1.5)),
            },
            Change {
                path: p("s"),
                value: Some(Value::str("héllo")),
            },
            Change {
                path: p("arr"),
                value: Some(Value::from(vec![Value::Bool(true), Value::Null, obj])),
            },
            Change {
                path: p("gone"),
                value: None,
            },
            Change {
                path: Path::root(),
                value: Some(Value::Int(i64::MAX)),
            },
        ];
        let time = Time {
            ms: 123,
            logical: 4,
            node: 5,
        };
        let id = Some(TxnId {
            client: ClientId(9),
            seq: 10,
        });
        let mut buf = Vec::new();
        encode_commit(&mut buf, time, id, &changes);
        let rec = decode_commit(&buf).expect("round trip");
        assert_eq!(rec, CommitRecord { time, id, changes });
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let mut buf = Vec::new();
        let changes = vec![Change {
            path: p("a/b"),
            value: Some(Value::str("xyz")),
        }];
        encode_commit(
            &mut buf,
            Time {
                ms: 1,
                logical: 0,
                node: 1,
            },
            None,
            &changes,
        );
        for len in 0..buf.len() {
            assert!(
                decode_commit(&buf[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        buf.push(0);
        assert_eq!(decode_commit(&buf), Err(DecodeError::Trailing { extra: 1 }));
    }

    #[test]
    fn hostile_bytes_do_not_allocate_or_panic() {
        // A huge count with no bytes behind it.
        let mut buf = vec![PAYLOAD_VERSION, KIND_COMMIT];
        put_time(&mut buf, Time::ZERO);
        buf.push(0);
        put_var(&mut buf, u64::MAX / 2);
        assert!(matches!(
            decode_commit(&buf),
            Err(DecodeError::Truncated { .. })
        ));
        // Nesting bombs.
        let mut deep = vec![PAYLOAD_VERSION, KIND_COMMIT];
        put_time(&mut deep, Time::ZERO);
        deep.push(0);
        put_var(&mut deep, 1);
        put_path(&mut deep, &p("a"));
        for _ in 0..1000 {
            deep.extend_from_slice(&[7, 1]);
        }
        assert!(matches!(
            decode_commit(&deep),
            Err(DecodeError::TooDeep { .. })
        ));
        assert!(matches!(
            decode_commit(&[PAYLOAD_VERSION + 1]),
            Err(DecodeError::NewerVersion { .. })
        ));
    }
}
