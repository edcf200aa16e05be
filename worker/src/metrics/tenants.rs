//! Per-tenant run metrics under the tenant folding rule: the first
//! `--metrics-max-tenants` distinct tenants a worker sees keep their own label value,
//! every later one (and a name that breaks the tenant name rule, or a run whose
//! envelope did not decode) is summed into `tenant="other"`. A worker's series count is
//! so bounded whatever its tenants send.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus::{Counter, CounterVec, IntCounter, IntCounterVec, Opts, Registry};
use sluice_shared::{Job, JobResult, OutcomeKind};

/// The label value tenants beyond the bound fold into. Reserved: a tenant really
/// named `other` is counted in it too (and takes no place among the named ones).
pub const OTHER: &str = "other";

/// Default of `--metrics-max-tenants`.
pub const DEFAULT_MAX_TENANTS: usize = 20;

/// One tenant label value's series, resolved once: a run then costs three atomic adds.
#[derive(Debug)]
struct TenantSeries {
    /// `sluice_tenant_jobs_total{tenant,outcome}`, in [`OutcomeKind::ALL`] order.
    jobs: Vec<IntCounter>,
    run_seconds: Counter,
    fuel: IntCounter,
}

impl TenantSeries {
    /// Resolves (and so creates at zero) every series of `label`.
    fn resolve(metrics: &TenantVecs, label: &str) -> Arc<Self> {
        Arc::new(TenantSeries {
            jobs: OutcomeKind::ALL
                .iter()
                .map(|kind| metrics.jobs.with_label_values(&[label, kind.as_str()]))
                .collect(),
            run_seconds: metrics.run_seconds.with_label_values(&[label]),
            fuel: metrics.fuel.with_label_values(&[label]),
        })
    }

    fn record(&self, result: &JobResult) {
        let kind = result.outcome.kind();
        if let Some(at) = OutcomeKind::ALL.iter().position(|each| *each == kind) {
            self.jobs[at].inc();
        }
        self.run_seconds
            .inc_by(result.stats.wall_time_us as f64 / 1e6);
        self.fuel.inc_by(result.stats.fuel_used.unwrap_or(0));
    }
}

/// The three metric families, by label.
#[derive(Clone)]
struct TenantVecs {
    jobs: IntCounterVec,
    run_seconds: CounterVec,
    fuel: IntCounterVec,
}

/// Which tenants keep their own label value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantLabels {
    /// The first `n` distinct valid names this process sees (`--metrics-max-tenants`).
    FirstSeen(usize),
    /// Exactly these names (`--metrics-tenants`), the same on every worker given the
    /// same list.
    Listed(Vec<String>),
}

impl Default for TenantLabels {
    fn default() -> Self {
        TenantLabels::FirstSeen(DEFAULT_MAX_TENANTS)
    }
}

/// The tenant label values in use and their resolved series.
struct TenantFold {
    rule: TenantLabels,
    vecs: TenantVecs,
    named: RwLock<HashMap<String, Arc<TenantSeries>>>,
    other: Arc<TenantSeries>,
}

impl TenantFold {
    fn new(rule: TenantLabels, vecs: TenantVecs) -> Self {
        let other = TenantSeries::resolve(&vecs, OTHER);
        let mut named = HashMap::new();
        if let TenantLabels::Listed(names) = &rule {
            for name in names {
                if name != OTHER && sluice_shared::tenant::validate_name(name).is_ok() {
                    named.insert(name.clone(), TenantSeries::resolve(&vecs, name));
                }
            }
        }
        TenantFold {
            rule,
            vecs,
            named: RwLock::new(named),
            other,
        }
    }

    /// The series `tenant` is counted in: its own while it is (or becomes) one of the
    /// named tenants, else [`OTHER`]'s. A known name costs one read lock and a lookup.
    fn series(&self, tenant: &str) -> Arc<TenantSeries> {
        if let Some(series) = self.named.read().get(tenant) {
            return series.clone();
        }
        let TenantLabels::FirstSeen(max) = self.rule else {
            return self.other.clone();
        };
        if tenant == OTHER || sluice_shared::tenant::validate_name(tenant).is_err() {
            return self.other.clone();
        }
        let mut named = self.named.write();
        if let Some(series) = named.get(tenant) {
            return series.clone();
        }
        if named.len() >= max {
            return self.other.clone();
        }
        let series = TenantSeries::resolve(&self.vecs, tenant);
        named.insert(tenant.to_owned(), series.clone());
        series
    }

    #[cfg(test)]
    fn label(&self, tenant: &str) -> String {
        let series = self.series(tenant);
        if Arc::ptr_eq(&series, &self.other) {
            return OTHER.to_owned();
        }
        tenant.to_owned()
    }
}

/// `sluice_tenant_*`: finished runs, run seconds and fuel by tenant (folded).
#[derive(Clone)]
pub struct TenantMetrics {
    fold: Arc<TenantFold>,
}

impl TenantMetrics {
    /// Registers the tenant metrics in `registry`, naming tenants by `rule`.
    pub fn register(registry: &Registry, rule: TenantLabels) -> Self {
        let jobs = IntCounterVec::new(
            Opts::new(
                "sluice_tenant_jobs_total",
                "Finished job runs by tenant (first N tenants, the rest as other) and outcome kind",
            ),
            &["tenant", "outcome"],
        )
        .expect("valid metric");
        let run_seconds = CounterVec::new(
            Opts::new(
                "sluice_tenant_run_seconds_total",
                "Wall seconds of job runs by tenant (first N tenants, the rest as other)",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        let fuel = IntCounterVec::new(
            Opts::new(
                "sluice_tenant_fuel_consumed_total",
                "Fuel consumed by metered runs by tenant (first N tenants, the rest as other)",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(run_seconds.clone()),
            Box::new(fuel.clone()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        let vecs = TenantVecs {
            jobs,
            run_seconds,
            fuel,
        };
        TenantMetrics {
            fold: Arc::new(TenantFold::new(rule, vecs)),
        }
    }

    /// Records a finished run of `job` (`None`: its envelope did not decode, counted
    /// as `other`). A tenant's series are all created at zero when it gets its label
    /// (so a rate over any of them starts from its first run), never again.
    pub fn record(&self, job: Option<&Job>, result: &JobResult) {
        match job {
            Some(job) => self.fold.series(&job.tenant.0).record(result),
            None => self.fold.other.record(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(rule: TenantLabels) -> TenantFold {
        let registry = Registry::new();
        let metrics = TenantMetrics::register(&registry, rule);
        Arc::into_inner(metrics.fold).expect("one owner")
    }

    #[test]
    fn the_first_names_keep_their_label_and_the_rest_fold() {
        let fold = fold(TenantLabels::FirstSeen(2));
        assert_eq!(fold.label("a"), "a");
        assert_eq!(fold.label("b"), "b");
        assert_eq!(fold.label("c"), OTHER);
        assert_eq!(fold.label("a"), "a");
        assert_eq!(fold.label("d"), OTHER);
    }

    #[test]
    fn a_name_outside_the_tenant_rule_folds_and_takes_no_place() {
        let fold = fold(TenantLabels::FirstSeen(1));
        assert_eq!(fold.label("evil\"} 1\n# x"), OTHER);
        assert_eq!(fold.label(&"a".repeat(65)), OTHER);
        assert_eq!(fold.label("ok"), "ok");
    }

    #[test]
    fn zero_keeps_every_tenant_as_other() {
        let fold = fold(TenantLabels::FirstSeen(0));
        assert_eq!(fold.label("a"), OTHER);
    }

    #[test]
    fn a_tenant_named_other_is_counted_as_other_and_takes_no_place() {
        let fold = fold(TenantLabels::FirstSeen(1));
        assert_eq!(fold.label(OTHER), OTHER);
        assert_eq!(fold.label("a"), "a");
    }

    #[test]
    fn a_list_names_exactly_its_tenants() {
        let fold = fold(TenantLabels::Listed(vec!["b".into(), "a".into()]));
        assert_eq!(fold.label("c"), OTHER);
        assert_eq!(fold.label("a"), "a");
        assert_eq!(fold.label("b"), "b");
        assert_eq!(fold.label("d"), OTHER);
    }
}
