//! A minimal etcd v3 client over gRPC (tonic): the message fields the
//! comparison uses, with etcd's field numbers (etcdserverpb/rpc.proto and
//! mvccpb/kv.proto; fields left out are skipped when decoding), and the
//! three calls it makes: `KV/Txn`, `KV/Put` and `Watch/Watch`.

use anyhow::{Context, Result};
use tonic::codegen::http::uri::PathAndQuery;

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    #[prost(oneof = "Request", tags = "1, 2")]
    pub request: Option<Request>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    #[prost(message, tag = "1")]
    Range(RangeRequest),
    #[prost(message, tag = "2")]
    Put(PutRequest),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseOp {
    #[prost(oneof = "Response", tags = "1, 2")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Response {
    #[prost(message, tag = "1")]
    Range(RangeResponse),
    #[prost(message, tag = "2")]
    Put(PutResponse),
}

/// `Compare`: result EQUAL (0) on target MOD (2) against `mod_revision`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Compare {
    #[prost(int32, tag = "1")]
    pub result: i32,
    #[prost(int32, tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(oneof = "TargetUnion", tags = "6")]
    pub target_union: Option<TargetUnion>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TargetUnion {
    #[prost(int64, tag = "6")]
    ModRevision(i64),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnResponse {
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
    #[prost(message, repeated, tag = "3")]
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(oneof = "WatchRequestUnion", tags = "1")]
    pub request_union: Option<WatchRequestUnion>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WatchRequestUnion {
    #[prost(message, tag = "1")]
    Create(WatchCreateRequest),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

/// One gRPC connection to etcd.
#[derive(Clone)]
pub struct Etcd {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Etcd {
    pub async fn connect(port: u16) -> Result<Etcd> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await
            .context("connecting to etcd")?;
        Ok(Etcd {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse> {
        self.grpc.ready().await?;
        let codec = tonic_prost::ProstCodec::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Txn");
        Ok(self
            .grpc
            .unary(tonic::Request::new(req), path, codec)
            .await?
            .into_inner())
    }

    pub async fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<()> {
        self.grpc.ready().await?;
        let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Put");
        let req = PutRequest {
            key: key.to_vec(),
            value,
        };
        self.grpc
            .unary(tonic::Request::new(req), path, codec)
            .await?;
        Ok(())
    }

    /// Watches `key`: the stream of watch responses (the first says
    /// `created`).
    pub async fn watch(&mut self, key: &[u8]) -> Result<tonic::Streaming<WatchResponse>> {
        self.grpc.ready().await?;
        let codec = tonic_prost::ProstCodec::<WatchRequest, WatchResponse>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
        let create = WatchRequest {
            request_union: Some(WatchRequestUnion::Create(WatchCreateRequest {
                key: key.to_vec(),
            })),
        };
        // The request stream stays open for the watch's lifetime.
        let requests = futures_util::stream::once(async move { create })
            .chain(futures_util::stream::pending());
        Ok(self
            .grpc
            .streaming(tonic::Request::new(requests), path, codec)
            .await?
            .into_inner())
    }
}

use futures_util::StreamExt as _;

/// A read-only transaction of serializable reads of `keys`.
pub fn read(keys: &[&[u8]]) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success: keys
            .iter()
            .map(|k| RequestOp {
                request: Some(Request::Range(RangeRequest {
                    key: k.to_vec(),
                    serializable: true,
                })),
            })
            .collect(),
        failure: vec![],
    }
}

/// A transaction putting `writes` if every key's mod revision is still as
/// read (0: the key did not exist).
pub fn write_if_unchanged(writes: &[(&[u8], i64, Vec<u8>)]) -> TxnRequest {
    const EQUAL: i32 = 0;
    const MOD: i32 = 2;
    TxnRequest {
        compare: writes
            .iter()
            .map(|(k, rev, _)| Compare {
                result: EQUAL,
                target: MOD,
                key: k.to_vec(),
                target_union: Some(TargetUnion::ModRevision(*rev)),
            })
            .collect(),
        success: writes
            .iter()
            .map(|(k, _, v)| RequestOp {
                request: Some(Request::Put(PutRequest {
                    key: k.to_vec(),
                    value: v.clone(),
                })),
            })
            .collect(),
        failure: vec![],
    }
}
