//! Embedded `sluice batch` runs and their reports, shared by the batch test files.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::{bin, guest};

/// `sluice batch --quiet FLAGS --module <guest MODULE> INPUTS --out OUT`, not started.
pub fn batch_command(flags: &[&str], module: &str, inputs: &Path, out: &Path) -> Command {
    let mut command = bin("sluice");
    command
        .args(["batch", "--quiet"])
        .args(flags)
        .arg("--module")
        .arg(guest(module))
        .arg(inputs)
        .arg("--out")
        .arg(out);
    command
}

/// Runs [`batch_command`] to the end.
pub fn run_batch(flags: &[&str], module: &str, inputs: &Path, out: &Path) -> Output {
    batch_command(flags, module, inputs, out)
        .output()
        .expect("run sluice batch")
}

/// The report's lines as JSON (none when there is no report yet); a line cut short
/// fails the test: the report holds only whole lines, even after an interruption.
pub fn report_lines(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("report.jsonl")).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a cut line: {text:?}"
    );
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}
