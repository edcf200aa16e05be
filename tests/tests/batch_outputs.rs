//! `sluice batch --output-format files|tar` end to end: outputs byte-exact in both
//! formats (taken in memory, or streamed when the output cap passes the batch's memory
//! bound), the archive read back with the `tar` crate and holding exactly the jobs its
//! report lists as successes (also after an interrupt), hostile outputs and names.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sluice_tests::batch::{batch_command, report_lines, run_batch};
use sluice_tests::spawn_logged;
use sluice_tests::wait::poll;

/// The report's successes by input name.
fn successes(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = report_lines(out)
        .iter()
        .filter(|line| line["outcome"] == "success")
        .map(|line| line["input"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The archive's entries in order (read with the `tar` crate: a broken archive fails).
fn archive(out: &Path) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::File::open(out.join("outputs.tar")).expect("outputs.tar");
    let mut archive = tar::Archive::new(file);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.expect("a whole entry");
            assert_eq!(entry.header().entry_type(), tar::EntryType::Regular);
            let name = entry.path().unwrap().to_str().unwrap().to_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(data.len() as u64, entry.header().size().unwrap());
            (name, data)
        })
        .collect()
}

/// The files in OUT by name (no partial file may be left).
fn files(out: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            assert!(!name.ends_with(".part"), "partial file left: {name}");
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// [`run_batch`] with `RUST_LOG` set, so the batch's log lines are in its stderr.
fn batch_logged(flags: &[&str], module: &str, inputs: &Path, out: &Path, log: &str) -> Output {
    batch_command(flags, module, inputs, out)
        .env("RUST_LOG", log)
        .output()
        .unwrap()
}

/// The debug line that says which output path a batch took.
const PATH_LOG: &str = "sluice_scheduler::batch=debug";

fn stdout(run: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    )
}

/// Inputs for the uppercase guest: `n` small text files, hostile names (long, spaces,
/// non-ASCII, a leading dot, a glob) and one `big` bytes long.
fn inputs(n: usize, big: usize) -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = BTreeMap::new();
    for i in 0..n {
        let text = format!("input {i}: the quick brown fox\n").repeat(i % 7 + 1);
        all.insert(format!("in{i:04}.txt"), text.into_bytes());
    }
    for name in [
        "n".repeat(200),
        "with space & quote'".to_owned(),
        "ünïcödé-名前".to_owned(),
        ".hidden".to_owned(),
        "*?[x]".to_owned(),
    ] {
        all.insert(name, b"hostile name\n".to_vec());
    }
    all.insert("empty".to_owned(), Vec::new());
    if big > 0 {
        let big: Vec<u8> = (0..big).map(|i| b'a' + (i % 26) as u8).collect();
        all.insert("big".to_owned(), big);
    }
    for (name, data) in &all {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    (dir, all)
}

fn upper(all: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    all.iter()
        .map(|(name, data)| (name.clone(), data.to_ascii_uppercase()))
        .collect()
}

/// Both formats give the same bytes, once in memory and once streamed: `path` is the
/// one the batch says it took ("in memory" or "streamed").
fn both_formats_exact(flags: &[&str], big: usize, path: &str) {
    let (inputs, all) = inputs(60, big);
    let expected = upper(&all);

    let out = tempfile::tempdir().unwrap();
    let run = batch_logged(flags, "uppercase.wasm", inputs.path(), out.path(), PATH_LOG);
    assert!(run.status.success(), "{}", stdout(&run));
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains(&format!("outputs {path}")), "{said}");
    let mut got = files(out.path());
    assert!(got.remove("report.jsonl").is_some());
    assert_eq!(got, expected);
    assert_eq!(successes(out.path()).len(), all.len());

    let out = tempfile::tempdir().unwrap();
    let tar_flags = [flags, &["--output-format", "tar"]].concat();
    let run = run_batch(&tar_flags, "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));
    let names: Vec<String> = files(out.path()).into_keys().collect();
    assert_eq!(names, ["outputs.tar", "report.jsonl"]);
    let entries = archive(out.path());
    assert_eq!(entries.len(), all.len(), "one entry per job");
    assert_eq!(entries.into_iter().collect::<BTreeMap<_, _>>(), expected);
    let lines = report_lines(out.path());
    assert_eq!(lines.len(), all.len());
    for line in &lines {
        let name = line["input"].as_str().unwrap();
        assert_eq!(line["output_bytes"], expected[name].len() as u64, "{name}");
    }
}

#[test]
fn outputs_taken_in_memory_are_byte_exact_in_both_formats() {
    // Two slots × the default 64 MiB cap are within the memory bound.
    both_formats_exact(&["--concurrency", "2"], 0, "in memory");
}

#[test]
fn outputs_past_the_memory_bound_stream_and_are_byte_exact_in_both_formats() {
    // Two slots × 600 MiB pass the 1 GiB bound: outputs stream to partial files; the
    // 3 MiB input passes the 1 MiB input bound and streams too.
    both_formats_exact(
        &["--concurrency", "2", "--max-output", "600MiB"],
        3 << 20,
        "streamed",
    );
}

#[test]
fn output_memory_sets_the_bound_and_zero_streams_every_output() {
    both_formats_exact(
        &["--concurrency", "2", "--output-memory", "0"],
        0,
        "streamed",
    );
    // 1 slot x 64 MiB fits 64MiB: in memory again.
    both_formats_exact(
        &["--concurrency", "1", "--output-memory", "64MiB"],
        0,
        "in memory",
    );
    let (inputs, _) = inputs(1, 0);
    let out = tempfile::tempdir().unwrap();
    let run = run_batch(
        &["--output-memory", "lots"],
        "uppercase.wasm",
        inputs.path(),
        out.path(),
    );
    assert_eq!(run.status.code(), Some(2), "{}", stdout(&run));
    assert!(stdout(&run).contains("--output-memory"), "{}", stdout(&run));
}

#[test]
fn an_output_past_its_cap_is_a_typed_failure_with_no_file_or_entry() {
    let (inputs, _) = inputs(3, 0);
    // 2 slots × 1 KiB: in memory; 64 slots × 32 MiB pass the 1 GiB bound: streamed.
    for (slots, cap) in [("2", "1KiB"), ("64", "32MiB")] {
        for format in ["files", "tar"] {
            let out = tempfile::tempdir().unwrap();
            let run = run_batch(
                &[
                    "--output-format",
                    format,
                    "--concurrency",
                    slots,
                    "--max-output",
                    cap,
                ],
                "stdout_flood.wasm",
                inputs.path(),
                out.path(),
            );
            assert_eq!(run.status.code(), Some(1), "{}", stdout(&run));
            let lines = report_lines(out.path());
            assert_eq!(lines.len(), 3 + 6, "{format} {cap}");
            assert!(
                lines.iter().all(|l| l["outcome"] == "output_limit"),
                "{format} {cap}: {lines:?}"
            );
            let left: Vec<String> = files(out.path()).into_keys().collect();
            if format == "tar" {
                assert_eq!(left, ["outputs.tar", "report.jsonl"]);
                assert!(archive(out.path()).is_empty());
            } else {
                assert_eq!(left, ["report.jsonl"]);
            }
        }
    }
}

#[test]
fn an_interrupted_tar_batch_leaves_a_valid_archive_of_exactly_the_listed_jobs() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..200 {
        std::fs::write(dir.path().join(format!("in{i:03}")), format!("{i}\n")).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let (child, _stderr) = spawn_logged(batch_command(
        &["--concurrency", "2", "--output-format", "tar"],
        "compute_loop.wat",
        dir.path(),
        out.path(),
    ));
    poll(
        "a report line",
        Duration::from_secs(120),
        || report_lines(out.path()).len(),
        |n| *n > 0,
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let run = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout).into_owned();
    assert_eq!(run.status.code(), Some(130), "{said}");
    assert!(said.contains("interrupted"), "{said}");
    let listed = successes(out.path());
    assert!(!listed.is_empty() && listed.len() < 200, "{}", listed.len());
    assert_eq!(report_lines(out.path()).len(), listed.len());
    let mut entries: Vec<String> = archive(out.path()).into_iter().map(|(n, _)| n).collect();
    entries.sort();
    assert_eq!(entries, listed);
    let names: Vec<String> = files(out.path()).into_keys().collect();
    assert_eq!(names, ["outputs.tar", "report.jsonl"]);
}

#[test]
fn resume_refuses_an_archive_and_force_replaces_it() {
    let (inputs, all) = inputs(5, 0);
    let out = tempfile::tempdir().unwrap();
    let tar = ["--output-format", "tar"];
    let run = run_batch(&tar, "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));

    // Refused in either format: a tar run's outputs are not files to trust or keep.
    std::fs::write(out.path().join("in0000.txt"), "USER FILE").unwrap();
    for format in ["tar", "files"] {
        let run = run_batch(
            &["--output-format", format, "--resume"],
            "uppercase.wasm",
            inputs.path(),
            out.path(),
        );
        assert_eq!(run.status.code(), Some(2), "{}", stdout(&run));
        assert!(
            stdout(&run).contains("--resume cannot continue a batch with --output-format tar")
                && stdout(&run).contains("pass --force"),
            "{}",
            stdout(&run)
        );
        assert_eq!(archive(out.path()).len(), all.len(), "left as it was");
    }
    assert_eq!(
        std::fs::read(out.path().join("in0000.txt")).unwrap(),
        b"USER FILE"
    );

    let run = run_batch(
        &["--output-format", "tar", "--force"],
        "uppercase.wasm",
        inputs.path(),
        out.path(),
    );
    assert!(run.status.success(), "{}", stdout(&run));
    assert_eq!(
        archive(out.path()).len(),
        all.len(),
        "written anew, not appended"
    );
    assert_eq!(report_lines(out.path()).len(), all.len());
    // The tar run never wrote OUT/in0000.txt: --force after it leaves that file.
    assert_eq!(
        std::fs::read(out.path().join("in0000.txt")).unwrap(),
        b"USER FILE"
    );
    std::fs::remove_file(out.path().join("in0000.txt")).unwrap();

    // The files format after a tar run: --force removes the archive with the report.
    let run = run_batch(&["--force"], "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));
    let mut left = files(out.path());
    assert!(left.remove("report.jsonl").is_some());
    assert_eq!(left, upper(&all));
}

#[test]
fn an_unknown_output_format_and_tar_through_redis_are_refused() {
    let (inputs, _) = inputs(1, 0);
    let out = tempfile::tempdir().unwrap();
    let run = run_batch(
        &["--output-format", "zip"],
        "uppercase.wasm",
        inputs.path(),
        out.path(),
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stdout(&run).contains("expected files or tar"),
        "{}",
        stdout(&run)
    );
    let run = run_batch(
        &["--output-format", "tar", "--redis", "redis://127.0.0.1:1"],
        "uppercase.wasm",
        inputs.path(),
        out.path(),
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(stdout(&run).contains("--redis"), "{}", stdout(&run));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn force_after_a_files_run_leaves_a_foreign_outputs_tar() {
    let (inputs, all) = inputs(3, 0);
    let out = tempfile::tempdir().unwrap();
    let run = run_batch(&[], "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));
    // Not ours: a file named outputs.tar that no tar run wrote.
    std::fs::write(out.path().join("outputs.tar"), "someone else's").unwrap();
    let run = run_batch(&["--force"], "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));
    let mut left = files(out.path());
    assert_eq!(left.remove("outputs.tar").unwrap(), b"someone else's");
    assert!(left.remove("report.jsonl").is_some());
    assert_eq!(left, upper(&all));
}

#[test]
fn a_name_too_long_for_its_partial_file_is_refused_before_any_job() {
    for format in ["files", "tar"] {
        // 249 bytes: `.<name>.part` is 255, the most a file name may have.
        let dir = tempfile::tempdir().unwrap();
        let longest = "x".repeat(249);
        std::fs::write(dir.path().join(&longest), "edge\n").unwrap();
        for cap in ["64MiB", "600MiB"] {
            let out = tempfile::tempdir().unwrap();
            let run = run_batch(
                &["--output-format", format, "--max-output", cap],
                "uppercase.wasm",
                dir.path(),
                out.path(),
            );
            assert!(run.status.success(), "{format} {cap}: {}", stdout(&run));
            assert_eq!(successes(out.path()), std::slice::from_ref(&longest));
        }
        std::fs::write(dir.path().join("y".repeat(250)), "one too long\n").unwrap();
        let out = tempfile::tempdir().unwrap();
        let run = run_batch(
            &["--output-format", format],
            "uppercase.wasm",
            dir.path(),
            out.path(),
        );
        assert_eq!(run.status.code(), Some(2), "{}", stdout(&run));
        assert!(
            stdout(&run).contains("250 bytes, past the 249"),
            "{}",
            stdout(&run)
        );
        assert_eq!(
            std::fs::read_dir(out.path()).unwrap().count(),
            0,
            "no job ran"
        );
    }
}

#[test]
fn retrying_jobs_leave_the_window_to_the_others() {
    // Every job times out and is retried twice. Waiting out its delay, a job holds no
    // place in the queue's window (2 slots: 40 places), so the first attempt of all 60
    // runs before any job's third: with the places held, jobs 41-60 would start
    // only once the first jobs were dead-lettered, a whole backoff cycle later.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..60 {
        std::fs::write(dir.path().join(format!("in{i:03}")), "spin\n").unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let run = batch_logged(
        &[
            "--concurrency",
            "2",
            "--timeout",
            "5ms",
            "--max-attempts",
            "3",
        ],
        "infinite_loop.wat",
        dir.path(),
        out.path(),
        "info",
    );
    assert_eq!(run.status.code(), Some(1), "{}", stdout(&run));
    let lines = report_lines(out.path());
    assert_eq!(lines.len(), 60);
    assert!(
        lines
            .iter()
            .all(|l| l["outcome"] == "timeout" && l["attempt"] == 3)
    );
    let said = String::from_utf8_lossy(&run.stderr);
    let finished: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("job finished"))
        .collect();
    let attempt = |n: u32| {
        let tag = format!("attempt={n}");
        finished
            .iter()
            .enumerate()
            .filter(move |(_, line)| line.contains(&tag))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let (first, third) = (attempt(1), attempt(3));
    assert_eq!((first.len(), third.len()), (60, 60), "{said}");
    assert!(
        first.last() < third.first(),
        "a first attempt ran after a third: {said}"
    );
}

#[test]
fn a_tar_batch_killed_mid_append_leaves_a_valid_archive_of_listed_jobs() {
    // A large output streams to its partial file and is copied into the archive after
    // its run; SIGKILL while the archive grows (or just after) must leave an archive
    // the `tar` crate reads whole, holding the listed jobs and at most the one entry
    // being appended.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), "small\n").unwrap();
    let big = vec![b'b'; 200 << 20];
    std::fs::write(dir.path().join("b"), &big).unwrap();
    drop(big);
    let out = tempfile::tempdir().unwrap();
    let mut child = batch_command(
        &[
            "--concurrency",
            "2",
            "--output-format",
            "tar",
            "--max-output",
            "600MiB",
        ],
        "uppercase.wasm",
        dir.path(),
        out.path(),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let tar_path = out.path().join("outputs.tar");
    // Watched without a pause: the copy into the archive takes a fraction of a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&tar_path).map_or(0, |m| m.len()) <= 8 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the archive never grew"
        );
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let entries: Vec<String> = archive(out.path()).into_iter().map(|(n, _)| n).collect();
    let listed = successes(out.path());
    for name in &listed {
        assert!(entries.contains(name), "{name} listed, not in {entries:?}");
    }
    let unlisted = entries.iter().filter(|n| !listed.contains(n)).count();
    assert!(unlisted <= 1, "{entries:?} against {listed:?}");
}

#[test]
fn a_second_signal_leaves_an_archive_of_exactly_the_listed_jobs() {
    // Outputs in memory (the default): the first 5 inputs are quick, the rest spin,
    // so once 5 lines are written both slots are spinning when the signals come.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let text = if i < 5 { "quick\n" } else { "spin\n" };
        std::fs::write(dir.path().join(format!("in{i:03}")), text).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let (child, rx) = spawn_logged(batch_command(
        &[
            "--concurrency",
            "2",
            "--timeout",
            "60s",
            "--output-format",
            "tar",
        ],
        "quick_or_spin.wat",
        dir.path(),
        out.path(),
    ));
    poll(
        "the quick jobs' lines",
        Duration::from_secs(60),
        || report_lines(out.path()).len(),
        |n| *n == 5,
    );
    let kill = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    kill("-TERM");
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("interrupted");
        if line.contains("interrupted") {
            break;
        }
    }
    kill("-TERM");
    let run = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout).into_owned();
    assert_eq!(run.status.code(), Some(130), "{said}");
    assert!(said.contains("abandoned"), "{said}");
    let quick: Vec<String> = (0..5).map(|i| format!("in{i:03}")).collect();
    assert_eq!(successes(out.path()), quick);
    assert_eq!(report_lines(out.path()).len(), 5);
    let mut entries: Vec<String> = archive(out.path()).into_iter().map(|(n, _)| n).collect();
    entries.sort();
    assert_eq!(entries, quick);
    let names: Vec<String> = files(out.path()).into_keys().collect();
    assert_eq!(names, ["outputs.tar", "report.jsonl"]);
}
