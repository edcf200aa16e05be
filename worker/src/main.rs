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
use sluice_worker::{DirGrant, Sandbox, SandboxConfig};

/// Exit status when the sandbox (not the guest) ended the run.
const EXIT_SANDBOX_STOPPED: u8 = 125;

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

/// `serve` settings. Each flag has a `SLUICE_*` environment equivalent, and any left
/// unset is taken from `--config FILE` (TOML with the same names, `-` as `_`).
#[derive(clap::Args, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], or rediss:// for TLS.
    #[arg(long = "redis", env = "SLUICE_REDIS_URL")]
    #[serde(rename = "redis")]
    redis_url: Option<String>,
    /// Queue name.
    #[arg(long, env = "SLUICE_QUEUE")]
    queue: Option<String>,
    /// PEM file of the CA that signed the Redis server's TLS certificate (rediss://).
    #[arg(long, env = "SLUICE_REDIS_CA")]
    redis_ca: Option<PathBuf>,
    /// Job slots (jobs run at once). Default: 4 per core.
    #[arg(long, env = "SLUICE_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Serve /metrics and /healthz on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "SLUICE_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Visibility timeout: a job whose worker stops renewing its lease for this long is
    /// taken over by another worker. Default 30s.
    #[arg(long, env = "SLUICE_LEASE")]
    lease: Option<String>,
    /// On SIGTERM, how long jobs in flight may take before they are released. Default 30s.
    #[arg(long, env = "SLUICE_GRACE")]
    grace: Option<String>,
    /// Attempts per job (only transient failures are retried). Default 3.
    #[arg(long, env = "SLUICE_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,
    /// How long results, completion notices and output blobs are kept. Default: results
    /// and blobs 24h, notices 1h.
    #[arg(long, env = "SLUICE_TTL")]
    ttl: Option<String>,
    /// This worker's consumer name in the queue. Default: host-pid.
    #[arg(long, env = "SLUICE_CONSUMER")]
    consumer: Option<String>,
    /// Directories granted to every guest, HOST::GUEST (never `/`).
    #[arg(long = "dir", env = "SLUICE_DIRS", value_delimiter = ',')]
    #[serde(default)]
    dirs: Vec<String>,
    /// A TOML file with any of the settings above.
    #[arg(long, env = "SLUICE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
}

impl ServeArgs {
    /// Fills every setting the command line and environment left unset from the file.
    fn merged(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let file: ServeArgs =
            toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
        self.redis_url = self.redis_url.or(file.redis_url);
        self.queue = self.queue.or(file.queue);
        self.concurrency = self.concurrency.or(file.concurrency);
        self.metrics_addr = self.metrics_addr.or(file.metrics_addr);
        self.lease = self.lease.or(file.lease);
        self.grace = self.grace.or(file.grace);
        self.max_attempts = self.max_attempts.or(file.max_attempts);
        self.consumer = self.consumer.or(file.consumer);
        self.ttl = self.ttl.or(file.ttl);
        self.redis_ca = self.redis_ca.or(file.redis_ca);
        if self.dirs.is_empty() {
            self.dirs = file.dirs;
        }
        Ok(self)
    }
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

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let dir_grants = args
        .guest
        .dirs
        .iter()
        .map(|spec| DirGrant::parse(spec, args.guest.read_only_dirs))
        .collect::<Result<Vec<_>, _>>()?;
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 1,
        dir_grants,
        ..SandboxConfig::default()
    })?;
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading module {}", args.module.display()))?;

    // Our own handles on fds 0 and 1: unbuffered reads of whole chunks in, and one
    // buffer out instead of std's line buffering.
    let stdin = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let output = BufWriter::with_capacity(64 << 10, stdout);

    let (mut job, result) = match sandbox.load_module(&bytes) {
        Ok(module) => {
            let mut job = Job::new(
                module.hash(),
                JobInput::Blob {
                    uri: "stdin:".into(),
                    len: 0,
                },
            );
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

    std::io::stderr().write_all(&result.stderr)?;
    if let Some(path) = &args.report {
        let report = RunReport {
            line: ReportLine::new(job.label.clone(), &result),
            peak_rss_bytes: peak_rss_bytes(),
        };
        std::fs::write(path, serde_json::to_vec(&report)?)
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    Ok(match result.outcome {
        Outcome::Success => ExitCode::SUCCESS,
        Outcome::NonZeroExit { code } => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        outcome => {
            eprintln!("outcome: {outcome}");
            ExitCode::from(EXIT_SANDBOX_STOPPED)
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    use sluice_shared::RetryPolicy;
    use sluice_shared::queue::redis::{RedisConfig, RedisQueue};
    use sluice_shared::units::parse_duration;
    use sluice_worker::executor::{self, ExecutorConfig};
    use sluice_worker::fleet::{RedisEnv, serve_metrics};
    use sluice_worker::metrics::WorkerMetrics;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    let args = args.merged()?;
    let url = args
        .redis_url
        .context("no Redis configured: pass --redis URL or set SLUICE_REDIS_URL")?;
    let duration = |value: &Option<String>, default: Duration| -> anyhow::Result<Duration> {
        value
            .as_deref()
            .map_or(Ok(default), |v| Ok(parse_duration(v)?))
    };
    let lease = duration(&args.lease, Duration::from_secs(30))?;
    let grace = duration(&args.grace, Duration::from_secs(30))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slots = args.concurrency.unwrap_or(cores * 4).max(1);
    let consumer = args.consumer.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let dir_grants = args
        .dirs
        .iter()
        .map(|spec| DirGrant::parse(spec, true))
        .collect::<Result<Vec<_>, _>>()?;

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            sluice_worker::cli::terminated().await;
            tracing::info!("shutting down: no new claims, draining jobs in flight");
            shutdown.cancel();
        });
    }

    let mut config = RedisConfig::new(url);
    if let Some(queue) = args.queue {
        config.queue = queue;
    }
    if let Some(ca) = &args.redis_ca {
        config.tls_ca_pem =
            Some(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
    }
    if let Some(ttl) = &args.ttl {
        let ttl = parse_duration(ttl)?;
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
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        slots: u32::try_from(slots).unwrap_or(u32::MAX),
        dir_grants,
        ..SandboxConfig::default()
    })?);
    let metrics = WorkerMetrics::new();
    if let Some(addr) = args.metrics_addr {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        let listener = tokio::spawn(serve_metrics(addr, metrics, shutdown));
        tokio::spawn(async move {
            if let Ok(Err(error)) = listener.await {
                tracing::error!(%error, %addr, "metrics endpoint failed");
            }
        });
    }
    let env = Arc::new(RedisEnv::new(queue.clone(), sandbox.clone(), metrics));
    tracing::info!(%consumer, slots, queue = %queue.config().queue, "worker ready");
    executor::run(
        queue,
        sandbox,
        env,
        ExecutorConfig {
            slots,
            consumer,
            lease,
            grace,
            retry: RetryPolicy {
                max_attempts: args.max_attempts.unwrap_or(3).max(1),
                ..RetryPolicy::default()
            },
            ..ExecutorConfig::default()
        },
        shutdown,
    )
    .await;
    tracing::info!("drained; exiting");
    Ok(ExitCode::SUCCESS)
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
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                let served = runtime.block_on(serve(args));
                // Guests still running past the grace period were released to other
                // workers; do not wait for them.
                runtime.shutdown_timeout(std::time::Duration::from_millis(100));
                served
            }),
    };
    result.unwrap_or_else(|error| {
        eprintln!("sluice-worker: {error:#}");
        ExitCode::from(EXIT_SANDBOX_STOPPED)
    })
}
