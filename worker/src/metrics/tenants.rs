//! Per-tenant run metrics under the tenant folding rule: the first
//! `--metrics-max-tenants` distinct tenants a worker sees keep their own label value,
//! every later one (and a name that breaks the tenant name rule, or a run whose
//! envelope did not decode) is summed into `tenant="other"`. A worker's series count is
//! so bounded whatever its tenants send.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{CounterVec, IntCounterVec, Opts, Registry};
use sluice_shared::{Job, JobResult, OutcomeKind};

/// The label value tenants beyond the bound fold into.
pub const OTHER: &str = "other";

/// Default of `--metrics-max-tenants`.
pub const DEFAULT_MAX_TENANTS: usize = 20;

/// Which tenants keep their own label value: the first `max` distinct ones seen.
#[derive(Debug)]
pub struct TenantFold {
    max: usize,
    named: Mutex<HashSet<String>>,
}

impl TenantFold {
    /// A rule keeping at most `max` tenant names.
    pub fn new(max: usize) -> Self {
        TenantFold {
            max,
            named: Mutex::new(HashSet::new()),
        }
    }

    /// The label value for `tenant`: its name while it is (or becomes) one of the first
    /// `max` valid names seen, else [`OTHER`].
    pub fn label(&self, tenant: &str) -> String {
        if sluice_shared::tenant::validate_name(tenant).is_err() {
            return OTHER.to_owned();
        }
        let mut named = self.named.lock();
        if named.contains(tenant) {
            return tenant.to_owned();
        }
        if named.len() < self.max {
            named.insert(tenant.to_owned());
            return tenant.to_owned();
        }
        OTHER.to_owned()
    }
}

/// `sluice_tenant_*`: finished runs, run seconds and fuel by tenant (folded).
#[derive(Clone)]
pub struct TenantMetrics {
    /// `sluice_tenant_jobs_total{tenant,outcome}`.
    pub jobs: IntCounterVec,
    /// `sluice_tenant_run_seconds_total{tenant}`.
    pub run_seconds: CounterVec,
    /// `sluice_tenant_fuel_consumed_total{tenant}`.
    pub fuel: IntCounterVec,
    fold: Arc<TenantFold>,
}

impl TenantMetrics {
    /// Registers the tenant metrics in `registry`, folding past `max_tenants` names.
    pub fn register(registry: &Registry, max_tenants: usize) -> Self {
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
        TenantMetrics {
            jobs,
            run_seconds,
            fuel,
            fold: Arc::new(TenantFold::new(max_tenants)),
        }
    }

    /// Records a finished run of `job` (`None`: its envelope did not decode, counted
    /// as `other`). A tenant's first run creates all its outcome series at zero, so a
    /// rate over any of them starts from the first run.
    pub fn record(&self, job: Option<&Job>, result: &JobResult) {
        let tenant = job.map_or_else(|| OTHER.to_owned(), |job| self.fold.label(&job.tenant.0));
        let kind = result.outcome.kind();
        for each in OutcomeKind::ALL {
            let series = self
                .jobs
                .with_label_values(&[tenant.as_str(), each.as_str()]);
            if each == kind {
                series.inc();
            }
        }
        self.run_seconds
            .with_label_values(&[tenant.as_str()])
            .inc_by(result.stats.wall_time_us as f64 / 1e6);
        self.fuel
            .with_label_values(&[tenant.as_str()])
            .inc_by(result.stats.fuel_used.unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_names_keep_their_label_and_the_rest_fold() {
        let fold = TenantFold::new(2);
        assert_eq!(fold.label("a"), "a");
        assert_eq!(fold.label("b"), "b");
        assert_eq!(fold.label("c"), OTHER);
        assert_eq!(fold.label("a"), "a");
        assert_eq!(fold.label("d"), OTHER);
    }

    #[test]
    fn a_name_outside_the_tenant_rule_folds_and_takes_no_place() {
        let fold = TenantFold::new(1);
        assert_eq!(fold.label("evil\"} 1\n# x"), OTHER);
        assert_eq!(fold.label(&"a".repeat(65)), OTHER);
        assert_eq!(fold.label("ok"), "ok");
    }

    #[test]
    fn zero_keeps_every_tenant_as_other() {
        let fold = TenantFold::new(0);
        assert_eq!(fold.label("a"), OTHER);
    }
}
