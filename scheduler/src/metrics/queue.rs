//! The queue-state metrics: what Redis holds, read at scrape time by `sluice serve`
//! and `sluice exporter` ([`QueueState`]), one series per queue whatever the number of
//! workers.
//!
//! A scrape refreshes the figures at most once per [`CACHE_FOR`] (concurrent scrapes
//! wait for the one read in progress and share it; the queues are read concurrently),
//! so a scrape storm cannot hammer Redis. A read that fails or takes longer than [`READ_TIMEOUT`] counts in
//! `sluice_exporter_scrape_errors_total` and the figures keep their last values.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};
use sluice_shared::queue::redis::{QueueGauges, RedisQueue};

use super::fold::fold;

/// How long one read of the queue state serves scrapes.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Longest a read of one queue's state may take before it counts as failed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Tenants that keep their names in the tenant metrics unless told otherwise
/// (`--metrics-max-tenants`).
pub const DEFAULT_MAX_TENANTS: usize = 20;

/// The queues an exporter watches and the last figures read from each.
pub struct QueueState {
    queues: Vec<Arc<RedisQueue>>,
    max_tenants: usize,
    /// Queue name → the last figures read (absent until the first read succeeds).
    last: Mutex<BTreeMap<String, QueueGauges>>,
    /// When the figures were last read (held across a read: concurrent scrapes wait).
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    errors: IntCounter,
    read_duration: Histogram,
}

impl QueueState {
    /// Watches `queues`, keeping at most `max_tenants` tenant names per queue (the
    /// folding rule, [`fold`]).
    pub fn new(queues: Vec<Arc<RedisQueue>>, max_tenants: usize) -> Arc<Self> {
        Arc::new(QueueState {
            queues,
            max_tenants,
            last: Mutex::default(),
            refreshed: tokio::sync::Mutex::new(None),
            errors: IntCounter::new(
                "sluice_exporter_scrape_errors_total",
                "reads of Redis state that failed (the gauges keep their last value)",
            )
            .expect("valid metric"),
            read_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_exporter_read_duration_seconds",
                    "time to read the queue state from Redis",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("valid metric"),
        })
    }

    /// Registers the queue-state metrics in `registry`.
    pub fn register(self: &Arc<Self>, registry: &Registry) {
        registry
            .register(Box::new(self.errors.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(self.read_duration.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(QueueCollector::new(self.clone())))
            .expect("unique metric");
    }

    /// Reads every queue's state again unless the last read is younger than
    /// [`CACHE_FOR`]. A failed read is counted and leaves that queue's figures as they
    /// were.
    pub async fn refresh(&self) {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < CACHE_FOR) {
            return;
        }
        // Every queue at once: a scrape waits for the slowest read, never their sum.
        let reads = self.queues.iter().map(|queue| async move {
            let started = Instant::now();
            let read = tokio::time::timeout(READ_TIMEOUT, queue.admin().gauges()).await;
            self.read_duration.observe(started.elapsed().as_secs_f64());
            (queue, read)
        });
        for (queue, read) in futures_util::future::join_all(reads).await {
            let name = &queue.config().queue;
            match read {
                Ok(Ok(gauges)) => {
                    self.last.lock().insert(name.clone(), gauges);
                }
                Ok(Err(error)) => {
                    self.errors.inc();
                    tracing::warn!(queue = %name, %error, "reading the queue state");
                }
                Err(_) => {
                    self.errors.inc();
                    tracing::warn!(queue = %name, timeout = ?READ_TIMEOUT, "reading the queue state timed out");
                }
            }
        }
        *refreshed = Some(Instant::now());
    }
}

/// One metric family of the queue state: its name, help and type, and its labels.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const fn family(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind,
        labels,
    }
}

use MetricType::{COUNTER, GAUGE};

/// Every family the collector emits, in [`QueueCollector::collect`]'s order.
const FAMILIES: [Family; 17] = [
    family(
        "sluice_queue_ready_jobs",
        "stream entries not yet delivered to the group",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_lag_entries",
        "consumer-group lag of the worker group (XINFO GROUPS lag)",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_pending_entries",
        "entries leased and not acknowledged (XPENDING count)",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_oldest_ready_age_seconds",
        "age of the oldest entry not yet delivered (0 when none)",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_delayed_jobs",
        "jobs waiting for their due time (retries, scheduled)",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_dead_letters",
        "dead letters kept now",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_dead_lettered_total",
        "jobs ever moved to the dead letters, by outcome kind",
        COUNTER,
        &["queue", "reason"],
    ),
    family(
        "sluice_queue_completed_total",
        "jobs completed (results stored)",
        COUNTER,
        &["queue"],
    ),
    family(
        "sluice_queue_retried_total",
        "runs put back to retry",
        COUNTER,
        &["queue"],
    ),
    family(
        "sluice_queue_failed_total",
        "jobs that finished with a failure outcome",
        COUNTER,
        &["queue"],
    ),
    family(
        "sluice_queue_workers",
        "live workers (heartbeat not expired)",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_consumers",
        "consumers in the group",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_tenant_backlog_jobs",
        "jobs waiting in the tenant's backlog for admission (folded beyond the largest tenants)",
        GAUGE,
        &["queue", "tenant"],
    ),
    family(
        "sluice_tenant_inflight_jobs",
        "jobs of the tenant admitted and not finished (folded beyond the largest tenants)",
        GAUGE,
        &["queue", "tenant"],
    ),
    family(
        "sluice_redis_used_memory_bytes",
        "Redis INFO memory used_memory",
        GAUGE,
        &[],
    ),
    family(
        "sluice_redis_maxmemory_bytes",
        "Redis maxmemory (0 = no limit)",
        GAUGE,
        &[],
    ),
    family(
        "sluice_queue_tenants_capped",
        "1 when the per-tenant figures are incomplete (too many tenants or admitted jobs to read)",
        GAUGE,
        &["queue"],
    ),
];

/// Builds the queue-state families from [`QueueState`]'s last figures at each gather.
struct QueueCollector {
    state: Arc<QueueState>,
    descs: Vec<Desc>,
}

impl QueueCollector {
    fn new(state: Arc<QueueState>) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.to_owned(),
                    f.help.to_owned(),
                    f.labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
                .expect("valid metric")
            })
            .collect();
        QueueCollector { state, descs }
    }
}

/// One sample: its label values (in the family's label order) and value.
type Sample = (Vec<String>, f64);

fn sample(labels: &[&str], value: impl Into<f64>) -> Sample {
    (
        labels.iter().map(|l| (*l).to_owned()).collect(),
        value.into(),
    )
}

/// The samples of every family, in [`FAMILIES`] order, for the figures of each queue.
fn samples(
    last: &BTreeMap<String, QueueGauges>,
    max_tenants: usize,
) -> [Vec<Sample>; FAMILIES.len()] {
    let mut out: [Vec<Sample>; FAMILIES.len()] = Default::default();
    let n = |v: u64| v as f64;
    for (queue, g) in last {
        let q = queue.as_str();
        out[0].push(sample(&[q], n(g.ready)));
        out[1].push(sample(&[q], n(g.lag.unwrap_or(g.ready))));
        out[2].push(sample(&[q], n(g.pending)));
        out[3].push(sample(&[q], g.oldest_ready_age.as_secs_f64()));
        out[4].push(sample(&[q], n(g.delayed)));
        out[5].push(sample(&[q], n(g.dead_letters)));
        for (kind, count) in &g.counters.dead_by_reason {
            out[6].push(sample(&[q, kind.as_str()], n(*count)));
        }
        out[7].push(sample(&[q], n(g.counters.completed)));
        out[8].push(sample(&[q], n(g.counters.retried)));
        out[9].push(sample(&[q], n(g.counters.failed)));
        out[10].push(sample(&[q], n(g.workers)));
        out[11].push(sample(&[q], n(g.consumers)));
        for load in fold(&g.tenants, max_tenants) {
            out[12].push(sample(&[q, &load.tenant], n(load.backlog)));
            out[13].push(sample(&[q, &load.tenant], n(load.inflight)));
        }
        out[16].push(sample(&[q], if g.tenants_capped { 1.0 } else { 0.0 }));
    }
    // One Redis server: its memory from any queue's (the latest) figures.
    if let Some(g) = last.values().max_by_key(|g| g.server_time_ms) {
        out[14].push(sample(&[], n(g.used_memory_bytes)));
        out[15].push(sample(&[], n(g.maxmemory_bytes)));
    }
    out
}

impl Collector for QueueCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let samples = samples(&self.state.last.lock(), self.state.max_tenants);
        FAMILIES
            .iter()
            .zip(samples)
            .map(|(family, samples)| {
                let mut mf = MetricFamily::default();
                mf.set_name(family.name.to_owned());
                mf.set_help(family.help.to_owned());
                mf.set_field_type(family.kind);
                mf.set_metric(
                    samples
                        .into_iter()
                        .map(|(values, value)| metric(family, values, value))
                        .collect(),
                );
                mf
            })
            .collect()
    }
}

fn metric(family: &Family, values: Vec<String>, value: f64) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(
        family
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value(value);
                pair
            })
            .collect(),
    );
    match family.kind {
        COUNTER => {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::OutcomeKind;
    use sluice_shared::queue::redis::{QueueCounters, TenantLoad};

    #[test]
    fn figures_become_one_series_per_queue_with_folded_tenants() {
        let mut counters = QueueCounters::from_fields(&Default::default());
        counters.completed = 7;
        counters.dead_by_reason[1].1 = 2;
        let gauges = QueueGauges {
            ready: 3,
            lag: None,
            pending: 2,
            oldest_ready_age: Duration::from_millis(1500),
            counters,
            tenants: ["a", "b", "c"]
                .iter()
                .map(|t| TenantLoad {
                    tenant: (*t).to_owned(),
                    backlog: 1,
                    inflight: 0,
                })
                .collect(),
            used_memory_bytes: 1024,
            ..QueueGauges::default()
        };
        let last = BTreeMap::from([("q1".to_owned(), gauges)]);
        let s = samples(&last, 1);
        assert_eq!(s[0], vec![sample(&["q1"], 3.0)]);
        assert_eq!(s[1], vec![sample(&["q1"], 3.0)], "lag falls back to ready");
        assert_eq!(s[3], vec![sample(&["q1"], 1.5)]);
        assert_eq!(s[6].len(), OutcomeKind::ALL.len());
        assert!(s[6].contains(&sample(&["q1", "fuel_exhausted"], 2.0)));
        assert_eq!(
            s[12],
            vec![sample(&["q1", "a"], 1.0), sample(&["q1", "other"], 2.0)]
        );
        assert_eq!(s[14], vec![sample(&[], 1024.0)]);
        assert!(samples(&BTreeMap::new(), 5).iter().all(Vec::is_empty));
    }
}
