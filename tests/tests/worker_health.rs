//! The worker's `/healthz` (liveness: the claim loop progresses) and `/readyz`
//! (readiness: Redis answers, not draining) on the real `sluice-worker serve` against a
//! real redis-server that is killed, restarted and frozen. (A claim loop wedged for
//! good cannot be provoked honestly from outside: every Redis call is bounded by a
//! timeout, so the liveness verdict past the bound is unit-tested with an injected
//! clock in `worker/src/health.rs`.)

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::Duration;

use sluice_shared::{Job, JobInput, OutcomeKind, Queue};
use sluice_tests::wait::{await_finished, poll};
use sluice_tests::{Fleet, WorkerProcess, guest};

/// How long a probe may take to turn after the event that turns it.
const TURN_WITHIN: Duration = Duration::from_secs(60);

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("127.0.0.1:{}", listener.local_addr().expect("addr").port())
}

/// `GET addr path`: the status and the body, or why there is none.
fn try_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut reply = sluice_tests::serve::agent()
        .get(&format!("http://{addr}{path}"))
        .call()
        .map_err(|e| format!("GET {addr}{path}: {e}"))?;
    let status = reply.status().as_u16();
    let body = reply
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {addr}{path}: body: {e}"))?;
    Ok((status, body))
}

/// As [`try_get`], for an endpoint that must answer now.
fn get(addr: &str, path: &str) -> (u16, String) {
    try_get(addr, path).unwrap_or_else(|e| panic!("{e}"))
}

/// A reading of one probe (status and body, or why it did not answer), printable for
/// the wait's failure message.
struct Probe(Result<(u16, String), String>);

impl Probe {
    fn status(&self) -> Option<u16> {
        self.0.as_ref().ok().map(|(s, _)| *s)
    }

    fn body(self) -> String {
        self.0.map_or_else(|e| e, |(_, b)| b)
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok((status, body)) => write!(f, "{status} {body}"),
            Err(error) => f.write_str(error),
        }
    }
}

/// Polls `path` until its status is `status`; returns the body.
fn await_status(addr: &str, path: &str, status: u16) -> String {
    poll(
        &format!("{path} turning {status}"),
        TURN_WITHIN,
        || Probe(try_get(addr, path)),
        |p| p.status() == Some(status),
    )
    .body()
}

/// The age of the last claim in a `/healthz` body (`ok (last claim 0.4s ago)`).
fn last_claim_age(body: &str) -> Option<f64> {
    body.strip_prefix("ok (last claim ")?
        .strip_suffix("s ago)")?
        .parse()
        .ok()
}

/// Starts a worker with its endpoint on a free port; returns it and the address once
/// the endpoint accepts connections.
fn worker_with_endpoint(fleet: &Fleet, consumer: &str, extra: &[&str]) -> (WorkerProcess, String) {
    let addr = free_addr();
    let mut flags = vec!["--metrics-addr", addr.as_str()];
    flags.extend_from_slice(extra);
    let worker = fleet.worker(consumer, &flags);
    poll(
        "the worker's endpoint accepting connections",
        TURN_WITHIN,
        || std::net::TcpStream::connect(&addr).is_ok(),
        |up| *up,
    );
    (worker, addr)
}

#[test]
fn readiness_follows_redis_while_liveness_stays_up() {
    let mut fleet = Fleet::start("health-redis");
    let (mut worker, addr) = worker_with_endpoint(&fleet, "w0", &[]);
    // An idle worker claims again and again (every claim wait, 0.5 s): the last
    // claim's age in /healthz keeps resetting, which a constant "ok" never shows.
    let live = poll(
        "/healthz showing a claim less than 1 s old",
        TURN_WITHIN,
        || Probe(try_get(&addr, "/healthz")),
        |p| matches!(&p.0, Ok((200, body)) if last_claim_age(body).is_some_and(|age| age < 1.0)),
    );
    assert!(live.body().starts_with("ok (last claim "));
    assert_eq!(get(&addr, "/readyz"), (200, "ready".to_owned()));

    fleet.redis.kill();
    let reason = await_status(&addr, "/readyz", 503);
    assert!(reason.contains("Redis unreachable"), "{reason}");
    assert!(
        !reason.contains("redis://") && !reason.contains("127.0.0.1"),
        "the reason names no URL: {reason}"
    );
    // Redis down is no reason to restart the worker: its claims fail and go on.
    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 200, "liveness during a Redis outage: {body}");

    fleet.redis.start_again();
    assert_eq!(await_status(&addr, "/readyz", 200), "ready");
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert!(worker.is_running());
    worker.terminate();
    assert!(worker.wait().success());
}

#[test]
fn a_draining_worker_is_not_ready_while_its_job_finishes() {
    let fleet = Fleet::start("health-drain");
    let Fleet { rt, queue, .. } = &fleet;
    let module = fleet.put_module(&std::fs::read(guest("infinite_loop.wat")).unwrap());
    let (mut worker, addr) = worker_with_endpoint(
        &fleet,
        "w0",
        &["--grace", "120s", "--lease", "60s", "--max-attempts", "1"],
    );
    // A job that runs until its 30 s deadline (long enough for /readyz to be read
    // under load), then is recorded (dead-lettered as `timeout`, one attempt allowed)
    // by the draining worker.
    let mut job = Job::new(module, JobInput::Inline(Vec::new()));
    job.limits.timeout_ms = 30_000;
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    rt.block_on(queue.enqueue(std::slice::from_ref(&job)))
        .unwrap();
    poll(
        "the job running on the worker",
        TURN_WITHIN,
        || get(&addr, "/metrics").1,
        |m| m.lines().any(|l| l == "sluice_jobs_running 1"),
    );

    worker.terminate();
    let reason = await_status(&addr, "/readyz", 503);
    assert!(reason.contains("draining"), "{reason}");
    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 200, "a draining worker is alive: {body}");

    // The job ran to its end on the draining worker (recorded, not released).
    let finished = rt.block_on(await_finished(
        queue,
        from,
        &HashSet::from([job.id]),
        Duration::from_secs(120),
    ));
    assert_eq!(finished[&job.id], OutcomeKind::Timeout);
    assert!(worker.wait().success(), "a drained worker exits 0");
    assert_eq!(rt.block_on(queue.stats()).unwrap().leased, 0);
}

/// A frozen Redis (SIGSTOP: connections accepted, nothing answered) makes every claim
/// wait for its response timeouts: the worker turns not ready, and its liveness, whose
/// bound covers a claim of timeouts, never fails meanwhile.
#[test]
fn a_frozen_redis_is_not_ready_but_never_a_restart() {
    let fleet = Fleet::start("health-frozen");
    let (mut worker, addr) = worker_with_endpoint(&fleet, "w0", &[]);
    assert_eq!(get(&addr, "/readyz").0, 200);
    let pid = fleet.redis.pid().expect("redis runs").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    // Liveness is read at every poll until readiness turns: it must hold throughout.
    let mut live_failures = Vec::new();
    let reason = poll(
        "/readyz turning 503 on a frozen Redis",
        Duration::from_secs(300),
        || {
            match try_get(&addr, "/healthz") {
                Ok((200, _)) => {}
                Ok((_, body)) => live_failures.push(body),
                Err(error) => live_failures.push(error),
            }
            Probe(try_get(&addr, "/readyz"))
        },
        |p| p.status() == Some(503),
    )
    .body();
    signal("-CONT");
    assert!(
        live_failures.is_empty(),
        "liveness failed while Redis was frozen: {live_failures:?}"
    );
    assert!(reason.contains("Redis unreachable"), "{reason}");
    assert_eq!(await_status(&addr, "/readyz", 200), "ready");
    worker.terminate();
    assert!(worker.wait().success());
}
