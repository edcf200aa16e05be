//! Running a document's shell walkthrough as written: the fenced `sh` block under a
//! heading, run by bash in a scratch directory where `target/release` and `examples`
//! are the repository's, in its own process group, which is killed when the run ends
//! (the walkthroughs start workers and services in the background). What it printed
//! goes to files, not pipes, so a background process still holding them cannot stall
//! the reading.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::repo_root;
use crate::wait::poll;

/// The one fenced `sh` block of the section under `heading` (a whole line: at the
/// start of the document or of a line, ended by a newline), up to the next `## `
/// heading. Panics when the heading is missing or appears twice, or when the section
/// holds no `sh` block or more than one (a test would then run only part of it).
pub fn sh_block(doc: &str, heading: &str) -> String {
    let line = format!("{heading}\n");
    let starts: Vec<usize> = doc
        .match_indices(&line)
        .map(|(at, _)| at)
        .filter(|&at| at == 0 || doc.as_bytes()[at - 1] == b'\n')
        .collect();
    let [start] = starts[..] else {
        panic!(
            "heading {heading:?} is on {} lines, not exactly one",
            starts.len()
        );
    };
    let section = format!("\n{}", &doc[start + line.len()..]);
    let section = section.split("\n## ").next().unwrap_or(&section);
    let blocks: Vec<&str> = section.split("\n```sh\n").skip(1).collect();
    let [block] = blocks[..] else {
        panic!(
            "the section under {heading:?} has {} sh blocks, not exactly one",
            blocks.len()
        );
    };
    block
        .split_once("```")
        .expect("the sh block ends")
        .0
        .to_owned()
}

/// A scratch directory holding `target/release` (the built binaries) and `examples`
/// (the built guests and sample inputs) as links to the repository's.
pub fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("scratch dir");
    std::fs::create_dir_all(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(crate::profile_dir(), dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(repo_root().join("examples"), dir.path().join("examples")).unwrap();
    dir
}

/// How a walkthrough ended.
pub struct Ran {
    /// The script's exit status.
    pub status: ExitStatus,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it (and what it started) wrote to stderr.
    pub stderr: String,
}

/// A bash running a script, killed with its whole process group when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Runs `script` with `bash -c` in `dir` (no `SLUICE_*` or `RUST_LOG` from the test's
/// environment), waits up to `within` for it to end, then kills what it left running.
pub fn run(script: &str, dir: &Path, within: Duration) -> Ran {
    let out_path = dir.join(".walkthrough.stdout");
    let err_path = dir.join(".walkthrough.stderr");
    let mut command = Command::new("bash");
    command
        .args(["-c", script])
        .current_dir(dir)
        .env_remove("SLUICE_REDIS_URL")
        .env_remove("SLUICE_REDIS_CLUSTER")
        .env_remove("SLUICE_QUEUE")
        .env_remove("SLUICE_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut group = Group(command.spawn().expect("bash"));
    let printed = || {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read(&out_path), read(&err_path))
    };
    poll(
        "the walkthrough to end",
        within,
        || match group.0.try_wait() {
            Ok(Some(_)) => String::new(),
            _ => format!("still running\n{}", printed()),
        },
        String::is_empty,
    );
    let status = group.0.wait().expect("the walkthrough's status");
    drop(group);
    Ran {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_found_by_its_heading() {
        let doc = "# T\n\n## Other\n\n```sh\nno\n```\n\n## Wanted\n\ntext\n\n```sh\nyes\n```\n\n## Next\n\n```sh\nlater\n```\n";
        assert_eq!(sh_block(doc, "## Wanted"), "yes\n");
    }

    #[test]
    fn the_heading_is_matched_at_a_line_start_only() {
        let doc = "# T\n\nsee ## Wanted\n\n```sh\nno\n```\n\n## Wanted\n\n```sh\nyes\n```\n";
        assert_eq!(sh_block(doc, "## Wanted"), "yes\n");
        let prefixed = "### Wanted\n\n```sh\nno\n```\n";
        assert!(std::panic::catch_unwind(|| sh_block(prefixed, "## Wanted")).is_err());
    }

    #[test]
    fn a_section_with_two_sh_blocks_is_refused() {
        let doc = "## Wanted\n\n```sh\none\n```\n\n```sh\ntwo\n```\n";
        assert!(std::panic::catch_unwind(|| sh_block(doc, "## Wanted")).is_err());
    }
}
