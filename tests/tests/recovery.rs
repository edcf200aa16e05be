//! Recovery from lost Redis data: Redis restarted without persistence, `FLUSHALL`, a
//! write that never made it (entries missing from the stream), a foreign key where
//! the completion notices belong. A `sluice batch --redis` holds its inputs, so it
//! must end with every result, enqueueing again whatever Redis lost; where it cannot,
//! it must say so rather than wait forever. Every wait is on an event and bounded.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobId, JobInput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::{RedisServer, WorkerProcess, bin, connect, guest, runtime};

/// The longest any test waits for one event before failing.
const BOUND: Duration = Duration::from_secs(120);

/// A running `sluice batch --redis`, its stderr read line by line.
struct Batch {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Batch {
    fn start(redis_url: &str, queue: &str, module: &Path, inputs: &Path, out: &Path) -> Self {
        let mut child = bin("sluice")
            .args(["batch", "--quiet", "--redis", redis_url, "--queue", queue])
            .arg("--module")
            .arg(module)
            .arg(inputs)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice batch");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[batch] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Batch {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits for a stderr line that `wanted` accepts, and returns it.
    fn wait_for_line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let give_up = Instant::now() + BOUND;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} on stderr in {BOUND:?}: {:#?}", self.stderr),
            }
        }
    }

    /// Waits for it to exit (failing the test if it does not within the bound), and
    /// returns its status with all of its stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let give_up = Instant::now() + BOUND;
        // Stderr closes when the process exits: read it to the end first.
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stderr.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "sluice batch still running after {BOUND:?}: {:#?}",
                        self.stderr
                    );
                }
            }
        }
        let status = self.child.wait().expect("wait for sluice batch");
        (status, self.stderr.join("\n"))
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` small inputs (plus `big` inputs over the inline limit, stored as blobs) in
/// `dir/in`; returns the directory and each input's expected `count_raw` output.
fn write_inputs(dir: &Path, n: usize, big: usize) -> (PathBuf, HashMap<String, String>) {
    let inputs = dir.join("in");
    std::fs::create_dir(&inputs).unwrap();
    let mut expected = HashMap::new();
    for i in 0..n {
        let body = format!("line {i}\n").repeat(i % 5 + 1);
        let name = format!("{i:05}");
        expected.insert(name.clone(), format!("{} {}\n", body.len(), i % 5 + 1));
        std::fs::write(inputs.join(&name), body).unwrap();
    }
    for i in 0..big {
        // Sorted last, so they are still queued when the test interferes.
        let name = format!("zz-big-{i}");
        let body = "x".repeat(300 << 10) + "\n";
        expected.insert(name.clone(), format!("{} 1\n", body.len()));
        std::fs::write(inputs.join(&name), body).unwrap();
    }
    (inputs, expected)
}

/// Asserts the batch wrote one successful report line per input and the right output
/// for each.
fn assert_every_result(out: &Path, expected: &HashMap<String, String>) {
    let report = std::fs::read_to_string(out.join("report.jsonl")).expect("report.jsonl");
    let mut succeeded = HashSet::new();
    for line in report.lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("report line is JSON");
        assert_eq!(line["outcome"], "success", "{line}");
        let input = line["input"].as_str().expect("input name").to_owned();
        assert!(succeeded.insert(input.clone()), "{input} reported twice");
    }
    assert_eq!(succeeded.len(), expected.len(), "one report line per input");
    for (name, want) in expected {
        let got = std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got, want, "output of {name}");
    }
}

/// Waits until `n` completion notices of the queue arrived (any job's).
fn await_notices(queue: &RedisQueue, n: usize) {
    let rt = runtime();
    let give_up = Instant::now() + BOUND;
    let mut cursor = "0-0".to_owned();
    let mut seen = 0;
    while seen < n {
        assert!(
            Instant::now() < give_up,
            "only {seen} of {n} notices arrived"
        );
        if let Ok((next, notices)) = rt.block_on(
            queue
                .results()
                .completions(&cursor, Duration::from_millis(500)),
        ) {
            cursor = next;
            seen += notices.len();
        }
    }
}

/// Redis restarts without persistence while a batch is in flight (the issue's
/// scenario, scaled down): the submitter finds its jobs gone, stores the module and
/// the blob inputs again, enqueues the jobs again, and ends with every result.
#[test]
fn batch_survives_a_redis_restart_without_persistence() {
    let mut server = RedisServer::start();
    let _worker = WorkerProcess::start(&server.url(), "restart", "w0", &["--concurrency", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let (inputs, expected) = write_inputs(dir.path(), 3_000, 2);
    let out = dir.path().join("out");
    let batch = Batch::start(
        &server.url(),
        "restart",
        &guest("count_raw.wat"),
        &inputs,
        &out,
    );
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "restart"));
    await_notices(&queue, 100);
    server.kill();
    server.start_again();
    drop(queue);

    let (status, stderr) = batch.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("lost by Redis, enqueueing them again"),
        "{stderr}"
    );
    assert!(
        stderr.contains("was lost by Redis: stored it again"),
        "{stderr}"
    );
    assert_every_result(&out, &expected);
}

/// `FLUSHALL` mid-batch: the worker recreates its consumer group by itself, and the
/// batch ends with every result.
#[test]
fn batch_survives_flushall() {
    let server = RedisServer::start();
    let _worker = WorkerProcess::start(&server.url(), "flush", "w0", &["--concurrency", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let (inputs, expected) = write_inputs(dir.path(), 3_000, 0);
    let out = dir.path().join("out");
    let batch = Batch::start(
        &server.url(),
        "flush",
        &guest("count_raw.wat"),
        &inputs,
        &out,
    );
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "flush"));
    await_notices(&queue, 100);
    assert_eq!(server.cli(&["FLUSHALL"]).trim(), "OK");

    let (status, stderr) = batch.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("lost by Redis, enqueueing them again"),
        "{stderr}"
    );
    assert_every_result(&out, &expected);
}

/// Entries missing from the stream (a write Redis acknowledged, then lost with the
/// last second of an `everysec` AOF or in a failover): the stalled batch says what it
/// waits for, then finds them gone and enqueues them again under the same ids.
#[test]
fn jobs_deleted_from_the_stream_are_enqueued_again() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (inputs, expected) = write_inputs(dir.path(), 40, 1);
    let out = dir.path().join("out");
    let mut batch = Batch::start(
        &server.url(),
        "gone",
        &guest("count_raw.wat"),
        &inputs,
        &out,
    );
    // No worker yet: the batch stalls and says why.
    let waiting = batch.wait_for_line("waiting line", |l| l.contains("waiting for 41 jobs"));
    assert!(waiting.contains("41 queued"), "{waiting}");
    assert!(
        waiting.contains("0 workers active on queue gone"),
        "{waiting}"
    );
    assert!(
        waiting.contains("sluice-worker serve --queue gone"),
        "{waiting}"
    );

    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "gone"));
    let first = rt.block_on(entry_ids(&queue, 15));
    assert_eq!(first.len(), 15);
    assert_eq!(rt.block_on(xdel(&queue, &first)), 15);

    let _worker = WorkerProcess::start(&server.url(), "gone", "w0", &[]);
    batch.wait_for_line("re-enqueue", |l| {
        l.contains("15 lost by Redis, enqueueing them again")
    });
    let (status, stderr) = batch.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("15 jobs lost by Redis were enqueued again"),
        "{stderr}"
    );
    assert_every_result(&out, &expected);
}

/// A string where the completion-notice stream belongs once hung every batch; now the
/// batch names the key and completes by looking results up directly.
#[test]
fn a_wrong_typed_notice_key_is_named_and_the_batch_completes() {
    let server = RedisServer::start();
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "foreign"));
    let done = queue.keys().done.clone();
    assert_eq!(server.cli(&["SET", &done, "not a stream"]).trim(), "OK");
    let _worker = WorkerProcess::start(&server.url(), "foreign", "w0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let (inputs, expected) = write_inputs(dir.path(), 20, 0);
    let out = dir.path().join("out");
    let batch = Batch::start(
        &server.url(),
        "foreign",
        &guest("count_raw.wat"),
        &inputs,
        &out,
    );
    let (status, stderr) = batch.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("key {done} holds a string, not a stream")),
        "{stderr}"
    );
    assert_every_result(&out, &expected);
}

/// An input that cannot be read again when its job is lost: the batch lists it and
/// fails instead of waiting for it forever.
#[test]
fn a_lost_job_whose_input_is_gone_is_listed_and_fails_the_batch() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (inputs, _) = write_inputs(dir.path(), 3, 0);
    let out = dir.path().join("out");
    let mut batch = Batch::start(
        &server.url(),
        "unreadable",
        &guest("count_raw.wat"),
        &inputs,
        &out,
    );
    batch.wait_for_line("waiting line", |l| l.contains("waiting for 3 jobs"));
    std::fs::remove_file(inputs.join("00001")).unwrap();
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "unreadable"));
    assert_eq!(server.cli(&["DEL", &queue.keys().jobs]).trim(), "1");
    let _worker = WorkerProcess::start(&server.url(), "unreadable", "w0", &[]);

    let (status, stderr) = batch.finish();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("lost 00001: Redis lost the job"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 job was lost by Redis and its input cannot be read again: 00001"),
        "{stderr}"
    );
    let report = std::fs::read_to_string(out.join("report.jsonl")).unwrap();
    assert_eq!(
        report.lines().count(),
        2,
        "the two readable inputs ran: {report}"
    );
}

/// The ids of the first `n` entries of the job stream.
async fn entry_ids(queue: &RedisQueue, n: usize) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&queue.keys().jobs)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(n)
        .query_async(&mut queue.connection())
        .await
        .unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

/// Deletes entries from the job stream, as a lost write would leave it.
async fn xdel(queue: &RedisQueue, ids: &[String]) -> u64 {
    redis::cmd("XDEL")
        .arg(&queue.keys().jobs)
        .arg(ids)
        .query_async(&mut queue.connection())
        .await
        .unwrap()
}

fn noop_module() -> Vec<u8> {
    br#"(module (memory (export "memory") 1) (func (export "_start")))"#.to_vec()
}

fn new_jobs(module: ModuleHash, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
        .collect()
}

/// `locate` tells every place apart: queued, running, delayed, finished, vanished.
#[test]
fn locate_finds_each_job_where_it_is() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let queue = connect(&server.url(), "locate").await;
        let module = ModuleHash::of(&noop_module());
        let jobs = new_jobs(module, 10);
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        queue.enqueue(&jobs).await.unwrap();
        // Three claimed: one stays running, one is retried (delayed), one completes.
        let claimed = queue
            .claim("w", 3, Duration::from_secs(60), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);
        let job_of = |i: usize| claimed[i].delivery.as_ref().unwrap().clone();
        queue
            .retry(&claimed[1].lease, &job_of(1), Duration::from_secs(3600))
            .await
            .unwrap();
        let result = JobResult::without_run(job_of(2).id, Outcome::Success, 1);
        queue.complete(&claimed[2].lease, result).await.unwrap();
        // Two vanish from the stream, as if Redis lost their writes.
        let queued_entries: Vec<String> = entry_ids(&queue, 100)
            .await
            .into_iter()
            .filter(|e| !claimed.iter().any(|c| c.lease.entry_id == *e))
            .take(2)
            .collect();
        assert_eq!(queued_entries.len(), 2);
        assert_eq!(xdel(&queue, &queued_entries).await, 2);

        let wanted: HashSet<JobId> = ids.iter().copied().collect();
        let at = queue
            .recovery()
            .locate(&wanted, Some("nobody"))
            .await
            .unwrap();
        assert_eq!(
            (
                at.queued,
                at.running,
                at.delayed,
                at.finished.len(),
                at.vanished.len()
            ),
            (5, 1, 1, 1, 2),
            "{at:?}"
        );
        assert_eq!(at.finished, vec![job_of(2).id]);
        assert!(!at.vanished.contains(&job_of(0).id));
        assert_eq!(
            queue
                .admin()
                .live_workers(Duration::from_secs(60))
                .await
                .unwrap(),
            1
        );
        assert!(!queue.modules().is_stored(&module).await.unwrap());

        // A foreign key where the stream belongs is named, not misread.
        assert_eq!(server.cli(&["DEL", &queue.keys().jobs]).trim(), "1");
        assert_eq!(server.cli(&["SET", &queue.keys().jobs, "x"]).trim(), "OK");
        let error = queue
            .recovery()
            .locate(&wanted, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(&queue.keys().jobs), "{error}");
        assert!(error.contains("holds a string, not a stream"), "{error}");
    });
}
