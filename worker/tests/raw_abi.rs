//! The raw ABI: chunked transforms, `finish`, and guests that lie about pointers.

mod common;

use common::{guest, run};
use sluice_shared::{EntryPoint, Outcome, OutcomeKind};
use sluice_worker::{Sandbox, SandboxConfig};

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        slots: 2,
        // Small chunks so even a test input spans many `process` calls.
        raw_chunk_bytes: 7,
        ..SandboxConfig::default()
    })
    .unwrap()
}

#[test]
fn raw_module_is_detected_and_streams_in_chunks() {
    let sandbox = sandbox();
    let input = b"hello raw abi, in several chunks\nsecond line\n";
    let (result, output) = run(&sandbox, &guest("upper_raw.wat"), input, |job| {
        assert_eq!(
            job.entry,
            EntryPoint::Raw {
                export: "process".into()
            }
        );
    });
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(output, input.to_ascii_uppercase());
    assert_eq!(result.stats.input_bytes, input.len() as u64);
}

#[test]
fn finish_emits_state_accumulated_across_chunks() {
    let sandbox = sandbox();
    let (result, output) = run(&sandbox, &guest("count_raw.wat"), b"a\nbb\nccc\n", |_| {});
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(output, b"9 3\n");
}

const LYING_GUEST: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 16))
  ;; Claims 4 GiB - 1 bytes of output at offset 0.
  (func (export "process") (param i32 i32) (result i64) (i64.const 0xffffffff))
  (func (export "fail") (param i32 i32) (result i64) (i64.const -9))
  (func (export "bad_alloc_process") (param i32 i32) (result i64) (i64.const 0)))
"#;

#[test]
fn output_outside_guest_memory_is_an_abi_violation() {
    let sandbox = sandbox();
    let (result, _) = run(&sandbox, LYING_GUEST.as_bytes(), b"x", |_| {});
    assert!(
        matches!(&result.outcome, Outcome::Trap { code, .. } if code == "abi_violation"),
        "{}",
        result.outcome
    );
}

#[test]
fn negative_return_is_a_non_zero_exit() {
    let sandbox = sandbox();
    let (result, _) = run(&sandbox, LYING_GUEST.as_bytes(), b"x", |job| {
        job.entry = EntryPoint::Raw {
            export: "fail".into(),
        };
    });
    assert_eq!(result.outcome, Outcome::NonZeroExit { code: 9 });
}

#[test]
fn alloc_outside_memory_is_an_abi_violation() {
    let sandbox = sandbox();
    let wat = r#"(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 65535))
      (func (export "process") (param i32 i32) (result i64) (i64.const 0)))"#;
    let (result, _) = run(&sandbox, wat.as_bytes(), b"more than one byte", |_| {});
    assert_eq!(result.outcome.kind(), OutcomeKind::Trap);
}

#[test]
fn raw_output_over_the_cap_is_output_limit() {
    let sandbox = sandbox();
    let input = vec![b'a'; 1000];
    let (result, output) = run(&sandbox, &guest("upper_raw.wat"), &input, |job| {
        job.limits.max_output_bytes = 100;
    });
    assert_eq!(result.outcome, Outcome::OutputLimit { limit: 100 });
    assert_eq!(output.len(), 100);
}

#[test]
fn missing_alloc_is_missing_export() {
    let sandbox = sandbox();
    let wat = r#"(module (memory (export "memory") 1)
      (func (export "process") (param i32 i32) (result i64) (i64.const 0)))"#;
    let (result, _) = run(&sandbox, wat.as_bytes(), b"x", |job| {
        job.entry = EntryPoint::Raw {
            export: "process".into(),
        };
    });
    assert!(matches!(&result.outcome, Outcome::MissingExport { name, .. } if name == "alloc"));
}

/// Copies each chunk to 0x8000_0000 and names it there: an output pointer >= 2^31,
/// which makes the returned i64 negative.
const HIGH_OUTPUT: &str = r#"(module
  (memory (export "memory") 32769)
  (func (export "alloc") (param i32) (result i32) (i32.const 16))
  (func (export "process") (param $ptr i32) (param $len i32) (result i64)
    (memory.copy (i32.const 0x80000000) (local.get $ptr) (local.get $len))
    (i64.or (i64.const 0x8000000000000000) (i64.extend_i32_u (local.get $len)))))"#;

#[test]
fn an_output_pointer_at_or_past_2_gib_is_read_unsigned() {
    let sandbox = sandbox();
    let input = b"pointers are unsigned";
    let (result, output) = run(&sandbox, HIGH_OUTPUT.as_bytes(), input, |job| {
        job.limits.memory_bytes = 3 << 30;
    });
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(output, input);
}
