//! The in-memory queue behind embedded batch mode: one process, no infrastructure, the
//! same lease semantics as the Redis backend.

use parking_lot::{Mutex, MutexGuard};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Claimed, Completion, DeadLetter, Lease, Queue, QueueError, QueueStats, ReleaseKind};
use crate::codec;
use crate::job::{Job, JobId};
use crate::outcome::JobResult;

struct Entry {
    envelope: Vec<u8>,
    deliveries: u32,
    /// `Some` while claimed: when the lease runs out.
    leased_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    ready: VecDeque<u64>,
    /// Due time, then entry id: promoted to `ready` when due.
    delayed: BTreeMap<(Instant, u64), ()>,
    results: HashMap<JobId, JobResult>,
    dead: Vec<DeadLetter>,
}

impl State {
    fn insert(&mut self, envelope: Vec<u8>, due: Option<Instant>) {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                envelope,
                deliveries: 0,
                leased_until: None,
            },
        );
        match due {
            Some(at) => {
                self.delayed.insert((at, id), ());
            }
            None => self.ready.push_back(id),
        }
    }

    /// Promotes due delayed entries and takes back expired leases; returns when the
    /// next of either will happen.
    fn tick(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(at, id), ())) = self.delayed.first_key_value() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            self.ready.push_back(id);
        }
        let mut next = self.delayed.first_key_value().map(|(&(at, _), ())| at);
        let mut expired: Vec<u64> = Vec::new();
        for (&id, entry) in &self.entries {
            if let Some(until) = entry.leased_until {
                if until <= now {
                    expired.push(id);
                } else {
                    next = Some(next.map_or(until, |n: Instant| n.min(until)));
                }
            }
        }
        // Oldest first, and ahead of new work: a taken-over job has waited longest.
        expired.sort_unstable();
        for id in expired.into_iter().rev() {
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.leased_until = None;
            }
            self.ready.push_front(id);
        }
        next
    }

    fn entry_id(lease: &Lease) -> Result<u64, QueueError> {
        lease.entry_id.parse().map_err(|_| QueueError::LeaseLost {
            entry_id: lease.entry_id.clone(),
        })
    }

    /// The entry if `lease` still holds it.
    fn held(&mut self, lease: &Lease) -> Result<u64, QueueError> {
        let id = Self::entry_id(lease)?;
        match self.entries.get(&id) {
            Some(entry) if entry.leased_until.is_some() && entry.deliveries == lease.deliveries => {
                Ok(id)
            }
            _ => Err(QueueError::LeaseLost {
                entry_id: lease.entry_id.clone(),
            }),
        }
    }

    fn remove(&mut self, lease: &Lease) {
        if let Ok(id) = Self::entry_id(lease) {
            self.entries.remove(&id);
            self.ready.retain(|&r| r != id);
        }
    }
}

/// An in-process [`Queue`]. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    work_available: Notify,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

impl Queue for MemoryQueue {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        {
            let mut state = self.lock();
            for job in jobs {
                state.insert(codec::encode(job), None);
            }
        }
        self.work_available.notify_waiters();
        Ok(())
    }

    async fn enqueue_raw(&self, envelope: Vec<u8>) -> Result<(), QueueError> {
        self.lock().insert(envelope, None);
        self.work_available.notify_waiters();
        Ok(())
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        let give_up = Instant::now() + wait;
        loop {
            // Registered before the state is read, so an enqueue between the read and
            // the wait still wakes this claimer.
            let notified = self.work_available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_event = {
                let now = Instant::now();
                let mut state = self.lock();
                let next_event = state.tick(now);
                let mut claimed = Vec::new();
                while claimed.len() < max {
                    let Some(id) = state.ready.pop_front() else {
                        break;
                    };
                    let Some(entry) = state.entries.get_mut(&id) else {
                        continue;
                    };
                    entry.deliveries += 1;
                    entry.leased_until = Some(now + lease_for);
                    let delivery = codec::decode(&entry.envelope);
                    claimed.push(Claimed {
                        lease: Lease {
                            entry_id: id.to_string(),
                            job_id: delivery.as_ref().ok().map(|job| job.id),
                            deliveries: entry.deliveries,
                            consumer: consumer.to_owned(),
                        },
                        delivery,
                    });
                }
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
                next_event
            };
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let wake_at = next_event.map_or(give_up, |at| at.min(give_up));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<(), QueueError> {
        let mut state = self.lock();
        let id = state.held(lease)?;
        if let Some(entry) = state.entries.get_mut(&id) {
            entry.leased_until = Some(Instant::now() + lease_for);
        }
        Ok(())
    }

    async fn complete(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> Result<Completion, QueueError> {
        let result = result.borrow();
        let mut state = self.lock();
        state.remove(lease);
        if state.results.contains_key(&result.job_id) {
            return Ok(Completion::AlreadyDone);
        }
        state.results.insert(result.job_id, result.clone());
        Ok(Completion::Recorded)
    }

    async fn retry(&self, lease: &Lease, job: &Job, delay: Duration) -> Result<(), QueueError> {
        {
            let mut state = self.lock();
            state.held(lease)?;
            state.remove(lease);
            state.insert(codec::encode(job), Some(Instant::now() + delay));
        }
        // A claimer waiting for work must re-arm its timer for the new due time.
        self.work_available.notify_waiters();
        Ok(())
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> Result<(), QueueError> {
        let result = result.borrow();
        let mut state = self.lock();
        state.remove(lease);
        if let Some(job_id) = lease.job_id {
            state
                .results
                .entry(job_id)
                .or_insert_with(|| result.clone());
        }
        state.dead.push(DeadLetter {
            entry_id: lease.entry_id.clone(),
            job_id: lease.job_id,
            reason: result.outcome.to_string(),
            kind: result.outcome.kind(),
            attempts: result.attempt,
        });
        Ok(())
    }

    async fn release(
        &self,
        lease: &Lease,
        _job: Option<&Job>,
        kind: ReleaseKind,
    ) -> Result<(), QueueError> {
        {
            let mut state = self.lock();
            let id = state.held(lease)?;
            if let Some(entry) = state.entries.get_mut(&id) {
                entry.leased_until = None;
                // The entry (and its envelope) stays, so its delivery count carries the
                // attempts: a drained delivery is taken back, an overdue one kept.
                if kind == ReleaseKind::Drain {
                    entry.deliveries = entry.deliveries.saturating_sub(1);
                }
            }
            state.ready.push_front(id);
        }
        self.work_available.notify_waiters();
        Ok(())
    }

    async fn result(&self, job_id: JobId) -> Result<Option<JobResult>, QueueError> {
        Ok(self.lock().results.get(&job_id).cloned())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self.lock().dead.clone())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let state = self.lock();
        let leased = state
            .entries
            .values()
            .filter(|e| e.leased_until.is_some())
            .count() as u64;
        Ok(QueueStats {
            ready: state.ready.len() as u64,
            leased,
            delayed: state.delayed.len() as u64,
            completed: state.results.len() as u64,
            dead: state.dead.len() as u64,
        })
    }
}
