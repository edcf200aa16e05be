//! The sandbox's instance-pool gauges end to end: a real `sluice-worker serve` over a
//! real redis-server exports `sluice_sandbox_pool_idle_resident_bytes{kind}` from the
//! start (nothing resident before any job), and once a guest that dirties memory and
//! calls through its table has run, the memory and table bytes its freed slots keep
//! resident: for memory, the guest's accessible 128 KiB per slot its jobs used (less
//! than the 256 KiB kept by default, so the keep-resident cap is `min(kept, accessible)`).

use std::net::TcpListener;
use std::time::Duration;

use sluice_shared::{Job, JobInput, OutcomeKind};
use sluice_tests::{Fleet, WorkerProcess, serve, wait};

/// Dirties memory in its second page and calls through its table.
const GUEST_WAT: &str = r#"(module
  (memory 2)
  (table 2 funcref)
  (elem (i32.const 1) $f)
  (type $t (func))
  (func $f (i32.store (i32.const 70000) (i32.const 7)))
  (func (export "_start") (call_indirect (type $t) (i32.const 1))))"#;

const FINISH_WITHIN: Duration = Duration::from_secs(120);
const SLOTS: u64 = 2;
/// Jobs run.
const JOBS: u64 = 4;
/// The guest's accessible memory, `(memory 2)`: less than the 256 KiB a slot keeps by
/// default (`SandboxConfig::memory_keep_resident_bytes`).
const GUEST_MEMORY_BYTES: u64 = 2 << 16;

struct MeteredWorker {
    _process: WorkerProcess,
    metrics: String,
}

impl MeteredWorker {
    fn start(fleet: &Fleet) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = listener.local_addr().unwrap().to_string();
        drop(listener);
        let process = fleet.worker(
            "pool-1",
            &[
                &format!("--metrics-addr={metrics}"),
                &format!("--concurrency={SLOTS}"),
            ],
        );
        MeteredWorker {
            _process: process,
            metrics,
        }
    }

    /// The gauge of `kind`, if the exposition has it.
    fn resident(&self, kind: &str) -> Option<f64> {
        let mut reply = serve::agent()
            .get(&format!("http://{}/metrics", self.metrics))
            .call()
            .expect("read the worker's /metrics");
        let text = reply.body_mut().read_to_string().unwrap();
        let series = format!("sluice_sandbox_pool_idle_resident_bytes{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map(|value| value.parse().expect("a number"))
    }
}

#[test]
fn the_pool_resident_gauges_show_what_freed_slots_keep() {
    let fleet = Fleet::start("poolmetrics");
    let module = fleet.put_module(GUEST_WAT.as_bytes());
    let worker = MeteredWorker::start(&fleet);
    assert_eq!(worker.resident("memory"), Some(0.0));
    assert_eq!(worker.resident("table"), Some(0.0));

    let jobs: Vec<Job> = (0..JOBS)
        .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
        .collect();
    let kinds = fleet
        .rt
        .block_on(wait::enqueue_and_await(&fleet.queue, &jobs, FINISH_WITHIN));
    assert!(
        kinds.values().all(|k| *k == OutcomeKind::Success),
        "{kinds:?}"
    );

    // A slot is returned to the pool as its job ends, before the result is recorded.
    let memory = worker.resident("memory").expect("the memory gauge");
    assert!(memory > 0.0, "no memory kept resident after the jobs ran");
    // Only the unmetered engine ran (no fuel limit). Each slot a job used keeps the
    // guest's accessible memory, not all it may keep: at most one slot per job (a
    // module gets back the slot it last used, and at most SLOTS run at once).
    assert!(
        memory <= (JOBS * GUEST_MEMORY_BYTES) as f64,
        "{memory} bytes resident: more than {JOBS} slots × the guest's 128 KiB"
    );
    assert_eq!(
        memory as u64 % GUEST_MEMORY_BYTES,
        0,
        "{memory} bytes resident: not whole slots of the guest's 128 KiB"
    );
    // The guest's table was written (its element segment): its slot keeps it too.
    let table = worker.resident("table").expect("the table gauge");
    assert!(
        table > 0.0,
        "no table bytes kept resident after the jobs ran"
    );
}
