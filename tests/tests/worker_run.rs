//! `sluice-worker run` end to end: stdin → stdout, exit codes, the outcome line, and a
//! 1 GiB stream through a worker whose memory stays flat.

use std::io::{Read, Write};
use std::process::Stdio;

use sluice_tests::{bin, guest};

/// Runs `module` with `flags` over `input`; returns (exit code, stdout, stderr).
fn run(module: &str, flags: &[&str], input: &[u8]) -> (Option<i32>, Vec<u8>, String) {
    run_with_args(module, flags, &[], input)
}

/// Like [`run`], passing `guest_args` to the guest after `--`.
fn run_with_args(
    module: &str,
    flags: &[&str],
    guest_args: &[&str],
    input: &[u8],
) -> (Option<i32>, Vec<u8>, String) {
    let mut child = bin("sluice-worker")
        .arg("run")
        .args(flags)
        .arg(guest(module))
        .arg("--")
        .args(guest_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_streams_stdin_through_the_module_to_stdout() {
    let (code, stdout, _) = run("uppercase.wasm", &[], b"make me loud\n");
    assert_eq!(code, Some(0));
    assert_eq!(stdout, b"MAKE ME LOUD\n");
}

#[test]
fn run_exits_with_the_guests_exit_code() {
    let (code, stdout, _) = run("exit_code_7.wasm", &[], b"");
    assert_eq!(code, Some(7));
    assert_eq!(stdout, b"bye\n");
}

#[test]
fn run_passes_args_after_double_dash_and_env() {
    let (code, stdout, _) = run_with_args(
        "env_echo.wasm",
        &["--env", "WHO=you"],
        &["WHO", "PATH"],
        b"",
    );
    assert_eq!(code, Some(0));
    let text = String::from_utf8(stdout).unwrap();
    assert!(text.contains("WHO=you\n"), "{text}");
    assert!(text.contains("PATH unset\n"), "{text}");
}

#[test]
fn sandbox_stops_print_one_outcome_line_and_exit_non_zero() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "infinite_loop.wat",
            &["--fuel", "1000000"],
            "fuel_exhausted",
        ),
        ("infinite_loop.wat", &["--timeout", "200ms"], "timeout"),
        (
            "memory_grow_bomb.wat",
            &["--memory", "4MiB"],
            "memory_limit",
        ),
        (
            "stdout_flood.wasm",
            &["--max-output", "1MiB"],
            "output_limit",
        ),
        ("unreachable.wat", &[], "trap"),
        ("unknown_import.wat", &[], "import_not_allowed"),
        (
            "missing_start.wat",
            &["--invoke", "_start"],
            "missing_export",
        ),
        ("not_wasm.txt", &[], "invalid_module"),
    ];
    for (module, args, kind) in cases {
        let (code, _, stderr) = run(module, args, b"");
        assert_eq!(code, Some(125), "{module}: {stderr}");
        let outcome_lines: Vec<_> = stderr
            .lines()
            .filter(|l| l.starts_with("outcome: "))
            .collect();
        assert_eq!(outcome_lines.len(), 1, "{module}: {stderr}");
        assert!(
            outcome_lines[0].starts_with(&format!("outcome: {kind}")),
            "{module}: {stderr}"
        );
    }
}

#[test]
fn run_refuses_to_grant_the_root_directory() {
    let (code, _, stderr) = run("noop.wat", &["--dir", "/::/"], b"");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("root"), "{stderr}");
}

/// The bound this test holds the worker to: a constant, whatever the input size.
const RSS_BOUND_BYTES: u64 = 256 << 20;

#[test]
fn one_gib_streams_through_with_bounded_worker_memory() {
    const TOTAL: u64 = 1 << 30;
    let report_dir = tempfile::tempdir().unwrap();
    let report_path = report_dir.path().join("report.json");
    let mut child = bin("sluice-worker")
        .args([
            "run",
            "--timeout",
            "600s",
            "--max-output",
            "2GiB",
            "--memory",
            "64MiB",
        ])
        .arg("--report")
        .arg(&report_path)
        .arg(guest("uppercase.wasm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let block: Vec<u8> = b"the quick brown fox jumps over the lazy dog 0123456789\n"
            .iter()
            .copied()
            .cycle()
            .take(64 << 10)
            .collect();
        let mut sent = 0u64;
        while sent < TOTAL {
            let n = block.len().min((TOTAL - sent) as usize);
            stdin.write_all(&block[..n]).unwrap();
            sent += n as u64;
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut received = 0u64;
    let mut lowercase = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        received += n as u64;
        lowercase += buf[..n].iter().filter(|b| b.is_ascii_lowercase()).count() as u64;
    }
    feeder.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(received, TOTAL);
    assert_eq!(lowercase, 0);

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["outcome"], "success");
    assert_eq!(report["input_bytes"], TOTAL);
    assert_eq!(report["output_bytes"], TOTAL);
    let rss = report["peak_rss_bytes"]
        .as_u64()
        .expect("peak RSS reported");
    let guest_memory = report["peak_memory_bytes"].as_u64().unwrap();
    assert!(
        rss < RSS_BOUND_BYTES + guest_memory,
        "peak RSS {rss} over {RSS_BOUND_BYTES} + guest {guest_memory}"
    );
    eprintln!("1 GiB stream: peak RSS {} MiB", rss >> 20);
}

#[test]
fn a_guest_blocked_in_poll_oneoff_ends_as_timeout() {
    // `blocked.wat` sleeps 30 s in one host call; if that sleep were not cut at the
    // deadline, the guest would wake and trap (`unreachable`) instead.
    let started = std::time::Instant::now();
    let (code, _, stderr) = run("blocked.wat", &["--timeout", "1s"], b"");
    let took = started.elapsed();
    assert_eq!(code, Some(125), "{stderr}");
    let outcome_lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("outcome: "))
        .collect();
    assert_eq!(outcome_lines, ["outcome: timeout"], "{stderr}");
    eprintln!("blocked.wat under --timeout 1s: {took:?}");
}

#[test]
fn a_95_kb_import_name_gives_a_short_outcome_line() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("long_import.wat");
    let name = "i".repeat(95_000);
    std::fs::write(
        &module,
        format!(r#"(module (import "env" "{name}" (func)) (func (export "_start")))"#),
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let out = bin("sluice-worker")
        .arg("run")
        .arg("--report")
        .arg(&report)
        .arg(&module)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr:.300}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("outcome: "))
        .expect("an outcome line");
    assert!(
        line.starts_with("outcome: import_not_allowed"),
        "{line:.200}"
    );
    assert!(
        line.len() <= 4096 + 100,
        "outcome line of {} bytes",
        line.len()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.len() <= 4096,
        "report detail of {} bytes",
        detail.len()
    );
}
