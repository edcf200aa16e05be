//! The dispatcher: fair admission of the service's jobs. Jobs submitted over HTTP wait
//! in their tenant's backlog; the dispatcher keeps the shared job stream shallow (at
//! most `window` unclaimed jobs) and refills it round-robin across tenants, one job per
//! tenant per round, skipping tenants at their concurrency limit or out of rate tokens.
//! So a tenant's flood of slow jobs sits in its own backlog and cannot starve another
//! tenant: each round gives every waiting tenant the same share of the free places.
//!
//! One `sluice serve` holds the dispatcher role at a time (`hold.lua`); the others
//! stand by and take over within a few seconds if it dies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{JobId, QueueError, TenantPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a dispatcher's hold on the role lasts without renewal.
const HOLD: Duration = Duration::from_secs(5);
/// How often an idle dispatcher looks again (new jobs also wake it at once).
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// How often the in-flight counts are checked against Redis, for jobs whose notice was
/// never seen (cancelled after dispatch, notices trimmed or missed).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// A token bucket per tenant, for `rate_per_second`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The dispatcher's view of one tenant.
#[derive(Default)]
struct TenantState {
    in_flight: u64,
    bucket: Option<Bucket>,
    policy: Option<(Instant, TenantPolicy)>,
}

/// Runs the dispatcher until `shutdown`. `wake` is notified when jobs are submitted.
pub async fn run(
    queue: Arc<RedisQueue>,
    window: u64,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let holder = uuid::Uuid::new_v4().to_string();
    let mut tenants: HashMap<String, TenantState> = HashMap::new();
    let mut owners: HashMap<JobId, String> = HashMap::new();
    let mut reconciled = Instant::now();
    let mut notices = queue
        .notices_from_now()
        .await
        .unwrap_or_else(|_| "$".to_owned());
    while !shutdown.is_cancelled() {
        let round = async {
            if !queue.hold_dispatcher(&holder, HOLD).await? {
                return Ok::<bool, QueueError>(false);
            }
            // Finished jobs free their tenants' concurrency.
            let (last, finished) = queue
                .completions(&notices, Duration::from_millis(1))
                .await?;
            notices = last;
            for (job, _) in finished {
                if let Some(tenant) = owners.remove(&job)
                    && let Some(state) = tenants.get_mut(&tenant)
                {
                    state.in_flight = state.in_flight.saturating_sub(1);
                }
            }
            if reconciled.elapsed() >= RECONCILE_EVERY && !owners.is_empty() {
                reconciled = Instant::now();
                let ids: Vec<JobId> = owners.keys().copied().collect();
                for (job, settled) in ids.iter().zip(queue.settled(&ids).await?) {
                    if settled
                        && let Some(tenant) = owners.remove(job)
                        && let Some(state) = tenants.get_mut(&tenant)
                    {
                        state.in_flight = state.in_flight.saturating_sub(1);
                    }
                }
            }
            let depth = queue.ready_depth().await?;
            let mut free = window.saturating_sub(depth);
            let waiting = queue.backlogged_tenants().await?;
            let mut moved_any = false;
            while free > 0 {
                let mut moved_this_round = false;
                for tenant in &waiting {
                    if free == 0 {
                        break;
                    }
                    let state = tenants.entry(tenant.clone()).or_default();
                    let policy = match &state.policy {
                        Some((read, policy)) if read.elapsed() < Duration::from_secs(5) => {
                            policy.clone()
                        }
                        _ => {
                            let policy = queue.policy(tenant).await?.unwrap_or_default();
                            state.policy = Some((Instant::now(), policy.clone()));
                            policy
                        }
                    };
                    if state.in_flight >= u64::from(policy.max_concurrent_jobs)
                        || !take_token(state, &policy)
                    {
                        continue;
                    }
                    for job in queue.dispatch(tenant, 1).await? {
                        owners.insert(job, tenant.clone());
                        state.in_flight += 1;
                        free -= 1;
                        moved_this_round = true;
                    }
                }
                if !moved_this_round {
                    break;
                }
                moved_any = true;
            }
            Ok(moved_any)
        };
        let moved = match round.await {
            Ok(moved) => moved,
            Err(error) => {
                tracing::warn!(%error, "dispatcher round failed");
                false
            }
        };
        if !moved {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(IDLE_WAIT) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
}

/// Takes one rate token for the tenant, if its policy has a rate.
fn take_token(state: &mut TenantState, policy: &TenantPolicy) -> bool {
    let Some(rate) = policy.rate_per_second.filter(|r| *r > 0.0) else {
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
