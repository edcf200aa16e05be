//! Stored-bytes credit: what a worker process has already counted against each
//! tenant's `max_stored_bytes` and not yet used, so that a job's result draws its bytes
//! locally instead of making a Redis round trip (`quota_stored.lua`) per job.
//!
//! - A draw that the tenant's credit covers costs a lock and a subtraction.
//! - A draw it does not cover reserves a new step: the need, doubled on each refill that
//!   follows a fresh one (so a busy tenant reserves up to [`CREDIT_STEP`] at a time and
//!   a tenant with one job now and then reserves exactly what it stores), or exactly the
//!   need when a step is refused near the quota, so a tenant under its quota is never
//!   refused because of the step.
//! - Credit older than [`CREDIT_MAX_AGE`] (or one bucket of the stored-bytes window,
//!   whichever is shorter) is dropped, so bytes are counted in the bucket they are
//!   stored in or the one before.
//! - A draw with `max == u64::MAX` (a failed run's result: counted, never refused) takes
//!   from the credit when it can and otherwise reserves exactly its need, without
//!   adding to the credit (credit reserved without a limit must not let a tenant over its
//!   quota store a successful output).
//!
//! What this costs: credit is counted before it is stored, so a tenant's counted bytes
//! can run ahead of what it stores by at most one step ([`CREDIT_STEP`], 64 KiB) per
//! worker process, for at most one window (dropped credit stays counted until its
//! bucket leaves the window); nothing is ever stored uncounted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::queue::redis::Reservation;

/// Most bytes a worker process reserves for one tenant in one round trip.
pub(super) const CREDIT_STEP: u64 = 64 << 10;

/// Longest a worker keeps unused credit before dropping it.
pub(super) const CREDIT_MAX_AGE: Duration = Duration::from_secs(1);

/// Tenants with credit above which a refill first forgets the stale ones.
const PRUNE_ABOVE: usize = 256;

/// One tenant's unused credit.
#[derive(Debug)]
struct Credit {
    /// Bytes counted in Redis and not drawn yet.
    left: u64,
    /// When the last step was reserved.
    taken_at: Instant,
    /// The last step reserved (the next one doubles it, up to [`CREDIT_STEP`]).
    step: u64,
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
}

/// Per-tenant stored-bytes credit of one worker process.
#[derive(Debug)]
pub(super) struct StoredCredit {
    tenants: Mutex<HashMap<String, Credit>>,
    /// Held for a refill's round trip, so that runs short of credit at once make one
    /// reservation, not one each (which would leave up to a step per slot unused).
    refill: Mutex<()>,
    max_age: Duration,
}

impl StoredCredit {
    /// Credit dropped after [`CREDIT_MAX_AGE`] or `bucket` (the stored-bytes window's
    /// bucket length), whichever is shorter.
    pub(super) fn new(bucket: Duration) -> Self {
        StoredCredit {
            tenants: Mutex::default(),
            refill: Mutex::new(()),
            max_age: CREDIT_MAX_AGE.min(bucket),
        }
    }

    /// Counts `need` bytes stored for `tenant` against `max` (`u64::MAX`: count, never
    /// refuse), from the credit when it covers them, otherwise through `reserve` (which
    /// counts its argument in Redis against `max`, as `reserve_stored` does). Blocks for
    /// the round trip when there is one; its error is returned as is.
    pub(super) fn draw<E>(
        &self,
        tenant: &str,
        need: u64,
        max: u64,
        mut reserve: impl FnMut(u64) -> Result<Reservation, E>,
    ) -> Result<Draw, E> {
        let unlimited = max == u64::MAX;
        if self.take(tenant, need) {
            return Ok(Draw::Granted);
        }
        // One refill at a time; the credit is looked at again once it is this run's turn.
        let _refill = self.refill.lock();
        // What the credit covers is taken now; the rest (`short`) is reserved.
        let (had, short, ask) = {
            let mut tenants = self.tenants.lock();
            let mut had = 0;
            let mut next = 0;
            if let Some(credit) = tenants.get_mut(tenant) {
                if credit.taken_at.elapsed() >= self.max_age {
                    tenants.remove(tenant);
                } else if credit.left >= need {
                    credit.left -= need;
                    return Ok(Draw::Granted);
                } else {
                    had = std::mem::take(&mut credit.left);
                    if !unlimited {
                        next = credit.step.saturating_mul(2).min(CREDIT_STEP);
                    }
                }
            }
            let short = need - had;
            (had, short, next.max(short))
        };
        let mut reply = reserve(ask);
        let mut granted = ask;
        if matches!(reply, Ok(Reservation::Refused { .. })) && ask > short {
            // The step does not fit under the quota; the shortfall alone may.
            reply = reserve(short);
            granted = short;
        }
        match reply {
            Err(e) => {
                self.give(tenant, had);
                Err(e)
            }
            Ok(Reservation::Refused { used, .. }) => {
                self.give(tenant, had);
                if let Some(credit) = self.tenants.lock().get_mut(tenant) {
                    credit.step = 0;
                }
                Ok(Draw::Refused { used })
            }
            Ok(Reservation::Granted { .. }) => {
                if !unlimited {
                    // Also when nothing is left over: the step doubles from this one.
                    self.keep(tenant, granted - short, granted);
                }
                Ok(Draw::Granted)
            }
        }
    }

    /// Takes `need` bytes from the tenant's fresh credit when it covers them.
    fn take(&self, tenant: &str, need: u64) -> bool {
        let mut tenants = self.tenants.lock();
        match tenants.get_mut(tenant) {
            Some(credit) if credit.left >= need && credit.taken_at.elapsed() < self.max_age => {
                credit.left -= need;
                true
            }
            _ => false,
        }
    }

    /// Adds `bytes` already counted against the tenant's quota (a step's surplus, or
    /// blob output reserved ahead and not written) to its credit.
    pub(super) fn give(&self, tenant: &str, bytes: u64) {
        if bytes > 0 {
            self.keep(tenant, bytes, 0);
        }
    }

    fn keep(&self, tenant: &str, bytes: u64, step: u64) {
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        if tenants.len() > PRUNE_ABOVE {
            let max_age = self.max_age;
            tenants.retain(|_, c| c.taken_at.elapsed() < max_age);
        }
        let credit = tenants.entry(tenant.to_owned()).or_insert(Credit {
            left: 0,
            taken_at: now,
            step: 0,
        });
        if credit.taken_at.elapsed() >= self.max_age {
            credit.left = 0;
        }
        credit.left = credit.left.saturating_add(bytes);
        credit.taken_at = now;
        credit.step = credit.step.max(step);
    }

    /// Unused credit of `tenant` (tests).
    #[cfg(test)]
    fn left(&self, tenant: &str) -> u64 {
        self.tenants.lock().get(tenant).map_or(0, |c| c.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `quota_stored.lua`: counts what it grants, refuses past `max`.
    struct Counter {
        used: u64,
        calls: u32,
    }

    impl Counter {
        fn reserve(&mut self, bytes: u64, max: u64) -> Result<Reservation, ()> {
            self.calls += 1;
            if self.used.saturating_add(bytes) > max {
                return Ok(Reservation::Refused {
                    used: self.used,
                    retry_after: Duration::from_secs(1),
                });
            }
            self.used += bytes;
            Ok(Reservation::Granted { used: self.used })
        }
    }

    fn draw(credit: &StoredCredit, counter: &mut Counter, need: u64, max: u64) -> Draw {
        credit
            .draw("t", need, max, |ask| counter.reserve(ask, max))
            .unwrap()
    }

    #[test]
    fn many_small_draws_make_few_round_trips_and_never_count_less_than_drawn() {
        let credit = StoredCredit::new(Duration::from_secs(3600));
        let mut counter = Counter { used: 0, calls: 0 };
        for _ in 0..1000 {
            assert_eq!(
                draw(&credit, &mut counter, 600, u64::MAX - 1),
                Draw::Granted
            );
        }
        // Doubling from 600 bytes to the 64 KiB step: 7 refills, then one per ~109 jobs.
        assert!(counter.calls < 20, "{} round trips", counter.calls);
        assert!(counter.used >= 600 * 1000);
        assert!(counter.used - 600 * 1000 <= CREDIT_STEP, "{}", counter.used);
        assert_eq!(counter.used - 600 * 1000, credit.left("t"));
    }

    #[test]
    fn a_tenant_under_its_quota_is_never_refused_because_of_the_step() {
        let credit = StoredCredit::new(Duration::from_secs(3600));
        let max = 10_000;
        let mut counter = Counter { used: 0, calls: 0 };
        let mut drawn = 0;
        while drawn + 600 <= max {
            assert_eq!(draw(&credit, &mut counter, 600, max), Draw::Granted);
            drawn += 600;
        }
        assert!(counter.used <= max);
        // 16 × 600 = 9,600 drawn; 400 left under the quota, so 600 more is refused.
        assert_eq!(
            draw(&credit, &mut counter, 600, max),
            Draw::Refused { used: counter.used }
        );
        // What still fits is granted.
        let room = max - counter.used + credit.left("t");
        assert_eq!(draw(&credit, &mut counter, room, max), Draw::Granted);
    }

    #[test]
    fn unlimited_draws_count_exactly_and_add_no_credit() {
        let credit = StoredCredit::new(Duration::from_secs(3600));
        let mut counter = Counter { used: 0, calls: 0 };
        for _ in 0..3 {
            assert_eq!(draw(&credit, &mut counter, 600, u64::MAX), Draw::Granted);
        }
        assert_eq!(counter.used, 1800);
        assert_eq!(credit.left("t"), 0);
        // A failed run draws from credit a limited draw left behind.
        draw(&credit, &mut counter, 600, 1 << 30);
        draw(&credit, &mut counter, 600, 1 << 30);
        let (used, left) = (counter.used, credit.left("t"));
        assert!(left >= 600);
        draw(&credit, &mut counter, 600, u64::MAX);
        assert_eq!((counter.used, credit.left("t")), (used, left - 600));
    }

    #[test]
    fn stale_credit_is_dropped() {
        let credit = StoredCredit::new(Duration::from_millis(1));
        let mut counter = Counter { used: 0, calls: 0 };
        draw(&credit, &mut counter, 600, 1 << 30);
        draw(&credit, &mut counter, 600, 1 << 30);
        assert!(credit.left("t") > 0);
        std::thread::sleep(Duration::from_millis(5));
        let calls = counter.calls;
        draw(&credit, &mut counter, 600, 1 << 30);
        // A fresh round trip for exactly the need: the old credit is gone.
        assert_eq!(counter.calls, calls + 1);
        assert_eq!(credit.left("t"), 0);
    }

    #[test]
    fn given_bytes_are_drawn_without_a_round_trip() {
        let credit = StoredCredit::new(Duration::from_secs(3600));
        let mut counter = Counter { used: 0, calls: 0 };
        credit.give("t", 1000);
        assert_eq!(draw(&credit, &mut counter, 600, 1 << 30), Draw::Granted);
        assert_eq!(counter.calls, 0);
        assert_eq!(credit.left("t"), 400);
    }
}
