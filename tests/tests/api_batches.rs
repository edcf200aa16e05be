//! Batches through the HTTP API against a real redis-server and a real `sluice serve`:
//! a cancelled batch counts its cancelled jobs as done, and a command-line batch
//! (`sluice batch --redis`, whose hash names its `--tenant`) is no HTTP tenant's: GET
//! and DELETE answer 404 to a tenant of the same name and cancel nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_shared::Queue;
use sluice_tests::fleet::Fleet;
use sluice_tests::wait::poll;
use sluice_tests::{RedisServer, ServeProcess, guest};

const ADMIN: &str = "admin-secret-for-batch-tests";

/// Posts a batch of `n` empty inputs of module `module`; returns the batch id.
fn post_batch(api: &ServeProcess, token: &str, module: &str, n: usize) -> String {
    let inputs: Vec<Value> = (0..n)
        .map(|i| json!({ "name": format!("in-{i}"), "data": "" }))
        .collect();
    let reply = api.post_json(
        "/v1/batches",
        token,
        &json!({ "module": module, "inputs": inputs }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

fn upload_upper(api: &ServeProcess, token: &str) {
    let bytes = std::fs::read(guest("uppercase.wasm")).unwrap();
    let reply = api.upload(token, &bytes, "upper");
    assert_eq!(reply.status, 201, "{}", reply.text());
}

/// The listing's entry for batch `id`.
fn listed(api: &ServeProcess, token: &str, id: &str) -> Option<Value> {
    let page = api.ok("GET", "/v1/batches", Some(token), b"");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .cloned()
}

/// The API shows a batch's `n:cancelled` counter (kept by `cancel_batch.lua`) as
/// `cancelled` and counts it in `done`, in the batch and in the listing.
#[test]
fn a_batch_s_cancelled_counter_shows_and_counts_as_done() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "counted", ADMIN);
    let token = api.tenant("acme", json!({}));
    upload_upper(&api, &token);
    // No worker: nothing finishes.
    let id = post_batch(&api, &token, "upper", 4);
    let batch = api.ok("GET", &format!("/v1/batches/{id}"), Some(&token), b"");
    assert_eq!(
        (&batch["done"], &batch["cancelled"]),
        (&json!(0), &json!(0))
    );
    redis.cli(&[
        "HINCRBY",
        &format!("sluice:{{counted}}:batch:{id}"),
        "n:cancelled",
        "3",
    ]);
    let batch = api.ok("GET", &format!("/v1/batches/{id}"), Some(&token), b"");
    assert_eq!(batch["total"], 4, "{batch}");
    assert_eq!(batch["cancelled"], 3, "{batch}");
    assert_eq!(batch["done"], 3, "{batch}");
    assert_eq!(batch["by_outcome"], json!({}), "{batch}");
    let item = listed(&api, &token, &id).unwrap();
    assert_eq!((&item["done"], &item["cancelled"]), (&json!(3), &json!(3)));
}

/// DELETE cancels every queued job: afterwards the batch is complete (`done` ==
/// `total`, all `cancelled`) and each of its jobs says `cancelled` on its page.
/// `cancel_batch.lua` counts them in the batch's `n:cancelled`.
#[test]
fn a_cancelled_batch_completes() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "cancelled", ADMIN);
    let token = api.tenant("acme", json!({}));
    upload_upper(&api, &token);
    let id = post_batch(&api, &token, "upper", 5);
    let path = format!("/v1/batches/{id}");
    let done = api.ok("DELETE", &path, Some(&token), b"");
    assert_eq!(done["cancelled"], 5, "{done}");
    let batch = api.ok("GET", &path, Some(&token), b"");
    for job in batch["jobs"].as_array().unwrap() {
        assert_eq!(job["state"], "cancelled", "{job}");
        assert_eq!(job["outcome"], Value::Null, "{job}");
    }
    assert_eq!(batch["total"], 5, "{batch}");
    assert_eq!(batch["cancelled"], 5, "{batch}");
    assert_eq!(batch["done"], 5, "{batch}");
    let item = listed(&api, &token, &id).unwrap();
    assert_eq!((&item["done"], &item["cancelled"]), (&json!(5), &json!(5)));
}

/// Starts `command` with piped stderr, its lines sent to the returned channel.
fn spawn(mut command: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[sluice] {line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// A command-line batch run for `--tenant local` is invisible to the HTTP tenant
/// `local`: GET and DELETE are 404s (as for an unknown batch), the listing leaves it
/// out, and none of its jobs is cancelled.
#[test]
fn a_command_line_batch_is_no_http_tenant_s() {
    let fleet = Fleet::start("cli_api");
    let api = ServeProcess::start(&fleet.url(), "cli_api", ADMIN);
    let token = api.tenant("local", json!({}));
    upload_upper(&api, &token);
    let inputs = tempfile::tempdir().unwrap();
    for i in 0..3 {
        std::fs::write(inputs.path().join(format!("in-{i}.txt")), "x").unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    // No worker: the jobs stay queued.
    let mut command = fleet.sluice(&[
        "batch",
        "--quiet",
        "--on-interrupt",
        "detach",
        "--tenant",
        "local",
    ]);
    command
        .arg("--module")
        .arg(guest("uppercase.wasm"))
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path());
    let (mut child, stderr) = spawn(command);
    let id = loop {
        let line = stderr
            .recv_timeout(Duration::from_secs(60))
            .expect("the submitter names its batch");
        if let Some(rest) = line.strip_prefix("sluice: batch ") {
            break rest.split(':').next().unwrap().to_owned();
        }
    };
    poll(
        "the batch's jobs queued",
        Duration::from_secs(60),
        || fleet.rt.block_on(fleet.queue.stats()).unwrap().ready,
        |ready| *ready == 3,
    );
    let path = format!("/v1/batches/{id}");
    for method in ["GET", "DELETE"] {
        let reply = api.call(method, &path, Some(&token), b"");
        assert_eq!(
            (reply.status, reply.error_code()),
            (404, "not_found".into()),
            "{method} {path}"
        );
    }
    assert_eq!(listed(&api, &token, &id), None);
    let stats = fleet.rt.block_on(fleet.queue.stats()).unwrap();
    assert_eq!(stats.ready, 3, "nothing was cancelled: {stats:?}");

    // The command line still owns it.
    let cancelled = fleet.sluice(&["batch", "cancel", &id]).output().unwrap();
    let said = String::from_utf8_lossy(&cancelled.stdout);
    assert!(cancelled.status.success(), "{said}");
    assert!(said.contains("cancelled 3 jobs"), "{said}");
    child.wait().unwrap();
}
