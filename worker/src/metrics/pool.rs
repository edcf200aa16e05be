//! The instance pool's resident memory (`sluice_sandbox_pool_resident_bytes{kind}`):
//! what the sandbox's pools keep resident in their free slots
//! ([`SandboxConfig::memory_keep_resident_bytes`](crate::SandboxConfig) and
//! `table_keep_resident_bytes` at work), read from the sandbox at each scrape.

use std::sync::{Arc, OnceLock, Weak};

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::sandbox::{PoolResident, Sandbox};

/// The `kind` label's closed set: linear memory and tables.
pub const KINDS: [&str; 2] = ["memory", "table"];

/// The pool gauges and the sandbox they are read from.
#[derive(Clone)]
pub struct PoolMetrics {
    /// `sluice_sandbox_pool_resident_bytes{kind}`: bytes kept resident in free slots.
    pub resident: IntGaugeVec,
    /// The sandbox whose pools are read at each scrape (weak: the metrics do not keep
    /// a stopped worker's sandbox alive).
    sandbox: Arc<OnceLock<Weak<Sandbox>>>,
}

impl PoolMetrics {
    /// Registers the gauges, both kinds present (0) from the start.
    pub(super) fn register(registry: &Registry) -> Self {
        let resident = IntGaugeVec::new(
            Opts::new(
                "sluice_sandbox_pool_resident_bytes",
                "Bytes the sandbox's instance pools keep resident in free slots, by kind (memory, table)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for kind in KINDS {
            resident.with_label_values(&[kind]);
        }
        registry
            .register(Box::new(resident.clone()))
            .expect("unique metric");
        PoolMetrics {
            resident,
            sandbox: Arc::default(),
        }
    }

    /// Reads `sandbox`'s pools at every scrape from now on (the first sandbox given
    /// stays: a worker has one).
    pub fn watch(&self, sandbox: &Arc<Sandbox>) {
        let _ = self.sandbox.set(Arc::downgrade(sandbox));
    }

    /// Sets the gauges from the watched sandbox, if it is still there.
    pub(super) fn refresh(&self) {
        if let Some(sandbox) = self.sandbox.get().and_then(Weak::upgrade) {
            self.set(sandbox.pool_resident_bytes());
        }
    }

    fn set(&self, resident: PoolResident) {
        let gauge = |kind: &str, bytes: u64| {
            self.resident
                .with_label_values(&[kind])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        };
        gauge(KINDS[0], resident.memory);
        gauge(KINDS[1], resident.tables);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use sluice_shared::{Job, JobInput};

    use super::*;
    use crate::metrics::WorkerMetrics;
    use crate::{JobReader, JobWriter, SandboxConfig};

    /// A guest that dirties memory past its first page and calls through its table.
    const GUEST: &str = r#"(module
      (memory 2)
      (table 2 funcref)
      (elem (i32.const 1) $f)
      (type $t (func))
      (func $f (i32.store (i32.const 70000) (i32.const 7)))
      (func (export "_start") (call_indirect (type $t) (i32.const 1))))"#;

    fn gauges(text: &str) -> HashMap<String, i64> {
        text.lines()
            .filter_map(|line| line.strip_prefix("sluice_sandbox_pool_resident_bytes{kind=\""))
            .filter_map(|rest| rest.split_once("\"} "))
            .map(|(kind, value)| (kind.to_owned(), value.parse().expect("an integer")))
            .collect()
    }

    #[test]
    fn the_gauges_read_the_sandbox_pool_at_each_scrape() {
        let metrics = WorkerMetrics::new();
        let before = gauges(&metrics.render());
        assert_eq!(before.get("memory"), Some(&0), "{before:?}");
        assert_eq!(before.get("table"), Some(&0), "{before:?}");

        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).expect("sandbox"));
        metrics.pool.watch(&sandbox);
        let module = sandbox.load_module(GUEST.as_bytes()).expect("guest loads");
        let job = Job::new(module.hash(), JobInput::Inline(Vec::new()));
        let result = sandbox.run_io(
            &module,
            &job,
            JobReader::Memory(Default::default()),
            JobWriter::Memory,
        );
        assert!(result.outcome.is_success(), "{}", result.outcome);

        let after = gauges(&metrics.render());
        let expected = sandbox.pool_resident_bytes();
        assert!(expected.memory > 0, "nothing kept resident: {expected:?}");
        assert_eq!(after["memory"], expected.memory as i64);
        assert_eq!(after["table"], expected.tables as i64);

        // The metrics do not keep a dropped sandbox alive; the last figures stay.
        drop(module);
        drop(sandbox);
        assert_eq!(gauges(&metrics.render()), after);
    }
}
