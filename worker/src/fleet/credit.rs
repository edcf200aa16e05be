//! Stored-bytes credit: what a worker process has already counted against each
//! tenant's `max_stored_bytes` and not yet used, so that a job's result draws its bytes
//! locally instead of making a Redis round trip (`quota_stored.lua`) per job.
//!
//! - A draw that the tenant's credit covers costs a lock and a subtraction.
//! - A draw it does not cover takes what is left and reserves the rest plus a new step:
//!   the need, doubled on each refill that follows a fresh one (so a busy tenant
//!   reserves up to [`CREDIT_STEP`] at a time and a tenant with one job now and then
//!   reserves exactly what it stores), or exactly the shortfall when a step is refused
//!   near the quota, so a tenant under its quota is never refused because of the step.
//! - A tenant has at most one refill in flight; a draw that misses while it is waits
//!   for it (only for its own tenant), and fails open at once if that refill failed.
//! - Credit is one reservation's surplus: a refill takes all that is left before it
//!   reserves, so credit is never added to older credit, and it holds at most
//!   [`CREDIT_STEP`]. Credit older than [`CREDIT_MAX_AGE`] (or one bucket of the
//!   stored-bytes window, whichever is shorter), or reserved against a higher quota than
//!   a draw now brings, is dropped, and handed to the caller to give back
//!   (`quota_release.lua`) to the bucket it was counted in: counted bytes are stored in
//!   that bucket or the next one.
//! - A [`Limit::CountOnly`] draw (a failed run's result: counted, never refused) takes
//!   from the credit when it can and otherwise reserves exactly its shortfall, without
//!   adding to the credit (credit reserved without a limit must not let a tenant over
//!   its quota store a successful output).
//!
//! What this costs: credit is counted before it is stored, so a tenant's counted bytes
//! can run ahead of what it stores by at most one step ([`CREDIT_STEP`], 1 MiB, and at
//! most 1/[`QUOTA_SHARE`] of its quota) per worker process at any time. Dropped credit is given back; what cannot be (Redis
//! unreachable, or a process killed without its drain) stays counted until its bucket
//! leaves the window. Nothing is ever stored uncounted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sluice_shared::queue::redis::{Reservation, StoredBucket};

/// Most bytes a worker process reserves for one tenant in one round trip beyond a
/// draw's own need, and the most credit it holds for one tenant: 1 MiB, about 220
/// results of a 4 KiB output. At 64 KiB (14 such results) a busy tenant's refills came
/// every ~1.3 ms per worker, and the run threads drawing for it while one refilled
/// waited on it: 60% of the worker's context switches on the 4 KiB uppercase bench
/// were threads parked in [`StoredCredit::draw`] (`perf record -e sched:sched_switch
/// --call-graph dwarf` on the worker; docs/benchmarks.md, "Worker overhead per job").
pub(super) const CREDIT_STEP: u64 = 1 << 20;

/// A tenant's step is also at most its quota divided by this, so the credit that
/// worker processes hold for a tenant with a small quota stays a small part of it (it
/// counts against the quota until drawn or given back).
pub(super) const QUOTA_SHARE: u64 = 64;

/// The largest step for a draw against quota `max`.
fn step_cap(max: u64) -> u64 {
    CREDIT_STEP.min(max / QUOTA_SHARE)
}

/// Longest a worker keeps unused credit before dropping it.
pub(super) const CREDIT_MAX_AGE: Duration = Duration::from_secs(1);

/// What a draw is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// Refused past this many bytes counted in the window (a successful run's output).
    Max(u64),
    /// Counted, never refused (a failed run's result).
    CountOnly,
}

impl Limit {
    /// The quota argument of `quota_stored.lua` for this limit.
    pub(super) fn max(self) -> u64 {
        match self {
            Limit::Max(max) => max,
            Limit::CountOnly => u64::MAX,
        }
    }
}

/// Credit held: the unused part of one reservation.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Bytes counted in Redis and not drawn yet.
    bytes: u64,
    /// When they were reserved.
    taken_at: Instant,
    /// The window bucket they are counted in.
    bucket: StoredBucket,
    /// The quota they were reserved against.
    max: u64,
}

/// One tenant's credit and refill state.
#[derive(Debug)]
struct Credit {
    held: Option<Held>,
    /// The last step reserved (the next one doubles it, up to [`CREDIT_STEP`]).
    step: u64,
    /// A refill of this tenant is in flight.
    refilling: bool,
    /// Refills finished, so a waiter knows when the one it waited for is done.
    refills: u64,
    /// The last refill failed (a Redis error).
    failed: bool,
    /// Draws waiting for the refill in flight.
    waiters: usize,
    /// When the last refill started (entries idle longer are forgotten by a sweep).
    touched: Instant,
}

impl Credit {
    fn new(now: Instant) -> Self {
        Credit {
            held: None,
            step: 0,
            refilling: false,
            refills: 0,
            failed: false,
            waiters: 0,
            touched: now,
        }
    }

    /// Drops the held credit if it is older than `max_age` or was reserved against a
    /// higher quota than `max`; returns it to be given back.
    fn drop_stale(
        &mut self,
        tenant: &str,
        now: Instant,
        max_age: Duration,
        max: Option<u64>,
    ) -> Option<Dropped> {
        let held = self.held?;
        let old = now.saturating_duration_since(held.taken_at) >= max_age;
        let lowered = max.is_some_and(|max| max < held.max);
        if !(old || lowered) {
            return None;
        }
        self.held = None;
        // The doubling starts over (as for a tenant seen for the first time).
        self.step = 0;
        Some(Dropped {
            tenant: tenant.to_owned(),
            bytes: held.bytes,
            bucket: held.bucket,
        })
    }
}

/// Credit dropped unused: bytes counted for `tenant` in `bucket` and never stored, to
/// be given back (`Admission::release_stored`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dropped {
    /// Whose quota counted them.
    pub tenant: String,
    /// How many.
    pub bytes: u64,
    /// The window bucket they are counted in.
    pub bucket: StoredBucket,
}

/// What a draw got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Draw {
    /// The bytes are counted.
    Granted,
    /// The tenant is over its quota: `used` bytes are counted in the current window.
    Refused {
        /// Bytes counted for the tenant in the window.
        used: u64,
    },
    /// The tenant's refill this draw waited for failed (Redis error, logged by the
    /// draw that made it): nothing was counted, and the caller fails open.
    Unavailable,
}

/// Per-tenant stored-bytes credit of one worker process.
#[derive(Debug)]
pub(super) struct StoredCredit {
    tenants: Mutex<HashMap<String, Credit>>,
    /// Notified when a refill ends (any tenant's; waiters check their own).
    refilled: Condvar,
    max_age: Duration,
}

impl StoredCredit {
    /// Credit dropped after [`CREDIT_MAX_AGE`] or `bucket` (the stored-bytes window's
    /// bucket length), whichever is shorter.
    pub(super) fn new(bucket: Duration) -> Self {
        StoredCredit {
            tenants: Mutex::default(),
            refilled: Condvar::new(),
            max_age: CREDIT_MAX_AGE.min(bucket),
        }
    }

    /// How long credit is kept: the sweep ([`Self::sweep_at`]) should run this often.
    pub(super) fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Counts `need` bytes stored for `tenant` against `limit`, from the credit when it
    /// covers them, otherwise through `reserve` (which counts its argument in Redis
    /// against `limit.max()`, as `reserve_stored` does). Blocks for the round trip
    /// when there is one, or for the tenant's refill in flight; `reserve`'s error is
    /// returned as is. Credit dropped on the way is passed to `release` (outside the
    /// lock) to be given back.
    pub(super) fn draw<E>(
        &self,
        tenant: &str,
        need: u64,
        limit: Limit,
        reserve: impl FnMut(u64) -> Result<Reservation, E>,
        release: impl FnMut(Dropped),
    ) -> Result<Draw, E> {
        self.draw_at(Instant::now(), tenant, need, limit, reserve, release)
    }

    /// [`Self::draw`] at the time `now`.
    pub(super) fn draw_at<E>(
        &self,
        now: Instant,
        tenant: &str,
        need: u64,
        limit: Limit,
        mut reserve: impl FnMut(u64) -> Result<Reservation, E>,
        mut release: impl FnMut(Dropped),
    ) -> Result<Draw, E> {
        let max = match limit {
            Limit::Max(max) => Some(max),
            Limit::CountOnly => None,
        };
        let mut dropped = Vec::new();
        let mut tenants = self.tenants.lock();
        // Take from the credit, wait for the tenant's refill in flight, or start one.
        let (had, short, ask) = loop {
            let credit = match tenants.get_mut(tenant) {
                Some(credit) => credit,
                None => tenants
                    .entry(tenant.to_owned())
                    .or_insert_with(|| Credit::new(now)),
            };
            dropped.extend(credit.drop_stale(tenant, now, self.max_age, max));
            if let Some(held) = &mut credit.held
                && held.bytes >= need
            {
                held.bytes -= need;
                drop(tenants);
                dropped.into_iter().for_each(&mut release);
                return Ok(Draw::Granted);
            }
            if credit.refilling {
                let seen = credit.refills;
                credit.waiters += 1;
                let failed = loop {
                    self.refilled.wait(&mut tenants);
                    match tenants.get_mut(tenant) {
                        Some(c) if c.refills == seen => {}
                        Some(c) => {
                            c.waiters -= 1;
                            break c.failed;
                        }
                        None => break false,
                    }
                };
                if failed {
                    drop(tenants);
                    dropped.into_iter().for_each(&mut release);
                    return Ok(Draw::Unavailable);
                }
                continue;
            }
            // What the credit covers is taken now; the rest (`short`) is reserved.
            let had = credit.held.take();
            let next = match limit {
                Limit::Max(max) => credit.step.saturating_mul(2).min(step_cap(max)),
                Limit::CountOnly => 0,
            };
            let short = need - had.map_or(0, |h| h.bytes);
            credit.refilling = true;
            credit.touched = now;
            break (had, short, next.max(short));
        };
        drop(tenants);
        dropped.into_iter().for_each(&mut release);
        let mut reply = reserve(ask);
        let mut granted = ask;
        if matches!(reply, Ok(Reservation::Refused { .. })) && ask > short {
            // The step does not fit under the quota; the shortfall alone may.
            reply = reserve(short);
            granted = short;
        }
        let mut tenants = self.tenants.lock();
        // A sweep never removes an entry with a refill in flight.
        let credit = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Credit::new(now));
        credit.refilling = false;
        credit.refills = credit.refills.wrapping_add(1);
        credit.failed = reply.is_err();
        let out = match reply {
            Err(e) => {
                // Nothing drawn: what was taken is held again, as old as it was.
                credit.held = had;
                Err(e)
            }
            Ok(Reservation::Refused { used, .. }) => {
                credit.held = had;
                credit.step = 0;
                Ok(Draw::Refused { used })
            }
            Ok(Reservation::Granted { bucket, .. }) => {
                if let Limit::Max(max) = limit {
                    // Also when nothing is left over: the step doubles from this one.
                    credit.step = granted;
                    let bytes = (granted - short).min(step_cap(max));
                    credit.held = (bytes > 0).then_some(Held {
                        bytes,
                        taken_at: now,
                        bucket,
                        max,
                    });
                }
                Ok(Draw::Granted)
            }
        };
        drop(tenants);
        self.refilled.notify_all();
        out
    }

    /// Drops credit older than the bound and forgets tenants idle for as long;
    /// returns the dropped credit to be given back. Run once per [`Self::max_age`].
    pub(super) fn sweep_at(&self, now: Instant) -> Vec<Dropped> {
        let max_age = self.max_age;
        let mut dropped = Vec::new();
        self.tenants.lock().retain(|tenant, credit| {
            if credit.refilling || credit.waiters > 0 {
                return true;
            }
            dropped.extend(credit.drop_stale(tenant, now, max_age, None));
            credit.held.is_some() || now.saturating_duration_since(credit.touched) < max_age
        });
        dropped
    }

    /// Takes all credit (the worker stops): returns it to be given back.
    pub(super) fn drain(&self) -> Vec<Dropped> {
        let mut tenants = self.tenants.lock();
        tenants
            .iter_mut()
            .filter_map(|(tenant, credit)| {
                let held = credit.held.take()?;
                Some(Dropped {
                    tenant: tenant.clone(),
                    bytes: held.bytes,
                    bucket: held.bucket,
                })
            })
            .collect()
    }

    /// Unused credit of `tenant` (tests).
    #[cfg(test)]
    fn left(&self, tenant: &str) -> u64 {
        self.tenants
            .lock()
            .get(tenant)
            .and_then(|c| c.held)
            .map_or(0, |h| h.bytes)
    }

    /// Draws waiting for `tenant`'s refill in flight (tests).
    #[cfg(test)]
    fn waiting(&self, tenant: &str) -> usize {
        self.tenants.lock().get(tenant).map_or(0, |c| c.waiters)
    }

    /// Tenants with an entry (tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.tenants.lock().len()
    }
}

#[cfg(test)]
mod tests;
