//! The instance pool's idle resident memory
//! (`sluice_sandbox_pool_idle_resident_bytes{kind}`): what the sandbox's pools keep
//! resident in their FREE slots
//! ([`SandboxConfig::memory_keep_resident_bytes`](crate::SandboxConfig) and
//! `table_keep_resident_bytes` at work), read from the sandbox at each scrape. Slots in
//! use are not counted (wasmtime counts only free slots), so on a busy worker the gauge
//! falls while the most memory is resident; it is 0 once the sandbox is gone.

use std::sync::{Arc, OnceLock, Weak};

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::sandbox::{PoolResident, Sandbox};

/// The `kind` label's closed set: linear memory and tables.
pub const KINDS: [&str; 2] = ["memory", "table"];

/// The pool gauges and the sandbox they are read from.
#[derive(Clone)]
pub struct PoolMetrics {
    /// `sluice_sandbox_pool_idle_resident_bytes{kind}`: bytes kept resident in free
    /// slots (slots in use are not counted).
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
                "sluice_sandbox_pool_idle_resident_bytes",
                "Bytes the sandbox's instance pools keep resident in their free slots (slots in use are not counted), by kind (memory, table)",
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

    /// Reads `sandbox`'s pools at every scrape from now on. A worker has one sandbox:
    /// only the first one given is watched, and false says this one was not.
    #[must_use = "false: another sandbox is already watched and this one is not"]
    pub fn watch(&self, sandbox: &Arc<Sandbox>) -> bool {
        self.sandbox.set(Arc::downgrade(sandbox)).is_ok()
    }

    /// Sets the gauges from the watched sandbox; both 0 once it is gone (its pools
    /// are unmapped), or before one is watched.
    ///
    /// A scrape racing the worker's shutdown may hold the last reference for a moment
    /// and so drop the sandbox here: that joins its epoch ticker, which wakes every
    /// `epoch_tick` (5 ms by default), so a scrape may take that much longer once.
    pub(super) fn refresh(&self) {
        let resident = self
            .sandbox
            .get()
            .and_then(Weak::upgrade)
            .map(|sandbox| sandbox.pool_resident_bytes())
            .unwrap_or_default();
        self.set(resident);
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
            .filter_map(|line| line.strip_prefix("sluice_sandbox_pool_idle_resident_bytes{kind=\""))
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
        assert!(metrics.pool.watch(&sandbox));
        let other = Arc::new(Sandbox::new(SandboxConfig::default()).expect("sandbox"));
        assert!(
            !metrics.pool.watch(&other),
            "a second sandbox is not watched"
        );
        drop(other);
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

        // The metrics do not keep a dropped sandbox alive, and its pools, unmapped,
        // no longer count.
        drop(module);
        drop(sandbox);
        let gone = gauges(&metrics.render());
        assert_eq!(gone.get("memory"), Some(&0), "{gone:?}");
        assert_eq!(gone.get("table"), Some(&0), "{gone:?}");
    }
}
