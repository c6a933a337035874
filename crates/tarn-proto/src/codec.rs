//! Frame codecs: JSON text or MessagePack binary, chosen per connection.

use serde::{Deserialize, Serialize};

use crate::message::{Request, Response, WireChange, WireTime};
use crate::value::WireValue;

/// The MessagePack form of `change`, the message sent most: an array
/// `[1, watch, [ms, logical, node], [[path, value], ...]]` instead of a
/// map with field names (46 bytes for one small leaf instead of 87).
/// Every other message is a map with field names, so the first byte
/// (array vs map) tells them apart.
#[derive(Serialize, Deserialize)]
struct CompactChange(u8, u64, WireTime, Vec<(String, WireValue)>);

const COMPACT_CHANGE: u8 = 1;

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

impl Codec {
    /// Decodes a request frame.
    pub fn decode_request(&self, frame: &[u8]) -> Result<Request, DecodeError> {
        match self {
            Codec::Json => serde_json::from_slice(frame).map_err(|e| DecodeError(e.to_string())),
            Codec::MsgPack => rmp_serde::from_slice(frame).map_err(|e| DecodeError(e.to_string())),
        }
    }

    /// Decodes a response frame (clients).
    pub fn decode_response(&self, frame: &[u8]) -> Result<Response, DecodeError> {
        match self {
            Codec::Json => serde_json::from_slice(frame).map_err(|e| DecodeError(e.to_string())),
            // A fixarray of 4: the compact `change`.
            Codec::MsgPack if frame.first() == Some(&0x94) => {
                let CompactChange(tag, watch, time, changes) =
                    rmp_serde::from_slice(frame).map_err(|e| DecodeError(e.to_string()))?;
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
            Codec::MsgPack => rmp_serde::from_slice(frame).map_err(|e| DecodeError(e.to_string())),
        }
    }

    /// Encodes a response: as [`Codec::encode`], except that MessagePack
    /// `change` messages take their compact form.
    pub fn encode_response(&self, msg: &Response) -> Vec<u8> {
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
                rmp_serde::to_vec(&compact).expect("messages always serialize to MessagePack")
            }
            _ => self.encode(msg),
        }
    }

    /// Encodes any message.
    pub fn encode<T: Serialize>(&self, msg: &T) -> Vec<u8> {
        match self {
            Codec::Json => serde_json::to_vec(msg).expect("messages always serialize to JSON"),
            Codec::MsgPack => {
                rmp_serde::to_vec_named(msg).expect("messages always serialize to MessagePack")
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
            }],
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
        }
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
    fn times_parse_from_urls() {
        assert_eq!(WireTime::parse("12"), Some(WireTime(12, 0, 0)));
        assert_eq!(WireTime::parse("12.3@4"), Some(WireTime(12, 3, 4)));
        assert_eq!(WireTime::parse("x"), None);
    }
}
