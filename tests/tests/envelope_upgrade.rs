//! Jobs queued before the envelope's version-3 upgrade keep working: a version-2
//! envelope (no module name) on the job stream and in the delayed set is found by
//! `sluice result` and run by a worker with the module's hash as `argv[0]`. Real
//! redis-server, `sluice` and `sluice-worker`; the envelopes are written with raw
//! commands, as an older scheduler wrote them.

use sluice_shared::{Job, JobInput, codec};
use sluice_tests::{Fleet, guest};

/// The envelope a version-2 scheduler wrote for `job`: this build writes a job
/// without a module name in exactly that format (version byte 2, no trailing name);
/// `shared/src/codec.rs` pins the version-2 bytes themselves.
fn version_two(job: &Job) -> Vec<u8> {
    assert!(job.program.is_none());
    let bytes = codec::encode(job);
    assert_eq!(bytes[0], 2);
    assert_eq!(codec::decode(&bytes).as_ref(), Ok(job));
    bytes
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_two_envelopes_are_found_and_run() {
    let fleet = Fleet::start("upgrade");
    let echo = fleet.put_module(&std::fs::read(guest("env_echo.wasm")).unwrap());
    let queued = Job::new(echo, JobInput::Inline(Vec::new()));
    let delayed = Job::new(echo, JobInput::Inline(Vec::new()));
    let keys = fleet.queue.keys().clone();
    fleet.rt.block_on(async {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&keys.jobs)
            .arg("*")
            .arg("e")
            .arg(version_two(&queued));
        xadd.query_async::<()>(&mut fleet.queue.connection())
            .await
            .unwrap();
        // Due at once: promoted onto the stream by the worker's maintenance.
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&keys.delayed).arg(0).arg(version_two(&delayed));
        zadd.query_async::<()>(&mut fleet.queue.connection())
            .await
            .unwrap();
    });

    // Before any worker: found where they wait, not "no job".
    let state = fleet
        .sluice(&["result", &queued.id.to_string()])
        .output()
        .unwrap();
    assert_eq!(state.status.code(), Some(5), "{}", text(&state.stderr));
    assert!(
        text(&state.stderr).contains("queued"),
        "{}",
        text(&state.stderr)
    );
    let state = fleet
        .sluice(&["result", &delayed.id.to_string()])
        .output()
        .unwrap();
    assert_eq!(state.status.code(), Some(6), "{}", text(&state.stderr));

    let _worker = fleet.worker("w0", &[]);
    for job in [&queued, &delayed] {
        let result = fleet
            .sluice(&[
                "result",
                &job.id.to_string(),
                "--wait",
                "1m",
                "--output",
                "-",
            ])
            .output()
            .unwrap();
        assert!(result.status.success(), "{}", text(&result.stderr));
        assert_eq!(text(&result.stdout), format!("arg[0]={}\n", echo.to_hex()));
    }
}
