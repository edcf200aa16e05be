//! One reading of the queue for `sluice top`: depths, counters, the oldest ready job's
//! age and the tenants' backlogs and in-flight jobs from
//! [`Admin::gauges`](sluice_shared::queue::redis::Admin::gauges) (bounded reads), the
//! workers with their leased jobs and idle times from
//! [`Admin::status`](sluice_shared::queue::redis::Admin::status); and the figures both
//! the full-screen view and `--once` print.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_shared::queue::redis::{AdminError, QueueGauges, RedisQueue, RedisStatus};

/// At most this many workers and tenants are kept from one reading: the view shows the
/// ones that fit, and a queue with more says how many it left out.
pub const MAX_ROWS: usize = 1_000;

/// One worker as `sluice top` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    /// The worker's consumer name.
    pub name: String,
    /// Whether it is live (heartbeat not run out, or heard from within the stale time);
    /// a worker that is not live is listed only while it holds jobs.
    pub live: bool,
    /// Jobs it holds (leased).
    pub pending: u64,
    /// Milliseconds since it last claimed or renewed a lease.
    pub idle_ms: u64,
}

/// One tenant with jobs waiting in its backlog or in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRow {
    /// The tenant.
    pub tenant: String,
    /// Jobs waiting in its backlog for admission.
    pub backlog: u64,
    /// Jobs admitted onto the queue and not finished.
    pub inflight: u64,
}

/// One reading of the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Entries not yet delivered to a worker.
    pub ready: u64,
    /// Entries leased to a worker and not yet acknowledged (in flight).
    pub leased: u64,
    /// Jobs waiting for their due time (retries, scheduled jobs).
    pub delayed: u64,
    /// Dead letters kept now.
    pub dead: u64,
    /// Jobs completed, any outcome (counter).
    pub completed: u64,
    /// Jobs that finished with a failure outcome (counter).
    pub failed: u64,
    /// Runs put back to retry (counter).
    pub retried: u64,
    /// Age of the oldest ready entry (zero when none).
    pub oldest_ready_age: Duration,
    /// Workers: the live ones, and gone ones still holding jobs (live first, by name).
    pub workers: Vec<WorkerRow>,
    /// Workers beyond [`MAX_ROWS`], left out of `workers`.
    pub workers_left_out: usize,
    /// Tenants with a backlog or jobs in flight, largest (backlog + in flight) first.
    pub tenants: Vec<TenantRow>,
    /// Tenants beyond [`MAX_ROWS`], left out of `tenants`.
    pub tenants_left_out: usize,
    /// Whether Redis held more tenants than one reading looks at (the tenant figures
    /// are then incomplete).
    pub tenants_capped: bool,
}

impl Sample {
    /// Reads the queue now.
    pub async fn read(queue: &RedisQueue, stale_after: Duration) -> Result<Self, AdminError> {
        let (gauges, status) = tokio::try_join!(queue.admin().gauges(), queue.admin().status())?;
        Ok(Self::of(gauges, status, stale_after))
    }

    /// The reading in `gauges` (figures, tenants) and `status` (workers). A worker with a heartbeat is live while the beat has
    /// not run out; one without (a bare consumer) while it was heard from within
    /// `stale_after`; a worker that is not live is listed only while it holds jobs.
    pub fn of(gauges: QueueGauges, status: RedisStatus, stale_after: Duration) -> Self {
        let stale_ms = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        let now = status.server_time_ms;
        let mut seen: BTreeMap<String, WorkerRow> = BTreeMap::new();
        for (name, until) in status.heartbeats {
            let name = shown(&name);
            seen.insert(
                name.clone(),
                WorkerRow {
                    name,
                    live: until >= now,
                    pending: 0,
                    idle_ms: 0,
                },
            );
        }
        for c in status.consumers {
            let name = shown(&c.name);
            let row = seen.entry(name.clone()).or_insert(WorkerRow {
                name,
                live: c.idle_ms <= stale_ms,
                pending: 0,
                idle_ms: 0,
            });
            row.pending = c.pending;
            row.idle_ms = c.idle_ms;
        }
        let mut workers: Vec<WorkerRow> = seen
            .into_values()
            .filter(|w| w.live || w.pending > 0)
            .collect();
        workers.sort_by(|a, b| b.live.cmp(&a.live).then_with(|| a.name.cmp(&b.name)));
        let workers_left_out = workers.len().saturating_sub(MAX_ROWS);
        workers.truncate(MAX_ROWS);
        let mut tenants: Vec<TenantRow> = gauges
            .tenants
            .into_iter()
            .map(|t| TenantRow {
                tenant: shown(&t.tenant),
                backlog: t.backlog,
                inflight: t.inflight,
            })
            .collect();
        tenants.sort_by(|a, b| {
            (b.backlog + b.inflight)
                .cmp(&(a.backlog + a.inflight))
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        let tenants_left_out = tenants.len().saturating_sub(MAX_ROWS);
        tenants.truncate(MAX_ROWS);
        Sample {
            ready: gauges.ready,
            leased: gauges.pending,
            delayed: gauges.delayed,
            dead: gauges.dead_letters,
            completed: gauges.counters.completed,
            failed: gauges.counters.failed,
            retried: gauges.counters.retried,
            oldest_ready_age: gauges.oldest_ready_age,
            workers,
            workers_left_out,
            tenants,
            tenants_left_out,
            tenants_capped: gauges.tenants_capped,
        }
    }

    /// Live workers.
    pub fn live_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.live).count()
    }

    /// The queue's figures as (label, value) pairs, in the order both views show them.
    pub fn figures(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ready", self.ready.to_string()),
            ("in flight", self.leased.to_string()),
            ("delayed", self.delayed.to_string()),
            ("dead", self.dead.to_string()),
            ("oldest ready", age(self.oldest_ready_age)),
            ("completed", self.completed.to_string()),
            ("failed", self.failed.to_string()),
            ("retried", self.retried.to_string()),
            ("workers", self.live_workers().to_string()),
        ]
    }
}

/// A duration as a person reads an age: `850ms`, `42s`, `3m12s`, `5h03m`, `2d04h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Longest name the view prints, in characters (more is cut, ending in `…`).
const MAX_NAME_CHARS: usize = 64;

/// `name` as the view prints it: names come from Redis, where anyone who can write
/// there could put escape sequences, bidi overrides or a megabyte of text; each
/// character a module name may not hold becomes `?`, and a long name is cut.
fn shown(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_NAME_CHARS)
        .map(|c| {
            if sluice_shared::module_name::allowed(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if name.chars().count() > MAX_NAME_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::queue::redis::{ConsumerInfo, QueueCounters, TenantLoad};

    #[test]
    fn workers_are_live_by_heartbeat_or_by_idle_time_and_gone_ones_only_while_holding() {
        let status = RedisStatus {
            consumers: vec![
                ConsumerInfo {
                    name: "beating".into(),
                    pending: 2,
                    idle_ms: 90_000,
                },
                ConsumerInfo {
                    name: "bare-fresh".into(),
                    pending: 0,
                    idle_ms: 10,
                },
                ConsumerInfo {
                    name: "bare-stale-holding".into(),
                    pending: 1,
                    idle_ms: 90_000,
                },
                ConsumerInfo {
                    name: "bare-stale-empty".into(),
                    pending: 0,
                    idle_ms: 90_000,
                },
            ],
            heartbeats: vec![("beating".into(), 2_000), ("expired".into(), 500)],
            server_time_ms: 1_000,
            ..RedisStatus::default()
        };
        let load = |tenant: &str, backlog, inflight| TenantLoad {
            tenant: tenant.into(),
            backlog,
            inflight,
        };
        let gauges = QueueGauges {
            ready: 5,
            pending: 3,
            delayed: 2,
            dead_letters: 1,
            oldest_ready_age: Duration::from_secs(42),
            counters: QueueCounters {
                completed: 9,
                failed: 4,
                ..QueueCounters::default()
            },
            tenants: vec![load("small", 1, 0), load("big", 3, 5)],
            ..QueueGauges::default()
        };
        let s = Sample::of(gauges, status, Duration::from_secs(30));
        let names: Vec<(&str, bool)> = s.workers.iter().map(|w| (&*w.name, w.live)).collect();
        assert_eq!(
            names,
            [
                ("bare-fresh", true),
                ("beating", true),
                ("bare-stale-holding", false)
            ]
        );
        assert_eq!(s.live_workers(), 2);
        assert_eq!(s.tenants[0].tenant, "big");
        assert_eq!(s.tenants[0].inflight, 5);
        let figures = s.figures();
        assert!(figures.contains(&("ready", "5".into())));
        assert!(figures.contains(&("in flight", "3".into())));
        assert!(figures.contains(&("failed", "4".into())));
        assert!(figures.contains(&("oldest ready", "42s".into())));
    }

    #[test]
    fn ages_read_as_a_person_reads_them() {
        assert_eq!(age(Duration::from_millis(850)), "850ms");
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(192)), "3m12s");
        assert_eq!(age(Duration::from_secs(5 * 3600 + 180)), "5h03m");
        assert_eq!(age(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d04h");
    }

    #[test]
    fn names_from_redis_cannot_drive_the_terminal() {
        assert_eq!(super::shown("acme"), "acme");
        assert_eq!(super::shown("a\u{1b}[2Jb\nc\u{202e}d"), "a?[2Jb?c?d");
        let long = "x".repeat(100);
        let cut = super::shown(&long);
        assert_eq!(cut.chars().count(), super::MAX_NAME_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
