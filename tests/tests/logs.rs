//! Logs end to end: `--log-format json` makes a real `sluice-worker serve` write one
//! JSON object per line, and a job's lines carry its span (job id, tenant, module
//! hash; the outcome is on the `job finished` line); `sluice serve` logs its requests as JSON too.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use sluice_shared::{Job, JobInput, OutcomeKind, TenantId};
use sluice_tests::{Fleet, bin, serve, wait};

const TRAP_WAT: &str = r#"(module (func (export "_start") unreachable))"#;
const FINISH_WITHIN: Duration = Duration::from_secs(120);

/// A process whose stderr lines arrive on a channel; killed when dropped.
struct Logging {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Logging {
    fn spawn(mut command: std::process::Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the process");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[log] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Logging { child, lines }
    }

    /// Reads lines until one satisfies `found`; every line read must be a JSON object
    /// (`plain` excepted). Returns that line's object.
    fn until(&self, what: &str, plain: &[&str], found: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(FINISH_WITHIN)
                .unwrap_or_else(|e| panic!("no log line with {what}: {e}"));
            if plain.iter().any(|p| line.starts_with(p)) {
                continue;
            }
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line:?}"));
            assert!(value.is_object(), "{line}");
            if found(&value) {
                return value;
            }
        }
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

#[test]
fn a_worker_logs_json_lines_with_the_job_span() {
    let fleet = Fleet::start("jsonlogs");
    let trap = fleet.put_module(TRAP_WAT.as_bytes());
    let mut worker = bin("sluice-worker");
    worker
        .args(["--log-format", "json", "serve", "--redis", &fleet.url()])
        .args(["--queue", "jsonlogs", "--consumer", "json-1"])
        .env("RUST_LOG", "info");
    let worker = Logging::spawn(worker);
    let ready = worker.until("worker ready", &[], |l| message(l) == "worker ready");
    assert_eq!(ready["level"], "INFO");

    let mut job = Job::new(trap, JobInput::Inline(Vec::new()));
    job.tenant = TenantId("acme".into());
    let kinds = fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        std::slice::from_ref(&job),
        FINISH_WITHIN,
    ));
    assert_eq!(kinds[&job.id], OutcomeKind::Trap);

    let finished = worker.until("job finished", &[], |l| message(l) == "job finished");
    let span = &finished["span"];
    assert_eq!(span["name"], "job", "{finished}");
    assert_eq!(span["job"], job.id.to_string(), "{finished}");
    assert_eq!(span["tenant"], "acme", "{finished}");
    assert_eq!(span["module"], trap.to_string(), "{finished}");
    assert_eq!(finished["fields"]["outcome"], "trap", "{finished}");
    assert_eq!(
        finished["fields"]["disposition"], "dead_lettered",
        "{finished}"
    );
}

#[test]
fn the_log_format_comes_from_the_environment_and_a_bad_one_is_refused() {
    let out = bin("sluice-worker")
        .args(["serve", "--redis", "redis://127.0.0.1:1"])
        .env("SLUICE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("xml") && stderr.contains("json"),
        "{stderr}"
    );
    let out = bin("sluice")
        .args([
            "--log-format",
            "yaml",
            "status",
            "--redis",
            "redis://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Refused for the flag's value, not for anything else on the line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--log-format") && stderr.contains("yaml"),
        "{stderr}"
    );
}

#[test]
fn sluice_serve_logs_its_requests_as_json() {
    let fleet = Fleet::start("jsonserve");
    let mut command = bin("sluice");
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", &fleet.url()])
        .args(["--queue", "jsonserve"])
        .env("SLUICE_ADMIN_TOKEN", "admin-token-for-json-logs")
        .env("SLUICE_LOG_FORMAT", "json")
        .env_remove("RUST_LOG");
    let served = Logging::spawn(command);
    // The one plain line: where it listens (scripts and the test harness read it).
    let addr = loop {
        let line = served.lines.recv_timeout(FINISH_WITHIN).expect("listening");
        if let Some(addr) = line.strip_prefix("sluice serve: listening on ") {
            break addr.to_owned();
        }
        let value: Value = serde_json::from_str(&line).expect("a JSON log line");
        assert!(value.is_object());
    };
    let reply = serve::agent()
        .get(&format!("http://{addr}/v1/no-such-route"))
        .call()
        .unwrap();
    assert_eq!(reply.status(), 404);
    let request = served.until("the request's log line", &[], |l| {
        l.to_string().contains("unmatched")
    });
    assert!(request["level"].is_string(), "{request}");
}

#[test]
fn a_hostile_tenant_name_cannot_forge_text_log_lines() {
    let fleet = Fleet::start("textlogs");
    let trap = fleet.put_module(TRAP_WAT.as_bytes());
    let mut worker = bin("sluice-worker");
    worker
        .args(["--log-format", "text", "serve", "--redis", &fleet.url()])
        .args([
            "--queue",
            "textlogs",
            "--consumer",
            "text-1",
            "--max-attempts=1",
        ])
        .env("RUST_LOG", "info");
    let worker = Logging::spawn(worker);
    // Only a hand-made envelope carries such a name (the API refuses it).
    let mut job = Job::new(trap, JobInput::Inline(Vec::new()));
    job.tenant = TenantId("evil\nFORGED level=ERROR \u{1b}[31mred".into());
    let kinds = fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        std::slice::from_ref(&job),
        FINISH_WITHIN,
    ));
    assert_eq!(kinds.len(), 1);
    // Its run traps: its `job finished` line (at info) is in the job span naming it.
    let mut finished = false;
    while !finished {
        let line = worker
            .lines
            .recv_timeout(FINISH_WITHIN)
            .expect("the run's log lines");
        assert!(!line.starts_with("FORGED"), "a forged line: {line:?}");
        assert!(!line.contains('\u{1b}'), "an escape sequence: {line:?}");
        finished = line.contains("job finished");
        if finished {
            assert!(line.contains(r#"tenant="evil\nFORGED"#), "{line:?}");
        }
    }
}
