//! Human units on the command line and in API requests: sizes like `64MiB` and
//! durations like `2s`/`500ms`. Both come from tenants too (query strings, batch
//! bodies), so the input is length-capped before parsing and never echoed whole.
//!
//! Sizes are powers of 1024 unless spelled as SI: `64K`, `64KiB` and `64k` are all
//! 65,536 bytes, and likewise `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (as `docker -m 64m` and
//! `java -Xmx64m` read them). Only the explicit SI spellings `KB`, `MB`, `GB`, `TB` are
//! powers of 1000. `sluice`, `sluice-worker` and the HTTP API all read sizes here.

use std::time::Duration;

/// The longest size or duration text accepted; real ones are a few characters.
pub const MAX_UNIT_TEXT: usize = 64;

/// Why a size or duration could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// Not a size.
    #[error("invalid size {input:?}: {reason} (examples: 4096, 64KiB, 64MiB, 1GiB)")]
    Size {
        /// The text given (at most [`MAX_UNIT_TEXT`] characters of it).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a duration.
    #[error("invalid duration {input:?}: {reason} (examples: 500ms, 2s, 1m)")]
    Duration {
        /// The text given (at most [`MAX_UNIT_TEXT`] characters of it).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `input` as it may appear in an error message: at most [`MAX_UNIT_TEXT`] characters.
fn shown(input: &str) -> String {
    input.chars().take(MAX_UNIT_TEXT).collect()
}

fn too_long(input: &str) -> Option<String> {
    (input.len() > MAX_UNIT_TEXT).then(|| format!("longer than {MAX_UNIT_TEXT} bytes"))
}

/// Size units: the text after the number (compared without case) and its multiplier.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("ki", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mi", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gi", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("ti", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
];

/// Most fraction digits a size may give (`1.5GiB`); more say nothing a byte count
/// can hold.
const MAX_FRACTION_DIGITS: usize = 9;

/// Parses a byte size: a number of bytes, or a number (whole or with a fraction,
/// `1.5GiB`) with a unit: `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` are powers of
/// 1024, `KB`/`MB`/`GB`/`TB` powers of 1000 (case-insensitive; see the module doc). A
/// fraction of a byte is rounded down.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let error = |reason: String| UnitError::Size {
        input: shown(input),
        reason,
    };
    if let Some(reason) = too_long(input) {
        return Err(error(reason));
    }
    let text = input.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let unit = unit.trim_start().to_ascii_lowercase();
    let multiplier = SIZE_UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, multiplier)| *multiplier)
        .ok_or_else(|| {
            error(format!(
                "unknown unit {:?} (B, KiB, MiB, GiB, TiB or K, M, G, T; KB, MB, GB, TB are \
                 powers of 1000)",
                unit
            ))
        })?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(error("expected a number".into()));
    }
    if fraction.contains('.') || fraction.len() > MAX_FRACTION_DIGITS {
        return Err(error(format!(
            "expected a number with at most {MAX_FRACTION_DIGITS} decimals"
        )));
    }
    let too_large = || error("too large for a 64-bit byte count".into());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_large())?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let bytes = whole
        .checked_mul(u128::from(multiplier))
        .and_then(|b| b.checked_add(fraction_value * u128::from(multiplier) / scale))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a duration such as `2s`, `500ms` or `1m 30s`.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let error = |reason: String| UnitError::Duration {
        input: shown(input),
        reason,
    };
    if let Some(reason) = too_long(input) {
        return Err(error(reason));
    }
    humantime::parse_duration(input.trim()).map_err(|reason| error(reason.to_string()))
}

/// A duration in whole milliseconds, at least 1 and saturating at `u64::MAX`: what a
/// limit or a timeout is stored as (0 would mean "already expired").
pub fn millis_at_least_one(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn a_bare_unit_letter_is_binary_and_si_is_spelled_out() {
        for text in ["64M", "64m", "64Mi", "64MiB", "64 MiB", " 64M "] {
            assert_eq!(parse_size(text).unwrap(), 64 << 20, "{text}");
        }
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("64MB").unwrap(), 64_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("0.5").unwrap(), 0);
        assert_eq!(parse_size("7B").unwrap(), 7);
        for bad in [
            "",
            "M",
            ".",
            "1.2.3K",
            "1e3",
            "64 parsecs",
            "99999999999999999999T",
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid size"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_accept_seconds_and_milliseconds() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn long_text_is_refused_and_not_echoed_whole() {
        let long = "9".repeat(100_000);
        let e = parse_size(&long).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
        let e = parse_duration(&long).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
    }

    #[test]
    fn milliseconds_are_at_least_one_and_saturate() {
        assert_eq!(millis_at_least_one(Duration::ZERO), 1);
        assert_eq!(millis_at_least_one(Duration::from_micros(10)), 1);
        assert_eq!(millis_at_least_one(Duration::from_secs(2)), 2000);
        assert_eq!(millis_at_least_one(Duration::MAX), u64::MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary text never panics either parser, and an error names its kind and
        /// stays short.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,80}") {
            match parse_size(&text) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().starts_with("invalid size") && e.to_string().len() < 600),
            }
            match parse_duration(&text) {
                Ok(d) => { let _ = millis_at_least_one(d); }
                Err(e) => prop_assert!(e.to_string().starts_with("invalid duration") && e.to_string().len() < 600),
            }
        }

        /// Unit-looking text (digits, dots, signs, exponents and unit letters) never
        /// panics either parser: the shapes most likely to hit overflow paths.
        #[test]
        fn unit_shaped_text_never_panics(
            number in "[-+]?[0-9]{0,25}(\\.[0-9]{0,10})?(e[-+]?[0-9]{1,4})?",
            space in "[ ]{0,2}",
            unit in prop::sample::select(vec![
                "", "b", "B", "k", "KiB", "kb", "MiB", "MB", "GiB", "gb", "TiB", "PiB", "EiB",
                "ns", "us", "ms", "s", "m", "h", "d", "w", "y", "nan", "inf",
            ]),
        ) {
            let text = format!("{number}{space}{unit}");
            let _ = parse_size(&text);
            if let Ok(d) = parse_duration(&text) {
                let _ = millis_at_least_one(d);
            }
        }

        /// A plain byte count and whole binary units read back exactly.
        #[test]
        fn sizes_round_trip(n in 0u64..(1 << 40), shift in prop::sample::select(vec![(0u32, ""), (10, "KiB"), (20, "MiB")])) {
            let (bits, unit) = shift;
            let text = format!("{n}{unit}");
            match n.checked_shl(bits).filter(|v| v >> bits == n) {
                Some(expected) => prop_assert_eq!(parse_size(&text).unwrap(), expected),
                None => { let _ = parse_size(&text); }
            }
        }

        /// Whole milliseconds and seconds read back exactly.
        #[test]
        fn durations_round_trip(n in 0u64..(1 << 40)) {
            prop_assert_eq!(parse_duration(&format!("{n}ms")).unwrap(), Duration::from_millis(n));
            prop_assert_eq!(parse_duration(&format!("{n}s")).unwrap(), Duration::from_secs(n));
        }
    }
}
