//! Frame codecs: JSON text or MessagePack binary, chosen per connection.
//!
//! A JSON text frame holds one message. A MessagePack binary frame holds
//! one or more messages back to back, so a pipelining client (or the
//! server answering one) pays the per-frame cost once for many messages.

use serde::{Deserialize, Serialize};

use crate::message::{Request, Response, WireChange, WireRead, WireTime, WireWrite};
use crate::value::WireValue;

/// The MessagePack form of `change`, the message sent most: an array
/// `[1, watch, [ms, logical, node], [[path, value], ...]]` instead of a
/// map with field names (46 bytes for one small leaf instead of 87).
/// Every other message is a map with field names, or one of the compact
/// arrays below, so the first byte (array vs map) tells them apart.
#[derive(Serialize, Deserialize)]
struct CompactChange(u8, u64, WireTime, Vec<(String, WireValue)>);

const COMPACT_CHANGE: u8 = 1;

/// The MessagePack form of `commit`, the request sent most:
/// `[2, id, [[path, seen, subtree], ...], [[op, path, value], ...]]` with
/// `op` 0 = set, 1 = patch, 2 = delete (value `nil`). Clients may send
/// either form.
#[derive(Serialize, Deserialize)]
struct CompactCommit(
    u8,
    u64,
    Vec<(String, WireTime, bool)>,
    Vec<(u8, String, WireValue)>,
);

const COMPACT_COMMIT: u8 = 2;

/// The MessagePack form of `committed`: `[3, id, [ms, logical, node]]`.
#[derive(Serialize, Deserialize)]
struct CompactCommitted(u8, u64, WireTime);

const COMPACT_COMMITTED: u8 = 3;

/// MessagePack fixarray headers of 4 and 3 elements.
const FIXARRAY_4: u8 = 0x94;
const FIXARRAY_3: u8 = 0x93;

/// How a connection's frames are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// JSON text frames (the default).
    Json,
    /// MessagePack binary frames (subprotocol `tarn.v1.msgpack`), with
    /// field names, so the same messages decode in both.
    MsgPack,
}

/// A frame that is not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Reads one MessagePack value of type `T` from the front of `rest`,
/// advancing it past the value.
fn msgpack<T: serde::de::DeserializeOwned>(rest: &mut &[u8]) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::new(&mut *rest);
    T::deserialize(&mut de).map_err(|e| DecodeError(e.to_string()))
}

/// Reads one MessagePack request from the front of `rest`.
fn msgpack_request(rest: &mut &[u8]) -> Result<Request, DecodeError> {
    if rest.first() != Some(&FIXARRAY_4) {
        return msgpack(rest);
    }
    let CompactCommit(tag, id, reads, writes) = msgpack(rest)?;
    if tag != COMPACT_COMMIT {
        return Err(DecodeError(format!("unknown compact message {tag}")));
    }
    let reads = reads
        .into_iter()
        .map(|(path, seen, subtree)| WireRead {
            path,
            seen,
            subtree,
            pending_on: None,
        })
        .collect();
    let writes = writes
        .into_iter()
        .map(|(op, path, value)| match op {
            0 => Ok(WireWrite::Set { path, value }),
            1 => Ok(WireWrite::Patch { path, value }),
            2 => Ok(WireWrite::Delete { path }),
            _ => Err(DecodeError(format!(
                "unknown write op {op} (0 set, 1 patch, 2 delete)"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Request::commit(id, reads, writes))
}

/// Reads one MessagePack response from the front of `rest`.
fn msgpack_response(rest: &mut &[u8]) -> Result<Response, DecodeError> {
    match rest.first() {
        Some(&FIXARRAY_3) => {
            let CompactCommitted(tag, id, time) = msgpack(rest)?;
            if tag != COMPACT_COMMITTED {
                return Err(DecodeError(format!("unknown compact message {tag}")));
            }
            Ok(Response::Committed { id, time })
        }
        Some(&FIXARRAY_4) => {
            let CompactChange(tag, watch, time, changes) = msgpack(rest)?;
            if tag != COMPACT_CHANGE {
                return Err(DecodeError(format!("unknown compact message {tag}")));
            }
            Ok(Response::Change {
                watch,
                time,
                changes: changes
                    .into_iter()
                    .map(|(path, value)| WireChange { path, value })
                    .collect(),
            })
        }
        _ => msgpack(rest),
    }
}

/// Reads exactly one message from `frame`.
fn msgpack_one<T>(
    frame: &[u8],
    read: fn(&mut &[u8]) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut rest = frame;
    let msg = read(&mut rest)?;
    if !rest.is_empty() {
        return Err(DecodeError(format!(
            "{} bytes after the message; use decode_requests/decode_responses for frames of several",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Reads every message of `frame`, stopping at the first that does not
/// decode (what follows it cannot be found).
fn msgpack_all<T>(
    frame: &[u8],
    read: fn(&mut &[u8]) -> Result<T, DecodeError>,
) -> Vec<Result<T, DecodeError>> {
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let got = read(&mut rest);
        let failed = got.is_err();
        out.push(got);
        if failed {
            break;
        }
    }
    if out.is_empty() {
        out.push(Err(DecodeError("an empty frame".into())));
    }
    out
}

/// Appends a compact form (an array, no field names).
fn write_compact<T: Serialize>(out: &mut Vec<u8>, compact: &T) {
    rmp_serde::encode::write(out, compact).expect("messages always serialize to MessagePack");
}

fn json<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(frame).map_err(|e| DecodeError(e.to_string()))
}

impl Codec {
    /// Decodes every request of a frame, in order (see the module docs).
    /// A message that does not decode ends the list as an error.
    pub fn decode_requests(&self, frame: &[u8]) -> Vec<Result<Request, DecodeError>> {
        match self {
            Codec::Json => vec![json(frame)],
            Codec::MsgPack => msgpack_all(frame, msgpack_request),
        }
    }

    /// Decodes a frame holding exactly one request.
    pub fn decode_request(&self, frame: &[u8]) -> Result<Request, DecodeError> {
        match self {
            Codec::Json => json(frame),
            Codec::MsgPack => msgpack_one(frame, msgpack_request),
        }
    }

    /// Decodes every response of a frame, in order (clients).
    pub fn decode_responses(&self, frame: &[u8]) -> Result<Vec<Response>, DecodeError> {
        match self {
            Codec::Json => Ok(vec![json(frame)?]),
            Codec::MsgPack => msgpack_all(frame, msgpack_response).into_iter().collect(),
        }
    }

    /// Decodes a frame holding exactly one response (clients).
    pub fn decode_response(&self, frame: &[u8]) -> Result<Response, DecodeError> {
        match self {
            Codec::Json => json(frame),
            Codec::MsgPack => msgpack_one(frame, msgpack_response),
        }
    }

    /// Encodes a request: as [`Codec::encode`], except that MessagePack
    /// `commit` requests take their compact form.
    pub fn encode_request(&self, msg: &Request) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_request_into(msg, &mut out);
        out
    }

    /// [`Codec::encode_request`], appended to `out` (MessagePack: to pack
    /// several requests in one frame).
    pub fn encode_request_into(&self, msg: &Request, out: &mut Vec<u8>) {
        match (self, msg) {
            // The compact form has no transaction id or dependencies.
            (
                Codec::MsgPack,
                Request::Commit {
                    id,
                    reads,
                    writes,
                    client: None,
                    seq: None,
                    depends_on,
                    retry: false,
                },
            ) if depends_on.is_empty() && reads.iter().all(|r| r.pending_on.is_none()) => {
                let compact = CompactCommit(
                    COMPACT_COMMIT,
                    *id,
                    reads
                        .iter()
                        .map(|r| (r.path.clone(), r.seen, r.subtree))
                        .collect(),
                    writes
                        .iter()
                        .map(|w| match w {
                            WireWrite::Set { path, value } => (0, path.clone(), value.clone()),
                            WireWrite::Patch { path, value } => (1, path.clone(), value.clone()),
                            WireWrite::Delete { path } => {
                                (2, path.clone(), WireValue(tarn_core::Value::Null))
                            }
                        })
                        .collect(),
                );
                write_compact(out, &compact);
            }
            _ => self.encode_into(msg, out),
        }
    }

    /// Encodes a response: as [`Codec::encode`], except that MessagePack
    /// `change` and `committed` messages take their compact forms.
    pub fn encode_response(&self, msg: &Response) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_response_into(msg, &mut out);
        out
    }

    /// [`Codec::encode_response`], appended to `out` (MessagePack: to
    /// pack several responses in one frame).
    pub fn encode_response_into(&self, msg: &Response, out: &mut Vec<u8>) {
        match (self, msg) {
            (
                Codec::MsgPack,
                Response::Change {
                    watch,
                    time,
                    changes,
                },
            ) => {
                let compact = CompactChange(
                    COMPACT_CHANGE,
                    *watch,
                    *time,
                    changes
                        .iter()
                        .map(|c| (c.path.clone(), c.value.clone()))
                        .collect(),
                );
                write_compact(out, &compact);
            }
            (Codec::MsgPack, Response::Committed { id, time }) => {
                write_compact(out, &CompactCommitted(COMPACT_COMMITTED, *id, *time));
            }
            _ => self.encode_into(msg, out),
        }
    }

    /// Encodes any message.
    pub fn encode<T: Serialize>(&self, msg: &T) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(msg, &mut out);
        out
    }

    /// [`Codec::encode`], appended to `out`.
    pub fn encode_into<T: Serialize>(&self, msg: &T, out: &mut Vec<u8>) {
        match self {
            Codec::Json => {
                serde_json::to_writer(out, msg).expect("messages always serialize to JSON");
            }
            Codec::MsgPack => {
                rmp_serde::encode::write_named(out, msg)
                    .expect("messages always serialize to MessagePack");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use crate::value::WireValue;
    use tarn_core::Value;

    #[test]
    fn requests_round_trip_in_both_codecs() {
        let req = Request::Commit {
            id: 7,
            reads: vec![WireRead {
                path: "a".into(),
                seen: WireTime(1, 2, 3),
                subtree: true,
                pending_on: None,
            }],
            client: None,
            seq: None,
            depends_on: vec![],
            retry: false,
            writes: vec![
                WireWrite::Set {
                    path: "a/b".into(),
                    value: WireValue(Value::Int(5)),
                },
                WireWrite::Delete { path: "c".into() },
            ],
        };
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = codec.encode(&req);
            assert_eq!(codec.decode_request(&bytes).expect("decodes"), req);
            let bytes = codec.encode_request(&req);
            assert_eq!(codec.decode_request(&bytes).expect("decodes"), req);
        }
        // With a transaction id and a pending read: the map form.
        let with_id = Request::Commit {
            id: 8,
            reads: vec![WireRead {
                path: "a".into(),
                seen: WireTime(1, 2, 3),
                subtree: false,
                pending_on: Some(4),
            }],
            client: Some(77),
            seq: Some(5),
            depends_on: vec![3],
            retry: false,
            writes: vec![],
        };
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = codec.encode_request(&with_id);
            assert_eq!(codec.decode_request(&bytes).expect("decodes"), with_id);
        }
        // The compact MessagePack commit: an array, smaller than the map.
        let compact = Codec::MsgPack.encode_request(&req);
        assert_eq!(compact[0], FIXARRAY_4);
        assert!(compact.len() < Codec::MsgPack.encode(&req).len());
        let set = Request::Commit {
            id: 1,
            client: None,
            seq: None,
            depends_on: vec![],
            retry: false,
            reads: vec![],
            writes: vec![WireWrite::Set {
                path: "bench/c0".into(),
                value: WireValue(Value::Int(5)),
            }],
        };
        let n = Codec::MsgPack.encode_request(&set).len();
        assert!(n <= 17, "{n} bytes");
        let json = br#"{"type":"watch","id":1,"path":"rooms"}"#;
        assert_eq!(
            Codec::Json.decode_request(json).expect("decodes"),
            Request::Watch {
                id: 1,
                path: "rooms".into(),
                subtree: true,
                since: None
            }
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        for bad in [
            &br#"{"type":"nope","id":1}"#[..],
            br#"{"type":"get","id":"x","path":"a"}"#,
            br#"{"type":"get","id":1,"path":"a","extra":1}"#,
            br#"not json"#,
        ] {
            assert!(
                Codec::Json.decode_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Compact forms with an unknown tag or op, or the wrong shape.
        for bad in [
            rmp_serde::to_vec(&(9u8, 1u64, [(); 0], [(); 0])).expect("encodes"),
            rmp_serde::to_vec(&(2u8, 1u64, [(); 0], [(7u8, "a", 1)])).expect("encodes"),
            rmp_serde::to_vec(&(2u8, 1u64, [(); 0], [(0u8, 5, 1)])).expect("encodes"),
        ] {
            assert!(Codec::MsgPack.decode_request(&bad).is_err());
        }
        let bad = rmp_serde::to_vec(&(9u8, 1u64, [0u64, 0, 0])).expect("encodes");
        assert!(Codec::MsgPack.decode_response(&bad).is_err());
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let frame = format!(
            r#"{{"type":"commit","id":1,"writes":[{{"op":"set","path":"a","value":{deep}}}]}}"#
        );
        assert!(Codec::Json.decode_request(frame.as_bytes()).is_err());
        assert!(Codec::MsgPack.decode_request(&[0xc1, 0xff, 0x00]).is_err());
    }

    #[test]
    fn msgpack_changes_are_compact_and_round_trip() {
        let change = Response::Change {
            watch: 1,
            time: WireTime(1_795_612_345_678, 0, 1),
            changes: vec![WireChange {
                path: "rooms/lobby/players/alice/x".into(),
                value: WireValue(Value::Int(42)),
            }],
        };
        let bytes = Codec::MsgPack.encode_response(&change);
        assert!(bytes.len() <= 47, "{} bytes", bytes.len());
        assert_eq!(
            Codec::MsgPack.decode_response(&bytes).expect("decodes"),
            change
        );
        let committed = Response::Committed {
            id: 9,
            time: WireTime(1_795_612_345_678, 2, 1),
        };
        let bytes = Codec::MsgPack.encode_response(&committed);
        assert_eq!(bytes[0], FIXARRAY_3);
        assert!(bytes.len() <= 20, "{} bytes", bytes.len());
        assert_eq!(
            Codec::MsgPack.decode_response(&bytes).expect("decodes"),
            committed
        );
        let other = Response::Pong { id: 3 };
        let bytes = Codec::MsgPack.encode_response(&other);
        assert_eq!(
            Codec::MsgPack.decode_response(&bytes).expect("decodes"),
            other
        );
        let json = Codec::Json.encode_response(&change);
        assert_eq!(Codec::Json.decode_response(&json).expect("decodes"), change);
    }

    #[test]
    fn msgpack_frames_carry_several_messages() {
        let reqs: Vec<Request> = (0..3)
            .map(|i| Request::Commit {
                id: i,
                client: None,
                seq: None,
                depends_on: vec![],
                retry: false,
                reads: vec![],
                writes: vec![WireWrite::Set {
                    path: format!("a/{i}"),
                    value: WireValue(Value::Int(i as i64)),
                }],
            })
            .chain([Request::Ping { id: 9 }])
            .collect();
        let mut frame = Vec::new();
        for r in &reqs {
            Codec::MsgPack.encode_request_into(r, &mut frame);
        }
        let got: Vec<Request> = Codec::MsgPack
            .decode_requests(&frame)
            .into_iter()
            .map(|r| r.expect("decodes"))
            .collect();
        assert_eq!(got, reqs);
        // A frame of one message decodes either way; of several, only as
        // a list.
        assert!(Codec::MsgPack.decode_request(&frame).is_err());
        // A cut message ends the list as an error, after what decoded.
        let cut = Codec::MsgPack.decode_requests(&frame[..frame.len() - 1]);
        assert_eq!(cut.len(), 4);
        assert!(cut[2].is_ok() && cut[3].is_err());
        assert!(Codec::MsgPack.decode_requests(&[])[0].is_err());

        let resps = vec![
            Response::Committed {
                id: 1,
                time: WireTime(5, 0, 1),
            },
            Response::Pong { id: 2 },
            Response::Change {
                watch: 1,
                time: WireTime(5, 0, 1),
                changes: vec![],
            },
        ];
        let mut frame = Vec::new();
        for r in &resps {
            Codec::MsgPack.encode_response_into(r, &mut frame);
        }
        assert_eq!(
            Codec::MsgPack.decode_responses(&frame).expect("decodes"),
            resps
        );
        assert!(
            Codec::MsgPack
                .decode_responses(&frame[..frame.len() - 1])
                .is_err()
        );
    }

    #[test]
    fn times_parse_from_urls() {
        assert_eq!(WireTime::parse("12"), Some(WireTime(12, 0, 0)));
        assert_eq!(WireTime::parse("12.3@4"), Some(WireTime(12, 3, 4)));
        assert_eq!(WireTime::parse("x"), None);
    }
}
