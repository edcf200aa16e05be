//! The shared module cache end to end: real `sluice-worker serve` processes over a real
//! redis-server. A fresh worker loads what another compiled (no compile), and an
//! artifact with one byte flipped, in Redis or on disk, is caught by its integrity tag,
//! discarded and recompiled, while the job still succeeds with the right output.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_shared::{Job, JobInput, JobOutput, ModuleHash, Outcome, Queue};
use sluice_tests::{Fleet, WorkerProcess, serve, wait};

/// Writes `cached ok\n` to stdout.
const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "cached ok\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

const FINISH_WITHIN: Duration = Duration::from_secs(120);

/// A free local port for a worker's /metrics.
fn metrics_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A worker with its own metrics endpoint, L2 in `dir`, the fleet's key in `key_file`.
struct CachedWorker {
    _process: WorkerProcess,
    metrics: String,
}

impl CachedWorker {
    fn start(fleet: &Fleet, name: &str, dir: &Path, key_file: &Path) -> Self {
        let metrics = metrics_addr();
        let process = fleet.worker(
            name,
            &[
                "--concurrency=1",
                &format!("--metrics-addr={metrics}"),
                &format!("--cache-dir={}", dir.display()),
                &format!("--cache-key-file={}", key_file.display()),
            ],
        );
        CachedWorker {
            _process: process,
            metrics,
        }
    }

    /// The value of the metric series `series` (name and labels) on /metrics.
    fn metric(&self, series: &str) -> f64 {
        let mut reply = serve::agent()
            .get(&format!("http://{}/metrics", self.metrics))
            .call()
            .expect("read the worker's /metrics");
        let text = reply.body_mut().read_to_string().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    fn tier(&self, metric: &str, tier: &str) -> f64 {
        self.metric(&format!("sluice_module_cache_{metric}{{tier=\"{tier}\"}}"))
    }

    /// Waits until the worker holds artifacts on disk: it writes them off the job's
    /// path, after the job's result, and sets the L2 gauge once one is renamed in place.
    fn await_on_disk(&self) {
        wait::poll(
            "artifact bytes on disk (sluice_module_cache_bytes{tier=\"l2\"})",
            FINISH_WITHIN,
            || self.tier("bytes", "l2"),
            |bytes| *bytes > 0.0,
        );
    }
}

/// Runs one job of `module` and asserts it succeeded with the module's output.
fn run_job(fleet: &Fleet, module: ModuleHash) {
    let job = Job::new(module, JobInput::Inline(Vec::new()));
    let id = job.id;
    // Notices are followed from the stream's start, not from "now": a job served from
    // L1 can finish within the millisecond `notices_from_now` names, and its notice
    // (id `<that ms>-0`) would then not be after the cursor.
    fleet.rt.block_on(async {
        fleet.queue.enqueue(&[job]).await.unwrap();
        wait::await_finished(
            &fleet.queue,
            "0-0".into(),
            &HashSet::from([id]),
            FINISH_WITHIN,
        )
        .await
    });
    let result = fleet
        .rt
        .block_on(wait::results(&fleet.queue, [&id]))
        .remove(0);
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert_eq!(result.output, JobOutput::Inline(b"cached ok\n".to_vec()));
}

/// The artifact files (not tags) in `dir`.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

/// Flips one byte in the middle of `bytes`.
fn flip(bytes: &mut [u8]) {
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
}

#[test]
fn a_fresh_worker_loads_what_another_compiled_and_a_flipped_byte_is_caught_in_each_tier() {
    let fleet = Fleet::start("cache");
    let scratch = tempfile::tempdir().unwrap();
    let key_file = scratch.path().join("cache.key");
    std::fs::write(&key_file, "a fleet secret of more than 16 bytes\n").unwrap();
    let module = fleet.put_module(HELLO_WAT.as_bytes());

    // The first worker compiles (every tier misses) and publishes.
    let first = CachedWorker::start(&fleet, "w1", &scratch.path().join("d1"), &key_file);
    run_job(&fleet, module);
    assert_eq!(first.tier("misses_total", "l3"), 1.0, "one compile");
    assert_eq!(first.tier("hits_total", "l3"), 0.0);
    run_job(&fleet, module);
    assert_eq!(
        first.tier("hits_total", "l1"),
        1.0,
        "the second job is an L1 hit"
    );
    drop(first);

    // A fresh worker (new process, empty disk) loads it from Redis: no compile.
    let d2 = scratch.path().join("d2");
    let fresh = CachedWorker::start(&fleet, "w2", &d2, &key_file);
    run_job(&fleet, module);
    assert_eq!(fresh.tier("hits_total", "l3"), 1.0);
    assert_eq!(fresh.tier("misses_total", "l3"), 0.0, "no compile");
    assert_eq!(fresh.tier("misses_total", "l2"), 1.0);
    fresh.await_on_disk();
    drop(fresh);

    // One byte flipped on disk: caught, discarded, loaded from Redis again.
    let on_disk = artifacts(&d2);
    assert_eq!(on_disk.len(), 1, "the L3 hit was written to disk");
    let mut bytes = std::fs::read(&on_disk[0]).unwrap();
    flip(&mut bytes);
    std::fs::write(&on_disk[0], &bytes).unwrap();
    let after_disk = CachedWorker::start(&fleet, "w3", &d2, &key_file);
    run_job(&fleet, module);
    assert_eq!(after_disk.tier("integrity_failures_total", "l2"), 1.0);
    assert_eq!(after_disk.tier("hits_total", "l2"), 0.0);
    assert_eq!(after_disk.tier("hits_total", "l3"), 1.0);
    after_disk.await_on_disk();
    drop(after_disk);
    // The bad file was replaced by the good artifact.
    let repaired = std::fs::read(&artifacts(&d2)[0]).unwrap();
    assert_ne!(repaired, bytes);

    // One byte flipped in Redis: caught, and the module compiled again.
    let key = fleet
        .queue
        .keys()
        .artifact(&module, &[0; 32])
        .rsplit_once(':')
        .map(|(prefix, _)| format!("{prefix}:*"))
        .unwrap();
    let keys: Vec<String> = fleet
        .rt
        .block_on(
            redis::cmd("KEYS")
                .arg(&key)
                .query_async(&mut fleet.queue.connection()),
        )
        .unwrap();
    assert_eq!(
        keys.len(),
        1,
        "one artifact (the unmetered engine's): {keys:?}"
    );
    let mut stored: Vec<u8> = fleet
        .rt
        .block_on(
            redis::cmd("GET")
                .arg(&keys[0])
                .query_async(&mut fleet.queue.connection()),
        )
        .unwrap();
    flip(&mut stored);
    let _: () = fleet
        .rt
        .block_on(
            redis::cmd("SET")
                .arg(&keys[0])
                .arg(&stored)
                .query_async(&mut fleet.queue.connection()),
        )
        .unwrap();
    let after_redis = CachedWorker::start(&fleet, "w4", &scratch.path().join("d4"), &key_file);
    run_job(&fleet, module);
    assert_eq!(after_redis.tier("integrity_failures_total", "l3"), 1.0);
    assert_eq!(after_redis.tier("misses_total", "l3"), 1.0, "recompiled");
    assert_eq!(after_redis.tier("hits_total", "l3"), 0.0);
    // And it published a good artifact again.
    let republished: Vec<u8> = fleet
        .rt
        .block_on(
            redis::cmd("GET")
                .arg(&keys[0])
                .query_async(&mut fleet.queue.connection()),
        )
        .unwrap();
    assert_ne!(republished, stored);
}

#[test]
fn a_worker_with_another_key_does_not_load_the_fleets_artifacts() {
    let fleet = Fleet::start("cachekeys");
    let scratch = tempfile::tempdir().unwrap();
    let ours = scratch.path().join("ours.key");
    let theirs = scratch.path().join("theirs.key");
    std::fs::write(&ours, "our fleet secret, 32 bytes long!").unwrap();
    std::fs::write(&theirs, "someone else's secret, also long").unwrap();
    let module = fleet.put_module(HELLO_WAT.as_bytes());

    let writer = CachedWorker::start(&fleet, "w1", &scratch.path().join("d1"), &theirs);
    run_job(&fleet, module);
    drop(writer);
    // Their artifact fails our tag check: counted, recompiled, the job still right.
    let reader = CachedWorker::start(&fleet, "w2", &scratch.path().join("d2"), &ours);
    run_job(&fleet, module);
    assert_eq!(reader.tier("integrity_failures_total", "l3"), 1.0);
    assert_eq!(reader.tier("hits_total", "l3"), 0.0);
}
