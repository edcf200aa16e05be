//! The scaling proof: a real redis-server and real `sluice-worker serve` processes,
//! added and removed while a batch runs. Workers added mid-batch take jobs at once;
//! workers stopped by SIGTERM mid-run lose nothing and run nothing twice; a queue
//! scaled to zero shows its backlog in the figures KEDA's redis-streams scaler reads
//! (`XINFO GROUPS` lag, `XPENDING` count), and a worker started later finishes it.
//! "Mid-batch" is decided by events (completion notices), never by sleeping.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_shared::{EntryPoint, Job, JobId, JobInput, JobOutput, ModuleHash, OutcomeKind, Queue};
use sluice_tests::scaling::{
    ExportedFigures, Exporter, GROUP, MeteredWorker, group_figures, stream,
};
use sluice_tests::wasm_gen::SPIN_UPPER_WAT;
use sluice_tests::{Fleet, RedisServer, wait};

/// How long a test waits for its jobs (or a worker's first job) to finish.
const WITHIN: Duration = Duration::from_secs(300);

/// A batch: its jobs and the output each one must produce.
struct Batch {
    jobs: Vec<Job>,
    expected: HashMap<JobId, Vec<u8>>,
}

impl Batch {
    /// `n` jobs of `module`, job `i` reading `job number i`.
    fn new(module: ModuleHash, n: usize) -> Self {
        let mut jobs = Vec::new();
        let mut expected = HashMap::new();
        for i in 0..n {
            let mut job = Job::new(module, JobInput::Inline(format!("job number {i}").into()));
            job.entry = EntryPoint::Raw {
                export: EntryPoint::RAW_EXPORT.to_owned(),
            };
            expected.insert(job.id, format!("JOB NUMBER {i}").into_bytes());
            jobs.push(job);
        }
        Batch { jobs, expected }
    }

    fn ids(&self) -> HashSet<JobId> {
        self.jobs.iter().map(|j| j.id).collect()
    }

    /// Enqueues it on `fleet`'s queue; returns the completion-notice cursor from
    /// just before.
    fn enqueue(&self, fleet: &Fleet) -> String {
        fleet.rt.block_on(async {
            let from = fleet.queue.results().notices_from_now().await.unwrap();
            fleet.queue.enqueue(&self.jobs).await.unwrap();
            from
        })
    }

    /// Waits until every job finished, then checks the exact result set: every job
    /// once, every one a success with its own output. Returns each job's attempt.
    fn await_exact(&self, fleet: &Fleet, from: String) -> HashMap<JobId, u32> {
        let ids = self.ids();
        let finished = fleet
            .rt
            .block_on(wait::await_finished(&fleet.queue, from, &ids, WITHIN));
        assert_eq!(finished.len(), self.jobs.len());
        let failed: Vec<_> = finished
            .iter()
            .filter(|(_, k)| **k != OutcomeKind::Success)
            .collect();
        assert!(failed.is_empty(), "jobs that did not succeed: {failed:?}");
        let results = fleet.rt.block_on(wait::results(&fleet.queue, &ids));
        let mut attempts = HashMap::new();
        for result in results {
            let want = &self.expected[&result.job_id];
            assert_eq!(
                result.output,
                JobOutput::Inline(want.clone()),
                "output of {}",
                result.job_id
            );
            assert!(
                attempts.insert(result.job_id, result.attempt).is_none(),
                "{} has two results",
                result.job_id
            );
        }
        assert_eq!(attempts.len(), self.jobs.len());
        attempts
    }
}

/// Two figures read together, printable for a wait's failure message.
struct Reading(u64, u64);

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.0, self.1)
    }
}

/// Counter `field` of queue `queue`'s stats hash (0 when never counted).
fn counter(server: &RedisServer, queue: &str, field: &str) -> u64 {
    let value = server.cli(&["HGET", &format!("sluice:{{{queue}}}:stats"), field]);
    let value = value.trim();
    if value.is_empty() {
        0
    } else {
        value.parse().expect("a counter")
    }
}

/// How many entries consumer `consumer` holds (leased, not acknowledged).
fn held_by(server: &RedisServer, queue: &str, consumer: &str) -> usize {
    server
        .cli(&[
            "XPENDING",
            &stream(queue),
            GROUP,
            "-",
            "+",
            "10000",
            consumer,
        ])
        .lines()
        .filter(|l| l.contains('-'))
        .count()
}

/// The stream's length: entries not yet completed (delivered or not).
fn stream_len(server: &RedisServer, queue: &str) -> u64 {
    server
        .cli(&["XLEN", &stream(queue)])
        .trim()
        .parse()
        .expect("XLEN")
}

#[test]
fn workers_added_mid_batch_take_jobs_at_once_and_the_batch_completes_exactly() {
    const N: usize = 400;
    let fleet = Fleet::start("grow");
    let module = fleet.put_module(SPIN_UPPER_WAT.as_bytes());
    let flags = ["--concurrency", "1", "--lease", "60s"];
    let first = MeteredWorker::start(&fleet, "w0", &flags);
    let batch = Batch::new(module, N);
    let from = batch.enqueue(&fleet);

    // Mid-batch: the first worker has finished some jobs, most are still queued.
    fleet
        .rt
        .block_on(wait::await_notices(&fleet.queue, from.clone(), 20, WITHIN));
    let done_before = counter(&fleet.redis, "grow", "completed");
    assert!(
        done_before < N as u64 / 2,
        "the batch is not long enough to scale into: {done_before} of {N} done"
    );
    let added = [
        MeteredWorker::start(&fleet, "w1", &flags),
        MeteredWorker::start(&fleet, "w2", &flags),
    ];
    // Each added worker completes a job while the batch still runs (the wait ends
    // early, and the test fails, if the batch ends first).
    for worker in &added {
        let consumer = &worker.process.consumer;
        let Reading(first_jobs, completed) = wait::poll(
            &format!("{consumer} completes its first job"),
            WITHIN,
            || {
                Reading(
                    worker.finished("success"),
                    counter(&fleet.redis, "grow", "completed"),
                )
            },
            |Reading(ran, completed)| *ran >= 1 || *completed == N as u64,
        );
        assert!(
            first_jobs >= 1 && completed < N as u64,
            "{consumer} ran {first_jobs} jobs by the time {completed} of {N} were done"
        );
    }

    let attempts = batch.await_exact(&fleet, from);
    assert!(attempts.values().all(|a| *a == 1), "a job ran twice");
    // The per-worker records add up to the batch: every job ran on exactly one worker,
    // and every worker ran some.
    let per_worker: Vec<(String, u64)> = std::iter::once(&first)
        .chain(&added)
        .map(|w| (w.process.consumer.clone(), w.finished("success")))
        .collect();
    eprintln!("jobs per worker: {per_worker:?} ({done_before} done before scaling)");
    assert!(per_worker.iter().all(|(_, n)| *n >= 1), "{per_worker:?}");
    assert_eq!(
        per_worker.iter().map(|(_, n)| n).sum::<u64>(),
        N as u64,
        "{per_worker:?}"
    );
    assert_eq!(counter(&fleet.redis, "grow", "completed"), N as u64);
    assert_eq!(counter(&fleet.redis, "grow", "duplicates"), 0);
    let figures = group_figures(&fleet.redis, "grow");
    assert_eq!(
        (figures.lag, figures.pending, figures.xpending),
        (Some(0), 0, 0)
    );
}

#[test]
fn sigterm_mid_run_loses_nothing_and_runs_nothing_twice() {
    const N: usize = 300;
    let fleet = Fleet::start("shrink");
    let module = fleet.put_module(SPIN_UPPER_WAT.as_bytes());
    // Leases far longer than a run: nobody's lease expires, so nothing may run twice.
    let flags = ["--concurrency", "3", "--lease", "60s"];
    let mut victims = vec![
        MeteredWorker::start(&fleet, "v0", &flags),
        MeteredWorker::start(&fleet, "v1", &flags),
    ];
    let survivor = MeteredWorker::start(&fleet, "s0", &flags);
    let batch = Batch::new(module, N);
    let from = batch.enqueue(&fleet);

    fleet
        .rt
        .block_on(wait::await_notices(&fleet.queue, from.clone(), 30, WITHIN));
    // Stop two of the three while each holds jobs (several slots mid-run).
    for victim in &victims {
        let consumer = &victim.process.consumer;
        let Reading(held, completed) = wait::poll(
            &format!("{consumer} holds jobs"),
            WITHIN,
            || {
                Reading(
                    held_by(&fleet.redis, "shrink", consumer) as u64,
                    counter(&fleet.redis, "shrink", "completed"),
                )
            },
            |Reading(held, completed)| *held >= 1 || *completed == N as u64,
        );
        assert!(
            held >= 1,
            "{consumer} held nothing; {completed} of {N} done"
        );
        victim.process.terminate();
        eprintln!("{consumer} held {held} jobs when sent SIGTERM");
    }
    for victim in &mut victims {
        assert!(victim.process.wait().success(), "a draining worker exits 0");
        assert_eq!(
            held_by(&fleet.redis, "shrink", &victim.process.consumer),
            0,
            "a drained worker holds no leases"
        );
    }
    let completed_at_scale_down = counter(&fleet.redis, "shrink", "completed");
    assert!(
        completed_at_scale_down < N as u64,
        "the batch ended before the scale-down"
    );

    let attempts = batch.await_exact(&fleet, from);
    let twice: Vec<_> = attempts.iter().filter(|(_, a)| **a > 1).collect();
    assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
    assert_eq!(counter(&fleet.redis, "shrink", "completed"), N as u64);
    assert_eq!(counter(&fleet.redis, "shrink", "duplicates"), 0);
    assert_eq!(counter(&fleet.redis, "shrink", "stale"), 0);
    assert_eq!(counter(&fleet.redis, "shrink", "retried"), 0);
    assert!(survivor.finished("success") >= 1);
    // Nothing of the victims' was taken over: the survivor reclaimed no expired lease.
    if let Some(takeovers) =
        sluice_tests::scaling::metric(&survivor.metrics, "sluice_lease_takeovers_total")
    {
        assert_eq!(takeovers, 0.0, "the survivor took over leases");
    }
    let figures = group_figures(&fleet.redis, "shrink");
    assert_eq!(
        (figures.lag, figures.pending, figures.xpending),
        (Some(0), 0, 0)
    );
}

#[test]
fn scaled_to_zero_the_backlog_shows_and_a_later_worker_finishes_it() {
    const N: usize = 200;
    let fleet = Fleet::start("zero");
    let module = fleet.put_module(SPIN_UPPER_WAT.as_bytes());
    let flags = ["--concurrency", "2", "--lease", "60s"];
    let mut fleet_workers = vec![
        MeteredWorker::start(&fleet, "a0", &flags),
        MeteredWorker::start(&fleet, "a1", &flags),
    ];
    let exporter = Exporter::start(&fleet.url(), "zero");
    let batch = Batch::new(module, N);
    let from = batch.enqueue(&fleet);

    // Figures while the batch runs: entries wait (lag) and are leased (pending). Redis
    // reports the lag as nil (unknown) while the last entry delivered has already been
    // deleted (completed), which happens mid-batch. With workers running no two reads
    // are one instant, so the exporter's first reading (its first scrape reads Redis
    // then) is bracketed: the undelivered count only falls while nothing is enqueued
    // or released. Pending is compared exactly where the fleet stands still.
    fleet
        .rt
        .block_on(wait::await_notices(&fleet.queue, from.clone(), 10, WITHIN));
    let before = group_figures(&fleet.redis, "zero");
    let during = exporter.figures("zero");
    let after = group_figures(&fleet.redis, "zero");
    eprintln!("mid-batch: Redis {before} / exporter {during} / Redis {after}");
    assert!(before.lag.is_none_or(|lag| lag > 0), "{before}");
    if let Some(upper) = before.lag {
        assert!(
            during.lag <= upper,
            "exporter {during} above Redis {before}"
        );
    }
    if let Some(lower) = after.lag {
        assert!(during.lag >= lower, "exporter {during} below Redis {after}");
    }
    assert!(
        during.pending <= 4,
        "exporter {during}: more leases than slots"
    );

    // Scale to zero.
    for worker in &fleet_workers {
        worker.process.terminate();
    }
    for worker in &mut fleet_workers {
        assert!(worker.process.wait().success());
    }
    let completed = counter(&fleet.redis, "zero", "completed");
    let backlog = N as u64 - completed;
    assert!(backlog > 0, "the batch ended before the scale to zero");
    let idle = group_figures(&fleet.redis, "zero");
    eprintln!("scaled to zero with {completed} of {N} done: {idle}");
    assert_eq!(
        (idle.lag, idle.pending, idle.xpending),
        (Some(backlog), 0, 0),
        "the backlog is all lag, none of it leased"
    );
    assert_eq!(stream_len(&fleet.redis, "zero"), backlog);
    let stats = fleet.rt.block_on(fleet.queue.stats()).unwrap();
    assert_eq!((stats.ready, stats.leased), (backlog, 0));
    // The exporter reports the same figures (it may serve a reading up to its cache's
    // age old, so it is read until it catches up; a wrong figure fails the wait).
    let want = ExportedFigures {
        lag: backlog,
        pending: 0,
    };
    wait::poll(
        "the exporter reports the idle backlog",
        Duration::from_secs(30),
        || exporter.figures("zero"),
        |got| *got == want,
    );

    // Back from zero: one new worker finishes the backlog exactly.
    let later = MeteredWorker::start(&fleet, "b0", &flags);
    let attempts = batch.await_exact(&fleet, from);
    assert!(attempts.values().all(|a| *a == 1), "a job ran twice");
    assert_eq!(later.finished("success"), backlog);
    assert_eq!(counter(&fleet.redis, "zero", "completed"), N as u64);
    assert_eq!(counter(&fleet.redis, "zero", "duplicates"), 0);
    let after = group_figures(&fleet.redis, "zero");
    assert_eq!((after.lag, after.pending, after.xpending), (Some(0), 0, 0));
    wait::poll(
        "the exporter reports the finished batch",
        Duration::from_secs(30),
        || exporter.figures("zero"),
        |got| *got == ExportedFigures { lag: 0, pending: 0 },
    );
}
