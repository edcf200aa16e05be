//! `sluice bench`: jobs end to end through Redis and real worker processes, the
//! built-in no-op or a real guest (`--module FILE --input-size SIZE`), every output
//! checked against a reference run. Reports jobs/s, latency (under the backlog, and
//! p50/p99/p99.9 at an offered rate), CPU per job of the workers, redis-server and the
//! bench itself, Redis commands per job (INFO commandstats) and, for scale,
//! `redis-benchmark -q -P 16 -t set,get` on the same server.
//!
//! - this file: the options and the order of the runs;
//! - [`drain`]: the drain run (jobs enqueued before the workers start, as the BullMQ
//!   peer measures);
//! - [`workload`]: the module, the inputs, the expected outputs, checking results;
//! - [`workers`]: the worker processes;
//! - [`follow`]: sending jobs and following their completion notices;
//! - [`cpu`]: CPU time from `/proc` and from Redis's `INFO cpu`;
//! - [`server`]: figures read from the Redis server, `redis-benchmark`;
//! - [`commandstats`]: Redis's time per command per job (where its CPU goes);
//! - [`report`]: the figures and their Markdown.

pub mod commandstats;
pub mod cpu;
pub mod drain;
pub mod follow;
pub mod report;
pub mod server;
pub mod workers;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_shared::queue::redis::{RedisConfig, RedisQueue};

use report::{Figures, Format, Percentiles};
use workers::{WorkerSpec, Workers};
use workload::Workload;

/// How long the throughput run may take before the bench gives up on it.
const THROUGHPUT_DEADLINE: Duration = Duration::from_secs(600);

/// How long the warm-up may take before the bench gives up on it.
const WARM_UP_DEADLINE: Duration = Duration::from_secs(60);

/// The shortest `--cache-ttl` the bench gives its workers.
const MIN_CACHE_TTL: Duration = Duration::from_secs(3600);

/// The workers' `--cache-ttl`: at least as long as the whole bench up to the drain's
/// start (warm-up and throughput deadlines, the latency run at its offered rate, an
/// hour to spare) and never shorter than the results' `ttl`, so the compiled module the
/// first fleet stored in the shared artifact cache cannot expire before the drain's
/// workers load it.
fn cache_ttl(ttl: Duration, latency_jobs: usize, rate: u32) -> Duration {
    let latency = Duration::from_secs((latency_jobs as u64).div_ceil(u64::from(rate.max(1))));
    let bench = WARM_UP_DEADLINE + THROUGHPUT_DEADLINE + latency + MIN_CACHE_TTL;
    ttl.max(bench)
}

/// `sluice bench` options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Redis URL (the bench uses a fresh queue on it).
    #[arg(long = "redis", env = "SLUICE_REDIS_URL")]
    redis_url: String,
    /// The module the jobs run (.wasm or .wat), stored as `sluice module put` stores
    /// it; default a built-in no-op.
    #[arg(long, value_name = "FILE")]
    module: Option<PathBuf>,
    /// Bytes of printable text per job input (`4KiB`; at most 256 KiB, and at most
    /// 1 GiB over all of the run's jobs: warm-up, throughput, latency and drain; Redis holds
    /// about twice that at the end, inputs and outputs).
    #[arg(long, value_name = "SIZE", default_value = "0")]
    input_size: String,
    /// Jobs in the throughput run, and in the drain run.
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
    /// TTL of results, notices and blobs given to the workers. Results are checked
    /// after each run; one expired by then is reported as `expired` (its notice said
    /// success, its output went unchecked), neither failed nor left out of jobs/s. The
    /// bench waits the TTL out and reports Redis memory before the run and after it
    /// (unless --no-memory-check).
    #[arg(long, default_value = "60s")]
    ttl: String,
    /// Skip waiting out the TTL for the memory figure.
    #[arg(long)]
    no_memory_check: bool,
    /// Skip the drain run: after the latency run, the workers stopped, --jobs jobs
    /// enqueued, the same workers started again, and jobs/s timed from the first
    /// worker's `worker ready` line to the last notice (how the BullMQ peer measures).
    #[arg(long)]
    no_drain: bool,
    /// Skip the `redis-benchmark` figure.
    #[arg(long)]
    no_redis_benchmark: bool,
    /// `table`: a figure | value table; `row`: a header and one row (lines 1-3), for
    /// stacking runs into one table. Both are followed, after a blank line, by the
    /// run's Redis time per command per job (a second table).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The worker binary (default: `sluice-worker` beside this binary).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// The workers' log filter (their `RUST_LOG`; their log goes to this process's
    /// stderr). `sluice_worker::executor=debug` prints each job's `job recorded` line
    /// with prepare_us, run_us and recorded_us: the worker's share of a job's latency.
    /// The bench adds `sluice_worker::fleet::serve=info` (the `worker ready` line it
    /// waits for) unless the filter names exactly that module at info, debug or trace
    /// (a directive for it at a lower level or `off` is replaced).
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    worker_log: String,
}

/// Runs the bench and prints its figures; exit status 1 when a job failed or returned
/// a wrong output, or the drain run failed (the other runs' figures are printed). SIGTERM or SIGINT stops it early: the run is dropped, which stops
/// and waits for the worker processes, and the exit status is 128 + the signal.
pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    // Dropping `measure`'s future drops its `Workers`, which stops them.
    let signal = tokio::select! {
        result = measure(args) => return result,
        _ = term.recv() => 15,
        _ = int.recv() => 2,
    };
    eprintln!("sluice bench: stopped by signal {signal}; the workers are stopped");
    Ok(std::process::ExitCode::from(128 + signal))
}

/// The bench's runs, in order; see [`run`].
async fn measure(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(args.jobs >= 1, "--jobs must be at least 1");
    let ttl = sluice_shared::units::parse_duration(&args.ttl)?;
    let input_size = sluice_shared::units::parse_size(&args.input_size)
        .with_context(|| format!("--input-size {}", args.input_size))?;
    let worker_bin = match &args.worker_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("sluice-worker"),
    };
    // Warm-up: a job for every slot of every worker, so each worker has claimed (joined
    // the group) and loaded the module before the throughput run (a worker that has a
    // free slot claims; one with none free leaves jobs to the others).
    let warm_up = args
        .workers
        .saturating_mul(args.concurrency)
        .max(args.workers * 4);
    let drain_jobs = if args.no_drain { 0 } else { args.jobs };
    let all_jobs = args
        .jobs
        .saturating_add(args.latency_jobs)
        .saturating_add(warm_up)
        .saturating_add(drain_jobs);
    let workload = tokio::task::block_in_place(|| {
        Workload::prepare(args.module.as_deref(), input_size, all_jobs, &worker_bin)
    })?;
    let tick = cpu::clock_tick();

    let mut config = RedisConfig::new(&args.redis_url);
    config.queue = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let queue = RedisQueue::connect(config.clone()).await?;
    let memory_before = server::used_memory(&queue).await?;
    let module = queue
        .modules()
        .put_with_meta(&workload.wasm, &workload.meta, None)
        .await?;
    let limits = crate::distributed::clamp_to_policy(
        &queue,
        &sluice_shared::TenantId::default().0,
        &sluice_shared::Limits::default(),
    )
    .await?;
    let job = |n: usize| workload.job(n, module, &limits);

    let spec = WorkerSpec {
        bin: worker_bin.clone(),
        redis_url: args.redis_url.clone(),
        queue: config.queue.clone(),
        count: args.workers,
        slots: args.concurrency,
        ttl: args.ttl.clone(),
        cache_ttl: cache_ttl(ttl, args.latency_jobs, args.rate),
        log: args.worker_log.clone(),
        // The bench's own fleet key: its workers share compiled modules through Redis,
        // so the drain's fresh workers load the module the first ones compiled.
        cache_key: format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
        tick,
    };
    let workers = Workers::start(&spec)?;
    // Warm up (outcomes not counted: the runs below check every job).
    let from = queue.results().notices_from_now().await?;
    follow::throughput(&queue, from, warm_up, &job, WARM_UP_DEADLINE)
        .await
        .context("warming up the workers")?;

    // Throughput: everything enqueued at once, as a batch submitter would.
    let commands_before = server::command_stats(&queue).await?;
    let from = queue.results().notices_from_now().await?;
    let switches_before = workers.context_switches()?;
    let cpu_before = (
        workers.cpu(tick)?,
        server::cpu(&queue).await?,
        cpu::process(std::process::id(), tick)?,
    );
    let started = std::time::Instant::now();
    let (throughput, enqueued) =
        follow::throughput(&queue, from, args.jobs, &job, THROUGHPUT_DEADLINE).await?;
    let elapsed = started.elapsed();
    let worker_cpu = workers.cpu(tick)?.since(cpu_before.0);
    let context_switches = workers.context_switches()?.saturating_sub(switches_before);
    let redis_cpu = server::cpu(&queue).await?.since(cpu_before.1);
    let bench_cpu = cpu::process(std::process::id(), tick)?.since(cpu_before.2);
    let redis_commands = server::command_stats(&queue).await?.since(&commands_before);
    let throughput_checked = workload.check(&queue, &throughput.finished()).await?;

    // Latency at a modest offered load.
    let from = queue.results().notices_from_now().await?;
    let (latency_run, stages) = follow::at_rate(&queue, from, args.latency_jobs, &job, args.rate)
        .await
        .context("the latency run")?;
    let latency_stages =
        follow::stage_latencies(&latency_run, &stages).map(|v| Percentiles::of(&v));
    let latency_checked = workload.check(&queue, &latency_run.finished()).await?;
    drop(workers);

    // Drain: the same jobs enqueued with the workers stopped, then the workers started
    // again (as the peer measures). A failed drain is reported beside the other runs'
    // figures rather than in place of them.
    let drain = if args.no_drain {
        None
    } else {
        Some(
            drain::run(
                &queue,
                &spec,
                &workload,
                args.jobs,
                &job,
                THROUGHPUT_DEADLINE,
            )
            .await
            .map_err(|e| format!("{e:#}")),
        )
    };

    let baseline = (!args.no_redis_benchmark)
        .then(|| tokio::task::block_in_place(|| server::redis_benchmark(&args.redis_url)));
    let memory = if args.no_memory_check {
        None
    } else {
        // Wait out the TTL, then touch every key of the queue so expired ones go now
        // rather than whenever active expiry samples them.
        tokio::time::sleep(ttl + Duration::from_secs(1)).await;
        queue.admin().touch_all_keys().await?;
        Some((
            memory_before,
            server::used_memory(&queue).await?,
            args.ttl.clone(),
        ))
    };

    let figures = Figures {
        module: workload.name.clone(),
        input_size: workload.input_size,
        workers: args.workers,
        slots: args.concurrency,
        jobs: args.jobs,
        throughput_checked,
        enqueued,
        elapsed,
        backlog_latency: Percentiles::of(&throughput.latencies()),
        commands: redis_commands.calls(),
        redis_commands,
        worker_cpu,
        context_switches,
        redis_cpu,
        bench_cpu,
        rate: args.rate,
        latency_jobs: args.latency_jobs,
        latency_checked,
        latency: Percentiles::of(&latency_run.latencies()),
        latency_stages,
        drain,
        baseline,
        memory,
    };
    match args.format {
        Format::Table => print!("{}", figures.table()),
        Format::Row => print!("{}", figures.row()),
    }
    if let Some(reason) = figures.drain_failure() {
        eprintln!("sluice bench: the drain run failed: {reason}");
    }
    if figures.failed() > 0 {
        eprintln!("sluice bench: {} jobs failed", figures.failed());
    }
    Ok(if figures.succeeded() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_ttl_outlasts_the_bench_up_to_the_drain() {
        let hour = Duration::from_secs(3600);
        // A 60 s results TTL: the cache's is the bench's length up to the drain plus an
        // hour (2,000 latency jobs at 200/s: 10 s).
        assert_eq!(
            cache_ttl(Duration::from_secs(60), 2_000, 200),
            WARM_UP_DEADLINE + THROUGHPUT_DEADLINE + Duration::from_secs(10) + hour
        );
        // A slow latency run lengthens it; a rate of 0 is taken as 1/s.
        assert!(cache_ttl(Duration::from_secs(60), 100_000, 0) > Duration::from_secs(100_000));
        // A results TTL longer than that stands.
        assert_eq!(cache_ttl(10 * hour, 2_000, 200), 10 * hour);
    }
}
