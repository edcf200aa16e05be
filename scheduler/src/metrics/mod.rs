//! The one metrics module of the `sluice` binary: every metric it exports is declared
//! here (and listed in `docs/metrics.md`).
//!
//! - [`http`]: the HTTP service's requests, latencies, quota refusals and load, and
//!   the middleware that counts them.
//! - [`scheduler`]: jobs admitted by the dispatcher, submissions refused by reason,
//!   dispatcher rounds.
//! - [`queue`]: the queue's state read from Redis at scrape time (`sluice serve` and
//!   `sluice exporter`), with the tenant folding rule of [`fold`].
//! - [`waits`]: the interactive path's waiting submissions (`POST /v1/jobs?wait=`).
//! - `sluice_build_info{version}`, here.

use std::sync::Arc;

use prometheus::{IntGaugeVec, Opts, Registry};

pub mod fold;
pub mod http;
pub mod queue;
pub mod scheduler;
pub mod waits;

pub use http::{ErrorCode, GaugeGuard, track};
pub use queue::{DEFAULT_CACHE_FOR, DEFAULT_MAX_TENANTS, MIN_CACHE_FOR, QueueState};
pub use scheduler::{RefusalReason, SchedulerMetrics};
pub use waits::{WaitEnd, WaitMetrics, WokenBy};

/// The most `--metrics-max-tenants` may be (each named tenant is two series per queue).
pub const MAX_MAX_TENANTS: usize = 1000;

/// `--metrics-max-tenants`: a whole number from 0 (every tenant folded into `other`)
/// to [`MAX_MAX_TENANTS`].
pub fn parse_max_tenants(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n <= MAX_MAX_TENANTS => Ok(n),
        _ => Err(format!("a whole number from 0 to {MAX_MAX_TENANTS}")),
    }
}

/// `--metrics-cache`: a duration (`1s`, `500ms`, `1m`) of at least [`MIN_CACHE_FOR`].
pub fn parse_cache_period(text: &str) -> Result<std::time::Duration, String> {
    match sluice_shared::units::parse_duration(text) {
        Ok(d) if d < MIN_CACHE_FOR => Err(format!("at least {MIN_CACHE_FOR:?}")),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// The metrics a `sluice` process serves at `/metrics`. Clones share them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http: http::HttpMetrics,
    /// The dispatcher's and the API's admission counters.
    pub scheduler: SchedulerMetrics,
    /// The interactive path's waiting submissions.
    pub waits: WaitMetrics,
    queue: Option<Arc<QueueState>>,
}

/// Registers `sluice_build_info{version}` (always 1) in `registry`.
fn register_build_info(registry: &Registry) {
    let info = IntGaugeVec::new(
        Opts::new("sluice_build_info", "the running build (always 1)"),
        &["version"],
    )
    .expect("valid metric");
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(info)).expect("unique metric");
}

impl Metrics {
    /// The service's metrics (`sluice serve`): HTTP, scheduler and build info; the
    /// queue state joins with [`Self::with_queue_state`].
    pub fn new() -> Self {
        let registry = Registry::new();
        register_build_info(&registry);
        Metrics {
            http: http::HttpMetrics::new(Some(&registry)),
            scheduler: SchedulerMetrics::new(Some(&registry)),
            waits: WaitMetrics::new(Some(&registry)),
            queue: None,
            registry,
        }
    }

    /// The standalone exporter's metrics (`sluice exporter`): the queue state and
    /// build info only.
    pub fn exporter(state: Arc<QueueState>) -> Self {
        let registry = Registry::new();
        register_build_info(&registry);
        state.register(&registry);
        Metrics {
            http: http::HttpMetrics::new(None),
            scheduler: SchedulerMetrics::new(None),
            waits: WaitMetrics::new(None),
            queue: Some(state),
            registry,
        }
    }

    /// These metrics with the queue state of `state` (read when rendered).
    pub fn with_queue_state(mut self, state: Arc<QueueState>) -> Self {
        state.register(&self.registry);
        self.queue = Some(state);
        self
    }

    /// A request was refused by the tenant quota `quota` (a policy field name).
    pub fn quota_refused(&self, quota: &'static str) {
        self.http.quota_refusals.with_label_values(&[quota]).inc();
    }

    /// A module validation started; it counts as running until the guard drops.
    pub fn validation_started(&self) -> GaugeGuard {
        self.http.validations.inc();
        GaugeGuard(self.http.validations.clone())
    }

    /// A connection was accepted; it counts as open until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        self.http.connections.inc();
        GaugeGuard(self.http.connections.clone())
    }

    /// The text exposition, the queue state refreshed first (at most once per cache
    /// period): every series, the per-tenant ones included. Served where only
    /// operators reach it (`sluice exporter`, `sluice serve --metrics-listen`).
    pub async fn render(&self) -> String {
        if let Some(queue) = &self.queue {
            queue.refresh().await;
        }
        sluice_shared::metrics::render(&self.registry)
    }

    /// The text exposition without any series that names a tenant (a `tenant`
    /// label): what the API port's public `/metrics` serves, so a client of the API
    /// learns neither other tenants' names nor their load.
    pub async fn render_public(&self) -> String {
        if let Some(queue) = &self.queue {
            queue.refresh().await;
        }
        let families: Vec<_> = self
            .registry
            .gather()
            .into_iter()
            .filter(|family| !names_a_tenant(family))
            .collect();
        let mut out = Vec::new();
        // Encoding well-formed families into memory cannot fail.
        let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Whether a family's series carry a `tenant` label (declared per family, so the first
/// series tells; a family without series names nobody).
fn names_a_tenant(family: &prometheus::proto::MetricFamily) -> bool {
    family.name().starts_with("sluice_tenant_")
        || family
            .get_metric()
            .iter()
            .any(|m| m.get_label().iter().any(|l| l.name() == "tenant"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
