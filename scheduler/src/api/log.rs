//! The request log: one line at info per request with its method, matched route (the
//! route's template, never the raw path, so a line's size is bounded whatever a client
//! sends), status, latency and the tenant the token named (`admin`, or `-` before or
//! without a token).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Who the request's token named, filled in by the `Tenant` and `Admin` extractors for
/// the log line.
#[derive(Clone, Default)]
pub(super) struct Caller(Arc<OnceLock<String>>);

impl Caller {
    /// Records who is asking (the first name given stays).
    pub(super) fn set(parts: &axum::http::request::Parts, who: &str) {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            let _ = caller.0.set(who.to_owned());
        }
    }
}

/// Middleware: logs every request once its answer is ready.
pub(super) async fn request_log(mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let caller = Caller::default();
    request.extensions_mut().insert(caller.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    let tenant = caller.0.get().map_or("-", String::as_str);
    tracing::info!(
        target: "sluice::api::request",
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        latency_ms = %format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
        tenant = %tenant,
        "request"
    );
    response
}
