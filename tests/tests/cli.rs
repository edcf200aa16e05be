//! The `sluice` command line as a user lives with it, against a real redis-server and
//! real workers: `result --wait` and `wait` ending on the completion notice, a message
//! and exit status of its own for each state of a job without a result, the record and
//! the output on separate streams, `--json` documents that parse, `status` showing
//! tenant backlogs and hiding a stopped worker, `dlq retry` by job id, `module put
//! --name` refusing to re-point a name, and shell completions.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobId, JobInput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::wait::poll;
use sluice_tests::{Fleet, bin, guest};

/// How long a test waits for something that takes a moment.
const WITHIN: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(mut command: impl std::borrow::BorrowMut<Command>) -> Output {
    command.borrow_mut().output().expect("run sluice")
}

/// `sluice submit --module NAME` with `input` on stdin; the job id.
fn submit(fleet: &Fleet, module: &str, input: &[u8], extra: &[&str]) -> JobId {
    let mut child = fleet
        .sluice(&["submit", "--module", module])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "submit: {}", text(&out.stderr));
    text(&out.stdout).trim().parse().expect("a job id")
}

/// `sluice module put --name NAME FILE`.
fn put(fleet: &Fleet, name: &str, module: &str) -> String {
    let file = guest(module);
    let out = run(fleet.sluice(&["module", "put", "--name", name, file.to_str().unwrap()]));
    assert!(out.status.success(), "module put: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Waits (bounded) until `child` exits, and returns what it wrote.
fn finish(mut child: Child, within: Duration, what: &str) -> Output {
    poll(
        what,
        within,
        || matches!(child.try_wait(), Ok(Some(_))),
        |exited| *exited,
    );
    child.wait_with_output().unwrap()
}

/// Waits until `n` clients are blocked reading the completion notices (`XREAD
/// BLOCK`): the waiters have looked their jobs up and now follow the notices.
fn await_blocked_readers(fleet: &Fleet, n: usize) {
    poll(
        "clients blocked on the completion notices",
        WITHIN,
        || {
            fleet
                .redis
                .cli(&["CLIENT", "LIST"])
                .lines()
                .filter(|l| l.contains("cmd=xread ") && l.contains("flags=b"))
                .count()
        },
        |blocked| *blocked >= n,
    );
}

fn spawn_piped(mut command: impl std::borrow::BorrowMut<Command>) -> Child {
    command
        .borrow_mut()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn result_wait_and_wait_end_on_the_completion_notice() {
    let fleet = Fleet::start("cli-wait");
    put(&fleet, "up", "uppercase.wasm");
    let first = submit(&fleet, "up", b"hello", &[]);
    let second = submit(&fleet, "up", b"world", &[]);
    // Both waiters start before any worker exists: nothing can finish before they
    // follow the notices.
    let result = spawn_piped(fleet.sluice(&[
        "result",
        &first.to_string(),
        "--wait",
        "5m",
        "--output",
        "-",
    ]));
    let waiter = spawn_piped(fleet.sluice(&["wait", &first.to_string(), &second.to_string()]));
    await_blocked_readers(&fleet, 2);
    let _worker = fleet.worker("w1", &[]);
    // Well within `RECHECK` (30 s), when a waiter would look results up by itself:
    // these end on the notices.
    let result = finish(result, Duration::from_secs(20), "result --wait to end");
    assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
    assert_eq!(text(&result.stdout), "HELLO");
    let record: serde_json::Value =
        serde_json::from_str(text(&result.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(record["outcome"], "success");
    assert_eq!(record["job_id"], first.to_string());

    let waited = finish(waiter, Duration::from_secs(20), "wait to end");
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited.stderr));
    let lines: Vec<serde_json::Value> = text(&waited.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l| l["job_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![first.to_string(), second.to_string()];
    expected.sort();
    assert_eq!(ids, expected);
}

fn job_on(module: ModuleHash) -> Job {
    Job::new(module, JobInput::Inline(b"x".to_vec()))
}

/// `sluice result ID [extra]`: exit status, stdout, stderr.
fn result_of(fleet: &Fleet, id: JobId, extra: &[&str]) -> (i32, String, String) {
    let out = run(fleet.sluice(&["result", &id.to_string()]).args(extra));
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn each_state_of_a_job_without_a_result_has_its_own_message_and_status() {
    let fleet = Fleet::start("cli-states");
    let module = fleet.put_module(b"(module (func (export \"_start\")))");
    let q: &RedisQueue = &fleet.queue;

    // Unknown: an id never submitted.
    let (code, _, err) = result_of(&fleet, JobId::new(), &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no job") && err.contains("cli-states"),
        "{err}"
    );

    // Expired: an id from three days ago, found nowhere.
    let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3 * 24 * 3600,
        0,
    ));
    let (code, _, err) = result_of(&fleet, JobId(old), &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("has no result any more"), "{err}");

    // Queued, then the same through --wait running out, and as JSON.
    let queued = job_on(module);
    fleet
        .rt
        .block_on(q.enqueue(std::slice::from_ref(&queued)))
        .unwrap();
    let (code, _, err) = result_of(&fleet, queued.id, &[]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("is queued (attempt 1"), "{err}");
    let (code, _, err) = result_of(&fleet, queued.id, &["--wait", "200ms"]);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("still queued"), "{err}");
    let (code, out, _) = result_of(&fleet, queued.id, &["--json"]);
    assert_eq!(code, 5);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["state"], "queued");
    assert_eq!(doc["attempt"], 1);

    // Running: a worker (here a bare consumer) holds it.
    let claimed = fleet
        .rt
        .block_on(q.claim("holder", 1, WITHIN, Duration::ZERO))
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let (code, _, err) = result_of(&fleet, queued.id, &[]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("is running (attempt 1, on worker holder)"),
        "{err}"
    );

    // Delayed: a retry (one attempt made), and a job scheduled for later.
    let mut retry = job_on(module);
    retry.attempt = 1;
    let later = fleet.rt.block_on(q.server_time_ms()).unwrap() + 3_600_000;
    fleet
        .rt
        .block_on(q.schedule(std::slice::from_ref(&retry), later))
        .unwrap();
    let (code, _, err) = result_of(&fleet, retry.id, &[]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("failed attempt 1") && err.contains("attempt 2 at"),
        "{err}"
    );
    let scheduled = job_on(module);
    fleet
        .rt
        .block_on(q.schedule(std::slice::from_ref(&scheduled), later))
        .unwrap();
    let (code, _, err) = result_of(&fleet, scheduled.id, &[]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("scheduled to run at"), "{err}");

    // Waiting in a tenant's backlog (submitted over HTTP), then cancelled.
    let owned = job_on(module);
    fleet
        .rt
        .block_on(
            q.admission()
                .enqueue_owned(std::slice::from_ref(&owned), "acme", None),
        )
        .unwrap();
    let (code, _, err) = result_of(&fleet, owned.id, &[]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("tenant acme's backlog"), "{err}");
    fleet.rt.block_on(q.results().cancel(owned.id)).unwrap();
    let (code, _, err) = result_of(&fleet, owned.id, &["--wait", "1m"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("was cancelled"), "{err}");

    // Finished and failed: exit 1 with the record.
    let lease = claimed.into_iter().next().unwrap().lease;
    let failed = JobResult::without_run(queued.id, Outcome::Timeout, 1);
    fleet.rt.block_on(q.complete(&lease, failed)).unwrap();
    let (code, out, _) = result_of(&fleet, queued.id, &[]);
    assert_eq!(code, 1);
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["outcome"], "timeout");
}

#[test]
fn the_record_and_the_output_never_share_a_stream() {
    let fleet = Fleet::start("cli-streams");
    put(&fleet, "up", "uppercase.wasm");
    let _worker = fleet.worker("w1", &[]);
    let id = submit(&fleet, "up", b"streams", &[]).to_string();
    let dir = tempfile::tempdir().unwrap();

    // Output to stdout: the record goes to stderr.
    let out = run(fleet.sluice(&["result", &id, "--wait", "--output", "-"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "STREAMS");
    let record: serde_json::Value = serde_json::from_str(text(&out.stderr).trim()).unwrap();
    assert_eq!(record["outcome"], "success");

    // Output to a file: the record on stdout, the file holds only the output.
    let file = dir.path().join("out");
    let out = run(fleet.sluice(&["result", &id, "--output", file.to_str().unwrap()]));
    assert!(out.status.success());
    assert_eq!(std::fs::read(&file).unwrap(), b"STREAMS");
    let record: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(record["job_id"], id);
    assert_eq!(text(&out.stderr), "");

    // --record FILE: stdout holds only the output, stderr nothing.
    let rec = dir.path().join("record.json");
    let out = run(fleet.sluice(&[
        "result",
        &id,
        "--output",
        "-",
        "--record",
        rec.to_str().unwrap(),
    ]));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "STREAMS");
    assert_eq!(text(&out.stderr), "");
    let record: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&rec).unwrap().trim()).unwrap();
    assert_eq!(record["outcome"], "success");

    // A file that is stdout (stdout redirected to it) is stdout.
    let same = dir.path().join("same");
    let handle = std::fs::File::create(&same).unwrap();
    let out = run(fleet
        .sluice(&["result", &id, "--output", same.to_str().unwrap()])
        .stdout(handle));
    assert!(out.status.success());
    assert_eq!(std::fs::read(&same).unwrap(), b"STREAMS");
    assert!(text(&out.stderr).contains("\"outcome\":\"success\""));
}

/// Runs one job through `worker` alone (so it is a consumer of the group), and waits
/// until it has finished.
fn run_one_job_on(fleet: &Fleet, module: &str) {
    let id = submit(fleet, module, b"x", &[]);
    let out = run(fleet.sluice(&["result", &id.to_string(), "--wait", "1m"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn status_shows_tenant_backlogs_and_only_live_workers() {
    let fleet = Fleet::start("cli-status");
    put(&fleet, "up", "uppercase.wasm");
    let module = fleet.put_module(b"(module (func (export \"_start\")))");
    let jobs: Vec<Job> = (0..3).map(|_| job_on(module)).collect();
    fleet
        .rt
        .block_on(fleet.queue.admission().enqueue_owned(&jobs, "acme", None))
        .unwrap();
    // Each worker runs a job alone, so both are consumers of the group (Redis 7.0
    // makes a consumer of a reader only once it is handed an entry).
    let mut stopped = fleet.worker("stopped", &[]);
    run_one_job_on(&fleet, "up");
    stopped.terminate();
    assert!(stopped.wait().success());
    let _live = fleet.worker("live", &[]);
    run_one_job_on(&fleet, "up");
    // A worker that beats its heartbeat is live without claiming; one whose beat ran
    // out is gone.
    let q = &fleet.queue;
    fleet
        .rt
        .block_on(q.admin().heartbeat("beating", Duration::from_secs(600)))
        .unwrap();
    fleet
        .rt
        .block_on(q.admin().heartbeat("expired", Duration::from_millis(1)))
        .unwrap();

    let status = |extra: &[&str]| -> serde_json::Value {
        let out = run(fleet
            .sluice(&["status", "--json", "--stale-after", "2s"])
            .args(extra));
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_str(&text(&out.stdout)).unwrap()
    };
    // The stopped worker stops being listed once it has not been heard from for
    // --stale-after; the live one, claiming all along, stays.
    let view = poll(
        "the stopped worker to leave the status",
        WITHIN,
        || status(&[]),
        |v| {
            let names: Vec<&str> = v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["name"].as_str().unwrap())
                .collect();
            names == ["beating", "live"]
        },
    );
    assert_eq!(view["live_workers"], 2);
    // The stopped worker left the workers' hash on its clean exit (serve's
    // forget_consumer); only the one whose beat ran out counts as departed.
    assert_eq!(view["departed_workers"], 1);
    assert_eq!(view["backlogged"], 3);
    assert_eq!(view["backlogs"][0]["tenant"], "acme");
    assert_eq!(view["backlogs"][0]["waiting"], 3);

    let out = run(fleet.sluice(&["status", "--stale-after", "2s"]));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("waiting in tenant backlogs 3 (acme 3)"),
        "{shown}"
    );
    assert!(
        shown.contains("workers (2 live)") && !shown.contains("stopped"),
        "{shown}"
    );

    // A clean exit's forget removes a worker at once.
    assert!(
        !fleet
            .rt
            .block_on(q.admin().forget_consumer("beating"))
            .unwrap()
    );
    let after = status(&[]);
    assert_eq!(after["live_workers"], 1, "{after}");

    // --watch into a pipe: one line per refresh.
    let mut watch =
        spawn_piped(fleet.sluice(&["status", "--watch", "100ms", "--stale-after", "2s"]));
    let mut stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(
            line.contains("backlogged 3") && line.contains("workers 1"),
            "{line}"
        );
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn a_consumer_that_holds_nothing_is_forgotten_and_one_that_holds_jobs_is_kept() {
    let fleet = Fleet::start("cli-forget");
    let q = &fleet.queue;
    let module = fleet.put_module(b"(module (func (export \"_start\")))");
    fleet
        .rt
        .block_on(q.enqueue(&[job_on(module), job_on(module)]))
        .unwrap();
    let held = fleet
        .rt
        .block_on(q.claim("holder", 1, WITHIN, Duration::ZERO))
        .unwrap();
    assert_eq!(held.len(), 1);
    // "idle" claims a job and finishes it: a consumer holding nothing.
    let done = fleet
        .rt
        .block_on(q.claim("idle", 1, WITHIN, Duration::ZERO))
        .unwrap();
    let result = JobResult::without_run(done[0].lease.job_id.unwrap(), Outcome::Success, 1);
    fleet
        .rt
        .block_on(q.complete(&done[0].lease, result))
        .unwrap();
    assert!(
        fleet
            .rt
            .block_on(q.admin().forget_consumer("idle"))
            .unwrap()
    );
    assert!(
        !fleet
            .rt
            .block_on(q.admin().forget_consumer("holder"))
            .unwrap()
    );
    assert!(
        !fleet
            .rt
            .block_on(q.admin().forget_consumer("nobody"))
            .unwrap()
    );
    let names: Vec<String> = fleet
        .rt
        .block_on(q.admin().status())
        .unwrap()
        .consumers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["holder"]);
}

#[test]
fn dlq_retry_takes_a_job_id_and_says_what_is_wrong_with_a_bad_one() {
    let fleet = Fleet::start("cli-dlq");
    let q = &fleet.queue;
    let module = fleet.put_module(b"(module (func (export \"_start\")))");
    let dead = job_on(module);
    fleet
        .rt
        .block_on(q.enqueue(std::slice::from_ref(&dead)))
        .unwrap();
    let claimed = fleet
        .rt
        .block_on(q.claim("c", 1, WITHIN, Duration::ZERO))
        .unwrap();
    let failure = JobResult::without_run(dead.id, Outcome::Timeout, 1);
    fleet
        .rt
        .block_on(q.dead_letter(&claimed[0].lease, failure))
        .unwrap();

    let listed = run(fleet.sluice(&["dlq", "list", "--json"]));
    let letter: serde_json::Value = serde_json::from_str(text(&listed.stdout).trim()).unwrap();
    assert_eq!(letter["job_id"], dead.id.to_string());
    let table = text(&run(fleet.sluice(&["dlq", "list"])).stdout);
    assert!(
        table.contains(&dead.id.to_string()) && table.contains("timeout"),
        "{table}"
    );

    for (arg, says) in [
        ("not-an-id", "is not a dead letter id"),
        ("1-1", "no dead letter 1-1"),
        (&JobId::new().to_string()[..], "no dead letter of job"),
    ] {
        let out = run(fleet.sluice(&["dlq", "retry", arg]));
        assert_eq!(out.status.code(), Some(2), "{arg}");
        let err = text(&out.stderr);
        assert!(err.contains(says) && !err.contains("ERR"), "{arg}: {err}");
    }
    let out = run(fleet.sluice(&["dlq", "retry", &dead.id.to_string()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "re-enqueued 1");
    assert_eq!(fleet.rt.block_on(q.stats()).unwrap().ready, 1);
}

#[test]
fn module_put_refuses_to_repoint_a_name_without_force_and_lists_modules() {
    let fleet = Fleet::start("cli-modules");
    let upper = put(&fleet, "m", "uppercase.wasm");
    // The same bytes again: nothing changes, no refusal.
    assert_eq!(put(&fleet, "m", "uppercase.wasm"), upper);
    let wc = guest("wordcount.wasm");
    let refused = run(fleet.sluice(&["module", "put", "--name", "m", wc.to_str().unwrap()]));
    assert_eq!(refused.status.code(), Some(2));
    let err = text(&refused.stderr);
    assert!(
        err.contains("already names module") && err.contains("--force"),
        "{err}"
    );
    let resolve = |name: &str| {
        fleet
            .rt
            .block_on(fleet.queue.modules().resolve(name))
            .unwrap()
    };
    assert_eq!(resolve("m").unwrap().to_string(), upper);

    let forced = run(fleet.sluice(&[
        "module",
        "put",
        "--name",
        "m",
        "--force",
        wc.to_str().unwrap(),
    ]));
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let counted = text(&forced.stdout).trim().to_owned();
    assert_eq!(resolve("m").unwrap().to_string(), counted);

    let listed: Vec<serde_json::Value> =
        text(&run(fleet.sluice(&["module", "ls", "--json"])).stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let named = listed
        .iter()
        .find(|m| m["hash"] == counted.as_str())
        .unwrap();
    assert_eq!(named["names"], serde_json::json!(["m"]));
    assert!(named["bytes"].as_u64().unwrap() > 0);
    assert!(listed.iter().any(|m| m["hash"] == upper.as_str()));
    let table = text(&run(fleet.sluice(&["module", "ls"])).stdout);
    assert!(table.contains(&counted) && table.contains(" m"), "{table}");
}

#[test]
fn tenant_list_is_a_table_or_json_lines() {
    let fleet = Fleet::start("cli-tenants");
    let out = run(fleet.sluice(&["tenant", "create", "acme", "--max-memory", "16MiB"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&run(fleet.sluice(&["tenant", "list", "--json"])).stdout);
    let doc: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(doc["tenant"], "acme");
    assert_eq!(doc["policy"]["max_memory_bytes"], 16 << 20);
    let table = text(&run(fleet.sluice(&["tenant", "list"])).stdout);
    assert!(table.contains("acme") && table.contains("16MiB"), "{table}");
}

#[test]
fn completions_print_a_script_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_sluice()"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
    ] {
        let out = run(bin("sluice").args(["completions", shell]));
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        assert!(
            script.contains("result") && script.contains("wait"),
            "{shell}"
        );
    }
}
