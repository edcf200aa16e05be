//! The README's distributed-mode walkthrough, run as written: its `sh` block (found by
//! its heading, so edits elsewhere in the README do not matter) runs in bash against
//! this test's redis-server, in a scratch directory where `target/release` and
//! `examples` are the repository's, and what it prints is checked.
//!
//! Three things differ from a reader's machine, and only these: `cargo` and
//! `redis-server` are shell functions that do nothing (the binaries are built, and the
//! test's server runs on a free port), and the URL `redis://127.0.0.1:6379` is
//! replaced by that server's. The walkthrough's workers run in the script's process
//! group, which the harness (`sluice_tests::walkthrough`) kills at the end whatever
//! happened.

use std::time::Duration;

use sluice_tests::walkthrough::{self, sh_block};
use sluice_tests::{RedisServer, repo_root};

/// The heading the walkthrough lives under.
const HEADING: &str = "## Distributed mode: Redis and two workers";

#[test]
fn the_distributed_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = sh_block(&readme, HEADING);
    assert!(block.contains("sluice-worker serve"), "{block}");
    let redis = RedisServer::start();
    let script = format!(
        "set -eo pipefail\n\
         cargo() {{ echo \"(skipped: cargo $*)\" >&2; }}\n\
         redis-server() {{ echo \"(skipped: redis-server $*)\" >&2; }}\n\
         {}",
        block.replace("redis://127.0.0.1:6379", &redis.url())
    );
    let dir = walkthrough::scratch_dir();
    let ran = walkthrough::run(&script, dir.path(), Duration::from_secs(300));
    let (stdout, stderr) = (ran.stdout, ran.stderr);
    assert!(
        ran.status.success(),
        "walkthrough failed\n{stdout}\n{stderr}"
    );

    // The batch, run by the two workers.
    assert!(
        stdout.contains("3 jobs in") && stdout.contains("3 succeeded, 0 failed"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(dir.path().join("out/fleet/report.jsonl")).unwrap();
    assert_eq!(report.lines().count(), 3, "{report}");
    let hello = std::fs::read_to_string(dir.path().join("out/fleet/hello.txt")).unwrap();
    assert_eq!(hello, hello.to_uppercase());
    // `sluice status`.
    assert!(
        stdout.contains("queue default") && stdout.contains("completed 3"),
        "{stdout}"
    );
    // `module put` prints the hash; `result --wait --output -` the output alone on
    // stdout, its record on stderr.
    assert!(
        stdout
            .lines()
            .any(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 3 14\n"), "{stdout}");
    assert!(stderr.contains("\"outcome\":\"success\""), "{stderr}");
}
