//! The guest's `argv[0]` is its module's name as the submitter gave it, in every
//! submit path of the fleet (`sluice submit`, a distributed `sluice batch`, the API's
//! jobs and batches); a job that names its module by hash keeps the hash; a name that
//! breaks the module-name rule is refused at submit. Real redis-server, `sluice serve`
//! and workers; the guest (`env_echo`) prints its argv.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::json;
use sluice_tests::{Fleet, RedisServer, ServeProcess, WorkerProcess, bin, guest, wait};

const ADMIN: &str = "admin-secret-for-program-names";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> std::process::Output {
    command.output().expect("run sluice")
}

#[test]
fn the_fleet_passes_the_name_the_submitter_gave_and_the_hash_otherwise() {
    let fleet = Fleet::start("argv0");
    let bytes = std::fs::read(guest("env_echo.wasm")).unwrap();
    let hash = fleet
        .rt
        .block_on(fleet.queue.modules().put(&bytes, Some("echo")))
        .unwrap();
    let _worker = fleet.worker("w0", &[]);
    let input = tempfile::NamedTempFile::new().unwrap();

    // `sluice submit --module NAME`, then `--module HASH`.
    for (module, argv0) in [("echo", "echo".to_owned()), (&hash.to_hex(), hash.to_hex())] {
        let input = input.path().to_str().unwrap();
        let submitted =
            run(&mut fleet.sluice(&["submit", "--module", module, "--arg", "x", "--input", input]));
        assert!(submitted.status.success(), "{}", text(&submitted.stderr));
        let id = text(&submitted.stdout).trim().to_owned();
        let result = run(&mut fleet.sluice(&["result", &id, "--wait", "1m", "--output", "-"]));
        assert!(result.status.success(), "{}", text(&result.stderr));
        assert_eq!(
            text(&result.stdout),
            format!("arg[0]={argv0}\narg[1]=x\nx unset\n"),
            "--module {module}"
        );
    }

    // An alias stored before the module-name rule (a space, which it now refuses)
    // still runs, its guest seeing the hash.
    fleet
        .rt
        .block_on(fleet.queue.modules().put(&bytes, Some("old name")))
        .unwrap();
    let submitted = run(&mut fleet.sluice(&[
        "submit",
        "--module",
        "old name",
        "--input",
        input.path().to_str().unwrap(),
    ]));
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let id = text(&submitted.stdout).trim().to_owned();
    let result = run(&mut fleet.sluice(&["result", &id, "--wait", "1m", "--output", "-"]));
    assert!(result.status.success(), "{}", text(&result.stderr));
    assert_eq!(text(&result.stdout), format!("arg[0]={}\n", hash.to_hex()));

    // A distributed batch: the module's file name, as in an embedded batch.
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("a.txt"), "").unwrap();
    let out = tempfile::tempdir().unwrap();
    let batch = run(fleet
        .sluice(&["batch", "--quiet"])
        .arg("--module")
        .arg(guest("env_echo.wasm"))
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path()));
    assert!(batch.status.success(), "{}", text(&batch.stderr));
    let echoed = std::fs::read_to_string(out.path().join("a.txt")).unwrap();
    assert_eq!(echoed, "arg[0]=env_echo.wasm\n");
}

#[test]
fn the_api_passes_the_name_for_jobs_and_batches_and_the_hash_by_hash() {
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "argv0-api", ADMIN);
    let _worker = WorkerProcess::start(&redis.url(), "argv0-api", "w0", &[]);
    let token = api.tenant("acme", json!({}));
    let bytes = std::fs::read(guest("env_echo.wasm")).unwrap();
    let reply = api.upload(&token, &bytes, "echo");
    assert_eq!(reply.status, 201, "{}", reply.text());
    let hash = reply.json()["hash"].as_str().unwrap().to_owned();

    let output_of = |id: &str| {
        wait::poll(
            &format!("job {id} done"),
            Duration::from_secs(60),
            || {
                api.call("GET", &format!("/v1/jobs/{id}"), Some(&token), b"")
                    .json()
            },
            |job| job["state"] == "done",
        );
        let output = api.call("GET", &format!("/v1/jobs/{id}/output"), Some(&token), b"");
        assert_eq!(output.status, 200, "{}", output.text());
        output.text()
    };
    for (module, argv0) in [("echo", "echo"), (hash.as_str(), hash.as_str())] {
        let reply = api.call(
            "POST",
            &format!("/v1/jobs?module={module}"),
            Some(&token),
            b"",
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(
            output_of(&id),
            format!("arg[0]={argv0}\n"),
            "module={module}"
        );
    }

    let empty = base64::engine::general_purpose::STANDARD.encode(b"");
    let body = json!({ "module": "echo", "inputs": [{ "name": "a", "data": empty }] });
    let reply = api.post_json("/v1/batches", &token, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(output_of(&id), "arg[0]=echo\n");
}

#[test]
fn a_hostile_module_name_is_refused_at_submit() {
    let long = "a".repeat(129);
    // The API: 400 naming the field, for a name too long, with a control character, or
    // with a `/` (percent-encoded in the query).
    let redis = RedisServer::start();
    let api = ServeProcess::start(&redis.url(), "argv0-bad", ADMIN);
    let token = api.tenant("acme", json!({}));
    for module in [long.as_str(), "a%1B%5B31mb", "a%2Fb", "a%00"] {
        let reply = api.call(
            "POST",
            &format!("/v1/jobs?module={module}"),
            Some(&token),
            b"x",
        );
        assert_eq!(reply.status, 400, "module={module}: {}", reply.text());
        assert!(reply.text().contains("module"), "{}", reply.text());
    }
    // Nor can a module be stored under such a name.
    let bytes = std::fs::read(guest("env_echo.wasm")).unwrap();
    // Nor one with invisible, reordering or blank characters, or a leading '-'.
    for name in [
        long.as_str(),
        "a%1Bb",
        "a%2Fb",
        "a%E2%80%AEb",
        "a%E2%80%8Bb",
        "a%E2%80%A8b",
        "a%20b",
        "-rf",
    ] {
        let reply = api.call(
            "PUT",
            &format!("/v1/modules?name={name}"),
            Some(&token),
            &bytes,
        );
        assert_eq!(reply.status, 400, "name={name}: {}", reply.text());
    }
    let body = json!({ "module": long, "inputs": [{ "name": "a", "data": "" }] });
    let reply = api.post_json("/v1/batches", &token, &body);
    assert_eq!(reply.status, 400, "{}", reply.text());

    // `sluice submit`: exit 2 naming --module; a name no rule ever allowed before
    // connecting (nothing listens on port 9), one the rule now refuses when it names
    // no stored module.
    for (module, url) in [
        (long.as_str(), "redis://127.0.0.1:9".to_owned()),
        ("a/b", "redis://127.0.0.1:9".to_owned()),
        ("a\u{1b}[31mb", redis.url()),
        ("a\u{202e}b", redis.url()),
        ("-rf", redis.url()),
    ] {
        let submitted = run(bin("sluice")
            .arg("submit")
            .arg(format!("--module={module}"))
            .args(["--input", "/dev/null", "--redis", &url]));
        assert_eq!(
            submitted.status.code(),
            Some(2),
            "{}",
            text(&submitted.stderr)
        );
        assert!(
            text(&submitted.stderr).contains("--module"),
            "{}",
            text(&submitted.stderr)
        );
    }
    for name in [
        long.as_str(),
        "a\u{1b}[31mb",
        "a/b",
        "a\u{200b}b",
        "a\u{2029}b",
    ] {
        let put = run(bin("sluice")
            .args(["module", "put", "/dev/null", "--name", name])
            .args(["--redis", "redis://127.0.0.1:9"]));
        assert_eq!(put.status.code(), Some(2), "{}", text(&put.stderr));
        assert!(
            text(&put.stderr).contains("--name"),
            "{}",
            text(&put.stderr)
        );
    }
}
