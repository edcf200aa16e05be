//! Sluice on a real Redis Cluster (three masters, three replicas on loopback): a
//! distributed `sluice batch`, the HTTP API, the worker fleet and the exporter, each
//! with the exactness checks used on one Redis; and a master failover mid-batch that
//! loses nothing, its new master's script cache flushed on top. Every client is given
//! the cluster's seed list and `--redis-cluster`. "Mid-batch" is decided by
//! completion notices, never by sleeping.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_shared::queue::redis::{ConnectError, RedisConfig, RedisQueue, Topology};
use sluice_shared::{EntryPoint, Job, JobId, JobInput, JobOutput, ModuleHash, OutcomeKind, Queue};
use sluice_tests::scaling::{Exporter, metric};
use sluice_tests::wasm_gen::SPIN_UPPER_WAT;
use sluice_tests::{RedisCluster, ServeProcess, WorkerProcess, bin, guest, runtime, wait};

/// How long a test waits for its jobs.
const WITHIN: Duration = Duration::from_secs(120);
/// The admin token of the API tests.
const ADMIN: &str = "admin-secret-for-cluster-tests";
/// Every worker's flags: through the cluster, two slots.
const WORKER: &[&str] = &["--redis-cluster", "--concurrency", "2"];

/// A queue client on `queue` through the cluster.
fn cluster_queue(rt: &tokio::runtime::Runtime, cluster: &RedisCluster, queue: &str) -> RedisQueue {
    let mut config = RedisConfig::new(cluster.url());
    config.queue = queue.to_owned();
    config.topology = Topology::Cluster;
    rt.block_on(RedisQueue::connect(config))
        .expect("connect to the cluster")
}

/// `n` jobs of `module`, job `i` reading `job number i`, and the output each must give.
fn spin_jobs(module: ModuleHash, n: usize) -> (Vec<Job>, HashMap<JobId, Vec<u8>>) {
    let mut jobs = Vec::new();
    let mut expected = HashMap::new();
    for i in 0..n {
        let mut job = Job::new(module, JobInput::Inline(format!("job number {i}").into()));
        job.entry = EntryPoint::Raw {
            export: EntryPoint::RAW_EXPORT.to_owned(),
        };
        expected.insert(job.id, format!("JOB NUMBER {i}").into_bytes());
        jobs.push(job);
    }
    (jobs, expected)
}

/// Counter `field` of `queue`'s stats hash, read on the node on `port`.
fn counter(cluster: &RedisCluster, port: u16, queue: &str, field: &str) -> u64 {
    let value = cluster.cli(port, &["HGET", &format!("sluice:{{{queue}}}:stats"), field]);
    value.trim().parse().unwrap_or(0)
}

#[test]
fn a_distributed_batch_with_two_workers_runs_exactly_through_the_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let queue = "cbatch";
    let _workers: Vec<WorkerProcess> = ["w0", "w1"]
        .iter()
        .map(|w| WorkerProcess::start(&url, queue, w, WORKER))
        .collect();
    let inputs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let n = 300;
    for i in 0..n {
        std::fs::write(
            inputs.path().join(format!("in{i:04}.txt")),
            format!("job number {i}\n"),
        )
        .unwrap();
    }
    let run = bin("sluice")
        .args(["batch", "--quiet", "--redis", &url, "--redis-cluster"])
        .args(["--queue", queue, "--module"])
        .arg(guest("uppercase.wasm"))
        .arg(inputs.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for i in 0..n {
        let got = std::fs::read_to_string(out.path().join(format!("in{i:04}.txt"))).unwrap();
        assert_eq!(got, format!("JOB NUMBER {i}\n"));
    }
    let report = std::fs::read_to_string(out.path().join("report.jsonl")).unwrap();
    let lines: Vec<Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), n);
    assert!(lines.iter().all(|l| l["outcome"] == "success"), "{report}");
    let named: HashSet<&str> = lines.iter().filter_map(|l| l["input"].as_str()).collect();
    assert_eq!(named.len(), n, "every input reported once");
    let master = cluster.master_of(&format!("sluice:{{{queue}}}:jobs"));
    assert_eq!(counter(&cluster, master, queue, "completed"), n as u64);
}

#[test]
fn the_api_and_a_worker_serve_jobs_and_batches_through_the_cluster() {
    use base64::Engine;
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let queue = "capi";
    let api = ServeProcess::start_with(&url, queue, ADMIN, &["--redis-cluster"]);
    let _worker = WorkerProcess::start(&url, queue, "w0", WORKER);
    // The tenant store ({tenants}) and the queue ({capi}) are on two masters (the
    // queue's name is chosen so): both are reached.
    assert_ne!(
        cluster.master_of(sluice_shared::queue::redis::keys::TENANT_POLICIES),
        cluster.master_of(&format!("sluice:{{{queue}}}:jobs")),
        "the tenant store and the queue on two masters"
    );
    let token = api.tenant("acme", json!({}));
    let bytes = std::fs::read(guest("uppercase.wasm")).unwrap();
    let uploaded = api.upload(&token, &bytes, "upper");
    assert_eq!(uploaded.status, 201, "{}", uploaded.text());

    let mut jobs = Vec::new();
    for i in 0..10 {
        let reply = api.call(
            "POST",
            "/v1/jobs?module=upper",
            Some(&token),
            format!("job {i}\n").as_bytes(),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        jobs.push((reply.json()["id"].as_str().unwrap().to_owned(), i));
    }
    for (id, i) in &jobs {
        let done = wait::poll(
            &format!("job {id} not done"),
            WITHIN,
            || {
                api.call("GET", &format!("/v1/jobs/{id}"), Some(&token), b"")
                    .json()
            },
            |job| job["state"] == "done",
        );
        assert_eq!(done["result"]["outcome"], "success", "{done}");
        let output = api.call("GET", &format!("/v1/jobs/{id}/output"), Some(&token), b"");
        assert_eq!(output.status, 200);
        assert_eq!(output.body, format!("JOB {i}\n").into_bytes());
    }

    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let inputs: Vec<Value> = (0..8)
        .map(
            |i| json!({ "name": format!("in{i}.txt"), "data": encode(format!("b{i}").as_bytes()) }),
        )
        .collect();
    let reply = api.post_json(
        "/v1/batches",
        &token,
        &json!({ "module": "upper", "inputs": inputs }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let batch = reply.json()["id"].as_str().unwrap().to_owned();
    let status = wait::poll(
        "batch not done",
        WITHIN,
        || {
            api.call("GET", &format!("/v1/batches/{batch}"), Some(&token), b"")
                .json()
        },
        |status| status["done"] == 8,
    );
    assert_eq!(status["by_outcome"]["success"], 8, "{status}");
    let master = cluster.master_of(&format!("sluice:{{{queue}}}:jobs"));
    assert_eq!(counter(&cluster, master, queue, "completed"), 18);
}

#[test]
fn a_master_failover_mid_batch_loses_nothing() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let queue = "cfail";
    let rt = runtime();
    let client = cluster_queue(&rt, &cluster, queue);
    let master = cluster.master_of(&format!("sluice:{{{queue}}}:jobs"));
    let replica = cluster.replica_of(master);
    let module = rt
        .block_on(client.modules().put(SPIN_UPPER_WAT.as_bytes(), None))
        .expect("store the module");
    let _workers: Vec<WorkerProcess> = ["w0", "w1"]
        .iter()
        .map(|w| WorkerProcess::start(&url, queue, w, WORKER))
        .collect();
    let n = 400;
    // The batch is enqueued in two parts: the first before the failover (running
    // under it), the rest once it is over. So the failover lands mid-batch however
    // fast the machine runs the jobs (the gossip that settles it does not speed up).
    let before = 300;
    let (jobs, expected) = spin_jobs(module, n);
    let ids: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    let from = rt.block_on(client.results().notices_from_now()).unwrap();
    rt.block_on(client.enqueue(&jobs[..before])).unwrap();

    // Some done, most not: fail the queue's master over to its replica.
    rt.block_on(wait::await_notices(&client, from.clone(), 50, WITHIN));
    let done_at_failover = counter(&cluster, master, queue, "completed");
    assert!(
        done_at_failover < before as u64,
        "the first part was over before the failover began ({done_at_failover} done)"
    );
    cluster.failover(replica);
    // The new master's script cache emptied: the jobs still to finish go through the
    // NOSCRIPT recovery (SCRIPT LOAD on every node, EVALSHA again) on a cluster.
    assert_eq!(cluster.cli(replica, &["SCRIPT", "FLUSH"]).trim(), "OK");
    // The rest, through the client's connection that last wrote to the old master.
    rt.block_on(client.enqueue(&jobs[before..])).unwrap();

    let finished = rt.block_on(wait::await_finished(&client, from, &ids, WITHIN));
    assert_eq!(finished.len(), n);
    assert!(
        finished.values().all(|k| *k == OutcomeKind::Success),
        "{finished:?}"
    );
    let results = rt.block_on(wait::results(&client, &ids));
    let mut seen = HashSet::new();
    let mut reruns = 0;
    for result in &results {
        assert!(
            seen.insert(result.job_id),
            "{} has two results",
            result.job_id
        );
        assert_eq!(
            result.output,
            JobOutput::Inline(expected[&result.job_id].clone()),
            "output of {}",
            result.job_id
        );
        reruns += usize::from(result.attempt > 1);
    }
    assert_eq!(seen, ids);
    // The replica is the queue's master now, and holds every completion.
    assert_eq!(
        cluster.master_of(&format!("sluice:{{{queue}}}:jobs")),
        replica
    );
    assert_eq!(counter(&cluster, replica, queue, "completed"), n as u64);
    let stats = rt.block_on(client.stats()).unwrap();
    assert_eq!(
        (stats.ready, stats.leased, stats.dead),
        (0, 0, 0),
        "{stats:?}"
    );
    // A manual failover loses nothing and interrupts no job: none ran twice.
    assert_eq!(
        reruns, 0,
        "failed over after {done_at_failover} of {n} jobs; {reruns} ran twice"
    );
}

/// The figures that would read 0 (or another node's) on a random node are exact: the
/// exporter's ready count and lag, the master's `maxmemory` from `INFO memory` (set on
/// the queue's master alone), and `sluice module ls` (a `SCAN`, which lists nothing on
/// a node without the queue's slot).
#[test]
fn the_exporter_and_listings_read_the_queues_own_master() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let queue = "cgauge";
    let rt = runtime();
    let client = cluster_queue(&rt, &cluster, queue);
    let master = cluster.master_of(&format!("sluice:{{{queue}}}:jobs"));
    let maxmemory = "987654321";
    for port in cluster.ports() {
        let value = if port == master { maxmemory } else { "0" };
        assert_eq!(
            cluster
                .cli(port, &["CONFIG", "SET", "maxmemory", value])
                .trim(),
            "OK"
        );
    }
    let module = rt
        .block_on(
            client
                .modules()
                .put(SPIN_UPPER_WAT.as_bytes(), Some("spin")),
        )
        .expect("store the module");
    let (jobs, _) = spin_jobs(module, 25);
    rt.block_on(client.enqueue(&jobs)).unwrap();

    let exporter = Exporter::start_with(&url, &["--redis-cluster", "--queue", queue]);
    let series = |name: &str| format!("{name}{{queue=\"{queue}\"}}");
    let read = || {
        Figures(
            metric(&exporter.addr, &series("sluice_queue_ready_jobs")),
            metric(&exporter.addr, &series("sluice_queue_lag_entries")),
            metric(&exporter.addr, "sluice_redis_maxmemory_bytes"),
        )
    };
    // The first scrape may come before the first read of the queue.
    let figures = wait::poll("the exporter's figures", WITHIN, read, |f| f.0.is_some());
    assert_eq!(
        figures,
        Figures(Some(25.0), Some(25.0), Some(987_654_321.0)),
        "{figures}"
    );

    // A standalone INFO (no keyed command beside it) goes to the queue's master every
    // time: a random node would answer maxmemory 0 five times in six.
    for _ in 0..12 {
        let info = rt
            .block_on(client.admin().server_info("memory"))
            .expect("INFO memory");
        assert!(
            info.lines()
                .any(|l| l.trim() == format!("maxmemory:{maxmemory}")),
            "INFO memory from another node: {info}"
        );
    }

    let listed = bin("sluice")
        .args(["module", "ls", "--json", "--redis", &url, "--redis-cluster"])
        .args(["--queue", queue])
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains(&module.to_string()), "{text}");
    assert!(text.contains("spin"), "{text}");
}

/// The exporter's ready count, lag and maxmemory, as read.
#[derive(Debug, PartialEq)]
struct Figures(Option<f64>, Option<f64>, Option<f64>);

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A cluster client re-sends a request whose connection dropped before the reply, so
/// `enqueue_batch.lua` may run twice for one chunk: the repeat writes nothing and
/// answers as the first call did (each job once on the stream and in the batch).
#[test]
fn a_repeated_enqueue_batch_call_writes_each_job_once() {
    let rt = runtime();
    let (_server, queue) = rt.block_on(sluice_tests::fresh_queue(|_| {}));
    let (jobs, _) = spin_jobs(ModuleHash::of(b"module"), 5);
    let batch = JobId::new().to_string();
    for _ in 0..2 {
        rt.block_on(
            queue
                .results()
                .enqueue_batch(&batch, "local", jobs.len(), &jobs, false),
        )
        .unwrap();
    }
    let entries: u64 = rt
        .block_on(
            redis::cmd("XLEN")
                .arg(&queue.keys().jobs)
                .query_async(&mut queue.connection()),
        )
        .unwrap();
    assert_eq!(entries, jobs.len() as u64, "each job on the stream once");
    let (_, listed) = rt.block_on(queue.results().batch(&batch)).unwrap().unwrap();
    let want: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(listed, want, "each job in the batch's list once");
}

/// Refused credentials on a cluster are what they are (not "unreachable", which a
/// worker would retry forever): a wrong password, and none where one is required.
/// One cluster-enabled node with `requirepass` is enough: the client authenticates
/// before it asks for the slot map.
#[test]
fn refused_credentials_on_a_cluster_are_not_worth_retrying() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let node = sluice_tests::cluster::spawn_node(dir.path(), &["--requirepass", "right-one"]);
    for url in [
        format!("redis://:wrong-one@127.0.0.1:{}", node.port()),
        format!("redis://127.0.0.1:{}", node.port()),
    ] {
        let mut config = RedisConfig::new(url.clone());
        config.topology = Topology::Cluster;
        let error = match rt.block_on(RedisQueue::connect_checked(config)) {
            Ok(_) => panic!("{url}: connected with refused credentials"),
            Err(e) => e,
        };
        assert!(matches!(error, ConnectError::Auth(_)), "{url}: {error}");
        assert!(!error.is_transient(), "{url}: {error}");
        assert!(!error.to_string().contains("wrong-one"), "{error}");
    }
    // A worker fleet stops at once and says why (it would retry an unreachable one).
    let out = bin("sluice-worker")
        .args(["serve", "--redis"])
        .arg(format!("redis://:wrong-one@127.0.0.1:{}", node.port()))
        .args(["--redis-cluster", "--queue", "cauth"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
}

/// `--redis-cluster` at a server without cluster support is a configuration error,
/// not an unreachable server.
#[test]
fn a_cluster_flag_at_a_plain_server_is_a_configuration_error() {
    let rt = runtime();
    let server = sluice_tests::RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.topology = Topology::Cluster;
    let error = match rt.block_on(RedisQueue::connect_checked(config)) {
        Ok(_) => panic!("connected to a plain server as a cluster"),
        Err(e) => e,
    };
    assert!(matches!(error, ConnectError::NotCluster(_)), "{error}");
    assert!(!error.is_transient(), "{error}");
}
