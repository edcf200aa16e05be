//! Jobs queued before the envelope's version-3 upgrade keep working: a version-2
//! envelope (no module name) on the job stream and in the delayed set is found by
//! `sluice result` and run by a worker with the module's hash as `argv[0]`. Real
//! redis-server, `sluice` and `sluice-worker`; the envelopes are written with raw
//! commands, as an older scheduler wrote them.

use std::time::Duration;

use serde_json::json;
use sluice_shared::{Job, JobInput, codec};
use sluice_tests::{Fleet, RedisServer, ServeProcess, WorkerProcess, guest, wait};

const ADMIN: &str = "admin-secret-for-the-envelope-upgrade";

/// The envelope a version-2 scheduler wrote for `job`: this build writes a job
/// without a module name in exactly that format (version byte 2, no trailing name);
/// `shared/src/codec.rs` pins the version-2 bytes themselves.
fn version_two(job: &Job) -> Vec<u8> {
    assert!(job.program.is_none());
    let bytes = codec::encode(job);
    assert_eq!(bytes[0], 2);
    assert_eq!(codec::decode(&bytes).as_ref(), Ok(job));
    bytes
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_two_envelopes_are_found_and_run() {
    let fleet = Fleet::start("upgrade");
    let echo = fleet.put_module(&std::fs::read(guest("env_echo.wasm")).unwrap());
    let queued = Job::new(echo, JobInput::Inline(Vec::new()));
    let delayed = Job::new(echo, JobInput::Inline(Vec::new()));
    let keys = fleet.queue.keys().clone();
    fleet.rt.block_on(async {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&keys.jobs)
            .arg("*")
            .arg("e")
            .arg(version_two(&queued));
        xadd.query_async::<()>(&mut fleet.queue.connection())
            .await
            .unwrap();
        // Due at once: promoted onto the stream by the worker's maintenance.
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&keys.delayed).arg(0).arg(version_two(&delayed));
        zadd.query_async::<()>(&mut fleet.queue.connection())
            .await
            .unwrap();
    });

    // Before any worker: found where they wait, not "no job".
    let state = fleet
        .sluice(&["result", &queued.id.to_string()])
        .output()
        .unwrap();
    assert_eq!(state.status.code(), Some(5), "{}", text(&state.stderr));
    assert!(
        text(&state.stderr).contains("queued"),
        "{}",
        text(&state.stderr)
    );
    let state = fleet
        .sluice(&["result", &delayed.id.to_string()])
        .output()
        .unwrap();
    assert_eq!(state.status.code(), Some(6), "{}", text(&state.stderr));

    let _worker = fleet.worker("w0", &[]);
    for job in [&queued, &delayed] {
        let result = fleet
            .sluice(&[
                "result",
                &job.id.to_string(),
                "--wait",
                "1m",
                "--output",
                "-",
            ])
            .output()
            .unwrap();
        assert!(result.status.success(), "{}", text(&result.stderr));
        assert_eq!(text(&result.stdout), format!("arg[0]={}\n", echo.to_hex()));
    }
}

/// promote.lua's version-2 path with a job record: an API job that names its module
/// by hash is written as version 2 (no name); each timed-out run goes into the
/// delayed set through retry.lua, and promote.lua brings it back into its tenant's
/// backlog and notes the attempts in its record, until it is given up.
#[test]
fn a_version_two_api_job_is_retried_through_the_delayed_set_into_its_backlog() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "v2retry", ADMIN);
    let _worker = WorkerProcess::start(&redis.url(), "v2retry", "w0", &["--max-attempts", "3"]);
    let token = api.tenant("acme", json!({}));
    let spin = b"(module (func (export \"_start\") (loop (br 0))))";
    let reply = api.call("PUT", "/v1/modules", Some(&token), spin);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let hash = reply.json()["hash"].as_str().unwrap().to_owned();
    let reply = api.call(
        "POST",
        &format!("/v1/jobs?module={hash}&timeout=100ms"),
        Some(&token),
        b"",
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let done = wait::poll(
        "the job given up after its retries",
        Duration::from_secs(120),
        || api.ok("GET", &format!("/v1/jobs/{id}"), Some(&token), b""),
        |j| j["state"] == "done",
    );
    assert_eq!(done["result"]["outcome"], "timeout", "{done}");
    assert_eq!(done["attempts"], 3, "{done}");
    // Each promotion found the job's record by the version-2 envelope's id and noted
    // the attempts made: two retries, after runs 1 and 2.
    let noted = redis.cli(&["HGET", &format!("sluice:{{v2retry}}:job:{id}"), "attempts"]);
    assert_eq!(noted.trim(), "2", "{noted}");
}
