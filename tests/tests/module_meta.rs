//! Module metadata recorded on upload: `sluice submit` and `POST /v1/jobs` pick a job's
//! entry point from it and never download the module. Each test damages the module's
//! bytes after the upload (a download would then fail as a corrupt key), so a submit
//! that still succeeds, with the module's own default entry, read only the metadata.

use std::time::Duration;

use serde_json::json;
use sluice_shared::{EntryPoint, ModuleHash, Queue};
use sluice_tests::{Fleet, RedisServer, ServeProcess, connect, runtime};

const ADMIN: &str = "admin-secret-for-tests";

/// A module whose default entry is the raw `process` export (no `_start`): a submitter
/// that guessed instead of reading the module would pick a command.
const RAW_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "process")))"#;

fn raw() -> EntryPoint {
    EntryPoint::Raw {
        export: "process".into(),
    }
}

/// Overwrites the module's bytes with bytes that do not hash to its name: still
/// stored (so lookups find it), but any download now fails as a corrupt key.
fn damage_bytes(redis: &RedisServer, keys: &sluice_shared::queue::redis::Keys, hash: &ModuleHash) {
    assert_eq!(
        redis
            .cli(&["SET", &keys.module(hash), "not the module", "KEEPTTL"])
            .trim(),
        "OK"
    );
}

/// Runs `sluice submit` for `module` on the fleet; returns how it ended.
fn submit(fleet: &Fleet, module: &str, input: &std::path::Path) -> std::process::Output {
    fleet
        .sluice(&[
            "submit",
            "--module",
            module,
            "--input",
            input.to_str().unwrap(),
        ])
        .output()
        .expect("run sluice submit")
}

/// The one job on the fleet's job stream.
fn claim_one(fleet: &Fleet) -> sluice_shared::Job {
    let long = Duration::from_secs(30);
    let mut claimed = fleet
        .rt
        .block_on(fleet.queue.claim("test", 1, long, long))
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    claimed.pop().unwrap().delivery.expect("a job")
}

/// `sluice module put ARGS` on the fleet's queue, asserting it succeeded; the hash it
/// printed.
fn module_put(fleet: &Fleet, args: &[&str]) -> ModuleHash {
    let mut command = vec!["module", "put"];
    command.extend_from_slice(args);
    let put = fleet.sluice(&command).output().unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    String::from_utf8(put.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
#[test]
fn submit_reads_the_metadata_recorded_by_module_put_not_the_module() {
    let fleet = Fleet::start("meta");
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("raw.wat");
    std::fs::write(&module, RAW_WAT).unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, b"x").unwrap();

    let hash = module_put(&fleet, &[module.to_str().unwrap(), "--name", "raw"]);

    let meta = fleet
        .rt
        .block_on(fleet.queue.modules().meta(&hash))
        .unwrap()
        .expect("module put records the metadata");
    assert_eq!(meta.default_entry, raw());
    assert_eq!(meta.exports, ["memory", "process"]);
    assert_eq!(meta.imports.len(), 1);
    assert_eq!(meta.imports[0].name, "proc_exit");
    // An operator's module has no lifetime, and neither has its metadata.
    let meta_key = fleet.queue.keys().module_meta(&hash);
    assert_eq!(fleet.redis.cli(&["PTTL", &meta_key]).trim(), "-1");

    damage_bytes(&fleet.redis, fleet.queue.keys(), &hash);
    let out = submit(&fleet, "raw", &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(claim_one(&fleet).entry, raw());

    // The control: without metadata the submitter has to download the module, and the
    // damaged bytes fail it. (So the success above came from the metadata.)
    assert_eq!(fleet.redis.cli(&["DEL", &meta_key]).trim(), "1");
    let out = submit(&fleet, "raw", &input);
    assert!(
        !out.status.success(),
        "a download of damaged bytes must fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("do not hash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_module_stored_without_metadata_gets_it_on_first_submit() {
    let fleet = Fleet::start("meta-old");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, b"x").unwrap();
    let module = dir.path().join("raw.wat");
    std::fs::write(&module, RAW_WAT).unwrap();
    let hash = module_put(&fleet, &[module.to_str().unwrap()]);
    // As a build from before metadata stored it: bytes only.
    let meta_key = fleet.queue.keys().module_meta(&hash);
    assert_eq!(fleet.redis.cli(&["DEL", &meta_key]).trim(), "1");
    let modules = fleet.queue.modules();
    assert!(fleet.rt.block_on(modules.meta(&hash)).unwrap().is_none());

    let out = submit(&fleet, &hash.to_hex(), &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(claim_one(&fleet).entry, raw());
    let meta = fleet.rt.block_on(modules.meta(&hash)).unwrap();
    assert_eq!(meta.expect("recorded on first use").default_entry, raw());

    // From now on the module is not downloaded.
    damage_bytes(&fleet.redis, fleet.queue.keys(), &hash);
    let out = submit(&fleet, &hash.to_hex(), &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_api_job_reads_the_metadata_recorded_by_the_upload_not_the_module() {
    let redis = RedisServer::start();
    let first = ServeProcess::start(&redis.url(), "meta-api", ADMIN);
    let token = first.tenant("acme", json!({}));
    let reply = first.upload(&token, RAW_WAT.as_bytes(), "raw");
    assert_eq!(reply.status, 201, "{}", reply.text());
    let hash: ModuleHash = reply.json()["hash"].as_str().unwrap().parse().unwrap();

    let rt = runtime();
    let queue = rt.block_on(connect(&redis.url(), "meta-api"));
    let meta = rt
        .block_on(queue.modules().meta(&hash))
        .unwrap()
        .expect("the upload records the metadata");
    assert_eq!(meta.default_entry, raw());
    assert_eq!(Some(meta.size), reply.json()["bytes"].as_u64());
    // A tenant's module has a lifetime, and its metadata the same one.
    let meta_ttl: i64 = redis
        .cli(&["PTTL", &queue.keys().module_meta(&hash)])
        .trim()
        .parse()
        .unwrap();
    assert!(meta_ttl > 0, "metadata PTTL {meta_ttl}");

    // A fresh service (nothing remembered) resolves the module after its bytes are
    // damaged: only the metadata is read.
    damage_bytes(&redis, queue.keys(), &hash);
    let fresh = ServeProcess::start(&redis.url(), "meta-api", ADMIN);
    let reply = fresh.call("POST", "/v1/jobs?module=raw", Some(&token), b"x");
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    // The service's dispatcher admits the job onto the job stream.
    let long = Duration::from_secs(30);
    let mut claimed = rt
        .block_on(queue.claim("test", 1, long, long))
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let job = claimed.pop().unwrap().delivery.expect("a job");
    assert_eq!(job.id.to_string(), id);
    assert_eq!(job.entry, raw());

    // Deleting the tenant's hold deletes the bytes, and the metadata with them.
    let deleted = fresh.call("DELETE", "/v1/modules/raw", Some(&token), b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["bytes_deleted"], true);
    let meta_key = queue.keys().module_meta(&hash);
    assert_eq!(redis.cli(&["EXISTS", &meta_key]).trim(), "0");
}
