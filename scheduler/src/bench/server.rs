//! Figures the bench reads from the Redis server itself: commands executed (INFO
//! commandstats), memory (INFO memory), CPU time (INFO cpu), and, for scale,
//! `redis-benchmark` run against the same server.

use std::process::Command;

use anyhow::Context;
use sluice_shared::queue::redis::RedisQueue;

use super::cpu::{self, CpuTime};

/// Total commands the server has executed (INFO commandstats, scripts' inner calls
/// included).
pub async fn commands_executed(queue: &RedisQueue) -> anyhow::Result<u64> {
    let info = queue.admin().server_info("commandstats").await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// `used_memory` from INFO memory.
pub async fn used_memory(queue: &RedisQueue) -> anyhow::Result<u64> {
    let info = queue.admin().server_info("memory").await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// The server's CPU time so far (INFO cpu).
pub async fn cpu(queue: &RedisQueue) -> anyhow::Result<CpuTime> {
    let info = queue.admin().server_info("cpu").await?;
    cpu::from_redis_info(&info).context("INFO cpu has no used_cpu_user/used_cpu_sys")
}

/// Host and port of a Redis URL, for `redis-benchmark`.
pub fn host_port(url: &str) -> (String, String) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.to_owned()),
        None => (hostport.to_owned(), "6379".to_owned()),
    }
}

/// `redis-benchmark -q -P 16 -t set,get -n 1000000` against the server: its summary
/// lines (`SET: … requests per second, …`), or why there are none.
pub fn redis_benchmark(url: &str) -> String {
    let (host, port) = host_port(url);
    let out = Command::new("redis-benchmark")
        .args([
            "-h", &host, "-p", &port, "-q", "-P", "16", "-t", "set,get", "-n", "1000000",
        ])
        .output();
    let Ok(out) = out else {
        return "redis-benchmark not available".into();
    };
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .replace('\r', "\n")
        .lines()
        .filter(|l| l.contains("requests per second"))
        .map(|l| l.trim().to_owned())
        .collect();
    if lines.is_empty() {
        "redis-benchmark printed no figures".into()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_come_from_the_url() {
        assert_eq!(
            host_port("redis://:pw@10.0.0.1:6390/0"),
            ("10.0.0.1".into(), "6390".into())
        );
        assert_eq!(
            host_port("redis://localhost"),
            ("localhost".into(), "6379".into())
        );
    }
}
