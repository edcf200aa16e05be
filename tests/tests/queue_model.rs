//! A model-based randomized test of the Redis queue: random interleavings of enqueue
//! (plain, and owned in batches through a tenant's backlog), dispatch, claims by several
//! consumers, takeovers of lapsed leases, completions, retries and dead letters from
//! current and stale holders, cancels and `dlq retry`, against a reference model on a
//! real redis-server. Each reply must be the one the model predicts, and at the end:
//! every job is in exactly one final state, each stored result is the first one the
//! model accepted (never replaced nor deleted by a later delivery), the counters equal
//! the model's, and nothing is lost.
//!
//! A lapsed lease needs no waiting: a claimer's `lease_for` is the takeover's min idle
//! time, so a claim with a 1 ms lease takes over whatever was not renewed in the last
//! millisecond (which of them is up to the clock; the model learns it from the reply).
//!
//! Seeded: `SLUICE_MODEL_SEED=<n>` replays a run; the seed is printed either way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::{Cancelled, RedisConfig, RedisQueue};
use sluice_shared::queue::{Claimed, Completion, Lease, QueueError};
use sluice_shared::{Job, JobId, JobInput, JobResult, ModuleHash, Outcome, Queue, codec};
use sluice_tests::RedisServer;

const TENANT: &str = "model";
const CONSUMERS: [&str; 3] = ["c0", "c1", "c2"];
const LONG: Duration = Duration::from_secs(600);
const LAPSED: Duration = Duration::from_millis(1);

/// splitmix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Where the model says a job is.
#[derive(Clone, Debug, PartialEq)]
enum State {
    /// In its tenant's backlog (owned jobs), waiting for dispatch.
    Backlog,
    /// On the job stream: `entry` once known (a promoted retry or a re-queued dead
    /// letter gets an id the model learns when it is delivered); `holder` while pending.
    Stream {
        entry: Option<String>,
        holder: Option<(String, u32)>,
    },
    /// Retried: in the delayed set (due at once; promoted by any claim's maintenance).
    Delayed,
    Completed(JobResult),
    Dead(JobResult),
    Cancelled,
}

struct ModelJob {
    state: State,
    /// The batch of an owned job.
    batch: Option<String>,
    /// The entry its record names (owned jobs; set at dispatch, never updated after).
    record_entry: Option<String>,
}

#[derive(Default, Debug, PartialEq)]
struct Counters {
    completed: u64,
    duplicates: u64,
    stale: u64,
    retried: u64,
    dead: u64,
    dlq_retried: u64,
}

struct Model {
    jobs: HashMap<JobId, ModelJob>,
    order: Vec<JobId>,
    /// Leases handed out, current and stale alike.
    leases: Vec<(Lease, Job, u32)>,
    counters: Counters,
    batches: Vec<String>,
    next_mark: u64,
}

impl Model {
    fn result(&self, id: JobId) -> Option<&JobResult> {
        match &self.jobs[&id].state {
            State::Completed(r) | State::Dead(r) => Some(r),
            _ => None,
        }
    }

    fn is_final(&self, id: JobId) -> bool {
        matches!(
            self.jobs[&id].state,
            State::Completed(_) | State::Dead(_) | State::Cancelled
        )
    }

    /// A result no other delivery produced, so a replaced result is noticed.
    fn mark(&mut self, id: JobId, outcome: Outcome, attempt: u32) -> JobResult {
        self.next_mark += 1;
        let mut result = JobResult::without_run(id, outcome, attempt);
        result.stats.output_bytes = self.next_mark;
        result
    }

    fn owns(&self, lease: &Lease) -> bool {
        let id = lease.job_id.expect("model jobs decode");
        matches!(
            &self.jobs[&id].state,
            State::Stream { entry: Some(e), holder: Some((c, d)) }
                if *e == lease.entry_id && *c == lease.consumer && *d == lease.deliveries
        )
    }

    fn pending_entry(&self, lease: &Lease) -> bool {
        let id = lease.job_id.expect("model jobs decode");
        matches!(
            &self.jobs[&id].state,
            State::Stream { entry: Some(e), holder: Some(_) } if *e == lease.entry_id
        )
    }

    /// Takes in what a claim delivered, checking it could be delivered at all.
    fn claimed(&mut self, claimed: &[Claimed], log: &[String]) {
        for c in claimed {
            let job = c.delivery.as_ref().expect("model jobs decode").clone();
            let id = job.id;
            let entry = c.lease.entry_id.clone();
            let state = &self.jobs[&id].state;
            let fits = match state {
                // A new entry (dispatched, promoted, re-queued) or a takeover of this one.
                State::Stream {
                    entry: None,
                    holder: None,
                } => c.lease.deliveries == 1,
                State::Stream {
                    entry: Some(e),
                    holder: None,
                } => *e == entry && c.lease.deliveries == 1,
                State::Stream {
                    entry: Some(e),
                    holder: Some((_, d)),
                } => *e == entry && c.lease.deliveries == d + 1,
                State::Delayed => c.lease.deliveries == 1,
                _ => false,
            };
            assert!(
                fits,
                "job {id} delivered as {:?} (entry {entry}) while the model has it {state:?}\n{}",
                c.lease,
                log.join("\n")
            );
            self.jobs.get_mut(&id).unwrap().state = State::Stream {
                entry: Some(entry),
                holder: Some((c.lease.consumer.clone(), c.lease.deliveries)),
            };
            self.leases.push((c.lease.clone(), job, c.attempt()));
        }
    }
}

fn job(n: u64) -> Job {
    let mut job = Job::new(
        ModuleHash::of(b"model"),
        JobInput::Inline(n.to_le_bytes().to_vec()),
    );
    job.label = format!("m{n}");
    job
}

fn failure(rng: &mut Rng) -> Outcome {
    match rng.below(3) {
        0 => Outcome::InvalidModule {
            reason: "model".into(),
        },
        1 => Outcome::Timeout,
        _ => Outcome::NonZeroExit { code: 3 },
    }
}

fn lease_lost<T: std::fmt::Debug>(reply: &Result<T, QueueError>) -> bool {
    matches!(reply, Err(QueueError::LeaseLost { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_matches_the_model_in_random_interleavings() {
    let seed = std::env::var("SLUICE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("SLUICE_MODEL_SEED={seed}");
    for round in 0..4u64 {
        run(seed.wrapping_add(round), 600).await;
    }
}

async fn run(seed: u64, steps: usize) {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.queue = "model".into();
    // Maintenance (promotion, takeover) on every claim, so the model's operations and
    // not a timer decide when it happens.
    config.maintenance_interval = Duration::from_millis(1);
    let queue = Arc::new(RedisQueue::connect(config).await.unwrap());
    let mut rng = Rng(seed);
    let mut model = Model {
        jobs: HashMap::new(),
        order: Vec::new(),
        leases: Vec::new(),
        counters: Counters::default(),
        batches: Vec::new(),
        next_mark: 0,
    };
    let mut log: Vec<String> = Vec::new();
    let mut made = 0u64;

    for step in 0..steps {
        if step % 20 == 0 {
            check_results(&queue, &model, &log).await;
        }
        match rng.below(100) {
            // Enqueue plain jobs straight onto the stream.
            0..=7 => {
                let jobs: Vec<Job> = (0..1 + rng.below(3))
                    .map(|_| {
                        made += 1;
                        job(made)
                    })
                    .collect();
                queue.enqueue(&jobs).await.unwrap();
                log.push(format!("enqueue {}", jobs.len()));
                for j in jobs {
                    model.order.push(j.id);
                    model.jobs.insert(
                        j.id,
                        ModelJob {
                            state: State::Stream {
                                entry: None,
                                holder: None,
                            },
                            batch: None,
                            record_entry: None,
                        },
                    );
                }
            }
            // Enqueue a batch into the tenant's backlog, with records.
            8..=12 => {
                let jobs: Vec<Job> = (0..1 + rng.below(4))
                    .map(|_| {
                        made += 1;
                        job(made)
                    })
                    .collect();
                let batch = uuid::Uuid::now_v7().to_string();
                queue
                    .admission()
                    .enqueue_owned(&jobs, TENANT, Some(&batch))
                    .await
                    .unwrap();
                log.push(format!("enqueue_owned {} as {batch}", jobs.len()));
                model.batches.push(batch.clone());
                for j in jobs {
                    model.order.push(j.id);
                    model.jobs.insert(
                        j.id,
                        ModelJob {
                            state: State::Backlog,
                            batch: Some(batch.clone()),
                            record_entry: None,
                        },
                    );
                }
            }
            13..=18 => dispatch(&queue, &mut model, &mut log, 1 + rng.below(4)).await,
            // Claim new work (no takeover: a long lease).
            19..=34 => {
                let consumer = CONSUMERS[rng.below(CONSUMERS.len())];
                let got = queue
                    .claim(consumer, 1 + rng.below(3), LONG, Duration::ZERO)
                    .await
                    .unwrap();
                log.push(format!("claim {consumer}: {}", describe(&got)));
                model.claimed(&got, &log);
            }
            // A claim that takes over every lease idle for a millisecond.
            35..=44 => {
                let consumer = CONSUMERS[rng.below(CONSUMERS.len())];
                let got = queue
                    .claim(consumer, 1 + rng.below(3), LAPSED, Duration::ZERO)
                    .await
                    .unwrap();
                log.push(format!("takeover {consumer}: {}", describe(&got)));
                model.claimed(&got, &log);
            }
            // Completions, one or several at once (one flusher batch), from any lease.
            45..=64 => {
                let max = 1 + rng.below(4);
                let picks = pick_leases(&mut rng, &model, max);
                complete_all(&queue, &mut model, &mut log, picks).await;
            }
            65..=74 => {
                let Some(i) = pick_lease(&mut rng, &model) else {
                    continue;
                };
                let (lease, job, attempt) = model.leases[i].clone();
                let mut next = job.clone();
                next.attempt = attempt;
                let reply = queue.retry(&lease, &next, Duration::ZERO).await;
                log.push(format!("retry {} {:?}: {reply:?}", job.id, lease));
                if model.owns(&lease) {
                    reply.unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
                    model.jobs.get_mut(&job.id).unwrap().state = State::Delayed;
                    model.counters.retried += 1;
                } else {
                    assert!(lease_lost(&reply), "{reply:?}\n{}", log.join("\n"));
                }
            }
            75..=84 => {
                let Some(i) = pick_lease(&mut rng, &model) else {
                    continue;
                };
                let (lease, job, attempt) = model.leases[i].clone();
                let outcome = failure(&mut rng);
                let result = model.mark(job.id, outcome, attempt);
                let reply = queue.dead_letter(&lease, result.clone()).await;
                log.push(format!("dead {} {:?}: {reply:?}", job.id, lease));
                if model.owns(&lease) {
                    reply.unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
                    model.jobs.get_mut(&job.id).unwrap().state = State::Dead(result);
                    model.counters.dead += 1;
                } else {
                    assert!(lease_lost(&reply), "{reply:?}\n{}", log.join("\n"));
                }
            }
            85..=92 => {
                let owned: Vec<JobId> = model
                    .order
                    .iter()
                    .copied()
                    .filter(|id| model.jobs[id].batch.is_some())
                    .collect();
                if owned.is_empty() {
                    continue;
                }
                let id = owned[rng.below(owned.len())];
                let reply = queue.results().cancel(id).await.unwrap();
                log.push(format!("cancel {id}: {reply:?}"));
                let m = &model.jobs[&id];
                let expected = match &m.state {
                    State::Backlog => Cancelled::Yes,
                    // Promoted back into its backlog by a claim's maintenance, or not yet.
                    State::Delayed if reply == Cancelled::Yes => Cancelled::Yes,
                    State::Stream { entry, holder }
                        if *entry == m.record_entry && entry.is_some() =>
                    {
                        if holder.is_some() {
                            Cancelled::Running
                        } else {
                            Cancelled::Yes
                        }
                    }
                    _ => Cancelled::Gone,
                };
                assert_eq!(
                    reply,
                    expected,
                    "cancel of {id} in {:?}\n{}",
                    m.state,
                    log.join("\n")
                );
                if reply == Cancelled::Yes {
                    model.jobs.get_mut(&id).unwrap().state = State::Cancelled;
                }
            }
            _ => {
                let moved = queue.admin().dlq_retry(None).await.unwrap();
                log.push(format!("dlq retry: {moved}"));
                let dead: Vec<JobId> = model
                    .order
                    .iter()
                    .copied()
                    .filter(|id| matches!(model.jobs[id].state, State::Dead(_)))
                    .collect();
                assert_eq!(moved, dead.len() as u64, "{}", log.join("\n"));
                for id in dead {
                    model.jobs.get_mut(&id).unwrap().state = State::Stream {
                        entry: None,
                        holder: None,
                    };
                }
                model.counters.dlq_retried += moved;
            }
        }
    }

    // Drain: dispatch, take over and complete until every job is final.
    let deadline = Instant::now() + Duration::from_secs(30);
    while model.order.iter().any(|id| !model.is_final(*id)) {
        assert!(
            Instant::now() < deadline,
            "not drained: {:?}\n{}",
            model
                .order
                .iter()
                .filter(|id| !model.is_final(**id))
                .map(|id| &model.jobs[id].state)
                .collect::<Vec<_>>(),
            log.join("\n")
        );
        dispatch(&queue, &mut model, &mut log, 100).await;
        let got = queue
            .claim("drain", 100, LAPSED, Duration::from_millis(50))
            .await
            .unwrap();
        log.push(format!("drain claim: {}", describe(&got)));
        model.claimed(&got, &log);
        let current: Vec<usize> = (0..model.leases.len())
            .filter(|&i| model.owns(&model.leases[i].0))
            .collect();
        complete_all(&queue, &mut model, &mut log, current).await;
    }
    check_results(&queue, &model, &log).await;

    // Nothing left anywhere, and the counters are the model's.
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.leased, stats.delayed),
        (0, 0, 0),
        "{}",
        log.join("\n")
    );
    let status = queue.admin().status().await.unwrap();
    let counters = Counters {
        completed: status.stats.completed,
        duplicates: status.duplicates,
        stale: status.stale,
        retried: status.retried,
        dead: server
            .cli(&["HGET", &queue.keys().stats, "dead"])
            .trim()
            .parse()
            .unwrap_or(0),
        dlq_retried: status.dlq_retried,
    };
    assert_eq!(counters, model.counters, "seed {seed}");
    let finals = model.order.iter().fold([0u32; 3], |mut n, id| {
        match model.jobs[id].state {
            State::Completed(_) => n[0] += 1,
            State::Dead(_) => n[1] += 1,
            _ => n[2] += 1,
        }
        n
    });
    println!(
        "seed {seed}: {} jobs, {} leases; completed/dead/cancelled {finals:?}; {counters:?}",
        model.order.len(),
        model.leases.len()
    );
    let letters = queue.dead_letters().await.unwrap();
    let mut dead_jobs: Vec<JobId> = letters.iter().filter_map(|l| l.job_id).collect();
    dead_jobs.sort();
    let mut expected_dead: Vec<JobId> = model
        .order
        .iter()
        .copied()
        .filter(|id| matches!(model.jobs[id].state, State::Dead(_)))
        .collect();
    expected_dead.sort();
    assert_eq!(
        dead_jobs, expected_dead,
        "each dead job has exactly one letter"
    );

    // Each batch's counters are its jobs' final outcomes and cancels, each counted once.
    for batch in &model.batches {
        let counts = queue
            .results()
            .batch_counts(batch, TENANT)
            .await
            .unwrap()
            .unwrap();
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for id in &model.order {
            let m = &model.jobs[id];
            if m.batch.as_ref() == Some(batch)
                && let Some(r) = model.result(*id)
            {
                *expected
                    .entry(r.outcome.kind().as_str().to_owned())
                    .or_default() += 1;
            }
            // A cancelled job is counted in its batch too (`n:cancelled`).
            if m.batch.as_ref() == Some(batch) && m.state == State::Cancelled {
                *expected.entry("cancelled".to_owned()).or_default() += 1;
            }
        }
        assert_eq!(counts.by_outcome, expected, "batch {batch}, seed {seed}");
        for (id, outcome) in &counts.jobs {
            assert_eq!(
                *outcome,
                model.result(*id).map(|r| r.outcome.kind()),
                "job {id} of batch {batch}"
            );
        }
        assert_eq!(counts.total, counts.jobs.len() as u64);
    }
    drop(server);
}

async fn dispatch(queue: &RedisQueue, model: &mut Model, log: &mut Vec<String>, max: usize) {
    // Admission is fenced by the dispatcher role: the model is its only holder.
    queue
        .admission()
        .hold_dispatcher("model", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let moved = queue
        .admission()
        .dispatch("model", TENANT, max)
        .await
        .unwrap();
    log.push(format!("dispatch {max}: {moved:?}"));
    // Jobs that never left the backlog, oldest first. A retried owned job goes back to
    // the backlog's end when a claim's maintenance promotes it, which the model does not
    // time: it may be moved too, after them.
    let waiting: Vec<JobId> = model
        .order
        .iter()
        .copied()
        .filter(|id| model.jobs[id].state == State::Backlog)
        .collect();
    let first: Vec<JobId> = moved
        .iter()
        .copied()
        .filter(|id| model.jobs[id].state == State::Backlog)
        .collect();
    assert_eq!(
        first,
        waiting[..first.len()],
        "oldest first: {}",
        log.join("\n")
    );
    assert!(
        moved.len() <= max && moved.len() >= max.min(waiting.len()),
        "{}",
        log.join("\n")
    );
    for id in &moved {
        let m = &model.jobs[id];
        assert!(
            m.state == State::Backlog || (m.state == State::Delayed && m.batch.is_some()),
            "dispatched {id} while the model has it {:?}\n{}",
            m.state,
            log.join("\n")
        );
    }
    for id in moved {
        let record = queue
            .results()
            .job_record(id)
            .await
            .unwrap()
            .expect("a record");
        let m = model.jobs.get_mut(&id).unwrap();
        m.record_entry = Some(record.entry.clone());
        m.state = State::Stream {
            entry: Some(record.entry),
            holder: None,
        };
    }
}

fn pick_lease(rng: &mut Rng, model: &Model) -> Option<usize> {
    (!model.leases.is_empty()).then(|| {
        // Mostly recent leases (likely current), sometimes any (likely stale).
        let n = model.leases.len();
        if rng.below(3) == 0 {
            rng.below(n)
        } else {
            n - 1 - rng.below(n.min(4))
        }
    })
}

/// Up to `max` leases of distinct jobs: their completions are independent of order.
fn pick_leases(rng: &mut Rng, model: &Model, max: usize) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::new();
    for _ in 0..max * 2 {
        if picked.len() == max {
            break;
        }
        if let Some(i) = pick_lease(rng, model)
            && !picked
                .iter()
                .any(|&p| model.leases[p].1.id == model.leases[i].1.id)
        {
            picked.push(i);
        }
    }
    picked
}

async fn complete_all(
    queue: &Arc<RedisQueue>,
    model: &mut Model,
    log: &mut Vec<String>,
    picks: Vec<usize>,
) {
    let mut calls = tokio::task::JoinSet::new();
    let mut expected = HashMap::new();
    for i in picks {
        let (lease, job, attempt) = model.leases[i].clone();
        let result = model.mark(job.id, Outcome::Success, attempt);
        // The model's verdict, decided before the call.
        let verdict = if model.result(job.id).is_some() {
            Ok(Completion::AlreadyDone)
        } else if model.pending_entry(&lease) {
            Ok(Completion::Recorded)
        } else {
            Err(())
        };
        expected.insert(job.id, (verdict, result.clone(), lease.clone()));
        let queue = queue.clone();
        calls.spawn(async move { (job.id, queue.complete(&lease, result).await) });
    }
    while let Some(done) = calls.join_next().await {
        let (id, reply) = done.unwrap();
        let (verdict, result, lease) = expected.remove(&id).unwrap();
        log.push(format!("complete {id} {lease:?}: {reply:?}"));
        match verdict {
            Ok(Completion::Recorded) => {
                assert_eq!(
                    reply.as_ref().ok(),
                    Some(&Completion::Recorded),
                    "{}",
                    log.join("\n")
                );
                model.jobs.get_mut(&id).unwrap().state = State::Completed(result);
                model.counters.completed += 1;
            }
            Ok(Completion::AlreadyDone) => {
                assert_eq!(
                    reply.as_ref().ok(),
                    Some(&Completion::AlreadyDone),
                    "{}",
                    log.join("\n")
                );
                model.counters.duplicates += 1;
            }
            Err(()) => {
                assert!(lease_lost(&reply), "{reply:?}\n{}", log.join("\n"));
                model.counters.stale += 1;
            }
        }
    }
}

/// Every stored result is exactly the one the model accepted first; no other job has one.
async fn check_results(queue: &RedisQueue, model: &Model, log: &[String]) {
    if model.order.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for id in &model.order {
        pipe.cmd("GET").arg(queue.keys().result_key(*id));
    }
    let stored: Vec<Option<Vec<u8>>> = pipe.query_async(&mut queue.connection()).await.unwrap();
    for (id, bytes) in model.order.iter().zip(stored) {
        let stored: Option<JobResult> = bytes.map(|b| codec::decode_result(&b).unwrap());
        assert_eq!(
            stored.as_ref(),
            model.result(*id),
            "stored result of {id} in {:?}\n{}",
            model.jobs[id].state,
            log.join("\n")
        );
    }
}

fn describe(claimed: &[Claimed]) -> String {
    claimed
        .iter()
        .map(|c| {
            format!(
                "{}@{}#{}",
                c.lease.job_id.map(|j| j.to_string()).unwrap_or_default(),
                c.lease.entry_id,
                c.lease.deliveries
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
