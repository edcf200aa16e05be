//! The HTTP service's metrics. Labels are the matched route template (a closed set)
//! and the status class, so cardinality stays bounded whatever paths clients send.
//! The middleware [`track`] also counts refused job submissions by reason.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use super::Metrics;
use super::scheduler::RefusalReason;

/// The error code of an API error answer, set on the response by the API's error type
/// so the metrics can tell refusals apart without parsing the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// Request counters and latencies, quota refusals, and the server's load.
#[derive(Clone)]
pub(super) struct HttpMetrics {
    /// `sluice_http_requests_total{route, status}`.
    requests: IntCounterVec,
    /// `sluice_http_request_duration_seconds{route}`.
    duration: HistogramVec,
    /// `sluice_quota_refusals_total{quota}` (quota: a policy field name).
    pub(super) quota_refusals: IntCounterVec,
    /// `sluice_module_validations_running`.
    pub(super) validations: IntGauge,
    /// `sluice_http_connections_open`.
    pub(super) connections: IntGauge,
}

/// Holds a gauge up by one until dropped.
pub struct GaugeGuard(pub(super) IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl HttpMetrics {
    /// The metrics (registered in `registry` when one is given).
    pub(super) fn new(registry: Option<&Registry>) -> Self {
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
        if let Some(registry) = registry {
            for metric in [
                Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(duration.clone()),
                Box::new(quota_refusals.clone()),
                Box::new(validations.clone()),
                Box::new(connections.clone()),
            ] {
                registry.register(metric).expect("unique metric");
            }
        }
        HttpMetrics {
            requests,
            duration,
            quota_refusals,
            validations,
            connections,
        }
    }
}

/// The status class label of a status code.
fn class_of(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Whether a request submits jobs (`POST /v1/jobs`, `POST /v1/batches`).
fn is_submission(method: &Method, route: &str) -> bool {
    method == Method::POST && matches!(route, "/v1/jobs" | "/v1/batches")
}

/// Middleware: counts and times every request, and counts refused job submissions by
/// reason ([`RefusalReason::of`]).
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let submission = is_submission(request.method(), &route);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let http = &metrics.http;
    http.requests
        .with_label_values(&[route.as_str(), class_of(status)])
        .inc();
    http.duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    if submission
        && let Some(reason) = RefusalReason::of(
            status,
            response.extensions().get::<ErrorCode>().map(|c| c.0),
        )
    {
        metrics.scheduler.refused(reason);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_job_and_batch_posts_are_submissions() {
        assert!(is_submission(&Method::POST, "/v1/jobs"));
        assert!(is_submission(&Method::POST, "/v1/batches"));
        assert!(!is_submission(&Method::GET, "/v1/jobs"));
        assert!(!is_submission(&Method::POST, "/v1/admin/tenants"));
        assert!(!is_submission(&Method::POST, "unmatched"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_of(201), "2xx");
        assert_eq!(class_of(429), "4xx");
        assert_eq!(class_of(503), "5xx");
    }
}
