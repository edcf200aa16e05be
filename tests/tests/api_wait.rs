//! The interactive path, `POST /v1/jobs?wait=DURATION`, end to end: a real
//! redis-server, a real `sluice serve` and real workers. A job that finishes within
//! the wait answers with its output (200) or its failure (422); one that does not
//! answers 202 with its id; waits are capped (a longer one is a 400 naming the
//! maximum, too many waiting requests a 429 per tenant or a 503 in all), and a client
//! that goes away releases its waiter.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::serve::Reply;
use sluice_tests::{RedisServer, ServeProcess, WorkerProcess, guest, wait};

const ADMIN: &str = "admin-secret-for-tests";
const QUEUE: &str = "api";

/// How long a test waits for a waiter to register or go away.
const WITHIN: Duration = Duration::from_secs(30);

struct Service {
    redis: RedisServer,
    api: ServeProcess,
}

fn service(extra: &[&str]) -> Service {
    let redis = RedisServer::start();
    let api = ServeProcess::start_with(&redis.url(), QUEUE, ADMIN, extra);
    Service { redis, api }
}

impl Service {
    fn worker(&self, name: &str) -> WorkerProcess {
        WorkerProcess::start(&self.redis.url(), QUEUE, name, &[])
    }

    fn upload(&self, token: &str, module: &str, name: &str) {
        let bytes = std::fs::read(guest(module)).unwrap();
        let reply = self.api.upload(token, &bytes, name);
        assert_eq!(reply.status, 201, "{}", reply.text());
    }

    fn post(&self, token: &str, query: &str, input: &[u8]) -> Reply {
        self.api
            .call("POST", &format!("/v1/jobs?{query}"), Some(token), input)
    }

    fn waiters(&self) -> f64 {
        self.api.metric("sluice_api_waiters")
    }

    fn waits(&self, result: &str) -> f64 {
        self.api
            .metric(&format!("sluice_api_waits_total{{result=\"{result}\"}}"))
    }

    /// Answered waits whose finished job was found `by` its notice or a look-up.
    fn woken(&self, by: &str) -> f64 {
        self.api
            .metric(&format!("sluice_api_waits_woken_total{{by=\"{by}\"}}"))
    }

    fn follower_errors(&self) -> f64 {
        self.api.metric("sluice_api_wait_follower_errors_total")
    }

    /// Waits until `n` requests are waiting for their jobs.
    fn await_waiters(&self, n: f64) {
        wait::poll(
            &format!("waiting requests (want {n})"),
            WITHIN,
            || self.waiters(),
            |&w| w == n,
        );
    }

    fn job(&self, token: &str, id: &str) -> Value {
        self.api
            .call("GET", &format!("/v1/jobs/{id}"), Some(token), b"")
            .json()
    }
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[test]
fn a_job_that_finishes_in_time_answers_with_its_output_or_its_failure() {
    let s = service(&[]);
    let _worker = s.worker("w0");
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    s.upload(&token, "csv2jsonl.wasm", "csv");

    let reply = s.post(&token, "module=upper&wait=20s", b"hello, wait\n");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body, b"HELLO, WAIT\n");
    assert_eq!(header(&reply, "sluice-outcome"), "success");
    assert_eq!(header(&reply, "content-type"), "application/octet-stream");
    let id = header(&reply, "sluice-job-id").to_owned();
    assert_eq!(header(&reply, "location"), format!("/v1/jobs/{id}"));
    // The job is an ordinary job too.
    assert_eq!(s.job(&token, &id)["state"], "done");

    // An output past the inline limit comes back streamed from its blob.
    let big: Vec<u8> = b"abcdefghij"
        .iter()
        .copied()
        .cycle()
        .take(700 << 10)
        .collect();
    let reply = s.post(&token, "module=upper&wait=20000", &big);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.body == big.to_ascii_uppercase(),
        "the large output differs"
    );

    // A guest that fails: its failure, with its report line, and no output.
    let reply = s.post(&token, "module=csv&wait=20s", b"a,b\n\"open\n");
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.error_code(), "job_failed");
    assert_eq!(header(&reply, "sluice-outcome"), "non_zero_exit");
    let body = reply.json();
    assert_eq!(body["result"]["outcome"], "non_zero_exit", "{body}");
    assert_eq!(body["id"], header(&reply, "sluice-job-id"));
    // A failed job is not a refused submission.
    assert_eq!(
        s.api
            .metric("sluice_jobs_refused_total{reason=\"invalid\"}"),
        0.0
    );
    assert_eq!(s.waits("finished"), 3.0);
    assert_eq!(s.woken("notice") + s.woken("lookup"), 3.0);
    assert_eq!(s.follower_errors(), 0.0);
    assert_eq!(s.waiters(), 0.0);
}

#[test]
fn a_waiter_sits_through_a_quiet_queue_and_is_woken_by_its_notice() {
    let s = service(&[]);
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    std::thread::scope(|scope| {
        // No worker: the follower reads an empty notice stream, block after block.
        let waited = scope.spawn(|| s.post(&token, "module=upper&wait=25s", b"quiet\n"));
        s.await_waiters(1.0);
        // The quiet spell is what is tested (several of the follower's 1 s blocks with
        // no notice in them): no event marks "nothing happened", so it is slept.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(s.follower_errors(), 0.0, "the follower's reads failed");
        let _worker = s.worker("w0");
        let reply = waited.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.body, b"QUIET\n");
    });
    // Woken by its notice, not by the look-up at the end of the wait.
    assert_eq!(s.woken("notice"), 1.0);
    assert_eq!(s.woken("lookup"), 0.0);
    assert_eq!(s.follower_errors(), 0.0);
}

#[test]
fn sigterm_answers_waiting_requests_with_their_job_id_at_once() {
    let s = service(&[]);
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    std::thread::scope(|scope| {
        // No worker: the job cannot finish; the wait (25 s) outlasts the shutdown
        // grace (10 s), so only an answer at SIGTERM gives the client its job's id.
        let waited = scope.spawn(|| s.post(&token, "module=upper&wait=25s", b"bye\n"));
        s.await_waiters(1.0);
        let listed = wait::poll(
            "the waited-for job listed",
            WITHIN,
            || s.api.ok("GET", "/v1/jobs", Some(&token), b""),
            |jobs| jobs["items"].as_array().unwrap().len() == 1,
        );
        s.api.terminate();
        let reply = waited.join().unwrap();
        assert_eq!(reply.status, 202, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["state"], "pending");
        assert_eq!(body["id"], listed["items"][0]["id"], "{body} {listed}");
        assert_eq!(
            header(&reply, "sluice-job-id"),
            body["id"].as_str().unwrap()
        );
    });
}

#[test]
fn a_job_that_outlasts_the_wait_answers_202_and_finishes_later() {
    let s = service(&[]);
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    // No worker yet: the job cannot finish within the wait.
    let reply = s.post(&token, "module=upper&wait=300ms", b"later\n");
    assert_eq!(reply.status, 202, "{}", reply.text());
    let body = reply.json();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["state"], "pending");
    assert_eq!(header(&reply, "location"), format!("/v1/jobs/{id}"));
    assert_eq!(s.waits("pending"), 1.0);
    assert_eq!(s.waiters(), 0.0);

    let _worker = s.worker("w0");
    wait::poll(
        &format!("job {id} not done"),
        WITHIN,
        || s.job(&token, &id),
        |job| job["state"] == "done",
    );
    let output = s
        .api
        .call("GET", &format!("/v1/jobs/{id}/output"), Some(&token), b"");
    assert_eq!(output.body, b"LATER\n");
}

#[test]
fn a_wait_over_the_maximum_or_of_zero_is_refused_naming_the_rule() {
    let s = service(&["--max-wait", "5s"]);
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    let reply = s.post(&token, "module=upper&wait=6s", b"x");
    assert_eq!(reply.status, 400, "{}", reply.text());
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("at most 5s"), "{message}");
    for bad in ["wait=0", "wait=soon"] {
        let reply = s.post(&token, &format!("module=upper&{bad}"), b"x");
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
    }
    // Nothing was enqueued for the refused requests.
    let jobs = s.api.ok("GET", "/v1/jobs", Some(&token), b"");
    assert_eq!(jobs["items"].as_array().unwrap().len(), 0, "{jobs}");
}

#[test]
fn waiting_requests_are_capped_per_tenant_and_in_all() {
    let s = service(&["--max-waiters", "2", "--max-waiters-per-tenant", "1"]);
    let acme = s.api.tenant("acme", json!({}));
    let beta = s.api.tenant("beta", json!({}));
    let gamma = s.api.tenant("gamma", json!({}));
    for token in [&acme, &beta, &gamma] {
        s.upload(token, "uppercase.wasm", "upper");
    }
    std::thread::scope(|scope| {
        // No worker: these two wait, holding both places.
        let held_acme = scope.spawn(|| s.post(&acme, "module=upper&wait=25s", b"a\n"));
        s.await_waiters(1.0);
        let held_beta = scope.spawn(|| s.post(&beta, "module=upper&wait=25s", b"b\n"));
        s.await_waiters(2.0);

        let second = s.post(&acme, "module=upper&wait=5s", b"again\n");
        assert!(
            second.status == 429 || second.status == 503,
            "{}",
            second.text()
        );
        let over_all = s.post(&gamma, "module=upper&wait=5s", b"c\n");
        assert_eq!(over_all.status, 503, "{}", over_all.text());
        assert_eq!(over_all.error_code(), "too_many_waiters");
        assert!(over_all.headers.get("retry-after").is_some());
        // Without a wait a submission is not counted against the waiters.
        let plain = s.post(&gamma, "module=upper", b"plain\n");
        assert_eq!(plain.status, 201, "{}", plain.text());

        // A worker finishes the held jobs: both answer with their output.
        let _worker = s.worker("w0");
        let (a, b) = (held_acme.join().unwrap(), held_beta.join().unwrap());
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, &b"A\n"[..]),
            "{}",
            a.text()
        );
        assert_eq!(
            (b.status, b.body.as_slice()),
            (200, &b"B\n"[..]),
            "{}",
            b.text()
        );
    });
    s.await_waiters(0.0);
    assert_eq!(s.waits("refused"), 2.0);

    // Per tenant, with room in all: a tenant's second waiting request is a 429.
    let s = service(&["--max-waiters-per-tenant", "1"]);
    let acme = s.api.tenant("acme", json!({}));
    s.upload(&acme, "uppercase.wasm", "upper");
    std::thread::scope(|scope| {
        let held = scope.spawn(|| s.post(&acme, "module=upper&wait=25s", b"a\n"));
        s.await_waiters(1.0);
        let second = s.post(&acme, "module=upper&wait=5s", b"again\n");
        assert_eq!(second.status, 429, "{}", second.text());
        assert_eq!(second.error_code(), "busy");
        let _worker = s.worker("w0");
        assert_eq!(held.join().unwrap().status, 200);
    });
}

#[test]
fn a_job_behind_its_tenants_backlog_is_waited_for() {
    let s = service(&[]);
    let token = s.api.tenant("acme", json!({ "max_concurrent_jobs": 1 }));
    s.upload(&token, "uppercase.wasm", "upper");
    // No worker yet: the dispatcher admits one job to the stream, the rest wait in the
    // tenant's backlog, the waited-for job last.
    for i in 0..6 {
        let reply = s.post(&token, "module=upper", format!("job {i}\n").as_bytes());
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    std::thread::scope(|scope| {
        let waited = scope.spawn(|| s.post(&token, "module=upper&wait=25s", b"last in line\n"));
        s.await_waiters(1.0);
        // The jobs really wait in the backlog before any worker exists.
        wait::poll(
            "jobs waiting in the tenant's backlog",
            WITHIN,
            || {
                s.api.metric(&format!(
                    "sluice_queue_oldest_backlog_age_seconds{{queue=\"{QUEUE}\"}}"
                ))
            },
            |&age| age > 0.0,
        );
        let _worker = s.worker("w0");
        let reply = waited.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.body, b"LAST IN LINE\n");
    });
}

#[test]
fn a_client_that_goes_away_releases_its_waiter() {
    let s = service(&[]);
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    // No worker: the request waits until the client closes its connection.
    let mut stream = TcpStream::connect(&s.api.addr).unwrap();
    let body = b"bye\n";
    write!(
        stream,
        "POST /v1/jobs?module=upper&wait=25s HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    s.await_waiters(1.0);
    // Gone once the job is enqueued (a client gone before that leaves no job).
    wait::poll(
        "the waited-for job listed",
        WITHIN,
        || s.api.ok("GET", "/v1/jobs", Some(&token), b""),
        |jobs| jobs["items"].as_array().unwrap().len() == 1,
    );
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);
    s.await_waiters(0.0);
    assert_eq!(s.waits("abandoned"), 1.0);

    // The server still answers waits, and the abandoned job still runs.
    let _worker = s.worker("w0");
    let reply = s.post(&token, "module=upper&wait=20s", b"still here\n");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body, b"STILL HERE\n");
    wait::poll(
        "both jobs done",
        WITHIN,
        || s.api.ok("GET", "/v1/jobs", Some(&token), b""),
        |jobs| {
            let items = jobs["items"].as_array().unwrap();
            items.len() == 2 && items.iter().all(|j| j["state"] == "done")
        },
    );
}

#[test]
fn many_waiting_requests_each_get_their_own_jobs_output() {
    let s = service(&[]);
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    let n = 24;
    std::thread::scope(|scope| {
        // No worker yet: all of them wait at once, woken by the one follower.
        let waiting: Vec<_> = (0..n)
            .map(|i| {
                let s = &s;
                let token = &token;
                scope.spawn(move || {
                    (
                        i,
                        s.post(
                            token,
                            "module=upper&wait=25s",
                            format!("job {i}\n").as_bytes(),
                        ),
                    )
                })
            })
            .collect();
        s.await_waiters(n as f64);
        let _worker = s.worker("w0");
        for handle in waiting {
            let (i, reply) = handle.join().unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(reply.body, format!("JOB {i}\n").as_bytes());
        }
    });
    assert_eq!(s.waits("finished"), n as f64);
    assert_eq!(s.woken("notice") + s.woken("lookup"), n as f64);
    // Every waiter registered before the worker started, each job's notice wakes it (a
    // broken notice path would answer them all by the look-up at the wait's end).
    assert_eq!(s.woken("notice"), n as f64);
    assert_eq!(s.follower_errors(), 0.0);
    assert_eq!(s.waiters(), 0.0);
}

#[test]
fn an_upload_still_running_when_the_wait_runs_out_is_cut() {
    let s = service(&[]);
    let token = s.api.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    // The body promises 100 bytes and sends 10: the wait (1 s, shorter than the body
    // timeout) counts from the request's start, so the upload is cut when it ends.
    let mut stream = TcpStream::connect(&s.api.addr).unwrap();
    write!(
        stream,
        "POST /v1/jobs?module=upper&wait=1s HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("upload_outlasted_wait") {
        let n = stream
            .read(&mut buf)
            .expect("an answer before the body timeout");
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    s.await_waiters(0.0);
    assert_eq!(s.waits("failed"), 1.0);
    // No job was submitted.
    let jobs = s.api.ok("GET", "/v1/jobs", Some(&token), b"");
    assert_eq!(jobs["items"].as_array().unwrap().len(), 0, "{jobs}");
}
