//! Command-line pieces shared by `sluice-worker run` and `sluice batch`, so both take
//! the same limit flags with the same units and defaults, and how both services learn
//! to shut down.

use std::time::Duration;

use clap::Args;
use sluice_shared::parse::{self, env_pair};
use sluice_shared::units::millis_at_least_one;
use sluice_shared::{EntryPoint, Limits};

use crate::config::SandboxConfig;

/// `--memory`: above zero and at most the sandbox's ceiling, so a job that could never
/// run is refused here, naming the flag, instead of ending as `memory_limit`.
fn memory(text: &str) -> Result<u64, String> {
    parse::memory_limit(text).map_err(|e| e.to_string())
}

/// `--max-output`: any size (0 allows no output at all).
fn max_output(text: &str) -> Result<u64, String> {
    parse::max_output_limit(text).map_err(|e| e.to_string())
}

/// `--timeout`: a duration above zero.
fn timeout(text: &str) -> Result<Duration, String> {
    parse::timeout_limit(text).map_err(|e| e.to_string())
}

/// `--fuel`: at least one unit.
fn fuel(text: &str) -> Result<u64, String> {
    parse::fuel_limit(text).map_err(|e| e.to_string())
}

/// `--env`: `KEY=VALUE`, or `KEY` alone to pass the variable's value from this
/// process's environment (as `wasmtime run --env KEY` does); refused when it is unset.
pub fn env_arg(text: &str) -> Result<(String, String), String> {
    if text.contains('=') {
        return env_pair(text).map_err(|e| e.to_string());
    }
    if text.is_empty() {
        return Err("expected KEY=VALUE, or KEY to pass the variable on".into());
    }
    match std::env::var(text) {
        Ok(value) => Ok((text.to_owned(), value)),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "{text} is not set in this environment (give --env {text}=VALUE)"
        )),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "the value of {text} in this environment is not UTF-8"
        )),
    }
}

/// Job slots (`--concurrency` of `sluice batch`): 1 to [`SandboxConfig::MAX_SLOTS`].
pub fn slots(text: &str) -> Result<usize, String> {
    let n: usize = text.trim().parse().map_err(|e| format!("{e}"))?;
    let max = SandboxConfig::MAX_SLOTS as usize;
    match n {
        0 => Err("must be at least 1 (no job would ever run)".into()),
        n if n > max => Err(format!("at most {max} (sandbox pool slots), got {n}")),
        n => Ok(n),
    }
}

/// The limits and guest environment of a job, as flags.
#[derive(Args, Clone, Debug)]
pub struct GuestArgs {
    /// Instruction budget in fuel units; without it the job runs unmetered (faster),
    /// bounded by --timeout.
    #[arg(long, value_name = "N", value_parser = fuel)]
    pub fuel: Option<u64>,
    /// Most linear memory the guest may use (above 0, at most 4GiB).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = memory)]
    pub memory: u64,
    /// Wall-clock deadline for the whole run (above 0).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = timeout)]
    pub timeout: Duration,
    /// Most output bytes; more ends the job as output_limit.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = max_output)]
    pub max_output: u64,
    /// An environment variable for the guest (repeatable); the guest sees no others.
    /// `KEY` alone passes this process's value of KEY (refused when it is unset).
    #[arg(long = "env", value_name = "KEY[=VALUE]", value_parser = env_arg)]
    pub env: Vec<(String, String)>,
    /// Grant a host directory to the guest as HOST::GUEST (repeatable; never `/`).
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    pub dirs: Vec<String>,
    /// Grant directories read-only.
    #[arg(long)]
    pub read_only_dirs: bool,
    /// Call this raw-ABI transform export instead of the WASI command's `_start`
    /// (the default is `_start` if exported, else `process`).
    #[arg(long, value_name = "EXPORT", value_parser = |s: &str| s.parse::<EntryPoint>())]
    pub invoke: Option<EntryPoint>,
}

impl GuestArgs {
    /// The job limits these flags ask for.
    pub fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: self.memory,
            timeout_ms: millis_at_least_one(self.timeout),
            max_output_bytes: self.max_output,
        }
    }

    /// The entry point `--invoke` names, if any.
    pub fn entry(&self) -> Option<EntryPoint> {
        self.invoke.clone()
    }
}

/// Resolves on SIGTERM or Ctrl-C: how both services learn to shut down.
pub async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // No SIGTERM handler to be had: Ctrl-C still works.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A token cancelled on SIGTERM or Ctrl-C, for [`crate::fleet::serve`]; must be called
/// inside the tokio runtime.
pub fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("shutting down: no new claims, draining jobs in flight");
        cancel.cancel();
    });
    shutdown
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        guest: GuestArgs,
    }

    #[test]
    fn limit_flags_take_units() {
        let cli = Cli::parse_from([
            "x",
            "--memory",
            "8MiB",
            "--timeout",
            "500ms",
            "--max-output",
            "1KiB",
            "--fuel",
            "7",
            "--env",
            "A=b=c",
        ]);
        let limits = cli.guest.limits();
        assert_eq!(limits.memory_bytes, 8 << 20);
        assert_eq!(limits.timeout_ms, 500);
        assert_eq!(limits.max_output_bytes, 1024);
        assert_eq!(limits.fuel, Some(7));
        assert_eq!(cli.guest.env, vec![("A".into(), "b=c".into())]);
        // No `=`: passed from this process, so refused when unset there.
        assert!(Cli::try_parse_from(["x", "--env", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["x", "--env", "=novalue"]).is_err());
        assert!(Cli::try_parse_from(["x", "--memory", "lots"]).is_err());
    }

    #[test]
    fn limits_no_job_could_run_under_are_refused_naming_the_flag() {
        for (flag, value) in [
            ("--memory", "0"),
            ("--memory", "5GiB"),
            ("--timeout", "0ms"),
            ("--fuel", "0"),
        ] {
            let error = Cli::try_parse_from(["x", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} accepted"))
                .to_string();
            assert!(error.contains(&format!("'{flag}")), "{error}");
        }
        // The ceiling itself is allowed, and a bare unit letter is binary.
        let cli = Cli::parse_from(["x", "--memory", "4G", "--max-output", "64M"]);
        assert_eq!(cli.guest.memory, 4 << 30);
        assert_eq!(cli.guest.max_output, 64 << 20);
    }

    #[test]
    fn env_key_alone_is_passed_from_this_process_or_refused_by_name() {
        // Every process has a PATH under cargo test; a name nobody sets has no value.
        if let Ok(path) = std::env::var("PATH") {
            assert_eq!(env_arg("PATH"), Ok(("PATH".to_owned(), path)));
        }
        let error = env_arg("SLUICE_NEVER_SET_BY_ANYONE").unwrap_err();
        assert!(
            error.contains("SLUICE_NEVER_SET_BY_ANYONE is not set"),
            "{error}"
        );
        assert_eq!(env_arg("A=b=c"), Ok(("A".to_owned(), "b=c".to_owned())));
        assert!(env_arg("").is_err());
        assert!(env_arg("=v").is_err());
    }

    #[test]
    fn slots_are_1_to_the_pool_size() {
        assert_eq!(slots("1"), Ok(1));
        assert_eq!(slots("1024"), Ok(1024));
        for bad in ["0", "1025", "-1", "many"] {
            assert!(slots(bad).is_err(), "{bad}");
        }
    }
}
