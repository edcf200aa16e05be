//! Typed input references: a fleet worker opens only inputs that live in the queue
//! (inline bytes and blobs). A job naming a file on the worker's host, or the worker's
//! stdin, is the job's `input_unavailable` outcome, never a read of that file; and an
//! envelope of the old string-reference format is refused by its version.

use std::path::PathBuf;
use std::time::Duration;

use sluice_shared::{Job, JobInput, OutcomeKind, Queue, codec};
use sluice_tests::fleet::Fleet;
use sluice_tests::wait::enqueue_and_await;

#[test]
fn a_fleet_worker_refuses_host_file_and_stdin_inputs_and_old_envelopes() {
    let fleet = Fleet::start("refs");
    let mut worker = fleet.worker("w0", &[]);
    let module =
        fleet.put_module(b"(module (memory (export \"memory\") 1) (func (export \"_start\")))");
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
    let rt = &fleet.rt;
    rt.block_on(fleet.queue.enqueue_raw(old)).unwrap();

    let finished = rt.block_on(enqueue_and_await(
        &fleet.queue,
        &[host_file.clone(), stdin.clone(), good.clone()],
        Duration::from_secs(120),
    ));
    assert_eq!(finished[&good.id], OutcomeKind::Success);
    for refused in [&host_file, &stdin] {
        assert_eq!(finished[&refused.id], OutcomeKind::InputUnavailable);
        let result = rt
            .block_on(fleet.queue.result(refused.id))
            .unwrap()
            .unwrap();
        let reason = result.outcome.to_string();
        assert!(reason.contains("reads blob inputs"), "{reason}");
        assert!(!reason.contains("root:"), "{reason}");
    }
    // The old envelope went in first, so its worker dead-lettered it before the jobs
    // after it finished.
    let dead = rt.block_on(fleet.queue.dead_letters()).unwrap();
    assert!(
        dead.iter().any(|d| d.kind == OutcomeKind::BadEnvelope
            && d.reason.contains("unknown envelope format version 1")),
        "{dead:?}"
    );
    assert!(worker.is_running());
}
