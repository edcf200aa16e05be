//! `sluice status`: queue depths, counters and workers.

use std::process::ExitCode;

use super::RedisArgs;

/// Prints the queue's depths, counters and workers.
pub async fn run(redis: RedisArgs) -> anyhow::Result<ExitCode> {
    let queue = redis.connect().await?;
    let status = queue.admin().status().await?;
    let s = &status.stats;
    println!("queue {}", redis.queue);
    println!(
        "  ready {}  leased {}  delayed {}  completed {}  dead {}",
        s.ready, s.leased, s.delayed, s.completed, s.dead
    );
    println!(
        "  retried {}  duplicates {}  dlq retried {}",
        status.retried, status.duplicates, status.dlq_retried
    );
    println!("workers ({}):", status.consumers.len());
    for c in &status.consumers {
        println!(
            "  {:<32} pending {:<6} idle {} ms",
            c.name, c.pending, c.idle_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}
