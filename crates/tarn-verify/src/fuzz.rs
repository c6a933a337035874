//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs` call these),
//! so `cargo test` can run every target's corpus without libFuzzer.
//!
//! Each takes arbitrary bytes and must not panic; where a decode
//! succeeds, it also checks that encoding what was decoded and decoding
//! again gives the same encoding (the decoder and encoder agree).

use tarn_core::{Path, PathLimits, Time, Value};
use tarn_proto::{Codec, Request};
use tarn_store::wal;

/// A fuzz target's body: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by name: the corpus directory `fuzz/corpus/<name>`.
pub const TARGETS: &[(&str, Target)] = &[
    ("ws_json", ws_json),
    ("ws_msgpack", ws_msgpack),
    ("http_path", http_path),
    ("wal_record", wal_record),
    ("txn_decode", txn_decode),
];

/// The WebSocket decoder on a text frame.
pub fn ws_json(data: &[u8]) {
    ws(Codec::Json, data);
}

/// The WebSocket decoder on a binary (MessagePack) frame.
pub fn ws_msgpack(data: &[u8]) {
    ws(Codec::MsgPack, data);
}

fn ws(codec: Codec, data: &[u8]) {
    for req in codec.decode_requests(data) {
        let Ok(req) = req else { break };
        let mut once = Vec::new();
        codec.encode_request_into(&req, &mut once);
        let again = codec.decode_requests(&once);
        let [Ok(again)] = again.as_slice() else {
            panic!("{req:?} encodes to {once:?}, which does not decode to one request: {again:?}");
        };
        let mut twice = Vec::new();
        codec.encode_request_into(again, &mut twice);
        assert_eq!(once, twice, "{req:?} and {again:?} encode differently");
        // A commit becomes a transaction, or a typed error.
        if let Request::Commit {
            reads,
            writes,
            client,
            seq,
            depends_on,
            ..
        } = req
        {
            let id = client.zip(seq);
            let _ = tarn_server::convert::txn_with_id(
                reads,
                writes,
                id,
                depends_on,
                &PathLimits::default(),
            );
        }
    }
}

/// The path of an HTTP data route (`/v1/data/{path}`).
pub fn http_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(path) = tarn_server::convert::path(&text, &PathLimits::default()) {
        let printed = path.to_string();
        match Path::parse_with(&printed, &PathLimits::default()) {
            Ok(again) => assert_eq!(path, again, "{text:?} prints as {printed:?}"),
            Err(e) => panic!("{text:?} parses, prints as {printed:?}, which does not: {e}"),
        }
    }
}

/// The WAL record reader over a segment's bytes, as recovery scans it.
pub fn wal_record(data: &[u8]) {
    use tarn_store::wal::RecordRead;
    let _ = wal::check_header(data, 0);
    let _ = wal::segment_format(data);
    let max = 1 << 20;
    let mut at = 0;
    loop {
        match wal::read_record(data, at, max) {
            RecordRead::Ok { next, .. } | RecordRead::Marker { next } => {
                assert!(next > at, "the reader did not advance at {at}");
                at = next;
            }
            RecordRead::End => break,
            RecordRead::Bad(_) => {
                let _ = wal::marker_after(data, at, max);
                match wal::find_next_record(data, at + 1, max) {
                    Some(next) if next > at => at = next,
                    _ => break,
                }
            }
        }
    }
}

/// The decoder of a logged transaction (a commit record's payload).
pub fn txn_decode(data: &[u8]) {
    use tarn_store::codec;
    if let Ok(record) = codec::decode_commit(data) {
        let mut once = Vec::new();
        codec::encode_commit(&mut once, record.time, record.id, &record.changes);
        match codec::decode_commit(&once) {
            Ok(again) => {
                let mut twice = Vec::new();
                codec::encode_commit(&mut twice, again.time, again.id, &again.changes);
                assert_eq!(once, twice, "a decoded commit encodes two ways");
            }
            Err(e) => panic!("a decoded commit re-encodes to something that does not decode: {e}"),
        }
    }
}

/// Valid inputs for each target, to start a corpus from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use tarn_proto::{WireRead, WireTime, WireValue, WireWrite};
    let requests = vec![
        Request::Hello {
            id: 1,
            version: tarn_proto::PROTOCOL_VERSION,
            token: Some("t".into()),
        },
        Request::Ping { id: 2 },
        Request::Get {
            id: 3,
            path: "users/ada".into(),
            at: Some(WireTime(1, 2, 3)),
        },
        Request::Watch {
            id: 4,
            path: "rooms".into(),
            subtree: true,
            since: Some(WireTime(5, 0, 1)),
        },
        Request::Unwatch { id: 5, watch: 1 },
        Request::commit(
            6,
            Vec::new(),
            vec![WireWrite::Set {
                path: "n".into(),
                value: WireValue(Value::Int(1)),
            }],
        ),
        Request::Commit {
            id: 7,
            reads: vec![WireRead {
                path: "a/b".into(),
                seen: WireTime(9, 1, 1),
                subtree: true,
                pending_on: Some(3),
            }],
            writes: vec![
                WireWrite::Patch {
                    path: "a".into(),
                    value: WireValue(
                        [("b", Value::Int(2)), ("c", Value::String("x".into()))]
                            .into_iter()
                            .collect(),
                    ),
                },
                WireWrite::Delete { path: "d".into() },
            ],
            client: Some(42),
            seq: Some(4),
            depends_on: vec![2, 3],
            retry: true,
        },
    ];
    let mut out = Vec::new();
    for codec in [Codec::Json, Codec::MsgPack] {
        let name = match codec {
            Codec::Json => "ws_json",
            Codec::MsgPack => "ws_msgpack",
        };
        let mut all = Vec::new();
        for r in &requests {
            let mut one = Vec::new();
            codec.encode_request_into(r, &mut one);
            if codec == Codec::MsgPack {
                all.extend_from_slice(&one);
            }
            out.push((name, one));
        }
        if codec == Codec::MsgPack {
            out.push((name, all));
        }
    }
    for p in ["", "a", "users/ada/name", "a%2Fb/c", "x/y/z/0/1"] {
        out.push(("http_path", p.as_bytes().to_vec()));
    }
    let time = |ms: u64| Time {
        ms,
        logical: 0,
        node: 1,
    };
    let changes = |n: i64| {
        let path = |p: &str| Path::parse_with(p, &PathLimits::default()).ok();
        let mut out = Vec::new();
        if let (Some(ab), Some(c)) = (path("a/b"), path("c")) {
            out.push(tarn_core::Change {
                path: ab,
                value: Some(Value::Int(n)),
            });
            out.push(tarn_core::Change {
                path: c,
                value: Some(Value::Array(
                    vec![Value::Bool(true), Value::Float(1.5)].into(),
                )),
            });
        }
        out
    };
    let mut segment = wal::segment_header(0).to_vec();
    for n in 0..3u64 {
        let mut payload = Vec::new();
        let id = (n == 1).then_some(tarn_core::TxnId {
            client: tarn_core::ClientId(7),
            seq: 3,
        });
        tarn_store::codec::encode_commit(&mut payload, time(n + 1), id, &changes(n as i64));
        out.push(("txn_decode", payload.clone()));
        wal::frame(&mut segment, &payload);
    }
    wal::push_sync_marker(&mut segment);
    out.push(("wal_record", segment));
    out
}
