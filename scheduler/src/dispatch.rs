//! The dispatcher: fair admission of the service's jobs at the fleet's real capacity.
//!
//! Jobs submitted over HTTP wait in their tenant's backlog. The dispatcher keeps the
//! shared job stream's *unclaimed* entries at no more than `window` (a handful): an
//! entry is claimed only by a worker with a free slot, so refilling the stream only as
//! workers take from it admits exactly as many jobs as the fleet can start, whatever
//! its size, and a tenant that arrives later waits behind at most `window` jobs of
//! another. Each free place goes to the waiting tenant with the fewest jobs admitted
//! and unsettled (ties in round-robin order), within its `max_concurrent_jobs` and rate:
//! a tenant with a short queue is served before one with a flood. Completion notices
//! wake the dispatcher; between them it looks again after 1 ms, doubling to 50 ms.
//!
//! What a tenant has in flight is counted from Redis (`sluice:{q}:admitted`, written
//! atomically with each admission), so a restart or failover never lets a tenant run
//! past its limit. One `sluice serve` holds the dispatcher role at a time
//! (`hold.lua`); the others stand by and take over within a few seconds if it dies,
//! at once if it stops cleanly. See `docs/admission.md`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{AdmissionError, Hold, RedisQueue};
use sluice_shared::{JobId, OutcomeKind, TenantPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a dispatcher's hold on the role lasts without renewal.
const HOLD: Duration = Duration::from_secs(5);
/// How often the holder renews its hold (well within `HOLD`).
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often a standby (or an idle holder) looks again; new jobs wake a holder at once.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// First and longest wait for a free place while tenants wait (completions cut it short).
const MIN_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(50);
/// How often a busy holder reads completion notices between waits.
const NOTICES_EVERY: Duration = Duration::from_millis(10);
/// How often the admitted jobs are re-read and checked against Redis, for jobs whose
/// notice was never seen (cancelled after admission, retried, notices trimmed).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How long a tenant whose keys or policy are corrupt is skipped before trying again.
const SKIP_BAD_TENANT: Duration = Duration::from_secs(5);
/// How often the same complaint (per key) is logged again.
const COMPLAIN_EVERY: Duration = Duration::from_secs(30);
/// Failing for this long makes `/readyz` answer 503.
const FAILING_GRACE: Duration = Duration::from_secs(3);
/// No round finished for this long (a hung command) makes `/readyz` answer 503.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// Most jobs admitted for one tenant in one script call.
const MAX_PER_CALL: usize = 256;

/// The dispatcher's health, for `/readyz`.
pub struct Health {
    state: Mutex<HealthState>,
}

struct HealthState {
    last_ok: Instant,
    failing: Option<(Instant, String)>,
    role_key_problem: Option<String>,
}

impl Health {
    /// A dispatcher health that is fine so far.
    pub fn new() -> Arc<Self> {
        Arc::new(Health {
            state: Mutex::new(HealthState {
                last_ok: Instant::now(),
                failing: None,
                role_key_problem: None,
            }),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HealthState> {
        self.state.lock()
    }

    fn ok(&self, role_key_problem: Option<String>) {
        let mut state = self.lock();
        state.last_ok = Instant::now();
        state.failing = None;
        state.role_key_problem = role_key_problem;
    }

    fn failed(&self, error: String) {
        let mut state = self.lock();
        let since = state
            .failing
            .as_ref()
            .map_or_else(Instant::now, |(at, _)| *at);
        state.failing = Some((since, error));
    }

    /// `Err(reason)` when the dispatcher is stuck, failing, or cannot take its role.
    pub fn check(&self) -> Result<(), String> {
        let state = self.lock();
        if let Some(problem) = &state.role_key_problem {
            return Err(format!(
                "dispatcher role key is not a live hold ({problem}): given an expiry of {}s, \
                 to be taken over when it expires",
                HOLD.as_secs()
            ));
        }
        if let Some((since, error)) = &state.failing
            && since.elapsed() >= FAILING_GRACE
        {
            return Err(format!(
                "dispatcher failing for {}s: {error}",
                since.elapsed().as_secs()
            ));
        }
        let idle = state.last_ok.elapsed();
        if idle >= STUCK_AFTER {
            return Err(format!(
                "dispatcher stuck: no round finished for {}s",
                idle.as_secs()
            ));
        }
        Ok(())
    }
}

/// A token bucket per tenant, for `rate_per_second`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The dispatcher's view of one tenant.
#[derive(Default)]
struct TenantState {
    bucket: Option<Bucket>,
    policy: Option<(Instant, TenantPolicy)>,
    skip_until: Option<Instant>,
}

/// What a round did, and so how long to wait before the next.
enum Round {
    /// Another process holds the role (with what is wrong with its key, if anything).
    Standby(Option<String>),
    /// Nothing is waiting in any backlog.
    Idle,
    /// Tenants wait, but no place is free or no waiting tenant may start a job now.
    Waiting,
    /// Jobs were admitted.
    Moved,
}

struct Dispatcher {
    queue: Arc<RedisQueue>,
    holder: String,
    window: u64,
    holding: bool,
    last_held: Instant,
    tenants: HashMap<String, TenantState>,
    /// Admitted and not known to be settled: the in-flight count per tenant. A superset
    /// of the admitted hash between reconciliations (only this holder adds to the hash),
    /// so counts err on the high side, never the low one.
    admitted: HashMap<JobId, String>,
    notices: String,
    notices_read: Instant,
    reconciled: Instant,
    last_served: Option<String>,
    complained: HashMap<String, Instant>,
    metrics: crate::metrics::SchedulerMetrics,
}

/// Runs the dispatcher until `shutdown`; `wake` is notified when jobs are submitted.
/// `window` is the most unclaimed jobs kept on the shared stream. Rounds, their
/// duration and the jobs admitted are counted in `metrics`.
pub async fn run(
    queue: Arc<RedisQueue>,
    window: u64,
    wake: Arc<Notify>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    metrics: crate::metrics::SchedulerMetrics,
) {
    let mut d = Dispatcher {
        queue: queue.clone(),
        holder: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4()),
        window: window.max(1),
        holding: false,
        last_held: Instant::now(),
        tenants: HashMap::new(),
        admitted: HashMap::new(),
        notices: "$".to_owned(),
        notices_read: Instant::now(),
        reconciled: Instant::now(),
        last_served: None,
        complained: HashMap::new(),
        metrics,
    };
    let mut poll = Backoff::new(MIN_POLL, MAX_POLL);
    // Doubling from 200 ms up to 2 s while rounds fail.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let round = d.round().await;
        d.metrics.round(started.elapsed());
        let wait = match round {
            Ok(round) => {
                backoff.reset();
                match round {
                    Round::Standby(problem) => {
                        health.ok(problem);
                        IDLE_WAIT
                    }
                    Round::Idle => {
                        health.ok(None);
                        IDLE_WAIT
                    }
                    Round::Moved => {
                        health.ok(None);
                        poll.reset();
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Round::Waiting => {
                        health.ok(None);
                        let wait = poll.next_delay();
                        // A completion frees a place: wait for one, briefly.
                        tokio::select! {
                            () = wake.notified() => {}
                            () = shutdown.cancelled() => {}
                            notices = queue.results().completions(&d.notices, wait) => {
                                match notices {
                                    Ok((last, finished)) => {
                                        d.notices_read = Instant::now();
                                        if !finished.is_empty() {
                                            d.notices = last;
                                            d.finished(finished).await;
                                            poll.reset();
                                        }
                                    }
                                    // A corrupt notice stream fails at once: wait anyway
                                    // (the round logs it).
                                    Err(_) => tokio::time::sleep(wait).await,
                                }
                            }
                        }
                        continue;
                    }
                }
            }
            Err(error) => {
                d.complain("dispatcher", &error.to_string());
                health.failed(error.to_string());
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {}
        }
    }
    if d.holding
        && let Ok(true) = queue.admission().release_dispatcher(&d.holder).await
    {
        tracing::info!("dispatcher role released");
    }
}

impl Dispatcher {
    /// Logs an error about `key`, at most once per `COMPLAIN_EVERY` per key. Errors,
    /// not warnings: each means data an operator must look at, and the service's default
    /// log level shows errors.
    fn complain(&mut self, key: &str, what: &str) {
        let now = Instant::now();
        if self
            .complained
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < COMPLAIN_EVERY)
        {
            return;
        }
        self.complained.insert(key.to_owned(), now);
        tracing::error!(key, "{what}");
    }

    async fn round(&mut self) -> Result<Round, AdmissionError> {
        if !self.holding || self.last_held.elapsed() >= RENEW_EVERY {
            match self
                .queue
                .admission()
                .hold_dispatcher(&self.holder, HOLD)
                .await?
            {
                Hold::Held => {
                    // A gap longer than a hold since the last renewal means another
                    // process may have held the role in between: count afresh.
                    if !self.holding || self.last_held.elapsed() >= HOLD {
                        self.take_over().await?;
                    }
                    self.holding = true;
                    self.last_held = Instant::now();
                }
                Hold::Other { .. } => {
                    self.holding = false;
                    return Ok(Round::Standby(None));
                }
                Hold::Repaired { found } => {
                    self.holding = false;
                    self.complain(
                        "dispatcher role",
                        &format!(
                            "the dispatcher role key held {found}: gave it an expiry of {}s; \
                             a standby takes over when it expires",
                            HOLD.as_secs()
                        ),
                    );
                    return Ok(Round::Standby(Some(found)));
                }
            }
        }
        // Notices are read while waiting; a burst of admitting rounds reads them too,
        // but not every round (each read may block for a millisecond).
        if self.notices_read.elapsed() >= NOTICES_EVERY {
            self.follow_completions().await;
        }
        if self.reconciled.elapsed() >= RECONCILE_EVERY {
            self.reconcile().await?;
        }

        let mut waiting = self.queue.admission().backlogged_tenants().await?;
        if waiting.is_empty() {
            return Ok(Round::Idle);
        }
        let unclaimed = self.queue.admission().ready_depth().await?;
        let mut free = self.window.saturating_sub(unclaimed);
        if free == 0 {
            return Ok(Round::Waiting);
        }

        // The order among tenants with equally many jobs in flight: by name, starting
        // after the tenant served last (a round-robin pointer that survives rounds),
        // so no name is always served first.
        waiting.sort();
        let start = self
            .last_served
            .as_ref()
            .and_then(|last| waiting.iter().position(|t| t > last))
            .unwrap_or(0);
        waiting.rotate_left(start);
        let mut in_flight: HashMap<&str, u64> = HashMap::new();
        for tenant in self.admitted.values() {
            *in_flight.entry(tenant.as_str()).or_default() += 1;
        }
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = waiting
            .iter()
            .enumerate()
            .map(|(pos, t)| Reverse((in_flight.get(t.as_str()).copied().unwrap_or(0), pos)))
            .collect();
        drop(in_flight);

        // Each free place to the waiting tenant with the fewest jobs in flight.
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let now = Instant::now();
        while free > 0
            && let Some(Reverse((count, pos))) = heap.pop()
        {
            let tenant = waiting[pos].clone();
            let Some(policy) = self.policy_of(&tenant, now).await else {
                continue;
            };
            if count >= u64::from(policy.max_concurrent_jobs) {
                continue;
            }
            let state = self.tenants.entry(tenant).or_default();
            if !take_token(state, &policy) {
                continue;
            }
            match plan.iter_mut().find(|(p, _)| *p == pos) {
                Some((_, k)) => *k += 1,
                None => plan.push((pos, 1)),
            }
            free -= 1;
            self.last_served = Some(waiting[pos].clone());
            heap.push(Reverse((count + 1, pos)));
        }

        let mut moved_any = false;
        for (pos, planned) in plan {
            let tenant = &waiting[pos];
            let mut moved = 0;
            let mut left = planned;
            while left > 0 {
                let want = left.min(MAX_PER_CALL);
                match self
                    .queue
                    .admission()
                    .dispatch(&self.holder, tenant, want)
                    .await
                {
                    Ok(jobs) => {
                        let got = jobs.len();
                        self.metrics.admitted(got);
                        for job in jobs {
                            self.admitted.insert(job, tenant.clone());
                        }
                        moved += got;
                        left -= want;
                        if got < want {
                            break;
                        }
                    }
                    Err(AdmissionError::NotHolder) => {
                        self.holding = false;
                        return Ok(Round::Standby(None));
                    }
                    Err(error @ AdmissionError::WrongType { .. }) => {
                        let key = format!("backlog of {tenant}");
                        self.complain(&key, &format!("tenant {tenant:?} skipped: {error}"));
                        self.skip(tenant);
                        break;
                    }
                    Err(other) => return Err(other),
                }
            }
            // Places planned but not filled (the backlog ran out) give their tokens back.
            if moved < planned
                && let Some(bucket) = self.tenants.get_mut(tenant).and_then(|s| s.bucket.as_mut())
            {
                bucket.tokens += (planned - moved) as f64;
            }
            moved_any |= moved > 0;
        }
        Ok(if moved_any {
            Round::Moved
        } else {
            Round::Waiting
        })
    }

    /// The tenant's policy (re-read every few seconds), or `None` while it is skipped.
    async fn policy_of(&mut self, tenant: &str, now: Instant) -> Option<TenantPolicy> {
        let state = self.tenants.entry(tenant.to_owned()).or_default();
        if state.skip_until.is_some_and(|until| now < until) {
            return None;
        }
        if let Some((read, policy)) = &state.policy
            && read.elapsed() < Duration::from_secs(5)
        {
            return Some(policy.clone());
        }
        match self.queue.admission().admission_policy(tenant).await {
            Ok(policy) => {
                let state = self.tenants.entry(tenant.to_owned()).or_default();
                state.policy = Some((now, policy.clone()));
                Some(policy)
            }
            Err(error @ (AdmissionError::BadPolicy { .. } | AdmissionError::WrongType { .. })) => {
                let key = format!("policy of {tenant}");
                self.complain(&key, &format!("tenant {tenant:?} skipped: {error}"));
                self.skip(tenant);
                None
            }
            Err(error) => {
                // Redis trouble: the tenant waits this round; the next round retries.
                tracing::warn!(%error, tenant, "reading a policy failed");
                None
            }
        }
    }

    fn skip(&mut self, tenant: &str) {
        let state = self.tenants.entry(tenant.to_owned()).or_default();
        state.skip_until = Some(Instant::now() + SKIP_BAD_TENANT);
        state.policy = None;
    }

    /// Becoming the holder: count what is in flight from Redis, not from memory.
    async fn take_over(&mut self) -> Result<(), AdmissionError> {
        // Notices from before the count are covered by the count itself.
        self.notices = self.queue.results().notices_from_now().await?;
        self.admitted = self.load_admitted().await?;
        let known = self.admitted.clone();
        match self.queue.admission().admitted_on_stream(&known).await {
            Ok(found) => self.admitted.extend(found),
            Err(error @ AdmissionError::WrongType { .. }) => {
                // The job stream itself is corrupt: nothing can be admitted anyway.
                return Err(error);
            }
            Err(other) => return Err(other),
        }
        self.reconcile().await?;
        tracing::info!(
            in_flight = self.admitted.len(),
            "took the dispatcher role; in-flight jobs counted from Redis"
        );
        Ok(())
    }

    /// The admitted hash; a wrong-typed one is reported, deleted and rebuilt from the
    /// job stream (it is the dispatcher's own index).
    async fn load_admitted(&mut self) -> Result<HashMap<JobId, String>, AdmissionError> {
        match self.queue.admission().admitted().await {
            Err(error @ AdmissionError::WrongType { .. }) => {
                self.complain(
                    "admitted",
                    &format!("{error}: deleted; rebuilt from the job stream"),
                );
                self.queue.admission().reset_corrupt_admitted().await?;
                let found = self
                    .queue
                    .admission()
                    .admitted_on_stream(&HashMap::new())
                    .await?;
                Ok(found.into_iter().collect())
            }
            other => other,
        }
    }

    /// Re-reads the admitted hash (it loses jobs that went back to their backlogs for a
    /// retry) and forgets settled jobs there and here.
    async fn reconcile(&mut self) -> Result<(), AdmissionError> {
        self.reconciled = Instant::now();
        let mut current = self.load_admitted().await?;
        let ids: Vec<JobId> = current.keys().copied().collect();
        let mut settled = Vec::new();
        for chunk in ids.chunks(1000) {
            for (id, done) in chunk
                .iter()
                .zip(self.queue.admission().settled(chunk).await?)
            {
                if done {
                    settled.push(*id);
                }
            }
        }
        for id in &settled {
            current.remove(id);
        }
        self.queue.admission().forget_admitted(&settled).await?;
        self.admitted = current;
        Ok(())
    }

    /// Reads completion notices without waiting; a failure here (a corrupt notice
    /// stream) is logged and leaves the work to the periodic reconciliation.
    async fn follow_completions(&mut self) {
        match self
            .queue
            .results()
            .completions(&self.notices, Duration::from_millis(1))
            .await
        {
            Ok((last, finished)) => {
                self.notices = last;
                self.notices_read = Instant::now();
                self.finished(finished).await;
            }
            Err(error) => {
                let key = self.queue.keys().done.clone();
                self.complain(
                    &key,
                    &format!("reading completion notices failed (counting from job records instead): {error}"),
                );
            }
        }
    }

    async fn finished(&mut self, finished: Vec<(JobId, OutcomeKind)>) {
        let done: Vec<JobId> = finished
            .into_iter()
            .map(|(job, _)| job)
            .filter(|job| self.admitted.remove(job).is_some())
            .collect();
        if let Err(error) = self.queue.admission().forget_admitted(&done).await {
            // Left in the hash, the jobs are found settled by the next reconciliation.
            tracing::warn!(%error, "forgetting finished jobs failed");
        }
    }
}

/// Takes one rate token for the tenant, if its policy has a rate.
fn take_token(state: &mut TenantState, policy: &TenantPolicy) -> bool {
    let Some(rate) = policy.rate_per_second.filter(|r| r.is_finite() && *r > 0.0) else {
        return true;
    };
    let now = Instant::now();
    let bucket = state.bucket.get_or_insert(Bucket {
        tokens: rate.max(1.0),
        at: now,
    });
    bucket.tokens =
        (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate.max(1.0));
    bucket.at = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_a_repaired_role_key_and_a_lasting_failure() {
        let health = Health::new();
        assert!(health.check().is_ok());
        health.ok(Some("ghost with no expiry".into()));
        let reason = health.check().unwrap_err();
        assert!(reason.contains("ghost with no expiry"), "{reason}");
        health.ok(None);
        health.failed("key x holds a string".into());
        assert!(health.check().is_ok(), "a brief failure is not yet unready");
        health.lock().failing = Some((Instant::now() - FAILING_GRACE, "key x".into()));
        assert!(health.check().unwrap_err().contains("key x"));
        health.ok(None);
        health.lock().last_ok = Instant::now() - STUCK_AFTER;
        assert!(health.check().unwrap_err().contains("stuck"));
    }

    #[test]
    fn a_rate_limited_tenant_gets_one_token_per_interval() {
        let policy = TenantPolicy {
            rate_per_second: Some(1.0),
            ..TenantPolicy::default()
        };
        let mut state = TenantState::default();
        assert!(take_token(&mut state, &policy));
        assert!(!take_token(&mut state, &policy));
        let nan = TenantPolicy {
            rate_per_second: Some(f64::NAN),
            ..TenantPolicy::default()
        };
        assert!(take_token(&mut TenantState::default(), &nan));
    }
}
