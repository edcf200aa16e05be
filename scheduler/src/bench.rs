//! `sluice bench`: no-op jobs end to end through Redis and real worker processes.
//! Reports jobs/s, enqueue-to-completion latency, Redis commands per job (from INFO
//! commandstats) and, for scale, `redis-benchmark -q -P 16 -t set` on the same server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sluice_shared::queue::redis::{RedisConfig, RedisQueue};
use sluice_shared::{Job, JobId, JobInput, Queue};

/// The no-op transform every bench job runs.
const NOOP: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// `sluice bench` options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Redis URL (the bench uses a fresh queue on it).
    #[arg(long = "redis", env = "SLUICE_REDIS_URL")]
    redis_url: String,
    /// Jobs in the throughput run.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Worker processes to start (`sluice-worker serve`).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Job slots per worker.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offered load of the latency run, jobs/s.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Jobs in the latency run.
    #[arg(long, default_value_t = 2_000)]
    latency_jobs: usize,
    /// TTL of results, notices and blobs given to the workers; the bench waits it out
    /// and reports Redis memory before the run and after the TTL.
    #[arg(long, default_value = "10s")]
    ttl: String,
    /// The worker binary (default: `sluice-worker` beside this binary).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
}

fn host_port(url: &str) -> (String, String) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.to_owned()),
        None => (hostport.to_owned(), "6379".to_owned()),
    }
}

/// Total commands the server has executed (INFO commandstats, scripts' inner calls
/// included).
async fn commands_executed(queue: &RedisQueue) -> anyhow::Result<u64> {
    let info = queue.admin().server_info("commandstats").await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// `used_memory` from INFO memory.
async fn used_memory(queue: &RedisQueue) -> anyhow::Result<u64> {
    let info = queue.admin().server_info("memory").await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// Waits until `expected` of our ids have completion notices; returns arrival times.
async fn follow(
    queue: &RedisQueue,
    mut last: String,
    expected: usize,
    ids: &HashMap<JobId, Instant>,
    deadline: Duration,
) -> anyhow::Result<HashMap<JobId, Instant>> {
    let started = Instant::now();
    let mut done = HashMap::with_capacity(expected.min(ids.len()));
    while done.len() < expected {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "only {} of {expected} jobs finished in {deadline:?}",
            done.len()
        );
        let (next, notices) = queue
            .results()
            .completions(&last, Duration::from_millis(500))
            .await?;
        let now = Instant::now();
        last = next;
        for (id, _) in notices {
            if ids.contains_key(&id) {
                done.entry(id).or_insert(now);
            }
        }
    }
    Ok(done)
}

/// Runs the bench and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let ttl = sluice_shared::units::parse_duration(&args.ttl)?;
    let mut config = RedisConfig::new(&args.redis_url);
    config.queue = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let queue = RedisQueue::connect(config.clone()).await?;
    let memory_before = used_memory(&queue).await?;
    let wasm = wat::parse_str(NOOP)?;
    let module = queue.modules().put(&wasm, None).await?;

    let worker_bin = match args.worker_bin {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("sluice-worker"),
    };
    let mut workers = Workers(Vec::new());
    for i in 0..args.workers {
        let child = Command::new(&worker_bin)
            .args([
                "serve",
                "--redis",
                &args.redis_url,
                "--queue",
                &config.queue,
            ])
            .args(["--concurrency", &args.concurrency.to_string()])
            .args(["--consumer", &format!("bench-{i}")])
            .args(["--ttl", &args.ttl])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", worker_bin.display()))?;
        workers.0.push(child);
    }
    // Warm up: every worker has claimed (so joined the group) and compiled the module.
    let warm: Vec<Job> = (0..args.workers * 4)
        .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
        .collect();
    let warm_ids: HashMap<JobId, Instant> = warm.iter().map(|j| (j.id, Instant::now())).collect();
    let from = queue.results().notices_from_now().await?;
    queue.enqueue(&warm).await?;
    follow(&queue, from, warm.len(), &warm_ids, Duration::from_secs(60)).await?;

    // Throughput: everything enqueued at once, as a batch submitter would.
    let jobs: Vec<Job> = (0..args.jobs)
        .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
        .collect();
    let commands_before = commands_executed(&queue).await?;
    let from = queue.results().notices_from_now().await?;
    let started = Instant::now();
    let mut sent = HashMap::with_capacity(jobs.len());
    for chunk in jobs.chunks(5_000) {
        queue.enqueue(chunk).await?;
        let now = Instant::now();
        sent.extend(chunk.iter().map(|j| (j.id, now)));
    }
    let enqueued = started.elapsed();
    let done = follow(&queue, from, jobs.len(), &sent, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    let commands = commands_executed(&queue).await? - commands_before;

    // Latency at a modest offered load: one task sends at the offered rate while
    // another follows the notices continuously, so an arrival is timed when it
    // happens, not when the sender next looks.
    let latencies = {
        let from = queue.results().notices_from_now().await?;
        let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
        let sent_at: parking_lot::Mutex<HashMap<JobId, Instant>> = parking_lot::Mutex::default();
        let jobs: Vec<Job> = (0..args.latency_jobs)
            .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
            .collect();
        let ids: std::collections::HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        let sender = async {
            let mut ticker = tokio::time::interval(interval);
            for job in &jobs {
                ticker.tick().await;
                sent_at.lock().insert(job.id, Instant::now());
                queue.enqueue(std::slice::from_ref(job)).await?;
            }
            anyhow::Ok(())
        };
        let follower = async {
            let mut last = from;
            let mut arrived = HashMap::with_capacity(ids.len());
            let deadline =
                Instant::now() + Duration::from_secs(120) + interval * args.latency_jobs as u32;
            while arrived.len() < ids.len() && Instant::now() < deadline {
                let (next, notices) = queue
                    .results()
                    .completions(&last, Duration::from_millis(100))
                    .await?;
                let now = Instant::now();
                last = next;
                for (id, _) in notices {
                    if ids.contains(&id) {
                        arrived.entry(id).or_insert(now);
                    }
                }
            }
            anyhow::Ok(arrived)
        };
        let ((), arrived) = tokio::try_join!(sender, follower)?;
        let sent_at = sent_at.into_inner();
        let mut latencies: Vec<Duration> = arrived
            .iter()
            .filter_map(|(id, at)| Some(at.saturating_duration_since(*sent_at.get(id)?)))
            .collect();
        latencies.sort();
        latencies
    };
    drop(workers);

    let mut throughput_latency: Vec<Duration> = done
        .iter()
        .filter_map(|(id, at)| Some(at.saturating_duration_since(*sent.get(id)?)))
        .collect();
    throughput_latency.sort();

    let (host, port) = host_port(&args.redis_url);
    let baseline = Command::new("redis-benchmark")
        .args([
            "-h", &host, "-p", &port, "-q", "-P", "16", "-t", "set", "-n", "1000000",
        ])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\r', "\n")
        })
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| l.contains("requests per second"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "redis-benchmark not available".into());

    // Wait out the TTL, then touch every key of the queue so expired ones go now
    // rather than whenever active expiry samples them.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    queue.admin().touch_all_keys().await?;
    let memory_after = used_memory(&queue).await?;

    let jobs_per_s = args.jobs as f64 / elapsed.as_secs_f64();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| worker processes × slots | {} × {} |",
        args.workers, args.concurrency
    );
    println!("| no-op jobs | {} |", args.jobs);
    println!("| enqueue time | {:.2} s |", enqueued.as_secs_f64());
    println!(
        "| end to end | {:.2} s → **{jobs_per_s:.0} jobs/s** |",
        elapsed.as_secs_f64()
    );
    println!(
        "| enqueue→result latency under that backlog, p50 / p99 | {:.0} ms / {:.0} ms |",
        percentile(&throughput_latency, 0.5).as_secs_f64() * 1e3,
        percentile(&throughput_latency, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| Redis commands per job (INFO commandstats, all clients, scripts' calls included) | {:.2} |",
        commands as f64 / args.jobs as f64
    );
    println!(
        "| latency at {} jobs/s offered ({} jobs), p50 / p99 | {:.2} ms / {:.2} ms |",
        args.rate,
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!("| redis-benchmark -q -P 16 -t set (same server) | {baseline} |");
    println!(
        "| Redis used_memory before the run / after the {} TTL | {:.1} MiB / {:.1} MiB |",
        args.ttl,
        memory_before as f64 / (1 << 20) as f64,
        memory_after as f64 / (1 << 20) as f64
    );
    Ok(std::process::ExitCode::SUCCESS)
}
