//! `sluice exporter`: the queue-state metrics of one or more queues at `/metrics` (and
//! `/healthz`), for fleets that do not run `sluice serve`. The same figures as `sluice
//! serve`'s `--metrics-listen` reads (`crate::metrics::queue`), one series per queue
//! however many workers there are. Read-only: it creates no stream or group and needs
//! only read commands, so a read-only ACL user serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use clap::Args;

use super::RedisArgs;
use crate::metrics::{
    DEFAULT_MAX_TENANTS, Metrics, QueueState, parse_cache_period, parse_max_tenants,
};
use sluice_shared::queue::redis::{gauge_client, redacted_url};

/// Most queues one exporter watches.
pub const MAX_QUEUES: usize = 64;

/// `sluice exporter` flags.
#[derive(Args)]
pub struct ExporterArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], or rediss:// for TLS.
    #[arg(long = "redis", env = "SLUICE_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// Address to serve /metrics and /healthz on.
    #[arg(long, env = "SLUICE_EXPORTER_LISTEN")]
    pub listen: SocketAddr,
    /// A queue to watch (repeat for several; comma-separated in SLUICE_QUEUE).
    #[arg(
        long = "queue",
        env = "SLUICE_QUEUE",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,
    /// PEM file of the CA that signed the Redis server's TLS certificate (rediss://).
    #[arg(long, env = "SLUICE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// The Redis URL names a Redis Cluster (seed nodes, comma-separated).
    // The variable reads as the worker's does: 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "SLUICE_REDIS_CLUSTER", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,
    /// Most tenants named in the tenant metrics, per queue: the largest by backlog +
    /// in-flight keep their names, the rest are summed into `tenant="other"`.
    #[arg(long, env = "SLUICE_METRICS_MAX_TENANTS", default_value_t = DEFAULT_MAX_TENANTS,
          value_parser = parse_max_tenants)]
    pub metrics_max_tenants: usize,
    /// How long one read of the queues' state from Redis serves /metrics scrapes (at
    /// least 1s, so a scrape storm cannot hammer Redis).
    #[arg(long, env = "SLUICE_METRICS_CACHE", default_value = "1s", value_parser = parse_cache_period)]
    pub metrics_cache: std::time::Duration,
}

/// The password of the URL never shows in debug output.
impl std::fmt::Debug for ExporterArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterArgs")
            .field(
                "redis_url",
                &sluice_shared::queue::redis::redacted_url(&self.redis_url),
            )
            .field("listen", &self.listen)
            .field("queues", &self.queues)
            .field("redis_ca", &self.redis_ca)
            .field("redis_cluster", &self.redis_cluster)
            .field("metrics_max_tenants", &self.metrics_max_tenants)
            .field("metrics_cache", &self.metrics_cache)
            .finish()
    }
}

/// The exporter's routes: `/metrics` (the queue state, read at most once a second)
/// and `/healthz`.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, sluice_shared::metrics::CONTENT_TYPE)],
                        metrics.render().await,
                    )
                }
            }),
        )
}

/// Opens a read-only connection per queue (Redis unreachable is not fatal: it is
/// tried again at each scrape), then serves the metrics until SIGTERM or Ctrl-C.
pub async fn run(args: ExporterArgs) -> anyhow::Result<ExitCode> {
    let mut names: Vec<String> = Vec::new();
    for name in args.queues {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    anyhow::ensure!(
        names.len() <= MAX_QUEUES,
        "--queue: at most {MAX_QUEUES} queues, got {}",
        names.len()
    );
    let mut configs = Vec::with_capacity(names.len());
    for queue in names {
        let redis = RedisArgs {
            redis_url: args.redis_url.clone(),
            queue,
            redis_ca: args.redis_ca.clone(),
            redis_cluster: args.redis_cluster,
        };
        let config = redis.config()?;
        // An unusable URL or queue name fails now, before anything is served.
        gauge_client(&config).with_context(|| format!("--queue {}", config.queue))?;
        configs.push(config);
    }
    let state = QueueState::new(configs, args.metrics_max_tenants, args.metrics_cache);
    // Read-only: no stream or group is created. Redis down at start is not fatal (the
    // readers connect at a later scrape); refused credentials are.
    state
        .connect()
        .await
        .with_context(|| format!("connecting to {}", redacted_url(&args.redis_url)))?;
    let metrics = Metrics::exporter(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("sluice exporter: listening on {}", listener.local_addr()?);
    // Bounded as every metrics port is (64 connections, the oldest evicted for a new
    // one, 10 s for a request's headers). No hooks: evictions are logged, not counted.
    crate::api::serve(
        listener,
        router(metrics),
        crate::api::ServerConfig::ENDPOINT,
        crate::api::Hooks::none(),
        sluice_worker::cli::terminated(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}
