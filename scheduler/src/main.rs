//! `sluice`: the Sluice command line. Parses the command, starts tracing and calls the
//! subcommand in [`sluice_scheduler::cli`]; any error it returns is printed and exits 2.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_scheduler::bench;
use sluice_scheduler::cli::batch::BatchArgs;
use sluice_scheduler::cli::dlq::DlqCommand;
use sluice_scheduler::cli::module::ModuleCommand;
use sluice_scheduler::cli::result::ResultArgs;
use sluice_scheduler::cli::serve::ServeArgs;
use sluice_scheduler::cli::submit::SubmitArgs;
use sluice_scheduler::cli::tenant::TenantCommand;
use sluice_scheduler::cli::{self, RedisArgs};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: batch jobs of untrusted WebAssembly transforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run MODULE over every file in INPUT_DIR, writing OUT_DIR/<file> and
    /// OUT_DIR/report.jsonl. In-process unless --redis is given. Exits 0 only when
    /// every job succeeded.
    Batch(BatchArgs),
    /// Store modules in Redis.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Enqueue one job; prints its id.
    Submit(SubmitArgs),
    /// Queue depths, counters and workers.
    Status(RedisArgs),
    /// A job's result (and its output with --output).
    Result(ResultArgs),
    /// Dead letters: list, retry, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// End-to-end throughput and latency of no-op jobs through Redis and real workers.
    Bench(bench::BenchArgs),
    /// Tenants, their tokens and policies (directly on Redis).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The HTTP API (plus /metrics, /healthz, /readyz) until SIGTERM.
    Serve(ServeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Batch(args) => cli::batch::run(args).await,
        Command::Module(command) => cli::module::run(command).await,
        Command::Submit(args) => cli::submit::run(args).await,
        Command::Status(redis) => cli::status::run(redis).await,
        Command::Result(args) => cli::result::run(args).await,
        Command::Dlq(command) => cli::dlq::run(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Tenant(command) => cli::tenant::run(command).await,
        Command::Serve(args) => cli::serve::run(args).await,
    };
    result.unwrap_or_else(|error| {
        // Each cause once: an error whose message holds its source's is not repeated.
        eprintln!(
            "sluice: {}",
            sluice_shared::error_text::joined(error.chain())
        );
        ExitCode::from(2)
    })
}
