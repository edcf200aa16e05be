//! Unit tests of the stored-bytes credit, with made-up times (no sleeps).

use std::sync::Arc;
use std::sync::mpsc;

use super::*;

/// A stand-in for `quota_stored.lua`: counts what it grants, refuses past `max`, and
/// counts every reservation in bucket 7.
struct Counter {
    used: u64,
    calls: u32,
    released: Vec<Dropped>,
}

impl Counter {
    fn new() -> Self {
        Counter {
            used: 0,
            calls: 0,
            released: Vec::new(),
        }
    }

    fn reserve(&mut self, bytes: u64, max: u64) -> Result<Reservation, ()> {
        self.calls += 1;
        if self.used.saturating_add(bytes) > max {
            return Ok(Reservation::Refused {
                used: self.used,
                retry_after: Duration::from_secs(1),
            });
        }
        self.used += bytes;
        Ok(Reservation::Granted {
            used: self.used,
            bucket: StoredBucket(7),
        })
    }
}

fn draw_at(
    credit: &StoredCredit,
    counter: &mut Counter,
    at: Instant,
    need: u64,
    limit: Limit,
) -> Draw {
    let mut released = Vec::new();
    let draw = credit
        .draw_at(
            at,
            "t",
            need,
            limit,
            |ask| counter.reserve(ask, limit.max()),
            |d| released.push(d),
        )
        .unwrap();
    counter.released.extend(released);
    draw
}

fn hour() -> StoredCredit {
    StoredCredit::new(Duration::from_secs(3600))
}

#[test]
fn many_small_draws_make_few_round_trips_and_never_count_less_than_drawn() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    for _ in 0..1000 {
        let limit = Limit::Max(u64::MAX - 1);
        assert_eq!(draw_at(&credit, &mut counter, t, 600, limit), Draw::Granted);
        assert!(credit.left("t") <= CREDIT_STEP);
    }
    // Doubling from 600 bytes to the 1 MiB step: 11 refills, and 1000 × 600 bytes fit
    // in what they reserved.
    assert!(counter.calls < 20, "{} round trips", counter.calls);
    assert!(counter.used >= 600 * 1000);
    assert!(counter.used - 600 * 1000 <= CREDIT_STEP, "{}", counter.used);
    assert_eq!(counter.used - 600 * 1000, credit.left("t"));
}

#[test]
fn a_small_quota_keeps_the_step_to_a_64th_of_it_and_a_large_one_to_one_mib() {
    for (max, cap) in [(640 << 10, 10 << 10), (10 << 30, CREDIT_STEP)] {
        let credit = hour();
        let t = Instant::now();
        let mut counter = Counter::new();
        for _ in 0..2000 {
            assert_eq!(
                draw_at(&credit, &mut counter, t, 100, Limit::Max(max)),
                Draw::Granted
            );
            assert!(credit.left("t") <= cap, "{} > {cap}", credit.left("t"));
        }
        // Counted never runs ahead of drawn by more than the cap.
        assert!(counter.used - 100 * 2000 <= cap, "{}", counter.used);
    }
}

#[test]
fn a_quota_of_u64_max_still_gets_credit() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    for _ in 0..1000 {
        draw_at(&credit, &mut counter, t, 600, Limit::Max(u64::MAX));
    }
    assert!(counter.calls < 20, "{} round trips", counter.calls);
}

#[test]
fn a_tenant_under_its_quota_is_never_refused_because_of_the_step() {
    let credit = hour();
    let t = Instant::now();
    let max = 10_000;
    let mut counter = Counter::new();
    let mut drawn = 0;
    while drawn + 600 <= max {
        assert_eq!(
            draw_at(&credit, &mut counter, t, 600, Limit::Max(max)),
            Draw::Granted
        );
        drawn += 600;
    }
    assert!(counter.used <= max);
    // 16 × 600 = 9,600 drawn; 400 left under the quota, so 600 more is refused.
    assert_eq!(
        draw_at(&credit, &mut counter, t, 600, Limit::Max(max)),
        Draw::Refused { used: counter.used }
    );
    // What still fits is granted.
    let room = max - counter.used + credit.left("t");
    assert_eq!(
        draw_at(&credit, &mut counter, t, room, Limit::Max(max)),
        Draw::Granted
    );
}

#[test]
fn count_only_draws_count_exactly_and_add_no_credit() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    for _ in 0..3 {
        assert_eq!(
            draw_at(&credit, &mut counter, t, 600, Limit::CountOnly),
            Draw::Granted
        );
    }
    assert_eq!(counter.used, 1800);
    assert_eq!(credit.left("t"), 0);
    // A failed run draws from credit a limited draw left behind.
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    let (used, left) = (counter.used, credit.left("t"));
    assert!(left >= 600);
    draw_at(&credit, &mut counter, t, 600, Limit::CountOnly);
    assert_eq!((counter.used, credit.left("t")), (used, left - 600));
}

#[test]
fn stale_credit_is_dropped_and_handed_back_with_its_bucket() {
    let credit = StoredCredit::new(Duration::from_secs(3600));
    let t = Instant::now();
    let mut counter = Counter::new();
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    let left = credit.left("t");
    assert!(left > 0);
    let calls = counter.calls;
    // Just short of the bound: still drawn from.
    let soon = t + CREDIT_MAX_AGE - Duration::from_millis(1);
    draw_at(&credit, &mut counter, soon, 100, Limit::Max(1 << 30));
    assert_eq!(counter.calls, calls);
    let late = t + CREDIT_MAX_AGE;
    draw_at(&credit, &mut counter, late, 600, Limit::Max(1 << 30));
    // A fresh round trip for exactly the need: the old credit is gone, given back.
    assert_eq!(counter.calls, calls + 1);
    assert_eq!(credit.left("t"), 0);
    assert_eq!(
        counter.released,
        vec![Dropped {
            tenant: "t".to_owned(),
            bytes: left - 100,
            bucket: StoredBucket(7),
        }]
    );
}

#[test]
fn credit_given_back_after_a_failed_refill_keeps_its_age() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    let max = Limit::Max(1 << 30);
    // 600, then a step of 1,200: 600 drawn, 600 held from `t`.
    draw_at(&credit, &mut counter, t, 600, max);
    draw_at(&credit, &mut counter, t, 600, max);
    assert_eq!(credit.left("t"), 600);
    // Near the end of its life a larger draw misses and its refill fails: the credit
    // taken for it is held again, not renewed.
    let near = t + CREDIT_MAX_AGE - Duration::from_millis(10);
    let failed = credit.draw_at(near, "t", 5000, max, |_| Err::<Reservation, ()>(()), |_| {});
    assert_eq!(failed, Err(()));
    assert_eq!(credit.left("t"), 600);
    // Another refused draw gives it back too, again without renewing it.
    let refused = credit.draw_at(
        near,
        "t",
        5000,
        max,
        |_| {
            Ok::<_, ()>(Reservation::Refused {
                used: 0,
                retry_after: Duration::from_secs(1),
            })
        },
        |_| {},
    );
    assert_eq!(refused, Ok(Draw::Refused { used: 0 }));
    assert_eq!(credit.left("t"), 600);
    // Once `t` is a bound old, it is dropped whatever happened since.
    assert_eq!(credit.sweep_at(t + CREDIT_MAX_AGE).len(), 1);
    assert_eq!(credit.left("t"), 0);
}

#[test]
fn credit_never_exceeds_one_step() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    // A large need leaves at most one step on top.
    for need in [100, 10_000, 1 << 20, 600, 3 << 20] {
        draw_at(&credit, &mut counter, t, need, Limit::Max(1 << 40));
        assert!(credit.left("t") <= CREDIT_STEP, "{}", credit.left("t"));
    }
}

#[test]
fn credit_reserved_against_a_higher_quota_is_dropped_when_the_quota_is_lowered() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    let left = credit.left("t");
    assert!(left > 0);
    let calls = counter.calls;
    let lowered = Limit::Max(1000 + counter.used);
    draw_at(&credit, &mut counter, t, 100, lowered);
    assert_eq!(counter.calls, calls + 1, "the lowered quota is asked");
    assert_eq!(counter.released.len(), 1);
    assert_eq!(counter.released[0].bytes, left);
}

#[test]
fn the_sweep_drops_stale_credit_and_forgets_idle_tenants() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    draw_at(&credit, &mut counter, t, 600, Limit::CountOnly);
    assert_eq!(credit.entries(), 1);
    assert!(credit.sweep_at(t).is_empty());
    let dropped = credit.sweep_at(t + CREDIT_MAX_AGE);
    assert_eq!(dropped.len(), 1);
    assert_eq!(credit.entries(), 0);
}

#[test]
fn drain_hands_back_all_credit() {
    let credit = hour();
    let t = Instant::now();
    let mut counter = Counter::new();
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    draw_at(&credit, &mut counter, t, 600, Limit::Max(1 << 30));
    let left = credit.left("t");
    let drained = credit.drain();
    assert_eq!(drained.iter().map(|d| d.bytes).sum::<u64>(), left);
    assert_eq!(credit.left("t"), 0);
}

/// Waits (yielding) until `tenant`'s refill has `n` draws waiting on it.
fn until_waiting(credit: &StoredCredit, tenant: &str, n: usize) {
    while credit.waiting(tenant) < n {
        std::thread::yield_now();
    }
}

#[test]
fn a_stalled_refill_delays_no_other_tenant_and_its_failure_fails_its_waiters_open() {
    let credit = Arc::new(hour());
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    // Tenant a's refill stalls in Redis until told to fail.
    let stalled = std::thread::spawn({
        let credit = credit.clone();
        move || {
            credit.draw(
                "a",
                600,
                Limit::Max(1 << 30),
                |_| {
                    entered_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Err::<Reservation, &str>("redis timed out")
                },
                |_| {},
            )
        }
    });
    entered.recv().unwrap();
    // A second draw of tenant a waits for that refill and makes no round trip of its own.
    let waiter = std::thread::spawn({
        let credit = credit.clone();
        move || {
            credit.draw(
                "a",
                600,
                Limit::Max(1 << 30),
                |_| -> Result<Reservation, &str> {
                    panic!("a waiter of a failed refill made its own round trip")
                },
                |_| {},
            )
        }
    });
    until_waiting(&credit, "a", 1);
    // Tenant b is served meanwhile (on another thread: a shared lock would hang it, and
    // the channel reports that as a failure instead of hanging the test).
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn({
        let credit = credit.clone();
        move || {
            let mut counter = Counter::new();
            let draw = credit.draw(
                "b",
                600,
                Limit::Max(1 << 30),
                |ask| counter.reserve(ask, 1 << 30),
                |_| {},
            );
            done_tx.send(draw).unwrap();
        }
    });
    assert_eq!(
        done.recv_timeout(Duration::from_secs(60)),
        Ok(Ok(Draw::Granted)),
        "tenant b waited for tenant a's refill"
    );
    go.send(()).unwrap();
    assert_eq!(stalled.join().unwrap(), Err("redis timed out"));
    assert_eq!(waiter.join().unwrap(), Ok(Draw::Unavailable));
}
