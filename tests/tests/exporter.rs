//! The queue-state metrics, scraped from a real `sluice exporter` and a real `sluice
//! serve` over a real redis-server holding a known mix: ready, leased, delayed and
//! dead jobs (two kinds), two tenants' backlogs submitted over the API, one of their
//! jobs admitted, a live worker. Every figure is asserted exactly; then the tenant
//! folding rule, a hostile tenant name in Redis, submissions refused by reason, and
//! what a scrape answers once Redis is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use sluice_shared::{Job, JobInput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::scaling::Exporter;
use sluice_tests::wait::poll;
use sluice_tests::{Fleet, ServeProcess, bin, guest};

const QUEUE: &str = "exp";
const ADMIN: &str = "admin-token";
const LONG: Duration = Duration::from_secs(3600);

/// The body of `GET http://<addr><path>` (asserting 200).
fn get(addr: &str, path: &str) -> String {
    let mut reply = sluice_tests::serve::agent()
        .get(&format!("http://{addr}{path}"))
        .call()
        .expect("HTTP round trip");
    assert_eq!(reply.status().as_u16(), 200, "GET {path}");
    reply.body_mut().read_to_string().expect("a text body")
}

/// Every sample of a text exposition: `name{labels}` → value. Fails on a line that is
/// not a comment or a well-formed sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "{line:?} twice"
        );
    }
    out
}

/// The queue-state figures of queue `exp` in `samples` that this test fixes, by series.
fn queue_figures(samples: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|(k, _)| {
            (k.starts_with("sluice_queue_") || k.starts_with("sluice_tenant_"))
                && !k.starts_with("sluice_queue_oldest_ready_age_seconds")
                && !k.starts_with("sluice_queue_oldest_backlog_age_seconds")
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn job(n: u8) -> Job {
    Job::new(ModuleHash::of(b"exporter"), JobInput::Inline(vec![n]))
}

fn result(claimed: &sluice_shared::Claimed, outcome: Outcome) -> JobResult {
    JobResult::without_run(claimed.lease.job_id.expect("a job id"), outcome, 1)
}

/// The figures the mix below must produce (queue `exp`, tenants folded at `max`).
fn expected(max_tenants: usize) -> BTreeMap<String, f64> {
    let q = |name: &str| format!("{name}{{queue=\"{QUEUE}\"}}");
    let mut e: BTreeMap<String, f64> = [
        (q("sluice_queue_ready_jobs"), 1.0),
        (q("sluice_queue_lag_entries"), 1.0),
        (q("sluice_queue_pending_entries"), 2.0),
        (q("sluice_queue_delayed_jobs"), 1.0),
        (q("sluice_queue_dead_letters"), 3.0),
        (q("sluice_queue_completed_total"), 2.0),
        (q("sluice_queue_retried_total"), 1.0),
        (q("sluice_queue_failed_total"), 3.0),
        (q("sluice_queue_workers"), 1.0),
        (q("sluice_queue_consumers"), 2.0),
        (q("sluice_queue_tenants_capped"), 0.0),
    ]
    .into_iter()
    .collect();
    for kind in sluice_shared::OutcomeKind::ALL {
        let n = match kind.as_str() {
            "trap" => 2.0,
            "fuel_exhausted" => 1.0,
            _ => 0.0,
        };
        e.insert(
            format!("sluice_queue_dead_lettered_total{{queue=\"{QUEUE}\",reason=\"{kind}\"}}"),
            n,
        );
    }
    let tenant = |name: &str, t: &str| format!("{name}{{queue=\"{QUEUE}\",tenant=\"{t}\"}}");
    if max_tenants >= 2 {
        e.insert(tenant("sluice_tenant_backlog_jobs", "alpha"), 2.0);
        e.insert(tenant("sluice_tenant_inflight_jobs", "alpha"), 1.0);
        e.insert(tenant("sluice_tenant_backlog_jobs", "beta"), 2.0);
        e.insert(tenant("sluice_tenant_inflight_jobs", "beta"), 0.0);
    } else {
        e.insert(tenant("sluice_tenant_backlog_jobs", "alpha"), 2.0);
        e.insert(tenant("sluice_tenant_inflight_jobs", "alpha"), 1.0);
        e.insert(tenant("sluice_tenant_backlog_jobs", "other"), 2.0);
        e.insert(tenant("sluice_tenant_inflight_jobs", "other"), 0.0);
    }
    e
}

#[test]
fn exporter_and_serve_report_the_queue_state_exactly() {
    let mut fleet = Fleet::start(QUEUE);
    fleet.redis.cli(&["CONFIG", "SET", "maxmemory", "67108864"]);
    // The test is the dispatcher (so nothing is admitted behind its back).
    fleet
        .rt
        .block_on(fleet.queue.admission().hold_dispatcher("test", LONG))
        .expect("hold the dispatcher role");
    let private = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("its address").to_string()
    };
    let serve =
        ServeProcess::start_with(&fleet.url(), QUEUE, ADMIN, &["--metrics-listen", &private]);

    // Two tenants' backlogs over the API: alpha 3 jobs, beta 2 (beta's third refused).
    let module = std::fs::read(guest("upper_raw.wat")).unwrap();
    let alpha = serve.tenant("alpha", json!({}));
    let beta = serve.tenant(
        "beta",
        json!({"max_backlog_jobs": 2, "max_input_bytes": 16}),
    );
    for token in [&alpha, &beta] {
        let reply = serve.upload(token, &module, "upper");
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    for (token, n) in [(&alpha, 3), (&beta, 2)] {
        for _ in 0..n {
            serve.ok("POST", "/v1/jobs?module=upper", Some(token), b"x");
        }
    }
    // Refusals, one of each reason the API can tell: quota, policy, invalid.
    let refused = [
        ("/v1/jobs?module=upper", &b"x"[..], 429),
        ("/v1/jobs?module=upper", &[b'x'; 64][..], 413),
        ("/v1/jobs?module=nope", &b"x"[..], 404),
    ];
    for (path, body, status) in refused {
        let reply = serve.call("POST", path, Some(&beta), body);
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
    }

    // One of alpha's jobs admitted (in flight), then 8 jobs straight onto the stream.
    let admitted = fleet
        .rt
        .block_on(fleet.queue.admission().dispatch("test", "alpha", 1))
        .expect("dispatch");
    assert_eq!(admitted.len(), 1);
    let jobs: Vec<Job> = (0..8).map(job).collect();
    fleet.rt.block_on(async {
        let q = &fleet.queue;
        q.enqueue(&jobs).await.unwrap();
        // w1 takes 7 of the 9 entries: 2 traps and 1 fuel bomb dead-lettered (3
        // failed), two successes stored, one put back for an hour, one held.
        let claimed = q.claim("w1", 7, LONG, LONG).await.unwrap();
        assert_eq!(claimed.len(), 7);
        let trap = || Outcome::Trap {
            code: "unreachable".into(),
            message: "test".into(),
        };
        q.dead_letter(&claimed[0].lease, result(&claimed[0], trap()))
            .await
            .unwrap();
        q.dead_letter(&claimed[1].lease, result(&claimed[1], trap()))
            .await
            .unwrap();
        q.dead_letter(
            &claimed[2].lease,
            result(&claimed[2], Outcome::FuelExhausted),
        )
        .await
        .unwrap();
        q.complete(&claimed[3].lease, result(&claimed[3], Outcome::Success))
            .await
            .unwrap();
        // Workers store only successes through `complete` (a failure is retried or
        // dead-lettered), so the test does too.
        q.complete(&claimed[4].lease, result(&claimed[4], Outcome::Success))
            .await
            .unwrap();
        let mut again = claimed[5].delivery.clone().expect("a job");
        again.attempt += 1;
        q.retry(&claimed[5].lease, &again, LONG).await.unwrap();
        // w2 holds one more; one entry stays ready.
        assert_eq!(q.claim("w2", 1, LONG, LONG).await.unwrap().len(), 1);
        q.admin().heartbeat("w1", LONG).await.unwrap();
        // `sluice status` reads the same counters.
        let status = q.admin().status().await.unwrap();
        assert_eq!(status.failed, 3);
        let dead = |kind| {
            status
                .dead_by_reason
                .iter()
                .find(|(k, _)| *k == kind)
                .unwrap()
                .1
        };
        assert_eq!(
            status.dead_by_reason.len(),
            sluice_shared::OutcomeKind::ALL.len()
        );
        assert_eq!(dead(sluice_shared::OutcomeKind::Trap), 2);
        assert_eq!(dead(sluice_shared::OutcomeKind::FuelExhausted), 1);
    });

    // The one ready entry is the last enqueued: the oldest age must be its age, not
    // that of any older entry (leased, or the admitted one before it).
    let jobs_key = fleet.queue.keys().jobs.clone();
    let ready_ms: f64 = {
        let last = fleet
            .redis
            .cli(&["XREVRANGE", &jobs_key, "+", "-", "COUNT", "1"]);
        let id = last.lines().next().expect("an entry").trim().to_owned();
        id.split('-').next().unwrap().parse().expect("an entry id")
    };
    let server_ms = || -> f64 {
        let time = fleet.redis.cli(&["TIME"]);
        let mut parts = time.lines().map(|l| l.trim().parse::<f64>().unwrap());
        parts.next().unwrap() * 1000.0 + (parts.next().unwrap() / 1000.0).floor()
    };
    // A read-only ACL user (read commands, INFO and TIME only) is all the exporter
    // needs: it creates nothing.
    fleet.redis.cli(&[
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@read",
        "+@connection",
        "+info",
        "+time",
        "+client",
    ]);
    let reader_url = fleet.url().replacen("redis://", "redis://reader:pw@", 1);
    let before = server_ms();
    let exporter = Exporter::start_with(&reader_url, &["--queue", QUEUE]);
    let scraped = samples(&get(&exporter.addr, "/metrics"));
    let after = server_ms();
    assert_eq!(queue_figures(&scraped), expected(20), "sluice exporter");
    assert_eq!(scraped["sluice_redis_maxmemory_bytes"], 67_108_864.0);
    assert!(scraped["sluice_redis_used_memory_bytes"] > 0.0);
    let age = format!("sluice_queue_oldest_ready_age_seconds{{queue=\"{QUEUE}\"}}");
    assert!(
        scraped[&age] * 1000.0 >= before - ready_ms - 1.0
            && scraped[&age] * 1000.0 <= after - ready_ms + 1.0,
        "oldest ready age {} s, entry {ready_ms} ms, server clock {before}..{after} ms",
        scraped[&age]
    );
    // The backlogs' oldest job: alpha's first submission, older than every entry.
    let backlog_age = format!("sluice_queue_oldest_backlog_age_seconds{{queue=\"{QUEUE}\"}}");
    assert!(
        scraped[&backlog_age] > scraped[&age] && scraped[&backlog_age] < 3600.0,
        "backlog {} s, ready {} s",
        scraped[&backlog_age],
        scraped[&age]
    );
    let success = format!("sluice_exporter_last_success_timestamp_seconds{{queue=\"{QUEUE}\"}}");
    assert!(
        (scraped[&success] * 1000.0 - after).abs() < 600_000.0,
        "{}",
        scraped[&success]
    );
    assert_eq!(scraped["sluice_exporter_scrape_errors_total"], 0.0);
    assert!(scraped.contains_key(&format!(
        "sluice_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    )));
    assert_eq!(get(&exporter.addr, "/healthz"), "ok");

    // The API port's public /metrics names no tenant: the queue's own figures only.
    let public = get(&serve.addr, "/metrics");
    for secret in ["alpha", "beta", "tenant="] {
        assert!(
            !public.contains(secret),
            "{secret} on the API port: {public}"
        );
    }
    let served = samples(&public);
    let untenanted: BTreeMap<String, f64> = expected(20)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("sluice_tenant_"))
        .collect();
    assert_eq!(queue_figures(&served), untenanted, "sluice serve, API port");
    // --metrics-listen serves every series, the tenants' included.
    let operators = samples(&get(&private, "/metrics"));
    assert_eq!(
        queue_figures(&operators),
        expected(20),
        "sluice serve --metrics-listen"
    );
    for (reason, n) in [
        ("quota", 1.0),
        ("policy", 1.0),
        ("invalid", 1.0),
        ("rate", 0.0),
    ] {
        assert_eq!(
            served[&format!("sluice_jobs_refused_total{{reason=\"{reason}\"}}")],
            n,
            "{reason}"
        );
    }
    assert!(served["sluice_dispatch_rounds_total"] > 0.0);
    assert!(served.contains_key("sluice_dispatch_round_duration_seconds_count"));
    assert_eq!(served["sluice_jobs_admitted_total"], 0.0);

    // Folding: with one name kept, beta is summed into `other`.
    let folded = Exporter::start_with(
        &fleet.url(),
        &["--queue", QUEUE, "--metrics-max-tenants", "1"],
    );
    assert_eq!(
        queue_figures(&samples(&get(&folded.addr, "/metrics"))),
        expected(1),
        "--metrics-max-tenants 1"
    );

    // A tenant name no API would accept, written into Redis directly, reaches no label.
    let hostile = "evil\"} 1\nsluice_injected{a=\"b\"} 7\n#";
    let admitted_key = fleet.queue.keys().admitted();
    fleet
        .redis
        .cli(&["HSET", &admitted_key, "not-a-job", hostile]);
    let text = poll(
        "the hostile tenant's job counted (cache expired)",
        Duration::from_secs(30),
        || get(&exporter.addr, "/metrics"),
        |text| text.contains("tenant=\"other\""),
    );
    assert!(
        !text.contains("evil") && !text.contains("injected"),
        "{text}"
    );
    let scraped = samples(&text);
    assert_eq!(
        scraped[&format!("sluice_tenant_inflight_jobs{{queue=\"{QUEUE}\",tenant=\"other\"}}")],
        1.0
    );
    fleet.redis.cli(&["HDEL", &admitted_key, "not-a-job"]);

    // The serve's dispatcher admits once the role is free: counted.
    fleet
        .rt
        .block_on(fleet.queue.admission().release_dispatcher("test"))
        .expect("release the dispatcher role");
    poll(
        "sluice serve's dispatcher admits a job",
        Duration::from_secs(30),
        || serve.metric("sluice_jobs_admitted_total"),
        |n| *n >= 1.0,
    );

    // An error reply other than "no such key" (NOPERM: TIME taken away) fails the read:
    // the error is counted and the figures stay; nothing reads as zero.
    fleet.redis.cli(&["ACL", "SETUSER", "reader", "-time"]);
    let text = poll(
        "a NOPERM read counted",
        Duration::from_secs(30),
        || get(&exporter.addr, "/metrics"),
        |text| samples(text)["sluice_exporter_scrape_errors_total"] >= 1.0,
    );
    let scraped = samples(&text);
    assert_eq!(
        scraped[&format!("sluice_queue_completed_total{{queue=\"{QUEUE}\"}}")],
        2.0
    );
    assert_eq!(
        scraped[&format!("sluice_queue_workers{{queue=\"{QUEUE}\"}}")],
        1.0
    );
    poll(
        "the NOPERM logged",
        Duration::from_secs(30),
        || exporter.stderr().to_lowercase(),
        |stderr| stderr.contains("noperm"),
    );
    fleet.redis.cli(&["ACL", "SETUSER", "reader", "+time"]);

    // Past the admitted cap (20,000 jobs), in-flight is not read: no series, not a 0.
    fleet.redis.cli(&[
        "EVAL",
        "for i = 1, 20001 do redis.call('HSET', KEYS[1], 'cap' .. i, 'alpha') end",
        "1",
        &admitted_key,
    ]);
    let text = poll(
        "the admitted cap reported",
        Duration::from_secs(30),
        || get(&folded.addr, "/metrics"),
        |text| samples(text)[&format!("sluice_queue_tenants_capped{{queue=\"{QUEUE}\"}}")] == 1.0,
    );
    assert!(!text.contains("sluice_tenant_inflight_jobs{"), "{text}");
    assert!(text.contains("sluice_tenant_backlog_jobs{"), "{text}");

    // Nil lag (the newest ready entry deleted: Redis no longer knows the lag) is
    // ordinary: no lag series, and ready is computed as length - pending. The serve's
    // dispatcher is stopped first so that nothing else changes the stream.
    serve.terminate();
    let ready_id = fleet
        .redis
        .cli(&["XREVRANGE", &jobs_key, "+", "-", "COUNT", "1"]);
    let ready_id = ready_id.lines().next().unwrap().trim().to_owned();
    fleet.redis.cli(&["XDEL", &jobs_key, &ready_id]);
    let text = poll(
        "the lag unknown",
        Duration::from_secs(30),
        || get(&folded.addr, "/metrics"),
        |text| !text.contains("sluice_queue_lag_entries{"),
    );
    let scraped = samples(&text);
    let len: f64 = fleet
        .redis
        .cli(&["XLEN", &jobs_key])
        .trim()
        .parse()
        .unwrap();
    let pending = scraped[&format!("sluice_queue_pending_entries{{queue=\"{QUEUE}\"}}")];
    assert_eq!(
        scraped[&format!("sluice_queue_ready_jobs{{queue=\"{QUEUE}\"}}")],
        len - pending
    );

    // Redis gone: /metrics still answers, the error counter rises, the figures stay.
    fleet.redis.kill();
    let text = poll(
        "a failed read counted",
        Duration::from_secs(60),
        || get(&exporter.addr, "/metrics"),
        |text| samples(text)["sluice_exporter_scrape_errors_total"] >= 1.0,
    );
    let scraped = samples(&text);
    assert_eq!(
        scraped[&format!("sluice_queue_dead_letters{{queue=\"{QUEUE}\"}}")],
        3.0,
        "the last figures are kept"
    );
}

#[test]
fn a_bad_listen_address_is_refused_with_status_2() {
    let out = bin("sluice")
        .args([
            "exporter",
            "--redis",
            "redis://127.0.0.1:1",
            "--listen",
            "nowhere",
        ])
        .output()
        .expect("run sluice exporter");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn an_unreachable_redis_is_retried_while_metrics_are_served() {
    // Redis down at start is not fatal: /metrics answers, every failed connect is
    // counted, the queue was never read (timestamp 0, no figures), and the log names
    // the server without its password.
    let exporter = Exporter::start_with("redis://user:hunter2@127.0.0.1:1", &[]);
    let text = poll(
        "failed connects counted",
        Duration::from_secs(30),
        || get(&exporter.addr, "/metrics"),
        |text| samples(text)["sluice_exporter_scrape_errors_total"] >= 2.0,
    );
    let scraped = samples(&text);
    assert_eq!(
        scraped["sluice_exporter_last_success_timestamp_seconds{queue=\"default\"}"],
        0.0
    );
    assert!(!text.contains("sluice_queue_ready_jobs{"), "{text}");
    let stderr = exporter.stderr();
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
