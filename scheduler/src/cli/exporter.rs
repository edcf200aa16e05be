//! `sluice exporter`: the queue-state metrics of one or more queues at `/metrics` (and
//! `/healthz`), for fleets that do not run `sluice serve`. The same figures as `sluice
//! serve`'s `/metrics` reads (`crate::metrics::queue`), one series per queue however
//! many workers there are.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use clap::Args;

use super::RedisArgs;
use crate::metrics::{DEFAULT_MAX_TENANTS, Metrics, QueueState, parse_max_tenants};

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
    /// Most tenants named in the tenant metrics, per queue: the largest by backlog +
    /// in-flight keep their names, the rest are summed into `tenant="other"`.
    #[arg(long, env = "SLUICE_METRICS_MAX_TENANTS", default_value_t = DEFAULT_MAX_TENANTS,
          value_parser = parse_max_tenants)]
    pub metrics_max_tenants: usize,
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
            .field("metrics_max_tenants", &self.metrics_max_tenants)
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

/// Connects to every queue, then serves the metrics until SIGTERM or Ctrl-C.
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
    let mut queues = Vec::with_capacity(names.len());
    for queue in names {
        let redis = RedisArgs {
            redis_url: args.redis_url.clone(),
            queue,
            redis_ca: args.redis_ca.clone(),
        };
        queues.push(Arc::new(redis.connect().await?));
    }
    let metrics = Metrics::exporter(QueueState::new(queues, args.metrics_max_tenants));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("sluice exporter: listening on {}", listener.local_addr()?);
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(sluice_worker::cli::terminated())
        .await
        .context("serving /metrics")?;
    Ok(ExitCode::SUCCESS)
}
