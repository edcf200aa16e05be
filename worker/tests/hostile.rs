//! The hostile-module corpus: every attack ends with its typed outcome, and the same
//! sandbox runs a good job right after it.

mod common;

use std::sync::LazyLock;

use common::{guest, run};
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
    for name in ["missing_start.wat", "wrong_signature.wat"] {
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
