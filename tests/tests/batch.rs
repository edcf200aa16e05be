//! `sluice batch` end to end: the README's main command, its report and exit codes.

use std::path::Path;

use serde_json::Value;
use sluice_tests::{bin, example_inputs, guest};

fn report(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("report.jsonl"))
        .expect("report.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("report line is JSON"))
        .collect()
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
    let run = bin("sluice")
        .args(["batch", "--quiet", "--module"])
        .arg(guest("uppercase.wasm"))
        .arg(example_inputs("uppercase"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
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
    let status = bin("sluice")
        .args(["batch", "--quiet", "--module"])
        .arg(guest("upper_raw.wat"))
        .arg(example_inputs("uppercase"))
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
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
    let status = bin("sluice")
        .args(["batch", "--quiet", "--fuel", "100000000", "--module"])
        .arg(guest("wordcount.wasm"))
        .arg(example_inputs("wordcount"))
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    for line in report(out.path()) {
        assert!(line["fuel_used"].as_u64().unwrap() > 0, "{line}");
    }
}

#[test]
fn batch_passes_args_and_env_to_the_guest() {
    let out = tempfile::tempdir().unwrap();
    let status = bin("sluice")
        .args([
            "batch",
            "--quiet",
            "--arg",
            "GREETING",
            "--env",
            "GREETING=hello",
            "--module",
        ])
        .arg(guest("env_echo.wasm"))
        .arg(example_inputs("wordcount"))
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let (name, _) = &inputs("wordcount")[0];
    let text = std::fs::read_to_string(out.path().join(name)).unwrap();
    assert!(text.contains("GREETING=hello"), "{text}");
}

#[test]
fn batch_of_a_hostile_module_fails_each_job_with_its_outcome() {
    let out = tempfile::tempdir().unwrap();
    let run = bin("sluice")
        .args(["batch", "--quiet", "--timeout", "200ms", "--module"])
        .arg(guest("infinite_loop.wat"))
        .arg(example_inputs("uppercase"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
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

#[test]
fn batch_with_an_invalid_module_reports_it_per_job() {
    let out = tempfile::tempdir().unwrap();
    let run = bin("sluice")
        .args(["batch", "--quiet", "--module"])
        .arg(guest("not_wasm.txt"))
        .arg(example_inputs("uppercase"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    for line in report(out.path()) {
        assert_eq!(line["outcome"], "invalid_module");
    }
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
    let run = bin("sluice")
        .args(["batch", "--quiet", "--concurrency", "3", "--module"])
        .arg(guest("csv2jsonl.wasm"))
        .arg(inputs_dir.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
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
