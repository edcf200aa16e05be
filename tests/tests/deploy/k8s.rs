//! deploy/k8s/: every manifest against the Kubernetes schemas, and what the schemas
//! cannot say: Secret references, the drain grace, resources from the sandbox's
//! settings, probe ports.

use std::time::Duration;

use serde_yaml_ng::Value;
use sluice_shared::units::{parse_duration, parse_size};

use super::{
    KUBERNETES_VERSION, SECRET, SECRET_KEYS, assert_runs, env_names, is_secret_name, job_bound,
    job_memory, quantity_bytes, repo_root, text, tool, workspace_bins, yaml_docs,
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
    let bins = workspace_bins();
    let serve_env = env_names("sluice", "serve", &[]);
    // REDIS_ADDRESS is KEDA's (addressFromEnv reads the scale target's environment).
    let worker_env = env_names("sluice-worker", "serve", &["REDIS_ADDRESS"]);
    for (name, real) in [("sluice-serve", &serve_env), ("sluice-worker", &worker_env)] {
        let deployment = resource("Deployment", name);
        let pod = &deployment["spec"]["template"]["spec"];
        // Its own ConfigMap, every key a variable its binary reads, no secret in it.
        let config = resource("ConfigMap", name);
        for key in config["data"].as_mapping().expect("data").keys() {
            let key = key.as_str().expect("a key");
            assert!(
                real.contains(key),
                "ConfigMap {name}: {key} is not read by its binary"
            );
            assert!(!is_secret_name(key), "ConfigMap {name}: {key} is a secret");
        }
        for container in pod["containers"].as_sequence().expect("containers") {
            let args: Vec<String> =
                serde_yaml_ng::from_value(container["args"].clone()).expect("args");
            assert_runs(&args, &bins, name);
            let from: Vec<&str> = container["envFrom"]
                .as_sequence()
                .expect("envFrom")
                .iter()
                .map(|e| text(e, &["configMapRef", "name"]))
                .collect();
            assert_eq!(from, [name], "{name}: its own ConfigMap only");
            for env in container["env"].as_sequence().into_iter().flatten() {
                let var = text(env, &["name"]);
                assert!(
                    real.contains(var),
                    "{name}: {var} is not read by its binary"
                );
                let secret = &env["valueFrom"]["secretKeyRef"];
                // Every secret-bearing variable comes from the Secret, never a value.
                assert_eq!(
                    is_secret_name(var),
                    !secret.is_null(),
                    "{name}: {var} and secretKeyRef"
                );
                assert!(
                    !is_secret_name(var) || env["value"].is_null(),
                    "{name}: {var} has a literal value"
                );
                if !secret.is_null() {
                    assert_eq!(text(secret, &["name"]), SECRET, "{name}: another Secret");
                    let key = text(secret, &["key"]);
                    assert!(
                        SECRET_KEYS.contains(&key),
                        "{name}: Secret key {key} is not documented"
                    );
                }
            }
        }
    }
    let config = resource("ConfigMap", "sluice-worker");
    let setting = |key: &str| text(&config, &["data", key]).to_owned();
    let worker = resource("Deployment", "sluice-worker");
    let pod = &worker["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // The cache key is a mounted Secret file, in no process's environment.
    let key_file = setting("SLUICE_CACHE_KEY_FILE");
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| key_file.starts_with(&format!("{}/", text(m, &["mountPath"]))))
        .expect("a mount holding SLUICE_CACHE_KEY_FILE");
    let key_volume = volume(pod, text(mount, &["name"]));
    assert_eq!(text(key_volume, &["secret", "secretName"]), SECRET);
    let item = &key_volume["secret"]["items"][0];
    assert_eq!(text(item, &["key"]), "cache-key", "the key's file");
    assert!(key_file.ends_with(&format!("/{}", text(item, &["path"]))));

    // The drain grace covers a claimed job (compile + run + watchdog), and the worker
    // outlasts its drain: SIGTERM → SLUICE_GRACE → release → exit.
    let grace = parse_duration(&setting("SLUICE_GRACE")).expect("SLUICE_GRACE");
    let bound = job_bound(parse_duration(&setting("SLUICE_COMPILE_TIMEOUT")).expect("timeout"));
    assert!(
        grace >= bound,
        "SLUICE_GRACE {grace:?} is shorter than a job's compile + run + watchdog {bound:?}"
    );
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(termination) >= grace + Duration::from_secs(15),
        "terminationGracePeriodSeconds {termination} is not above the drain grace {grace:?} with a margin"
    );
    assert!(
        worker["spec"]["replicas"].is_null(),
        "the worker's count is KEDA's"
    );
    // Startup waits out a Redis loading a large AOF: 5 minutes at least.
    let startup = &container["startupProbe"];
    let waits = startup["periodSeconds"].as_u64().expect("period")
        * startup["failureThreshold"].as_u64().expect("threshold");
    assert!(waits >= 300, "the startup probe gives up after {waits}s");

    // Memory: every slot compiling (or running a guest at the default policy's cap,
    // whichever is larger), the precompile task's compile, the module cache, the process.
    let slots: u64 = setting("SLUICE_CONCURRENCY")
        .parse()
        .expect("SLUICE_CONCURRENCY");
    let compile = parse_size(&setting("SLUICE_COMPILE_MEMORY")).expect("compile memory");
    let needed = slots * job_memory().max(compile)
        + compile
        + parse_size(&setting("SLUICE_MODULE_CACHE_BYTES")).expect("module cache")
        + PROCESS_BYTES;
    let resources = &container["resources"];
    let limit = quantity_bytes(text(resources, &["limits", "memory"]));
    assert!(
        limit >= needed,
        "memory limit {limit} below slots x max(job, compile) + precompile + caches {needed}"
    );
    assert_eq!(resources["requests"], resources["limits"], "Guaranteed QoS");
    // Ephemeral storage: the L2 cache, an artifact written past it, /tmp and the logs
    // fit the limit; the cache and one artifact fit its volume.
    let cache = parse_size(&setting("SLUICE_CACHE_BYTES")).expect("cache bytes");
    let tmp = quantity_bytes(text(volume(pod, "tmp"), &["emptyDir", "sizeLimit"]));
    let storage = quantity_bytes(text(resources, &["limits", "ephemeral-storage"]));
    assert!(
        cache + ARTIFACT_CAP + tmp + LOG_BYTES <= storage,
        "ephemeral storage {storage} below cache {cache} + artifact + tmp + logs"
    );
    let artifacts = quantity_bytes(text(volume(pod, "artifacts"), &["emptyDir", "sizeLimit"]));
    assert!(
        cache + ARTIFACT_CAP <= artifacts,
        "L2 and an artifact in writing outgrow their volume"
    );
    assert!(
        setting("SLUICE_CACHE_DIR")
            == text(
                container["volumeMounts"]
                    .as_sequence()
                    .expect("mounts")
                    .iter()
                    .find(|m| m["name"].as_str() == Some("artifacts"))
                    .expect("the artifacts mount"),
                &["mountPath"]
            ),
        "L2 is on the artifacts volume"
    );

    // serve leaves its Service's endpoints before it stops: a preStop sleep within
    // its termination grace.
    let serve = resource("Deployment", "sluice-serve");
    let serve_pod = &serve["spec"]["template"]["spec"];
    let sleep = serve_pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    let serve_grace = serve_pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("serve's terminationGracePeriodSeconds");
    assert!(
        sleep >= 5 && serve_grace >= sleep + 30,
        "sleep {sleep}s, grace {serve_grace}s"
    );

    // Probes go to the ports the processes listen on.
    for (name, key) in [
        ("sluice-worker", "SLUICE_METRICS_ADDR"),
        ("sluice-serve", "SLUICE_LISTEN"),
    ] {
        let container = &resource("Deployment", name)["spec"]["template"]["spec"]["containers"][0];
        let port: u64 = text(&resource("ConfigMap", name), &["data", key])
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
    // A Redis outage makes every worker unready (/readyz): the budget must still let
    // unready workers be evicted, or it would block every node drain and scale-down.
    let pdb = resource("PodDisruptionBudget", "sluice-worker");
    assert_eq!(
        text(&pdb, &["spec", "unhealthyPodEvictionPolicy"]),
        "AlwaysAllow",
        "the worker PDB lets unready workers be evicted"
    );
    resource("Service", "sluice");
}

/// The worker's liveness bound as docs/operations.md states it (`= **136 s**`; the
/// worker's unit test checks that figure against the code's defaults).
fn documented_liveness_bound() -> Duration {
    let docs = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("docs");
    let section = &docs[docs
        .find("## Worker health")
        .expect("a Worker health section")..];
    let figure = section
        .split("= **")
        .nth(1)
        .and_then(|rest| rest.split("**").next())
        .expect("the bound, as `= **N s**`");
    parse_duration(&figure.replace(' ', "")).expect("a duration")
}

#[test]
fn the_worker_liveness_probe_fits_its_bound() {
    let bound = documented_liveness_bound();
    let deployment = resource("Deployment", "sluice-worker");
    let probe = &deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"];
    let field = |name: &str| probe[name].as_u64().unwrap_or_else(|| panic!("{name}"));
    let (period, threshold, timeout) = (
        field("periodSeconds"),
        field("failureThreshold"),
        field("timeoutSeconds"),
    );
    assert!(timeout < period, "a probe ends before the next one");
    // /healthz already fails only after the bound; the probe's own tolerance adds at
    // most the bound again, so a stuck worker restarts within twice the bound.
    let tolerance = Duration::from_secs(period * threshold);
    assert!(
        tolerance <= bound,
        "liveness {period}s x {threshold} exceeds the {bound:?} bound"
    );
    assert!(threshold >= 2, "one slow probe is no restart");
}

/// The runtime, Redis buffers, stderr caps and pipes of a worker process (an estimate,
/// stated in worker.yaml).
const PROCESS_BYTES: u64 = 256 << 20;
/// The largest artifact a worker writes (the compile child's cap is the cache's).
const ARTIFACT_CAP: u64 = sluice_shared::queue::redis::MAX_ARTIFACT_BYTES as u64;
/// Container logs the kubelet keeps (its default rotation: 5 files of 10 MiB), rounded up.
const LOG_BYTES: u64 = 64 << 20;

/// The pod's volume `name`.
fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

#[test]
fn the_workers_metrics_port_is_reachable_only_from_monitoring() {
    let policy = resource("NetworkPolicy", "sluice-worker-metrics");
    let worker = resource("Deployment", "sluice-worker");
    let pod = &worker["spec"]["template"];
    // It selects the worker's pods.
    let selected = policy["spec"]["podSelector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    for (key, value) in selected {
        assert_eq!(&pod["metadata"]["labels"][key], value, "label {key:?}");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_yaml_ng::from_str::<Value>("[Ingress]").unwrap()
    );
    // One rule: the worker's metrics port, from one namespace.
    let rules = policy["spec"]["ingress"].as_sequence().expect("ingress");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let ports = rules[0]["ports"].as_sequence().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    let container_ports = pod["spec"]["containers"][0]["ports"]
        .as_sequence()
        .expect("the worker's ports");
    let named = container_ports
        .iter()
        .find(|p| p["name"] == ports[0]["port"])
        .unwrap_or_else(|| panic!("no worker port named {:?}", ports[0]["port"]));
    assert_eq!(named["containerPort"].as_u64(), Some(9464));
    let from = rules[0]["from"].as_sequence().expect("from");
    assert_eq!(from.len(), 1, "{from:?}");
    assert!(
        !from[0]["namespaceSelector"]["matchLabels"].is_null() && from[0]["podSelector"].is_null(),
        "{from:?}"
    );
}
