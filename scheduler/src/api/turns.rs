//! Buffered request bodies (modules, batches): turns to read one, shared fairly between
//! tenants, and the capped, timed read itself.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use futures_util::StreamExt;

use super::Api;
use super::error::{ApiError, ApiResult};

/// Reads a whole request body of at most `limit` bytes; each read must deliver within
/// the idle timeout and the whole body within `total`.
pub(super) async fn read_body(api: &Api, body: Body, limit: usize, what: &str) -> ApiResult<Bytes> {
    let deadline = tokio::time::Instant::now() + api.config.buffered_body_timeout;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    loop {
        let idle = tokio::time::Instant::now() + api.config.body_idle_timeout;
        let next = tokio::time::timeout_at(idle.min(deadline), stream.next())
            .await
            .map_err(|_| ApiError::timeout(format!("the {what} did not arrive in time")))?;
        let Some(frame) = next else { break };
        let bytes = frame.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
        if out.len() + bytes.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the {what} is over {limit} bytes"),
            ));
        }
        out.extend_from_slice(&bytes);
    }
    Ok(Bytes::from(out))
}

/// A turn to buffer a large body, held until dropped.
pub(super) struct BufferedTurn {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _tenant: TenantTurn,
}

/// One of a tenant's buffered-body turns; gives it back when dropped.
pub(super) struct TenantTurn {
    held: Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for TenantTurn {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

/// A turn to buffer a large body for `tenant`; waits for one (a client's connection is
/// already bounded by the body timeouts while it waits), unless the tenant already
/// holds its share of the turns, which answers 429 at once.
pub(super) async fn buffered_turn(api: &Api, tenant: &str) -> ApiResult<BufferedTurn> {
    let busy = |message: &str| {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message);
        e.retry_after = Some(Duration::from_secs(1));
        e
    };
    let tenant_turn = {
        let mut held = api.buffered_by_tenant.lock();
        let n = held.entry(tenant.to_owned()).or_insert(0);
        if *n >= api.config.max_buffered_per_tenant.max(1) {
            return Err(busy(&format!(
                "this tenant already has {n} large uploads (modules, batches) in progress, \
                 its share; try again when one ends"
            )));
        }
        *n += 1;
        TenantTurn {
            held: api.buffered_by_tenant.clone(),
            tenant: tenant.to_owned(),
        }
    };
    let permit = tokio::time::timeout(
        api.config.buffered_body_timeout,
        api.buffered.clone().acquire_owned(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| busy("too many large uploads in progress; try again"))?;
    Ok(BufferedTurn {
        _permit: permit,
        _tenant: tenant_turn,
    })
}
