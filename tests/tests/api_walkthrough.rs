//! The HTTP API walkthrough of `docs/api.md`, run as written: its "Start it" block
//! (a worker and `sluice serve` in the background) then its "Walkthrough" block, both
//! found by their headings, run in one `bash -euo pipefail` against this test's
//! redis-server, in a scratch directory where `target/release` and `examples` are the
//! repository's; what the replies say is checked.
//!
//! Three things differ from a reader's machine, and only these: `redis-server` is a
//! shell function that does nothing (the test's server runs on a free port), the URL
//! `redis://127.0.0.1:6379` is replaced by that server's, and the service address
//! `127.0.0.1:8080` by a free port's. The background processes run in the script's
//! process group, which the harness kills at the end whatever happened.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::walkthrough::{self, sh_block};
use sluice_tests::{RedisServer, repo_root};

/// A port nothing listens on now (the service takes it a moment later).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// The lines of `text` that are JSON objects.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(Value::is_object)
        .collect()
}

#[test]
fn the_api_walkthrough_runs_as_written() {
    let doc = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    let start = sh_block(&doc, "## Start it");
    let steps = sh_block(&doc, "## Walkthrough");
    assert!(start.contains("sluice serve") && start.contains("sluice-worker serve"));
    assert!(steps.contains("/v1/jobs"), "{steps}");
    let redis = RedisServer::start();
    let service = format!("127.0.0.1:{}", free_port());
    let script = format!(
        "set -euo pipefail\n\
         redis-server() {{ echo \"(skipped: redis-server $*)\" >&2; }}\n\
         {start}\n{steps}"
    )
    .replace("redis://127.0.0.1:6379", &redis.url())
    .replace("127.0.0.1:8080", &service);
    let dir = walkthrough::scratch_dir();
    let ran = walkthrough::run(&script, dir.path(), Duration::from_secs(300));
    let (stdout, stderr) = (ran.stdout, ran.stderr);
    assert!(
        ran.status.success(),
        "walkthrough failed\n{stdout}\n{stderr}"
    );

    // readyz, the upload, the job, then its output.
    let replies = json_lines(&stdout);
    let upload = replies
        .iter()
        .find(|r| r.get("hash").is_some())
        .unwrap_or_else(|| panic!("no upload reply in\n{stdout}"));
    assert_eq!(upload["name"], "upper", "{upload}");
    assert_eq!(upload["ttl_seconds"], 30 * 24 * 3600, "{upload}");
    let job = replies
        .iter()
        .find(|r| r.get("state").is_some())
        .unwrap_or_else(|| panic!("no job reply in\n{stdout}"));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["outcome"], "success", "{job}");
    assert_eq!(job["result"]["output_bytes"], 15, "{job}");
    assert!(stdout.ends_with("\nHELLO FROM CURL\n"), "{stdout}");
}
