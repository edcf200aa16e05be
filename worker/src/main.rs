//! `sluice-worker`: runs one module over stdin → stdout under the sandbox's limits,
//! mirroring `wasmtime run`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_shared::{Job, JobInput, Outcome, ReportLine};
use sluice_worker::cli::GuestArgs;
use sluice_worker::serve_config::ServeArgs;
use sluice_worker::{DirGrant, Sandbox, SandboxConfig};

/// Exit statuses. `run` otherwise exits with the guest's own status.
mod exit {
    /// `serve` drained after SIGTERM; `run`: the guest succeeded.
    pub const OK: u8 = 0;
    /// The worker failed for a reason that is not the operator's input (the sandbox
    /// could not be built, an I/O error writing a report).
    pub const FAILED: u8 = 1;
    /// A usage or configuration error: the message names the setting (clap's own
    /// usage errors exit 2 too).
    pub const USAGE: u8 = 2;
    /// `serve`: more runs stuck past their deadline than `--max-stuck` tolerates; the
    /// worker stopped claiming, recorded or released its jobs and wants a restart
    /// (EX_TEMPFAIL).
    pub const STUCK: u8 = 75;
    /// `run`: the sandbox (not the guest) ended the run; the outcome is on stderr.
    pub const SANDBOX_STOPPED: u8 = 125;
}

/// How a command failed, and so the exit status.
#[derive(Debug)]
enum Failure {
    Usage(anyhow::Error),
    Failed(anyhow::Error),
    Stuck(sluice_worker::executor::ExecutorError),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit::USAGE,
            Failure::Failed(_) => exit::FAILED,
            Failure::Stuck(_) => exit::STUCK,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(e) | Failure::Failed(e) => write!(f, "{e:#}"),
            Failure::Stuck(e) => write!(f, "{e}"),
        }
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

fn failed(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Failed(e.into())
}

#[derive(Parser)]
#[command(
    name = "sluice-worker",
    version,
    about = "Sluice worker: runs WebAssembly transforms under hard limits"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run MODULE (.wasm or .wat) with stdin as its input and stdout as its output.
    Run(RunArgs),
    /// Run jobs from a Redis queue until SIGTERM (then drain and exit 0).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The module: a .wasm binary or .wat text.
    module: PathBuf,
    #[command(flatten)]
    guest: GuestArgs,
    /// Also write the job's report (outcome, fuel, wall time, memory, the worker's peak
    /// RSS) as JSON to this file.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// Arguments passed to the guest after its argv[0].
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(serde::Serialize)]
struct RunReport {
    #[serde(flatten)]
    line: ReportLine,
    /// The worker process's peak resident set size (VmHWM), in bytes.
    peak_rss_bytes: Option<u64>,
}

/// The process's peak RSS from `/proc/self/status` (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let dir_grants = args
        .guest
        .dirs
        .iter()
        .map(|spec| DirGrant::parse(spec, args.guest.read_only_dirs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(anyhow::Error::from(e).context("--dir")))?;
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 1,
        dir_grants,
        ..SandboxConfig::default()
    })
    .map_err(failed)?;
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading module {}", args.module.display()))
        .map_err(usage)?;

    // Our own handles on fds 0 and 1: unbuffered reads of whole chunks in, and one
    // buffer out instead of std's line buffering.
    let stdin = File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(failed)?,
    );
    let stdout = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(failed)?,
    );
    let output = BufWriter::with_capacity(64 << 10, stdout);

    let (mut job, result) = match sandbox.load_module(&bytes) {
        Ok(module) => {
            let mut job = Job::new(module.hash(), JobInput::Stdin);
            job.entry = args
                .guest
                .entry()
                .unwrap_or_else(|| module.default_entry(&sandbox));
            job.args = args.args.clone();
            job.env = args.guest.env.clone();
            job.limits = args.guest.limits();
            let result = sandbox.run(&module, &job, Box::new(stdin), Box::new(output));
            (job, result)
        }
        Err(outcome) => {
            let job = Job::new(
                sluice_shared::ModuleHash::of(&bytes),
                JobInput::Inline(Vec::new()),
            );
            let result = sluice_shared::JobResult::without_run(job.id, outcome, 1);
            (job, result)
        }
    };
    job.label = args.module.display().to_string();

    std::io::stderr()
        .write_all(&result.stderr)
        .map_err(failed)?;
    if let Some(path) = &args.report {
        let report = RunReport {
            line: ReportLine::new(job.label.clone(), &result),
            peak_rss_bytes: peak_rss_bytes(),
        };
        let json = serde_json::to_vec(&report).map_err(failed)?;
        std::fs::write(path, json)
            .with_context(|| format!("writing report {}", path.display()))
            .map_err(failed)?;
    }
    Ok(match result.outcome {
        Outcome::Success => ExitCode::SUCCESS,
        Outcome::NonZeroExit { code } => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        outcome => {
            eprintln!("outcome: {outcome}");
            ExitCode::from(exit::SANDBOX_STOPPED)
        }
    })
}

async fn serve(args: ServeArgs) -> Result<ExitCode, Failure> {
    use sluice_shared::RetryPolicy;
    use sluice_shared::queue::redis::{RedisConfig, RedisQueue};
    use sluice_worker::executor::{self, ExecutorConfig};
    use sluice_worker::fleet::{RedisEnv, serve_metrics};
    use sluice_worker::metrics::WorkerMetrics;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    // Every setting is checked before anything starts: a bad one is a usage error.
    let settings = args.validate().map_err(usage)?;

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            sluice_worker::cli::terminated().await;
            tracing::info!("shutting down: no new claims, draining jobs in flight");
            shutdown.cancel();
        });
    }

    let mut config = RedisConfig::new(settings.redis_url.clone());
    if let Some(queue) = &settings.queue {
        config.queue = queue.clone();
    }
    config.tls_ca_pem = settings.redis_ca_pem.clone();
    if let Some(ttl) = settings.ttl {
        config.result_ttl = ttl;
        config.blob_ttl = ttl;
        config.notice_ttl = ttl.min(config.notice_ttl);
    }
    // Redis may not be up yet (or be restarting): keep trying until it is, or until
    // we are told to stop.
    let mut backoff = Duration::from_millis(100);
    let queue = loop {
        match RedisQueue::connect(config.clone()).await {
            Ok(queue) => break Arc::new(queue),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "cannot reach Redis");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            slots: u32::try_from(settings.slots).unwrap_or(u32::MAX),
            dir_grants: settings.dir_grants.clone(),
            ..SandboxConfig::default()
        })
        .map_err(failed)?,
    );
    let metrics = WorkerMetrics::new();
    if let Some(addr) = settings.metrics_addr {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        let listener = tokio::spawn(serve_metrics(addr, metrics, shutdown));
        tokio::spawn(async move {
            if let Ok(Err(error)) = listener.await {
                tracing::error!(%error, %addr, "metrics endpoint failed");
            }
        });
    }
    let env = Arc::new(RedisEnv::new(queue.clone(), sandbox.clone(), metrics));
    tracing::info!(
        consumer = %settings.consumer,
        slots = settings.slots,
        max_stuck = settings.max_stuck,
        queue = %queue.config().queue,
        "worker ready"
    );
    executor::run(
        queue,
        sandbox,
        env,
        ExecutorConfig {
            slots: settings.slots,
            consumer: settings.consumer,
            lease: settings.lease,
            grace: settings.grace,
            watchdog_grace: settings.watchdog_grace,
            max_stuck: Some(settings.max_stuck),
            retry: RetryPolicy {
                max_attempts: settings.max_attempts,
                ..RetryPolicy::default()
            },
            ..ExecutorConfig::default()
        },
        shutdown,
    )
    .await
    .map_err(Failure::Stuck)?;
    tracing::info!("drained; exiting");
    Ok(ExitCode::from(exit::OK))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(failed)
            .and_then(|runtime| {
                let served = runtime.block_on(serve(args));
                // Guests still running past the grace period were released to other
                // workers, and stuck threads cannot be stopped: do not wait for them.
                runtime.shutdown_timeout(std::time::Duration::from_millis(100));
                served
            }),
    };
    result.unwrap_or_else(|failure| {
        eprintln!("sluice-worker: {failure}");
        ExitCode::from(failure.code())
    })
}
