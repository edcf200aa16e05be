//! deploy/k8s/: every manifest against the Kubernetes schemas, and what the schemas
//! cannot say: Secret references, the drain grace, resources from the sandbox's
//! settings, probe ports.

use std::time::Duration;

use serde_yaml_ng::Value;
use sluice_shared::units::{parse_duration, parse_size};

use super::{
    KUBERNETES_VERSION, SECRET, SECRET_KEYS, assert_runs, job_memory, quantity_bytes, repo_root,
    text, tool, workspace_bins, yaml_docs,
};

/// The manifests in deploy/k8s/, each with its documents.
fn manifests() -> Vec<(String, Vec<Value>)> {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("deploy/k8s"))
        .expect("deploy/k8s")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .map(|n| format!("deploy/k8s/{n}"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| (f.clone(), yaml_docs(&f)))
        .collect()
}

pub(super) fn is_keda(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("keda.sh/"))
}

/// The document of `kind` named `name`.
pub(super) fn resource(kind: &str, name: &str) -> Value {
    manifests()
        .into_iter()
        .flat_map(|(_, docs)| docs)
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let files = manifests();
    let (keda, core): (Vec<_>, Vec<_>) =
        files.iter().partition(|(_, docs)| docs.iter().any(is_keda));
    assert_eq!(
        keda.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        ["deploy/k8s/keda.yaml"]
    );
    assert!(
        core.len() >= 5,
        "configmap, serve, service, worker, pdb: {core:?}"
    );
    for (file, docs) in &core {
        assert!(
            docs.iter().all(|d| !is_keda(d)),
            "{file}: KEDA and core resources mixed"
        );
        assert!(
            docs.iter().all(|d| d["kind"].as_str() != Some("Secret")),
            "{file}: a Secret is committed; secrets are created by hand"
        );
        assert!(
            docs.iter().all(|d| d["metadata"]["namespace"].is_null()),
            "{file}: names a namespace"
        );
    }
    let out = tool("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(core.iter().map(|(f, _)| f.as_str()))
        .current_dir(repo_root())
        .output()
        .expect("run kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A kind without a schema is only a warning to the tool; here it is a failure.
    assert!(
        out.status.success() && !said.contains("WARN") && !said.contains("ERROR"),
        "{said}"
    );
    let passed = said.matches(" passed for resource ").count();
    let documents: usize = core.iter().map(|(_, docs)| docs.len()).sum();
    assert_eq!(passed, documents, "every document validated:\n{said}");
}

#[test]
fn kubernetes_deployments_reference_secrets_drain_and_are_sized_from_the_sandbox() {
    let config = resource("ConfigMap", "sluice");
    let setting = |key: &str| text(&config, &["data", key]).to_owned();
    let bins = workspace_bins();
    for name in ["sluice-serve", "sluice-worker"] {
        let deployment = resource("Deployment", name);
        let pod = &deployment["spec"]["template"]["spec"];
        for container in pod["containers"].as_sequence().expect("containers") {
            let args: Vec<String> =
                serde_yaml_ng::from_value(container["args"].clone()).expect("args");
            assert_runs(&args, &bins, name);
            for env in container["env"].as_sequence().into_iter().flatten() {
                assert!(
                    env["value"].is_null() || !env["name"].as_str().unwrap_or("").contains("TOKEN")
                );
                let secret = &env["valueFrom"]["secretKeyRef"];
                if !secret.is_null() {
                    assert_eq!(text(secret, &["name"]), SECRET, "{name}: another Secret");
                    let key = text(secret, &["key"]);
                    assert!(
                        SECRET_KEYS.contains(&key),
                        "{name}: Secret key {key} is not documented"
                    );
                }
            }
            let refs = serde_yaml_ng::to_string(&container["envFrom"]).expect("yaml");
            assert!(refs.contains("name: sluice"), "{name}: the ConfigMap");
        }
    }
    // The worker outlasts its drain: SIGTERM → SLUICE_GRACE → release → exit.
    let worker = resource("Deployment", "sluice-worker");
    let pod = &worker["spec"]["template"]["spec"];
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let grace = parse_duration(&setting("SLUICE_GRACE")).expect("SLUICE_GRACE");
    assert!(
        Duration::from_secs(termination) > grace + Duration::from_secs(5),
        "terminationGracePeriodSeconds {termination} is not above the drain grace {grace:?} with a margin"
    );
    assert!(
        worker["spec"]["replicas"].is_null(),
        "the worker's count is KEDA's"
    );
    // Memory: every slot's guest at the default cap, the module cache, one compile.
    let slots: u64 = setting("SLUICE_CONCURRENCY")
        .parse()
        .expect("SLUICE_CONCURRENCY");
    let needed = slots * job_memory()
        + parse_size(&setting("SLUICE_MODULE_CACHE_BYTES")).expect("module cache")
        + parse_size(&setting("SLUICE_COMPILE_MEMORY")).expect("compile memory");
    let resources = &pod["containers"][0]["resources"];
    let limit = quantity_bytes(text(resources, &["limits", "memory"]));
    assert!(
        limit >= needed,
        "memory limit {limit} below slots x job memory + caches {needed}"
    );
    assert_eq!(resources["requests"], resources["limits"], "Guaranteed QoS");
    // The L2 cache fits its volume.
    let cache = parse_size(&setting("SLUICE_CACHE_BYTES")).expect("cache bytes");
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some("artifacts"))
        .expect("the artifacts volume");
    assert!(
        cache < quantity_bytes(text(volume, &["emptyDir", "sizeLimit"])),
        "L2 outgrows its volume"
    );
    // Probes go to the ports the processes listen on.
    for (name, key) in [
        ("sluice-worker", "SLUICE_METRICS_ADDR"),
        ("sluice-serve", "SLUICE_LISTEN"),
    ] {
        let container = &resource("Deployment", name)["spec"]["template"]["spec"]["containers"][0];
        let port: u64 = setting(key)
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .expect("a port");
        assert_eq!(
            container["ports"][0]["containerPort"].as_u64(),
            Some(port),
            "{name}: {key}"
        );
    }
    resource("PodDisruptionBudget", "sluice-worker");
    resource("Service", "sluice");
}
