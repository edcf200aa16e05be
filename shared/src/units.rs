//! Human units on the command line: sizes like `64MiB` and durations like `2s`/`500ms`.

use std::time::Duration;

/// Why a size or duration could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("invalid size {input:?}: {reason} (examples: 4096, 64KiB, 64MiB, 1GiB)")]
    Size { input: String, reason: String },
    #[error("invalid duration {input:?}: {reason} (examples: 500ms, 2s, 1m)")]
    Duration { input: String, reason: String },
}

/// Parses a byte size: a plain number of bytes or a number with a unit (`KiB`, `MiB`,
/// `GiB`, `KB`, `MB`, …, case-insensitive).
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    input
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|reason| UnitError::Size {
            input: input.to_owned(),
            reason: reason.to_string(),
        })
}

/// Parses a duration such as `2s`, `500ms` or `1m 30s`.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(input.trim()).map_err(|reason| UnitError::Duration {
        input: input.to_owned(),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64mib").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2KB").unwrap(), 2000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1MiB").is_err());
    }

    #[test]
    fn durations_accept_seconds_and_milliseconds() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
    }
}
