//! How `sluice` and `sluice-worker` fail, as a user meets them (issue 12, items 6, 7
//! and 10): a Redis password never shows in any message; a worker whose credentials
//! Redis refuses stops at start with its own exit status instead of retrying forever;
//! hitting the output cap is `output_limit` in embedded batches and in the fleet as in
//! `run`; a refused flag value names its flag and exits 2; a cause is said once.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use sluice_shared::{Job, JobInput, JobOutput, OutcomeKind};
use sluice_tests::batch::run_batch;
use sluice_tests::{Fleet, RedisServer, ServeProcess, bin, guest, wait};

/// `sluice-worker serve`: Redis refused the credentials.
const REDIS_REFUSED: i32 = 77;
/// A usage or configuration error (both binaries).
const USAGE: i32 = 2;
/// The password of the test's Redis, and the wrong one the commands are given.
const PASSWORD: &str = "s3cret-right";
const WRONG: &str = "hunter2-wrong";
/// Bounds a wait on a process that must exit by itself (a liveness bound, not a
/// timing assertion: the worker is expected to exit at once).
const EXIT_WITHIN: Duration = Duration::from_secs(120);
/// The API's admin token in these tests.
const ADMIN: &str = "admin-token-for-cli-errors";
/// How long a fleet job may take.
const FINISH_WITHIN: Duration = Duration::from_secs(120);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `command` to its end, failing the test if it is still running after
/// [`EXIT_WITHIN`] (it is then killed).
fn output_of(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(EXIT_WITHIN) {
        Ok(out) => out.expect("the command ran"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{command:?} still running after {EXIT_WITHIN:?}: it should have exited");
        }
    }
}

/// A redis-server that wants [`PASSWORD`].
fn server_with_password() -> RedisServer {
    let server = RedisServer::start();
    server.cli(&["CONFIG", "SET", "requirepass", PASSWORD]);
    server
}

#[test]
fn a_wrong_password_never_shows_and_the_worker_stops_at_once() {
    let server = server_with_password();
    let port = server.port();
    // Each URL with the status the worker exits with.
    let urls = [
        (format!("redis://:{WRONG}@127.0.0.1:{port}"), REDIS_REFUSED),
        (
            format!("redis://admin:{WRONG}@127.0.0.1:{port}/0"),
            REDIS_REFUSED,
        ),
        // A password with URL punctuation in it (unencoded, as people type them): the
        // URL does not parse, a configuration error.
        (format!("redis://admin:{WRONG}/x?y@127.0.0.1:{port}"), USAGE),
    ];
    for (url, worker_exit) in &urls {
        for args in [
            &["status"][..],
            &["dlq", "list"],
            &["result", "00000000-0000-4000-8000-000000000000"],
            &["tenant", "list"],
        ] {
            let mut command = bin("sluice");
            command.args(args).args(["--redis", url]);
            let out = output_of(command);
            let all = text(&out);
            assert_eq!(out.status.code(), Some(USAGE), "{args:?} {url}: {all}");
            assert!(!all.contains(WRONG), "{args:?}: password shown: {all}");
            assert!(all.contains("***"), "{args:?}: {all}");
        }

        let mut command = bin("sluice-worker");
        command.args(["serve", "--redis", url, "--queue", "auth"]);
        let out = output_of(command);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(*worker_exit), "{url}: {all}");
        assert!(!all.contains(WRONG), "password shown: {all}");
        if *worker_exit == REDIS_REFUSED {
            assert!(all.contains("refused the credentials"), "{all}");
        }
        assert!(!all.contains("worker ready"), "{all}");
    }

    // No password where one is required (NOAUTH) is refused credentials too.
    let mut command = bin("sluice-worker");
    command.args(["serve", "--redis", &server.url(), "--queue", "auth"]);
    let out = output_of(command);
    assert_eq!(out.status.code(), Some(REDIS_REFUSED), "{}", text(&out));

    // The right password still connects (the worker gets as far as being ready).
    let good = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let mut worker = bin("sluice-worker")
        .args(["serve", "--redis", &good, "--queue", "auth"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(worker.stderr.take().unwrap()));
    let ready = lines.find(|line| {
        line.as_ref()
            .map_or(true, |l| l.contains("worker ready") || l.contains("ERROR"))
    });
    let _ = worker.kill();
    let _ = worker.wait();
    let ready = ready.expect("a log line").expect("readable log");
    assert!(ready.contains("worker ready"), "{ready}");
    assert!(!ready.contains(PASSWORD), "{ready}");
}

fn report(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("report.jsonl"))
        .expect("report.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a report line is JSON"))
        .collect()
}

#[test]
fn an_embedded_batch_reports_the_output_cap_as_output_limit_and_names_argv0() {
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("a.txt"), "more than two bytes\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = run_batch(
        &["--max-output", "2"],
        "uppercase.wasm",
        inputs.path(),
        out.path(),
    );
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    let lines = report(out.path());
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["outcome"], "output_limit", "{lines:?}");

    let out = tempfile::tempdir().unwrap();
    let run = run_batch(&["--arg", "x"], "env_echo.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", text(&run));
    let echoed = std::fs::read_to_string(out.path().join("a.txt")).unwrap();
    assert!(
        echoed.starts_with("arg[0]=env_echo.wasm\narg[1]=x\n"),
        "{echoed}"
    );
}

#[test]
fn the_fleet_reports_the_output_cap_as_output_limit() {
    let fleet = Fleet::start("caps");
    let _worker = fleet.worker("w0", &[]);
    let upper = fleet.put_module(&std::fs::read(guest("uppercase.wasm")).unwrap());
    let mut over = Job::new(upper, JobInput::Inline(b"more than two bytes\n".to_vec()));
    over.limits.max_output_bytes = 2;
    let under = Job::new(upper, JobInput::Inline(b"fits\n".to_vec()));
    let finished = fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        &[over.clone(), under.clone()],
        FINISH_WITHIN,
    ));
    assert_eq!(finished[&over.id], OutcomeKind::OutputLimit, "{finished:?}");
    assert_eq!(finished[&under.id], OutcomeKind::Success, "{finished:?}");

    // A job that names its module by hash carries no name: argv[0] stays the hash
    // (one named by name gets the name: tests/tests/program_name.rs).
    let echo = fleet.put_module(&std::fs::read(guest("env_echo.wasm")).unwrap());
    let job = Job::new(echo, JobInput::Inline(Vec::new()));
    fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        std::slice::from_ref(&job),
        FINISH_WITHIN,
    ));
    let result = &fleet.rt.block_on(wait::results(&fleet.queue, [&job.id]))[0];
    let expected = format!("arg[0]={}\n", echo.to_hex());
    assert_eq!(
        result.output,
        JobOutput::Inline(expected.into_bytes()),
        "{result:?}"
    );
}

#[test]
fn refused_flag_values_name_their_flag_and_exit_2() {
    let inputs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--concurrency", "0"], "'--concurrency"),
        (&["--memory", "0"], "'--memory"),
        (&["--memory", "100GiB"], "4GiB"),
        (&["--timeout", "0s"], "'--timeout"),
        (
            &["--env", "SLUICE_TEST_NEVER_SET_EITHER"],
            "SLUICE_TEST_NEVER_SET_EITHER",
        ),
    ];
    for (flags, named) in cases {
        let run = run_batch(flags, "uppercase.wasm", inputs.path(), out.path());
        assert_eq!(run.status.code(), Some(USAGE), "{flags:?}: {}", text(&run));
        assert!(text(&run).contains(named), "{flags:?}: {}", text(&run));
    }
    // `submit` reads the same flags with the same parser (refused before connecting).
    let run = bin("sluice")
        .args(["submit", "--module", "m", "--memory", "0"])
        .args(["--redis", "redis://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(USAGE), "{}", text(&run));
    assert!(text(&run).contains("'--memory"), "{}", text(&run));
}

#[test]
fn a_missing_file_is_named_and_its_cause_said_once() {
    let inputs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = bin("sluice")
        .args(["batch", "--quiet", "--module", "/no/such/module.wasm"])
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let all = text(&run);
    assert_eq!(run.status.code(), Some(USAGE), "{all}");
    assert!(all.contains("/no/such/module.wasm"), "{all}");
    assert_eq!(all.matches("os error 2").count(), 1, "{all}");
}

#[test]
fn the_api_reads_limits_by_the_same_rules_and_units_as_the_cli() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "units", ADMIN);
    let token = api.tenant("units", serde_json::json!({}));
    let bytes = std::fs::read(guest("uppercase.wasm")).unwrap();
    assert_eq!(api.upload(&token, &bytes, "upper").status, 201);
    // A bare unit letter is binary, as on the command line.
    let reply = api.call(
        "POST",
        "/v1/jobs?module=upper&memory=8M&max_output=1K",
        Some(&token),
        b"x",
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["limits"]["memory_bytes"], 8 << 20);
    assert_eq!(reply.json()["limits"]["max_output_bytes"], 1024);
    // What the flags refuse, the API refuses, with the same words.
    for (query, says) in [
        ("memory=0", "memory: must be more than 0"),
        ("memory=100GiB", "ceiling of 4GiB"),
        ("timeout=0s", "timeout: must be more than 0"),
        ("fuel=0", "fuel: must be more than 0"),
    ] {
        let reply = api.call(
            "POST",
            &format!("/v1/jobs?module=upper&{query}"),
            Some(&token),
            b"x",
        );
        assert_eq!(reply.status, 400, "{query}: {}", reply.text());
        assert!(reply.text().contains(says), "{query}: {}", reply.text());
    }
}
