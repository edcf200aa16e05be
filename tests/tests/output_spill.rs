//! A fleet job's output is kept on the guest's thread up to the queue's inline limit
//! and spills to a blob one byte past it (`JobWriter::Spill`), with the output cap, the
//! deadline and the stored-bytes quota as before: a real redis-server and a real
//! `sluice-worker serve`.

use std::time::Duration;

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{
    Job, JobInput, JobOutput, JobResult, ModuleHash, Outcome, OutcomeKind, TenantId, TenantPolicy,
};
use sluice_tests::{Fleet, wait};

/// Reads 8 bytes of stdin: a little-endian `u32` N and a `u32` flag. Writes N bytes to
/// stdout in writes of at most 64 KiB, byte `j` being `(j % 65536) % 251`; then, when
/// the flag is not 0, spins until it is stopped.
const WRITE_N: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $n i32) (local $i i32) (local $chunk i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 64)))
    (block $filled
      (loop $fill
        (br_if $filled (i32.ge_u (local.get $i) (i32.const 65536)))
        (i32.store8 (i32.add (i32.const 1024) (local.get $i))
          (i32.rem_u (local.get $i) (i32.const 251)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $fill)))
    (block $written
      (loop $more
        (br_if $written (i32.eqz (local.get $n)))
        (local.set $chunk
          (select (i32.const 65536) (local.get $n)
            (i32.gt_u (local.get $n) (i32.const 65536))))
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (local.get $chunk))
        (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (local.set $n (i32.sub (local.get $n) (local.get $chunk)))
        (br $more)))
    (if (i32.load (i32.const 68))
      (then (loop $spin (br $spin))))))"#;

/// What the worker counts per result besides output and stderr (`RESULT_OVERHEAD` in
/// worker/src/fleet.rs, as tests/tests/stored_credit.rs uses it; the exact count after
/// the drain fails if they drift apart).
const RESULT_OVERHEAD: u64 = 512;

/// The default queue's inline limit, which the worker keeps outputs in memory up to.
fn inline_limit(queue: &RedisQueue) -> usize {
    queue.config().inline_limit
}

/// The bytes `WRITE_N` writes for `n`.
fn expected(n: usize) -> Vec<u8> {
    (0..n).map(|j| ((j % 65536) % 251) as u8).collect()
}

/// A job asking `WRITE_N` for `n` bytes, spinning after them when `spin`.
fn job(module: ModuleHash, n: usize, spin: bool) -> Job {
    let mut input = u32::try_from(n).expect("fits").to_le_bytes().to_vec();
    input.extend_from_slice(&u32::from(spin).to_le_bytes());
    Job::new(module, JobInput::Inline(input))
}

/// Runs `jobs` to the end (at most two minutes) and returns their results in order.
fn run(fleet: &Fleet, jobs: &[Job]) -> Vec<JobResult> {
    fleet.rt.block_on(async {
        wait::enqueue_and_await(&fleet.queue, jobs, Duration::from_secs(120)).await;
        wait::results(&fleet.queue, jobs.iter().map(|j| &j.id)).await
    })
}

/// The bytes of a result's output, read back from its blob when it has one.
fn output_bytes(queue: &RedisQueue, rt: &tokio::runtime::Runtime, output: &JobOutput) -> Vec<u8> {
    match output {
        JobOutput::Inline(bytes) => bytes.clone(),
        JobOutput::Written => Vec::new(),
        JobOutput::Blob { id, len } => rt.block_on(async {
            let mut reader = queue.blobs().reader(id);
            let mut back = Vec::new();
            while let Some(chunk) = reader.next_chunk().await.expect("blob chunk") {
                back.extend(chunk);
            }
            assert_eq!(back.len() as u64, *len);
            back
        }),
        #[allow(unreachable_patterns)]
        other => panic!("a fleet result is inline or a blob, not {other:?}"),
    }
}

#[test]
fn an_output_at_the_inline_limit_is_inline_and_one_byte_past_is_a_blob() {
    let fleet = Fleet::start("spill");
    let module = fleet.put_module(WRITE_N.as_bytes());
    let _worker = fleet.worker("w1", &["--concurrency", "1"]);
    let limit = inline_limit(&fleet.queue);

    let sizes = [0, 1, limit - 1, limit, limit + 1, 3 * limit + 17];
    let jobs: Vec<Job> = sizes.iter().map(|&n| job(module, n, false)).collect();
    let results = run(&fleet, &jobs);
    for (&n, result) in sizes.iter().zip(&results) {
        assert_eq!(result.outcome, Outcome::Success, "{n} bytes: {result:?}");
        if n <= limit {
            assert!(
                matches!(result.output, JobOutput::Inline(_)),
                "{n} bytes fit the inline limit {limit}: {:?}",
                result.output
            );
        } else {
            assert!(
                matches!(result.output, JobOutput::Blob { len, .. } if len == n as u64),
                "{n} bytes are past the inline limit {limit}: {:?}",
                result.output
            );
        }
        assert!(
            output_bytes(&fleet.queue, &fleet.rt, &result.output) == expected(n),
            "{n} bytes: the output's bytes differ from what the guest wrote"
        );
        assert_eq!(result.stats.output_bytes, n as u64);
    }
}

/// `n` jobs of `tenant` asking `WRITE_N` for `len` bytes each.
fn tenant_jobs(module: ModuleHash, tenant: &str, n: usize, len: usize) -> Vec<Job> {
    (0..n)
        .map(|_| {
            let mut job = job(module, len, false);
            job.tenant = TenantId(tenant.to_owned());
            job
        })
        .collect()
}

#[test]
fn an_output_kept_inline_counts_against_max_stored_bytes() {
    let fleet = Fleet::start("spillquota");
    let module = fleet.put_module(WRITE_N.as_bytes());
    let len = 200 << 10;
    assert!(
        len < inline_limit(&fleet.queue),
        "the outputs must stay inline"
    );
    let per_job = len as u64 + RESULT_OVERHEAD;
    // Room for two of these results, not three.
    let policy = TenantPolicy {
        max_stored_bytes: 2 * per_job + per_job / 2,
        ..TenantPolicy::default()
    };
    fleet
        .rt
        .block_on(fleet.queue.tenants().create("tight", &policy))
        .unwrap();
    // One slot: the tight tenant's jobs run one after another, so exactly two fit.
    let mut worker = fleet.worker("w1", &["--concurrency", "1"]);

    let tight = run(&fleet, &tenant_jobs(module, "tight", 4, len));
    let (kept, refused): (Vec<&JobResult>, Vec<&JobResult>) = tight
        .iter()
        .partition(|r| r.outcome.kind() == OutcomeKind::Success);
    assert_eq!(kept.len(), 2, "{tight:?}");
    for result in &kept {
        assert!(
            matches!(&result.output, JobOutput::Inline(bytes) if *bytes == expected(len)),
            "a kept result holds its whole output inline"
        );
    }
    for result in &refused {
        sluice_tests::assert_refused_over_stored_quota(result);
    }

    // Another tenant's inline outputs are counted exactly once the drain gives the
    // unused credit back: output, stderr and the per-result overhead.
    let counted = run(&fleet, &tenant_jobs(module, "counted", 5, len));
    let mut stored = 0;
    for result in &counted {
        assert_eq!(result.outcome, Outcome::Success, "{result:?}");
        let JobOutput::Inline(bytes) = &result.output else {
            panic!("{len} bytes fit the inline limit: {:?}", result.output);
        };
        assert_eq!(bytes.len(), len);
        stored += bytes.len() as u64 + result.stderr.len() as u64 + RESULT_OVERHEAD;
    }
    worker.terminate();
    assert!(worker.wait().success());
    assert_eq!(fleet.stored_bytes("counted"), stored);
}

#[test]
fn the_output_cap_ends_the_job_as_output_limit_below_and_above_the_inline_limit() {
    let fleet = Fleet::start("spillcap");
    let module = fleet.put_module(WRITE_N.as_bytes());
    let _worker = fleet.worker("w1", &["--concurrency", "1"]);
    let limit = inline_limit(&fleet.queue);

    // A cap under the inline limit (hit while the output is kept in memory) and one
    // past it (hit after the output spilled).
    let caps = [1000u64, limit as u64 + 4096];
    let jobs: Vec<Job> = caps
        .iter()
        .map(|&cap| {
            let mut job = job(module, cap as usize + 1, false);
            job.limits.max_output_bytes = cap;
            job
        })
        .collect();
    for (&cap, result) in caps.iter().zip(&run(&fleet, &jobs)) {
        assert_eq!(
            result.outcome.kind(),
            OutcomeKind::OutputLimit,
            "cap {cap}: {result:?}"
        );
        assert_eq!(result.stats.output_bytes, cap, "{result:?}");
        assert!(
            matches!(&result.output, JobOutput::Written | JobOutput::Inline(_)),
            "a failed job stores no blob: {:?}",
            result.output
        );
        assert!(
            output_bytes(&fleet.queue, &fleet.rt, &result.output).is_empty(),
            "a failed job keeps no output"
        );
    }
}

#[test]
fn a_guest_that_spills_then_spins_times_out_and_the_worker_runs_the_next_job() {
    spill_then_spin("spillspin", "1");
}

/// The same on a multi-threaded async side (`--async-threads 2`); every other e2e test
/// runs the default single thread. The run thread's blob writes (`Handle::block_on`),
/// the deadline and the next claim all cross the runtime.
#[test]
fn on_two_async_threads_a_guest_that_spills_then_spins_times_out_and_the_next_job_runs() {
    spill_then_spin("spillspin2", "2");
}

fn spill_then_spin(name: &str, async_threads: &str) {
    let fleet = Fleet::start(name);
    let module = fleet.put_module(WRITE_N.as_bytes());
    // One slot: the next job runs only once the spinner's run is over.
    let _worker = fleet.worker(
        "w1",
        &["--concurrency", "1", "--async-threads", async_threads],
    );
    let limit = inline_limit(&fleet.queue);

    for n in [limit / 2, 2 * limit] {
        let mut spinner = job(module, n, true);
        spinner.limits.timeout_ms = 300;
        let spun = run(&fleet, &[spinner]);
        assert_eq!(
            spun[0].outcome,
            Outcome::Timeout,
            "{n} bytes then a spin: {spun:?}"
        );
        assert!(
            matches!(&spun[0].output, JobOutput::Written | JobOutput::Inline(_)),
            "a timed-out job stores no blob: {:?}",
            spun[0].output
        );
        assert!(
            output_bytes(&fleet.queue, &fleet.rt, &spun[0].output).is_empty(),
            "a timed-out job keeps no output ({n} bytes written before the spin)"
        );

        let next = run(&fleet, &[job(module, 2 * limit, false)]);
        assert_eq!(next[0].outcome, Outcome::Success, "{next:?}");
        assert!(
            output_bytes(&fleet.queue, &fleet.rt, &next[0].output) == expected(2 * limit),
            "the next job's output is whole"
        );
    }
}
