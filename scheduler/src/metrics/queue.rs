//! The queue-state metrics: what Redis holds, read at scrape time by `sluice serve`
//! and `sluice exporter` ([`QueueState`]), one series per queue whatever the number of
//! workers.
//!
//! Each queue is read through a [`GaugeReader`] of its own: a read-only connection,
//! opened at the first scrape and again at later ones until it opens (so the exporter
//! serves `/metrics` while Redis is down and counts each failed attempt). A scrape
//! refreshes the figures at most once per cache period (`--metrics-cache`, default
//! [`DEFAULT_CACHE_FOR`]; concurrent scrapes wait for the one read in progress and
//! share it; the queues are read concurrently), so a scrape storm cannot hammer Redis.
//! A read that fails or takes longer than [`READ_TIMEOUT`] counts in
//! `sluice_exporter_scrape_errors_total` and the figures keep their last values, for
//! at most [`DROP_AFTER`]: then the queue's series are dropped (no figure is better
//! than a stale one) and only `sluice_exporter_last_success_timestamp_seconds` tells
//! when it was last read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};
use sluice_shared::queue::redis::{ConnectError, GaugeReader, QueueGauges, RedisConfig};
use tokio::sync::OnceCell;

use super::fold::fold;

/// How long one read of the queue state serves scrapes unless told otherwise
/// (`--metrics-cache`).
pub const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(1);

/// The shortest cache period allowed (a shorter one would let scrapes hammer Redis).
pub const MIN_CACHE_FOR: Duration = Duration::from_secs(1);

/// Longest a read of one queue's state (connecting included) may take before it
/// counts as failed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a queue's last figures are served while its reads fail; after this its
/// series are dropped.
pub const DROP_AFTER: Duration = Duration::from_secs(120);

/// Tenants that keep their names in the tenant metrics unless told otherwise
/// (`--metrics-max-tenants`).
pub const DEFAULT_MAX_TENANTS: usize = 20;

/// One watched queue: where it is, and its reader once connected.
struct Source {
    config: RedisConfig,
    reader: OnceCell<GaugeReader>,
}

/// The last good read of one queue.
struct LastRead {
    gauges: QueueGauges,
    at: Instant,
}

/// The queues an exporter watches and the last figures read from each.
pub struct QueueState {
    sources: Vec<Source>,
    max_tenants: usize,
    cache_for: Duration,
    /// Queue name → the last figures read (absent until the first read succeeds, and
    /// again once reads have failed for [`DROP_AFTER`]).
    last: Mutex<BTreeMap<String, LastRead>>,
    /// Queue name → when it was last read successfully (Unix seconds; 0: never). Every
    /// watched queue has an entry.
    succeeded: Mutex<BTreeMap<String, f64>>,
    /// When the figures were last read (held across a read: concurrent scrapes wait).
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    errors: IntCounter,
    read_duration: Histogram,
}

impl QueueState {
    /// Watches the queues of `configs` (one per queue name), keeping at most
    /// `max_tenants` tenant names per queue (the folding rule, [`fold`]) and reading
    /// Redis at most once per `cache_for`. Opens no connection yet.
    pub fn new(configs: Vec<RedisConfig>, max_tenants: usize, cache_for: Duration) -> Arc<Self> {
        let succeeded = configs.iter().map(|c| (c.queue.clone(), 0.0)).collect();
        Arc::new(QueueState {
            sources: configs
                .into_iter()
                .map(|config| Source {
                    config,
                    reader: OnceCell::new(),
                })
                .collect(),
            max_tenants,
            cache_for: cache_for.max(MIN_CACHE_FOR),
            last: Mutex::default(),
            succeeded: Mutex::new(succeeded),
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

    /// Opens every queue's reader now. Redis unreachable is counted and logged (the
    /// readers are opened again at the next scrapes); an unusable configuration or
    /// refused credentials, which retrying cannot fix, is the error.
    pub async fn connect(&self) -> Result<(), ConnectError> {
        for source in &self.sources {
            match GaugeReader::connect(&source.config).await {
                Ok(reader) => {
                    let _ = source.reader.set(reader);
                }
                Err(error) if error.is_transient() => {
                    self.errors.inc();
                    tracing::warn!(queue = %source.config.queue, %error, "connecting to read the queue state; trying again at each scrape");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads every queue's state again unless the last read is younger than the cache
    /// period. A failed read (or connect) is counted and leaves that queue's figures
    /// as they were, until [`DROP_AFTER`].
    pub async fn refresh(&self) {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < self.cache_for) {
            return;
        }
        // Every queue at once: a scrape waits for the slowest read, never their sum.
        let reads = self.sources.iter().map(|source| async move {
            let started = Instant::now();
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                let reader = source
                    .reader
                    .get_or_try_init(|| GaugeReader::connect(&source.config))
                    .await
                    .map_err(|e| e.to_string())?;
                reader.read().await.map_err(|e| e.to_string())
            })
            .await;
            self.read_duration.observe(started.elapsed().as_secs_f64());
            (source, read)
        });
        for (source, read) in futures_util::future::join_all(reads).await {
            let name = &source.config.queue;
            match read {
                Ok(Ok(gauges)) => {
                    let at = Instant::now();
                    self.last
                        .lock()
                        .insert(name.clone(), LastRead { gauges, at });
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    self.succeeded.lock().insert(name.clone(), now);
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
        self.last
            .lock()
            .retain(|_, read| read.at.elapsed() <= DROP_AFTER);
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
const FAMILIES: [Family; 19] = [
    family(
        "sluice_queue_ready_jobs",
        "stream entries not yet delivered to the group",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_queue_lag_entries",
        "consumer-group lag of the worker group as XINFO GROUPS reports it (absent when Redis does not know it)",
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
        "jobs that finished successfully (success results stored)",
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
        "jobs that ended in failure: each dead-lettering (a job retried from the dead letters that dies again counts again)",
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
    family(
        "sluice_queue_oldest_backlog_age_seconds",
        "age of the oldest job waiting in a tenant backlog for admission (0 when none)",
        GAUGE,
        &["queue"],
    ),
    family(
        "sluice_exporter_last_success_timestamp_seconds",
        "when the queue state was last read successfully (Unix seconds; 0: never)",
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
fn samples<'a>(
    last: impl IntoIterator<Item = (&'a String, &'a QueueGauges)>,
    succeeded: &BTreeMap<String, f64>,
    max_tenants: usize,
) -> [Vec<Sample>; FAMILIES.len()] {
    let mut out: [Vec<Sample>; FAMILIES.len()] = Default::default();
    let n = |v: u64| v as f64;
    let mut latest: Option<&QueueGauges> = None;
    for (queue, g) in last {
        let q = queue.as_str();
        out[0].push(sample(&[q], n(g.ready)));
        // Only what Redis reports: no lag is ordinary (an undelivered entry deleted).
        if let Some(lag) = g.lag {
            out[1].push(sample(&[q], n(lag)));
        }
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
            // Not read (past the admitted cap): no series rather than a false 0.
            if g.inflight_read {
                out[13].push(sample(&[q, &load.tenant], n(load.inflight)));
            }
        }
        out[16].push(sample(&[q], if g.tenants_capped { 1.0 } else { 0.0 }));
        out[17].push(sample(&[q], g.oldest_backlog_age.as_secs_f64()));
        if latest.is_none_or(|l| l.server_time_ms < g.server_time_ms) {
            latest = Some(g);
        }
    }
    for (queue, at) in succeeded {
        out[18].push(sample(&[queue], *at));
    }
    // One Redis server: its memory from any queue's (the latest) figures.
    if let Some(g) = latest {
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
        let last = self.state.last.lock();
        let samples = samples(
            last.iter().map(|(q, read)| (q, &read.gauges)),
            &self.state.succeeded.lock(),
            self.state.max_tenants,
        );
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
        let succeeded = BTreeMap::from([("q1".to_owned(), 1.5e9), ("q2".to_owned(), 0.0)]);
        let s = samples(&last, &succeeded, 1);
        assert_eq!(s[0], vec![sample(&["q1"], 3.0)]);
        assert!(s[1].is_empty(), "no lag reported, none exported");
        assert!(s[13].is_empty(), "in-flight not read, none exported");
        assert_eq!(
            s[18],
            vec![sample(&["q1"], 1.5e9), sample(&["q2"], 0.0)],
            "every watched queue, read or not"
        );
        assert_eq!(s[3], vec![sample(&["q1"], 1.5)]);
        assert_eq!(s[6].len(), OutcomeKind::ALL.len());
        assert!(s[6].contains(&sample(&["q1", "fuel_exhausted"], 2.0)));
        assert_eq!(
            s[12],
            vec![sample(&["q1", "a"], 1.0), sample(&["q1", "other"], 2.0)]
        );
        assert_eq!(s[14], vec![sample(&[], 1024.0)]);
        let mut read = last["q1"].clone();
        read.lag = Some(4);
        read.inflight_read = true;
        let s = samples(
            &BTreeMap::from([("q1".to_owned(), read)]),
            &BTreeMap::new(),
            1,
        );
        assert_eq!(s[1], vec![sample(&["q1"], 4.0)]);
        assert_eq!(
            s[13],
            vec![sample(&["q1", "a"], 0.0), sample(&["q1", "other"], 0.0)]
        );
        assert!(
            samples(&BTreeMap::new(), &BTreeMap::new(), 5)
                .iter()
                .all(Vec::is_empty)
        );
    }
}
