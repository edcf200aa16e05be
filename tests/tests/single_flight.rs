//! Compile once per fleet, warm on upload, and artifacts that live and die with their
//! module: real `sluice-worker serve` processes (sharing one cache key, so L3 is on)
//! over a real redis-server, and the artifacts role's protocol on its own.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use sluice_shared::queue::redis::{
    ArtifactId, MAX_REFUSAL_BYTES, MAX_REFUSAL_TTL, PrecompileRequest, RedisQueue,
};
use sluice_shared::{Job, JobInput, JobOutput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::{Fleet, WorkerProcess, fresh_queue, serve, wait, wasm_gen};

const FINISH_WITHIN: Duration = Duration::from_secs(300);

/// `_start` writes `cached ok\n`.
const HELLO: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "cached ok\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"#;

/// The hello module with `functions` exported arithmetic functions beside it (40
/// multiply-adds each): 1500 make about 5 MB of text that takes Cranelift a second or
/// more, long enough that concurrent first jobs really do race for it. `salt` makes
/// each test's module new to the fleet.
fn big_module(functions: usize, salt: &str) -> Vec<u8> {
    let mut wat = format!("(module {HELLO}\n(func (export \"salt_{salt}\"))\n");
    for k in 0..functions {
        wat.push_str(&format!("(func (export \"f{k}\") (param i64) (result i64)"));
        for j in 0..40 {
            wat.push_str(&format!(
                " (local.set 0 (i64.add (i64.mul (local.get 0) (i64.const {})) (i64.const {j})))",
                k * 31 + j
            ));
        }
        wat.push_str(" (local.get 0))\n");
    }
    wat.push(')');
    wat.into_bytes()
}

/// A worker with its own /metrics, the fleet's key (L3 on), and no L2 (so every
/// artifact it loads comes from Redis or its own compile).
struct Member {
    _process: WorkerProcess,
    metrics: String,
}

impl Member {
    fn start(fleet: &Fleet, name: &str, key_file: &Path, extra: &[&str]) -> Self {
        let metrics = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut args = vec![
            format!("--metrics-addr={metrics}"),
            format!("--cache-key-file={}", key_file.display()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Member {
            _process: fleet.worker(name, &args),
            metrics,
        }
    }

    /// The value of series `series` (name and labels) on its /metrics.
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

    fn compiles(&self) -> f64 {
        self.metric("sluice_module_compiles_total")
    }
}

/// The fleet's compile count: the sum over its workers.
fn fleet_compiles(members: &[Member]) -> f64 {
    members.iter().map(Member::compiles).sum()
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cache.key");
    std::fs::write(&path, "the fleet's cache key, 32 bytes.").unwrap();
    path
}

/// Enqueues `n` jobs of `module` at once and returns their results once all finished.
fn run_jobs(fleet: &Fleet, module: ModuleHash, n: usize) -> Vec<JobResult> {
    let jobs: Vec<Job> = (0..n)
        .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
        .collect();
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    fleet.rt.block_on(async {
        fleet.queue.enqueue(&jobs).await.unwrap();
        wait::await_finished(
            &fleet.queue,
            "0-0".into(),
            &ids.iter().copied().collect::<HashSet<_>>(),
            FINISH_WITHIN,
        )
        .await;
        wait::results(&fleet.queue, ids.iter()).await
    })
}

fn assert_all_hello(results: &[JobResult]) {
    for result in results {
        assert_eq!(result.outcome, Outcome::Success, "{result:?}");
        assert_eq!(result.output, JobOutput::Inline(b"cached ok\n".to_vec()));
    }
}

/// Every key of the queue matching `pattern` (after the queue's prefix).
fn keys(queue: &RedisQueue, rt: &tokio::runtime::Runtime, pattern: &str) -> Vec<String> {
    rt.block_on(
        redis::cmd("KEYS")
            .arg(format!("{}{pattern}", queue.keys().prefix()))
            .query_async(&mut queue.connection()),
    )
    .unwrap()
}

#[test]
fn thirty_concurrent_first_jobs_on_three_workers_compile_once() {
    let fleet = Fleet::start("flight");
    let scratch = tempfile::tempdir().unwrap();
    let key = key_file(scratch.path());
    let members: Vec<Member> = (0..3)
        .map(|i| Member::start(&fleet, &format!("w{i}"), &key, &["--concurrency=4"]))
        .collect();
    // Stored with plain `put`: no precompile request, so the first jobs meet an empty
    // L3 and race for the lock.
    let module = fleet.put_module(&big_module(1500, "flight"));
    let results = run_jobs(&fleet, module, 30);
    assert_eq!(results.len(), 30);
    assert_all_hello(&results);
    // Can fail: without the lock each of the 12 job slots that started the module
    // before the first compile ended (a second or more) would compile it, and without
    // the shared L3 each worker at least once. All jobs are unmetered: one engine.
    assert_eq!(
        fleet_compiles(&members),
        1.0,
        "compiled once across the fleet"
    );
    let l3_hits: f64 = members
        .iter()
        .map(|m| m.metric("sluice_module_cache_hits_total{tier=\"l3\"}"))
        .sum();
    assert!(
        l3_hits >= 2.0,
        "the other workers loaded it from Redis: {l3_hits}"
    );
}

#[test]
fn a_compile_bomb_sent_to_three_workers_is_compiled_and_refused_once() {
    let fleet = Fleet::start("bomb");
    let scratch = tempfile::tempdir().unwrap();
    let key = key_file(scratch.path());
    let members: Vec<Member> = (0..3)
        .map(|i| {
            Member::start(
                &fleet,
                &format!("w{i}"),
                &key,
                &["--concurrency=1", "--compile-memory=256MiB"],
            )
        })
        .collect();
    let bomb = fleet.put_module(&wasm_gen::hard_to_compile(1000, 1000, 4));
    let results = run_jobs(&fleet, bomb, 3);
    for result in &results {
        match &result.outcome {
            Outcome::InvalidModule { reason } => {
                assert!(reason.contains("compile memory limit"), "{reason}");
            }
            other => panic!("expected invalid_module, got {other}"),
        }
    }
    // Can fail: three workers each claim a job at once; without the fleet's lock and
    // its recorded refusal each would run its own compile child.
    assert_eq!(
        fleet_compiles(&members),
        1.0,
        "compiled once across the fleet"
    );
    let refusals = keys(&fleet.queue, &fleet.rt, &format!("refused:{bomb}:*"));
    assert_eq!(refusals.len(), 1, "{refusals:?}");
}

/// `sluice module put FILE` through the real CLI: the module's hash.
fn module_put(fleet: &Fleet, file: &Path) -> ModuleHash {
    let put = fleet
        .sluice(&["module", "put", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    String::from_utf8(put.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn an_uploaded_module_is_precompiled_so_a_fresh_worker_does_not_compile_and_rm_deletes_it() {
    let fleet = Fleet::start("warm");
    let scratch = tempfile::tempdir().unwrap();
    let key = key_file(scratch.path());
    let running = Member::start(&fleet, "running", &key, &["--concurrency=1"]);
    let file = scratch.path().join("warm.wat");
    std::fs::write(&file, big_module(200, "warm")).unwrap();
    let module = module_put(&fleet, &file);

    // The running worker compiles it without any job asking.
    wait::poll(
        "the running worker precompiled the upload",
        FINISH_WITHIN,
        || running.metric("sluice_module_precompiles_total{result=\"compiled\"}"),
        |n| *n == 1.0,
    );
    assert_eq!(running.compiles(), 1.0);
    assert_eq!(
        keys(&fleet.queue, &fleet.rt, &format!("artifact:{module}:*")).len(),
        1
    );
    drop(running);

    // A fresh worker, started after the upload, runs the first job from L3.
    let fresh = Member::start(&fleet, "fresh", &key, &["--concurrency=1"]);
    assert_all_hello(&run_jobs(&fleet, module, 1));
    assert_eq!(fresh.compiles(), 0.0, "no compile on the fresh worker");
    assert_eq!(
        fresh.metric("sluice_module_cache_hits_total{tier=\"l3\"}"),
        1.0
    );
    drop(fresh);

    // `sluice module rm` takes the module's artifacts with it.
    let rm = fleet
        .sluice(&["module", "rm", &module.to_hex()])
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    assert_eq!(
        keys(&fleet.queue, &fleet.rt, &format!("artifact:{module}:*")),
        Vec::<String>::new()
    );
    assert_eq!(
        keys(&fleet.queue, &fleet.rt, &format!("module:{module}*")),
        Vec::<String>::new()
    );
}

/// The precompile results `member` counted, by label.
fn precompiles(member: &Member, result: &str) -> f64 {
    member.metric(&format!(
        "sluice_module_precompiles_total{{result=\"{result}\"}}"
    ))
}

#[test]
fn an_upload_to_three_workers_is_fetched_and_compiled_by_one_and_loaded_by_none() {
    let fleet = Fleet::start("warmthree");
    let scratch = tempfile::tempdir().unwrap();
    let key = key_file(scratch.path());
    let members: Vec<Member> = (0..3)
        .map(|i| Member::start(&fleet, &format!("w{i}"), &key, &["--concurrency=1"]))
        .collect();
    let file = scratch.path().join("three.wat");
    // Big enough that the three read the request while the first still compiles (and
    // under the CLI's 4 MiB cap for text).
    std::fs::write(&file, big_module(800, "three")).unwrap();
    let module = module_put(&fleet, &file);
    let answered = |m: &Member| {
        ["compiled", "present", "refused", "failed"]
            .iter()
            .map(|r| precompiles(m, r))
            .sum::<f64>()
    };
    wait::poll(
        "every worker answered the precompile request",
        FINISH_WITHIN,
        || members.iter().map(answered).sum::<f64>(),
        |n| *n == 3.0,
    );
    assert_eq!(
        fleet_compiles(&members),
        1.0,
        "compiled once across the fleet"
    );
    let compiled: f64 = members.iter().map(|m| precompiles(m, "compiled")).sum();
    let present: f64 = members.iter().map(|m| precompiles(m, "present")).sum();
    assert_eq!((compiled, present), (1.0, 2.0));
    // Can fail: before, the two that lost the lock waited for the artifact, then each
    // downloaded and loaded it (an L3 hit each). Now they read no artifact at all.
    for member in members.iter().filter(|m| precompiles(m, "present") == 1.0) {
        assert_eq!(
            member.metric("sluice_module_cache_hits_total{tier=\"l3\"}"),
            0.0,
            "a worker that lost the lock loaded nothing"
        );
        assert_eq!(
            member.metric("sluice_module_cache_misses_total{tier=\"l3\"}"),
            0.0
        );
    }
    assert_eq!(
        keys(&fleet.queue, &fleet.rt, &format!("artifact:{module}:*")).len(),
        1
    );
    assert!(
        keys(&fleet.queue, &fleet.rt, &format!("compiling:{module}:*")).is_empty(),
        "the winner released its lock"
    );
}

#[test]
fn a_lock_whose_holder_died_lets_a_waiter_compile_after_its_ttl() {
    let fleet = Fleet::start("deadholder");
    let scratch = tempfile::tempdir().unwrap();
    let key = key_file(scratch.path());
    // A short compile wall clock makes the lock's lifetime short (it plus 5 s).
    let worker = Member::start(
        &fleet,
        "w0",
        &key,
        &["--concurrency=1", "--compile-timeout=1s"],
    );
    // The engine's fingerprint, learnt from the artifact of a first module.
    let first = fleet.put_module(format!("(module {HELLO})").as_bytes());
    assert_all_hello(&run_jobs(&fleet, first, 1));
    let artifact = keys(&fleet.queue, &fleet.rt, &format!("artifact:{first}:*"));
    let hex = artifact[0].rsplit(':').next().unwrap();
    let engine: [u8; 32] = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();

    // A holder that took the lock of the next module and died (it never releases).
    let module = fleet.put_module(format!("(module {HELLO} (func (export \"other\")))").as_bytes());
    let id = ArtifactId { module, engine };
    let taken = fleet.rt.block_on(fleet.queue.artifacts().lock(
        &id,
        "a worker killed mid-compile",
        Duration::from_secs(6),
    ));
    assert!(taken.unwrap());
    assert_all_hello(&run_jobs(&fleet, module, 1));
    assert_eq!(worker.compiles(), 2.0, "the waiter compiled it itself");
    let lock = fleet.rt.block_on(fleet.queue.artifacts().is_locked(&id));
    assert!(!lock.unwrap(), "its own lock released");
}

#[test]
fn a_refusal_without_the_cache_keys_tag_is_ignored_and_counted() {
    let fleet = Fleet::start("forged");
    let scratch = tempfile::tempdir().unwrap();
    let key = key_file(scratch.path());
    let worker = Member::start(&fleet, "w0", &key, &["--concurrency=1"]);
    // The engine's fingerprint, learnt from the artifact of a first module.
    let first = fleet.put_module(format!("(module {HELLO})").as_bytes());
    assert_all_hello(&run_jobs(&fleet, first, 1));
    let artifact = keys(&fleet.queue, &fleet.rt, &format!("artifact:{first}:*"));
    let engine = artifact[0].rsplit(':').next().unwrap().to_owned();

    // Whoever can write to Redis records a refusal of a good module, with a tag not
    // made with the fleet's key.
    let module =
        fleet.put_module(format!("(module {HELLO} (func (export \"forged\")))").as_bytes());
    let mut forged = vec![0u8; 32];
    forged.extend_from_slice(b"forged: this module does not compile");
    let refused = format!("{}refused:{module}:{engine}", fleet.queue.keys().prefix());
    fleet
        .rt
        .block_on(
            redis::cmd("SET")
                .arg(&refused)
                .arg(forged)
                .query_async::<()>(&mut fleet.queue.connection()),
        )
        .unwrap();
    // Can fail: a trusted refusal would end the job as invalid_module, uncompiled.
    assert_all_hello(&run_jobs(&fleet, module, 1));
    assert_eq!(
        worker.compiles(),
        2.0,
        "compiled despite the forged refusal"
    );
    assert_eq!(
        worker.metric("sluice_module_cache_integrity_failures_total{tier=\"l3\"}"),
        1.0
    );
}

#[test]
fn artifacts_never_outlive_their_module_and_locks_and_refusals_follow_the_protocol() {
    let rt = sluice_tests::runtime();
    rt.block_on(async {
        let (_redis, q) = fresh_queue(|_| {}).await;
        let artifacts = q.artifacts();
        let week = Duration::from_secs(7 * 24 * 3600);
        let expiretime = |key: String| {
            let q = &q;
            async move {
                redis::cmd("PEXPIRETIME")
                    .arg(key)
                    .query_async::<i64>(&mut q.connection())
                    .await
                    .unwrap()
            }
        };
        let pttl = |key: String| {
            let q = &q;
            async move {
                redis::cmd("PTTL")
                    .arg(key)
                    .query_async::<i64>(&mut q.connection())
                    .await
                    .unwrap()
            }
        };

        // No module, no artifact.
        let gone = ArtifactId {
            module: ModuleHash::of(b"never stored"),
            engine: [7; 32],
        };
        assert!(!artifacts.put(&gone, &[1; 32], b"code", week).await.unwrap());
        assert_eq!(artifacts.get(&gone, week).await.unwrap(), None);
        assert!(!artifacts.known(&gone).await.unwrap());

        // A tenant's module with a one-minute lifetime: its artifact lives no longer,
        // stored or refreshed.
        let wasm = format!("(module {HELLO})");
        let meta =
            sluice_shared::module_meta::ModuleMeta::new(wasm.len() as u64, Vec::new(), Vec::new());
        let put = q
            .modules()
            .put_for_tenant(
                "acme",
                wasm.as_bytes(),
                &meta,
                None,
                Duration::from_secs(60),
                10,
            )
            .await
            .unwrap();
        let module = ModuleHash::of(wasm.as_bytes());
        assert!(matches!(
            put,
            sluice_shared::queue::redis::ModulePut::Stored { .. }
        ));
        // Uploading the same bytes again stores nothing new: no second precompile
        // request (checked below), so re-uploads cannot trim the capped stream.
        let again = q
            .modules()
            .put_for_tenant(
                "acme",
                wasm.as_bytes(),
                &meta,
                None,
                Duration::from_secs(60),
                10,
            )
            .await
            .unwrap();
        assert!(matches!(
            again,
            sluice_shared::queue::redis::ModulePut::Stored { .. }
        ));
        let id = ArtifactId {
            module,
            engine: [1; 32],
        };
        assert!(artifacts.put(&id, &[2; 32], b"code", week).await.unwrap());
        let key = q.keys().artifact(&module, &[1; 32]);
        let module_ttl = pttl(q.keys().module(&module)).await;
        let artifact_ttl = pttl(key.clone()).await;
        assert!(
            0 < artifact_ttl && artifact_ttl <= module_ttl,
            "{artifact_ttl} {module_ttl}"
        );
        let stored = artifacts.get(&id, week).await.unwrap().unwrap();
        assert_eq!(
            (stored.tag, stored.bytes.as_slice()),
            ([2; 32], b"code".as_slice())
        );
        // Expiry instants, not PTTLs: two PTTLs read one after the other differ by
        // the time between the reads even when both keys expire at the same instant.
        assert!(expiretime(key.clone()).await <= expiretime(q.keys().module(&module)).await);
        // A longer-lived module lets the artifact live the cache's lifetime.
        assert!(pttl(q.keys().module_artifacts(&module)).await >= pttl(key.clone()).await);

        // Refusals: capped, at most an hour, deleted with the module too.
        let other = ArtifactId {
            module,
            engine: [2; 32],
        };
        let long = "x".repeat(MAX_REFUSAL_BYTES * 2);
        assert!(
            artifacts
                .refuse(&other, &[3; 32], &long, week)
                .await
                .unwrap()
        );
        let refusal = artifacts.refusal(&other).await.unwrap().unwrap();
        assert_eq!(refusal.reason.len(), MAX_REFUSAL_BYTES);
        assert_eq!(refusal.tag, [3; 32], "stored with its tag");
        let refusal_ttl = pttl(q.keys().artifact_refusal(&module, &[2; 32])).await;
        assert!(0 < refusal_ttl && refusal_ttl as u128 <= MAX_REFUSAL_TTL.as_millis());
        assert!(artifacts.known(&other).await.unwrap());

        // The tenant's delete takes the artifact and the refusal with the bytes.
        let removed = q
            .modules()
            .remove_for_tenant("acme", &module, None)
            .await
            .unwrap();
        assert!(removed.bytes_deleted);
        assert_eq!(artifacts.get(&id, week).await.unwrap(), None);
        assert_eq!(artifacts.refusal(&other).await.unwrap(), None);
        assert_eq!(pttl(q.keys().module_artifacts(&module)).await, -2);

        // An operator's module: no lifetime, so the artifact gets the cache's; the
        // operator's delete takes it.
        let module = q.modules().put(wasm.as_bytes(), None).await.unwrap();
        assert!(
            artifacts
                .put(&id, &[2; 32], b"code", Duration::from_secs(120))
                .await
                .unwrap()
        );
        let ttl = pttl(key.clone()).await;
        assert!(60_000 < ttl && ttl <= 120_000, "{ttl}");
        assert!(q.modules().remove(&module.to_hex()).await.unwrap());
        assert_eq!(pttl(key.clone()).await, -2);

        // The lock: one holder at a time, released only by its holder.
        assert!(artifacts.lock(&id, "a", week).await.unwrap());
        assert!(!artifacts.lock(&id, "b", week).await.unwrap());
        assert!(!artifacts.unlock(&id, "b").await.unwrap());
        assert!(artifacts.is_locked(&id).await.unwrap());
        assert!(artifacts.unlock(&id, "a").await.unwrap());
        assert!(artifacts.lock(&id, "b", week).await.unwrap());

        // Uploads with metadata ask for a precompile; plain puts do not.
        let cursor = "0";
        let (_, requested) = artifacts
            .precompile_requests(cursor, Duration::from_millis(10))
            .await
            .unwrap();
        let tenants_upload = PrecompileRequest {
            module: ModuleHash::of(wasm.as_bytes()),
            tenant: Some("acme".into()),
        };
        assert_eq!(
            requested,
            vec![tenants_upload.clone()],
            "the tenant's upload, once for two uploads of the same bytes"
        );
        let meta_put = q
            .modules()
            .put_with_meta(b"(module)", &meta, None)
            .await
            .unwrap();
        let (_, requested) = artifacts
            .precompile_requests(cursor, Duration::from_millis(10))
            .await
            .unwrap();
        let operators_upload = PrecompileRequest {
            module: meta_put,
            tenant: None,
        };
        assert_eq!(requested, vec![tenants_upload, operators_upload]);
    });
}
