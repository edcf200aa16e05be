//! The stored-bytes quota counts what workers store for a tenant (outputs and
//! results), not only what its requests put in Redis: a real redis-server and a real
//! `sluice-worker serve`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{
    Job, JobId, JobInput, JobOutput, JobResult, ModuleHash, OutcomeKind, Queue, TenantId,
    TenantPolicy,
};
use sluice_tests::{RedisServer, WorkerProcess, connect, runtime};

/// Writes 2 MiB to stdout: 32 `fd_write`s of 64 KiB.
const TWO_MIB_OUT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $i i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 65536))
    (local.set $i (i32.const 32))
    (loop $l
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))))"#;

const OUTPUT_BYTES: u64 = 2 << 20;

/// Room for two jobs' outputs and results, not three.
const QUOTA: u64 = 5 << 20;

/// Waits on completion notices (bounded) until every id in `ids` finished.
async fn await_finished(
    queue: &RedisQueue,
    mut from: String,
    ids: &HashSet<JobId>,
) -> HashMap<JobId, OutcomeKind> {
    let mut finished = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while finished.len() < ids.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} finished",
            finished.len(),
            ids.len()
        );
        let (next, notices) = queue
            .results()
            .completions(&from, Duration::from_millis(500))
            .await
            .expect("read completions");
        from = next;
        for (id, kind) in notices {
            if ids.contains(&id) {
                finished.insert(id, kind);
            }
        }
    }
    finished
}

fn jobs(module: ModuleHash, tenant: &str, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| {
            let mut job = Job::new(module, JobInput::Inline(Vec::new()));
            job.tenant = TenantId(tenant.to_owned());
            job
        })
        .collect()
}

async fn run(queue: &RedisQueue, jobs: &[Job]) -> Vec<JobResult> {
    let ids: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    let from = queue.results().notices_from_now().await.unwrap();
    queue.enqueue(jobs).await.unwrap();
    await_finished(queue, from, &ids).await;
    let mut out = Vec::new();
    for job in jobs {
        out.push(
            queue
                .result(job.id)
                .await
                .unwrap()
                .expect("a result for every job"),
        );
    }
    out
}

#[test]
fn outputs_count_against_stored_bytes_and_only_the_hoarder_is_refused() {
    let server = RedisServer::start();
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "qout"));
    let module = rt
        .block_on(queue.modules().put(TWO_MIB_OUT.as_bytes(), None))
        .unwrap();
    let policy = TenantPolicy {
        max_stored_bytes: QUOTA,
        ..TenantPolicy::default()
    };
    rt.block_on(queue.tenants().create("hoarder", &policy))
        .unwrap();
    rt.block_on(queue.tenants().create("other", &policy))
        .unwrap();
    // One slot: the hoarder's jobs run one after another, so exactly two fit.
    let _worker = WorkerProcess::start(&server.url(), "qout", "w1", &["--concurrency", "1"]);

    let hoarded = rt.block_on(run(&queue, &jobs(module, "hoarder", 4)));
    let (kept, refused): (Vec<&JobResult>, Vec<&JobResult>) = hoarded
        .iter()
        .partition(|r| r.outcome.kind() == OutcomeKind::Success);
    assert_eq!(kept.len(), 2, "{hoarded:?}");
    for result in &kept {
        assert!(
            matches!(result.output, JobOutput::Blob { len, .. } if len == OUTPUT_BYTES),
            "{:?}",
            result.output
        );
    }
    for result in &refused {
        assert_eq!(
            result.outcome.kind(),
            OutcomeKind::OutputLimit,
            "{result:?}"
        );
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(stderr.contains("max_stored_bytes"), "{stderr}");
        assert!(
            matches!(&result.output, JobOutput::Inline(bytes) if bytes.is_empty()),
            "a refused job keeps no output: {:?}",
            result.output
        );
    }

    // The other tenant's job on the same worker is unaffected.
    let other = rt.block_on(run(&queue, &jobs(module, "other", 1)));
    assert_eq!(other[0].outcome.kind(), OutcomeKind::Success, "{other:?}");
    assert!(
        matches!(other[0].output, JobOutput::Blob { len, .. } if len == OUTPUT_BYTES),
        "{:?}",
        other[0].output
    );
}
