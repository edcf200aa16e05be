//! The interactive path's latency: `POST /v1/jobs?wait=` offered at a fixed rate
//! (open loop: each request's latency counts from the moment it was due, so a slow
//! answer cannot hide the requests queued behind it) against a real redis-server, a
//! real `sluice serve` and real workers; for the no-op module and the 4 KiB uppercase C
//! guest. Every answer is checked: a 200 carrying exactly the guest's output (the
//! measurement fails otherwise). The measurement is ignored by default (`scripts/bench-wait`
//! runs it); a short run that checks the table's columns and that a wrong output is
//! counted runs always. Figures and the command are in `docs/benchmarks.md`
//! ("Interactive path"):
//!
//! ```sh
//! bash examples/build.sh && cargo build --release --bins
//! scripts/bench-wait          # = cargo test … --test api_wait_bench -- --ignored --nocapture
//! ```
//!
//! Settings (environment): `WAIT_BENCH_RATE` requests per second (200),
//! `WAIT_BENCH_SECS` seconds per module (10), `WAIT_BENCH_WORKERS` worker processes (1).
//! Besides requests/s and p50/p99/p99.9 it prints the CPU time `sluice serve` and the
//! workers spent per request (utime + stime from `/proc`), which a busy machine
//! disturbs far less than wall-clock latency, and the Redis commands run per request
//! (`INFO commandstats`, every client's).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{RedisServer, ServeProcess, WorkerProcess, guest};

const ADMIN: &str = "admin-secret-for-tests";
const QUEUE: &str = "bench";
/// Threads sending requests (each keeps its own connection alive).
const SENDERS: usize = 32;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of process `pid` so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Commands Redis has run so far, by command (every client's: the service, its
/// dispatcher and follower, the workers; commands that scripts run count too).
fn redis_calls(url: &str) -> std::collections::BTreeMap<String, u64> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Offers `rate` requests/s for `secs` seconds; returns each latency, whether each
/// answer was a 200 carrying exactly `expected`, and the run's length.
fn offer(
    base: &str,
    path: &str,
    token: &str,
    (input, expected): (&[u8], &[u8]),
    rate: u64,
    secs: u64,
) -> (Vec<Duration>, Vec<bool>, Duration) {
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let next = AtomicUsize::new(0);
    let results = Mutex::new((Vec::with_capacity(total), Vec::with_capacity(total)));
    let start = Instant::now() + Duration::from_millis(100);
    std::thread::scope(|scope| {
        for _ in 0..SENDERS {
            scope.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let url = format!("{base}{path}");
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let due = start + interval * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let mut response = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {token}"))
                        .send(input)
                        .expect("HTTP round trip");
                    let body = response.body_mut().read_to_vec().expect("read body");
                    let took = due.elapsed();
                    let right = response.status().as_u16() == 200 && body == expected;
                    let mut r = results.lock().unwrap();
                    r.0.push(took);
                    r.1.push(right);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let (latencies, statuses) = results.into_inner().unwrap();
    (latencies, statuses, elapsed)
}

/// One measured run of one module: the table's row (all ten columns), the answers
/// that were not a 200 with exactly the expected output, and the Redis commands per
/// request, most first.
struct Measured {
    row: String,
    wrong: usize,
    top: String,
}

/// The fleet one measurement runs against: Redis, `sluice serve`, workers, a tenant
/// with the no-op module as `noop` and the uppercase guest as `upper`.
struct Bench {
    redis: RedisServer,
    api: ServeProcess,
    fleet: Vec<WorkerProcess>,
    token: String,
}

impl Bench {
    fn start(workers: u64) -> Bench {
        let redis = RedisServer::start();
        let api = ServeProcess::start(&redis.url(), QUEUE, ADMIN);
        let fleet: Vec<WorkerProcess> = (0..workers)
            .map(|i| WorkerProcess::start(&redis.url(), QUEUE, &format!("w{i}"), &[]))
            .collect();
        let token = api.tenant(
            "bench",
            json!({ "max_concurrent_jobs": 1000, "rate_per_second": 100000 }),
        );
        let noop = api.upload(&token, b"(module (func (export \"_start\")))", "noop");
        assert_eq!(noop.status, 201, "{}", noop.text());
        let upper = api.upload(
            &token,
            &std::fs::read(guest("uppercase.wasm")).unwrap(),
            "upper",
        );
        assert_eq!(upper.status, 201, "{}", upper.text());
        Bench {
            redis,
            api,
            fleet,
            token,
        }
    }

    /// Offers `module` (`input` → `expected`) at `rate` for `secs` after a second's
    /// warm-up, and measures it.
    fn measure(&self, module: &str, io: (&[u8], &[u8]), rate: u64, secs: u64) -> Measured {
        let (api, fleet, token) = (&self.api, &self.fleet, &self.token);
        let path = format!("/v1/jobs?module={module}&wait=10s");
        // Warm up: the module reaches every worker's cache, connections open.
        let _ = offer(&api.base, &path, token, io, rate.min(100), 1);
        let serve_cpu = cpu(api.pid());
        let worker_cpu: Duration = fleet.iter().map(|w| cpu(w.pid())).sum();
        let calls = redis_calls(&self.redis.url());
        let (mut latencies, right, elapsed) = offer(&api.base, &path, token, io, rate, secs);
        let serve_cpu = cpu(api.pid()) - serve_cpu;
        let worker_cpu = fleet.iter().map(|w| cpu(w.pid())).sum::<Duration>() - worker_cpu;
        let after = redis_calls(&self.redis.url());
        let mut by_command: Vec<(String, u64)> = after
            .iter()
            .map(|(name, n)| (name.clone(), n - calls.get(name).copied().unwrap_or(0)))
            .collect();
        by_command.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let calls: u64 = by_command.iter().map(|(_, n)| n).sum();
        latencies.sort();
        let n = latencies.len();
        let wrong = right.iter().filter(|&&r| !r).count();
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        let per = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e6 / n as f64);
        let row = format!(
            "| {module} | {:.0} | {} | {} | {} | {} | {wrong} | {} | {} | {:.1} |",
            n as f64 / elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 0.999)),
            ms(*latencies.last().unwrap()),
            per(serve_cpu),
            per(worker_cpu),
            calls as f64 / n as f64,
        );
        let top: Vec<String> = by_command
            .iter()
            .take(12)
            .map(|(name, c)| format!("{name} {:.1}", *c as f64 / n as f64))
            .collect();
        Measured {
            row,
            wrong,
            top: top.join(", "),
        }
    }
}

/// The 4 KiB text input and the uppercase guest's output for it.
fn four_k() -> (Vec<u8>, Vec<u8>) {
    let input: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let output = input.to_ascii_uppercase();
    (input, output)
}

/// The table's header, ten columns.
const HEADER: &str = "| module | requests/s | p50 ms | p99 ms | p99.9 ms | max ms | not 200 with the output | serve CPU µs/req | worker CPU µs/req | Redis commands/req |";

#[test]
fn the_bench_reports_every_column_and_counts_a_wrong_output() {
    let bench = Bench::start(1);
    let (input, output) = four_k();
    let right = bench.measure("upper", (&input, &output), 20, 1);
    let columns = |row: &str| row.trim_matches('|').split('|').count();
    assert_eq!(columns(&right.row), columns(HEADER), "{}", right.row);
    assert_eq!(right.wrong, 0, "{}", right.row);
    assert!(right.top.contains("evalsha"), "{}", right.top);
    // An answer whose output differs from the expected one is counted, so the bench
    // (which asserts none) fails.
    let wrong = bench.measure("upper", (&input, &input), 20, 1);
    assert_eq!(wrong.wrong, 20, "{}", wrong.row);
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture (or scripts/bench-wait)"]
fn interactive_path_latency_at_a_fixed_rate() {
    let rate = setting("WAIT_BENCH_RATE", 200);
    let secs = setting("WAIT_BENCH_SECS", 10);
    let workers = setting("WAIT_BENCH_WORKERS", 1);
    let bench = Bench::start(workers);
    let (input, output) = four_k();
    println!(
        "interactive path: {rate} requests/s offered for {secs} s, {workers} worker(s), {SENDERS} client threads; load before: {}",
        load()
    );
    println!("{HEADER}");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut wrong = 0;
    for (name, io) in [
        ("noop", (&b""[..], &b""[..])),
        ("upper", (&input[..], &output[..])),
    ] {
        let m = bench.measure(name, io, rate, secs);
        println!("{}", m.row);
        println!("  Redis commands per request, most first: {}", m.top);
        wrong += m.wrong;
    }
    let api = &bench.api;
    // How the answers were found: a healthy notice path wakes (nearly) every wait by
    // its notice and never fails a read.
    println!(
        "woken by notice {}, by lookup {}, follower read errors {}",
        api.metric("sluice_api_waits_woken_total{by=\"notice\"}"),
        api.metric("sluice_api_waits_woken_total{by=\"lookup\"}"),
        api.metric("sluice_api_wait_follower_errors_total"),
    );
    println!("load after: {}", load());
    assert_eq!(
        wrong, 0,
        "answers that were not a 200 with the exact output"
    );
}
