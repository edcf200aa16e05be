//! A `Vec<u8>` field encoded as bytes: postcard writes a byte sequence and a byte
//! string the same way (varint length, then the bytes), so the wire format is the
//! derive's, but the bytes go in with one copy instead of a `visit_seq`/`collect_seq`
//! loop per byte. Human-readable formats (JSON) keep the derive's own form, an array of
//! numbers, both ways.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes `bytes` as a byte string (postcard), or as the derive would (JSON).
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        bytes.serialize(serializer)
    } else {
        serializer.serialize_bytes(bytes)
    }
}

/// Reads what [`serialize`] wrote.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if deserializer.is_human_readable() {
        <Vec<u8>>::deserialize(deserializer)
    } else {
        serde_bytes::ByteBuf::deserialize(deserializer).map(serde_bytes::ByteBuf::into_vec)
    }
}

#[cfg(test)]
mod tests;
