//! `sluice batch --output-format files|tar` end to end: outputs byte-exact in both
//! formats (taken in memory, or streamed when the output cap passes the batch's memory
//! bound), the archive read back with the `tar` crate and holding exactly the jobs its
//! report lists as successes (also after an interrupt), hostile outputs and names.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_tests::wait::poll;
use sluice_tests::{bin, guest};

/// Every report line, each of which must parse.
fn report(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("report.jsonl")).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "a cut line");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

/// The report's successes by input name.
fn successes(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = report(out)
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

fn batch(flags: &[&str], module: &str, inputs: &Path, out: &Path) -> Output {
    bin("sluice")
        .args(["batch", "--quiet"])
        .args(flags)
        .arg("--module")
        .arg(guest(module))
        .arg(inputs)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

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

/// Both formats give the same bytes, once in memory and once streamed.
fn both_formats_exact(flags: &[&str], big: usize) {
    let (inputs, all) = inputs(60, big);
    let expected = upper(&all);

    let out = tempfile::tempdir().unwrap();
    let run = batch(flags, "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));
    let mut got = files(out.path());
    assert!(got.remove("report.jsonl").is_some());
    assert_eq!(got, expected);
    assert_eq!(successes(out.path()).len(), all.len());

    let out = tempfile::tempdir().unwrap();
    let tar_flags = [flags, &["--output-format", "tar"]].concat();
    let run = batch(&tar_flags, "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));
    let names: Vec<String> = files(out.path()).into_keys().collect();
    assert_eq!(names, ["outputs.tar", "report.jsonl"]);
    let entries = archive(out.path());
    assert_eq!(entries.len(), all.len(), "one entry per job");
    assert_eq!(entries.into_iter().collect::<BTreeMap<_, _>>(), expected);
    let lines = report(out.path());
    assert_eq!(lines.len(), all.len());
    for line in &lines {
        let name = line["input"].as_str().unwrap();
        assert_eq!(line["output_bytes"], expected[name].len() as u64, "{name}");
    }
}

#[test]
fn outputs_taken_in_memory_are_byte_exact_in_both_formats() {
    // Two slots × the default 64 MiB cap are within the memory bound.
    both_formats_exact(&["--concurrency", "2"], 0);
}

#[test]
fn outputs_past_the_memory_bound_stream_and_are_byte_exact_in_both_formats() {
    // Two slots × 600 MiB pass the 1 GiB bound: outputs stream to partial files; the
    // 3 MiB input passes the 1 MiB input bound and streams too.
    both_formats_exact(&["--concurrency", "2", "--max-output", "600MiB"], 3 << 20);
}

#[test]
fn an_output_past_its_cap_is_a_typed_failure_with_no_file_or_entry() {
    let (inputs, _) = inputs(3, 0);
    // 2 slots × 1 KiB: in memory; 64 slots × 32 MiB pass the 1 GiB bound: streamed.
    for (slots, cap) in [("2", "1KiB"), ("64", "32MiB")] {
        for format in ["files", "tar"] {
            let out = tempfile::tempdir().unwrap();
            let run = batch(
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
            let lines = report(out.path());
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
    let mut child = bin("sluice")
        .args([
            "batch",
            "--quiet",
            "--concurrency",
            "2",
            "--output-format",
            "tar",
        ])
        .arg("--module")
        .arg(guest("compute_loop.wat"))
        .arg(dir.path())
        .arg("--out")
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[sluice] {line}");
        }
    });
    poll(
        "a report line",
        Duration::from_secs(120),
        || report(out.path()).len(),
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
    assert_eq!(report(out.path()).len(), listed.len());
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
    let run = batch(&tar, "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));

    let run = batch(
        &["--output-format", "tar", "--resume"],
        "uppercase.wasm",
        inputs.path(),
        out.path(),
    );
    assert_eq!(run.status.code(), Some(2), "{}", stdout(&run));
    assert!(
        stdout(&run).contains("--resume does not take --output-format tar"),
        "{}",
        stdout(&run)
    );
    assert_eq!(archive(out.path()).len(), all.len(), "left as it was");

    let run = batch(
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
    assert_eq!(report(out.path()).len(), all.len());

    // The files format after a tar run: --force removes the archive with the report.
    let run = batch(&["--force"], "uppercase.wasm", inputs.path(), out.path());
    assert!(run.status.success(), "{}", stdout(&run));
    let mut left = files(out.path());
    assert!(left.remove("report.jsonl").is_some());
    assert_eq!(left, upper(&all));
}

#[test]
fn an_unknown_output_format_and_tar_through_redis_are_refused() {
    let (inputs, _) = inputs(1, 0);
    let out = tempfile::tempdir().unwrap();
    let run = batch(
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
    let run = batch(
        &["--output-format", "tar", "--redis", "redis://127.0.0.1:1"],
        "uppercase.wasm",
        inputs.path(),
        out.path(),
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(stdout(&run).contains("--redis"), "{}", stdout(&run));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}
