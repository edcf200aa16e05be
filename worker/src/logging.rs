//! Log setup both binaries share: `--log-format text|json` (env `SLUICE_LOG_FORMAT`),
//! levels from `RUST_LOG`, and colours only for a person at a terminal.
//!
//! Text is the human form (`key=value` fields after the message, the spans they were
//! logged in before it); JSON is one object per line for log shippers, with the
//! event's fields, its current span's fields under `span` and every enclosing span
//! under `spans`. A fleet worker's job runs are in a `job` span carrying `job` (id),
//! `tenant`, `module` (hash) and `attempt`; its `job finished` event carries the
//! outcome (at debug for a success).

use std::borrow::Cow;
use std::io::IsTerminal;

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal unless `NO_COLOR` is set).
    #[default]
    Text,
    /// One JSON object per line, never coloured.
    Json,
}

// By hand rather than derived: the values' own descriptions would turn every
// command's `--help` into its long form.
impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Text, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }))
    }
}

/// The environment variable `--log-format` may be given in.
pub const LOG_FORMAT_ENV: &str = "SLUICE_LOG_FORMAT";

/// Installs the process's log subscriber, writing to stderr: levels from `RUST_LOG`,
/// or `default_filter` when it is unset or unreadable.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours for a person at a terminal only: logs sent to a file or a collector
        // stay plain text (and NO_COLOR turns them off everywhere).
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// A tenant name as a log field: as it is when it follows the tenant name rule, else
/// quoted and escaped (and cut to 64 characters), so a hostile name in an envelope
/// cannot forge log lines or fields.
pub fn tenant_field(name: &str) -> Cow<'_, str> {
    if sluice_shared::tenant::validate_name(name).is_ok() {
        Cow::Borrowed(name)
    } else {
        let cut: String = name.chars().take(64).collect();
        Cow::Owned(format!("{cut:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_tenant_is_logged_as_is_and_any_other_quoted_and_cut() {
        assert_eq!(tenant_field("acme-1"), "acme-1");
        assert_eq!(tenant_field("a\nb=\"c\""), "\"a\\nb=\\\"c\\\"\"");
        assert!(tenant_field(&"x".repeat(500)).len() < 70);
    }
}
