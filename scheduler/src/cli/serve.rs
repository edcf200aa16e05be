//! `sluice serve`: the HTTP API (plus `/metrics`, `/healthz`, `/readyz`) and the
//! dispatcher, until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::RedisArgs;
use crate::api::{Api, ApiConfig, Hooks, ServerConfig, WaitLimits, router};

/// What `sluice serve` logs when `RUST_LOG` is unset: warnings and errors (with their
/// causes), and one info line per request (`sluice::api::request`: method, matched
/// route, status, latency, tenant).
pub const DEFAULT_LOG_FILTER: &str = "warn,sluice::api::request=info";

/// `sluice serve` flags.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Most unclaimed jobs the dispatcher keeps on the shared stream (at least 1); the
    /// rest wait in their tenants' backlogs. Workers claim only into free slots, so this
    /// is how many jobs a newly arriving tenant may wait behind: keep it small, raise it
    /// only for a large fleet of very short jobs (docs/admission.md).
    #[arg(long, env = "SLUICE_DISPATCH_WINDOW", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub dispatch_window: u64,
    /// A token that may manage tenants over HTTP (/v1/admin); none if unset.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Most HTTP connections open at once; more wait in the listen backlog.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A request's headers must arrive within this (idle keep-alive connections close
    /// after it too).
    #[arg(long, env = "SLUICE_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: std::time::Duration,
    /// A request body that sends nothing for this long is refused (408).
    #[arg(long, env = "SLUICE_BODY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub body_timeout: std::time::Duration,
    /// How long a module uploaded over HTTP is kept after its upload or its last use
    /// by a job.
    #[arg(long, env = "SLUICE_MODULE_TTL", default_value = "30d", value_parser = positive_duration)]
    pub module_ttl: std::time::Duration,
    /// The longest `POST /v1/jobs?wait=` a request may ask for; a longer one is refused
    /// (400, naming this maximum).
    #[arg(long, env = "SLUICE_MAX_WAIT", default_value = "30s", value_parser = positive_duration)]
    pub max_wait: std::time::Duration,
    /// Most requests waiting for their jobs at once (`?wait=`); past it a waiting
    /// submission is refused with 503 and `Retry-After` (without `wait` it is not).
    /// Default: 512, or half of --max-connections when that is less (each waiting
    /// request holds a connection).
    #[arg(long, env = "SLUICE_MAX_WAITERS", value_parser = clap::value_parser!(usize))]
    pub max_waiters: Option<usize>,
    /// Most requests one tenant may have waiting for their jobs at once; past it that
    /// tenant's waiting submissions are refused with 429 and `Retry-After`. Default:
    /// 64, or --max-waiters when that is less.
    #[arg(long, env = "SLUICE_MAX_WAITERS_PER_TENANT")]
    pub max_waiters_per_tenant: Option<usize>,
    /// Address of a second, operators-only /metrics: every series, the per-tenant ones
    /// included (the API port's public /metrics leaves out every series naming a
    /// tenant). Bind it where tenants cannot reach it.
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Most tenants named in the tenant metrics of --metrics-listen: the largest by
    /// backlog + in-flight keep their names, the rest are summed into `tenant="other"`.
    #[arg(long, env = "SLUICE_METRICS_MAX_TENANTS", default_value_t = crate::metrics::DEFAULT_MAX_TENANTS,
          value_parser = crate::metrics::parse_max_tenants)]
    pub metrics_max_tenants: usize,
    /// How long one read of the queue state from Redis serves /metrics scrapes (at
    /// least 1s, so a scrape storm cannot hammer Redis).
    #[arg(long, env = "SLUICE_METRICS_CACHE", default_value = "1s",
          value_parser = crate::metrics::parse_cache_period)]
    pub metrics_cache: std::time::Duration,
    /// Where the queue is.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// A duration that must be more than zero (a zero timeout would refuse everything).
fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    match sluice_shared::units::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// The largest `--max-wait` accepted.
const MAX_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Serves the HTTP API, with the dispatcher beside it, until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections: must be at least 1"
    );
    anyhow::ensure!(
        args.dispatch_window > 0,
        "--dispatch-window: must be at least 1"
    );
    // Defaults follow the connection cap, so lowering it alone stays a valid setting;
    // values given explicitly are checked against it.
    let max_waiters = args.max_waiters.unwrap_or_else(|| {
        crate::api::DEFAULT_MAX_WAITERS
            .min(args.max_connections / 2)
            .max(1)
    });
    let max_waiters_per_tenant = args
        .max_waiters_per_tenant
        .unwrap_or_else(|| crate::api::DEFAULT_MAX_WAITERS_PER_TENANT.min(max_waiters));
    anyhow::ensure!(
        max_waiters > 0 && max_waiters_per_tenant > 0,
        "--max-waiters, --max-waiters-per-tenant: must be at least 1"
    );
    anyhow::ensure!(
        max_waiters_per_tenant <= max_waiters,
        "--max-waiters-per-tenant: must be at most --max-waiters ({max_waiters})"
    );
    anyhow::ensure!(
        max_waiters <= args.max_connections,
        "--max-waiters: must be at most --max-connections ({}); waiting requests each hold a connection",
        args.max_connections
    );
    anyhow::ensure!(
        args.max_wait <= MAX_MAX_WAIT,
        "--max-wait: at most 1h (a longer job is better followed by its id)"
    );
    let queue = Arc::new(args.redis.connect().await?);
    let submitted = Arc::new(tokio::sync::Notify::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let health = crate::dispatch::Health::new();
    // The queue state is read over a read-only connection of its own.
    let metrics = crate::metrics::Metrics::new().with_queue_state(crate::metrics::QueueState::new(
        vec![args.redis.config()?],
        args.metrics_max_tenants,
        args.metrics_cache,
    ));
    let dispatcher = tokio::spawn(crate::dispatch::run(
        queue.clone(),
        args.dispatch_window,
        submitted.clone(),
        health.clone(),
        shutdown.clone(),
        metrics.scheduler.clone(),
    ));
    let config = ApiConfig {
        body_idle_timeout: args.body_timeout,
        module_ttl: args.module_ttl,
        waits: WaitLimits {
            max_wait: args.max_wait,
            max_waiters,
            max_per_tenant: max_waiters_per_tenant,
        },
        ..ApiConfig::default()
    };
    let api = Api::new(queue, args.admin_token.as_deref(), submitted)
        .with_config(config)
        .with_metrics(metrics.clone())
        .with_dispatcher_health(health);
    // SIGTERM ends every wait first: waiting clients get 202 with their job's id at
    // once instead of a connection cut at the end of the shutdown grace.
    let waits = api.wait_closing();
    let app = router(Arc::new(api), metrics.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("sluice serve: listening on {}", listener.local_addr()?);
    let private_metrics = match args.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?;
            eprintln!("sluice serve: metrics on {}", listener.local_addr()?);
            let router = crate::cli::exporter::router(metrics.clone());
            // Operators' scrapers only: the endpoint's bounds, not the API's. No hooks:
            // the scheduler's metrics count the API's connections; evictions are logged.
            Some(tokio::spawn(crate::api::serve(
                listener,
                router,
                ServerConfig::ENDPOINT,
                Hooks::none(),
                shutdown.clone().cancelled_owned(),
            )))
        }
        None => None,
    };
    let server = ServerConfig {
        max_connections: args.max_connections,
        header_read_timeout: args.header_timeout,
        ..ServerConfig::default()
    };
    crate::api::serve(
        listener,
        app,
        server,
        Hooks {
            opened: Box::new(move || metrics.connection_opened()),
            // The API never evicts (`ServerConfig::API`).
            evicted: Box::new(|| ()),
        },
        async move {
            sluice_worker::cli::terminated().await;
            waits.cancel();
        },
    )
    .await;
    shutdown.cancel();
    let _ = dispatcher.await;
    if let Some(private_metrics) = private_metrics {
        let _ = private_metrics.await;
    }
    Ok(ExitCode::SUCCESS)
}
