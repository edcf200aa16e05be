//! The compile child parses untrusted wasm, so it gets none of the worker's
//! environment: not the cache key (SLUICE_CACHE_KEY), not the Redis URL with its
//! password. The child here is a script that records the environment it was given; the
//! test re-runs itself with the secrets set, as a worker has them.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sluice_worker::SandboxConfig;
use sluice_worker::compile::{CompileLimits, Compiler, EngineSettings, Metering};

const KEY: &str = "SLUICE_CACHE_KEY";
const KEY_VALUE: &str = "cache-key-that-must-not-leak";
const URL: &str = "SLUICE_REDIS_URL";
const URL_VALUE: &str = "redis://:redis-password-that-must-not-leak@127.0.0.1:1";
/// Set in the re-run only: where the script writes what it saw.
const DUMP: &str = "SLUICE_TEST_ENV_DUMP";

#[test]
fn the_compile_child_does_not_see_the_cache_key_or_the_redis_url() {
    if let Some(dump) = std::env::var_os(DUMP) {
        return compile_with_recording_child(dump.into());
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dump = dir.path().join("env.txt");
    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "the_compile_child_does_not_see_the_cache_key_or_the_redis_url",
            "--nocapture",
        ])
        .env(KEY, KEY_VALUE)
        .env(URL, URL_VALUE)
        .env(DUMP, &dump)
        .output()
        .expect("re-run this test");
    assert!(
        out.status.success(),
        "the re-run failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = std::fs::read_to_string(&dump).expect("the child recorded its environment");
    // What the parent sets on purpose, and nothing of its own environment.
    assert!(
        seen.contains("MIMALLOC_ARENA_RESERVE"),
        "what it was given: {seen}"
    );
    for (name, value) in [(KEY, KEY_VALUE), (URL, URL_VALUE)] {
        assert!(
            !seen.contains(name) && !seen.contains(value),
            "the child saw {name}: {seen}"
        );
    }
}

/// In the re-run (the secrets in this process's environment): compiles through a child
/// that writes its environment to `dump`.
fn compile_with_recording_child(dump: std::path::PathBuf) {
    assert_eq!(
        std::env::var(KEY).as_deref(),
        Ok(KEY_VALUE),
        "the parent has the key"
    );
    let dir = dump.parent().expect("the dump's directory");
    let script = dir.join("child.sh");
    // `export -p` is a shell builtin: the script needs no PATH.
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexport -p > '{}'\nexit 65\n", dump.display()),
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let compiler = Compiler::new(
        CompileLimits::default(),
        EngineSettings::of(&SandboxConfig::default()),
    )
    .expect("a compiler")
    .with_program(&script);
    // The script refuses the module (status 65); what matters is what it recorded.
    assert!(compiler.precompile(b"(module)", Metering::Off).is_err());
}
