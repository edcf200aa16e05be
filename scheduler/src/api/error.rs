//! The API's one error type: a status, a code and a message, answered as JSON.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_shared::QueueError;
use sluice_shared::queue::redis::{
    AdmissionError, BlobError, ModuleStoreError, ResultsError, StoreError, TenantError,
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
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
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
