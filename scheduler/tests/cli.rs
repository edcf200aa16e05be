//! The `sluice` binary's argument handling (and, by existing, makes cargo build the
//! binary before the workspace end-to-end tests run).

use std::process::Command;

#[test]
fn batch_without_inputs_is_a_usage_error() {
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["batch", "--module", "missing.wasm"])
        .arg(empty.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("missing.wasm"));
}

#[test]
fn limit_flags_reject_bad_units() {
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "batch", "--module", "m.wasm", "in", "--out", "o", "--memory", "lots",
        ])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("invalid size"));
}
