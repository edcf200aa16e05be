//! Typed input references: a fleet worker opens only inputs that live in the queue
//! (inline bytes and blobs). A job naming a file on the worker's host, or the worker's
//! stdin, is the job's `input_unavailable` outcome, never a read of that file; and an
//! envelope of the old string-reference format is refused by its version.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_shared::{Job, JobId, JobInput, OutcomeKind, Queue, codec};
use sluice_tests::{RedisServer, WorkerProcess, connect, runtime};

#[test]
fn a_fleet_worker_refuses_host_file_and_stdin_inputs_and_old_envelopes() {
    let server = RedisServer::start();
    let mut worker = WorkerProcess::start(&server.url(), "refs", "w0", &[]);
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "refs"));
    let module = rt
        .block_on(queue.put_module(
            br#"(module (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32))) (memory (export "memory") 1) (func (export "_start")))"#,
            None,
        ))
        .unwrap();
    let from = rt.block_on(queue.notices_from_now()).unwrap();

    let host_file = Job::new(
        module,
        JobInput::File {
            path: PathBuf::from("/etc/passwd"),
            len: 10,
        },
    );
    let stdin = Job::new(module, JobInput::Stdin);
    let good = Job::new(module, JobInput::Inline(b"fine".to_vec()));
    let mut old = codec::encode(&Job::new(module, JobInput::Inline(Vec::new())));
    old[0] = 1;
    rt.block_on(queue.enqueue_raw(old)).unwrap();
    rt.block_on(queue.enqueue(&[host_file.clone(), stdin.clone(), good.clone()]))
        .unwrap();

    let ids: HashSet<JobId> = [host_file.id, stdin.id, good.id].into();
    let finished = rt.block_on(async {
        let mut from = from;
        let mut finished = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while finished.len() < ids.len() {
            assert!(Instant::now() < deadline, "finished only {finished:?}");
            let (next, notices) = queue
                .completions(&from, Duration::from_millis(500))
                .await
                .unwrap();
            from = next;
            finished.extend(notices.into_iter().filter(|(id, _)| ids.contains(id)));
        }
        finished
    });
    assert_eq!(finished[&good.id], OutcomeKind::Success);
    for refused in [&host_file, &stdin] {
        assert_eq!(finished[&refused.id], OutcomeKind::InputUnavailable);
        let result = rt.block_on(queue.result(refused.id)).unwrap().unwrap();
        let reason = result.outcome.to_string();
        assert!(reason.contains("reads blob inputs"), "{reason}");
        assert!(!reason.contains("root:"), "{reason}");
    }
    let dead = rt.block_on(queue.dead_letters()).unwrap();
    assert!(
        dead.iter().any(|d| d.kind == OutcomeKind::BadEnvelope
            && d.reason.contains("unknown envelope format version 1")),
        "{dead:?}"
    );
    assert!(worker.is_running());
}
