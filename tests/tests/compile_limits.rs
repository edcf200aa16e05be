//! A fleet worker under tight compile limits: a module built to make the compiler work
//! hard ends as `invalid_module` naming the limit, is not compiled again, the worker's
//! memory stays bounded, and it runs the next job.

use std::time::Duration;

use sluice_shared::{Job, JobInput, JobOutput, Outcome, OutcomeKind};
use sluice_tests::{Fleet, guest, wait};

/// How long a test waits for its jobs to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(120);

fn leb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, body: &[u8], module: &mut Vec<u8>) {
    module.push(id);
    leb(body.len() as u64, module);
    module.extend_from_slice(body);
}

/// One function of 1000 nested blocks over 1000 i64 locals, with a conditional branch
/// after every addition: every block end merges every local, so 57 KB of wasm takes
/// Cranelift over a minute and more than a gigabyte (the same module as the worker's
/// own compile_limits test).
fn hard_to_compile() -> Vec<u8> {
    let (depth, locals, rounds) = (1000u64, 1000u64, 4u64);
    let mut body = Vec::new();
    leb(1, &mut body);
    leb(locals, &mut body);
    body.push(0x7e);
    for level in 0..depth {
        body.extend_from_slice(&[0x02, 0x40]);
        for round in 0..rounds {
            let k = level * rounds + round;
            body.push(0x20);
            leb((k * 7) % locals, &mut body);
            body.push(0x20);
            leb((k * 13 + 1) % locals, &mut body);
            body.push(0x7c);
            body.push(0x22);
            leb((k * 31 + 2) % locals, &mut body);
            body.push(0xa7);
            body.push(0x0d);
            leb(round % (level + 1), &mut body);
        }
    }
    body.extend(std::iter::repeat_n(0x0b, depth as usize));
    body.push(0x20);
    leb(0, &mut body);
    for local in 1..locals {
        body.push(0x20);
        leb(local, &mut body);
        body.push(0x7c);
    }
    body.push(0x0b);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 1, 0x7e], &mut module);
    section(3, &[1, 0], &mut module);
    let mut export = vec![1, 3];
    export.extend_from_slice(b"sum");
    export.extend_from_slice(&[0, 0]);
    section(7, &export, &mut module);
    let mut code = Vec::new();
    leb(1, &mut code);
    leb(body.len() as u64, &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut module);
    module
}

#[test]
fn a_worker_with_tight_compile_limits_survives_a_hostile_module_and_runs_the_next_job() {
    let fleet = Fleet::start("compile");
    let mut worker = fleet.worker("w0", &["--concurrency", "2", "--compile-memory", "256MiB"]);
    let hostile = fleet.put_module(&hard_to_compile());
    let good = fleet.put_module(&std::fs::read(guest("uppercase.wasm")).unwrap());

    // Three jobs of the hostile module: the first compile breaks the memory limit, the
    // others find it remembered.
    let hostile_jobs: Vec<Job> = (0..3)
        .map(|_| Job::new(hostile, JobInput::Inline(Vec::new())))
        .collect();
    let finished = fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        &hostile_jobs,
        FINISH_WITHIN,
    ));
    assert!(
        finished
            .values()
            .all(|kind| *kind == OutcomeKind::InvalidModule),
        "{finished:?}"
    );
    let results = fleet.rt.block_on(wait::results(
        &fleet.queue,
        hostile_jobs.iter().map(|j| &j.id),
    ));
    for result in &results {
        match &result.outcome {
            Outcome::InvalidModule { reason } => {
                assert!(reason.contains("memory limit"), "{reason}")
            }
            other => panic!("expected invalid_module, got {other}"),
        }
    }

    // The next job runs, on the same worker.
    let next = Job::new(good, JobInput::Inline(b"still alive".to_vec()));
    let finished = fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        std::slice::from_ref(&next),
        FINISH_WITHIN,
    ));
    assert_eq!(finished[&next.id], OutcomeKind::Success);
    let result = &fleet.rt.block_on(wait::results(&fleet.queue, [&next.id]))[0];
    assert_eq!(result.output, JobOutput::Inline(b"STILL ALIVE".to_vec()));
    assert!(worker.is_running());
    // The compiler needed more than 256 MiB; the worker, which only fed it, did not.
    let peak = worker.peak_rss_bytes();
    assert!(peak < 400 << 20, "worker peak RSS {peak} bytes");
}
