//! Sending the bench's jobs and following their completion notices: the throughput run
//! (everything enqueued at once, as a batch submitter does) and the latency run (jobs
//! sent at an offered rate while another task follows the notices, so an arrival is
//! timed when it happens, not when the sender next looks).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobId, OutcomeKind, Queue};

/// Jobs enqueued per `enqueue` call in the throughput run.
const ENQUEUE_CHUNK: usize = 5_000;

/// One run's jobs: when each was sent (and its input variant), and when its completion
/// notice arrived (and how it ended).
#[derive(Debug, Default)]
pub struct Run {
    /// Sent jobs: time, input variant.
    pub sent: HashMap<JobId, (Instant, usize)>,
    /// Finished jobs: notice arrival, outcome kind.
    pub done: HashMap<JobId, (Instant, OutcomeKind)>,
}

impl Run {
    /// Send-to-notice latencies of the finished jobs, sorted.
    pub fn latencies(&self) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .done
            .iter()
            .filter_map(|(id, (at, _))| Some(at.saturating_duration_since(self.sent.get(id)?.0)))
            .collect();
        out.sort();
        out
    }

    /// Each finished job's outcome kind and input variant, for checking.
    pub fn finished(&self) -> HashMap<JobId, (OutcomeKind, usize)> {
        self.done
            .iter()
            .filter_map(|(id, (_, kind))| Some((*id, (*kind, self.sent.get(id)?.1))))
            .collect()
    }
}

/// Enqueues `jobs` in chunks, then follows notices (from stream id `from`) until every
/// one has finished or `deadline` has passed. Returns the run and the enqueue time.
pub async fn throughput(
    queue: &RedisQueue,
    from: String,
    jobs: Vec<(Job, usize)>,
    deadline: Duration,
) -> anyhow::Result<(Run, Duration)> {
    let started = Instant::now();
    let mut run = Run {
        sent: HashMap::with_capacity(jobs.len()),
        done: HashMap::with_capacity(jobs.len()),
    };
    for chunk in jobs.chunks(ENQUEUE_CHUNK) {
        let batch: Vec<Job> = chunk.iter().map(|(job, _)| job.clone()).collect();
        queue.enqueue(&batch).await?;
        let now = Instant::now();
        run.sent
            .extend(chunk.iter().map(|(job, variant)| (job.id, (now, *variant))));
    }
    let enqueued = started.elapsed();
    let mut last = from;
    while run.done.len() < run.sent.len() {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "only {} of {} jobs finished in {deadline:?}",
            run.done.len(),
            run.sent.len()
        );
        let sent = &run.sent;
        last = receive(
            queue,
            last,
            Duration::from_millis(500),
            |id| sent.contains_key(id),
            &mut run.done,
        )
        .await?;
    }
    Ok((run, enqueued))
}

/// Sends `jobs` one at a time at `rate` jobs/s while following notices (from `from`);
/// stops following when all have finished or two minutes past the last send.
pub async fn at_rate(
    queue: &RedisQueue,
    from: String,
    jobs: Vec<(Job, usize)>,
    rate: u32,
) -> anyhow::Result<Run> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let sent: parking_lot::Mutex<HashMap<JobId, (Instant, usize)>> =
        parking_lot::Mutex::new(HashMap::with_capacity(jobs.len()));
    let total = jobs.len();
    let sender = async {
        let mut ticker = tokio::time::interval(interval);
        for (job, variant) in &jobs {
            ticker.tick().await;
            sent.lock().insert(job.id, (Instant::now(), *variant));
            queue.enqueue(std::slice::from_ref(job)).await?;
        }
        anyhow::Ok(())
    };
    let follower = async {
        let mut run = Run::default();
        let mut last = from;
        let deadline = Instant::now() + Duration::from_secs(120) + interval * total as u32;
        while run.done.len() < total && Instant::now() < deadline {
            // A job is in `sent` before it is enqueued, so before its notice.
            last = receive(
                queue,
                last,
                Duration::from_millis(100),
                |id| sent.lock().contains_key(id),
                &mut run.done,
            )
            .await?;
        }
        anyhow::Ok(run)
    };
    let ((), mut run) = tokio::try_join!(sender, follower)?;
    run.sent = sent.into_inner();
    Ok(run)
}

/// Reads the notices after `last` (waiting up to `block`) into `done`, those of jobs
/// `ours` accepts. Returns the new cursor.
async fn receive(
    queue: &RedisQueue,
    last: String,
    block: Duration,
    ours: impl Fn(&JobId) -> bool,
    done: &mut HashMap<JobId, (Instant, OutcomeKind)>,
) -> anyhow::Result<String> {
    let (next, notices) = queue.results().completions(&last, block).await?;
    let now = Instant::now();
    for (id, kind) in notices {
        if ours(&id) {
            done.entry(id).or_insert((now, kind));
        }
    }
    Ok(next)
}
