//! The API's one error type: a status, a code and a message, answered as JSON.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_shared::QueueError;
use sluice_shared::queue::redis::{
    AdmissionError, BlobError, ListingError, ModuleStoreError, ResultsError, StoreError,
    TenantError,
};

use crate::modules;

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) retry_after: Option<Duration>,
}

/// The longest error message answered: messages may quote what a client sent.
pub(super) const MAX_ERROR_MESSAGE: usize = 1024;

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        ApiError {
            status,
            code,
            message,
            retry_after: None,
        }
    }

    /// A request over a per-request quota of the tenant's policy (413).
    pub(super) fn too_large(quota: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{message} (tenant policy {quota})"),
        )
    }

    /// The tenant holds as much as its policy allows (429), for now.
    pub(super) fn quota_exceeded(
        quota: &str,
        message: impl std::fmt::Display,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("{message} (tenant policy {quota})"),
        );
        e.retry_after = retry_after;
        e
    }

    pub(super) fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout", message)
    }

    pub(super) fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// No credentials, or ones that name no one (401).
    pub(super) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// Valid credentials that may not do this (403): a tenant's token on an admin route.
    pub(super) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

/// The answer to a path no route matches: a JSON 404.
pub(super) async fn no_route() -> ApiError {
    ApiError::not_found("route")
}

/// The answer to a method a path has no route for: a JSON 405.
pub(super) async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not answer that method (see /openapi.json)",
    )
}

/// The error code answered for a status when the error came from outside the API's
/// handlers (an extractor's rejection, a body limit).
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "quota_exceeded",
        503 => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "error",
    }
}

/// Middleware: every error answer is JSON in the one shape. Handlers answer
/// [`ApiError`]s already; this rewrites what axum's own extractors and layers answer as
/// text (a body over the limit, a malformed path), keeping their message.
pub(super) async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_MESSAGE)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut error = ApiError::new(status, code_for(status), message);
    if let Some(after) = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        error.retry_after = Some(Duration::from_secs(after));
    }
    error.into_response()
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        // Redis's own words stay in the log: they describe the fleet's internals (key
        // names, types, other tenants' ids), never the client's request.
        tracing::warn!(error = %e, "queue error answering a request");
        match e {
            QueueError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the queue backend is unavailable; try again",
            ),
            _ => Self::new(
                StatusCode::BAD_GATEWAY,
                "queue_error",
                "the queue backend answered unexpectedly; the operator has the details",
            ),
        }
    }
}

/// A missing tenant is a 404 and a bad name a 400; the other protocol errors answer as
/// the queue's own do (503 when Redis is unavailable, 502 otherwise), Redis's words
/// staying in the log.
impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::NotFound(_) => Self::not_found("tenant"),
            TenantError::BadName(e) => Self::bad_request(e.to_string()),
            TenantError::Store(e) => QueueError::from(e).into(),
            other => QueueError::Protocol(other.to_string()).into(),
        }
    }
}

/// The protocol's role errors answer as the queue's own do (see `From<QueueError>`).
macro_rules! answers_as_queue_error {
    ($($error:ty),*) => {$(
        impl From<$error> for ApiError {
            fn from(e: $error) -> Self {
                QueueError::from(e).into()
            }
        }
    )*};
}
answers_as_queue_error!(
    AdmissionError,
    BlobError,
    ListingError,
    ModuleStoreError,
    ResultsError,
    StoreError
);

impl From<modules::ModuleError> for ApiError {
    fn from(e: modules::ModuleError) -> Self {
        let status = match e {
            modules::ModuleError::TooLarge { .. } | modules::ModuleError::TextTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, "invalid_module", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code, message = %self.message, "answering an error");
        }
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .extensions_mut()
            .insert(crate::metrics::ErrorCode(self.code));
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long finds room.
            let secs = after.as_millis().div_ceil(1000).max(1);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("digits are a header value"),
            );
        }
        response
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
