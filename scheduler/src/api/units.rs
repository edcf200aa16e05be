//! One unit convention for every request: sizes and durations are accepted as strings
//! with a unit (`64MiB`, `2s`, parsed by `sluice_shared::units`) or as integers in base
//! units (bytes, milliseconds), in the job query, a batch's `limits` and a tenant's
//! policy alike; answers always give base-unit integers.

use serde::Deserialize;
use serde_json::Value;
use sluice_shared::Limits;
use sluice_shared::parse::{LimitField, set_limit};
use sluice_shared::units::{MAX_UNIT_TEXT, millis_at_least_one, parse_duration, parse_size};

use super::error::{ApiError, ApiResult};

/// A size, duration or count in JSON: an integer in base units, or a string.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(super) enum UnitValue {
    /// An integer: bytes, milliseconds or fuel units.
    Int(u64),
    /// A string: `64MiB`, `2s`, or digits (base units).
    Text(String),
}

/// A duration from a query's text: digits are milliseconds, anything else goes to the
/// shared parser (`2s`, `500ms`).
pub(super) fn duration_text(text: &str) -> Result<std::time::Duration, String> {
    if !text.is_empty() && text.len() <= MAX_UNIT_TEXT && text.bytes().all(|b| b.is_ascii_digit()) {
        let ms: u64 = text.parse().map_err(|e| format!("{e}"))?;
        return Ok(std::time::Duration::from_millis(ms));
    }
    parse_duration(text).map_err(|e| e.to_string())
}

/// Sets limit `field` from a query's text: digits are base units (bytes, milliseconds,
/// fuel units), anything else goes to the shared parser (`64MiB`, `2s`).
pub(super) fn set_limit_text(
    limits: &mut Limits,
    field: LimitField,
    text: &str,
) -> Result<(), String> {
    if field == LimitField::Timeout
        && !text.is_empty()
        && text.len() <= MAX_UNIT_TEXT
        && text.bytes().all(|b| b.is_ascii_digit())
    {
        let ms: u64 = text.parse().map_err(|e| format!("{field}: {e}"))?;
        limits.timeout_ms = ms.max(1);
        return Ok(());
    }
    set_limit(limits, field, text).map_err(|e| e.to_string())
}

/// Sets limit `field` from a JSON value (an integer in base units, or a string).
pub(super) fn set_limit_value(
    limits: &mut Limits,
    field: LimitField,
    value: &UnitValue,
) -> Result<(), String> {
    match value {
        UnitValue::Int(n) => set_limit_text(limits, field, &n.to_string()),
        UnitValue::Text(text) => set_limit_text(limits, field, text),
    }
}

/// A policy object with its size (`*_bytes`) and duration (`*_ms`) fields given as
/// strings turned into base-unit integers; every other value is left for the policy's
/// own deserializer to judge.
pub(super) fn policy_in_base_units(mut policy: Value) -> ApiResult<Value> {
    let Some(fields) = policy.as_object_mut() else {
        return Ok(policy);
    };
    for (name, value) in fields.iter_mut() {
        let Value::String(text) = value else { continue };
        let bad =
            |e: &dyn std::fmt::Display| ApiError::bad_request(format!("policy field {name}: {e}"));
        let base = if name.ends_with("_bytes") {
            parse_size(text).map_err(|e| bad(&e))?
        } else if name.ends_with("_ms") {
            if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
                text.parse().map_err(|e| bad(&e))?
            } else {
                millis_at_least_one(parse_duration(text).map_err(|e| bad(&e))?)
            }
        } else {
            continue;
        };
        *value = Value::from(base);
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_and_base_unit_integers_give_the_same_limits() {
        let (mut a, mut b) = (Limits::default(), Limits::default());
        set_limit_value(&mut a, LimitField::Memory, &UnitValue::Text("64MiB".into())).unwrap();
        set_limit_value(&mut b, LimitField::Memory, &UnitValue::Int(64 << 20)).unwrap();
        set_limit_value(&mut a, LimitField::Timeout, &UnitValue::Text("2s".into())).unwrap();
        set_limit_value(&mut b, LimitField::Timeout, &UnitValue::Int(2000)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.timeout_ms, 2000);
        assert!(set_limit_text(&mut a, LimitField::Timeout, "2 parsecs").is_err());
    }

    #[test]
    fn policy_strings_become_base_units_and_other_values_stay() {
        let policy = policy_in_base_units(json!({
            "max_memory_bytes": "64MiB",
            "max_timeout_ms": "2s",
            "max_output_bytes": 1000,
            "max_args": "7",
        }))
        .unwrap();
        assert_eq!(policy["max_memory_bytes"], 64 << 20);
        assert_eq!(policy["max_timeout_ms"], 2000);
        assert_eq!(policy["max_output_bytes"], 1000);
        assert_eq!(policy["max_args"], "7");
        assert!(policy_in_base_units(json!({ "max_timeout_ms": "soon" })).is_err());
    }
}
