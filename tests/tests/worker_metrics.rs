//! The worker's metrics end to end: a real `sluice-worker serve` over a real
//! redis-server runs a batch of successes, a trap and a fuel bomb for three tenants,
//! and its `/metrics` counts them exactly: by tenant and outcome with the tenants past
//! `--metrics-max-tenants` folded into `other`, one queue wait per first delivery, the slots
//! it was given. A tenant name no tenant could register (quotes, a newline, a fake
//! sample) reaches the worker in an envelope and leaves the exposition well formed.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use sluice_shared::{Job, JobInput, ModuleHash, OutcomeKind, Queue, TenantId};
use sluice_tests::{Fleet, WorkerProcess, serve, wait};

const SUCCEED_WAT: &str = r#"(module (func (export "_start")))"#;
const TRAP_WAT: &str = r#"(module (func (export "_start") unreachable))"#;
const SPIN_WAT: &str = r#"(module (func (export "_start") (loop $l (br $l))))"#;

const FINISH_WITHIN: Duration = Duration::from_secs(120);
/// Fuel a fuel bomb gets (exhausted within milliseconds).
const BOMB_FUEL: u64 = 200_000;

/// A free local port for a worker's /metrics.
fn metrics_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A worker with its own /metrics endpoint.
struct MeteredWorker {
    process: WorkerProcess,
    metrics: String,
}

impl MeteredWorker {
    fn start(fleet: &Fleet, name: &str, extra: &[&str]) -> Self {
        let metrics = metrics_addr();
        let mut args = vec![format!("--metrics-addr={metrics}")];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        MeteredWorker {
            process: fleet.worker(name, &args),
            metrics,
        }
    }

    fn scrape(&self) -> String {
        let mut reply = serve::agent()
            .get(&format!("http://{}/metrics", self.metrics))
            .call()
            .expect("read the worker's /metrics");
        reply.body_mut().read_to_string().unwrap()
    }

    /// Every sample (series with its labels → value).
    fn samples(&self) -> HashMap<String, f64> {
        parse_exposition(&self.scrape())
    }
}

/// Parses the text exposition strictly: every line is a `# HELP`/`# TYPE` comment or a
/// sample `name{label="value",…} number` with only `\\`, `\"` and `\n` escaped in label
/// values. Panics on anything else (a label value that broke out of its quotes).
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or_else(|| panic!("no value in line {line:?}"));
        assert!(name_end > 0, "no metric name in line {line:?}");
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            let mut chars = labels.char_indices();
            let end = loop {
                // label name
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed {line:?}"));
                if c == '}' {
                    break i;
                }
                let mut c = c;
                while c.is_ascii_alphanumeric() || c == '_' {
                    c = chars.next().expect("label name").1;
                }
                assert_eq!(c, '=', "label without = in {line:?}");
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "unquoted {line:?}");
                loop {
                    match chars.next().map(|x| x.1) {
                        Some('\\') => {
                            let escaped = chars.next().map(|x| x.1);
                            assert!(
                                matches!(escaped, Some('\\' | '"' | 'n')),
                                "bad escape in {line:?}"
                            );
                        }
                        Some('"') => break,
                        Some(_) => {}
                        None => panic!("unterminated label value in {line:?}"),
                    }
                }
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => break i,
                    other => panic!("unexpected {other:?} after a label in {line:?}"),
                }
            };
            rest = &labels[end + 1..];
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value is not a number in {line:?}"));
        samples.insert(line[..line.len() - rest.len()].to_owned(), value);
    }
    samples
}

fn tenant_jobs(samples: &HashMap<String, f64>, tenant: &str, outcome: OutcomeKind) -> f64 {
    let series = format!(
        "sluice_tenant_jobs_total{{outcome=\"{}\",tenant=\"{tenant}\"}}",
        outcome.as_str()
    );
    *samples
        .get(&series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

fn job(module: ModuleHash, tenant: &str) -> Job {
    let mut job = Job::new(module, JobInput::Inline(Vec::new()));
    job.tenant = TenantId(tenant.to_owned());
    job
}

/// Waits until the worker has recorded `n` finished runs: a job's completion notice
/// is published before the worker counts it.
fn await_counted(worker: &MeteredWorker, n: f64) -> HashMap<String, f64> {
    wait::poll(
        "the worker's runs counted in sluice_jobs_total",
        FINISH_WITHIN,
        || {
            worker
                .samples()
                .iter()
                .filter(|(k, _)| k.starts_with("sluice_jobs_total{"))
                .map(|(_, v)| v)
                .sum::<f64>()
        },
        |runs| *runs >= n,
    );
    // Slots are given back after the run is counted.
    wait::poll(
        "every slot free again",
        FINISH_WITHIN,
        || worker.samples()["sluice_worker_slots_busy"],
        |busy| *busy == 0.0,
    );
    worker.samples()
}

#[test]
fn a_batch_is_counted_by_tenant_and_outcome_with_later_tenants_folded() {
    let fleet = Fleet::start("wmetrics");
    let succeed = fleet.put_module(SUCCEED_WAT.as_bytes());
    let trap = fleet.put_module(TRAP_WAT.as_bytes());
    let spin = fleet.put_module(SPIN_WAT.as_bytes());
    let worker = MeteredWorker::start(
        &fleet,
        "wm-1",
        &["--concurrency=3", "--metrics-max-tenants=1"],
    );
    let before = worker.samples();
    assert_eq!(before["sluice_worker_slots"], 3.0);
    assert_eq!(before["sluice_worker_slots_busy"], 0.0);
    assert_eq!(
        before[&format!(
            "sluice_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );

    // `alpha` is seen first and keeps its name; `beta` and `gamma` come after the
    // bound of one and are summed as `other`.
    let first: Vec<Job> = (0..3).map(|_| job(succeed, "alpha")).collect();
    let kinds = fleet
        .rt
        .block_on(wait::enqueue_and_await(&fleet.queue, &first, FINISH_WITHIN));
    assert!(
        kinds.values().all(|k| *k == OutcomeKind::Success),
        "{kinds:?}"
    );
    let mut bomb = job(spin, "beta");
    bomb.limits.fuel = Some(BOMB_FUEL);
    let rest = vec![
        job(trap, "beta"),
        bomb,
        job(succeed, "gamma"),
        job(succeed, "gamma"),
    ];
    let kinds = fleet
        .rt
        .block_on(wait::enqueue_and_await(&fleet.queue, &rest, FINISH_WITHIN));
    let mut seen: Vec<OutcomeKind> = kinds.values().copied().collect();
    seen.sort_by_key(|k| k.as_str());
    assert_eq!(
        seen,
        [
            OutcomeKind::FuelExhausted,
            OutcomeKind::Success,
            OutcomeKind::Success,
            OutcomeKind::Trap
        ]
    );

    let samples = await_counted(&worker, 7.0);
    assert_eq!(tenant_jobs(&samples, "alpha", OutcomeKind::Success), 3.0);
    assert_eq!(tenant_jobs(&samples, "alpha", OutcomeKind::Trap), 0.0);
    assert_eq!(tenant_jobs(&samples, "other", OutcomeKind::Success), 2.0);
    assert_eq!(tenant_jobs(&samples, "other", OutcomeKind::Trap), 1.0);
    assert_eq!(
        tenant_jobs(&samples, "other", OutcomeKind::FuelExhausted),
        1.0
    );
    let tenant_total: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("sluice_tenant_jobs_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(tenant_total, 7.0);
    for folded in ["beta", "gamma"] {
        assert!(
            !samples.keys().any(|k| k.contains(&format!("\"{folded}\""))),
            "{folded} has its own series past the bound"
        );
    }
    // Fuel: only the bomb was metered; all of it is the folded tenants'.
    let fuel = samples["sluice_job_fuel_consumed_total"];
    assert!(fuel > 0.0 && fuel <= BOMB_FUEL as f64, "{fuel}");
    assert_eq!(
        samples["sluice_tenant_fuel_consumed_total{tenant=\"other\"}"],
        fuel
    );
    assert_eq!(
        samples["sluice_tenant_fuel_consumed_total{tenant=\"alpha\"}"],
        0.0
    );
    assert!(samples["sluice_tenant_run_seconds_total{tenant=\"alpha\"}"] > 0.0);
    // One queue wait per job run; claims timed; fresh entries, no takeover.
    assert_eq!(samples["sluice_job_queue_wait_seconds_count"], 7.0);
    assert!(samples["sluice_claim_duration_seconds_count"] >= 2.0);
    assert_eq!(samples["sluice_lease_takeovers_total"], 0.0);
    assert_eq!(samples["sluice_redis_reconnects_total"], 0.0);
    assert_eq!(samples["sluice_worker_slots"], 3.0);
}

#[test]
fn a_hostile_tenant_name_in_an_envelope_leaves_the_exposition_well_formed() {
    let fleet = Fleet::start("wmhostile");
    let succeed = fleet.put_module(SUCCEED_WAT.as_bytes());
    // One attempt: the policy of an impossible tenant cannot be read (host_error).
    let worker = MeteredWorker::start(&fleet, "wm-h", &["--max-attempts=1"]);
    let hostile = "evil\"} 1\nsluice_forged_total 9\n# \\";
    let jobs = vec![job(succeed, hostile), job(succeed, "fine")];
    let kinds = fleet
        .rt
        .block_on(wait::enqueue_and_await(&fleet.queue, &jobs, FINISH_WITHIN));
    assert_eq!(kinds.len(), 2);
    let samples = await_counted(&worker, 2.0);
    let text = worker.scrape();
    assert!(!text.contains("evil"), "{text}");
    assert!(!samples.keys().any(|k| k.starts_with("sluice_forged")));
    let hostile_kind = kinds[&jobs[0].id];
    assert_eq!(tenant_jobs(&samples, "other", hostile_kind), 1.0);
    assert_eq!(tenant_jobs(&samples, "fine", OutcomeKind::Success), 1.0);
}

#[test]
fn the_exposition_parser_refuses_a_broken_label() {
    // The check above must be able to fail.
    let broken = "sluice_x{tenant=\"a\"} 1\"} 1\n";
    assert!(std::panic::catch_unwind(|| parse_exposition(broken)).is_err());
    let fine = "# HELP a b\nsluice_x{tenant=\"a\\\"\\n\",outcome=\"t\"} 1\n";
    assert_eq!(parse_exposition(fine).len(), 1);
}

#[test]
fn a_takeover_renewals_and_a_redis_restart_are_counted() {
    let mut fleet = Fleet::start("wmlease");
    let spin = fleet.put_module(SPIN_WAT.as_bytes());
    let mut first = MeteredWorker::start(&fleet, "wm-a", &["--concurrency=1"]);
    let mut spinner = job(spin, "acme");
    // Long enough that the first worker cannot finish it (as a timeout) between the
    // scrape that sees it busy and the kill, however loaded the machine.
    spinner.limits.timeout_ms = 10_000;
    let from = fleet
        .rt
        .block_on(fleet.queue.results().notices_from_now())
        .unwrap();
    fleet
        .rt
        .block_on(fleet.queue.enqueue(std::slice::from_ref(&spinner)))
        .unwrap();
    wait::poll(
        "the first worker holds the job",
        FINISH_WITHIN,
        || first.samples()["sluice_worker_slots_busy"],
        |busy| *busy == 1.0,
    );
    first.process.kill();

    // Its lease (30 s) is not the second worker's business: a claim takes over
    // entries idle longer than the claimer's own lease, here 1 s, renewed every third.
    let second = MeteredWorker::start(&fleet, "wm-b", &["--lease=1s", "--max-attempts=2"]);
    let ids = std::iter::once(spinner.id).collect();
    let kinds = fleet.rt.block_on(wait::await_finished(
        &fleet.queue,
        from,
        &ids,
        FINISH_WITHIN,
    ));
    assert_eq!(kinds[&spinner.id], OutcomeKind::Timeout);
    let samples = await_counted(&second, 1.0);
    assert_eq!(samples["sluice_lease_takeovers_total"], 1.0);
    // The entry waited in the queue before its first delivery, not again on a takeover.
    assert_eq!(samples["sluice_job_queue_wait_seconds_count"], 0.0);
    // The run lasted its 10 s timeout; renewals go every third of the lease.
    assert!(samples["sluice_lease_renewals_total"] >= 1.0, "{samples:?}");
    assert_eq!(samples["sluice_redis_reconnects_total"], 0.0);

    // Redis goes away: claims fail (logged and counted), then come back.
    const CLAIM_ERRORS: &str = "sluice_queue_errors_total{op=\"claim\"}";
    let errors = samples[CLAIM_ERRORS];
    fleet.redis.kill();
    wait::poll(
        "a failed claim counted",
        FINISH_WITHIN,
        || second.samples()[CLAIM_ERRORS],
        |n| *n > errors,
    );
    fleet.redis.start_again();
    wait::poll(
        "the connection back, counted",
        FINISH_WITHIN,
        || second.samples()["sluice_redis_reconnects_total"],
        |n| *n >= 1.0,
    );
}
