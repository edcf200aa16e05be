//! `sluice batch` end to end: the README's main command, its report and exit codes.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use sluice_tests::{bin, example_inputs, guest};

fn report(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("report.jsonl"))
        .expect("report.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("report line is JSON"))
        .collect()
}

/// Runs `sluice batch --quiet FLAGS --module GUEST INPUTS --out OUT`.
fn sluice_batch(flags: &[&str], module: &str, inputs: impl AsRef<Path>, out: &Path) -> Output {
    bin("sluice")
        .args(["batch", "--quiet"])
        .args(flags)
        .arg("--module")
        .arg(guest(module))
        .arg(inputs.as_ref())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn inputs(example: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(example_inputs(example))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn batch_uppercases_every_example_input_and_reports_each() {
    let out = tempfile::tempdir().unwrap();
    let run = sluice_batch(
        &[],
        "uppercase.wasm",
        example_inputs("uppercase"),
        out.path(),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("succeeded"), "no summary: {stdout}");
    let expected = inputs("uppercase");
    for (name, content) in &expected {
        let got = std::fs::read(out.path().join(name)).unwrap();
        assert_eq!(got, content.to_ascii_uppercase(), "{name}");
    }
    let lines = report(out.path());
    assert_eq!(lines.len(), expected.len());
    for line in &lines {
        assert_eq!(line["outcome"], "success");
        assert!(line["wall_time_ms"].is_number());
        assert!(line["output_bytes"].is_u64());
        assert!(line.get("fuel_used").is_some());
    }
}

#[test]
fn batch_runs_raw_abi_modules_from_wat() {
    let out = tempfile::tempdir().unwrap();
    let status = sluice_batch(
        &[],
        "upper_raw.wat",
        example_inputs("uppercase"),
        out.path(),
    )
    .status;
    assert!(status.success());
    for (name, content) in inputs("uppercase") {
        assert_eq!(
            std::fs::read(out.path().join(&name)).unwrap(),
            content.to_ascii_uppercase()
        );
    }
}

#[test]
fn batch_reports_fuel_when_metered() {
    let out = tempfile::tempdir().unwrap();
    let status = sluice_batch(
        &["--fuel", "100000000"],
        "wordcount.wasm",
        example_inputs("wordcount"),
        out.path(),
    )
    .status;
    assert!(status.success());
    for line in report(out.path()) {
        assert!(line["fuel_used"].as_u64().unwrap() > 0, "{line}");
    }
}

#[test]
fn batch_passes_args_and_env_to_the_guest() {
    let out = tempfile::tempdir().unwrap();
    let flags = ["--arg", "GREETING", "--env", "GREETING=hello"];
    let run = sluice_batch(
        &flags,
        "env_echo.wasm",
        example_inputs("wordcount"),
        out.path(),
    );
    assert!(run.status.success());
    let (name, _) = &inputs("wordcount")[0];
    let text = std::fs::read_to_string(out.path().join(name)).unwrap();
    assert!(text.contains("GREETING=hello"), "{text}");
}

#[test]
fn batch_of_a_hostile_module_fails_each_job_with_its_outcome() {
    let out = tempfile::tempdir().unwrap();
    let run = sluice_batch(
        &["--timeout", "200ms"],
        "infinite_loop.wat",
        example_inputs("uppercase"),
        out.path(),
    );
    assert!(!run.status.success());
    let lines = report(out.path());
    assert_eq!(lines.len(), inputs("uppercase").len());
    for line in &lines {
        assert_eq!(line["outcome"], "timeout", "{line}");
        let name = line["input"].as_str().unwrap();
        assert!(!out.path().join(name).exists(), "a failed job left output");
    }
    assert!(String::from_utf8_lossy(&run.stdout).contains("timeout"));
}

/// Not a module: the batch fails before any job runs, naming the file (it used to run
/// every job as `invalid_module`, which read as if the inputs were wrong).
#[test]
fn batch_with_an_invalid_module_fails_up_front_naming_it() {
    for module in ["not_wasm.txt", "unknown_import.wat"] {
        let out = tempfile::tempdir().unwrap();
        let run = sluice_batch(&[], module, example_inputs("uppercase"), out.path());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(module), "names the module: {stderr}");
        assert!(!out.path().join("report.jsonl").exists());
    }
    let out = tempfile::tempdir().unwrap();
    let readme = sluice_tests::repo_root().join("README.md");
    let run = bin("sluice")
        .args(["batch", "--quiet", "--module"])
        .arg(&readme)
        .arg(example_inputs("uppercase"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&*readme.to_string_lossy()), "{stderr}");
    // A missing module is named once, with why once.
    let run = bin("sluice")
        .args(["batch", "--module", "/no/such/module.wasm"])
        .arg(example_inputs("uppercase"))
        .arg("--out")
        .arg(out.path().join("x"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/no/such/module.wasm"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

#[test]
fn batch_mixes_failures_and_successes_without_losing_any() {
    let inputs_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let body = if i % 4 == 0 {
            "a,b\n\"unterminated\n"
        } else {
            "a,b\n1,2\n"
        };
        std::fs::write(inputs_dir.path().join(format!("in{i:02}.csv")), body).unwrap();
    }
    let run = sluice_batch(
        &["--concurrency", "3"],
        "csv2jsonl.wasm",
        inputs_dir.path(),
        out.path(),
    );
    assert_eq!(run.status.code(), Some(1));
    let lines = report(out.path());
    assert_eq!(lines.len(), 40);
    let failed = lines
        .iter()
        .filter(|l| l["outcome"] == "non_zero_exit")
        .count();
    let ok = lines.iter().filter(|l| l["outcome"] == "success").count();
    assert_eq!((failed, ok), (10, 30));
    assert_eq!(
        std::fs::read_to_string(out.path().join("in01.csv")).unwrap(),
        "{\"a\":\"1\",\"b\":\"2\"}\n"
    );
}

fn csv_inputs(dir: &Path, bad_every: usize) {
    for i in 0..12 {
        let body = if bad_every > 0 && i % bad_every == 0 {
            "a,b\n\"unterminated\n"
        } else {
            "a,b\n1,2\n"
        };
        std::fs::write(dir.join(format!("in{i:02}.csv")), body).unwrap();
    }
}

fn stderr_of(run: &Output) -> String {
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[test]
fn an_input_named_like_the_report_is_refused_before_any_job() {
    let inputs_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    csv_inputs(inputs_dir.path(), 0);
    std::fs::write(inputs_dir.path().join("report.jsonl"), "a,b\n").unwrap();
    let run = sluice_batch(&[], "csv2jsonl.wasm", inputs_dir.path(), out.path());
    assert_eq!(run.status.code(), Some(2), "{}", stderr_of(&run));
    assert!(
        stderr_of(&run).contains("report.jsonl"),
        "{}",
        stderr_of(&run)
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_rerun_into_a_non_empty_directory_refuses_unless_force_or_resume() {
    let inputs_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    csv_inputs(inputs_dir.path(), 4);
    let first = sluice_batch(&[], "csv2jsonl.wasm", inputs_dir.path(), out.path());
    assert_eq!(first.status.code(), Some(1), "{}", stderr_of(&first));
    let ids: Vec<(String, String)> = report(out.path())
        .iter()
        .map(|l| (l["input"].to_string(), l["job_id"].to_string()))
        .collect();
    assert_eq!(ids.len(), 12);

    // A plain rerun refuses and touches nothing.
    let again = sluice_batch(&[], "csv2jsonl.wasm", inputs_dir.path(), out.path());
    assert_eq!(again.status.code(), Some(2), "{}", stderr_of(&again));
    assert!(
        stderr_of(&again).contains("not empty"),
        "{}",
        stderr_of(&again)
    );
    assert_eq!(report(out.path()).len(), 12);

    // --resume after fixing the failed inputs: only those run; the report ends with
    // one success line per input, the earlier successes' lines kept as they were.
    csv_inputs(inputs_dir.path(), 0);
    let resumed = sluice_batch(
        &["--resume"],
        "csv2jsonl.wasm",
        inputs_dir.path(),
        out.path(),
    );
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(stdout.starts_with("3 jobs in"), "{stdout}");
    assert!(stdout.contains("skipped: 9 jobs already done"), "{stdout}");
    let lines = report(out.path());
    assert_eq!(lines.len(), 12);
    assert!(lines.iter().all(|l| l["outcome"] == "success"), "{lines:?}");
    let kept = lines
        .iter()
        .filter(|l| ids.contains(&(l["input"].to_string(), l["job_id"].to_string())))
        .count();
    assert_eq!(kept, 9, "the earlier successes keep their lines");

    // --force: an input gone since is gone from the outputs too; the report is new.
    std::fs::remove_file(inputs_dir.path().join("in05.csv")).unwrap();
    std::fs::write(out.path().join(".in07.csv.part"), "stale").unwrap();
    let forced = sluice_batch(
        &["--force"],
        "csv2jsonl.wasm",
        inputs_dir.path(),
        out.path(),
    );
    assert!(forced.status.success(), "{}", stderr_of(&forced));
    assert!(!out.path().join("in05.csv").exists());
    assert!(!out.path().join(".in07.csv.part").exists());
    let lines = report(out.path());
    assert_eq!(lines.len(), 11);
    for line in &lines {
        let job = line["job_id"].to_string();
        assert!(ids.iter().all(|(_, id)| *id != job), "a new run: {line}");
    }
}

#[test]
fn one_job_is_one_job() {
    let inputs_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(inputs_dir.path().join("only.txt"), "x").unwrap();
    let run = sluice_batch(&[], "uppercase.wasm", inputs_dir.path(), out.path());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.starts_with("1 job in "), "{stdout}");
}

#[test]
fn force_and_resume_remove_only_the_outputs_the_previous_report_lists() {
    let inputs_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    csv_inputs(inputs_dir.path(), 4);
    // Files the batch did not write: one named like an input whose job fails.
    std::fs::write(out.path().join("in00.csv"), "mine").unwrap();
    std::fs::write(out.path().join("notes.txt"), "mine").unwrap();
    let forced = sluice_batch(
        &["--force"],
        "csv2jsonl.wasm",
        inputs_dir.path(),
        out.path(),
    );
    assert_eq!(forced.status.code(), Some(1), "{}", stderr_of(&forced));
    assert_eq!(
        std::fs::read_to_string(out.path().join("in00.csv")).unwrap(),
        "mine",
        "a failed job's name does not make the file there the batch's"
    );
    assert!(out.path().join("in01.csv").is_file());
    // A second --force removes the first run's outputs, not the files it never wrote.
    let again = sluice_batch(
        &["--force"],
        "csv2jsonl.wasm",
        inputs_dir.path(),
        out.path(),
    );
    assert_eq!(again.status.code(), Some(1), "{}", stderr_of(&again));
    let resumed = sluice_batch(
        &["--resume"],
        "csv2jsonl.wasm",
        inputs_dir.path(),
        out.path(),
    );
    assert_eq!(resumed.status.code(), Some(1), "{}", stderr_of(&resumed));
    for name in ["in00.csv", "notes.txt"] {
        assert_eq!(
            std::fs::read_to_string(out.path().join(name)).unwrap(),
            "mine",
            "{name}"
        );
    }
    assert_eq!(report(out.path()).len(), 12);
}

#[test]
fn an_input_name_that_is_not_utf8_is_refused_before_any_job() {
    use std::os::unix::ffi::OsStrExt;
    let inputs_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    csv_inputs(inputs_dir.path(), 0);
    // Both would read as `a\u{FFFD}`: one output, two report lines.
    for name in [&b"a\xff"[..], &b"a\xfe"[..]] {
        let name = std::ffi::OsStr::from_bytes(name);
        std::fs::write(inputs_dir.path().join(name), "a,b\n").unwrap();
    }
    let run = sluice_batch(&[], "csv2jsonl.wasm", inputs_dir.path(), out.path());
    assert_eq!(run.status.code(), Some(2), "{}", stderr_of(&run));
    assert!(
        stderr_of(&run).contains("not valid UTF-8"),
        "{}",
        stderr_of(&run)
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}
