//! The HTTP API as clients expect it, end to end against a real redis-server and a real
//! `sluice serve`: list routes and their cursors, paginated batches, `Location` on
//! every 201, 401 against 403, JSON on every error (405 and unknown routes included),
//! PATCH and the one unit convention, a cancelled job's output, a retrying job's
//! attempts, the request log, and the OpenAPI document against the live router.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{RedisServer, ServeProcess, WorkerProcess, guest, repo_root, wait};

const ADMIN: &str = "admin-secret-for-list-tests";

fn serve() -> (RedisServer, ServeProcess) {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "lists", ADMIN);
    (redis, api)
}

fn upload(api: &ServeProcess, token: &str, module: &str, name: &str) -> String {
    let bytes = std::fs::read(guest(module)).unwrap();
    let reply = api.upload(token, &bytes, name);
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["hash"].as_str().unwrap().to_owned()
}

/// Posts a batch of `n` small inputs; returns the batch id and the job ids in order.
fn batch(api: &ServeProcess, token: &str, module: &str, n: usize) -> (String, Vec<String>) {
    let inputs: Vec<Value> = (0..n)
        .map(|i| json!({ "name": format!("in-{i}"), "data": "" }))
        .collect();
    let reply = api.post_json(
        "/v1/batches",
        token,
        &json!({ "module": module, "inputs": inputs }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let body = reply.json();
    let ids = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    (body["id"].as_str().unwrap().to_owned(), ids)
}

/// Walks a list route page by page (`limit` per page), returning every page's items
/// in order; asserts no page is larger than `limit`.
fn walk(api: &ServeProcess, token: &str, path: &str, limit: usize, key: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = api.ok("GET", &url, Some(token), b"");
        let got = page[key].as_array().unwrap_or_else(|| panic!("{page}"));
        assert!(got.len() <= limit, "{url}: {} items", got.len());
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
    panic!("{path}: the cursor never ended");
}

fn ids_of(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[field].as_str().unwrap().to_owned())
        .collect()
}

/// Every id exactly once: no duplicate, and the same set as `expected`.
fn exactly_once(listed: &[String], expected: &[String]) {
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "an item listed twice");
    let wanted: HashSet<&String> = expected.iter().collect();
    assert_eq!(unique, wanted);
}

#[test]
fn lists_page_through_every_item_exactly_once_and_cap_the_limit() {
    let (_redis, api) = serve();
    let token = api.tenant("acme", json!({}));
    let other = api.tenant("other", json!({}));
    let upper = upload(&api, &token, "uppercase.wasm", "upper");
    let csv = upload(&api, &token, "csv2jsonl.wasm", "csv");
    upload(&api, &other, "uppercase.wasm", "theirs");

    // Single jobs, each answered with its Location.
    let mut singles = Vec::new();
    for i in 0..7 {
        let reply = api.call(
            "POST",
            "/v1/jobs?module=upper",
            Some(&token),
            format!("input {i}").as_bytes(),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(reply.headers["location"], format!("/v1/jobs/{id}"));
        singles.push(id);
    }
    // More jobs than one page can ever hold, in one batch.
    let (big, big_jobs) = batch(&api, &token, "upper", 1005);
    let (small, small_jobs) = batch(&api, &token, "csv", 3);
    let (_, theirs) = batch(&api, &other, "theirs", 2);

    let mut all: Vec<String> = singles.clone();
    all.extend(big_jobs.iter().cloned());
    all.extend(small_jobs.iter().cloned());

    // A limit over 1000 is capped at 1000, and a next page follows.
    let capped = api.ok("GET", "/v1/jobs?limit=100000", Some(&token), b"");
    assert_eq!(capped["items"].as_array().unwrap().len(), 1000);
    assert!(capped["next_cursor"].is_string());
    // Without a limit, 100.
    let default = api.ok("GET", "/v1/jobs", Some(&token), b"");
    assert_eq!(default["items"].as_array().unwrap().len(), 100);

    for limit in [1000, 333, 7] {
        let listed = ids_of(&walk(&api, &token, "/v1/jobs", limit, "items"), "id");
        exactly_once(&listed, &all);
        // Newest first: the last single job submitted came before every batch job,
        // so it is listed after them; the small batch is the newest.
        assert!(small_jobs.contains(&listed[0]), "{}", listed[0]);
    }
    // The other tenant sees only its own.
    let listed = ids_of(&walk(&api, &other, "/v1/jobs", 10, "items"), "id");
    exactly_once(&listed, &theirs);

    // Batches: both, newest first, one per page.
    let batches = walk(&api, &token, "/v1/batches", 1, "items");
    assert_eq!(ids_of(&batches, "id"), vec![small.clone(), big.clone()]);
    assert_eq!(batches[1]["total"], 1005);

    // A batch's jobs page in submission order; its counts are whole on every page.
    let mut cursor: Option<String> = None;
    let mut paged = Vec::new();
    loop {
        let mut url = format!("/v1/batches/{big}?limit=300");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = api.ok("GET", &url, Some(&token), b"");
        assert_eq!(page["total"], 1005, "{url}");
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 300);
        paged.extend(ids_of(jobs, "id"));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, big_jobs);
    let whole = api.ok("GET", &format!("/v1/batches/{big}"), Some(&token), b"");
    assert_eq!(whole["jobs"].as_array().unwrap().len(), 100);

    // Modules: both of the tenant's, by hash, and nothing of the other tenant's.
    let modules = ids_of(&walk(&api, &token, "/v1/modules", 1, "items"), "hash");
    let mut expected = vec![upper.clone(), csv];
    expected.sort();
    assert_eq!(modules, expected);
    let one = api.ok("GET", "/v1/modules/upper", Some(&token), b"");
    assert_eq!(one["hash"], upper.as_str());
    assert_eq!(
        api.call("GET", "/v1/modules/theirs", Some(&token), b"")
            .status,
        404
    );

    // Tenants (admin): every one, by name.
    for name in ["t-c", "t-a", "t-b"] {
        api.tenant(name, json!({}));
    }
    let tenants = ids_of(
        &walk(&api, ADMIN, "/v1/admin/tenants", 2, "items"),
        "tenant",
    );
    assert_eq!(tenants, vec!["acme", "other", "t-a", "t-b", "t-c"]);
}

#[test]
fn hostile_cursors_and_limits_are_400s_with_json_bodies() {
    use base64::Engine;
    let (_redis, api) = serve();
    let token = api.tenant("acme", json!({}));
    upload(&api, &token, "uppercase.wasm", "upper");
    let (batch_id, _) = batch(&api, &token, "upper", 3);
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let module_cursor = b64(&format!("c1:{}", "0".repeat(64)));
    let long = "A".repeat(10_000);
    let hostile = [
        "garbage!".to_owned(),
        b64("c1:../../etc"),
        b64("no-prefix"),
        b64("c1:not-a-uuid"),
        long,
        "%00%ff".to_owned(),
        module_cursor.clone(),
    ];
    for path in ["/v1/jobs", "/v1/batches", "/v1/modules"] {
        for cursor in &hostile {
            if path == "/v1/modules" && cursor == &module_cursor {
                continue; // That one is a well-formed module cursor.
            }
            let reply = api.call("GET", &format!("{path}?cursor={cursor}"), Some(&token), b"");
            assert_eq!(reply.status, 400, "{path} cursor {:.40}", cursor);
            assert_eq!(reply.error_code(), "bad_request");
        }
        for limit in ["0", "-1", "abc", "99999999999999999999999"] {
            let reply = api.call("GET", &format!("{path}?limit={limit}"), Some(&token), b"");
            assert_eq!(reply.status, 400, "{path} limit {limit}");
            assert_eq!(reply.error_code(), "bad_request");
        }
        let reply = api.call("GET", &format!("{path}?color=red"), Some(&token), b"");
        assert_eq!(reply.status, 400);
    }
    let reply = api.call(
        "GET",
        &format!("/v1/batches/{batch_id}?cursor={}", b64("c1:x")),
        Some(&token),
        b"",
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "bad_request");
    let reply = api.call(
        "GET",
        &format!("/v1/admin/tenants?cursor={}", b64("c1:Bad Name/")),
        Some(ADMIN),
        b"",
    );
    assert_eq!(reply.status, 400);
}

#[test]
fn every_error_is_json_and_auth_tells_401_from_403_and_requests_are_logged() {
    let (_redis, api) = serve();
    let a = api.tenant("tenant-a", json!({}));
    let b = api.tenant("tenant-b", json!({}));
    upload(&api, &a, "uppercase.wasm", "upper");
    let (batch_a, _) = batch(&api, &a, "upper", 2);

    // 405 for a method a path does not answer; 404 for no route at all: both JSON.
    for (method, path, status, code) in [
        ("PATCH", "/v1/jobs", 405, "method_not_allowed"),
        ("DELETE", "/v1/modules", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("GET", "/v2/nothing", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
    ] {
        let reply = api.call(method, path, Some(&a), b"");
        assert_eq!(reply.status, status, "{method} {path}");
        assert_eq!(
            reply.headers["content-type"], "application/json",
            "{method} {path}"
        );
        assert_eq!(reply.error_code(), code, "{method} {path}");
    }
    // A rejection from axum itself (an admin body over its 64 KiB cap) is JSON too.
    let huge = vec![b' '; 100 << 10];
    let reply = api.call("POST", "/v1/admin/tenants", Some(ADMIN), &huge);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "too_large");

    // 401: no token, or one that names no one; 403: a tenant's valid token on an
    // admin route.
    for token in [None, Some("slc_unknown")] {
        for (method, path) in [("GET", "/v1/jobs"), ("GET", "/v1/admin/tenants")] {
            let reply = api.call(method, path, token, b"");
            assert_eq!(reply.status, 401, "{method} {path} with {token:?}");
            assert_eq!(reply.error_code(), "unauthorized");
        }
    }
    for (method, path) in [
        ("GET", "/v1/admin/tenants"),
        ("POST", "/v1/admin/tenants"),
        ("GET", "/v1/admin/tenants/tenant-a"),
        ("PATCH", "/v1/admin/tenants/tenant-a/policy"),
    ] {
        let reply = api.call(method, path, Some(&a), b"{}");
        assert_eq!(reply.status, 403, "{method} {path}");
        assert_eq!(reply.error_code(), "forbidden");
    }
    // Another tenant's batch is a 404, as an unknown one: existence does not leak.
    let theirs = api.call("GET", &format!("/v1/batches/{batch_a}"), Some(&b), b"");
    let unknown = api.call(
        "GET",
        "/v1/batches/0190a0a0-0000-7000-8000-000000000000",
        Some(&b),
        b"",
    );
    assert_eq!(theirs.status, 404);
    assert_eq!(theirs.body, unknown.body);
    // Unknown tenants answer the same on every admin route.
    for (method, path, body) in [
        ("GET", "/v1/admin/tenants/nosuch", ""),
        ("PUT", "/v1/admin/tenants/nosuch/policy", "{}"),
        ("PATCH", "/v1/admin/tenants/nosuch/policy", "{}"),
        ("POST", "/v1/admin/tenants/nosuch/tokens", ""),
        ("DELETE", "/v1/admin/tenants/nosuch/tokens", ""),
        ("GET", "/v1/admin/tenants/Not%20A%20Name", ""),
    ] {
        let reply = api.call(method, path, Some(ADMIN), body.as_bytes());
        assert_eq!(reply.status, 404, "{method} {path}");
        assert_eq!(
            reply.json(),
            json!({"error": {"code": "not_found", "message": "no such tenant"}})
        );
    }

    // One log line per request: method, the matched route (not the raw path), status,
    // latency and tenant.
    wait::poll(
        "the request log line of the 403",
        Duration::from_secs(10),
        || {
            api.logged("method=GET route=/v1/admin/tenants status=403")
                && api.logged("tenant=tenant-a")
        },
        |seen| *seen,
    );
    wait::poll(
        "the request log line of a batch read",
        Duration::from_secs(10),
        || api.logged("route=/v1/batches/{id} status=404"),
        |seen| *seen,
    );
    assert!(!api.logged(&format!("route=/v1/batches/{batch_a}")));
    assert!(api.logged("route=unmatched status=404"));
}

#[test]
fn patch_changes_one_field_and_units_are_strings_or_base_integers_everywhere() {
    let (_redis, api) = serve();
    let texts = api.tenant(
        "texts",
        json!({ "max_memory_bytes": "64MiB", "max_timeout_ms": "2s", "max_input_bytes": "1KiB" }),
    );
    api.tenant(
        "numbers",
        json!({ "max_memory_bytes": 64 << 20, "max_timeout_ms": 2000, "max_input_bytes": 1024 }),
    );
    let policy_of = |name: &str| {
        api.ok(
            "GET",
            &format!("/v1/admin/tenants/{name}"),
            Some(ADMIN),
            b"",
        )["policy"]
            .clone()
    };
    let before = policy_of("texts");
    assert_eq!(before, policy_of("numbers"));
    assert_eq!(before["max_memory_bytes"], 64 << 20);
    assert_eq!(before["max_timeout_ms"], 2000);

    // PATCH changes the one field named; PUT still replaces the whole policy.
    let patched = api.ok(
        "PATCH",
        "/v1/admin/tenants/texts/policy",
        Some(ADMIN),
        br#"{"max_args": 3, "max_output_bytes": "1MiB"}"#,
    );
    let after = policy_of("texts");
    assert_eq!(patched["policy"], after);
    let mut expected = before.clone();
    expected["max_args"] = json!(3);
    expected["max_output_bytes"] = json!(1 << 20);
    assert_eq!(after, expected);
    // `null` puts a field back to its default.
    api.ok(
        "PATCH",
        "/v1/admin/tenants/texts/policy",
        Some(ADMIN),
        br#"{"max_args": null}"#,
    );
    assert_eq!(policy_of("texts")["max_args"], 256);
    for bad in [
        r#"{"max_argz": 3}"#,
        r#"{"max_timeout_ms": "soon"}"#,
        r#"{"max_concurrent_jobs": 0}"#,
        r#"[1]"#,
    ] {
        let reply = api.call(
            "PATCH",
            "/v1/admin/tenants/texts/policy",
            Some(ADMIN),
            bad.as_bytes(),
        );
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(reply.error_code(), "bad_request");
    }
    let put = api.ok(
        "PUT",
        "/v1/admin/tenants/texts/policy",
        Some(ADMIN),
        br#"{"max_timeout_ms": "1s"}"#,
    );
    assert_eq!(put["policy"]["max_timeout_ms"], 1000);
    assert_eq!(put["policy"]["max_memory_bytes"], 256 << 20);

    // Job query and batch limits: strings and base-unit integers alike.
    upload(&api, &texts, "uppercase.wasm", "upper");
    let limits = |query: &str| {
        let reply = api.call(
            "POST",
            &format!("/v1/jobs?module=upper&{query}"),
            Some(&texts),
            b"x",
        );
        assert_eq!(reply.status, 201, "{query}: {}", reply.text());
        reply.json()["limits"].clone()
    };
    let strings = limits("memory=1MiB&timeout=500ms&max_output=2KiB");
    assert_eq!(
        strings,
        limits("memory=1048576&timeout=500&max_output=2048")
    );
    assert_eq!(strings["timeout_ms"], 500);
    let mut batch_limits = Vec::new();
    for limits in [
        json!({ "memory": "1MiB", "timeout": "500ms", "max_output": "2KiB" }),
        json!({ "memory": 1 << 20, "timeout": 500, "max_output": 2048 }),
    ] {
        let reply = api.post_json(
            "/v1/batches",
            &texts,
            &json!({ "module": "upper", "inputs": [{ "name": "a", "data": "" }], "limits": limits }),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        let job = reply.json()["jobs"][0]["id"].as_str().unwrap().to_owned();
        batch_limits
            .push(api.ok("GET", &format!("/v1/jobs/{job}"), Some(&texts), b"")["limits"].clone());
    }
    assert_eq!(batch_limits[0], batch_limits[1]);
    assert_eq!(batch_limits[0], strings);
}

#[test]
fn location_on_every_201_and_a_cancelled_job_says_cancelled() {
    let (_redis, api) = serve();
    // Tenant creation and token issue.
    let body = json!({ "name": "acme" }).to_string();
    let created = api.call("POST", "/v1/admin/tenants", Some(ADMIN), body.as_bytes());
    assert_eq!(created.status, 201);
    assert_eq!(created.headers["location"], "/v1/admin/tenants/acme");
    let token = created.json()["token"].as_str().unwrap().to_owned();
    let issued = api.call("POST", "/v1/admin/tenants/acme/tokens", Some(ADMIN), b"");
    assert_eq!(issued.status, 201);
    assert_eq!(issued.headers["location"], "/v1/admin/tenants/acme");
    // A module by name, and one without.
    let bytes = std::fs::read(guest("uppercase.wasm")).unwrap();
    let named = api.upload(&token, &bytes, "upper");
    assert_eq!(named.headers["location"], "/v1/modules/upper");
    let wat = b"(module (func (export \"_start\")))";
    let unnamed = api.call("PUT", "/v1/modules", Some(&token), wat);
    assert_eq!(unnamed.status, 201);
    let hash = unnamed.json()["hash"].as_str().unwrap().to_owned();
    assert_eq!(unnamed.headers["location"], format!("/v1/modules/{hash}"));
    // A batch.
    let reply = api.post_json(
        "/v1/batches",
        &token,
        &json!({ "module": "upper", "inputs": [{ "name": "a", "data": "" }] }),
    );
    assert_eq!(reply.status, 201);
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(reply.headers["location"], format!("/v1/batches/{id}"));
    // Every Location answers.
    for reply in [&created, &issued] {
        let at = reply.headers["location"].to_str().unwrap();
        assert_eq!(api.call("GET", at, Some(ADMIN), b"").status, 200, "{at}");
    }
    // A name with characters a path cannot hold as they are is percent-encoded.
    let odd = api.call(
        "PUT",
        "/v1/modules?name=a%3Fc%23%25%C3%A9",
        Some(&token),
        &bytes,
    );
    assert_eq!(odd.status, 201, "{}", odd.text());
    assert_eq!(
        odd.headers["location"].to_str().unwrap(),
        "/v1/modules/a%3Fc%23%25%C3%A9"
    );
    for reply in [&named, &unnamed, &reply, &odd] {
        let at = reply.headers["location"].to_str().unwrap();
        assert_eq!(api.call("GET", at, Some(&token), b"").status, 200, "{at}");
    }

    // No worker: a job stays queued; its output is not finished, then cancelled.
    let job = api.call("POST", "/v1/jobs?module=upper", Some(&token), b"x");
    let job = job.json()["id"].as_str().unwrap().to_owned();
    let output = format!("/v1/jobs/{job}/output");
    let reply = api.call("GET", &output, Some(&token), b"");
    assert_eq!(
        (reply.status, reply.error_code()),
        (409, "not_finished".into())
    );
    let state = api.ok("GET", &format!("/v1/jobs/{job}"), Some(&token), b"");
    assert_eq!(state["state"], "queued");
    assert_eq!(state["attempts"], 0);
    api.ok("DELETE", &format!("/v1/jobs/{job}"), Some(&token), b"");
    let reply = api.call("GET", &output, Some(&token), b"");
    assert_eq!(
        (reply.status, reply.error_code()),
        (409, "cancelled".into())
    );
    let listed = api.ok("GET", "/v1/jobs", Some(&token), b"");
    let mine = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job.as_str())
        .cloned()
        .unwrap();
    assert_eq!(mine["state"], "cancelled");
}

#[test]
fn a_retrying_job_shows_its_attempts() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "retry", ADMIN);
    let _worker = WorkerProcess::start(&redis.url(), "retry", "w0", &["--max-attempts", "3"]);
    let token = api.tenant("acme", json!({}));
    let spin = b"(module (func (export \"_start\") (loop (br 0))))";
    let reply = api.call("PUT", "/v1/modules?name=spin", Some(&token), spin);
    assert_eq!(reply.status, 201, "{}", reply.text());
    // Each run times out (retryable) and waits out a backoff before the next.
    let reply = api.call(
        "POST",
        "/v1/jobs?module=spin&timeout=100ms",
        Some(&token),
        b"",
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let job = |api: &ServeProcess| api.ok("GET", &format!("/v1/jobs/{id}"), Some(&token), b"");
    // The retrying window is brief; a poll may miss it and see the job done already.
    let seen = wait::poll(
        "the job waiting to run again, or given up",
        Duration::from_secs(60),
        || job(&api),
        |j| j["state"] == "retrying" || j["state"] == "done",
    );
    if seen["state"] == "retrying" {
        assert!(seen["attempts"].as_u64().unwrap() >= 1, "{seen}");
    } else {
        assert_eq!(seen["attempts"], 3, "{seen}");
    }
    let done = wait::poll(
        "the job given up",
        Duration::from_secs(60),
        || job(&api),
        |j| j["state"] == "done",
    );
    assert_eq!(done["result"]["outcome"], "timeout");
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["result"]["attempt"], 3);
    // Each retry noted the attempts made in the job's record (where a waiting job's
    // status reads them): two retries, after runs 1 and 2.
    let noted = redis.cli(&["HGET", &format!("sluice:{{retry}}:job:{id}"), "attempts"]);
    assert_eq!(noted.trim(), "2", "{noted}");
}

/// A waiting job's attempts come from its record, however large the delayed set: a
/// queued job whose record notes two attempts (as `retry.lua` notes them) reads as
/// retrying with 2, and a record field that is not a number leaves them unknown.
#[test]
fn a_waiting_job_s_attempts_come_from_its_record() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "noted", ADMIN);
    let token = api.tenant("acme", json!({}));
    upload(&api, &token, "uppercase.wasm", "upper");
    // No worker: the job stays queued.
    let reply = api.call("POST", "/v1/jobs?module=upper", Some(&token), b"x");
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/jobs/{id}");
    let state = api.ok("GET", &path, Some(&token), b"");
    assert_eq!(
        (&state["state"], &state["attempts"]),
        (&json!("queued"), &json!(0))
    );
    let record = format!("sluice:{{noted}}:job:{id}");
    redis.cli(&["HSET", &record, "attempts", "2"]);
    let state = api.ok("GET", &path, Some(&token), b"");
    assert_eq!(
        (&state["state"], &state["attempts"]),
        (&json!("retrying"), &json!(2))
    );
    redis.cli(&["HSET", &record, "attempts", "lots"]);
    let state = api.ok("GET", &path, Some(&token), b"");
    assert_eq!(
        (&state["state"], &state["attempts"]),
        (&json!("queued"), &Value::Null)
    );
}

/// A single job (no batch) a worker finished lists as done with its outcome, as its
/// own status says; so does a batch's job.
#[test]
fn a_finished_job_lists_as_done_with_its_outcome() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "finished", ADMIN);
    let _worker = WorkerProcess::start(&redis.url(), "finished", "w0", &[]);
    let token = api.tenant("acme", json!({}));
    upload(&api, &token, "uppercase.wasm", "upper");
    let reply = api.call("POST", "/v1/jobs?module=upper", Some(&token), b"hi");
    assert_eq!(reply.status, 201, "{}", reply.text());
    let single = reply.json()["id"].as_str().unwrap().to_owned();
    let (_, in_batch) = batch(&api, &token, "upper", 1);
    for id in [&single, &in_batch[0]] {
        wait::poll(
            "the job finished",
            Duration::from_secs(60),
            || api.ok("GET", &format!("/v1/jobs/{id}"), Some(&token), b""),
            |j| j["state"] == "done",
        );
    }
    let listed = api.ok("GET", "/v1/jobs", Some(&token), b"");
    for id in [&single, &in_batch[0]] {
        let item = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not in {listed}"));
        assert_eq!(item["state"], "done", "{item}");
        assert_eq!(item["outcome"], "success", "{item}");
    }
}

/// Sample values for a documented path's parameters.
fn concrete(path: &str) -> String {
    path.replace("{id}", "0190a0a0-0000-7000-8000-000000000000")
        .replace("{name}", "nosuch")
}

/// Every documented path and method answers something other than the router's
/// fallbacks (404 `no such route`, 405); every other method on those paths is a JSON
/// 405; and every route the router declares (`scheduler/src/api/mod.rs`) is documented.
#[test]
fn the_openapi_document_matches_the_live_router() {
    let (_redis, api) = serve();
    let token = api.tenant("acme", json!({}));
    let doc = api.ok("GET", "/openapi.json", None, b"");
    let paths = doc["paths"].as_object().unwrap();
    let methods = ["get", "put", "post", "delete", "patch"];
    let mut documented = 0;
    for (path, item) in paths {
        let url = concrete(path);
        let as_admin = path.starts_with("/v1/admin");
        let token = if as_admin { ADMIN } else { &token };
        for method in methods {
            let upper = method.to_uppercase();
            let reply = api.call(&upper, &url, Some(token), b"");
            if item.get(method).is_some() {
                documented += 1;
                assert_ne!(reply.status, 405, "{upper} {path} is documented");
                if reply.status == 404 {
                    assert_ne!(
                        reply.json()["error"]["message"],
                        "no such route",
                        "{upper} {path} is documented but has no route"
                    );
                }
                // Every status it answered is documented for it.
                let status = reply.status.to_string();
                assert!(
                    item[method]["responses"].get(&status).is_some(),
                    "{upper} {path} answered {status}, undocumented: {}",
                    reply.text()
                );
            } else {
                assert_eq!(reply.status, 405, "{upper} {path} is undocumented");
                assert_eq!(reply.error_code(), "method_not_allowed");
            }
        }
        if path.starts_with("/v1/") {
            for method in methods.iter().filter(|m| item.get(**m).is_some()) {
                let responses = &item[*method]["responses"];
                for status in ["401", "503"] {
                    assert!(
                        responses.get(status).is_some(),
                        "{method} {path} does not document {status}"
                    );
                }
            }
        }
    }
    assert!(documented >= 20, "{documented} operations");
    // The router's own routes, as declared.
    let source = std::fs::read_to_string(repo_root().join("scheduler/src/api/mod.rs")).unwrap();
    let declared: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(declared.len() >= 10, "{declared:?}");
    for route in declared {
        assert!(
            paths.contains_key(route),
            "route {route} is not in /openapi.json"
        );
    }
}

#[test]
fn deleting_a_batch_cancels_its_queued_jobs() {
    let (_redis, api) = serve();
    let token = api.tenant("acme", json!({}));
    let other = api.tenant("other", json!({}));
    upload(&api, &token, "uppercase.wasm", "upper");
    // No worker: every job stays unclaimed.
    let (id, jobs) = batch(&api, &token, "upper", 5);
    let path = format!("/v1/batches/{id}");
    let reply = api.call("DELETE", &path, Some(&other), b"");
    assert_eq!(
        (reply.status, reply.error_code()),
        (404, "not_found".into())
    );
    let done = api.ok("DELETE", &path, Some(&token), b"");
    assert_eq!(done["cancelled"], 5, "{done}");
    for job in &jobs {
        let state = api.ok("GET", &format!("/v1/jobs/{job}"), Some(&token), b"");
        assert_eq!(state["state"], "cancelled", "{state}");
    }
    let again = api.ok("DELETE", &path, Some(&token), b"");
    assert_eq!(again["cancelled"], 0, "{again}");
    assert_eq!(again["finished"], 5, "{again}");
    let reply = api.call(
        "DELETE",
        "/v1/batches/0190a0a0-0000-7000-8000-000000000000",
        Some(&token),
        b"",
    );
    assert_eq!(reply.status, 404);
}
