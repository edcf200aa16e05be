//! Compilation in a `sluice-worker compile` child: a module built to make the compiler
//! work hard ends as `invalid_module` naming the limit it broke (a `host_error` for the
//! wall clock, which depends on the host's load), is not compiled again,
//! the parent's memory stays bounded, and the next module runs; a normal module gives
//! the same output through the child as in process.

mod common;

use std::time::Duration;

use common::{guest, run};
use sluice_shared::Outcome;
use sluice_tests::wasm_gen::hard_to_compile;
use sluice_worker::compile::{CompileLimits, Compiler, EngineSettings};
use sluice_worker::metrics::WorkerMetrics;
use sluice_worker::{Sandbox, SandboxConfig, SandboxError};

fn config() -> SandboxConfig {
    SandboxConfig {
        slots: 2,
        ..SandboxConfig::default()
    }
}

/// A sandbox that compiles in a `sluice-worker compile` child under `limits`, and the
/// metrics it counts in.
fn sandbox(limits: CompileLimits) -> (Sandbox, WorkerMetrics) {
    let metrics = WorkerMetrics::new();
    let compiler = Compiler::new(limits, EngineSettings::of(&config()))
        .unwrap()
        .with_program(env!("CARGO_BIN_EXE_sluice-worker"))
        .with_metrics(metrics.compile.clone());
    (Sandbox::with_compiler(config(), compiler).unwrap(), metrics)
}

fn generous() -> CompileLimits {
    CompileLimits {
        memory_bytes: 4 << 30,
        cpu: Duration::from_secs(600),
        wall_clock: Duration::from_secs(600),
        ..CompileLimits::default()
    }
}

/// The peak resident memory of this (the parent) process.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib << 10
}

/// Refused as `invalid_module` with a reason containing `names`.
fn refused_naming(sandbox: &Sandbox, module: &[u8], names: &str) {
    match sandbox.load_module(module) {
        Err(Outcome::InvalidModule { reason }) => {
            assert!(reason.contains(names), "{reason}")
        }
        Err(other) => panic!("expected invalid_module naming {names}, got {other}"),
        Ok(_) => panic!("the hostile module compiled under the limit"),
    }
}

/// The sandbox still runs a normal module, with the right output.
fn then_healthy(sandbox: &Sandbox) {
    let (result, output) = run(sandbox, &guest("uppercase.wasm"), b"still alive", |_| {});
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(output, b"STILL ALIVE");
}

#[test]
fn a_module_over_the_memory_limit_is_invalid_remembered_and_the_next_one_runs() {
    let (sandbox, metrics) = sandbox(CompileLimits {
        memory_bytes: 256 << 20,
        ..generous()
    });
    let hostile = hard_to_compile(1000, 1000, 4);
    refused_naming(&sandbox, &hostile, "memory limit");
    // Remembered: the second attempt starts no child.
    refused_naming(&sandbox, &hostile, "memory limit");
    assert_eq!(metrics.compile.compiles.get(), 1);
    let failures = |limit: &str| {
        metrics
            .compile
            .limit_failures
            .with_label_values(&[limit])
            .get()
    };
    assert_eq!(failures("memory"), 1);
    assert_eq!(failures("cpu"), 0);
    then_healthy(&sandbox);
    assert_eq!(metrics.compile.compiles.get(), 2);
    assert!(
        metrics
            .render()
            .contains("sluice_module_compile_seconds_count 2")
    );
    // The compiler needed more than 256 MiB (in process it takes over a gigabyte);
    // this process, which only fed it and read the artifacts, did not.
    let peak = peak_rss_bytes();
    assert!(peak < 400 << 20, "parent peak RSS {peak} bytes");
}

#[test]
fn a_module_over_the_cpu_limit_is_invalid_naming_it() {
    let (sandbox, metrics) = sandbox(CompileLimits {
        cpu: Duration::from_secs(1),
        ..generous()
    });
    refused_naming(&sandbox, &hard_to_compile(1000, 1000, 4), "CPU limit");
    assert_eq!(
        metrics
            .compile
            .limit_failures
            .with_label_values(&["cpu"])
            .get(),
        1
    );
    then_healthy(&sandbox);
}

#[test]
fn a_module_over_the_wall_clock_limit_is_a_host_error_naming_it_and_not_remembered() {
    let (sandbox, metrics) = sandbox(CompileLimits {
        wall_clock: Duration::from_millis(300),
        ..generous()
    });
    let slow = hard_to_compile(1000, 1000, 4);
    // The wall clock depends on the host's load, not only on the module: a retryable
    // host error, not the module's `invalid_module`.
    for attempt in 1..=2 {
        match sandbox.load_module(&slow) {
            Err(Outcome::HostError { reason }) => {
                assert!(reason.contains("wall-clock limit"), "{reason}")
            }
            Err(other) => panic!("expected host_error naming the wall clock, got {other}"),
            Ok(_) => panic!("the module compiled within 300 ms"),
        }
        // Not remembered as bad: each attempt starts a child again.
        assert_eq!(metrics.compile.compiles.get(), attempt);
    }
    assert_eq!(
        metrics
            .compile
            .limit_failures
            .with_label_values(&["wall_clock"])
            .get(),
        2
    );
    then_healthy(&sandbox);
}

#[test]
fn an_artifact_over_its_cap_is_invalid_naming_it() {
    let (sandbox, metrics) = sandbox(CompileLimits {
        artifact_bytes: CompileLimits::MIN_ARTIFACT_BYTES,
        ..generous()
    });
    // Thousands of small functions: quick to compile, large to serialize.
    let mut wat = String::from("(module (func (export \"_start\"))");
    for n in 0..5000 {
        wat.push_str(&format!(
            "(func (export \"f{n}\") (result i32) i32.const {n})"
        ));
    }
    wat.push(')');
    refused_naming(&sandbox, wat.as_bytes(), "artifact cap");
    assert_eq!(
        metrics
            .compile
            .limit_failures
            .with_label_values(&["artifact_size"])
            .get(),
        1
    );
}

#[test]
fn an_invalid_module_gets_the_compilers_reason_and_no_limit() {
    let (sandbox, metrics) = sandbox(generous());
    match sandbox.load_module(b"\0asm\x01\0\0\0\x01\x05garbage") {
        Err(Outcome::InvalidModule { reason }) => {
            assert!(!reason.contains("limit"), "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected invalid_module, got {:?}", other.err()),
    }
    for limit in ["memory", "cpu", "wall_clock", "artifact_size"] {
        assert_eq!(
            metrics
                .compile
                .limit_failures
                .with_label_values(&[limit])
                .get(),
            0
        );
    }
}

#[test]
fn a_normal_module_gives_the_same_output_through_the_child_as_in_process() {
    let (child, metrics) = sandbox(generous());
    let in_process = Sandbox::new(config()).unwrap();
    let module = guest("uppercase.wasm");
    for fuel in [None, Some(50_000_000)] {
        let (through_child, child_output) = run(&child, &module, b"Hello, world", |job| {
            job.limits.fuel = fuel
        });
        let (local, local_output) = run(&in_process, &module, b"Hello, world", |job| {
            job.limits.fuel = fuel
        });
        assert_eq!(through_child.outcome, Outcome::Success);
        assert_eq!(through_child.outcome, local.outcome);
        assert_eq!(child_output, b"HELLO, WORLD");
        assert_eq!(child_output, local_output);
        // Metered code counts the same instructions either way.
        assert_eq!(through_child.stats.fuel_used, local.stats.fuel_used);
    }
    // Each `run` loads the module anew (keeping loaded modules is the fleet's job, not
    // the sandbox's): unmetered at both loads, metered for the fuel job.
    assert_eq!(metrics.compile.compiles.get(), 3);
}

#[test]
fn a_compiler_for_other_engine_settings_is_refused() {
    let compiler = Compiler::new(
        CompileLimits::default(),
        EngineSettings {
            max_wasm_stack_bytes: 64 << 10,
        },
    )
    .unwrap();
    assert!(matches!(
        Sandbox::with_compiler(config(), compiler),
        Err(SandboxError::CompilerMismatch { .. })
    ));
}
