//! tarn-proto: the wire protocol of tarn, shared by the server and the
//! clients. The only crate that knows the wire format: core types are
//! converted to their wire counterparts here, at the edge.
//!
//! - [`value`]: [`WireValue`], a [`tarn_core::Value`] that (de)serializes
//!   as plain JSON / MessagePack data.
//! - [`message`]: requests and responses of the WebSocket protocol, and the
//!   bodies of the HTTP API.
//! - [`codec`]: JSON text frames and MessagePack binary frames.
//! - [`error`]: the stable error codes every error on the wire carries.
//!
//! The protocol is documented in `docs/protocol.md`.

pub mod codec;
pub mod error;
pub mod message;
pub mod value;

pub use codec::{Codec, DecodeError};
pub use error::{ErrorBody, ErrorCode};
pub use message::*;
pub use value::WireValue;

/// Version of the protocol this build speaks (sent in `hello`).
pub const PROTOCOL_VERSION: u32 = 1;
/// The WebSocket subprotocol that selects MessagePack binary frames.
pub const MSGPACK_SUBPROTOCOL: &str = "tarn.v1.msgpack";
/// The read buffer of each WebSocket connection, server and client side
/// (tungstenite's default is 128 KiB). tungstenite allocates it up front
/// and zero-fills up to this much before every socket read: at 128 KiB that
/// was 14% of the server's time serving small transactions, and 1.3 GB of
/// zeroed pages for 10,000 connections. Bigger messages still arrive whole
/// (the buffer grows for them).
pub const WS_READ_BUFFER_BYTES: usize = 8 * 1024;
