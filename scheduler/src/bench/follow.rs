//! Sending the bench's jobs and following their completion notices: the throughput run
//! (everything enqueued at once, as a batch submitter does) and the latency run (jobs
//! sent at an offered rate while another task follows the notices, so an arrival is
//! timed when it happens, not when the sender next looks).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobId, OutcomeKind, Queue};

/// Jobs enqueued per `enqueue` call in the throughput run, at most.
const ENQUEUE_CHUNK: usize = 5_000;

/// Input bytes per `enqueue` call in the throughput run, at most (fewer jobs per call
/// when inputs are large), so the bench holds one such chunk at a time.
const ENQUEUE_CHUNK_BYTES: usize = 64 << 20;

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

    /// When the first of the finished jobs' notices arrived (`None`: none finished).
    pub fn first_done(&self) -> Option<Instant> {
        self.done.values().map(|(at, _)| *at).min()
    }

    /// When the last of the finished jobs' notices arrived (`None`: none finished).
    pub fn last_done(&self) -> Option<Instant> {
        self.done.values().map(|(at, _)| *at).max()
    }

    /// Each finished job's outcome kind and input variant, for checking.
    pub fn finished(&self) -> HashMap<JobId, (OutcomeKind, usize)> {
        self.done
            .iter()
            .filter_map(|(id, (_, kind))| Some((*id, (*kind, self.sent.get(id)?.1))))
            .collect()
    }
}

/// Enqueues `count` jobs (job `n` made by `job(n)`, a chunk at a time, so no more than
/// a chunk of inputs is held), then follows notices (from stream id `from`) until every
/// one has finished or `deadline` has passed. Returns the run and the enqueue time.
pub async fn throughput(
    queue: &RedisQueue,
    from: String,
    count: usize,
    job: &impl Fn(usize) -> (Job, usize),
    deadline: Duration,
) -> anyhow::Result<(Run, Duration)> {
    let started = Instant::now();
    let mut run = enqueue(queue, count, job).await?;
    let enqueued = started.elapsed();
    follow(queue, from, &mut run, started, deadline).await?;
    Ok((run, enqueued))
}

/// Enqueues `count` jobs (job `n` made by `job(n)`) a chunk at a time (at most
/// `ENQUEUE_CHUNK` jobs or `ENQUEUE_CHUNK_BYTES` of input per call, so no more than a
/// chunk of inputs is held). Returns the run with every job sent and none finished.
pub async fn enqueue(
    queue: &RedisQueue,
    count: usize,
    job: &impl Fn(usize) -> (Job, usize),
) -> anyhow::Result<Run> {
    let mut run = Run {
        sent: HashMap::with_capacity(count),
        done: HashMap::with_capacity(count),
    };
    let mut next = 0;
    while next < count {
        let end = count.min(next + ENQUEUE_CHUNK);
        let mut batch = Vec::with_capacity(end - next);
        let mut variants = Vec::with_capacity(end - next);
        let mut bytes = 0;
        while next < end && (batch.is_empty() || bytes < ENQUEUE_CHUNK_BYTES) {
            let (j, variant) = job(next);
            bytes += j.input.len() as usize;
            batch.push(j);
            variants.push(variant);
            next += 1;
        }
        queue.enqueue(&batch).await?;
        let now = Instant::now();
        run.sent.extend(
            batch
                .iter()
                .zip(variants)
                .map(|(j, variant)| (j.id, (now, variant))),
        );
    }
    Ok(run)
}

/// Follows notices (from stream id `from`) until every job `run` sent has finished,
/// or fails once `deadline` has passed since `started`.
pub async fn follow(
    queue: &RedisQueue,
    from: String,
    run: &mut Run,
    started: Instant,
    deadline: Duration,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Where a latency-run job's time went, as the bench sees it: from its scheduled send
/// to the moment the send began, the `XADD`'s round trip, and from the `XADD`'s reply
/// to the completion notice's arrival (the worker's claim, run and `complete.lua`, and
/// the notice's way back).
#[derive(Clone, Copy, Debug)]
pub struct Stages {
    /// Scheduled send time.
    pub due: Instant,
    /// When the `XADD` was sent.
    pub sent: Instant,
    /// When its reply arrived.
    pub acked: Instant,
}

/// Sends `count` jobs (job `n` made by `job(n)`) one at a time at `rate` jobs/s while
/// following notices (from `from`); stops following when all have finished or two
/// minutes past the last send. Job `i` is timed from its scheduled send time (start +
/// i × interval), not from when it was sent, so a sender held up by a slow enqueue
/// does not hide the delay (coordinated omission).
///
/// The pacing is a thread of its own that sleeps until each due time with the
/// operating system's timer (`nanosleep`, tens of microseconds late) and hands the job's
/// index to the sending task over a channel; the sender used to sleep on tokio's timer,
/// a 1 ms wheel that rounds every sleep up to the next millisecond tick, which made the
/// sender itself up to a millisecond late on every job: a delay of the bench, not of the
/// queue. Sending and following stay futures of the calling task, so dropping it (a
/// signal) stops the run at once; the pacing thread ends at its next tick. Each job's
/// stages are returned beside the run.
pub async fn at_rate(
    queue: &RedisQueue,
    from: String,
    count: usize,
    job: &impl Fn(usize) -> (Job, usize),
    rate: u32,
) -> anyhow::Result<(Run, HashMap<JobId, Stages>)> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let sent: parking_lot::Mutex<HashMap<JobId, (Instant, usize)>> =
        parking_lot::Mutex::new(HashMap::with_capacity(count));
    let mut stages: HashMap<JobId, Stages> = HashMap::with_capacity(count);
    let total = count;
    let (ticks, mut due_jobs) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            let start = Instant::now();
            for i in 0..count {
                let due = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if ticks.send((i, due)).is_err() {
                    return;
                }
            }
        })?;
    let sender = async {
        while let Some((i, due)) = due_jobs.recv().await {
            let (job, variant) = job(i);
            sent.lock().insert(job.id, (due, variant));
            let at = Instant::now();
            queue.enqueue(std::slice::from_ref(&job)).await?;
            let acked = Instant::now();
            stages.insert(
                job.id,
                Stages {
                    due,
                    sent: at,
                    acked,
                },
            );
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
    Ok((run, stages))
}

/// The percentiles of each stage of the latency run's finished jobs: sender lateness
/// (send − due; it includes waiting behind the previous job's `XADD`, since one task
/// sends them in turn), the `XADD` round trip, and `XADD` reply → notice read. A job
/// without stages is skipped. The notice and the `XADD` reply come on different
/// connections polled by one task, so a notice can be read before the reply is: the
/// reply is then taken as arriving with the notice (the `XADD` stage ends there and the
/// last is 0), so a job's three stages always add up to its latency (notice − due).
pub fn stage_latencies(run: &Run, stages: &HashMap<JobId, Stages>) -> [Vec<Duration>; 3] {
    let mut out: [Vec<Duration>; 3] = Default::default();
    for (id, (noticed, _)) in &run.done {
        let Some(s) = stages.get(id) else { continue };
        let sent = s.sent.min(*noticed);
        let acked = s.acked.min(*noticed).max(sent);
        out[0].push(sent.saturating_duration_since(s.due));
        out[1].push(acked.saturating_duration_since(sent));
        out[2].push(noticed.saturating_duration_since(acked));
    }
    for v in &mut out {
        v.sort();
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::{JobInput, ModuleHash};

    fn id() -> JobId {
        Job::new(ModuleHash::of(b"m"), JobInput::Inline(Vec::new())).id
    }

    #[test]
    fn each_stage_is_its_own_interval_and_they_add_up_to_the_latency() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (a, b, c) = (id(), id(), id());
        let mut run = Run::default();
        let mut stages = HashMap::new();
        // a: due 0, sent 1, acked 3, noticed 10.
        run.sent.insert(a, (ms(0), 0));
        stages.insert(
            a,
            Stages {
                due: ms(0),
                sent: ms(1),
                acked: ms(3),
            },
        );
        run.done.insert(a, (ms(10), OutcomeKind::Success));
        // b: its notice was read before its XADD reply (acked 8 > noticed 6).
        run.sent.insert(b, (ms(2), 0));
        stages.insert(
            b,
            Stages {
                due: ms(2),
                sent: ms(4),
                acked: ms(8),
            },
        );
        run.done.insert(b, (ms(6), OutcomeKind::Success));
        // c: finished but without stages: skipped by the split, kept in the latencies.
        run.sent.insert(c, (ms(0), 0));
        run.done.insert(c, (ms(5), OutcomeKind::Success));
        let [late, xadd, rest] = stage_latencies(&run, &stages);
        let d = Duration::from_millis;
        assert_eq!(late, vec![d(1), d(2)]);
        assert_eq!(xadd, vec![d(2), d(2)]);
        assert_eq!(rest, vec![d(0), d(7)]);
        // a: 1 + 2 + 7 = 10 ms and b: 2 + 2 + 0 = 4 ms, each its latency below.
        assert_eq!(run.latencies(), vec![d(4), d(5), d(10)]);
    }
}
