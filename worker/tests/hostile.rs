//! The hostile-module corpus: every attack ends with its typed outcome, and the same
//! sandbox runs a good job right after it.

mod common;

use std::sync::LazyLock;

use common::{Stalled, StalledSink, guest, run, run_with};
use sluice_shared::{EntryPoint, Outcome, OutcomeKind};
use sluice_worker::{DirGrant, Sandbox, SandboxConfig};

/// One sandbox for every test, as one worker process would have.
static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| {
    Sandbox::new(SandboxConfig {
        max_module_bytes: 1 << 20,
        ..SandboxConfig::default()
    })
    .expect("sandbox")
});

/// Asserts that the sandbox still runs a good job, and returns `outcome`'s kind.
fn then_healthy(outcome: &Outcome) -> OutcomeKind {
    let (after, output) = run(&SANDBOX, &guest("uppercase.wasm"), b"still alive", |_| {});
    assert_eq!(
        after.outcome,
        Outcome::Success,
        "sandbox broken after {outcome}"
    );
    assert_eq!(output, b"STILL ALIVE");
    outcome.kind()
}

#[test]
fn infinite_loop_under_fuel_is_fuel_exhausted() {
    let (result, _) = run(&SANDBOX, &guest("infinite_loop.wat"), b"", |job| {
        job.limits.fuel = Some(5_000_000);
    });
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::FuelExhausted);
    assert_eq!(result.stats.fuel_used, Some(5_000_000));
}

#[test]
fn infinite_loop_without_fuel_is_timeout() {
    let (result, _) = run(&SANDBOX, &guest("infinite_loop.wat"), b"", |job| {
        job.limits.fuel = None;
        job.limits.timeout_ms = 200;
    });
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::Timeout);
    assert_eq!(result.stats.fuel_used, None);
}

#[test]
fn memory_grow_bomb_is_memory_limit() {
    let (result, _) = run(&SANDBOX, &guest("memory_grow_bomb.wat"), b"", |job| {
        job.limits.memory_bytes = 8 << 20;
    });
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::MemoryLimit);
    assert!(result.stats.peak_memory_bytes <= 8 << 20);
}

#[test]
fn huge_initial_memory_is_memory_limit() {
    let (result, _) = run(&SANDBOX, &guest("huge_initial_memory.wat"), b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::MemoryLimit);
}

#[test]
fn unbounded_recursion_is_stack_overflow_trap() {
    let (result, _) = run(&SANDBOX, &guest("unbounded_recursion.wat"), b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::Trap);
    assert!(matches!(&result.outcome, Outcome::Trap { code, .. } if code == "stack_overflow"));
}

#[test]
fn stdout_flood_is_output_limit_and_output_is_capped() {
    let (result, output) = run(&SANDBOX, &guest("stdout_flood.wasm"), b"", |job| {
        job.limits.max_output_bytes = 1 << 20;
    });
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::OutputLimit);
    assert_eq!(output.len(), 1 << 20);
    assert_eq!(result.stats.output_bytes, 1 << 20);
}

#[test]
fn stderr_flood_is_kept_to_its_cap() {
    let (result, output) = run(&SANDBOX, &guest("stderr_flood.wasm"), b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::Success);
    assert_eq!(output, b"done\n");
    assert!(result.stderr_truncated);
    assert_eq!(result.stderr.len(), SandboxConfig::DEFAULT_STDERR_CAP_BYTES);
}

#[test]
fn table_grow_bomb_is_memory_limit() {
    let (result, _) = run(&SANDBOX, &guest("table_grow_bomb.wat"), b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::MemoryLimit);
    assert!(matches!(&result.outcome, Outcome::MemoryLimit { detail } if detail.contains("table")));
}

#[test]
fn unreachable_is_a_named_trap() {
    let (result, _) = run(&SANDBOX, &guest("unreachable.wat"), b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::Trap);
    assert!(
        matches!(&result.outcome, Outcome::Trap { code, .. } if code == "unreachable_code_reached")
    );
}

#[test]
fn divide_by_zero_is_a_named_trap() {
    let (result, _) = run(&SANDBOX, &guest("divide_by_zero.wat"), b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::Trap);
    assert!(
        matches!(&result.outcome, Outcome::Trap { code, .. } if code == "integer_division_by_zero")
    );
}

#[test]
fn unknown_import_is_refused() {
    let (result, _) = run(&SANDBOX, &guest("unknown_import.wat"), b"", |_| {});
    assert_eq!(
        result.outcome,
        Outcome::ImportNotAllowed {
            module: "env".into(),
            name: "launch_missiles".into()
        }
    );
    then_healthy(&result.outcome);
}

#[test]
fn module_over_the_size_cap_is_refused_before_compiling() {
    let mut huge = guest("noop.wat");
    huge.extend(std::iter::repeat_n(b' ', 2 << 20));
    let (result, _) = run(&SANDBOX, &huge, b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::ModuleTooLarge);
}

#[test]
fn invalid_bytes_are_an_invalid_module() {
    for name in ["invalid_bytes.wasm", "not_wasm.txt"] {
        let (result, _) = run(&SANDBOX, &guest(name), b"", |_| {});
        assert_eq!(
            then_healthy(&result.outcome),
            OutcomeKind::InvalidModule,
            "{name}"
        );
    }
}

#[test]
fn missing_or_mistyped_start_is_missing_export() {
    for name in [
        "missing_start.wat",
        "wrong_signature.wat",
        "start_not_a_function.wat",
    ] {
        let (result, _) = run(&SANDBOX, &guest(name), b"", |job| {
            job.entry = EntryPoint::Command;
        });
        assert_eq!(
            then_healthy(&result.outcome),
            OutcomeKind::MissingExport,
            "{name}"
        );
    }
}

#[test]
fn paths_outside_any_grant_are_denied() {
    let data = tempfile::tempdir().unwrap();
    let granted = Sandbox::new(SandboxConfig {
        slots: 2,
        dir_grants: vec![
            DirGrant::parse(&format!("{}::/data", data.path().display()), true).unwrap(),
        ],
        ..SandboxConfig::default()
    })
    .unwrap();
    for sandbox in [&*SANDBOX, &granted] {
        let (result, output) = run(sandbox, &guest("read_outside_grant.wasm"), b"", |_| {});
        assert_eq!(
            result.outcome,
            Outcome::NonZeroExit { code: 3 },
            "{output:?}"
        );
        assert_eq!(output, b"denied\n");
    }
    then_healthy(&Outcome::Success);
}

#[test]
fn a_granted_directory_is_readable() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "granted content\n").unwrap();
    let granted = Sandbox::new(SandboxConfig {
        slots: 2,
        dir_grants: vec![
            DirGrant::parse(&format!("{}::/data", data.path().display()), true).unwrap(),
        ],
        ..SandboxConfig::default()
    })
    .unwrap();
    let (result, output) = run(&granted, &guest("reads_dir_grant.wasm"), b"", |_| {});
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(output, b"granted content\n");
}

#[test]
fn env_vars_not_given_are_unset() {
    let (result, output) = run(&SANDBOX, &guest("read_env_not_given.wasm"), b"", |_| {});
    assert_eq!(result.outcome, Outcome::NonZeroExit { code: 4 });
    assert_eq!(output, b"no env\n");
    then_healthy(&result.outcome);
}

#[test]
fn args_and_env_are_exactly_the_jobs() {
    let (result, output) = run(&SANDBOX, &guest("env_echo.wasm"), b"", |job| {
        job.args = vec!["GREETING".into(), "HOME".into()];
        job.env = vec![("GREETING".into(), "hi there".into())];
    });
    assert_eq!(result.outcome, Outcome::Success);
    let text = String::from_utf8(output).unwrap();
    assert!(text.contains("arg[1]=GREETING\n"), "{text}");
    assert!(text.contains("GREETING=hi there\n"), "{text}");
    assert!(text.contains("HOME unset\n"), "{text}");
}

#[test]
fn non_zero_exit_keeps_its_code_and_output() {
    let (result, output) = run(&SANDBOX, &guest("exit_code_7.wasm"), b"", |_| {});
    assert_eq!(result.outcome, Outcome::NonZeroExit { code: 7 });
    assert_eq!(output, b"bye\n");
    then_healthy(&result.outcome);
}

/// Runs `f` on its own thread and waits for it at most `secs`: a guest stuck in a host
/// call fails the test instead of hanging it.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the job outlived its deadline by far: a host call was not bounded")
}

/// Runs a guest that blocks in a host call under a 300 ms deadline.
fn blocked(module: Vec<u8>, input: Box<dyn std::io::Read + Send>) -> sluice_shared::JobResult {
    within(20, move || {
        run_with(&SANDBOX, &module, input, Box::new(std::io::sink()), |job| {
            job.limits.timeout_ms = 300;
        })
    })
}

#[test]
fn poll_oneoff_sleeping_30s_is_timeout_at_the_deadline() {
    let result = blocked(guest("blocked.wat"), Box::new(std::io::empty()));
    assert_eq!(
        then_healthy(&result.outcome),
        OutcomeKind::Timeout,
        "{}",
        result.outcome
    );
}

#[test]
fn poll_oneoff_with_several_clocks_is_timeout_at_the_deadline() {
    let result = blocked(guest("poll_many_clocks.wat"), Box::new(std::io::empty()));
    assert_eq!(
        then_healthy(&result.outcome),
        OutcomeKind::Timeout,
        "{}",
        result.outcome
    );
}

#[test]
fn poll_oneoff_on_an_absolute_clock_far_ahead_is_timeout() {
    let result = blocked(guest("poll_absolute_far.wat"), Box::new(std::io::empty()));
    assert_eq!(
        then_healthy(&result.outcome),
        OutcomeKind::Timeout,
        "{}",
        result.outcome
    );
}

#[test]
fn poll_oneoff_on_a_clock_and_a_silent_stdin_is_timeout() {
    let (keep, never) = std::sync::mpsc::channel::<()>();
    let result = blocked(guest("poll_clock_and_stdin.wat"), Box::new(Stalled(never)));
    drop(keep);
    assert_eq!(
        then_healthy(&result.outcome),
        OutcomeKind::Timeout,
        "{}",
        result.outcome
    );
}

#[test]
fn poll_oneoff_on_a_clock_and_stdin_at_its_end_returns_at_once() {
    // Stdin is ready (at EOF), so the poll returns without waiting for the 30 s clock;
    // the guest then reads nothing and traps, well before its 5 s deadline.
    let (result, _) = run(&SANDBOX, &guest("poll_clock_and_stdin.wat"), b"", |_| {});
    assert!(
        matches!(&result.outcome, Outcome::Trap { code, .. } if code == "unreachable_code_reached"),
        "{}",
        result.outcome
    );
    then_healthy(&result.outcome);
}

/// Sleeps 10 ms on a clock (userdata 42) beside a 30 s one, and checks that exactly the
/// short one is reported; exits through `unreachable` on any mismatch.
const SHORT_SLEEP: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 0) (i64.const 42))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 10000000))
    (i64.store (i32.const 48) (i64.const 43))
    (i32.store (i32.const 64) (i32.const 1))
    (i64.store (i32.const 72) (i64.const 30000000000))
    (if (call $poll_oneoff (i32.const 0) (i32.const 256) (i32.const 2) (i32.const 512))
      (then unreachable))
    (if (i32.ne (i32.load (i32.const 512)) (i32.const 1)) (then unreachable))
    (if (i64.ne (i64.load (i32.const 256)) (i64.const 42)) (then unreachable))
    (if (i32.load8_u (i32.const 266)) (then unreachable))))"#;

#[test]
fn a_short_poll_oneoff_sleep_returns_its_event() {
    let (result, _) = run(&SANDBOX, SHORT_SLEEP.as_bytes(), b"", |_| {});
    assert_eq!(result.outcome, Outcome::Success);
}

#[test]
fn a_stdin_that_never_delivers_is_timeout() {
    for module in ["uppercase.wasm", "upper_raw.wat"] {
        let (keep, never) = std::sync::mpsc::channel::<()>();
        let result = blocked(guest(module), Box::new(Stalled(never)));
        drop(keep);
        assert_eq!(
            then_healthy(&result.outcome),
            OutcomeKind::Timeout,
            "{module}: {}",
            result.outcome
        );
    }
}

#[test]
fn a_stdout_that_never_drains_is_timeout() {
    let (keep, never) = std::sync::mpsc::channel::<()>();
    let module = guest("stdout_flood.wasm");
    let result = within(20, move || {
        run_with(
            &SANDBOX,
            &module,
            Box::new(std::io::empty()),
            Box::new(StalledSink(never)),
            |job| {
                job.limits.timeout_ms = 300;
                job.limits.max_output_bytes = 1 << 30;
            },
        )
    });
    drop(keep);
    assert_eq!(
        then_healthy(&result.outcome),
        OutcomeKind::Timeout,
        "{}",
        result.outcome
    );
}

#[test]
fn a_sched_yield_loop_is_timeout() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (loop $l (drop (call $yield)) (br $l))))"#;
    let result = blocked(wat.as_bytes().to_vec(), Box::new(std::io::empty()));
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::Timeout);
}

fn assert_capped(outcome: &Outcome) {
    let detail = outcome.to_string();
    assert!(
        detail.len() <= sluice_shared::outcome::MAX_REASON_BYTES + 100,
        "outcome of {} bytes: {}…",
        detail.len(),
        &detail[..200.min(detail.len())]
    );
    let line = sluice_shared::ReportLine::new(
        "x",
        &sluice_shared::JobResult::without_run(
            sluice_shared::JobId(uuid::Uuid::nil()),
            outcome.clone(),
            1,
        ),
    );
    assert!(line.detail.len() <= sluice_shared::outcome::MAX_REASON_BYTES);
}

#[test]
fn a_95_kb_import_name_is_refused_with_a_capped_reason() {
    let name = "m".repeat(95_000);
    let wat = format!(r#"(module (import "env" "{name}" (func)) (func (export "_start")))"#);
    let (result, _) = run(&SANDBOX, wat.as_bytes(), b"", |_| {});
    assert_eq!(then_healthy(&result.outcome), OutcomeKind::ImportNotAllowed);
    assert_capped(&result.outcome);
    let Outcome::ImportNotAllowed { name: kept, .. } = &result.outcome else {
        unreachable!()
    };
    assert!(
        kept.starts_with("mmmm") && kept.ends_with("bytes cut)"),
        "{kept:.80}"
    );
}

#[test]
fn huge_name_section_strings_and_a_trap_give_a_capped_reason() {
    let name = "f".repeat(90_000);
    let wat = format!(
        r#"(module ${name}
          (memory (export "memory") 1)
          (func ${name}x unreachable)
          (func (export "_start") (call ${name}x)))"#
    );
    let (result, _) = run(&SANDBOX, wat.as_bytes(), b"", |_| {});
    assert_eq!(
        then_healthy(&result.outcome),
        OutcomeKind::Trap,
        "{}",
        result.outcome
    );
    assert_capped(&result.outcome);
}

#[test]
fn a_host_error_with_a_deep_backtrace_gives_a_capped_reason() {
    // No exported memory: `fd_write` fails in the host ("missing required memory
    // export") 200 frames deep in functions with 40 kB names.
    let name = "g".repeat(40_000);
    let wat = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory 1)
          (func ${name}a (param $depth i32)
            (if (i32.eqz (local.get $depth))
              (then (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0))))
              (else (call ${name}b (i32.sub (local.get $depth) (i32.const 1))))))
          (func ${name}b (param $depth i32) (call ${name}a (local.get $depth)))
          (func (export "_start") (call ${name}a (i32.const 100))))"#
    );
    let (result, _) = run(&SANDBOX, wat.as_bytes(), b"", |_| {});
    assert_eq!(
        then_healthy(&result.outcome),
        OutcomeKind::Trap,
        "{}",
        result.outcome
    );
    assert_capped(&result.outcome);
    let Outcome::Trap { code, message } = &result.outcome else {
        unreachable!()
    };
    assert_eq!(code, "host_function");
    assert!(message.contains("memory"), "{message:.300}");
    assert!(message.contains("more frames"), "{message:.300}");
}

#[test]
fn a_fifo_in_a_granted_directory_is_timeout() {
    let data = tempfile::tempdir().unwrap();
    let fifo = data.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let granted = std::sync::Arc::new(
        Sandbox::new(SandboxConfig {
            slots: 2,
            dir_grants: vec![
                DirGrant::parse(&format!("{}::/data", data.path().display()), true).unwrap(),
            ],
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let sandbox = granted.clone();
    let result = within(20, move || {
        run_with(
            &sandbox,
            &guest("open_fifo.wat"),
            Box::new(std::io::empty()),
            Box::new(std::io::sink()),
            |job| job.limits.timeout_ms = 300,
        )
    });
    assert_eq!(result.outcome, Outcome::Timeout);
    // The same sandbox still reads a regular file in the grant.
    std::fs::write(data.path().join("hello.txt"), "granted content\n").unwrap();
    let (after, output) = run(&granted, &guest("reads_dir_grant.wasm"), b"", |_| {});
    assert_eq!(after.outcome, Outcome::Success);
    assert_eq!(output, b"granted content\n");
    // Let the helper stuck in open(2) go: a writer opens and closes the FIFO. Opened
    // non-blocking (O_NONBLOCK), so it fails instead of waiting if no reader is there.
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(0o4000)
        .open(&fifo);
}
