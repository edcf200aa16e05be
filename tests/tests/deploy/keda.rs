//! deploy/k8s/keda.yaml: KEDA's documented fields only, and the stream and group
//! Sluice really uses.

use std::collections::BTreeSet;

use sluice_shared::queue::redis::Keys;
use sluice_tests::RedisServer;

use super::k8s::resource;
use super::{SECRET, SECRET_KEYS, text, yaml_docs};

/// KEDA's documented ScaledObject spec fields, trigger fields and redis-streams
/// trigger metadata (keda.sh/docs/2.17: concepts/scaling-deployments, scalers/redis-streams).
const KEDA_SPEC: [&str; 10] = [
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
];
const KEDA_TRIGGER: [&str; 6] = [
    "type",
    "name",
    "metadata",
    "authenticationRef",
    "metricType",
    "useCachedMetrics",
];
const REDIS_STREAMS_METADATA: [&str; 17] = [
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
];

#[test]
fn keda_scaled_object_scales_the_workers_on_sluices_own_stream_and_group() {
    let docs = yaml_docs("deploy/k8s/keda.yaml");
    let scaled = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ScaledObject"))
        .expect("a ScaledObject");
    assert_eq!(text(scaled, &["apiVersion"]), "keda.sh/v1alpha1");
    let spec = scaled["spec"].as_mapping().expect("spec");
    for key in spec.keys() {
        assert!(
            KEDA_SPEC.contains(&key.as_str().unwrap_or("")),
            "ScaledObject spec.{key:?} is not KEDA's"
        );
    }
    // The target is exactly the worker Deployment (KEDA's default kind is Deployment).
    let target = scaled["spec"]["scaleTargetRef"]
        .as_mapping()
        .expect("scaleTargetRef");
    let worker_deployment = resource("Deployment", "sluice-worker");
    assert_eq!(
        target.keys().filter_map(|k| k.as_str()).collect::<Vec<_>>(),
        ["name"],
        "scaleTargetRef names only the Deployment"
    );
    assert_eq!(
        text(scaled, &["spec", "scaleTargetRef", "name"]),
        text(&worker_deployment, &["metadata", "name"])
    );
    assert_eq!(
        worker_deployment["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str(),
        Some("sluice-worker"),
        "the target runs the workers"
    );
    assert_eq!(
        scaled["spec"]["minReplicaCount"].as_u64(),
        Some(0),
        "scales to zero"
    );
    // Retries wait in the delayed set, which only a running worker promotes: the last
    // worker must stay longer than the longest retry backoff.
    let cooldown = scaled["spec"]["cooldownPeriod"]
        .as_u64()
        .expect("cooldownPeriod");
    let backoff = sluice_shared::queue::RetryPolicy::default().max_delay_ms / 1000;
    assert!(
        cooldown > backoff,
        "cooldownPeriod {cooldown}s within the retry backoff {backoff}s"
    );

    // The stream and group Sluice really uses for the ConfigMap's queue: the group as
    // a real Redis shows it once a client connected (connecting creates it).
    let worker_config = resource("ConfigMap", "sluice-worker");
    let queue = text(&worker_config, &["data", "SLUICE_QUEUE"]).to_owned();
    let stream = Keys::new(&queue).jobs;
    let redis = RedisServer::start();
    sluice_tests::runtime().block_on(sluice_tests::connect(&redis.url(), &queue));
    let groups = redis.cli(&["XINFO", "GROUPS", &stream]);
    let group = groups
        .lines()
        .skip_while(|l| *l != "name")
        .nth(1)
        .expect("a consumer group")
        .to_owned();

    let triggers = scaled["spec"]["triggers"].as_sequence().expect("triggers");
    let mut signals = BTreeSet::new();
    for trigger in triggers {
        for key in trigger.as_mapping().expect("trigger").keys() {
            assert!(
                KEDA_TRIGGER.contains(&key.as_str().unwrap_or("")),
                "trigger field {key:?}"
            );
        }
        assert_eq!(text(trigger, &["type"]), "redis-streams");
        let metadata = trigger["metadata"].as_mapping().expect("metadata");
        for (key, value) in metadata {
            let key = key.as_str().expect("a string key");
            assert!(
                REDIS_STREAMS_METADATA.contains(&key),
                "redis-streams metadata {key} is not KEDA's"
            );
            // KEDA's metadata is a map of strings: a YAML number is refused by its CRD.
            assert!(
                value.is_string(),
                "metadata {key}: {value:?} is not a string"
            );
        }
        assert_eq!(
            text(trigger, &["metadata", "stream"]),
            stream,
            "the job stream of queue {queue}"
        );
        // Each trigger's mode, pinned by its name: the one signal it carries.
        let mode = match text(trigger, &["name"]) {
            "lag" => "lagCount",
            "pending" => "pendingEntriesCount",
            "length" => "streamLength",
            other => panic!("trigger {other}: not lag, pending or length"),
        };
        let carried: Vec<&str> = ["lagCount", "pendingEntriesCount", "streamLength"]
            .into_iter()
            .filter(|s| metadata.contains_key(*s))
            .collect();
        assert_eq!(carried, [mode], "trigger {mode}: its one signal");
        assert!(
            matches!(text(trigger, &["metadata", "enableTLS"]), "true" | "false"),
            "enableTLS stated"
        );
        for signal in ["lagCount", "pendingEntriesCount", "streamLength"] {
            if let Some(value) = trigger["metadata"][signal].as_str() {
                assert!(
                    value.parse::<u32>().is_ok_and(|n| n > 0),
                    "{signal}: {value}"
                );
                signals.insert(signal);
                if signal != "streamLength" {
                    assert_eq!(
                        text(trigger, &["metadata", "consumerGroup"]),
                        group,
                        "{signal}: the group"
                    );
                }
            }
        }
        // The address comes from the worker's environment (KEDA reads the target's).
        let from_env = text(trigger, &["metadata", "addressFromEnv"]);
        assert!(
            worker_config["data"][from_env].is_string(),
            "{from_env} is not in the worker's ConfigMap"
        );
        assert_eq!(
            text(
                &worker_deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0],
                &["configMapRef", "name"]
            ),
            "sluice-worker",
            "the worker's environment has {from_env}"
        );
        // The password from the Secret, through the TriggerAuthentication.
        let auth = text(trigger, &["authenticationRef", "name"]);
        let auth = docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some("TriggerAuthentication")
                    && d["metadata"]["name"].as_str() == Some(auth)
            })
            .expect("the TriggerAuthentication it names");
        let target = &auth["spec"]["secretTargetRef"][0];
        assert_eq!(
            (text(target, &["parameter"]), text(target, &["name"])),
            ("password", SECRET)
        );
        assert!(SECRET_KEYS.contains(&text(target, &["key"])));
    }
    assert_eq!(
        signals,
        ["lagCount", "pendingEntriesCount", "streamLength"].into(),
        "the three signals"
    );
}

/// KEDA's documented redis-cluster-streams trigger metadata
/// (keda.sh/docs/2.17: scalers/redis-cluster-streams).
const REDIS_CLUSTER_STREAMS_METADATA: [&str; 16] = [
    "addresses",
    "addressesFromEnv",
    "hosts",
    "hostsFromEnv",
    "ports",
    "portsFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
];

/// deploy/k8s/cluster/keda.yaml is deploy/k8s/keda.yaml (checked above against KEDA's
/// spec and Sluice's stream and group) with the cluster scaler: the same documents,
/// the same ScaledObject but for each trigger's type and where it finds Redis, and
/// only KEDA's documented redis-cluster-streams metadata.
#[test]
fn keda_on_a_cluster_is_the_same_scaled_object_with_the_cluster_scaler() {
    let single = yaml_docs("deploy/k8s/keda.yaml");
    let cluster = yaml_docs("deploy/k8s/cluster/keda.yaml");
    assert_eq!(single.len(), cluster.len(), "the same documents");
    for (one, other) in single.iter().zip(&cluster) {
        if one["kind"].as_str() != Some("ScaledObject") {
            assert_eq!(one, other, "{:?} as in keda.yaml", one["kind"]);
            continue;
        }
        let mut one = one.clone();
        let mut other = other.clone();
        let one_triggers = one["spec"]
            .as_mapping_mut()
            .and_then(|s| s.remove("triggers"))
            .expect("triggers");
        let other_triggers = other["spec"]
            .as_mapping_mut()
            .and_then(|s| s.remove("triggers"))
            .expect("triggers");
        assert_eq!(
            one, other,
            "the ScaledObject but its triggers as in keda.yaml"
        );
        let (one_triggers, other_triggers) = (
            one_triggers.as_sequence().expect("a list").clone(),
            other_triggers.as_sequence().expect("a list").clone(),
        );
        assert_eq!(
            one_triggers.len(),
            other_triggers.len(),
            "the same triggers"
        );
        for (mut a, mut b) in one_triggers.into_iter().zip(other_triggers) {
            assert_eq!(text(&a, &["type"]), "redis-streams");
            assert_eq!(text(&b, &["type"]), "redis-cluster-streams");
            let metadata = b["metadata"].as_mapping().expect("metadata").clone();
            for (key, value) in &metadata {
                let key = key.as_str().expect("a string key");
                assert!(
                    REDIS_CLUSTER_STREAMS_METADATA.contains(&key),
                    "redis-cluster-streams metadata {key} is not KEDA's"
                );
                assert!(
                    value.is_string(),
                    "metadata {key}: {value:?} is not a string"
                );
            }
            let addresses = text(&b, &["metadata", "addresses"]).to_owned();
            for address in addresses.split(',') {
                let (host, port) = address.rsplit_once(':').expect("host:port");
                assert!(
                    !host.is_empty() && port.parse::<u16>().is_ok(),
                    "address {address}"
                );
            }
            for (trigger, drop) in [(&mut a, "addressFromEnv"), (&mut b, "addresses")] {
                trigger.as_mapping_mut().expect("trigger").remove("type");
                trigger["metadata"]
                    .as_mapping_mut()
                    .expect("metadata")
                    .remove(drop)
                    .expect("where the scaler finds Redis");
            }
            assert_eq!(a, b, "the trigger as in keda.yaml");
        }
    }
}
