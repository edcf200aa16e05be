//! Distributed mode end to end: a real redis-server, real `sluice-worker serve`
//! processes, and the `sluice` CLI. Workers die, Redis restarts, garbage lands on the
//! stream; no job is lost.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobId, JobInput, ModuleHash, OutcomeKind, Queue, codec};
use sluice_tests::{Fleet, RedisServer, bin, connect, guest, runtime, wait};

/// About 5 ms of compute per job: long enough that a batch is in flight when a test
/// interferes with it.
const SLOW_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32) (local $x i32)
    (local.set $i (i32.const 5000000))
    (loop $l
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1103515245)) (i32.const 12345)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))
    (i32.store (i32.const 0) (local.get $x))))"#;

/// How long a test waits for its jobs to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(300);

/// Waits (on completion notices, not sleeps) until every id in `ids` has finished;
/// returns their outcome kinds. Tolerates Redis being briefly away.
async fn await_finished(
    queue: &RedisQueue,
    from: String,
    ids: &HashSet<JobId>,
) -> HashMap<JobId, OutcomeKind> {
    wait::await_finished(queue, from, ids, FINISH_WITHIN).await
}

fn slow_jobs(module: ModuleHash, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
        .collect()
}

#[test]
fn three_workers_complete_a_10k_batch_exactly() {
    let fleet = Fleet::start("big");
    let _workers = fleet.workers("w", 3, &["--concurrency", "4"]);
    let server = &fleet.redis;
    let inputs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for i in 0..10_000 {
        std::fs::write(
            inputs.path().join(format!("in{i:05}.txt")),
            format!("job number {i}\n"),
        )
        .unwrap();
    }
    let run = fleet
        .sluice(&["batch", "--quiet"])
        .arg("--module")
        .arg(guest("uppercase.wasm"))
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for i in 0..10_000 {
        let got = std::fs::read_to_string(out.path().join(format!("in{i:05}.txt"))).unwrap();
        assert_eq!(got, format!("JOB NUMBER {i}\n"));
    }
    let report = std::fs::read_to_string(out.path().join("report.jsonl")).unwrap();
    assert_eq!(report.lines().count(), 10_000);
    assert!(
        report
            .lines()
            .all(|l| l.contains("\"outcome\":\"success\""))
    );
    let status = server.cli(&["HGET", "sluice:{big}:stats", "completed"]);
    assert_eq!(status.trim(), "10000");
}

#[test]
fn killed_worker_jobs_are_reclaimed() {
    let fleet = Fleet::start("kill");
    let Fleet {
        redis: server,
        rt,
        queue,
        ..
    } = &fleet;
    let module = fleet.put_module(SLOW_WAT.as_bytes());
    let flags = ["--concurrency", "2", "--lease", "1s"];
    let mut victim = fleet.worker("victim", &flags);
    let _others = fleet.workers("survivor", 2, &flags);
    let jobs = slow_jobs(module, 600);
    let ids: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    rt.block_on(queue.enqueue(&jobs)).unwrap();

    // Kill the victim once the batch is well under way.
    rt.block_on(wait::await_notices(queue, from.clone(), 100, FINISH_WITHIN));
    victim.kill();
    let held: u64 = server
        .cli(&[
            "XPENDING",
            "sluice:{kill}:jobs",
            "workers",
            "-",
            "+",
            "1000",
            "victim",
        ])
        .lines()
        .filter(|l| l.contains('-'))
        .count() as u64;

    let finished = rt.block_on(await_finished(queue, from, &ids));
    assert!(finished.values().all(|k| *k == OutcomeKind::Success));
    let results = rt.block_on(wait::results(queue, &ids));
    let rerun = results.iter().filter(|r| r.attempt > 1).count() as u64;
    assert!(
        rerun <= held,
        "{rerun} jobs ran twice but the killed worker held only {held}"
    );
    eprintln!("killed worker held {held} jobs; {rerun} were run again");
}

#[test]
fn redis_restart_mid_batch_loses_nothing() {
    let mut fleet = Fleet::start_with_aof("restart");
    let flags = ["--concurrency", "2", "--lease", "2s"];
    let _workers = fleet.workers("w", 3, &flags);
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("slow.wat");
    std::fs::write(&module, SLOW_WAT).unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    for i in 0..600 {
        std::fs::write(inputs.join(format!("{i:04}")), "").unwrap();
    }
    let out = dir.path().join("out");
    let mut batch = fleet
        .sluice(&["batch", "--quiet"])
        .arg("--module")
        .arg(&module)
        .arg(&inputs)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let Fleet {
        redis: server,
        rt,
        queue,
        ..
    } = &mut fleet;
    rt.block_on(wait::await_notices(
        queue,
        "0-0".to_owned(),
        100,
        FINISH_WITHIN,
    ));
    server.kill();
    server.start_again();

    let mut stdout = String::new();
    batch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = batch.wait().unwrap();
    assert!(status.success(), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.jsonl")).unwrap();
    let inputs_done: HashSet<&str> = report
        .lines()
        .filter(|l| l.contains("\"outcome\":\"success\""))
        .filter_map(|l| l.split("\"input\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(inputs_done.len(), 600);
}

#[test]
fn garbage_on_the_stream_is_dead_lettered_and_work_goes_on() {
    let fleet = Fleet::start("junk");
    let mut worker = fleet.worker("w0", &[]);
    let Fleet {
        redis: server,
        rt,
        queue,
        ..
    } = &fleet;
    let module = fleet.put_module(b"(module (func (export \"_start\")))");
    rt.block_on(queue.enqueue_raw(b"\x01\xff\xff garbage".to_vec()))
        .unwrap();
    let mut future = codec::encode(&Job::new(module, JobInput::Inline(Vec::new())));
    future[0] = 99;
    rt.block_on(queue.enqueue_raw(future)).unwrap();
    server.cli(&["XADD", "sluice:{junk}:jobs", "*", "not-an-envelope", "x"]);
    let good = Job::new(module, JobInput::Inline(Vec::new()));
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    rt.block_on(queue.enqueue(std::slice::from_ref(&good)))
        .unwrap();
    let finished = rt.block_on(await_finished(queue, from, &HashSet::from([good.id])));
    assert_eq!(finished[&good.id], OutcomeKind::Success);

    let dead = rt.block_on(queue.dead_letters()).unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|d| d.kind == OutcomeKind::BadEnvelope));
    assert!(
        dead.iter()
            .any(|d| d.reason.contains("unknown envelope format version 99"))
    );
    assert!(dead.iter().any(|d| d.reason.contains("envelope field")));
    assert!(worker.is_running());
}

#[test]
fn sigterm_drains_in_flight_jobs_and_loses_none() {
    let fleet = Fleet::start("drain");
    let Fleet { rt, queue, .. } = &fleet;
    let module = fleet.put_module(SLOW_WAT.as_bytes());
    let mut first = fleet.worker("first", &["--concurrency", "2"]);
    let jobs = slow_jobs(module, 300);
    let ids: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    rt.block_on(queue.enqueue(&jobs)).unwrap();
    let (_, notices) = rt
        .block_on(queue.results().completions(&from, Duration::from_secs(30)))
        .unwrap();
    assert!(!notices.is_empty());
    first.terminate();
    assert!(first.wait().success(), "a draining worker exits 0");
    let stats = rt.block_on(queue.stats()).unwrap();
    assert_eq!(stats.leased, 0, "a drained worker holds no leases");

    let _second = fleet.worker("second", &["--concurrency", "2"]);
    let finished = rt.block_on(await_finished(queue, from, &ids));
    assert_eq!(finished.len(), 300);
    assert!(finished.values().all(|k| *k == OutcomeKind::Success));
}

#[test]
fn sigterm_after_the_grace_period_releases_jobs_at_once() {
    let fleet = Fleet::start("grace");
    let Fleet { rt, queue, .. } = &fleet;
    let module = fleet.put_module(&std::fs::read(guest("infinite_loop.wat")).unwrap());
    let mut worker = fleet.worker("w0", &["--grace", "200ms", "--lease", "60s"]);
    // A 4 KiB input of every byte value: the release must give it back whole.
    let input: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut job = Job::new(module, JobInput::Inline(input));
    job.limits.timeout_ms = 60_000;
    rt.block_on(queue.enqueue(std::slice::from_ref(&job)))
        .unwrap();
    // Wait until the worker holds it.
    let mut leased = 0;
    while leased == 0 {
        leased = rt.block_on(queue.stats()).unwrap().leased;
        std::thread::yield_now();
    }
    worker.terminate();
    assert!(worker.wait().success());
    let stats = rt.block_on(queue.stats()).unwrap();
    assert_eq!(
        (stats.leased, stats.ready),
        (0, 1),
        "the job was released, not left leased"
    );
    // Still within its deadline when released: the delivery is not counted.
    let again = rt
        .block_on(queue.claim(
            "checker",
            1,
            Duration::from_secs(60),
            Duration::from_secs(5),
        ))
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.job_id, Some(job.id));
    assert_eq!(again[0].attempt(), 1, "a drain release counted an attempt");
    // The fresh entry carries the job as it was enqueued, input included. Its attempt
    // count is the enqueued one too: a release writes the attempts before the entry
    // plus its deliveries (1) less the uncounted drain (1), so nothing is added.
    assert_eq!(job.attempt, 0);
    assert_eq!(
        again[0].delivery,
        Ok(job.clone()),
        "the job was not re-enqueued whole"
    );
}

#[test]
fn one_gib_input_streams_through_redis_with_bounded_worker_memory() {
    const TOTAL: u64 = 1 << 30;
    let fleet = Fleet::start("huge");
    let worker = fleet.worker("w0", &["--concurrency", "1"]);
    let Fleet { rt, queue, .. } = &fleet;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
        let block: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
        for _ in 0..(TOTAL >> 20) {
            file.write_all(&block).unwrap();
        }
    }
    let put = fleet
        .sluice(&["module", "put", "--name", "upper"])
        .arg(guest("uppercase.wasm"))
        .output()
        .unwrap();
    assert!(put.status.success());
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    let submit = fleet
        .sluice(&[
            "submit",
            "--module",
            "upper",
            "--max-output",
            "2GiB",
            "--timeout",
            "600s",
        ])
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let id: JobId = String::from_utf8(submit.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(std::fs::remove_file(&input));
    let finished = rt.block_on(await_finished(queue, from, &HashSet::from([id])));
    assert_eq!(finished[&id], OutcomeKind::Success);
    let rss = worker.peak_rss_bytes();
    assert!(
        rss < (256 << 20) + (64 << 20),
        "worker peak RSS {} MiB",
        rss >> 20
    );
    eprintln!("1 GiB through Redis: worker peak RSS {} MiB", rss >> 20);

    let mut fetch = fleet
        .sluice(&["result", &id.to_string(), "--output", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = fetch.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    // With the output on stdout, `sluice result` prints its report line on stderr:
    // stdout is the output alone.
    let (mut total, mut lowercase) = (0u64, 0u64);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        total += chunk.len() as u64;
        lowercase += chunk.iter().filter(|b| b.is_ascii_lowercase()).count() as u64;
    }
    assert!(fetch.wait().unwrap().success());
    assert_eq!(total, TOTAL);
    assert_eq!(lowercase, 0);
}

#[test]
fn a_worker_takes_its_settings_from_environment_and_config_file() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        "queue = \"from-file\"\nconcurrency = 2\nlease = \"5s\"\n",
    )
    .unwrap();
    let mut child = bin("sluice-worker")
        .arg("serve")
        .env("SLUICE_REDIS_URL", server.url())
        .env("SLUICE_CONFIG", &config)
        .env("SLUICE_CONSUMER", "configured")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "from-file"));
    let module = rt
        .block_on(
            queue
                .modules()
                .put(b"(module (func (export \"_start\")))", None),
        )
        .unwrap();
    let job = Job::new(module, JobInput::Inline(Vec::new()));
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    rt.block_on(queue.enqueue(std::slice::from_ref(&job)))
        .unwrap();
    let finished = rt.block_on(await_finished(&queue, from, &HashSet::from([job.id])));
    assert_eq!(finished[&job.id], OutcomeKind::Success);
    let consumers = server.cli(&["XINFO", "CONSUMERS", "sluice:{from-file}:jobs", "workers"]);
    assert!(consumers.contains("configured"), "{consumers}");
    let _ = child.kill();
    let _ = child.wait();

    std::fs::write(&config, "queue = \"x\"\nno_such_setting = 1\n").unwrap();
    let bad = bin("sluice-worker")
        .args(["serve", "--redis", &server.url(), "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no_such_setting"));
}
