//! Reading Redis replies: stream entries, flat field lists, counts and text.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use super::error::{StoreError, bad_reply};

/// A duration as whole milliseconds for Redis, at least 1 (0 often means "forever").
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A reply's bytes, for strings and integers.
pub(crate) fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// A reply's bytes, as [`bytes_of`], moved out of the reply: a claimed job's envelope
/// (its whole inline input) is not copied on its way to the decoder.
pub(crate) fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// A reply as text, for strings, integers and `OK`.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A short, printable excerpt of text taken from Redis, for logs and errors.
pub(crate) fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(128).collect();
    if s.chars().count() > 128 {
        out.push('…');
    }
    out
}

/// An integer reply (or a numeric string, as `HGET` returns counters); 0 otherwise.
pub(crate) fn count_of(v: &Value) -> u64 {
    match v {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// A stream entry's field-value pairs.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `[k, v, k, v, …]` as pairs of bytes, moved out of the reply (a field that is
/// not a string or an integer, and an odd last key, are skipped).
pub(crate) fn into_field_pairs(v: Option<Value>) -> Fields {
    let Some(Value::Array(kv)) = v else {
        return Vec::new();
    };
    let mut fields = Vec::with_capacity(kv.len() / 2);
    let mut kv = kv.into_iter();
    while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
        if let (Some(k), Some(v)) = (into_bytes(k), into_bytes(v)) {
            fields.push((k, v));
        }
    }
    fields
}

/// `[[id, [k, v, …]], …]` → `(id, [(k, v), …])`, moved out of the reply (so the claim
/// path does not copy an envelope); an entry deleted while pending (nil fields) comes
/// back with no fields, and so decodes as a missing envelope. The one stream-entry
/// parser: every reader passes the reply it owns.
pub(crate) fn into_entries(v: Value) -> Result<Vec<(String, Fields)>, StoreError> {
    let Value::Array(entries) = v else {
        return Err(bad_reply(format!("stream entries: {v:?}")));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let mut parts = parts.into_iter();
        let Some(id) = parts.next().and_then(into_bytes) else {
            continue;
        };
        let id = String::from_utf8(id)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        out.push((id, into_field_pairs(parts.next())));
    }
    Ok(out)
}

/// The entries of an `XREAD` reply, of every stream it names, in order (none when the
/// read timed out): RESP2 answers an array of `[name, entries]`, RESP3 a map.
pub(crate) fn xread_entries(reply: Value) -> Result<Vec<(String, Fields)>, StoreError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        other => return Err(bad_reply(format!("XREAD reply: {other:?}"))),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        if let Some(entries) = parts.into_iter().nth(1) {
            out.extend(into_entries(entries)?);
        }
    }
    Ok(out)
}

/// A flat `[k, v, k, v]` (or a map) reply as text.
pub(crate) fn flat_pairs(v: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut put = |k: &Value, v: &Value| {
        if let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v)) {
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    };
    match v {
        Value::Array(kv) => {
            for pair in kv.chunks(2) {
                if let [k, v] = pair {
                    put(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                put(k, v);
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    /// A stream reply with each shape an entry can take, and what it reads as.
    fn entries_reply() -> (Value, Vec<(String, Fields)>) {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk(b"1-0"),
                Value::Array(vec![bulk(b"e"), bulk(&[0, 0xff, 7]), bulk(b"k")]),
            ]),
            // Deleted while pending: nil fields.
            Value::Array(vec![bulk(b"2-0"), Value::Nil]),
            Value::Array(vec![
                Value::SimpleString("3-\u{e9}".into()),
                Value::Array(vec![Value::Int(5), bulk(b"v")]),
            ]),
            Value::Array(vec![Value::Nil]),
            Value::Int(9),
        ]);
        let entries = vec![
            // The odd last key has no value: skipped.
            ("1-0".to_owned(), vec![(b"e".to_vec(), vec![0, 0xff, 7])]),
            ("2-0".to_owned(), Vec::new()),
            ("3-\u{e9}".to_owned(), vec![(b"5".to_vec(), b"v".to_vec())]),
        ];
        (reply, entries)
    }

    #[test]
    fn entries_are_moved_out_of_a_reply_as_they_are() {
        let (reply, entries) = entries_reply();
        assert_eq!(into_entries(reply).unwrap(), entries);
        assert!(into_entries(Value::Nil).is_err());
        // An id that is not UTF-8 reads lossily, with no fields.
        let bad_id = Value::Array(vec![Value::Array(vec![bulk(&[0xff, b'1'])])]);
        assert_eq!(
            into_entries(bad_id).unwrap(),
            [("\u{fffd}1".to_owned(), Vec::new())]
        );
    }

    #[test]
    fn xread_replies_read_as_their_streams_entries_in_order() {
        let (first, mut entries) = entries_reply();
        let second = Value::Array(vec![Value::Array(vec![
            bulk(b"4-0"),
            Value::Array(vec![bulk(b"a"), bulk(b"b")]),
        ])]);
        let resp2 = Value::Array(vec![
            Value::Array(vec![bulk(b"s1"), first]),
            Value::Array(vec![bulk(b"s2"), second]),
        ]);
        entries.push(("4-0".to_owned(), vec![(b"a".to_vec(), b"b".to_vec())]));
        assert_eq!(xread_entries(resp2).unwrap(), entries);
        assert_eq!(xread_entries(Value::Nil).unwrap(), []);
        assert!(xread_entries(Value::Int(1)).is_err());
    }
}
