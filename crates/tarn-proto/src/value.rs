//! [`WireValue`]: a tarn value as plain JSON or MessagePack data.
//!
//! The (de)serialization itself is tarn-core's (feature `serde`): integers
//! that fit i64 stay integers, larger unsigned integers become floats,
//! nesting is bounded while decoding so no input can overflow the stack.
//! NaN and infinities are refused by the engine's value checks.

use serde::{Deserialize, Serialize};
use tarn_core::Value;

/// A value on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireValue(pub Value);
