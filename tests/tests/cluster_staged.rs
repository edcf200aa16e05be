//! Large results staged outside `complete.lua` on a real Redis Cluster (three masters,
//! three replicas on loopback): the staged `SET`s and the `EVALSHA` go in one pipeline,
//! which the client routes to the queue's master by its first key; a large and a small
//! result in one queue, the script loaded on first use (`NOSCRIPT` inside the pipeline).

use std::time::Duration;

use sluice_shared::queue::Completion;
use sluice_shared::queue::conformance::large_success;
use sluice_shared::queue::redis::{RedisConfig, RedisQueue, Topology};
use sluice_shared::{Job, JobInput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::{RedisCluster, runtime};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn large_and_small_results_are_stored_through_the_cluster_and_nothing_stays_staged() {
    let cluster = RedisCluster::start();
    let rt = runtime();
    let mut config = RedisConfig::new(cluster.url());
    config.queue = "staged".to_owned();
    config.topology = Topology::Cluster;
    let queue = rt
        .block_on(RedisQueue::connect(config))
        .expect("connect to the cluster");
    let jobs: Vec<Job> = (0..6u8)
        .map(|i| Job::new(ModuleHash::of(b"staged"), JobInput::Inline(vec![i])))
        .collect();
    rt.block_on(queue.enqueue(&jobs)).unwrap();
    let claimed = rt.block_on(queue.claim("c1", 6, LONG, LONG)).unwrap();
    assert_eq!(claimed.len(), 6);
    let results: Vec<JobResult> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let sent = jobs.iter().find(|j| Some(j.id) == c.lease.job_id).unwrap();
            if i % 2 == 0 {
                large_success(sent, 1, b'a' + i as u8)
            } else {
                JobResult::without_run(sent.id, Outcome::Success, 1)
            }
        })
        .collect();
    // Completed at once, so they share script calls (and pipelines).
    let queue = std::sync::Arc::new(queue);
    let done = rt.block_on(async {
        let mut completing = tokio::task::JoinSet::new();
        for (c, r) in claimed.iter().zip(&results) {
            let (queue, lease, r) = (queue.clone(), c.lease.clone(), r.clone());
            completing.spawn(async move { queue.complete(&lease, &r).await });
        }
        completing.join_all().await
    });
    for reply in done {
        assert_eq!(reply.unwrap(), Completion::Recorded);
    }
    for result in &results {
        assert_eq!(
            rt.block_on(queue.result(result.job_id)).unwrap().as_ref(),
            Some(result)
        );
    }
    let master = cluster.master_of(&queue.keys().jobs);
    let left = cluster.cli(
        master,
        &["--scan", "--pattern", &queue.keys().staged_pattern()],
    );
    assert!(left.trim().is_empty(), "staged keys left behind: {left}");
    assert_eq!(rt.block_on(queue.stats()).unwrap().completed, 6);
}
