//! deploy/compose.yaml: every service, secrets only from the env file, scalable workers,
//! Redis's persistence, the drain grace, and mounts that line up with dashboards/.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::Value;
use sluice_shared::units::parse_duration;

use super::{
    assert_runs, env_file, env_names, is_secret_name, job_bound, read, repo_root, text, tool,
    workspace_bins, yaml,
};

#[test]
fn compose_stack_has_every_service_secrets_from_the_env_file_and_scalable_workers() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["redis", "serve", "worker", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "compose: no {name} service");
    }
    let bins = workspace_bins();
    let service = |name: &str| &compose["services"][name];

    // Workers scale: nothing that only one container may have.
    let worker = service("worker");
    for fixed in ["container_name", "ports", "hostname"] {
        assert!(
            worker[fixed].is_null(),
            "the worker service sets {fixed}: it cannot scale"
        );
    }
    // Secrets only from the env files, one per service, each an uncommitted copy of
    // its example holding that service's keys and no other's.
    let serve_env = env_names("sluice", "serve", &[]);
    let worker_env = env_names("sluice-worker", "serve", &["SLUICE_CACHE_KEY"]);
    let own_keys: [(&str, BTreeSet<String>); 4] = [
        (
            "redis",
            ["REDIS_PASSWORD", "REDIS_MAXMEMORY"]
                .map(String::from)
                .into(),
        ),
        (
            "serve",
            ["SLUICE_REDIS_URL", "SLUICE_QUEUE", "SLUICE_ADMIN_TOKEN"]
                .map(String::from)
                .into(),
        ),
        (
            "worker",
            [
                "SLUICE_REDIS_URL",
                "SLUICE_QUEUE",
                "SLUICE_CACHE_KEY",
                "SLUICE_CONCURRENCY",
                "SLUICE_GRACE",
            ]
            .map(String::from)
            .into(),
        ),
        (
            "grafana",
            ["GF_SECURITY_ADMIN_PASSWORD"].map(String::from).into(),
        ),
    ];
    let mut examples = BTreeMap::new();
    for (name, keys) in &own_keys {
        assert_eq!(
            service(name)["env_file"].as_str(),
            Some(format!("{name}.env").as_str()),
            "{name}: its own env file"
        );
        let example = env_file(&format!("deploy/{name}.env.example"));
        assert_eq!(
            &example.keys().cloned().collect::<BTreeSet<_>>(),
            keys,
            "deploy/{name}.env.example holds exactly {name}'s keys"
        );
        for (key, value) in &example {
            if is_secret_name(key) {
                assert!(
                    value.contains("CHANGE-ME"),
                    "{name}: {key} is a placeholder"
                );
            }
            // Every Sluice key is a real variable of the binary that receives it.
            let real = match *name {
                "serve" => &serve_env,
                "worker" => &worker_env,
                _ => continue,
            };
            assert!(
                real.contains(key),
                "{name}: {key} is not read by its binary"
            );
        }
        examples.insert(*name, example);
    }
    assert!(
        services
            .iter()
            .filter_map(|(n, svc)| svc["env_file"].as_str().map(|f| (n, f)))
            .all(|(n, f)| n.as_str() == f.strip_suffix(".env")),
        "a service reads another's env file"
    );
    for (name, svc) in services {
        if let Some(env) = svc["environment"].as_mapping() {
            for key in env.keys().filter_map(Value::as_str) {
                assert!(
                    !is_secret_name(key),
                    "{name:?}: {key} set in compose.yaml, not the env file"
                );
            }
        }
        // Published ports only on loopback.
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().expect("a \"host:port:port\" string");
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name:?} publishes {port} beyond loopback"
            );
        }
    }
    assert!(
        read(".gitignore")
            .lines()
            .any(|l| l.trim() == "/deploy/*.env"),
        ".gitignore keeps deploy/*.env out"
    );
    let password = &examples["redis"]["REDIS_PASSWORD"];
    for name in ["serve", "worker"] {
        assert!(
            examples[name]["SLUICE_REDIS_URL"].contains(&format!(":{password}@redis:")),
            "{name}'s Redis URL carries REDIS_PASSWORD and names the redis service"
        );
    }

    // Redis: AOF on, never evicting.
    let redis_command = serde_yaml_ng::to_string(&service("redis")["command"]).expect("yaml");
    for setting in [
        "--appendonly yes",
        "--maxmemory-policy noeviction",
        "--requirepass",
    ] {
        assert!(
            redis_command.contains(setting),
            "redis runs without {setting}"
        );
    }
    // The image is built from the repository's Dockerfile, and runs workspace binaries.
    let build = &service("serve")["build"];
    let context = repo_root().join("deploy").join(text(build, &["context"]));
    assert!(
        context.join(text(build, &["dockerfile"])).is_file(),
        "serve builds the Dockerfile"
    );
    for name in ["serve", "worker"] {
        let command: Vec<String> =
            serde_yaml_ng::from_value(service(name)["command"].clone()).expect("exec form");
        assert_runs(&command, &bins, &format!("compose service {name}"));
    }
    // A scale-down drains: the worker's stop grace is longer than its drain grace.
    let stop = parse_duration(text(worker, &["stop_grace_period"])).expect("a duration");
    let grace = parse_duration(&examples["worker"]["SLUICE_GRACE"]).expect("SLUICE_GRACE");
    assert!(
        stop > grace,
        "stop_grace_period {stop:?} is not above SLUICE_GRACE {grace:?}"
    );
    // The compose worker keeps the default compile timeout.
    let bound = job_bound(Duration::from_secs(60));
    assert!(
        grace >= bound,
        "SLUICE_GRACE {grace:?} is shorter than a job's compile + run + watchdog {bound:?}: \
         a drained job would run again"
    );

    check_compose_mounts(&compose);
}

/// Every bind mount's source is a path in the repository (dashboards/ included), and the mounts line up with what the dashboards' own files
/// expect: the Grafana provider's path, Prometheus's rule files and job names.
fn check_compose_mounts(compose: &Value) {
    let deploy = repo_root().join("deploy");
    let dashboards = repo_root().join("dashboards");
    let mut targets = BTreeMap::new();
    for (name, svc) in compose["services"].as_mapping().expect("services") {
        for volume in svc["volumes"].as_sequence().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let mut parts = spec.split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().expect("a target"));
            if !source.starts_with('.') {
                continue; // a named volume
            }
            let path = normalize(&deploy.join(source));
            assert!(
                path.starts_with(repo_root()),
                "{name:?}: {source} is outside the repository"
            );
            assert!(
                path.exists(),
                "{name:?} mounts {source}, which does not exist (dashboards/ comes with the \
                 dashboards' branch)"
            );
            targets.insert(target.to_owned(), path);
        }
    }
    let checked = tool("promtool")
        .args(["check", "config", "--syntax-only", "deploy/prometheus.yml"])
        .current_dir(repo_root())
        .output()
        .expect("run promtool");
    assert!(
        checked.status.success(),
        "promtool check config deploy/prometheus.yml:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let prometheus = yaml("deploy/prometheus.yml");
    for rule in prometheus["rule_files"].as_sequence().expect("rule_files") {
        let rule = rule.as_str().expect("a path");
        let (dir, host) = targets
            .iter()
            .find(|(t, _)| rule.starts_with(&format!("{t}/")))
            .unwrap_or_else(|| panic!("rule file {rule} is on no mount"));
        let file = host.join(&rule[dir.len() + 1..]);
        assert!(file.is_file(), "{rule}: {} does not exist", file.display());
    }
    let jobs = |config: &Value| -> BTreeSet<String> {
        config["scrape_configs"]
            .as_sequence()
            .expect("scrape_configs")
            .iter()
            .map(|job| text(job, &["job_name"]).to_owned())
            .collect()
    };
    let ours = jobs(&prometheus);
    assert_eq!(
        ours,
        ["sluice-scheduler", "sluice-worker"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        ours,
        jobs(&yaml("dashboards/prometheus/prometheus.yml")),
        "job names"
    );
    let provider = "dashboards/provisioning/dashboards/sluice.yaml";
    let path = text(&yaml(provider)["providers"][0], &["options", "path"]).to_owned();
    assert_eq!(
        targets.get(&path),
        Some(&dashboards.join("grafana")),
        "Grafana finds the dashboards at {path}"
    );
    // Every file of the fixed list (the dashboards' branch) is there to be mounted.
    for file in [
        "dashboards/grafana/overview.json",
        "dashboards/grafana/tenants.json",
        "dashboards/grafana/workers.json",
        "dashboards/provisioning/datasources/prometheus.yaml",
        "dashboards/provisioning/dashboards/sluice.yaml",
        "dashboards/prometheus/rules/sluice.rules.yml",
    ] {
        assert!(repo_root().join(file).is_file(), "{file} is missing");
    }
}

/// `path` with `..` and `.` resolved lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
