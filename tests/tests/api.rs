//! The HTTP API end to end: a real redis-server, a real `sluice serve` and real workers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{RedisServer, ServeProcess, WorkerProcess, guest, wait};

const ADMIN: &str = "admin-secret-for-tests";

struct Service {
    _redis: RedisServer,
    api: ServeProcess,
    _worker: Option<WorkerProcess>,
}

fn service(with_worker: bool) -> Service {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "api", ADMIN);
    let worker = with_worker.then(|| WorkerProcess::start(&redis.url(), "api", "w0", &[]));
    Service {
        _redis: redis,
        api,
        _worker: worker,
    }
}

impl Service {
    fn tenant(&self, name: &str, policy: Value) -> String {
        self.api.tenant(name, policy)
    }

    fn upload(&self, token: &str, module: &str, name: &str) -> String {
        let bytes = std::fs::read(guest(module)).unwrap();
        let reply = self.api.upload(token, &bytes, name);
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["hash"].as_str().unwrap().to_owned()
    }

    fn submit(&self, token: &str, query: &str, input: &[u8]) -> Value {
        let reply = self
            .api
            .call("POST", &format!("/v1/jobs?{query}"), Some(token), input);
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    /// The job `id` as `token`'s tenant sees it.
    fn job(&self, token: &str, id: &str) -> Value {
        self.api
            .call("GET", &format!("/v1/jobs/{id}"), Some(token), b"")
            .json()
    }

    /// Polls the job until it is done (the API offers no push; this is its contract).
    fn wait_done(&self, token: &str, id: &str) -> Value {
        wait::poll(
            &format!("job {id} not done"),
            Duration::from_secs(60),
            || self.job(token, id),
            |job| job["state"] == "done",
        )
    }
}

#[test]
fn upload_submit_poll_and_stream_output_for_wasi_and_raw_modules() {
    let s = service(true);
    let token = s.tenant("acme", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    let raw_hash = s.upload(&token, "upper_raw.wat", "upper-raw");

    let wasi = s.submit(&token, "module=upper", b"hello http\n");
    let raw = s.submit(&token, &format!("module={raw_hash}"), b"raw abi too\n");
    // Over the inline limit: streamed into a chunked blob on the way in and out.
    let big: Vec<u8> = b"abcdefghij"
        .iter()
        .copied()
        .cycle()
        .take(700 << 10)
        .collect();
    let large = s.submit(&token, "module=upper", &big);

    for (job, expected) in [
        (&wasi, b"HELLO HTTP\n".to_vec()),
        (&raw, b"RAW ABI TOO\n".to_vec()),
        (&large, big.to_ascii_uppercase()),
    ] {
        let id = job["id"].as_str().unwrap();
        let done = s.wait_done(&token, id);
        assert_eq!(done["result"]["outcome"], "success", "{done}");
        let output = s
            .api
            .call("GET", &format!("/v1/jobs/{id}/output"), Some(&token), b"");
        assert_eq!(output.status, 200);
        assert_eq!(output.body, expected);
    }
}

#[test]
fn batches_report_progress_by_outcome() {
    use base64::Engine;
    let s = service(true);
    let token = s.tenant("acme", json!({}));
    s.upload(&token, "csv2jsonl.wasm", "csv");
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let body = json!({
        "module": "csv",
        "inputs": [
            { "name": "good.csv", "data": encode(b"a,b\n1,2\n") },
            { "name": "bad.csv", "data": encode(b"a,b\n\"open\n") },
        ],
    });
    let reply = s.api.post_json("/v1/batches", &token, &body);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let batch = reply.json()["id"].as_str().unwrap().to_owned();
    let status = wait::poll(
        "batch not done",
        Duration::from_secs(60),
        || {
            s.api
                .call("GET", &format!("/v1/batches/{batch}"), Some(&token), b"")
                .json()
        },
        |status| status["done"] == 2,
    );
    assert_eq!(status["by_outcome"]["success"], 1);
    assert_eq!(status["by_outcome"]["non_zero_exit"], 1);
}

#[test]
fn tenants_see_only_their_own_jobs_and_bad_tokens_are_refused() {
    let s = service(false);
    let a = s.tenant("tenant-a", json!({}));
    let b = s.tenant("tenant-b", json!({}));
    s.upload(&a, "uppercase.wasm", "upper");
    let job = s.submit(&a, "module=upper", b"secret");
    let id = job["id"].as_str().unwrap();

    for (method, path) in [
        ("GET", format!("/v1/jobs/{id}")),
        ("GET", format!("/v1/jobs/{id}/output")),
        ("DELETE", format!("/v1/jobs/{id}")),
    ] {
        let reply = s.api.call(method, &path, Some(&b), b"");
        assert_eq!(reply.status, 404, "{method} {path} as another tenant");
        assert!(reply.json()["error"]["code"].is_string());
    }
    // B cannot use A's module alias either.
    assert_eq!(
        s.api
            .call("POST", "/v1/jobs?module=upper", Some(&b), b"x")
            .status,
        404
    );

    assert_eq!(
        s.api
            .call("GET", &format!("/v1/jobs/{id}"), None, b"")
            .status,
        401
    );
    assert_eq!(
        s.api
            .call("GET", &format!("/v1/jobs/{id}"), Some("slc_unknown"), b"")
            .status,
        401
    );
    // A tenant's valid token on an admin route is known but not allowed: 403.
    assert_eq!(
        s.api
            .call("POST", "/v1/admin/tenants", Some(&a), b"{}")
            .status,
        403
    );
    let revoked = s.api.call(
        "DELETE",
        "/v1/admin/tenants/tenant-a/tokens",
        Some(ADMIN),
        b"",
    );
    assert_eq!(revoked.status, 200);
    assert_eq!(
        s.api
            .call("GET", &format!("/v1/jobs/{id}"), Some(&a), b"")
            .status,
        401
    );
}

#[test]
fn requested_limits_are_clamped_to_the_policy_and_queued_jobs_cancel() {
    let s = service(false);
    let token = s.tenant(
        "small",
        json!({ "max_memory_bytes": 16 << 20, "max_timeout_ms": 2000, "max_output_bytes": 1024 }),
    );
    s.upload(&token, "uppercase.wasm", "upper");
    let job = s.submit(
        &token,
        "module=upper&memory=1GiB&timeout=1h&max_output=1GiB",
        b"x",
    );
    assert_eq!(job["limits"]["memory_bytes"], 16 << 20);
    assert_eq!(job["limits"]["timeout_ms"], 2000);
    assert_eq!(job["limits"]["max_output_bytes"], 1024);

    // No worker serves this queue: the job stays queued and can be cancelled once.
    let id = job["id"].as_str().unwrap();
    let state = s.job(&token, id);
    assert_eq!(state["state"], "queued");
    assert_eq!(
        s.api
            .call("DELETE", &format!("/v1/jobs/{id}"), Some(&token), b"")
            .status,
        200
    );
    let state = s.job(&token, id);
    assert_eq!(state["state"], "cancelled");
    assert_eq!(
        s.api
            .call("DELETE", &format!("/v1/jobs/{id}"), Some(&token), b"")
            .status,
        409
    );
}

#[test]
fn service_endpoints_answer() {
    let s = service(false);
    let openapi = s.api.call("GET", "/openapi.json", None, b"").json();
    assert!(openapi["paths"]["/v1/jobs"]["post"].is_object());
    assert_eq!(s.api.call("GET", "/healthz", None, b"").status, 200);
    assert_eq!(s.api.call("GET", "/readyz", None, b"").status, 200);
    let metrics = String::from_utf8(s.api.call("GET", "/metrics", None, b"").body).unwrap();
    assert!(metrics.contains("sluice_http_requests_total"), "{metrics}");
}

#[test]
fn a_one_gib_upload_streams_through_the_service() {
    let s = service(false);
    let token = s.tenant("big", json!({}));
    s.upload(&token, "uppercase.wasm", "upper");
    let input = vec![b'x'; 1 << 30];
    let job = s.submit(&token, "module=upper", &input);
    drop(input);
    assert!(job["id"].is_string());
    let peak_kib = s.api.peak_rss_kib();
    assert!(
        peak_kib < 256 << 10,
        "sluice serve peaked at {} MiB",
        peak_kib >> 10
    );
    eprintln!("1 GiB upload: sluice serve peak RSS {} MiB", peak_kib >> 10);
}

mod malformed {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    fn method() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"])
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/v1/jobs".to_owned()),
            Just("/v1/modules".to_owned()),
            Just("/v1/batches".to_owned()),
            Just("/v1/admin/tenants".to_owned()),
            "[a-zA-Z0-9%/._~-]{0,40}".prop_map(|p| format!("/v1/jobs/{p}")),
            "[a-zA-Z0-9%/._~-]{0,40}".prop_map(|p| format!("/v1/batches/{p}")),
            "[a-zA-Z0-9%=&_./-]{0,60}".prop_map(|q| format!("/v1/jobs?{q}")),
            "[a-z=&0-9%.-]{0,60}".prop_map(|q| format!("/v1/jobs?module=upper&{q}")),
            "[a-zA-Z0-9%/._~-]{0,40}".prop_map(|p| format!("/{p}")),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            Just(br#"{"module":"upper","inputs":[{"name":"a","data":"!!"}]}"#.to_vec()),
            Just(br#"{"module":"upper","inputs":[]}"#.to_vec()),
            Just(br#"{"name":"Bad Name"}"#.to_vec()),
            Just(b"\0asm\x01\0\0\0\x01\xff".to_vec()),
            Just(b"(module (func (export \"_start\") (unreachable)))".to_vec()),
        ]
    }

    /// Arbitrary methods, paths, queries, bodies and tokens: never a 5xx (the service
    /// and Redis are up, so nothing but a bug could be one).
    #[test]
    fn no_request_gets_a_server_error() {
        let s = service(false);
        let token = s.tenant("fuzz", json!({}));
        s.upload(&token, "uppercase.wasm", "upper");
        let mut runner = TestRunner::new(Config {
            cases: 300,
            ..Config::default()
        });
        let requests = (method(), path(), body(), any::<bool>(), any::<bool>());
        runner
            .run(&requests, |(method, path, body, with_token, admin)| {
                let token = match (with_token, admin) {
                    (false, _) => None,
                    (true, true) => Some(ADMIN),
                    (true, false) => Some(token.as_str()),
                };
                let reply = s.api.call(method, &path, token, &body);
                if reply.status >= 500 {
                    return Err(TestCaseError::fail(format!(
                        "{method} {path} → {}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    )));
                }
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn a_tenants_flood_does_not_starve_another_tenant() {
    use base64::Engine;
    let s = service(true);
    let flooder = s.tenant("flooder", json!({}));
    let modest = s.tenant("modest", json!({}));
    let bomb = std::fs::read(guest("infinite_loop.wat")).unwrap();
    let hash = {
        let reply = s.api.call("PUT", "/v1/modules", Some(&flooder), &bomb);
        reply.json()["hash"].as_str().unwrap().to_owned()
    };
    s.upload(&modest, "uppercase.wasm", "upper");
    let empty = base64::engine::general_purpose::STANDARD.encode(b"");
    let inputs: Vec<Value> = (0..5000)
        .map(|i| json!({ "name": format!("b{i}"), "data": empty }))
        .collect();
    let flood = json!({ "module": hash, "inputs": inputs, "limits": { "fuel": 2_000_000 } });
    let reply = s.api.post_json("/v1/batches", &flooder, &flood);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let flood_id = reply.json()["id"].as_str().unwrap().to_owned();

    let small: Vec<Value> = (0..50)
        .map(|i| json!({ "name": format!("m{i}"), "data": base64::engine::general_purpose::STANDARD.encode(b"hi") }))
        .collect();
    let reply = s.api.call(
        "POST",
        "/v1/batches",
        Some(&modest),
        json!({ "module": "upper", "inputs": small })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reply.status, 201);
    let small_id = reply.json()["id"].as_str().unwrap().to_owned();

    let mine = wait::poll(
        "the modest tenant's batch not done",
        Duration::from_secs(120),
        || {
            s.api
                .call(
                    "GET",
                    &format!("/v1/batches/{small_id}"),
                    Some(&modest),
                    b"",
                )
                .json()
        },
        |mine| mine["done"] == 50,
    );
    assert_eq!(mine["by_outcome"]["success"], 50);
    let theirs = s
        .api
        .call(
            "GET",
            &format!("/v1/batches/{flood_id}"),
            Some(&flooder),
            b"",
        )
        .json();
    let flood_done = theirs["done"].as_u64().unwrap();
    assert!(
        flood_done < 2500,
        "the modest tenant waited for {flood_done} of the flood"
    );
    eprintln!("modest tenant's 50 jobs done while the flood had finished {flood_done} of 5000");
}

#[test]
fn a_tenant_at_its_concurrency_limit_waits() {
    let s = service(true);
    let token = s.tenant("single", json!({ "max_concurrent_jobs": 1 }));
    let bomb = std::fs::read(guest("infinite_loop.wat")).unwrap();
    let reply = s.api.call("PUT", "/v1/modules", Some(&token), &bomb);
    let hash = reply.json()["hash"].as_str().unwrap().to_owned();
    let ids: Vec<String> = (0..6)
        .map(|_| {
            let job = s.submit(&token, &format!("module={hash}&fuel=20000000"), b"");
            job["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut most_running = 0;
    loop {
        let states: Vec<Value> = ids.iter().map(|id| s.job(&token, id)).collect();
        // The states are read one after another, so a job that finished between two
        // reads may show as running beside its successor. Two ran at once only if the
        // earlier one still runs when read again after the later one was seen running.
        let running: Vec<&String> = ids
            .iter()
            .zip(&states)
            .filter(|(_, j)| j["state"] == "running")
            .map(|(id, _)| id)
            .collect();
        if let Some((_last, earlier)) = running.split_last() {
            let still = earlier
                .iter()
                .filter(|id| s.job(&token, id)["state"] == "running")
                .count();
            most_running = most_running.max(1 + still);
        }
        if states.iter().all(|j| j["state"] == "done") {
            assert!(
                states
                    .iter()
                    .all(|j| j["result"]["outcome"] == "fuel_exhausted")
            );
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert!(
        most_running <= 1,
        "{most_running} jobs of a 1-job tenant ran at once"
    );
}

#[test]
fn cancelling_a_dispatched_job_frees_its_tenants_concurrency() {
    let mut s = service(false);
    let token = s.tenant("single", json!({ "max_concurrent_jobs": 1 }));
    s.upload(&token, "uppercase.wasm", "upper");
    let first = s.submit(&token, "module=upper", b"first");
    let first = first["id"].as_str().unwrap().to_owned();
    // No worker yet: the dispatcher moves the job to the shared stream (its tenant's
    // one place) and it waits there unclaimed. Cancelling it must give the place back.
    let record = format!("sluice:{{api}}:job:{first}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s._redis.cli(&["HGET", &record, "stream"]).trim() != "sluice:{api}:jobs" {
        assert!(
            Instant::now() < deadline,
            "the first job was never dispatched"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        s.api
            .call("DELETE", &format!("/v1/jobs/{first}"), Some(&token), b"")
            .status,
        200
    );
    let second = s.submit(&token, "module=upper", b"second");
    let second = second["id"].as_str().unwrap().to_owned();
    s._worker = Some(WorkerProcess::start(&s._redis.url(), "api", "late", &[]));
    let done = s.wait_done(&token, &second);
    assert_eq!(done["result"]["outcome"], "success");
}
