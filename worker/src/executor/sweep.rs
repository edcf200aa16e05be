//! The executor's one sweep task, in place of a watchdog timer and a renewal future
//! per job: it wakes at the earliest of the runs' watchdog deadlines and lease
//! renewals (or a [`tick`] at most), gives up the runs past their deadline plus the
//! watchdog grace (their tasks record them as `timeout`), renews the leases that are
//! due (every third of the lease, from the claim), and wakes one more run thread when a
//! job has waited too long for one ([`RunThreads::wake_stale`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_shared::{JobId, Lease, Queue, QueueError};
use tokio::sync::oneshot;

use super::flight::{RunClock, Shared};
use super::threads::RunThreads;
use super::{JobEnv, QueueOp};

/// What the sweep watches of a running job (in its [`Flight`](super::flight::Flight)).
pub(super) struct Watch {
    /// The run's budget: its timeout plus the watchdog grace.
    pub(super) limit: Duration,
    /// Told when the run is given up; `None` once it was. Its receiver is dropped
    /// once the run's result is in, which ends the watch.
    pub(super) give_up: Option<oneshot::Sender<()>>,
    /// When the lease is next renewed.
    pub(super) renew_at: Instant,
}

impl Watch {
    /// A watch of a run claimed at `claimed` with budget `limit`; the receiver hears
    /// when the run is given up.
    pub(super) fn new(
        limit: Duration,
        claimed: Instant,
        lease_for: Duration,
    ) -> (Self, oneshot::Receiver<()>) {
        let (give_up, given_up) = oneshot::channel();
        let watch = Watch {
            limit,
            give_up: Some(give_up),
            renew_at: claimed + renew_every(lease_for),
        };
        (watch, given_up)
    }
}

/// How often a running job's lease is renewed: every third of it.
fn renew_every(lease_for: Duration) -> Duration {
    // A zero lease is refused at start; this only keeps a bad config from spinning.
    (lease_for / 3).max(Duration::from_millis(10))
}

/// The longest the sweep sleeps: half the renewal period or the watchdog grace
/// (so a run claimed while it sleeps is looked at in time), within 5 ms ..= 1 s.
pub(super) fn tick(lease_for: Duration, watchdog_grace: Duration) -> Duration {
    (renew_every(lease_for) / 2)
        .min(watchdog_grace / 2)
        .clamp(Duration::from_millis(5), Duration::from_secs(1))
}

/// One renewal the sweep found due.
struct Due {
    entry_id: String,
    lease: Lease,
    clock: Arc<RunClock>,
    job: Option<JobId>,
}

/// The sweep: runs until aborted (the loop's end).
pub(super) async fn sweep<Q: Queue + 'static, E: JobEnv>(
    queue: Arc<Q>,
    env: Arc<E>,
    shared: Arc<Shared>,
    threads: Arc<RunThreads>,
    lease_for: Duration,
    tick: Duration,
) {
    let every = renew_every(lease_for);
    loop {
        // Awake: a submit from here on kicks, so a queue it leaves is looked at.
        threads.sweep_awake();
        let now = Instant::now();
        let mut next = now + tick;
        if let Some(at) = threads.wake_stale() {
            next = next.min(at);
        }
        let mut renewals = Vec::new();
        for flight in shared.in_flight.lock().values_mut() {
            let Some(watch) = &mut flight.watch else {
                continue;
            };
            if watch.give_up.as_ref().is_none_or(|tell| tell.is_closed()) {
                // Given up, or its result is in.
                continue;
            }
            if let Some(due) = flight.clock.due(watch.limit) {
                if now >= due {
                    if let Some(tell) = watch.give_up.take() {
                        let _ = tell.send(());
                    }
                    continue;
                }
                next = next.min(due);
            }
            if flight.clock.lease_lost.load(Ordering::SeqCst) {
                continue;
            }
            if now >= watch.renew_at {
                if flight.clock.renewing.swap(true, Ordering::SeqCst) {
                    // The last renewal has not come back (a stalled backend): no
                    // second one; looked at again on the next tick.
                    continue;
                }
                watch.renew_at = now + every;
                renewals.push(Due {
                    entry_id: flight.lease.entry_id.clone(),
                    lease: flight.lease.clone(),
                    clock: flight.clock.clone(),
                    job: flight.job.as_ref().map(|job| job.id),
                });
            }
            next = next.min(watch.renew_at);
        }
        for due in renewals {
            let (queue, env, shared) = (queue.clone(), env.clone(), shared.clone());
            tokio::spawn(async move { renew(&*queue, &*env, &shared, due, lease_for).await });
        }
        threads.sweep_sleeps_until(next);
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = shared.kick.notified() => {}
        }
    }
}

/// Renews one lease, telling `env`; a lost lease is marked on its clock (so it is not
/// renewed again, and its recording is not counted twice). A renewal that comes back
/// after its run's end began to be written (or the run left `in_flight`) reports no
/// error: the lease is gone because the job is done.
async fn renew<Q: Queue, E: JobEnv>(
    queue: &Q,
    env: &E,
    shared: &Shared,
    due: Due,
    lease_for: Duration,
) {
    let renewed = queue.extend_lease(&due.lease, lease_for).await;
    due.clock.renewing.store(false, Ordering::SeqCst);
    let error = match renewed {
        Ok(()) => {
            env.on_lease_renewed();
            return;
        }
        Err(error) => error,
    };
    let live = !due.clock.recording.load(Ordering::SeqCst)
        && !due.clock.abandoned.load(Ordering::SeqCst)
        && shared
            .in_flight
            .lock()
            .get(&due.entry_id)
            .is_some_and(|flight| Arc::ptr_eq(&flight.clock, &due.clock));
    if !live {
        tracing::debug!(job = ?due.job, %error, "a renewal came back after its run ended; dropped");
        return;
    }
    match error {
        QueueError::LeaseLost { .. } => {
            if !due.clock.lease_lost.swap(true, Ordering::SeqCst) {
                env.on_queue_error(QueueOp::Renew, due.job, &error);
            }
        }
        error => env.on_queue_error(QueueOp::Renew, due.job, &error),
    }
}
