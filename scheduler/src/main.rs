//! `sluice`: the Sluice command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice_scheduler::batch::{BatchOptions, BatchSummary, run_batch};
use sluice_scheduler::{bench, distributed};
use sluice_shared::queue::redis::{RedisConfig, RedisQueue};
use sluice_shared::units::parse_duration;
use sluice_shared::{Job, JobId, Queue, ReportLine, TenantId, TenantPolicy};
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

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Most unclaimed jobs the dispatcher keeps on the shared stream (at least 1); the
    /// rest wait in their tenants' backlogs. Workers claim only into free slots, so this
    /// is how many jobs a newly arriving tenant may wait behind: keep it small, raise it
    /// only for a large fleet of very short jobs (docs/admission.md).
    #[arg(long, env = "SLUICE_DISPATCH_WINDOW", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    dispatch_window: u64,
    /// A token that may manage tenants over HTTP (/v1/admin); none if unset.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Most HTTP connections open at once; more wait in the listen backlog.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// A request's headers must arrive within this (idle keep-alive connections close
    /// after it too).
    #[arg(long, env = "SLUICE_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    header_timeout: std::time::Duration,
    /// A request body that sends nothing for this long is refused (408).
    #[arg(long, env = "SLUICE_BODY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    body_timeout: std::time::Duration,
    /// How long a module uploaded over HTTP is kept after its upload or its last use
    /// by a job.
    #[arg(long, env = "SLUICE_MODULE_TTL", default_value = "30d", value_parser = positive_duration)]
    module_ttl: std::time::Duration,
    #[command(flatten)]
    redis: RedisArgs,
}

/// A duration that must be more than zero (a zero timeout would refuse everything).
fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    match sluice_shared::units::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A tenant policy, as flags (unset ones keep their current or default values).
#[derive(Args, Debug, Default)]
struct PolicyArgs {
    /// Largest fuel budget; every job of the tenant then runs metered.
    #[arg(long)]
    max_fuel: Option<u64>,
    /// Allow unmetered jobs again (clears --max-fuel).
    #[arg(long, conflicts_with = "max_fuel")]
    unmetered: bool,
    /// Largest guest memory.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    max_memory: Option<u64>,
    /// Longest deadline.
    #[arg(long, value_parser = sluice_shared::units::parse_duration)]
    max_timeout: Option<std::time::Duration>,
    /// Largest output.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    max_output: Option<u64>,
    /// Most jobs running at once.
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Most jobs started per second (a positive finite number).
    #[arg(long)]
    rate: Option<f64>,
    /// Allow any start rate again (clears --rate).
    #[arg(long, conflicts_with = "rate")]
    no_rate: bool,
    /// Largest input of one job.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    max_input: Option<u64>,
    /// Most arguments of one job.
    #[arg(long)]
    max_args: Option<u32>,
    /// Most environment variables of one job.
    #[arg(long)]
    max_env: Option<u32>,
    /// Most bytes of one job's arguments and environment together.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    max_args_env: Option<u64>,
    /// Most inputs in one batch request.
    #[arg(long)]
    max_batch_jobs: Option<u32>,
    /// Most bytes one batch request may enqueue.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    max_batch_bytes: Option<u64>,
    /// Most input bytes stored for the tenant within one blob lifetime.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    max_stored: Option<u64>,
    /// Most modules the tenant may hold.
    #[arg(long)]
    max_modules: Option<u32>,
    /// Most jobs waiting in the tenant's backlog.
    #[arg(long)]
    max_backlog: Option<u64>,
}

impl PolicyArgs {
    /// `policy` with the flags applied, checked value by value.
    fn apply(&self, mut policy: TenantPolicy) -> anyhow::Result<TenantPolicy> {
        if self.unmetered {
            policy.max_fuel = None;
        }
        if let Some(v) = self.max_fuel {
            policy.max_fuel = Some(v);
        }
        if let Some(v) = self.max_memory {
            policy.max_memory_bytes = v;
        }
        if let Some(v) = self.max_timeout {
            policy.max_timeout_ms = sluice_shared::units::millis_at_least_one(v);
        }
        if let Some(v) = self.max_output {
            policy.max_output_bytes = v;
        }
        if let Some(v) = self.max_concurrent {
            policy.max_concurrent_jobs = v;
        }
        if let Some(v) = self.rate {
            policy.rate_per_second = Some(v);
        }
        if self.no_rate {
            policy.rate_per_second = None;
        }
        let quotas = [
            (&mut policy.max_input_bytes, self.max_input),
            (&mut policy.max_args_env_bytes, self.max_args_env),
            (&mut policy.max_batch_bytes, self.max_batch_bytes),
            (&mut policy.max_stored_bytes, self.max_stored),
            (&mut policy.max_backlog_jobs, self.max_backlog),
        ];
        for (field, value) in quotas {
            if let Some(v) = value {
                *field = v;
            }
        }
        let counts = [
            (&mut policy.max_args, self.max_args),
            (&mut policy.max_env, self.max_env),
            (&mut policy.max_batch_jobs, self.max_batch_jobs),
            (&mut policy.max_modules, self.max_modules),
        ];
        for (field, value) in counts {
            if let Some(v) = value {
                *field = v;
            }
        }
        policy.validate()?;
        Ok(policy)
    }

    fn is_empty(&self) -> bool {
        self.max_fuel.is_none()
            && !self.unmetered
            && self.max_memory.is_none()
            && self.max_timeout.is_none()
            && self.max_output.is_none()
            && self.max_concurrent.is_none()
            && self.rate.is_none()
            && !self.no_rate
            && self.max_input.is_none()
            && self.max_args.is_none()
            && self.max_env.is_none()
            && self.max_args_env.is_none()
            && self.max_batch_jobs.is_none()
            && self.max_batch_bytes.is_none()
            && self.max_stored.is_none()
            && self.max_modules.is_none()
            && self.max_backlog.is_none()
    }
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints its first token (shown once: only its hash is stored).
    Create {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Issue another token for a tenant; prints it.
    Token {
        name: String,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Revoke every token of a tenant.
    Revoke {
        name: String,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Show a tenant's policy, or change it with flags.
    Policy {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// List tenants and their policies (JSON lines).
    List(RedisArgs),
}

/// Where the queue is.
#[derive(Args, Clone)]
struct RedisArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], or rediss:// for TLS.
    #[arg(long = "redis", env = "SLUICE_REDIS_URL")]
    redis_url: String,
    /// Queue name.
    #[arg(long, env = "SLUICE_QUEUE", default_value = "default")]
    queue: String,
    /// PEM file of the CA that signed the Redis server's TLS certificate (rediss://).
    #[arg(long, env = "SLUICE_REDIS_CA")]
    redis_ca: Option<PathBuf>,
}

impl RedisArgs {
    async fn connect(&self) -> anyhow::Result<RedisQueue> {
        let mut config = RedisConfig::new(&self.redis_url);
        config.queue = self.queue.clone();
        if let Some(ca) = &self.redis_ca {
            config.tls_ca_pem =
                Some(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
        }
        RedisQueue::connect(config)
            .await
            .with_context(|| format!("connecting to {}", self.redis_url))
    }
}

#[derive(Args)]
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
    /// Jobs run at once, in-process (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Attempts per job; only timeouts and host errors are retried.
    #[arg(long, default_value_t = 1)]
    max_attempts: u32,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Run through this Redis and its workers instead of in-process.
    #[arg(long = "redis", env = "SLUICE_REDIS_URL")]
    redis_url: Option<String>,
    /// Queue name (with --redis).
    #[arg(long, env = "SLUICE_QUEUE", default_value = "default")]
    queue: String,
    /// The tenant the jobs run for (with --redis); limits are clamped to its policy.
    #[arg(long, default_value = "local")]
    tenant: String,
}

#[derive(Subcommand)]
enum ModuleCommand {
    /// Validate FILE (.wasm or .wat), store it content-addressed, print its hash.
    Put {
        file: PathBuf,
        /// Also name it (jobs may then say --module NAME).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Delete a module: a NAME deletes that name; a HASH deletes the bytes (jobs that
    /// name them then fail as invalid_module).
    Rm {
        name: String,
        #[command(flatten)]
        redis: RedisArgs,
    },
}

#[derive(Args)]
struct SubmitArgs {
    /// Module hash or name (see `sluice module put`).
    #[arg(long)]
    module: String,
    /// The input file (`-` for stdin).
    #[arg(long, default_value = "-")]
    input: PathBuf,
    #[command(flatten)]
    guest: GuestArgs,
    /// An argument passed to the guest (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Run no earlier than this (milliseconds since the Unix epoch).
    #[arg(long, value_name = "UNIX_MS", conflicts_with = "delay")]
    at: Option<u64>,
    /// Run after this delay (measured on the Redis server's clock).
    #[arg(long, value_name = "DURATION")]
    delay: Option<String>,
    /// The tenant the job runs for; its limits are clamped to the tenant's policy.
    #[arg(long, default_value = "local")]
    tenant: String,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Args)]
struct ResultArgs {
    /// The job id.
    id: JobId,
    /// Write the job's output here (`-` for stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters as JSON lines.
    List(RedisArgs),
    /// Put a dead letter (or --all) back on the queue.
    Retry {
        /// The dead letter's id (from `dlq list`).
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Delete every dead letter.
    Purge(RedisArgs),
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

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let queue = args.redis.connect().await?;
    let module = queue
        .modules()
        .resolve(&args.module)
        .await?
        .with_context(|| format!("no module named {}", args.module))?;
    let wasm = queue
        .modules()
        .get(&module)
        .await?
        .with_context(|| format!("module {module} is not stored"))?;
    let input = if args.input.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stdin");
        std::fs::write(&path, &bytes)?;
        distributed::upload_input(&queue, &path, bytes.len() as u64).await?
    } else {
        let len = std::fs::metadata(&args.input)
            .with_context(|| format!("reading {}", args.input.display()))?
            .len();
        distributed::upload_input(&queue, &args.input, len).await?
    };
    let mut job = Job::new(module, input);
    job.entry = args
        .guest
        .entry()
        .unwrap_or_else(|| sluice_scheduler::modules::default_entry(&wasm));
    job.args = args.args;
    job.env = args.guest.env.clone();
    sluice_shared::tenant::validate_name(&args.tenant)?;
    job.limits = distributed::clamp_to_policy(&queue, &args.tenant, &args.guest.limits()).await?;
    job.tenant = TenantId(args.tenant);
    job.label = args.input.display().to_string();
    let due = match (args.at, &args.delay) {
        (Some(at), _) => Some(at),
        (None, Some(delay)) => {
            let delay = parse_duration(delay)?;
            Some(queue.server_time_ms().await? + delay.as_millis() as u64)
        }
        (None, None) => None,
    };
    match due {
        Some(due) => queue.schedule(std::slice::from_ref(&job), due).await?,
        None => queue.enqueue(std::slice::from_ref(&job)).await?,
    }
    println!("{}", job.id);
    Ok(ExitCode::SUCCESS)
}

async fn status(redis: RedisArgs) -> anyhow::Result<ExitCode> {
    let queue = redis.connect().await?;
    let status = queue.admin().status().await?;
    let s = &status.stats;
    println!("queue {}", redis.queue);
    println!(
        "  ready {}  leased {}  delayed {}  completed {}  dead {}",
        s.ready, s.leased, s.delayed, s.completed, s.dead
    );
    println!(
        "  retried {}  duplicates {}  dlq retried {}",
        status.retried, status.duplicates, status.dlq_retried
    );
    println!("workers ({}):", status.consumers.len());
    for c in &status.consumers {
        println!(
            "  {:<32} pending {:<6} idle {} ms",
            c.name, c.pending, c.idle_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn result(args: ResultArgs) -> anyhow::Result<ExitCode> {
    let queue = args.redis.connect().await?;
    let Some(result) = queue.result(args.id).await? else {
        eprintln!(
            "sluice: no result for {} (not finished, unknown, or expired)",
            args.id
        );
        return Ok(ExitCode::FAILURE);
    };
    println!("{}", serde_json::to_string(&ReportLine::new("", &result))?);
    if let Some(path) = args.output {
        if path.as_os_str() == "-" {
            distributed::write_output(&queue, &result, tokio::io::stdout()).await?;
        } else {
            let file = tokio::fs::File::create(&path).await?;
            distributed::write_output(&queue, &result, file).await?;
        }
    }
    Ok(if result.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List(redis) => {
            for dead in redis.connect().await?.dead_letters().await? {
                println!("{}", serde_json::to_string(&dead)?);
            }
        }
        DlqCommand::Retry { id, all, redis } => {
            anyhow::ensure!(all || id.is_some(), "name a dead letter id, or --all");
            let moved = redis
                .connect()
                .await?
                .admin()
                .dlq_retry(id.as_deref())
                .await?;
            println!("re-enqueued {moved}");
        }
        DlqCommand::Purge(redis) => {
            println!(
                "purged {}",
                redis.connect().await?.admin().dlq_purge().await?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tenant(command: TenantCommand) -> anyhow::Result<ExitCode> {
    match command {
        TenantCommand::Create {
            name,
            policy,
            redis,
        } => {
            let queue = redis.connect().await?;
            let token = queue
                .tenants()
                .create(&name, &policy.apply(TenantPolicy::default())?)
                .await?
                .with_context(|| format!("tenant {name} already exists"))?;
            println!("{token}");
        }
        TenantCommand::Token { name, redis } => {
            println!(
                "{}",
                redis.connect().await?.tenants().issue_token(&name).await?
            );
        }
        TenantCommand::Revoke { name, redis } => {
            println!(
                "revoked {}",
                redis
                    .connect()
                    .await?
                    .tenants()
                    .revoke_tokens(&name)
                    .await?
            );
        }
        TenantCommand::Policy {
            name,
            policy,
            redis,
        } => {
            let queue = redis.connect().await?;
            let current = queue
                .tenants()
                .policy(&name)
                .await?
                .with_context(|| format!("no tenant {name}"))?;
            let updated = policy.apply(current.clone())?;
            if !policy.is_empty() {
                queue.tenants().set_policy(&name, &updated).await?;
            }
            println!("{}", serde_json::to_string(&updated)?);
        }
        TenantCommand::List(redis) => {
            for (name, policy) in redis.connect().await?.tenants().all().await? {
                println!(
                    "{}",
                    serde_json::json!({ "tenant": name, "policy": policy })
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    use sluice_scheduler::api::{Api, ApiConfig, ServerConfig, router};
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections: must be at least 1"
    );
    anyhow::ensure!(
        args.dispatch_window > 0,
        "--dispatch-window: must be at least 1"
    );
    let queue = Arc::new(args.redis.connect().await?);
    let submitted = Arc::new(tokio::sync::Notify::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let health = sluice_scheduler::dispatch::Health::new();
    let dispatcher = tokio::spawn(sluice_scheduler::dispatch::run(
        queue.clone(),
        args.dispatch_window,
        submitted.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let metrics = sluice_scheduler::api_metrics::ApiMetrics::new();
    let config = ApiConfig {
        body_idle_timeout: args.body_timeout,
        module_ttl: args.module_ttl,
        ..ApiConfig::default()
    };
    let api = Api::new(queue, args.admin_token.as_deref(), submitted)
        .with_config(config)
        .with_metrics(metrics.clone())
        .with_dispatcher_health(health);
    let app = router(Arc::new(api), metrics.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("sluice serve: listening on {}", listener.local_addr()?);
    let server = ServerConfig {
        max_connections: args.max_connections,
        header_read_timeout: args.header_timeout,
        ..ServerConfig::default()
    };
    sluice_scheduler::api::serve(
        listener,
        app,
        server,
        metrics,
        sluice_worker::cli::terminated(),
    )
    .await;
    shutdown.cancel();
    let _ = dispatcher.await;
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Batch(args) => batch(args).await,
        Command::Module(ModuleCommand::Put { file, name, redis }) => {
            async {
                let queue = redis.connect().await?;
                let (hash, _) = distributed::put_module(&queue, &file, name.as_deref()).await?;
                println!("{hash}");
                Ok(ExitCode::SUCCESS)
            }
            .await
        }
        Command::Module(ModuleCommand::Rm { name, redis }) => {
            async {
                let queue = redis.connect().await?;
                anyhow::ensure!(
                    queue.modules().remove(&name).await?,
                    "no module named {name}"
                );
                println!("deleted {name}");
                Ok(ExitCode::SUCCESS)
            }
            .await
        }
        Command::Submit(args) => submit(args).await,
        Command::Status(redis) => status(redis).await,
        Command::Result(args) => result(args).await,
        Command::Dlq(command) => dlq(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Tenant(command) => tenant(command).await,
        Command::Serve(args) => serve(args).await,
    };
    result.unwrap_or_else(|error| {
        eprintln!("sluice: {error:#}");
        ExitCode::from(2)
    })
}
