//! Tenant quotas, module lifetimes, server bounds and edge validation of the HTTP API,
//! each replaying a scenario that hurt the fleet before: a real redis-server and a
//! real `sluice serve` (started here with the flags each test needs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{RedisServer, ServeProcess, bin, guest};

const ADMIN: &str = "admin-secret-for-quota-tests";
const QUEUE: &str = "quota";

/// A `sluice serve` on the test queue with the admin token and `extra` flags.
fn serve(redis: &RedisServer, extra: &[&str]) -> ServeProcess {
    ServeProcess::start_with(&redis.url(), QUEUE, ADMIN, extra)
}

/// Redis's memory for data, bytes.
fn used_memory(redis: &RedisServer) -> u64 {
    // The sum over the keys, not INFO's `used_memory_dataset`: that one also holds client
    // query buffers until Redis's client cron moves them to the overhead, so a 1 MiB
    // command just sent would count as data.
    keys(redis, "*")
        .iter()
        .map(|key| {
            redis
                .cli(&["MEMORY", "USAGE", key])
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}

/// Keys matching `pattern`.
fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", pattern])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn upper_wasm() -> Vec<u8> {
    std::fs::read(guest("uppercase.wasm")).unwrap()
}

/// An upload over the tenant's input quota is refused with 413 as soon as the count
/// passes it, whether the length is declared or only streamed, and leaves nothing in
/// Redis (before: 3 GiB from /dev/zero was accepted and Redis grew 2 GiB).
#[test]
fn an_upload_over_the_input_quota_is_refused_while_streaming_and_leaves_nothing() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    let token = s.tenant("small", json!({ "max_input_bytes": 1 << 20 }));
    assert_eq!(s.upload(&token, &upper_wasm(), "upper").status, 201);
    let before = used_memory(&redis);

    let declared = s.raw_upload("/v1/jobs?module=upper", &token, 2 << 20, false);
    assert_eq!(declared, 413);
    let streamed = s.raw_upload("/v1/jobs?module=upper", &token, 2 << 20, true);
    assert_eq!(streamed, 413);
    // The refusal is a JSON error naming the quota (a body small enough to be sent
    // whole before the answer).
    let small = s.tenant("tiny", json!({ "max_input_bytes": 10 }));
    assert_eq!(s.upload(&small, &upper_wasm(), "upper").status, 201);
    let reply = s.call("POST", "/v1/jobs?module=upper", Some(&small), &[b'x'; 11]);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.error_code(), "too_large");
    assert!(reply.text().contains("max_input_bytes"), "{}", reply.text());

    assert_eq!(keys(&redis, "*blob:*"), Vec::<String>::new());
    assert_eq!(keys(&redis, "*backlog:small"), Vec::<String>::new());
    assert_eq!(keys(&redis, "*backlog:tiny"), Vec::<String>::new());
    // Redis gives back the buffers of the large commands it served lazily (its cron
    // shrinks them); wait, bounded, for its memory to come back within 512 KiB.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = used_memory(&redis);
        if after < before + (512 << 10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis grew from {before} to {after} bytes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Within the quota, the same upload is taken.
    let fits = s.call(
        "POST",
        "/v1/jobs?module=upper",
        Some(&token),
        &vec![b'x'; 1 << 20],
    );
    assert_eq!(fits.status, 201, "{}", fits.text());
}

/// Input bytes count against the tenant's stored-bytes quota over the blob lifetime:
/// past it, 429 with `Retry-After`, and the refused upload leaves no blob.
#[test]
fn stored_bytes_are_counted_per_tenant_and_refused_with_retry_after() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    // Each job naming its module by `upper` also stores that name (its argv[0]) in its
    // envelope: 3 MiB of inputs plus the two jobs' names fill the quota exactly.
    let quota = (3 << 20) + 2 * "upper".len();
    let token = s.tenant("hoarder", json!({ "max_stored_bytes": quota }));
    let other = s.tenant("other", json!({ "max_stored_bytes": 3 << 20 }));
    for t in [&token, &other] {
        assert_eq!(s.upload(t, &upper_wasm(), "upper").status, 201);
    }
    let input = vec![b'y'; 1 << 20];
    assert_eq!(
        s.call("POST", "/v1/jobs?module=upper", Some(&token), &input)
            .status,
        201
    );
    // Refused part-way through the stream (the quota is checked per MiB received).
    assert_eq!(
        s.raw_upload("/v1/jobs?module=upper", &token, 3 << 20, true),
        429
    );
    // The quota is full now (what a refused upload reserved stays counted): even a
    // small input is refused before its body is read.
    let full = s.call("POST", "/v1/jobs?module=upper", Some(&token), b"tiny");
    assert_eq!(full.status, 429, "{}", full.text());
    assert_eq!(full.error_code(), "quota_exceeded");
    assert!(full.text().contains("max_stored_bytes"), "{}", full.text());
    let retry: u64 = full.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    // One tenant's quota is its own.
    assert_eq!(
        s.call("POST", "/v1/jobs?module=upper", Some(&other), &input)
            .status,
        201
    );
    assert!(
        s.metric("sluice_quota_refusals_total{quota=\"max_stored_bytes\"}") >= 1.0,
        "{}",
        s.call("GET", "/metrics", None, b"").text()
    );
    // The blobs left are the two accepted inputs' (one each), not the refused one's.
    let metas: Vec<_> = keys(&redis, "*blob:*")
        .into_iter()
        .filter(|k| k.matches(':').count() == 3)
        .collect();
    assert_eq!(metas.len(), 2, "{metas:?}");
}

/// A batch of 2,000 inputs carrying a large argument is refused before anything is
/// built (before: 2,000 × an 8 MiB arg took the server to 19 GiB), and so are batches
/// over the per-batch job and byte quotas; the server stays small.
#[test]
fn big_batches_and_arguments_are_refused_by_the_policy() {
    use base64::Engine;
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    let token = s.tenant("batcher", json!({ "max_batch_jobs": 1500 }));
    assert_eq!(s.upload(&token, &upper_wasm(), "upper").status, 201);
    let inputs: Vec<Value> = (0..2000)
        .map(|i| json!({ "name": format!("i{i}"), "data": "" }))
        .collect();

    let big_arg = "a".repeat(8 << 20);
    let body = json!({ "module": "upper", "inputs": inputs[..10], "args": [big_arg] });
    let reply = s.post_json("/v1/batches", &token, &body);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        reply.text().contains("max_args_env_bytes"),
        "{}",
        reply.text()
    );

    let body = json!({ "module": "upper", "inputs": inputs });
    let reply = s.post_json("/v1/batches", &token, &body);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.text().contains("max_batch_jobs"), "{}", reply.text());

    // 1,500 jobs × 60 KiB of arguments: each job is within its quota, the batch is not.
    let arg = "b".repeat(60 << 10);
    let body = json!({ "module": "upper", "inputs": inputs[..1500], "args": [arg] });
    let reply = s.post_json("/v1/batches", &token, &body);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.text().contains("max_batch_bytes"), "{}", reply.text());

    let many: Vec<String> = (0..300).map(|i| format!("arg={i}")).collect();
    let reply = s.call(
        "POST",
        &format!("/v1/jobs?module=upper&{}", many.join("&")),
        Some(&token),
        b"x",
    );
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.text().contains("max_args"), "{}", reply.text());
    assert_eq!(keys(&redis, "*backlog:batcher"), Vec::<String>::new());

    // Inputs over the inline limit become blobs; small ones stay inline.
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'z'; 300 << 10]);
    let body = json!({ "module": "upper", "inputs": [
        { "name": "big", "data": big }, { "name": "small", "data": "aGk=" }
    ]});
    let reply = s.post_json("/v1/batches", &token, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let metas: Vec<_> = keys(&redis, "*blob:*")
        .into_iter()
        .filter(|k| k.matches(':').count() == 3)
        .collect();
    assert_eq!(metas.len(), 1, "{metas:?}");

    let peak_kib = s.peak_rss_kib();
    eprintln!("big batches: sluice serve peak RSS {} MiB", peak_kib >> 10);
    assert!(
        peak_kib < 512 << 10,
        "sluice serve peaked at {} MiB",
        peak_kib >> 10
    );
}

/// A full backlog answers 429 with `Retry-After`, for single jobs and batches alike.
#[test]
fn a_full_backlog_answers_429_with_retry_after() {
    let redis = RedisServer::start();
    // No worker: jobs stay queued. A dispatch window of 1 keeps the rest in the backlog.
    let s = serve(&redis, &["--dispatch-window", "1"]);
    let token = s.tenant("busy", json!({ "max_backlog_jobs": 3 }));
    assert_eq!(s.upload(&token, &upper_wasm(), "upper").status, 201);
    // The first job is admitted to the shared stream (the window's one place, never
    // freed without a worker); wait for that, so the backlog only grows from here.
    let first = s.call("POST", "/v1/jobs?module=upper", Some(&token), b"job");
    assert_eq!(first.status, 201, "{}", first.text());
    let stream = format!("sluice:{{{QUEUE}}}:jobs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.cli(&["XLEN", &stream]).trim() != "1" {
        assert!(
            Instant::now() < deadline,
            "the dispatcher never admitted a job"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        let reply = s.call("POST", "/v1/jobs?module=upper", Some(&token), b"job");
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let refused = s.call("POST", "/v1/jobs?module=upper", Some(&token), b"job");
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error_code(), "quota_exceeded");
    assert!(
        refused.text().contains("max_backlog_jobs"),
        "{}",
        refused.text()
    );
    assert!(refused.headers.contains_key("retry-after"));
    let batch = json!({ "module": "upper", "inputs": [{ "name": "a", "data": "" }] });
    let reply = s.post_json("/v1/batches", &token, &batch);
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert!(reply.headers.contains_key("retry-after"));
}

/// A job POST does not fetch its module from Redis once its entry point is known
/// (before: every POST /v1/jobs read the whole module, up to 32 MiB, and walked it).
#[test]
fn job_posts_do_not_fetch_a_known_module() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    let token = s.tenant("poster", json!({ "max_modules": 10 }));
    let module = big_binary_module(2 << 20);
    assert_eq!(s.upload(&token, &module, "big").status, 201);
    let sent = || -> u64 {
        redis
            .cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_net_output_bytes in INFO stats")
    };
    let before = sent();
    for _ in 0..10 {
        let reply = s.call("POST", "/v1/jobs?module=big", Some(&token), b"job");
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let read = sent() - before;
    // Ten fetches would be 20 MiB; one (a cache the upload did not fill) 2 MiB.
    assert!(
        read < 4 << 20,
        "Redis sent {read} bytes for 10 job posts of a 2 MiB module"
    );
    eprintln!("Redis sent {read} bytes for 10 job posts of a 2 MiB module");
}

/// One tenant trickling module bodies holds at most its share of the buffered-body
/// turns: its next upload gets 429 with `Retry-After` at once, while another tenant's
/// upload goes through; a turn comes back when its upload ends (before: one tenant could
/// hold all 8 turns and stall every upload and batch of the fleet).
#[test]
fn one_tenant_cannot_hold_every_upload_turn() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    let hog = s.tenant("hog", json!({ "max_modules": 100 }));
    let other = s.tenant("other", json!({ "max_modules": 100 }));
    // Two uploads that send a few bytes of a declared 1 MiB and then stall.
    let stalled_upload = |i: usize| {
        let mut c = TcpStream::connect(&s.addr).expect("connect");
        write!(
            c,
            "PUT /v1/modules?name=slow{i} HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {hog}\r\nContent-Length: {}\r\n\r\n\0asm",
            1 << 20
        )
        .unwrap();
        c.set_nonblocking(true).unwrap();
        c
    };
    let mut stalled: Vec<TcpStream> = (0..2).map(stalled_upload).collect();
    // The event: the stalled uploads hold their turns once a third upload of the same
    // tenant is refused for it; until then, a third one is answered on its merits (422).
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let reply = s.upload(&hog, b"(module", "third");
        if reply.status == 429 {
            break reply;
        }
        assert_eq!(reply.status, 422, "{}", reply.text());
        // A stalled upload that arrived while the third held a turn was itself refused
        // (answered, or closed): start it again.
        for (i, c) in stalled.iter_mut().enumerate() {
            let answered = match c.peek(&mut [0u8; 1]) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if answered {
                *c = stalled_upload(i);
            }
        }
        assert!(
            Instant::now() < deadline,
            "a third upload was never refused while two stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused.error_code(), "busy");
    assert!(refused.headers.contains_key("retry-after"));
    let stored = s.upload(&other, &upper_wasm(), "upper");
    assert_eq!(stored.status, 201, "{}", stored.text());
    // A stalled upload that ends gives its turn back.
    drop(stalled.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = s.upload(&hog, &upper_wasm(), "upper");
        if reply.status != 429 {
            assert_eq!(reply.status, 201, "{}", reply.text());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ended upload never gave its turn back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stalled);
}

/// Modules count against the tenant's quota, can be deleted (by name or hash), and
/// shared bytes go only when their last holder lets go.
#[test]
fn modules_are_counted_deleted_and_shared_bytes_outlive_one_holder() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    let a = s.tenant("alpha", json!({ "max_modules": 1 }));
    let b = s.tenant("beta", json!({}));
    let upper = upper_wasm();
    let other = b"(module (func (export \"_start\")))".to_vec();

    let put = s.upload(&a, &upper, "upper");
    assert_eq!(put.status, 201, "{}", put.text());
    let hash = put.json()["hash"].as_str().unwrap().to_owned();
    assert!(put.json()["ttl_seconds"].as_u64().unwrap() > 0);
    let module_key = format!("sluice:{{{QUEUE}}}:module:{hash}");
    let ttl: i64 = redis.cli(&["PTTL", &module_key]).trim().parse().unwrap();
    assert!(ttl > 0, "an uploaded module has a lifetime; PTTL {ttl}");

    let over = s.upload(&a, &other, "nop");
    assert_eq!(over.status, 429, "{}", over.text());
    assert!(over.text().contains("max_modules"), "{}", over.text());
    // The same module again (another name) is not another module.
    assert_eq!(s.upload(&a, &upper, "upper2").status, 201);

    assert_eq!(s.upload(&b, &upper, "shout").status, 201);
    let gone = s.call("DELETE", "/v1/modules/upper", Some(&a), b"");
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(
        gone.json()["bytes_deleted"],
        false,
        "beta still holds the bytes"
    );
    assert_eq!(redis.cli(&["EXISTS", &module_key]).trim(), "1");
    assert_eq!(
        s.call("DELETE", "/v1/modules/upper", Some(&a), b"").status,
        404
    );
    assert_eq!(
        s.call("POST", "/v1/jobs?module=upper", Some(&a), b"x")
            .status,
        404,
        "a deleted name names nothing"
    );
    // Alpha's slot is free again.
    assert_eq!(s.upload(&a, &other, "nop").status, 201);

    let last = s.call("DELETE", &format!("/v1/modules/{hash}"), Some(&b), b"");
    assert_eq!(last.status, 200, "{}", last.text());
    assert_eq!(last.json()["bytes_deleted"], true);
    assert_eq!(redis.cli(&["EXISTS", &module_key]).trim(), "0");
    // Another tenant's module cannot be deleted by a tenant that does not hold it.
    let nop_hash = s.upload(&a, &other, "nop").json()["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.call("DELETE", &format!("/v1/modules/{nop_hash}"), Some(&b), b"")
            .status,
        404
    );
    for bad in ["a%2Fb", &"n".repeat(300), "%FF"] {
        let reply = s.call("DELETE", &format!("/v1/modules/{bad}"), Some(&a), b"");
        assert!(
            (400..500).contains(&reply.status),
            "{bad}: {}",
            reply.status
        );
    }
}

/// `sluice module rm` deletes a name or the bytes of a hash.
#[test]
fn module_rm_deletes_names_and_bytes() {
    let redis = RedisServer::start();
    let url = redis.url();
    let module = guest("uppercase.wasm");
    let put = bin("sluice")
        .args(["module", "put", "--name", "upper", "--redis", &url])
        .arg(&module)
        .output()
        .unwrap();
    assert!(put.status.success());
    let hash = String::from_utf8(put.stdout).unwrap().trim().to_owned();
    let rm = |what: &str| {
        bin("sluice")
            .args(["module", "rm", what, "--redis", &url])
            .output()
            .unwrap()
    };
    assert!(rm("upper").status.success());
    assert!(!rm("upper").status.success(), "a second rm finds nothing");
    assert!(rm(&hash).status.success());
    assert_eq!(keys(&redis, "*module:*"), Vec::<String>::new());
}

/// A valid binary module of about `size` bytes: functions of 1 MiB each whose bodies
/// are `i32.const 0; drop` repeated, which the validator must walk instruction by
/// instruction.
fn big_binary_module(size: usize) -> Vec<u8> {
    use sluice_tests::wasm_gen::{leb, section};
    let per_function = 1 << 20;
    let functions = size.div_ceil(per_function);
    let mut body = vec![0u8]; // no locals
    for _ in 0..per_function / 3 {
        body.extend_from_slice(&[0x41, 0x00, 0x1a]);
    }
    body.push(0x0b);
    let mut code = Vec::new();
    leb(functions as u64, &mut code);
    for _ in 0..functions {
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
    }
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[0x01, 0x60, 0x00, 0x00], &mut wasm); // type () -> ()
    let mut funcs = Vec::new();
    leb(functions as u64, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions)); // each of type 0
    section(3, &funcs, &mut wasm);
    section(10, &code, &mut wasm);
    wasm
}

/// Big module uploads are validated off the async threads, at most two at once, and
/// `/healthz` answers while they run (before: two 32 MiB WAT uploads held it 6.6 s).
/// WAT over its cap is refused before parsing.
#[test]
fn big_module_validations_do_not_hold_the_server() {
    let redis = RedisServer::start();
    let s = std::sync::Arc::new(serve(&redis, &[]));
    let token = s.tenant("uploader", json!({ "max_modules": 100 }));
    // Four uploads at once come from two tenants: one tenant gets two buffered turns.
    let second = s.tenant("uploader2", json!({ "max_modules": 100 }));
    let wat = format!(
        "(module (func (export \"_start\") {}))",
        "(drop (i32.const 0)) ".repeat((16 << 20) / 21)
    );
    let refused = s.upload(&token, wat.as_bytes(), "wordy");
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert!(refused.text().contains("text"), "{}", refused.text());

    let module = std::sync::Arc::new(big_binary_module(8 << 20));
    let mut seen_running = false;
    let mut most_running = 0.0f64;
    for attempt in 0..5 {
        let uploads: Vec<_> = (0..4)
            .map(|i| {
                let token = if i % 2 == 0 { &token } else { &second };
                let (s, module, token) = (s.clone(), module.clone(), token.clone());
                let mut bytes = (*module).clone();
                // Distinct bytes (a custom section's name) so each is really stored.
                bytes.extend_from_slice(&[0x00, 0x02, 0x01, b'a' + (attempt * 4 + i) as u8]);
                std::thread::spawn(move || s.upload(&token, &bytes, &format!("big{attempt}{i}")))
            })
            .collect();
        while uploads.iter().any(|u| !u.is_finished()) {
            let running = s.metric("sluice_module_validations_running");
            most_running = most_running.max(running);
            if running >= 1.0 {
                // An event, not a clock: a validation is running now; the server must
                // answer /healthz while it does.
                assert_eq!(s.call("GET", "/healthz", None, b"").status, 200);
                if s.metric("sluice_module_validations_running") >= 1.0 {
                    seen_running = true;
                }
            }
        }
        for upload in uploads {
            let reply = upload.join().unwrap();
            assert_eq!(reply.status, 201, "{}", reply.text());
        }
        if seen_running {
            break;
        }
    }
    assert!(
        seen_running,
        "never saw /healthz answered during a validation (most running at once: {most_running})"
    );
    assert!(
        most_running <= 2.0,
        "{most_running} validations ran at once"
    );
}

/// Batch ids must parse before any key is built: `<id>:jobs` is no existence oracle
/// across tenants and no 5xx (before: 503 with Redis's error for any existing id).
#[test]
fn batch_paths_are_no_oracle_and_never_leak_redis_errors() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    let mine = s.tenant("mine", json!({}));
    let theirs = s.tenant("theirs", json!({}));
    assert_eq!(s.upload(&theirs, &upper_wasm(), "upper").status, 201);
    assert_eq!(s.upload(&mine, &upper_wasm(), "upper").status, 201);
    let batch = json!({ "module": "upper", "inputs": [{ "name": "a", "data": "" }] });
    let their_batch = s.post_json("/v1/batches", &theirs, &batch).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let my_batch = s.post_json("/v1/batches", &mine, &batch).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unknown = "01890000-0000-7000-8000-000000000000";
    let mut replies = Vec::new();
    for id in [&their_batch, &my_batch, unknown] {
        for suffix in [":jobs", "", ":x", "%3Ajobs"] {
            let path = format!("/v1/batches/{id}{suffix}");
            let reply = s.call("GET", &path, Some(&mine), b"");
            assert!(
                reply.status < 500,
                "{path}: {} {}",
                reply.status,
                reply.text()
            );
            assert!(
                !reply.text().contains("WRONGTYPE"),
                "{path}: {}",
                reply.text()
            );
            replies.push((id, suffix, reply.status, reply.text()));
        }
    }
    let answer = |id: &str, suffix: &str| {
        replies
            .iter()
            .find(|(i, s, ..)| *i == id && *s == suffix)
            .map(|(_, _, status, body)| (*status, body.clone()))
            .unwrap()
    };
    assert_eq!(answer(&my_batch, "").0, 200);
    for suffix in [":jobs", "", ":x"] {
        assert_eq!(
            answer(&their_batch, suffix),
            answer(unknown, suffix),
            "another tenant's batch answers like an unknown one"
        );
    }
    assert_eq!(answer(&my_batch, ":jobs").0, 404);
}

/// After Redis lost its data, `/readyz` recreates the job stream's group instead of
/// answering 503 (`NOGROUP`) for ever; its failure text never carries Redis's words.
#[test]
fn readyz_recovers_after_redis_lost_its_data() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    assert_eq!(s.call("GET", "/readyz", None, b"").status, 200);
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    let ready = s.call("GET", "/readyz", None, b"");
    assert_eq!(ready.status, 200, "{}", ready.text());
    let groups = redis.cli(&["XINFO", "GROUPS", &format!("sluice:{{{QUEUE}}}:jobs")]);
    assert!(groups.contains("workers"), "{groups}");
}

/// Policy values are checked with the field named, over HTTP and on the command line
/// (before: `--rate nan|inf|0` meant unlimited); admin calls for a tenant that does not
/// exist answer 404.
#[test]
fn policies_are_validated_and_unknown_tenants_are_404() {
    let redis = RedisServer::start();
    let s = serve(&redis, &[]);
    for (policy, field) in [
        (json!({ "rate_per_second": 0.0 }), "rate_per_second"),
        (json!({ "rate_per_second": -2.5 }), "rate_per_second"),
        (json!({ "max_concurrent_jobs": 0 }), "max_concurrent_jobs"),
        (json!({ "max_backlog_jobs": 0 }), "max_backlog_jobs"),
        (json!({ "max_fuel": 0 }), "max_fuel"),
    ] {
        let body = json!({ "name": "bad", "policy": policy }).to_string();
        let reply = s.call("POST", "/v1/admin/tenants", Some(ADMIN), body.as_bytes());
        assert_eq!(reply.status, 400, "{policy}: {}", reply.text());
        assert!(reply.text().contains(field), "{policy}: {}", reply.text());
        let reply = s.call(
            "PUT",
            "/v1/admin/tenants/bad/policy",
            Some(ADMIN),
            policy.to_string().as_bytes(),
        );
        assert_eq!(reply.status, 400, "{policy}: {}", reply.text());
    }
    for (method, path) in [
        ("POST", "/v1/admin/tenants/nosuch/tokens"),
        ("DELETE", "/v1/admin/tenants/nosuch/tokens"),
        ("PUT", "/v1/admin/tenants/nosuch/policy"),
        ("POST", "/v1/admin/tenants/Not%20A%20Name/tokens"),
    ] {
        let reply = s.call(method, path, Some(ADMIN), b"{}");
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text());
    }
    let url = redis.url();
    for rate in ["nan", "inf", "0", "-1"] {
        let out = bin("sluice")
            .args([
                "tenant",
                "create",
                "cli",
                &format!("--rate={rate}"),
                "--redis",
                &url,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--rate {rate} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("rate_per_second"),
            "--rate {rate}: {stderr}"
        );
    }
    let out = bin("sluice")
        .args([
            "tenant",
            "create",
            "cli",
            "--max-modules",
            "3",
            "--max-input",
            "1MiB",
        ])
        .args(["--redis", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Idle and half-sent connections are closed after the header timeout, and at most
/// `--max-connections` are open at once (before: 19,429 of them grew the server to
/// 736 MB, never released).
#[test]
fn half_sent_connections_are_capped_and_closed() {
    let redis = RedisServer::start();
    let s = serve(
        &redis,
        &["--max-connections", "8", "--header-timeout", "1s"],
    );
    let mut stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).expect("connect");
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            c
        })
        .collect();
    // The cap holds while they stall: this request waits its turn in the listen
    // backlog until a stalled connection is closed, and is then one of the 8.
    let open = s.metric("sluice_http_connections_open");
    assert!((1.0..=8.0).contains(&open), "{open} connections open");
    // Every stalled connection is eventually closed by the server (EOF or reset);
    // those beyond the cap are accepted only as earlier ones close.
    for (i, c) in stalled.iter_mut().enumerate() {
        let mut buf = Vec::new();
        let closed = match c.read_to_end(&mut buf) {
            Ok(_) => true,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        };
        assert!(closed, "connection {i} was never closed");
    }
    let started = Instant::now();
    assert_eq!(s.call("GET", "/healthz", None, b"").status, 200);
    eprintln!(
        "healthz after the stalled connections: {:?}",
        started.elapsed()
    );
}

mod structured {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    /// A JSON value of any type, small.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
            prop::sample::select(vec![
                "1MiB", "2s", "-1", "1e400", "nan", "inf", "0", "upper"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Batch bodies close to the real shape, each field sometimes of the wrong type.
    fn batch_body() -> impl Strategy<Value = Value> {
        let input = (
            prop_oneof![Just(json!("a")), any_json()],
            prop_oneof![Just(json!("aGk=")), Just(json!("!!")), any_json()],
        )
            .prop_map(|(name, data)| json!({ "name": name, "data": data }));
        let limits = prop::collection::btree_map(
            prop::sample::select(vec!["fuel", "memory", "timeout", "max_output", "other"]),
            any_json(),
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
        (
            prop_oneof![Just(json!("upper")), any_json()],
            prop_oneof![
                prop::collection::vec(input, 0..4).prop_map(Value::from),
                any_json()
            ],
            prop::option::of(limits),
            prop::option::of(any_json()),
            prop::option::of(any_json()),
        )
            .prop_map(|(module, inputs, limits, args, env)| {
                let mut body = json!({ "module": module, "inputs": inputs });
                for (key, value) in [("limits", limits), ("args", args), ("env", env)] {
                    if let Some(v) = value {
                        body[key] = v;
                    }
                }
                body
            })
    }

    /// Query strings of the job endpoint's own keys with odd values.
    fn job_query() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "module",
            "fuel",
            "memory",
            "timeout",
            "max_output",
            "invoke",
            "arg",
            "env",
            "name",
        ]);
        let value = prop_oneof![
            "[a-zA-Z0-9%=._-]{0,16}",
            prop::sample::select(vec![
                "upper",
                "1e400",
                "nan",
                "inf",
                "-0",
                "18446744073709551616",
                "99999999999EiB",
                "1000000000000000000000s",
                "%FF%FE",
                "=",
                "K=",
                "=V",
                "_start",
                "",
            ])
            .prop_map(str::to_owned),
        ];
        prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    /// Structured but wrong JSON bodies and query strings: never a 5xx, and every 4xx
    /// is a JSON error with a code and a message.
    #[test]
    fn structured_bodies_and_queries_never_get_a_server_error() {
        let redis = RedisServer::start();
        let s = serve(&redis, &[]);
        let token = s.tenant("fuzz", json!({ "max_batch_jobs": 3 }));
        assert_eq!(s.upload(&token, &upper_wasm(), "upper").status, 201);
        let mut runner = TestRunner::new(Config {
            cases: 150,
            ..Config::default()
        });
        let check =
            |what: String, reply: sluice_tests::serve::Reply| -> Result<(), TestCaseError> {
                if reply.status >= 500 {
                    return Err(TestCaseError::fail(format!(
                        "{what} → {}: {}",
                        reply.status,
                        reply.text()
                    )));
                }
                if reply.status >= 400 {
                    let body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
                        TestCaseError::fail(format!(
                            "{what} → {}: not JSON ({e}): {}",
                            reply.status,
                            reply.text()
                        ))
                    })?;
                    prop_assert!(body["error"]["code"].is_string(), "{what}: {body}");
                    prop_assert!(body["error"]["message"].is_string(), "{what}: {body}");
                }
                Ok(())
            };
        runner
            .run(
                &(batch_body(), job_query(), any_json()),
                |(batch, query, policy)| {
                    let text = batch.to_string();
                    check(
                        format!("batch {text}"),
                        s.call("POST", "/v1/batches", Some(&token), text.as_bytes()),
                    )?;
                    check(
                        format!("job ?{query}"),
                        s.call("POST", &format!("/v1/jobs?{query}"), Some(&token), b"in"),
                    )?;
                    check(
                        format!("module ?{query}"),
                        s.call(
                            "PUT",
                            &format!("/v1/modules?{query}"),
                            Some(&token),
                            b"(module)",
                        ),
                    )?;
                    let policy = policy.to_string();
                    check(
                        format!("policy {policy}"),
                        s.call(
                            "PUT",
                            "/v1/admin/tenants/fuzz/policy",
                            Some(ADMIN),
                            policy.as_bytes(),
                        ),
                    )?;
                    Ok(())
                },
            )
            .unwrap();
    }
}
