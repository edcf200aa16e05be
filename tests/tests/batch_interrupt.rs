//! Interrupting `sluice batch` with a signal, embedded and distributed, and following a
//! distributed batch by its id (`batch cancel`, `batch attach`): the report holds only
//! whole lines, no partial output stays, the summary says "interrupted", exit 130.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sluice_shared::{Job, JobInput, ModuleHash, Queue};
use sluice_tests::batch::report_lines;
use sluice_tests::fleet::Fleet;
use sluice_tests::wait::poll;
use sluice_tests::{bin, guest, spawn_logged};

/// A guest that computes for a while (50M iterations) and succeeds with no output.
const SLOW: &str = "compute_loop.wat";

fn inputs(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        std::fs::write(dir.path().join(format!("in{i:03}")), format!("{i}\n")).unwrap();
    }
    dir
}

fn names(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("in{i:03}")).collect()
}

/// Output files (not the report, no partial file left).
fn outputs(out: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".part"), "partial file left: {name}");
        if name != "report.jsonl" {
            files.insert(name);
        }
    }
    files
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The first stderr line containing `what`, waiting up to a minute.
fn line_with(lines: &mpsc::Receiver<String>, what: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no stderr line with {what:?}: {e}"));
        if line.contains(what) {
            return line;
        }
    }
}

/// Waits until the report has at least one line.
fn first_report_line(out: &Path) {
    poll(
        "a report line",
        Duration::from_secs(120),
        || report_lines(out).len(),
        |n| *n > 0,
    );
}

fn finish(child: Child) -> (Output, String) {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

/// The batch id a summary names (`batch: <id>`).
fn batch_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("batch: "))
        .unwrap_or_else(|| panic!("no batch id in {stdout}"))
        .trim()
        .to_owned()
}

#[test]
fn an_interrupted_embedded_batch_keeps_whole_lines_and_no_partial_files() {
    let inputs = inputs(200);
    let out = tempfile::tempdir().unwrap();
    let mut command = bin("sluice");
    command
        .args(["batch", "--quiet", "--concurrency", "2", "--module"])
        .arg(guest(SLOW))
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path());
    let (child, _stderr) = spawn_logged(command);
    first_report_line(out.path());
    signal(&child, "-INT");
    let (output, stdout) = finish(child);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    let lines = report_lines(out.path());
    assert!(
        !lines.is_empty() && lines.len() < 200,
        "{} lines",
        lines.len()
    );
    // Every output written is in the report, and every success has its output.
    let reported: BTreeSet<String> = lines
        .iter()
        .map(|l| l["input"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outputs(out.path()), reported);
    assert!(lines.iter().all(|l| l["outcome"] == "success"));
}

#[test]
fn a_second_signal_abandons_running_jobs_and_still_leaves_a_clean_directory() {
    let inputs = inputs(40);
    let out = tempfile::tempdir().unwrap();
    let mut command = bin("sluice");
    command
        .args(["batch", "--quiet", "--concurrency", "2", "--timeout", "60s"])
        // Outputs whose cap is past the batch's memory bound stream to partial files,
        // which show the jobs running (and must not stay behind).
        .args(["--max-output", "1GiB"])
        .arg("--module")
        .arg(guest("infinite_loop.wat"))
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path());
    let (child, stderr) = spawn_logged(command);
    // Jobs are running once their partial outputs exist.
    poll(
        "jobs running",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(out.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".part")
                })
                .count()
        },
        |running| *running == 2,
    );
    signal(&child, "-TERM");
    line_with(&stderr, "interrupted");
    signal(&child, "-TERM");
    let (output, stdout) = finish(child);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(stdout.contains("abandoned"), "{stdout}");
    assert!(report_lines(out.path()).is_empty());
    assert!(outputs(out.path()).is_empty());
}

#[test]
fn a_second_signal_abandons_jobs_whose_outputs_are_in_memory_and_leaves_only_listed_ones() {
    // The default path (outputs taken in memory, no partial file while a job runs):
    // the first 5 inputs are quick, the rest spin, so once 5 lines are written both
    // slots are spinning.
    let inputs = inputs(0);
    for i in 0..20 {
        let text = if i < 5 { "quick\n" } else { "spin\n" };
        std::fs::write(inputs.path().join(format!("in{i:03}")), text).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let mut command = bin("sluice");
    command
        .args(["batch", "--quiet", "--concurrency", "2", "--timeout", "60s"])
        .arg("--module")
        .arg(guest("quick_or_spin.wat"))
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path());
    let (child, stderr) = spawn_logged(command);
    poll(
        "the quick jobs' lines",
        Duration::from_secs(60),
        || report_lines(out.path()).len(),
        |n| *n == 5,
    );
    signal(&child, "-TERM");
    line_with(&stderr, "interrupted");
    signal(&child, "-TERM");
    let (output, stdout) = finish(child);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("abandoned"), "{stdout}");
    let lines = report_lines(out.path());
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|l| l["outcome"] == "success"));
    let quick: BTreeSet<String> = (0..5).map(|i| format!("in{i:03}")).collect();
    assert_eq!(outputs(out.path()), quick);
}

fn distributed(fleet: &Fleet, inputs: &Path, out: &Path, on_interrupt: &str) -> Command {
    let mut command = fleet.sluice(&["batch", "--quiet", "--on-interrupt", on_interrupt]);
    command
        .arg("--module")
        .arg(guest(SLOW))
        .arg(inputs)
        .arg("--out")
        .arg(out);
    command
}

#[test]
fn an_interrupted_distributed_batch_cancels_what_has_not_started() {
    let fleet = Fleet::start("int_cancel");
    let _worker = fleet.worker("w", &["--concurrency", "1"]);
    let inputs = inputs(60);
    let out = tempfile::tempdir().unwrap();
    let (child, _stderr) = spawn_logged(distributed(&fleet, inputs.path(), out.path(), "cancel"));
    first_report_line(out.path());
    signal(&child, "-INT");
    let (output, stdout) = finish(child);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(stdout.contains("cancelled"), "{stdout}");
    batch_id(&stdout);
    let lines = report_lines(out.path());
    assert!(lines.len() < 60, "{} lines", lines.len());
    assert_eq!(outputs(out.path()).len(), lines.len());
    // Nothing of the batch is left on the queue: the running job finished before
    // the submitter exited, the rest were cancelled.
    let stats = fleet.rt.block_on(fleet.queue.stats()).unwrap();
    assert_eq!((stats.ready, stats.leased, stats.delayed), (0, 0, 0));
    assert!(stats.completed < 60, "{stats:?}");
    assert_eq!(stats.completed as usize, lines.len());
}

#[test]
fn a_detached_batch_runs_on_and_attach_writes_every_output_once() {
    let fleet = Fleet::start("int_detach");
    let _worker = fleet.worker("w", &["--concurrency", "2"]);
    let inputs = inputs(40);
    let out = tempfile::tempdir().unwrap();
    let (child, _stderr) = spawn_logged(distributed(&fleet, inputs.path(), out.path(), "detach"));
    first_report_line(out.path());
    signal(&child, "-INT");
    let (output, stdout) = finish(child);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("detached"), "{stdout}");
    let id = batch_id(&stdout);
    let before = report_lines(out.path()).len();
    assert!(before < 40);

    let out_dir = out.path().to_string_lossy();
    let attached = fleet
        .sluice(&["batch", "attach", &id, "--quiet", "--out", &out_dir])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&attached.stdout);
    assert!(
        attached.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&attached.stderr)
    );
    assert_eq!(outputs(out.path()), names(40));
    let lines = report_lines(out.path());
    let reported: Vec<String> = lines
        .iter()
        .map(|l| l["input"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reported.len(), 40, "one line per input");
    assert_eq!(reported.iter().cloned().collect::<BTreeSet<_>>(), names(40));
}

#[test]
fn batch_cancel_cancels_a_queued_batch_with_no_worker() {
    let fleet = Fleet::start("cancel_cli");
    let inputs = inputs(25);
    let out = tempfile::tempdir().unwrap();
    let (child, stderr) = spawn_logged(distributed(&fleet, inputs.path(), out.path(), "detach"));
    let started = line_with(&stderr, "sluice: batch ");
    let id = started
        .strip_prefix("sluice: batch ")
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned();
    // No worker: the batch says so, and how to start one.
    let hint = line_with(&stderr, "0 workers on queue cancel_cli");
    assert!(hint.contains("sluice-worker serve"), "{hint}");

    poll(
        "the batch's jobs queued",
        Duration::from_secs(60),
        || fleet.rt.block_on(fleet.queue.stats()).unwrap().ready,
        |ready| *ready == 25,
    );
    let cancelled = fleet.sluice(&["batch", "cancel", &id]).output().unwrap();
    let said = String::from_utf8_lossy(&cancelled.stdout);
    assert!(cancelled.status.success(), "{said}");
    assert!(said.contains("cancelled 25 jobs; 0 running"), "{said}");
    let stats = fleet.rt.block_on(fleet.queue.stats()).unwrap();
    assert_eq!((stats.ready, stats.leased), (0, 0));

    // The submitter notices its jobs were cancelled (not lost: none is enqueued
    // again) and ends.
    let (output, stdout) = finish(child);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("0 jobs in"), "{stdout}");
    let stats = fleet.rt.block_on(fleet.queue.stats()).unwrap();
    assert_eq!((stats.ready, stats.leased, stats.completed), (0, 0, 0));
}

/// On a terminal the first Ctrl-C asks what to do; answering `c` cancels. Driven
/// through a pseudo-terminal (`script`), with Ctrl-C typed as the terminal's interrupt
/// character, so the progress bar is drawn too.
#[test]
fn ctrl_c_on_a_terminal_asks_and_c_cancels() {
    use std::io::{Read, Write};

    let fleet = Fleet::start("int_tty");
    let _worker = fleet.worker("w", &["--concurrency", "1"]);
    let inputs = inputs(60);
    let out = tempfile::tempdir().unwrap();
    let sluice = bin("sluice");
    let command_line = format!(
        "{} batch --module {} {} --out {} --redis {} --queue int_tty",
        sluice.get_program().to_string_lossy(),
        guest(SLOW).display(),
        inputs.path().display(),
        out.path().display(),
        fleet.url()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &command_line, "/dev/null"])
        .env_remove("SLUICE_REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    let mut terminal = child.stdout.take().unwrap();
    let (tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = terminal.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let mut wait_for = |what: &str| {
        while !screen.contains(what) {
            let bytes = seen
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no {what:?} on the terminal ({e}): {screen}"));
            screen.push_str(&String::from_utf8_lossy(&bytes));
        }
        screen.clone()
    };
    first_report_line(out.path());
    let keys = child.stdin.as_mut().unwrap();
    keys.write_all(b"\x03").unwrap();
    keys.flush().unwrap();
    wait_for("Type c and Enter");
    keys.write_all(b"c\n").unwrap();
    keys.flush().unwrap();
    let screen = wait_for("report: ");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{screen}");
    assert!(screen.contains("interrupted"), "{screen}");
    assert!(screen.contains("cancelled"), "{screen}");
    let lines = report_lines(out.path());
    assert!(lines.len() < 60);
    assert_eq!(outputs(out.path()).len(), lines.len());
    let stats = fleet.rt.block_on(fleet.queue.stats()).unwrap();
    assert_eq!((stats.ready, stats.leased, stats.delayed), (0, 0, 0));
}

#[test]
fn attach_reports_jobs_redis_lost_and_ends() {
    let fleet = Fleet::start("attach_lost");
    let module = ModuleHash::of(b"never run");
    let jobs: Vec<Job> = (0..3)
        .map(|n| {
            let mut job = Job::new(module, JobInput::Inline(vec![n]));
            job.label = format!("in{n}");
            job
        })
        .collect();
    let id = uuid::Uuid::now_v7().to_string();
    fleet
        .rt
        .block_on(
            fleet
                .queue
                .results()
                .enqueue_batch(&id, "local", jobs.len(), &jobs, false),
        )
        .unwrap();
    // Redis loses the queued entries (their records and the batch stay): no worker
    // will ever finish them, and attach holds no input to enqueue them again.
    let jobs_key = fleet.queue.keys().jobs.clone();
    let entries = fleet.redis.cli(&["XRANGE", &jobs_key, "-", "+"]);
    for entry in entries
        .lines()
        .filter(|l| l.contains('-') && !l.contains(' '))
    {
        fleet.redis.cli(&["XDEL", &jobs_key, entry.trim()]);
    }
    assert_eq!(fleet.redis.cli(&["XLEN", &jobs_key]).trim(), "0");
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_string_lossy();
    let attached = fleet
        .sluice(&["batch", "attach", &id, "--quiet", "--out", &out_dir])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&attached.stdout);
    let stderr = String::from_utf8_lossy(&attached.stderr);
    assert_eq!(attached.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("3 jobs lost by Redis"),
        "{stdout}\n{stderr}"
    );
}
