//! `sluice-worker` refuses bad settings at start, before it touches Redis: the message
//! names the setting as a flag, an environment variable and a config key, and the exit
//! status is 2 (usage), never 125 (which means "the sandbox stopped the guest").

use std::process::{Command, Output};

/// Never contacted: every case here is refused before connecting.
const REDIS: &str = "redis://127.0.0.1:9";

fn worker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SLUICE_") {
            command.env_remove(name);
        }
    }
    command
}

fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    worker()
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run sluice-worker")
}

fn assert_usage_error(out: &Output, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for name in names {
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
    assert!(
        !stderr.contains("worker ready"),
        "started despite a bad setting: {stderr}"
    );
}

#[test]
fn a_zero_lease_is_refused_by_name() {
    let out = serve(&["--redis", REDIS, "--lease", "0s"], &[]);
    assert_usage_error(&out, &["--lease", "SLUICE_LEASE", "`lease`", "at least"]);
}

#[test]
fn bad_values_from_the_environment_name_the_setting() {
    let cases = [
        ("SLUICE_CONCURRENCY", "0"),
        ("SLUICE_MAX_ATTEMPTS", "0"),
        ("SLUICE_WATCHDOG_GRACE", "0ms"),
        ("SLUICE_TTL", "1ms"),
        ("SLUICE_QUEUE", "a{b}"),
        ("SLUICE_GRACE", "forever"),
    ];
    for (name, value) in cases {
        let out = serve(&[], &[("SLUICE_REDIS_URL", REDIS), (name, value)]);
        assert_usage_error(&out, &[name]);
    }
}

#[test]
fn bad_values_in_the_config_file_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.toml");
    for (text, key) in [
        ("max_attempts = 0\n", "`max_attempts`"),
        ("concurrency = 4\nmax_stuck = 4\n", "`max_stuck`"),
        ("no_such_setting = 1\n", "no_such_setting"),
        ("concurrency = \"many\"\n", "concurrency"),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = serve(&["--redis", REDIS, "--config", path.to_str().unwrap()], &[]);
        assert_usage_error(&out, &[key]);
    }
}

#[test]
fn a_missing_redis_url_and_unparsable_flags_are_usage_errors() {
    assert_usage_error(&serve(&[], &[]), &["--redis", "SLUICE_REDIS_URL"]);
    assert_usage_error(
        &serve(&["--redis", REDIS, "--concurrency", "lots"], &[]),
        &["--concurrency"],
    );
}

#[test]
fn run_with_an_unreadable_module_is_a_usage_error_not_a_sandbox_stop() {
    let out = worker()
        .args(["run", "/no/such/module.wasm"])
        .output()
        .expect("run sluice-worker");
    assert_usage_error(&out, &["/no/such/module.wasm"]);
}
