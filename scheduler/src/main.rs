//! `sluice`: the Sluice command line. Parses the command, starts tracing and calls the
//! subcommand in [`sluice_scheduler::cli`]; any error it returns is printed and exits 2.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc, as the worker (whose figures chose it:
/// docs/benchmarks.md, "What changed in the fourth round"): the embedded batch runs the
/// same sandbox and allocates per job as the worker does; `sluice bench`'s own CPU per
/// job fell from 5.6–7.2 to 3.6–4.8 µs in the same round (`scripts/bench-fleet`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser, Subcommand};
use sluice_scheduler::bench;
use sluice_scheduler::cli;
use sluice_scheduler::cli::batch::BatchArgs;
use sluice_scheduler::cli::dlq::DlqCommand;
use sluice_scheduler::cli::module::ModuleCommand;
use sluice_scheduler::cli::result::ResultArgs;
use sluice_scheduler::cli::serve::ServeArgs;
use sluice_scheduler::cli::status::StatusArgs;
use sluice_scheduler::cli::submit::SubmitArgs;
use sluice_scheduler::cli::tenant::TenantCommand;
use sluice_scheduler::cli::top::TopArgs;
use sluice_scheduler::cli::wait::WaitArgs;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: batch jobs of untrusted WebAssembly transforms"
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (levels from RUST_LOG).
    #[arg(long, global = true, value_enum, env = sluice_worker::logging::LOG_FORMAT_ENV, default_value_t)]
    log_format: sluice_worker::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run MODULE over every file in INPUT_DIR, writing OUT_DIR/<file> and
    /// OUT_DIR/report.jsonl. In-process unless --redis is given. Exits 0 only when
    /// every job succeeded (130 interrupted); `batch cancel|attach ID` for a --redis batch.
    Batch(BatchArgs),
    /// Store modules in Redis.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Enqueue one job; prints its id.
    Submit(SubmitArgs),
    /// Queue depths, counters, tenant backlogs and live workers.
    Status(StatusArgs),
    /// A job's result (and its output with --output); --wait for it to finish.
    Result(ResultArgs),
    /// Wait for jobs to finish; prints each one's report line as it does, and exits with
    /// the highest of their statuses.
    Wait(WaitArgs),
    /// Dead letters: list, retry, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// End-to-end throughput, latency and CPU per job through Redis and real workers (the
    /// no-op, or a real guest with --module and --input-size; every output checked).
    Bench(bench::BenchArgs),
    /// Tenants, their tokens and policies (directly on Redis).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The HTTP API (plus /metrics, /healthz, /readyz) until SIGTERM.
    Serve(ServeArgs),
    /// The queue-state metrics of one or more queues at /metrics (and /healthz), for
    /// fleets without `sluice serve`.
    Exporter(cli::exporter::ExporterArgs),
    /// A live full-screen view of a queue (q to quit); --once prints one reading.
    Top(TopArgs),
    /// Print a shell completion script (e.g. `sluice completions bash >
    /// /etc/bash_completion.d/sluice`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `sluice batch` runs its guests on run threads of their own; its async side (the
    // claim loop, results, the report) on one thread (the worker's default runtime)
    // costs less than handing tasks between runtime threads (embedded, 4 slots, 20,000
    // × 4 KiB through the C guest on tmpfs: docs/benchmarks.md, "Embedded batch"). The
    // rest keep a multi-threaded runtime: `serve` answers many clients, and `bench`
    // blocks a runtime thread at times (`block_in_place`).
    let runtime = match cli.command {
        Command::Batch(_) => sluice_worker::fleet::runtime(1),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("sluice: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let Cli {
        log_format,
        command,
    } = cli;
    // `RUST_LOG` wins; without it `serve` logs its requests (cli/serve.rs), `exporter`
    // its warnings, the rest errors only.
    let default = match &command {
        Command::Serve(_) => cli::serve::DEFAULT_LOG_FILTER,
        // A long-running exporter says why its reads fail.
        Command::Exporter(_) => "warn",
        _ => "error",
    };
    sluice_worker::logging::init(log_format, default);
    let result = match command {
        Command::Batch(args) => cli::batch::run(args).await,
        Command::Module(command) => cli::module::run(command).await,
        Command::Submit(args) => cli::submit::run(args).await,
        Command::Status(args) => cli::status::run(args).await,
        Command::Result(args) => cli::result::run(args).await,
        Command::Wait(args) => cli::wait::run(args).await,
        Command::Dlq(command) => cli::dlq::run(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Tenant(command) => cli::tenant::run(command).await,
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Exporter(args) => cli::exporter::run(args).await,
        Command::Top(args) => cli::top::run(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
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
