//! One parser per text format that both the command line and the HTTP API read, so the
//! two never disagree on what a value means or how it is refused:
//!
//! - an entry point (`--invoke`, `?invoke=`): [`EntryPoint`]'s `FromStr`;
//! - an environment pair (`--env`, `?env=`): [`env_pair`];
//! - a job limit from text (`--memory 8MiB`, `?timeout=2s`, a batch body's `limits`):
//!   [`LimitField`] and [`set_limit`], the one place a duration becomes the limit's
//!   milliseconds ([`units::millis_at_least_one`], checked, never truncated), and where
//!   a limit no job could run under is refused ([`memory_limit`], [`timeout_limit`],
//!   [`fuel_limit`]: zero, or memory over [`MAX_MEMORY_BYTES`]).
//!
//! An outcome kind's name is read by [`OutcomeKind`](crate::OutcomeKind)'s `FromStr`,
//! beside the type.
//!
//! ```
//! use sluice_shared::parse::{LimitField, env_pair, set_limit};
//! use sluice_shared::{EntryPoint, Limits};
//!
//! assert_eq!("_start".parse::<EntryPoint>().unwrap(), EntryPoint::Command);
//! assert_eq!(env_pair("A=b=c").unwrap(), ("A".to_owned(), "b=c".to_owned()));
//! let mut limits = Limits::default();
//! set_limit(&mut limits, "timeout".parse().unwrap(), "2s").unwrap();
//! assert_eq!(limits.timeout_ms, 2000);
//! let e = set_limit(&mut limits, LimitField::Memory, "lots").unwrap_err();
//! assert!(e.to_string().starts_with("memory: invalid size"));
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::job::{EntryPoint, Limits};
use crate::units::{self, UnitError};

/// The longest export name an entry point may give.
pub const MAX_EXPORT_NAME: usize = 128;

/// Why text is not an entry point.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryPointError {
    /// Empty, or longer than [`MAX_EXPORT_NAME`] bytes.
    #[error("an export name is 1-{MAX_EXPORT_NAME} bytes")]
    Length,
}

/// `_start` is the WASI command; any other export name is a raw-ABI transform.
impl FromStr for EntryPoint {
    type Err = EntryPointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.len() > MAX_EXPORT_NAME {
            return Err(EntryPointError::Length);
        }
        Ok(match text {
            "_start" => EntryPoint::Command,
            other => EntryPoint::Raw {
                export: other.to_owned(),
            },
        })
    }
}

/// Why text is not a `KEY=VALUE` pair.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvPairError {
    /// No `=`, or nothing before it.
    #[error("expected KEY=VALUE")]
    Shape,
}

/// A `KEY=VALUE` environment pair: split at the first `=` (the value may hold more),
/// the key non-empty.
pub fn env_pair(text: &str) -> Result<(String, String), EnvPairError> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or(EnvPairError::Shape)
}

/// A job limit that may be given as text, by the name used on the command line
/// (`--max-output`), in query strings and in batch bodies (`max_output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitField {
    /// `fuel`: the instruction budget, a plain number.
    Fuel,
    /// `memory`: most guest memory, a size (`64MiB`).
    Memory,
    /// `timeout`: the deadline, a duration (`2s`).
    Timeout,
    /// `max_output`: most output bytes, a size.
    MaxOutput,
}

impl LimitField {
    /// Every limit field.
    pub const ALL: [LimitField; 4] = [
        LimitField::Fuel,
        LimitField::Memory,
        LimitField::Timeout,
        LimitField::MaxOutput,
    ];

    /// The field's name in query strings and JSON.
    pub fn name(self) -> &'static str {
        match self {
            LimitField::Fuel => "fuel",
            LimitField::Memory => "memory",
            LimitField::Timeout => "timeout",
            LimitField::MaxOutput => "max_output",
        }
    }
}

impl fmt::Display for LimitField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a name is not a limit field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown limit {0:?} (fuel, memory, timeout, max_output)")]
pub struct UnknownLimitField(String);

impl FromStr for LimitField {
    type Err = UnknownLimitField;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        LimitField::ALL
            .into_iter()
            .find(|field| field.name() == name)
            .ok_or_else(|| UnknownLimitField(crate::outcome::cut(name, 64)))
    }
}

/// The most linear memory a job may ask for: 4 GiB, all a 32-bit guest can address
/// (the sandbox's ceiling).
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// What is wrong with a limit's value.
#[derive(Debug, thiserror::Error)]
pub enum LimitValueError {
    /// `fuel` is not a whole number of fuel units.
    #[error(transparent)]
    Number(#[from] std::num::ParseIntError),
    /// A size or duration that does not parse.
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// Zero, under which no job could run.
    #[error("must be more than 0 ({why})")]
    Zero {
        /// Why zero cannot work.
        why: &'static str,
    },
    /// Memory over what any guest can be given.
    #[error(
        "{value} bytes is over the ceiling of 4GiB ({MAX_MEMORY_BYTES} bytes), all a 32-bit \
         guest can address"
    )]
    OverCeiling {
        /// The memory asked for, in bytes.
        value: u64,
    },
}

/// A memory limit: a size above 0 and at most [`MAX_MEMORY_BYTES`].
pub fn memory_limit(text: &str) -> Result<u64, LimitValueError> {
    match units::parse_size(text)? {
        0 => Err(LimitValueError::Zero {
            why: "a guest needs memory to run",
        }),
        value if value > MAX_MEMORY_BYTES => Err(LimitValueError::OverCeiling { value }),
        value => Ok(value),
    }
}

/// A timeout: a duration above 0 (a zero deadline has passed before the guest starts).
pub fn timeout_limit(text: &str) -> Result<Duration, LimitValueError> {
    let timeout = units::parse_duration(text)?;
    if timeout.is_zero() {
        return Err(LimitValueError::Zero {
            why: "the job would time out before it starts",
        });
    }
    Ok(timeout)
}

/// A fuel budget: a whole number above 0 (no fuel stops the guest at its first
/// instruction).
pub fn fuel_limit(text: &str) -> Result<u64, LimitValueError> {
    match text.trim().parse()? {
        0 => Err(LimitValueError::Zero {
            why: "no fuel stops the guest at once",
        }),
        fuel => Ok(fuel),
    }
}

/// An output cap: any size (0 allows no output at all).
pub fn max_output_limit(text: &str) -> Result<u64, LimitValueError> {
    Ok(units::parse_size(text)?)
}

/// A limit whose text does not parse: the field and what is wrong with its value.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {source}")]
pub struct LimitError {
    /// The limit given.
    pub field: LimitField,
    /// What is wrong with its value.
    #[source]
    pub source: LimitValueError,
}

/// Sets one limit of `limits` from text; the others stay as they are.
pub fn set_limit(limits: &mut Limits, field: LimitField, text: &str) -> Result<(), LimitError> {
    let error = |source: LimitValueError| LimitError { field, source };
    match field {
        LimitField::Fuel => limits.fuel = Some(fuel_limit(text).map_err(error)?),
        LimitField::Memory => limits.memory_bytes = memory_limit(text).map_err(error)?,
        LimitField::Timeout => {
            limits.timeout_ms = units::millis_at_least_one(timeout_limit(text).map_err(error)?)
        }
        LimitField::MaxOutput => limits.max_output_bytes = max_output_limit(text).map_err(error)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_parse_and_bad_ones_say_why() {
        assert_eq!("_start".parse::<EntryPoint>(), Ok(EntryPoint::Command));
        assert_eq!(
            "process".parse::<EntryPoint>(),
            Ok(EntryPoint::Raw {
                export: "process".into()
            })
        );
        assert_eq!("".parse::<EntryPoint>(), Err(EntryPointError::Length));
        let long = "x".repeat(MAX_EXPORT_NAME + 1);
        assert_eq!(long.parse::<EntryPoint>(), Err(EntryPointError::Length));
        assert!("x".repeat(MAX_EXPORT_NAME).parse::<EntryPoint>().is_ok());
        assert_eq!(
            EntryPointError::Length.to_string(),
            "an export name is 1-128 bytes"
        );
    }

    #[test]
    fn env_pairs_split_at_the_first_equals_and_need_a_key() {
        assert_eq!(env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(env_pair("A="), Ok(("A".into(), String::new())));
        assert_eq!(env_pair("novalue"), Err(EnvPairError::Shape));
        assert_eq!(env_pair("=v"), Err(EnvPairError::Shape));
        assert_eq!(env_pair(""), Err(EnvPairError::Shape));
        assert_eq!(EnvPairError::Shape.to_string(), "expected KEY=VALUE");
    }

    #[test]
    fn limit_fields_go_by_their_names() {
        for field in LimitField::ALL {
            assert_eq!(field.name().parse::<LimitField>(), Ok(field));
            assert_eq!(field.to_string(), field.name());
        }
        let e = "max-output".parse::<LimitField>().unwrap_err();
        assert!(
            e.to_string().contains("unknown limit \"max-output\""),
            "{e}"
        );
        let long = "x".repeat(10_000).parse::<LimitField>().unwrap_err();
        assert!(long.to_string().len() < 200);
    }

    #[test]
    fn limits_are_set_from_text_one_field_at_a_time() {
        let mut limits = Limits::default();
        set_limit(&mut limits, LimitField::Fuel, "7").unwrap();
        set_limit(&mut limits, LimitField::Memory, "8MiB").unwrap();
        set_limit(&mut limits, LimitField::Timeout, "500ms").unwrap();
        set_limit(&mut limits, LimitField::MaxOutput, "1KiB").unwrap();
        assert_eq!(
            limits,
            Limits {
                fuel: Some(7),
                memory_bytes: 8 << 20,
                timeout_ms: 500,
                max_output_bytes: 1024,
            }
        );
        // A timeout is whole milliseconds, at least one, saturating: never truncated.
        set_limit(&mut limits, LimitField::Timeout, "10us").unwrap();
        assert_eq!(limits.timeout_ms, 1);
        set_limit(&mut limits, LimitField::Timeout, "100000y").unwrap();
        assert!(limits.timeout_ms > u64::from(u32::MAX));
    }

    #[test]
    fn bad_limits_name_the_field_and_leave_the_limits_alone() {
        let mut limits = Limits::default();
        for (field, text, start) in [
            (LimitField::Fuel, "lots", "fuel: invalid digit"),
            (LimitField::Fuel, "-1", "fuel: invalid digit"),
            (LimitField::Memory, "lots", "memory: invalid size \"lots\""),
            (
                LimitField::Timeout,
                "soon",
                "timeout: invalid duration \"soon\"",
            ),
            (LimitField::MaxOutput, "", "max_output: invalid size"),
            (LimitField::Fuel, "0", "fuel: must be more than 0"),
            (LimitField::Memory, "0", "memory: must be more than 0"),
            (
                LimitField::Memory,
                "100GiB",
                "memory: 107374182400 bytes is over the ceiling",
            ),
            (LimitField::Timeout, "0s", "timeout: must be more than 0"),
        ] {
            let e = set_limit(&mut limits, field, text).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().starts_with(start), "{e}");
        }
        assert_eq!(limits, Limits::default());
    }
}
