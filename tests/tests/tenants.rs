//! Tenants against a real redis-server and real workers: tokens stored hashed, policies
//! clamped by submitters and enforced again by workers, and Redis ACL users.

use std::collections::HashSet;
use std::time::Duration;

use sluice_shared::queue::redis::{RedisConfig, RedisQueue};
use sluice_shared::{Job, JobInput, Limits, OutcomeKind, Queue, TenantId, TenantPolicy};
use sluice_tests::{
    Fleet, RedisServer, WorkerProcess, bin, connect, guest, runtime, sluice_ok, wait,
};

/// How long a test waits for its jobs to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

#[test]
fn tokens_resolve_to_their_tenant_and_are_stored_only_hashed() {
    let server = RedisServer::start();
    let rt = runtime();
    let queue = rt.block_on(connect(&server.url(), "t"));
    let token = rt
        .block_on(queue.tenants().create("acme", &TenantPolicy::default()))
        .unwrap()
        .expect("new tenant");
    assert!(
        rt.block_on(queue.tenants().create("acme", &TenantPolicy::default()))
            .unwrap()
            .is_none()
    );
    let second = rt.block_on(queue.tenants().issue_token("acme")).unwrap();
    assert_ne!(token, second);
    assert_eq!(
        rt.block_on(queue.tenants().for_token(&token))
            .unwrap()
            .as_deref(),
        Some("acme")
    );
    assert_eq!(
        rt.block_on(queue.tenants().for_token(&second))
            .unwrap()
            .as_deref(),
        Some("acme")
    );
    assert_eq!(
        rt.block_on(queue.tenants().for_token("slc_forged"))
            .unwrap(),
        None
    );

    let dump = server.cli(&["HGETALL", "sluice:{tenants}:tokens"]);
    assert!(
        !dump.contains(&token) && !dump.contains(&second),
        "a raw token is stored"
    );

    assert_eq!(
        rt.block_on(queue.tenants().revoke_tokens("acme")).unwrap(),
        2
    );
    assert_eq!(
        rt.block_on(queue.tenants().for_token(&token)).unwrap(),
        None
    );
    assert!(
        rt.block_on(
            queue
                .tenants()
                .create("Not Valid", &TenantPolicy::default())
        )
        .is_err()
    );
}

#[test]
fn tenant_cli_creates_lists_and_changes_policies() {
    let server = RedisServer::start();
    let url = server.url();
    let sluice = |args: &[&str]| sluice_ok(&url, args);
    let token = sluice(&["tenant", "create", "beta", "--max-memory", "16MiB"]);
    assert!(token.trim().starts_with("slc_"));
    let policy = sluice(&[
        "tenant",
        "policy",
        "beta",
        "--max-fuel",
        "1000",
        "--max-timeout",
        "2s",
    ]);
    let policy: TenantPolicy = serde_json::from_str(policy.trim()).unwrap();
    assert_eq!(policy.max_memory_bytes, 16 << 20);
    assert_eq!(policy.max_fuel, Some(1000));
    assert_eq!(policy.max_timeout_ms, 2000);
    assert!(sluice(&["tenant", "list", "--json"]).contains("\"tenant\":\"beta\""));
    assert_eq!(sluice(&["tenant", "revoke", "beta"]).trim(), "revoked 1");
    let again = bin("sluice")
        .args(["tenant", "create", "beta", "--redis", &url])
        .output()
        .unwrap();
    assert!(!again.status.success(), "a tenant can be created only once");
}

#[test]
fn forged_envelope_over_the_policy_is_refused_by_the_worker() {
    let fleet = Fleet::start("forge");
    let Fleet { rt, queue, .. } = &fleet;
    let strict = TenantPolicy {
        max_memory_bytes: 16 << 20,
        max_timeout_ms: 5_000,
        ..TenantPolicy::default()
    };
    rt.block_on(queue.tenants().create("strict", &strict))
        .unwrap();
    let module = fleet.put_module(b"(module (func (export \"_start\")))");
    let _worker = fleet.worker("w0", &[]);

    let mut forged = Job::new(module, JobInput::Inline(Vec::new()));
    forged.tenant = TenantId("strict".into());
    forged.limits = Limits {
        memory_bytes: 1 << 30,
        ..Limits::default()
    };
    let mut fair = forged.clone();
    fair.id = sluice_shared::JobId::new();
    fair.limits = strict.clamp(&forged.limits);
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    rt.block_on(queue.enqueue(&[forged.clone(), fair.clone()]))
        .unwrap();

    let ids: HashSet<_> = [forged.id, fair.id].into();
    let kinds = rt.block_on(wait::await_finished(queue, from, &ids, FINISH_WITHIN));
    assert_eq!(kinds[&forged.id], OutcomeKind::PolicyViolation);
    assert_eq!(kinds[&fair.id], OutcomeKind::Success);
    let dead = rt.block_on(queue.dead_letters()).unwrap();
    assert!(
        dead.iter()
            .any(|d| d.job_id == Some(forged.id) && d.reason.contains("memory"))
    );
}

/// The worker re-checks a whole envelope against the stored policy: input size,
/// arguments and environment over the quotas end as `policy_violation`, naming the
/// quota, and a job within them still runs.
#[test]
fn forged_envelope_over_the_quotas_is_refused_by_the_worker() {
    let fleet = Fleet::start("forge");
    let Fleet { rt, queue, .. } = &fleet;
    let strict = TenantPolicy {
        max_input_bytes: 8,
        max_args: 2,
        max_args_env_bytes: 16,
        ..TenantPolicy::default()
    };
    rt.block_on(queue.tenants().create("strict", &strict))
        .unwrap();
    let module = fleet.put_module(b"(module (func (export \"_start\")))");
    let _worker = fleet.worker("w0", &[]);

    let mut fair = Job::new(module, JobInput::Inline(b"12345678".to_vec()));
    fair.tenant = TenantId("strict".into());
    fair.args = vec!["ok".into()];
    let forge = |f: &dyn Fn(&mut Job)| {
        let mut job = fair.clone();
        job.id = sluice_shared::JobId::new();
        f(&mut job);
        job
    };
    let big_input = forge(&|j| j.input = JobInput::Inline(vec![0; 9]));
    let long_args = forge(&|j| j.args = vec!["0123456789abcdef!".into()]);
    let many_args = forge(&|j| j.args = vec!["a".into(); 3]);
    let jobs = [
        fair.clone(),
        big_input.clone(),
        long_args.clone(),
        many_args.clone(),
    ];
    let from = rt.block_on(queue.results().notices_from_now()).unwrap();
    rt.block_on(queue.enqueue(&jobs)).unwrap();

    let ids: HashSet<_> = jobs.iter().map(|j| j.id).collect();
    let kinds = rt.block_on(wait::await_finished(queue, from, &ids, FINISH_WITHIN));
    assert_eq!(kinds[&fair.id], OutcomeKind::Success);
    let dead = rt.block_on(queue.dead_letters()).unwrap();
    for (job, quota) in [
        (&big_input, "input_bytes"),
        (&long_args, "args_env_bytes"),
        (&many_args, "args"),
    ] {
        assert_eq!(kinds[&job.id], OutcomeKind::PolicyViolation, "{quota}");
        assert!(
            dead.iter()
                .any(|d| d.job_id == Some(job.id) && d.reason.contains(quota)),
            "{quota}: {dead:?}"
        );
    }
}

#[test]
fn submit_clamps_requested_limits_to_the_policy() {
    let server = RedisServer::start();
    let url = server.url();
    let _worker = WorkerProcess::start(&url, "default", "w0", &[]);
    let run = |args: &[&str]| sluice_ok(&url, args);
    run(&[
        "tenant",
        "create",
        "small",
        "--max-memory",
        "8MiB",
        "--max-output",
        "1KiB",
    ]);
    let upper = guest("uppercase.wasm");
    run(&["module", "put", "--name", "upper", upper.to_str().unwrap()]);
    let id = {
        let mut child = bin("sluice")
            .args([
                "submit", "--module", "upper", "--tenant", "small", "--memory", "1GiB",
            ])
            .args(["--max-output", "1GiB", "--redis", &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"clamped\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let rt = runtime();
    let queue = rt.block_on(connect(&url, "default"));
    let job_id = id.parse().unwrap();
    let mut result = None;
    while result.is_none() {
        let _ = rt.block_on(
            queue
                .results()
                .completions("0-0", Duration::from_millis(200)),
        );
        result = rt.block_on(queue.result(job_id)).unwrap();
    }
    assert!(
        result.unwrap().outcome.is_success(),
        "the worker accepted the clamped job"
    );
}

#[test]
fn redis_acl_users_and_passwords_are_honoured() {
    let server = RedisServer::start();
    server.cli(&[
        "ACL", "SETUSER", "sluice", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    server.cli(&["ACL", "SETUSER", "default", "off"]);
    let rt = runtime();
    let good = format!("redis://sluice:s3cret@127.0.0.1:{}", server.port());
    let queue = rt.block_on(RedisQueue::connect(RedisConfig::new(good.clone())));
    let queue = queue.expect("the ACL user connects");
    rt.block_on(queue.enqueue(&[Job::new(
        sluice_shared::ModuleHash::of(b""),
        JobInput::Inline(vec![]),
    )]))
    .unwrap();
    let bad = format!("redis://sluice:wrong@127.0.0.1:{}", server.port());
    assert!(
        rt.block_on(RedisQueue::connect(RedisConfig::new(bad)))
            .is_err()
    );
    let anonymous = rt.block_on(RedisQueue::connect(RedisConfig::new(server.url())));
    assert!(anonymous.is_err(), "the default user is off");
}

#[test]
fn workers_and_the_cli_talk_tls_to_redis() {
    let server = RedisServer::start_with_tls();
    let ca = server.ca_path();
    let url = server.url();
    assert!(url.starts_with("rediss://"));
    let ca_arg = ca.to_str().unwrap();
    let _worker = WorkerProcess::start(&url, "tls", "w0", &["--redis-ca", ca_arg]);
    // `sluice ARGS` on the TLS server, trusting its CA.
    let sluice = |args: &[&str]| {
        let mut command = bin("sluice");
        command
            .args(args)
            .args(["--queue", "tls", "--redis", &url, "--redis-ca", ca_arg]);
        command
    };
    let put = sluice(&["module", "put", "--name", "upper"])
        .arg(guest("uppercase.wasm"))
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let mut child = sluice(&["submit", "--module", "upper"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"over tls\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let result = sluice(&["result", &id, "--output", "-"]).output().unwrap();
        if result.status.success() {
            assert!(String::from_utf8_lossy(&result.stdout).ends_with("OVER TLS\n"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no result over TLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Without the CA the server's certificate is not trusted.
    let untrusted = bin("sluice")
        .args(["status", "--queue", "tls", "--redis", &url])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
}
