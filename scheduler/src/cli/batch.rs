//! `sluice batch`: run a module over every file of a directory, in-process or through
//! Redis, and print a summary; `sluice batch cancel|attach ID` for a distributed batch
//! by its id.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use sluice_shared::TenantId;
use sluice_worker::DirGrant;
use sluice_worker::cli::GuestArgs;

use super::RedisArgs;
use crate::batch::interrupt::INTERRUPTED_EXIT;
use crate::batch::{
    BatchOptions, BatchSummary, DEFAULT_MAX_ATTEMPTS, Interrupted, Interrupts, OutMode,
    OutputFormat, jobs, run_batch_with,
};
use crate::distributed::{self, OnInterrupt};

/// `sluice batch` flags, or one of its subcommands.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BatchArgs {
    /// `cancel` or `attach` a distributed batch by its id.
    #[command(subcommand)]
    pub command: Option<BatchCommand>,
    /// Running a batch.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `sluice batch cancel|attach`.
#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Cancel the jobs of a distributed batch that no worker has started (running
    /// jobs finish); prints how many were cancelled, running and finished.
    Cancel {
        /// The batch id `sluice batch --redis` printed.
        id: String,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Follow a distributed batch again (after it was detached or interrupted): write
    /// the outputs and report lines of its jobs not written to OUT yet.
    Attach {
        /// The batch id `sluice batch --redis` printed.
        id: String,
        /// The batch's output directory (created if missing; its report.jsonl says
        /// which jobs are written already).
        #[arg(long)]
        out: PathBuf,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
}

/// The flags of a batch run.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The module: a .wasm binary or .wat text (checked before any job runs).
    #[arg(long, required = true)]
    pub module: Option<PathBuf>,
    /// Directory whose regular files are the inputs, one job each (none may be named
    /// report.jsonl or .<name>.part).
    #[arg(required = true)]
    pub input_dir: Option<PathBuf>,
    /// Where outputs (OUT/<input name>) and OUT/report.jsonl go; must be empty unless
    /// --force or --resume.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// OUT is not empty: remove the previous run's outputs, report and partial files
    /// first.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// OUT is not empty: skip inputs whose successful output and report line exist,
    /// run the rest, append to the report.
    #[arg(long)]
    pub resume: bool,
    /// How an embedded batch writes its outputs: `files`, OUT/<input name> each, or
    /// `tar`, one archive OUT/outputs.tar with an entry per successful job (no file
    /// create per job; --resume refuses it).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "files",
        conflicts_with = "redis_url"
    )]
    pub output_format: OutputFormat,
    /// What the outputs of all slots may hold in memory at once, in-process: outputs
    /// are taken in memory (and written once the job ends) when --concurrency times
    /// --max-output is at most this, else they stream to OUT/.<name>.part as the guest
    /// writes them (0: always stream).
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "1GiB",
        value_parser = output_memory,
        conflicts_with = "redis_url"
    )]
    pub output_memory: u64,
    /// The job limits, entry point, environment and directory grants.
    #[command(flatten)]
    pub guest: GuestArgs,
    /// An argument passed to the guest (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Jobs run at once, in-process, 1 to 1024 (default: one per core).
    #[arg(long, value_parser = sluice_worker::cli::slots)]
    pub concurrency: Option<usize>,
    /// Attempts per job in-process, the first included; only timeouts and host errors
    /// are retried (the same default as `sluice-worker serve`; with --redis the
    /// workers' own setting applies).
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS)]
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
    /// PEM file of the CA that signed the Redis server's TLS certificate (rediss://).
    #[arg(long, env = "SLUICE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// With --redis: the URL names a Redis Cluster (seed nodes, comma-separated).
    // The variable reads as the worker's does: 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "SLUICE_REDIS_CLUSTER", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,
    /// The tenant the jobs run for (with --redis); limits are clamped to its policy.
    #[arg(long, default_value = "local")]
    pub tenant: String,
    /// With --redis, on the first Ctrl-C or SIGTERM: cancel the jobs not started, or
    /// detach and leave them to the workers (default: ask on a terminal, else detach).
    #[arg(long, value_enum)]
    pub on_interrupt: Option<OnInterrupt>,
}

/// `--output-memory`: a size, as every size flag is written.
fn output_memory(text: &str) -> Result<u64, String> {
    sluice_shared::units::parse_size(text).map_err(|e| e.to_string())
}

/// Prints what a batch did: counts, rate, outcomes by kind, whether it was
/// interrupted, its id and where the report is.
pub fn print_summary(summary: &BatchSummary) {
    let secs = summary.elapsed.as_secs_f64();
    let finished = summary.finished();
    println!(
        "{} in {:.2}s ({:.0} jobs/s): {} succeeded, {} failed",
        jobs(finished),
        secs,
        finished as f64 / secs.max(1e-9),
        summary.succeeded(),
        summary.failed()
    );
    for (kind, count) in &summary.by_kind {
        println!("  {:<20} {count}", kind.as_str());
    }
    if summary.skipped > 0 {
        println!("skipped: {} already done (--resume)", jobs(summary.skipped));
    }
    if let Some(how) = &summary.interrupted {
        let how = match how {
            Interrupted::Stopped => "running jobs finished",
            Interrupted::Aborted => "running jobs abandoned",
        };
        println!(
            "interrupted: {} of {} not finished ({how})",
            summary.total.saturating_sub(finished),
            jobs(summary.total)
        );
    }
    for note in &summary.notes {
        println!("  {note}");
    }
    if let Some(id) = &summary.batch_id {
        println!("batch: {id}");
    }
    println!("report: {}", summary.report.display());
}

/// The exit status for a summary: 130 interrupted, 0 every job succeeded, else 1. An
/// abandoned run ends the process here: guest threads still running are not waited
/// for.
fn exit_for(summary: &BatchSummary) -> ExitCode {
    match summary.interrupted {
        Some(Interrupted::Aborted) => {
            let _ = std::io::stdout().flush();
            std::process::exit(i32::from(INTERRUPTED_EXIT));
        }
        Some(Interrupted::Stopped) => ExitCode::from(INTERRUPTED_EXIT),
        None if summary.all_succeeded() => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

/// Runs the batch, or the subcommand; a batch exits 0 only when every job succeeded.
pub async fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(BatchCommand::Cancel { id, redis }) => {
            let queue = redis.connect().await?;
            let done = distributed::cancel(&queue, &id).await?;
            println!(
                "batch {id}: cancelled {}; {} running (they finish); {} already finished or cancelled",
                jobs(done.cancelled as usize),
                done.running,
                done.finished
            );
            if done.corrupt > 0 {
                println!(
                    "  {} left as they are: their records are corrupt",
                    jobs(done.corrupt as usize)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(BatchCommand::Attach {
            id,
            out,
            quiet,
            redis,
        }) => {
            let interrupts = Interrupts::from_signals()?;
            let Some(queue) = connect(&redis, &interrupts).await? else {
                return Ok(ExitCode::from(INTERRUPTED_EXIT));
            };
            let summary = distributed::attach(&queue, &id, &out, !quiet, &interrupts).await?;
            print_summary(&summary);
            Ok(exit_for(&summary))
        }
        None => run_batch_args(args.run).await,
    }
}

/// Connects, unless interrupted first (`None`: a signal came before Redis answered).
async fn connect(
    redis: &RedisArgs,
    interrupts: &Interrupts,
) -> anyhow::Result<Option<sluice_shared::queue::redis::RedisQueue>> {
    tokio::select! {
        queue = redis.connect() => Ok(Some(queue?)),
        () = interrupts.stop.cancelled() => {
            eprintln!("sluice: interrupted while connecting to Redis; nothing was submitted");
            Ok(None)
        }
    }
}

async fn run_batch_args(args: RunArgs) -> anyhow::Result<ExitCode> {
    let interrupts = Interrupts::from_signals()?;
    let (Some(module), Some(input_dir), Some(out)) = (args.module, args.input_dir, args.out) else {
        anyhow::bail!("sluice batch needs --module, INPUT_DIR and --out");
    };
    let mut options = BatchOptions::new(module, input_dir, out);
    options.out_mode = match (args.force, args.resume) {
        (true, _) => OutMode::Force,
        (_, true) => OutMode::Resume,
        _ => OutMode::Fresh,
    };
    options.output_format = args.output_format;
    options.output_memory = args.output_memory;
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
        None => run_batch_with(options, &interrupts).await?,
        Some(url) => {
            let redis = RedisArgs {
                redis_url: url,
                queue: args.queue.clone(),
                redis_ca: args.redis_ca.clone(),
                redis_cluster: args.redis_cluster,
            };
            let on_interrupt = args.on_interrupt.unwrap_or(OnInterrupt::Ask);
            let Some(queue) = connect(&redis, &interrupts).await? else {
                return Ok(ExitCode::from(INTERRUPTED_EXIT));
            };
            distributed::run_batch(Arc::new(queue), options, on_interrupt, &interrupts).await?
        }
    };
    print_summary(&summary);
    Ok(exit_for(&summary))
}
