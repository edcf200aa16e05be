//! A pool slot is back on the free list when its job ends: with as many threads as
//! slots, each running job after job, no job finds the pool empty ("instance pool
//! full", a host error). The guest dirties memory past the part kept resident
//! (`SandboxConfig::memory_keep_resident_bytes`), so each job's slot needs a decommit
//! before it can be reused: with decommits batched across jobs, a freed slot could wait
//! in another thread's queue while a new job looked for one.

use std::io::Cursor;
use std::sync::Arc;

use sluice_shared::{Job, JobInput, Limits, Outcome};
use sluice_worker::{Sandbox, SandboxConfig};

/// Slots, and threads running jobs at once.
const SLOTS: u32 = 8;
/// Jobs per thread.
const JOBS: usize = 1_500;

/// Grows its memory to 2 MiB and writes one byte in each 64 KiB page from 1 MiB to
/// 2 MiB: all past the kept size (256 KiB by default).
const GUEST: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $addr i32)
    (if (i32.eq (memory.grow (i32.const 31)) (i32.const -1))
      (then unreachable))
    (local.set $addr (i32.const 0x100000))
    (loop $dirty
      (i32.store8 (local.get $addr) (i32.const 1))
      (local.set $addr (i32.add (local.get $addr) (i32.const 0x10000)))
      (br_if $dirty (i32.lt_u (local.get $addr) (i32.const 0x200000))))))"#;

#[test]
fn as_many_threads_as_slots_never_find_the_pool_full() {
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            slots: SLOTS,
            ..SandboxConfig::default()
        })
        .expect("sandbox"),
    );
    assert!(
        SandboxConfig::default().memory_keep_resident_bytes < 0x200000,
        "the guest must dirty memory past the resident part"
    );
    let module = sandbox.load_module(GUEST.as_bytes()).expect("loads");
    let failures: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..SLOTS)
            .map(|_| {
                let (sandbox, module) = (&sandbox, &module);
                scope.spawn(move || {
                    let mut job = Job::new(module.hash(), JobInput::Inline(Vec::new()));
                    job.limits = Limits {
                        timeout_ms: 10_000,
                        ..Limits::default()
                    };
                    (0..JOBS)
                        .map(|i| {
                            let result = sandbox.run(
                                module,
                                &job,
                                Box::new(Cursor::new(Vec::new())),
                                Box::new(std::io::sink()),
                            );
                            (i, result.outcome)
                        })
                        .filter(|(_, outcome)| *outcome != Outcome::Success)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} jobs failed with {SLOTS} threads on {SLOTS} slots; first: {:?}",
        failures.len(),
        SLOTS as usize * JOBS,
        failures.first()
    );
}
