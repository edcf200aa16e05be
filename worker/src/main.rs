//! `sluice-worker`: parses the command line, loads the settings, calls the library
//! ([`sluice_worker::run::run`], [`sluice_worker::fleet::serve`]) and maps how it ended
//! to an exit status.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: 7-8 µs less worker CPU per no-op job, mostly
/// glibc's `malloc_consolidate` and free-list work on the claim and result path
/// (docs/benchmarks.md, "Worker overhead per job").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use sluice_shared::queue::redis::ConnectError;
use sluice_worker::compile::{CompileArgs, child};
use sluice_worker::executor::ExecutorError;
use sluice_worker::fleet::{self, FleetArgs, ServeError};
use sluice_worker::logging::{self, LogFormat};
use sluice_worker::run::{self, RunArgs, RunExit};

/// Exit statuses (the README's table). `run` otherwise exits with the guest's own.
mod exit {
    /// `serve` drained after SIGTERM; `run`: the guest succeeded.
    pub const OK: u8 = 0;
    /// The worker failed for a reason that is not the operator's input (the sandbox
    /// could not be built, an I/O error writing a report).
    pub const FAILED: u8 = 1;
    /// A usage or configuration error: the message names the setting (clap's own
    /// usage errors exit 2 too).
    pub const USAGE: u8 = 2;
    /// `serve`: Redis refused the credentials (a wrong password or user, none given,
    /// or an ACL user without the queue's commands) at start (EX_NOPERM). Retrying
    /// cannot help, so the worker does not.
    pub const REDIS_REFUSED: u8 = 77;
    /// `serve`: more runs stuck past their deadline than `--max-stuck` tolerates; the
    /// worker stopped claiming, recorded or released its jobs and wants a restart
    /// (EX_TEMPFAIL).
    pub const STUCK: u8 = 75;
    /// `run`: the sandbox (not the guest) ended the run; the outcome is on stderr.
    pub const SANDBOX_STOPPED: u8 = 125;
}

#[derive(Parser)]
#[command(
    name = "sluice-worker",
    version,
    about = "Sluice worker: runs WebAssembly transforms under hard limits"
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (levels from RUST_LOG).
    #[arg(long, global = true, value_enum, env = logging::LOG_FORMAT_ENV, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run MODULE (.wasm or .wat) with stdin as its input and stdout as its output.
    Run(RunArgs),
    /// Run jobs from a Redis queue until SIGTERM (then drain and exit 0).
    Serve(Box<FleetArgs>),
    /// Internal: compile the module on stdin under limits, artifact to stdout (the
    /// child `serve` starts for every compile).
    #[command(hide = true)]
    Compile(CompileArgs),
}

/// Prints why the command failed and exits with `code`.
fn failed(error: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("sluice-worker: {error}");
    ExitCode::from(code)
}

fn run_command(args: RunArgs) -> ExitCode {
    match run::run(args) {
        Ok(RunExit::Guest { status }) => ExitCode::from(status),
        Ok(RunExit::SandboxStopped { .. }) => ExitCode::from(exit::SANDBOX_STOPPED),
        Err(error) if error.is_usage() => failed(error, exit::USAGE),
        Err(error) => failed(error, exit::FAILED),
    }
}

fn serve_command(args: FleetArgs) -> ExitCode {
    // Every setting is checked before anything starts: a bad one is a usage error.
    let config = match args.load() {
        Ok(config) => config,
        Err(error) => return failed(error, exit::USAGE),
    };
    let runtime = match fleet::runtime(config.async_threads) {
        Ok(runtime) => runtime,
        Err(error) => return failed(format!("cannot start the runtime: {error}"), exit::FAILED),
    };
    let served = runtime
        .block_on(async { fleet::serve(config, sluice_worker::cli::shutdown_on_signal()).await });
    // Guests still running past the grace period were released to other workers, and
    // stuck threads cannot be stopped: do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match served {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error @ ServeError::Executor(ExecutorError::TooManyStuck { .. })) => {
            failed(error, exit::STUCK)
        }
        Err(
            error @ ServeError::Redis {
                source: ConnectError::Auth(_),
                ..
            },
        ) => failed(error, exit::REDIS_REFUSED),
        // An unusable URL or queue setting is the operator's to fix, as any setting.
        Err(error @ ServeError::Redis { .. }) => failed(error, exit::USAGE),
        Err(
            error @ (ServeError::Sandbox(_)
            | ServeError::Cache(_)
            | ServeError::Executor(
                ExecutorError::RunThreads { .. } | ExecutorError::Background { .. },
            )),
        ) => failed(error, exit::FAILED),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The compile child says how it ended by its status and one stderr line only.
    if let Command::Compile(args) = &cli.command {
        return ExitCode::from(child::run(args));
    }
    logging::init(cli.log_format, "info");
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Serve(args) => serve_command(*args),
        Command::Compile(args) => ExitCode::from(child::run(&args)),
    }
}
