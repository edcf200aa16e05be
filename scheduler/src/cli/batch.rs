//! `sluice batch`: run a module over every file of a directory, in-process or through
//! Redis, and print a summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use sluice_shared::TenantId;
use sluice_worker::DirGrant;
use sluice_worker::cli::GuestArgs;

use super::RedisArgs;
use crate::batch::{BatchOptions, BatchSummary, run_batch};
use crate::distributed;

/// `sluice batch` flags.
#[derive(Args, Debug)]
pub struct BatchArgs {
    /// The module: a .wasm binary or .wat text.
    #[arg(long)]
    pub module: PathBuf,
    /// Directory whose regular files are the inputs, one job each.
    pub input_dir: PathBuf,
    /// Where outputs and report.jsonl go.
    #[arg(long)]
    pub out: PathBuf,
    /// The job limits, entry point, environment and directory grants.
    #[command(flatten)]
    pub guest: GuestArgs,
    /// An argument passed to the guest (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Jobs run at once, in-process, 1 to 1024 (default: one per core).
    #[arg(long, value_parser = sluice_worker::cli::slots)]
    pub concurrency: Option<usize>,
    /// Attempts per job; only timeouts and host errors are retried.
    #[arg(long, default_value_t = 1)]
    pub max_attempts: u32,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Run through this Redis and its workers instead of in-process.
    #[arg(long = "redis", env = "SLUICE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Queue name (with --redis).
    #[arg(long, env = "SLUICE_QUEUE", default_value = "default")]
    pub queue: String,
    /// The tenant the jobs run for (with --redis); limits are clamped to its policy.
    #[arg(long, default_value = "local")]
    pub tenant: String,
}

/// Prints what a batch did: counts, rate, outcomes by kind and where the report is.
pub fn print_summary(summary: &BatchSummary) {
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

/// Runs the batch; exits 0 only when every job succeeded.
pub async fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let mut options = BatchOptions::new(args.module, args.input_dir, args.out);
    options.limits = args.guest.limits();
    options.entry = args.guest.entry();
    options.args = args.args;
    options.env = args.guest.env.clone();
    options.max_attempts = args.max_attempts;
    options.progress = !args.quiet;
    sluice_shared::tenant::validate_name(&args.tenant)?;
    options.tenant = TenantId(args.tenant.clone());
    if let Some(n) = args.concurrency {
        options.concurrency = n;
    }
    options.sandbox.dir_grants = args
        .guest
        .dirs
        .iter()
        .map(|spec| DirGrant::parse(spec, args.guest.read_only_dirs))
        .collect::<Result<_, _>>()?;
    let summary = match args.redis_url {
        None => run_batch(options).await?,
        Some(url) => {
            let redis = RedisArgs {
                redis_url: url,
                queue: args.queue.clone(),
                redis_ca: std::env::var_os("SLUICE_REDIS_CA").map(PathBuf::from),
            };
            distributed::run_batch(Arc::new(redis.connect().await?), options).await?
        }
    };
    print_summary(&summary);
    Ok(if summary.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
