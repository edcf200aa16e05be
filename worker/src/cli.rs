//! Command-line pieces shared by `sluice-worker run` and `sluice batch`, so both take
//! the same limit flags with the same units and defaults, and how both services learn
//! to shut down.

use std::time::Duration;

use clap::Args;
use sluice_shared::parse::env_pair;
use sluice_shared::units::{UnitError, millis_at_least_one, parse_duration, parse_size};
use sluice_shared::{EntryPoint, Limits};

fn size(s: &str) -> Result<u64, UnitError> {
    parse_size(s)
}

fn duration(s: &str) -> Result<Duration, UnitError> {
    parse_duration(s)
}

/// The limits and guest environment of a job, as flags.
#[derive(Args, Clone, Debug)]
pub struct GuestArgs {
    /// Instruction budget in fuel units; without it the job runs unmetered (faster),
    /// bounded by --timeout.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Most linear memory the guest may use.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = size)]
    pub memory: u64,
    /// Wall-clock deadline for the whole run.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
    /// Most output bytes; more ends the job as output_limit.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = size)]
    pub max_output: u64,
    /// An environment variable for the guest (repeatable); the guest sees no others.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = env_pair)]
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
        assert!(Cli::try_parse_from(["x", "--env", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["x", "--memory", "lots"]).is_err());
    }
}
