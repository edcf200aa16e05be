//! The HTTP service's metrics (listed in `docs/metrics.md`). Labels are the matched
//! route template (a closed set) and the status class, so cardinality stays bounded
//! whatever paths clients send.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Request counters and latencies, quota refusals, and the server's load.
#[derive(Clone)]
pub struct ApiMetrics {
    registry: Registry,
    /// `sluice_http_requests_total{route, status}`.
    requests: IntCounterVec,
    /// `sluice_http_request_duration_seconds{route}`.
    duration: HistogramVec,
    /// `sluice_quota_refusals_total{quota}` (quota: a policy field name).
    quota_refusals: IntCounterVec,
    /// `sluice_module_validations_running`.
    validations: IntGauge,
    /// `sluice_http_connections_open`.
    connections: IntGauge,
}

/// Holds a gauge up by one until dropped.
pub struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ApiMetrics {
    /// Registers the metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_http_requests_total",
                "HTTP requests by route and status class",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_http_request_duration_seconds",
                "HTTP request latency by route",
            ),
            &["route"],
        )
        .expect("valid metric");
        let quota_refusals = IntCounterVec::new(
            Opts::new(
                "sluice_quota_refusals_total",
                "requests refused by a tenant quota, by policy field",
            ),
            &["quota"],
        )
        .expect("valid metric");
        let validations = IntGauge::new(
            "sluice_module_validations_running",
            "module uploads being parsed and validated now",
        )
        .expect("valid metric");
        let connections =
            IntGauge::new("sluice_http_connections_open", "HTTP connections open now")
                .expect("valid metric");
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(quota_refusals.clone()),
            Box::new(validations.clone()),
            Box::new(connections.clone()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        ApiMetrics {
            registry,
            requests,
            duration,
            quota_refusals,
            validations,
            connections,
        }
    }

    /// A request was refused by the tenant quota `quota` (a policy field name).
    pub fn quota_refused(&self, quota: &'static str) {
        self.quota_refusals.with_label_values(&[quota]).inc();
    }

    /// A module validation started; it counts as running until the guard drops.
    pub fn validation_started(&self) -> GaugeGuard {
        self.validations.inc();
        GaugeGuard(self.validations.clone())
    }

    /// A connection was accepted; it counts as open until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        self.connections.inc();
        GaugeGuard(self.connections.clone())
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        sluice_shared::metrics::render(&self.registry)
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: counts and times every request.
pub async fn track(State(metrics): State<ApiMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics.requests.with_label_values(&[&route, class]).inc();
    metrics
        .duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    response
}
