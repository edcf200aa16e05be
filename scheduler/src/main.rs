//! `sluice`: the Sluice command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_scheduler::batch::{BatchOptions, BatchSummary, run_batch};
use sluice_worker::DirGrant;
use sluice_worker::cli::GuestArgs;

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
    /// OUT_DIR/report.jsonl. Exits 0 only when every job succeeded.
    Batch(BatchArgs),
}

#[derive(clap::Args)]
struct BatchArgs {
    /// The module: a .wasm binary or .wat text.
    #[arg(long)]
    module: PathBuf,
    /// Directory whose regular files are the inputs, one job each.
    input_dir: PathBuf,
    /// Where outputs and report.jsonl go.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    guest: GuestArgs,
    /// An argument passed to the guest (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Jobs run at once (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Attempts per job; only timeouts and host errors are retried.
    #[arg(long, default_value_t = 1)]
    max_attempts: u32,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn print_summary(summary: &BatchSummary) {
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "{} jobs in {:.2}s ({:.0} jobs/s): {} succeeded, {} failed",
        summary.total,
        secs,
        summary.total as f64 / secs.max(1e-9),
        summary.succeeded(),
        summary.total - summary.succeeded()
    );
    for (kind, count) in &summary.by_kind {
        println!("  {:<20} {count}", kind.as_str());
    }
    println!("report: {}", summary.report.display());
}

async fn batch(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let mut options = BatchOptions::new(args.module, args.input_dir, args.out);
    options.limits = args.guest.limits();
    options.entry = args.guest.entry();
    options.args = args.args;
    options.env = args.guest.env.clone();
    options.max_attempts = args.max_attempts;
    options.progress = !args.quiet;
    if let Some(n) = args.concurrency {
        options.concurrency = n;
    }
    options.sandbox.dir_grants = args
        .guest
        .dirs
        .iter()
        .map(|spec| DirGrant::parse(spec, args.guest.read_only_dirs))
        .collect::<Result<_, _>>()?;
    let summary = run_batch(options).await?;
    print_summary(&summary);
    Ok(if summary.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Batch(args) => batch(args).await,
    };
    result.unwrap_or_else(|error| {
        eprintln!("sluice: {error:#}");
        ExitCode::from(2)
    })
}
