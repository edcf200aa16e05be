//! `sluice wait ID…`, and the waiting behind `sluice result --wait`: follow the
//! completion notices workers write (`queue.results().completions`, the stream a
//! distributed batch follows) until each job has a result, or the wait runs out.
//!
//! Notices only wake a waiter early: a job whose notice was lost (Redis restarted, a
//! foreign key in the notice stream's place) is still seen, by looking its result up
//! every [`RECHECK`]; the same look-up notices a job cancelled meanwhile (a cancel
//! writes no notice).

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use sluice_shared::queue::redis::{JobState, RedisQueue};
use sluice_shared::units::parse_duration;
use sluice_shared::{JobId, JobResult, Queue, ReportLine};

use super::RedisArgs;
use super::job_state::{self, EXIT_FAILED, describe};

/// How long one blocking read of the notices lasts before the waiter looks the
/// outstanding results up itself.
pub const RECHECK: Duration = Duration::from_secs(30);

/// How long `--wait` without a value, and `sluice wait` without `--timeout`, wait.
pub const DEFAULT_WAIT: &str = "10m";

/// What became of one job by the end of a wait.
pub enum Settled {
    /// It finished: its result.
    Finished(Box<JobResult>),
    /// It has no result (yet): where it is.
    Unfinished(JobState),
}

/// `sluice wait` flags.
#[derive(Args, Debug)]
#[command(after_help = job_state::EXIT_HELP)]
pub struct WaitArgs {
    /// The job ids.
    #[arg(required = true, num_args = 1..=10_000)]
    pub ids: Vec<JobId>,
    /// The longest wait.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = DEFAULT_WAIT)]
    pub timeout: Duration,
    /// Print a JSON document for every job (report lines for finished ones), one per line.
    #[arg(long)]
    pub json: bool,
    /// Where the queue is.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Waits for every job; prints each finished job's report line as it finishes (and
/// what became of the others at the end); exits with the highest status of any job.
pub async fn run(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let queue = args.redis.connect().await?;
    let mut worst = 0u8;
    settle(&queue, &args.ids, Some(args.timeout), |id, settled| {
        let code = report(&queue, id, &settled, args.json, true)?;
        worst = worst.max(code);
        Ok(())
    })
    .await?;
    Ok(ExitCode::from(worst))
}

/// Prints one job's fate: a finished job's report line on stdout; an unfinished job's
/// state on stderr (on stdout as JSON with `json`). Returns its exit status.
pub fn report(
    queue: &RedisQueue,
    id: JobId,
    settled: &Settled,
    json: bool,
    waited: bool,
) -> anyhow::Result<u8> {
    match settled {
        Settled::Finished(result) => {
            println!("{}", serde_json::to_string(&ReportLine::new("", result))?);
            Ok(if result.outcome.is_success() {
                0
            } else {
                EXIT_FAILED
            })
        }
        Settled::Unfinished(state) => {
            let described = describe(id, state, &queue.config().queue, now_ms(), waited);
            if json {
                println!("{}", described.json);
            } else {
                eprintln!("sluice: {}", described.message);
            }
            Ok(described.code)
        }
    }
}

/// Milliseconds since the Unix epoch on this host.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Settles each of `ids`: at once when `wait` is `None` (its state now), else as soon
/// as it finishes, is cancelled or turns out unknown, or with its state when `wait`
/// runs out. Calls `done` once per job, as each settles.
pub async fn settle(
    queue: &RedisQueue,
    ids: &[JobId],
    wait: Option<Duration>,
    mut done: impl FnMut(JobId, Settled) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // From before the first look-up: a job finishing in between is in the notices.
    let mut cursor = queue.results().notices_from_now().await?;
    let mut open: BTreeSet<JobId> = BTreeSet::new();
    let unique: BTreeSet<JobId> = ids.iter().copied().collect();
    // Many jobs: their results at once, one scan for where the rest are, and a search
    // of its own only for a job that scan did not find (unknown, cancelled, or in a
    // tenant's backlog).
    let searched: Vec<JobId> = if wait.is_some() && unique.len() > 1 {
        let ids: Vec<JobId> = unique.iter().copied().collect();
        let mut rest: std::collections::HashSet<JobId> = unique.iter().copied().collect();
        for result in queue.results().fetch(&ids).await? {
            if rest.remove(&result.job_id) {
                done(result.job_id, Settled::Finished(Box::new(result)))?;
            }
        }
        let found = queue.recovery().locate(&rest, None).await?;
        let lost: BTreeSet<JobId> = found.vanished.into_iter().collect();
        open.extend(rest.iter().filter(|id| !lost.contains(id)));
        lost.into_iter().collect()
    } else {
        unique.into_iter().collect()
    };
    for id in searched {
        match look_up(queue, id).await? {
            Settled::Unfinished(state) if wait.is_some() && is_pending(&state) => {
                open.insert(id);
            }
            settled => done(id, settled)?,
        }
    }
    let Some(wait) = wait else {
        return Ok(());
    };
    let deadline = Instant::now() + wait;
    let mut last_check = Instant::now();
    let mut warned = false;
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let to_check = RECHECK.saturating_sub(last_check.elapsed());
        let slice = left.min(to_check).max(Duration::from_millis(1));
        let mut check: Vec<JobId> = match queue.results().completions(&cursor, slice).await {
            Ok((next, notices)) => {
                cursor = next;
                notices
                    .into_iter()
                    .map(|(id, _)| id)
                    .filter(|id| open.contains(id))
                    .collect()
            }
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "completion notices unreadable; looking results up every {RECHECK:?}");
                    warned = true;
                }
                tokio::time::sleep(slice).await;
                Vec::new()
            }
        };
        if last_check.elapsed() >= RECHECK {
            last_check = Instant::now();
            check = open.iter().copied().collect();
        }
        // A result, or a cancel: the cheap look-ups (a finished job's result is
        // written with its notice; where an unfinished job is, is asked at the end).
        for result in queue.results().fetch(&check).await? {
            if open.remove(&result.job_id) {
                let id = result.job_id;
                done(id, Settled::Finished(Box::new(result)))?;
            }
        }
        for id in check {
            if open.contains(&id)
                && queue
                    .results()
                    .job_record(id)
                    .await?
                    .is_some_and(|record| record.cancelled)
            {
                open.remove(&id);
                done(id, Settled::Unfinished(JobState::Cancelled))?;
            }
        }
    }
    for id in std::mem::take(&mut open) {
        done(id, look_up(queue, id).await?)?;
    }
    Ok(())
}

/// Whether a job in `state` may still finish.
fn is_pending(state: &JobState) -> bool {
    matches!(
        state,
        JobState::Backlogged { .. }
            | JobState::Queued { .. }
            | JobState::Running { .. }
            | JobState::Delayed { .. }
    )
}

/// Job `id`'s result, or where it is.
async fn look_up(queue: &RedisQueue, id: JobId) -> anyhow::Result<Settled> {
    if let Some(result) = queue.result(id).await? {
        return Ok(Settled::Finished(Box::new(result)));
    }
    match queue.admin().job_state(id).await? {
        // Finished while it was searched for.
        JobState::Finished => match queue.result(id).await? {
            Some(result) => Ok(Settled::Finished(Box::new(result))),
            None => Ok(Settled::Unfinished(JobState::Missing)),
        },
        state => Ok(Settled::Unfinished(state)),
    }
}
