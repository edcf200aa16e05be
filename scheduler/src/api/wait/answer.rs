//! Waiting for one job and answering: its output (200), its failure (422), or 202
//! with its id (the wait ran out, the server shuts down, or its result is unreadable).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_shared::{JobId, JobResult, Limits, Queue, ReportLine};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::registry::{Slot, Watch};
use super::{JOB_ID_HEADER, OUTCOME_HEADER};
use crate::api::Api;
use crate::api::error::{ApiError, ApiResult};
use crate::metrics::{WaitEnd, WokenBy};

impl Api {
    /// The token ending every wait: cancel it when shutting down, and each waiting
    /// request answers 202 with its job's id at once (see [`Waiters::closing`]).
    pub fn wait_closing(&self) -> CancellationToken {
        self.waiters.closing()
    }

    /// A place for a waiting request of `tenant` asking to wait `wait`: a 400 naming
    /// the maximum when it is longer than this server allows, else see
    /// [`Waiters::reserve`].
    pub(in crate::api) fn reserve_wait(&self, tenant: &str, wait: Duration) -> ApiResult<Slot> {
        let max = self.waiters.limits().max_wait;
        if wait > max {
            return Err(ApiError::bad_request(format!(
                "wait: at most {} on this server (asked for {})",
                human(max),
                human(wait)
            )));
        }
        self.waiters.reserve(tenant, &self.metrics.waits)
    }

    /// Waits until job `id` (enqueued after `watch` was registered) finishes, `until`
    /// or the server's shutdown, and answers: the output (200) or the failure (422) of a
    /// finished job, else 202 with the job's id (also when its result cannot be read:
    /// the client keeps the id, so a retry never duplicates the job).
    pub(in crate::api) async fn answer_waited(
        &self,
        mut slot: Slot,
        watch: Watch,
        id: JobId,
        limits: Limits,
        until: Instant,
    ) -> Response {
        let location = format!("/v1/jobs/{id}");
        let closing = self.waiters.closing();
        if let Some(mut ready) = watch.ready {
            // The follower was idle: once it reads from a position older than now, a
            // job that finished before that position is found by one look-up, and any
            // later one by its notice.
            tokio::select! {
                _ = tokio::time::timeout_at(until, ready.changed()) => {}
                () = closing.cancelled() => {}
            }
            if let Some(result) = self.look_up(id).await {
                slot.end = WaitEnd::Finished;
                self.metrics.waits.woken(WokenBy::Lookup);
                return self.finished(result, &location);
            }
        }
        // A notice, the end of the wait or shutdown: the result is read once either way
        // (a notice Redis lost, or a follower that could not read, costs nothing more).
        let by = tokio::select! {
            woken = tokio::time::timeout_at(until, watch.finished) => match woken {
                Ok(Ok(_)) => WokenBy::Notice,
                _ => WokenBy::Lookup,
            },
            () = closing.cancelled() => WokenBy::Lookup,
        };
        match self.look_up(id).await {
            Some(result) => {
                slot.end = WaitEnd::Finished;
                self.metrics.waits.woken(by);
                self.finished(result, &location)
            }
            None => {
                slot.end = WaitEnd::Pending;
                let body = json!({ "id": id.to_string(), "state": "pending", "limits": limits });
                let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
                set_header(response.headers_mut(), header::LOCATION, &location);
                set_header(response.headers_mut(), JOB_ID_HEADER, &id.to_string());
                response
            }
        }
    }

    /// Job `id`'s result if it is stored; a Redis error is logged and answered as "not
    /// yet" (the job is enqueued: its id is worth more to the client than an error).
    async fn look_up(&self, id: JobId) -> Option<JobResult> {
        match self.queue.result(id).await {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(%error, job = %id, "reading a waited-for job's result; answering 202 with its id");
                None
            }
        }
    }

    /// The answer for a finished job: its output as the body (200), or its failure as
    /// JSON (422 `job_failed`, with the job's report line).
    fn finished(&self, result: JobResult, location: &str) -> Response {
        let id = result.job_id.to_string();
        let kind = result.outcome.kind();
        let mut response = if result.outcome.is_success() {
            let mut headers = HeaderMap::new();
            set_header(
                &mut headers,
                header::CONTENT_TYPE,
                "application/octet-stream",
            );
            (headers, crate::api::jobs::output_body(self, result.output)).into_response()
        } else {
            let body = json!({
                "error": {
                    "code": "job_failed",
                    "message": format!("the job failed ({})", result.outcome.clone().capped()),
                },
                "id": id,
                "result": ReportLine::new("", &result),
            });
            let mut response = (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
            response
                .extensions_mut()
                .insert(crate::metrics::ErrorCode("job_failed"));
            response
        };
        let headers = response.headers_mut();
        set_header(headers, header::LOCATION, location);
        set_header(headers, JOB_ID_HEADER, &id);
        set_header(headers, OUTCOME_HEADER, kind.as_str());
        response
    }
}

/// Sets header `name` to `value` (values built here are always valid header text).
fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A wait as a client writes it: whole seconds as `30s`, else milliseconds (`250ms`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_written_as_a_client_would() {
        assert_eq!(human(Duration::from_secs(30)), "30s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
