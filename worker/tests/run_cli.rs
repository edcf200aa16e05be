//! `sluice-worker run` as a user meets it (the real binary): hitting the output cap is
//! `output_limit` however the guest then ends; positional guest args after the module
//! (and `--` for ones that look like flags), `argv[0]` the module's file name;
//! `--env KEY` passing the host's value; every refused flag value named, exit 2; sizes
//! with a bare unit letter are binary; worker logs are plain text when not on a
//! terminal.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The status `run` exits with when the sandbox, not the guest, ended the run.
const SANDBOX_STOPPED: i32 = 125;
/// A usage or configuration error.
const USAGE: i32 = 2;

fn guest(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["examples/build", "tests/guests", "tests/guests/build"]
        .iter()
        .map(|dir| root.join(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("guest {name} not found (bash examples/build.sh)"))
}

fn worker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SLUICE_") {
            command.env_remove(name);
        }
    }
    command
}

/// `sluice-worker run ARGS` over `input`.
fn run(args: &[&str], input: &[u8]) -> Output {
    run_with(worker().arg("run").args(args), input)
}

fn run_with(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice-worker");
    // A guest stopped early may not read it all: a broken pipe is not the test's concern.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().expect("sluice-worker ran")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command guest that writes `hello\n` and then, whatever the write returned, ends
/// as `ending` says (WAT that follows the write's errno check).
fn writer_then(dir: &std::path::Path, name: &str, ending: &str) -> PathBuf {
    let path = dir.join(name);
    let wat = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "hello\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 6))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            {ending}))"#
    );
    std::fs::write(&path, wat).unwrap();
    path
}

#[test]
fn a_write_over_the_output_cap_is_output_limit_however_the_guest_ends() {
    // The C guest sees its write fail and exits non-zero ("write: I/O error").
    let out = run(
        &[
            guest("uppercase.wasm").to_str().unwrap(),
            "--max-output",
            "1",
        ],
        b"hi\n",
    );
    assert_eq!(out.status.code(), Some(SANDBOX_STOPPED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outcome: output_limit"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("non_zero_exit"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    for (name, ending) in [
        ("exits_3.wat", "(call $proc_exit (i32.const 3))"),
        ("traps.wat", "(unreachable)"),
        ("returns.wat", ""),
    ] {
        let module = writer_then(dir.path(), name, ending);
        let out = run(&[module.to_str().unwrap(), "--max-output", "2"], b"");
        assert_eq!(out.status.code(), Some(SANDBOX_STOPPED), "{name}");
        assert!(
            stderr(&out).contains("outcome: output_limit"),
            "{name}: {}",
            stderr(&out)
        );
        // Under the cap, the same guests end as they chose.
        let out = run(&[module.to_str().unwrap()], b"");
        assert!(
            !stderr(&out).contains("output_limit"),
            "{name}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "hello\n", "{name}");
    }
}

#[test]
fn a_bare_unit_letter_is_binary() {
    let input = vec![b'x'; 1500];
    let out = run(
        &[
            guest("uppercase.wasm").to_str().unwrap(),
            "--max-output",
            "1K",
        ],
        &input,
    );
    assert!(
        stderr(&out).contains("more than 1024 bytes"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &[
            guest("uppercase.wasm").to_str().unwrap(),
            "--max-output",
            "2K",
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 1500);
}

#[test]
fn guest_args_follow_the_module_and_argv0_is_its_file_name() {
    let module = guest("env_echo.wasm");
    let out = run(
        &[
            module.to_str().unwrap(),
            "a",
            "--env",
            "B=set",
            "B",
            "--",
            "--not-a-flag",
            "-x",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "arg[0]=env_echo.wasm\narg[1]=a\narg[2]=B\narg[3]=--not-a-flag\narg[4]=-x\n\
         a unset\nB=set\n--not-a-flag unset\n-x unset\n"
    );
}

#[test]
fn env_key_alone_passes_the_hosts_value_and_an_unset_one_is_refused_by_name() {
    let module = guest("env_echo.wasm");
    let out = run_with(
        worker()
            .args(["run", "--env", "SLUICE_TEST_PASSED"])
            .arg(&module)
            .arg("SLUICE_TEST_PASSED")
            .env("SLUICE_TEST_PASSED", "from the host"),
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("SLUICE_TEST_PASSED=from the host\n"),
        "{}",
        stdout(&out)
    );

    let out = run_with(
        worker()
            .args(["run", "--env", "SLUICE_TEST_NEVER_SET"])
            .arg(&module)
            .env_remove("SLUICE_TEST_NEVER_SET"),
        b"",
    );
    assert_eq!(out.status.code(), Some(USAGE), "{}", stderr(&out));
    for named in ["--env", "SLUICE_TEST_NEVER_SET", "not set"] {
        assert!(stderr(&out).contains(named), "{named}: {}", stderr(&out));
    }
}

#[test]
fn each_refused_flag_value_names_its_flag_and_exits_2() {
    let module = guest("uppercase.wasm");
    let module = module.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--memory", "0"], &["'--memory", "more than 0"]),
        (&["--memory", "100GiB"], &["'--memory", "ceiling of 4GiB"]),
        (&["--memory", "lots"], &["'--memory", "invalid size"]),
        (&["--timeout", "0s"], &["'--timeout", "more than 0"]),
        (&["--timeout", "soon"], &["'--timeout", "invalid duration"]),
        (&["--fuel", "0"], &["'--fuel", "more than 0"]),
        (
            &["--max-output", "64 parsecs"],
            &["'--max-output", "unknown unit"],
        ),
        (&["--env", "=x"], &["'--env", "KEY=VALUE"]),
    ];
    for (flags, named) in cases {
        let mut args = vec![module];
        args.extend_from_slice(flags);
        let out = run(&args, b"");
        assert_eq!(
            out.status.code(),
            Some(USAGE),
            "{flags:?}: {}",
            stderr(&out)
        );
        for name in *named {
            assert!(
                stderr(&out).contains(name),
                "{flags:?}: {name} not in {}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn a_missing_module_is_named_once_without_repeating_the_cause() {
    let out = run(&["/no/such/module.wasm"], b"");
    assert_eq!(out.status.code(), Some(USAGE), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("/no/such/module.wasm"), "{text}");
    assert_eq!(text.matches("os error 2").count(), 1, "{text}");
}

#[test]
fn worker_logs_sent_to_a_pipe_carry_no_colour_codes() {
    // Nothing listens on port 9: the worker logs that it cannot reach Redis and retries.
    let mut child = worker()
        .args(["serve", "--redis", "redis://127.0.0.1:9"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice-worker serve");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("cannot reach Redis"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "ANSI escape in a piped log: {line:?}"
    );
}
