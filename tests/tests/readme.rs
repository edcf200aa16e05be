//! The README's distributed-mode walkthrough, run as written: its `sh` block (found by
//! its heading, so edits elsewhere in the README do not matter) runs in bash against
//! this test's redis-server, in a scratch directory where `target/release` and
//! `examples` are the repository's, and what it prints is checked.
//!
//! Three things differ from a reader's machine, and only these: `cargo` and
//! `redis-server` are shell functions that do nothing (the binaries are built, and the
//! test's server runs on a free port), and the URL `redis://127.0.0.1:6379` is
//! replaced by that server's. The walkthrough's workers run in the script's process
//! group, which the test kills at the end whatever happened.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_tests::wait::poll;
use sluice_tests::{RedisServer, repo_root};

/// The heading the walkthrough lives under.
const HEADING: &str = "## Distributed mode: Redis and two workers";

/// The first fenced `sh` block after `heading` and before the next `## ` heading.
fn sh_block(readme: &str, heading: &str) -> String {
    let section = readme
        .split_once(&format!("{heading}\n"))
        .unwrap_or_else(|| panic!("README has no heading {heading:?}"))
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let block = section
        .split_once("```sh\n")
        .unwrap_or_else(|| panic!("no sh block under {heading:?}"))
        .1;
    block
        .split_once("```")
        .expect("the sh block ends")
        .0
        .to_owned()
}

/// The profile directory the binaries are in (`target/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_owned()
}

/// The walkthrough's bash, killed with its whole process group when dropped.
struct Walkthrough(Child);

impl Drop for Walkthrough {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

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
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(profile_dir(), dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(repo_root().join("examples"), dir.path().join("examples")).unwrap();
    let mut command = Command::new("bash");
    command
        .args(["-c", &script])
        .current_dir(dir.path())
        .env_remove("SLUICE_REDIS_URL")
        .env_remove("SLUICE_QUEUE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut walkthrough = Walkthrough(command.spawn().expect("bash"));
    poll(
        "the walkthrough to end",
        Duration::from_secs(300),
        || matches!(walkthrough.0.try_wait(), Ok(Some(_))),
        |ended| *ended,
    );
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    walkthrough
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    walkthrough
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = walkthrough.0.wait().unwrap();
    assert!(status.success(), "walkthrough failed\n{stdout}\n{stderr}");

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

#[test]
fn the_block_is_found_by_its_heading() {
    let readme = "# T\n\n## Other\n\n```sh\nno\n```\n\n## Wanted\n\ntext\n\n```sh\nyes\n```\n\n## Next\n\n```sh\nlater\n```\n";
    assert_eq!(sh_block(readme, "## Wanted"), "yes\n");
}
