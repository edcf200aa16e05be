//! `/readyz`: the queue answers and the dispatcher is not stuck.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Api;

/// `/readyz`: 200 when the queue answers and the dispatcher is not stuck, else 503.
pub(super) async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if let Some(Err(reason)) = api.dispatcher.as_ref().map(|h| h.check()) {
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    match api.queue.admin().stats_recreating_group().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the queue backend is unavailable",
            )
                .into_response()
        }
    }
}
