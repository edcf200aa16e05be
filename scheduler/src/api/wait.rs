//! The interactive path, `POST /v1/jobs?wait=DURATION`: the request answers with the
//! job's output (200) or its failure (422) when the job finishes within the wait, and
//! with the usual job id (202) when it does not.
//!
//! One follower per process reads the completion notices (over a connection of its
//! own, [`NoticeReader`]) and hands each to the request waiting for that job (a map of
//! job id → oneshot sender), so a thousand waiting requests cost one blocking read, not
//! a thousand. The follower reads only while someone waits: the first waiter after a
//! quiet spell has it take a fresh position in the stream, waits until it has and then
//! looks its job's result up once; every waiter registers before its job is enqueued,
//! so no completion can slip between the enqueue and the wait. It stops `LINGER` after the last waiter arrived and
//! nobody waits. When the wait runs out (or the follower cannot read) the
//! result is looked up once more, so a lost notice costs a 202, never a wrong answer.
//!
//! Waiting requests are bounded: at most `max_waiters` in the process (503 past it) and
//! `max_waiters_per_tenant` per tenant (429), both refused before the upload is read;
//! a waiter is released when its request ends, however it ends (a client that
//! disconnects drops the request, and with it the waiter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::json;
use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{NoticeReader, RedisQueue};
use sluice_shared::{JobId, JobResult, Limits, OutcomeKind, Queue, ReportLine};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Api;
use super::error::{ApiError, ApiResult};
use crate::metrics::{WaitEnd, WaitMetrics, WokenBy};

/// The longest `?wait=` a server accepts unless told otherwise (`--max-wait`).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Most requests waiting at once in one process unless told otherwise
/// (`--max-waiters`): half the default connection cap, so waiting requests cannot hold
/// every connection.
pub const DEFAULT_MAX_WAITERS: usize = 512;

/// Most requests one tenant may have waiting at once unless told otherwise
/// (`--max-waiters-per-tenant`).
pub const DEFAULT_MAX_WAITERS_PER_TENANT: usize = 64;

/// The header naming the job a waited-for answer is about.
pub const JOB_ID_HEADER: HeaderName = HeaderName::from_static("sluice-job-id");

/// The header giving a finished job's outcome kind (`success`, `trap`, …).
pub const OUTCOME_HEADER: HeaderName = HeaderName::from_static("sluice-outcome");

/// How long one blocking read of the notices lasts (the follower notices that nobody
/// waits any more at most this late).
const BLOCK: Duration = Duration::from_secs(1);

/// How long the follower goes on reading after the last waiter arrived, before it
/// stops: a steady trickle of waiting requests then never pays for a fresh start.
const LINGER: Duration = Duration::from_secs(5);

/// How often an idle follower checks that its API still exists.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// The bounds on waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitLimits {
    /// The longest wait a request may ask for (a longer one is a 400 naming it).
    pub max_wait: Duration,
    /// Most requests waiting at once in this process (503 past it).
    pub max_waiters: usize,
    /// Most requests one tenant may have waiting at once (429 past it).
    pub max_per_tenant: usize,
}

impl Default for WaitLimits {
    fn default() -> Self {
        WaitLimits {
            max_wait: DEFAULT_MAX_WAIT,
            max_waiters: DEFAULT_MAX_WAITERS,
            max_per_tenant: DEFAULT_MAX_WAITERS_PER_TENANT,
        }
    }
}

/// The requests waiting for their jobs, and the one follower that wakes them.
pub(super) struct Waiters {
    limits: WaitLimits,
    state: Mutex<State>,
    /// Rung when a waiter arrives while the follower is idle.
    wake: Notify,
    /// Bumped each time the follower starts following (from a fresh position).
    ready: watch::Sender<u64>,
    /// Whether the follower task has been started.
    started: AtomicBool,
    /// Fired when the server shuts down: every waiter answers 202 with its job's id at
    /// once, new waits are refused (503) and the follower ends.
    closing: CancellationToken,
}

/// What the waiters share, under one lock (never held across an await).
#[derive(Default)]
struct State {
    /// The job each waiting request waits for, and how to wake it.
    jobs: HashMap<JobId, oneshot::Sender<OutcomeKind>>,
    /// Waiting requests per tenant (no entry at zero).
    by_tenant: HashMap<String, usize>,
    /// Waiting requests in all.
    total: usize,
    /// Whether the follower reads notices from a position older than every waiter.
    following: bool,
    /// When the last wait was registered.
    last_registered: Option<Instant>,
}

impl Waiters {
    /// No one waiting yet, under `limits`.
    pub(super) fn new(limits: WaitLimits) -> Self {
        Waiters {
            limits,
            state: Mutex::default(),
            wake: Notify::new(),
            ready: watch::Sender::new(0),
            started: AtomicBool::new(false),
            closing: CancellationToken::new(),
        }
    }

    /// The token that, once cancelled, ends every wait (answered 202 with the job's id
    /// at once), refuses new ones and stops the follower: cancel it when the server
    /// starts shutting down, so no waiting client is cut off without its job's id.
    pub(super) fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// The bounds on waiting.
    pub(super) fn limits(&self) -> WaitLimits {
        self.limits
    }

    /// A place for one waiting request of `tenant`, or the refusal: 503 when the
    /// process has `max_waiters` waiting, 429 when the tenant has its share.
    pub(super) fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        metrics: &WaitMetrics,
    ) -> ApiResult<Slot> {
        if self.closing.is_cancelled() {
            metrics.refused();
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "this server is shutting down; submit without wait, or try again",
            );
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        let mut state = self.state.lock();
        if state.total >= self.limits.max_waiters {
            metrics.refused();
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_waiters",
                format!(
                    "{} requests are waiting for their jobs, the most this server holds; submit without wait, or try again",
                    self.limits.max_waiters
                ),
            );
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        let mine = state.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= self.limits.max_per_tenant {
            metrics.refused();
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                format!(
                    "this tenant has {mine} requests waiting for their jobs, the most one tenant may; submit without wait, or try again"
                ),
            );
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        state.total += 1;
        *state.by_tenant.entry(tenant.to_owned()).or_default() += 1;
        metrics.started();
        Ok(Slot {
            waiters: self.clone(),
            tenant: tenant.to_owned(),
            job: None,
            metrics: metrics.clone(),
            end: WaitEnd::Abandoned,
        })
    }

    /// Starts the follower over `queue` unless it runs already.
    fn start(self: &Arc<Self>, queue: &Arc<RedisQueue>, metrics: &WaitMetrics) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(follow(
                Arc::downgrade(self),
                queue.clone(),
                metrics.clone(),
                self.closing.clone(),
            ));
        }
    }

    /// Whether any request waits for a job.
    fn anyone_waiting(&self) -> bool {
        !self.state.lock().jobs.is_empty()
    }

    /// The follower reads from a position older than every waiter now: wake those
    /// waiting for that.
    fn now_following(&self) {
        let mut state = self.state.lock();
        state.following = true;
        self.ready.send_modify(|generation| *generation += 1);
    }

    /// Stops following when nobody waits and nobody arrived for [`LINGER`] (the next
    /// waiter has the follower start from a fresh position); whether it stopped.
    fn stop_if_idle(&self) -> bool {
        let mut state = self.state.lock();
        let lingering = state
            .last_registered
            .is_some_and(|at| at.elapsed() < LINGER);
        if state.jobs.is_empty() && !lingering {
            state.following = false;
            true
        } else {
            false
        }
    }

    /// Wakes the request waiting for each job in `notices`, if any.
    fn deliver(&self, notices: Vec<(JobId, OutcomeKind)>) {
        let mut state = self.state.lock();
        for (job, kind) in notices {
            if let Some(waiter) = state.jobs.remove(&job) {
                let _ = waiter.send(kind);
            }
        }
    }
}

/// One waiting request's place: released, and counted by how it ended, when dropped.
pub(super) struct Slot {
    waiters: Arc<Waiters>,
    tenant: String,
    job: Option<JobId>,
    metrics: WaitMetrics,
    end: WaitEnd,
}

/// A registered wait for one job.
pub(super) struct Watch {
    finished: oneshot::Receiver<OutcomeKind>,
    /// Set when the follower was idle: changes once it follows.
    ready: Option<watch::Receiver<u64>>,
}

impl Slot {
    /// The request failed after taking its place (counted as `failed`, not as a client
    /// that went away).
    pub(super) fn failed(&mut self) {
        self.end = WaitEnd::Failed;
    }

    /// Registers the wait for `job` (before it is enqueued), starting the follower over
    /// `queue` if need be.
    pub(super) fn watch(&mut self, job: JobId, queue: &Arc<RedisQueue>) -> Watch {
        self.waiters.start(queue, &self.metrics);
        let (tx, finished) = oneshot::channel();
        let mut state = self.waiters.state.lock();
        state.jobs.insert(job, tx);
        state.last_registered = Some(Instant::now());
        self.job = Some(job);
        let ready = (!state.following).then(|| self.waiters.ready.subscribe());
        drop(state);
        if ready.is_some() {
            self.waiters.wake.notify_one();
        }
        Watch { finished, ready }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.waiters.state.lock();
        if let Some(job) = self.job {
            state.jobs.remove(&job);
        }
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.by_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                state.by_tenant.remove(&self.tenant);
            }
        }
        drop(state);
        self.metrics.ended(self.end);
    }
}

/// The follower: reads the completion notices while anyone waits and hands each to its
/// waiter; ends when the API is gone.
async fn follow(
    waiters: Weak<Waiters>,
    queue: Arc<RedisQueue>,
    metrics: WaitMetrics,
    closing: CancellationToken,
) {
    let mut reader: Option<NoticeReader> = None;
    let mut cursor: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut failing = false;
    loop {
        if closing.is_cancelled() {
            return;
        }
        let Some(w) = waiters.upgrade() else { return };
        let failure = if let Some(from) = &cursor {
            let Some(notices) = reader.as_ref() else {
                cursor = None;
                continue;
            };
            let read = tokio::select! {
                read = notices.completions(from, BLOCK) => read,
                () = closing.cancelled() => return,
            };
            match read {
                Ok((next, notices)) => {
                    cursor = Some(next);
                    w.deliver(notices);
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        } else if !w.anyone_waiting() {
            tokio::select! {
                () = w.wake.notified() => {}
                () = tokio::time::sleep(IDLE_RECHECK) => {}
                () = closing.cancelled() => return,
            }
            continue;
        } else {
            match start_following(&queue, &mut reader).await {
                Ok(from) => {
                    cursor = Some(from);
                    w.now_following();
                    None
                }
                Err(e) => Some(e),
            }
        };
        match failure {
            None => {
                backoff.reset();
                if failing {
                    tracing::info!("following completion notices for waiting requests again");
                    failing = false;
                }
            }
            Some(error) => {
                metrics.follower_error();
                if !failing {
                    tracing::warn!(%error, "following completion notices for waiting requests; they answer 202 unless their result is found");
                    failing = true;
                }
                // A quiet queue must not keep the follower reading for nobody.
                if w.stop_if_idle() {
                    cursor = None;
                }
                drop(w);
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = closing.cancelled() => return,
                }
                continue;
            }
        }
        if w.stop_if_idle() {
            cursor = None;
        }
    }
}

/// The reader (connected on first use) and a position in the notices older than now.
async fn start_following(
    queue: &RedisQueue,
    reader: &mut Option<NoticeReader>,
) -> Result<String, String> {
    if reader.is_none() {
        *reader = Some(queue.notice_reader().await.map_err(|e| e.to_string())?);
    }
    queue
        .results()
        .notices_from_now()
        .await
        .map_err(|e| e.to_string())
}

impl Api {
    /// The token ending every wait: cancel it when shutting down, and each waiting
    /// request answers 202 with its job's id at once (see [`Waiters::closing`]).
    pub fn wait_closing(&self) -> CancellationToken {
        self.waiters.closing()
    }

    /// A place for a waiting request of `tenant` asking to wait `wait`: a 400 naming
    /// the maximum when it is longer than this server allows, else see
    /// [`Waiters::reserve`].
    pub(super) fn reserve_wait(&self, tenant: &str, wait: Duration) -> ApiResult<Slot> {
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
    pub(super) async fn answer_waited(
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
            (headers, super::jobs::output_body(self, result.output)).into_response()
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

    fn limits(max_waiters: usize, max_per_tenant: usize) -> WaitLimits {
        WaitLimits {
            max_wait: DEFAULT_MAX_WAIT,
            max_waiters,
            max_per_tenant,
        }
    }

    #[test]
    fn waiters_are_capped_per_tenant_and_in_all_and_released_on_drop() {
        let waiters = Arc::new(Waiters::new(limits(3, 2)));
        let metrics = WaitMetrics::default();
        let a1 = waiters.reserve("a", &metrics).unwrap();
        let _a2 = waiters.reserve("a", &metrics).unwrap();
        let refused = waiters.reserve("a", &metrics).err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let _b1 = waiters.reserve("b", &metrics).unwrap();
        let refused = waiters.reserve("c", &metrics).err().unwrap();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        drop(a1);
        let _c1 = waiters.reserve("c", &metrics).unwrap();
        assert_eq!(waiters.state.lock().total, 3);
    }

    #[test]
    fn a_dropped_slot_forgets_its_job() {
        let waiters = Arc::new(Waiters::new(limits(3, 2)));
        let metrics = WaitMetrics::default();
        let mut slot = waiters.reserve("a", &metrics).unwrap();
        let id = JobId(uuid::Uuid::now_v7());
        let (tx, _rx) = oneshot::channel();
        waiters.state.lock().jobs.insert(id, tx);
        slot.job = Some(id);
        drop(slot);
        let state = waiters.state.lock();
        assert!(state.jobs.is_empty() && state.by_tenant.is_empty() && state.total == 0);
    }

    #[test]
    fn a_notice_wakes_its_waiter_only() {
        let waiters = Waiters::new(limits(3, 2));
        let (mine, other) = (JobId(uuid::Uuid::now_v7()), JobId(uuid::Uuid::now_v7()));
        let (tx, mut rx) = oneshot::channel();
        waiters.state.lock().jobs.insert(mine, tx);
        waiters.deliver(vec![(other, OutcomeKind::Success)]);
        assert!(rx.try_recv().is_err());
        waiters.deliver(vec![(mine, OutcomeKind::Trap)]);
        assert_eq!(rx.try_recv().unwrap(), OutcomeKind::Trap);
        // Nobody registered lately: the follower may stop; a recent waiter keeps it.
        assert!(waiters.stop_if_idle());
        waiters.state.lock().last_registered = Some(Instant::now());
        assert!(!waiters.stop_if_idle());
    }

    #[test]
    fn waits_are_written_as_a_client_would() {
        assert_eq!(human(Duration::from_secs(30)), "30s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
