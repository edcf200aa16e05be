//! Figures the bench reads from the Redis server itself: calls and time per command
//! (INFO commandstats), memory (INFO memory), CPU time (INFO cpu), and, for scale,
//! `redis-benchmark` run against the same server.

use std::process::Command;

use anyhow::Context;
use sluice_shared::queue::redis::RedisQueue;

use super::commandstats::CommandStats;
use super::cpu::{self, CpuTime};

/// The server's per-command counters so far (INFO commandstats, scripts' inner calls
/// included as their own commands).
pub async fn command_stats(queue: &RedisQueue) -> anyhow::Result<CommandStats> {
    let info = queue.admin().server_info("commandstats").await?;
    Ok(CommandStats::parse(&info))
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

/// `redis-benchmark`'s connection arguments for a Redis URL: host (IPv6 brackets
/// removed), port, `--user`/`-a` from the URL's credentials (percent-encoding is not
/// decoded) and `--tls` for `rediss://`.
pub fn connection_args(url: &str) -> Vec<String> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').unwrap_or("")),
            None => (v6, ""),
        },
        None => hostport.rsplit_once(':').unwrap_or((hostport, "")),
    };
    let port = if port.is_empty() { "6379" } else { port };
    let mut args = vec![
        "-h".to_owned(),
        host.to_owned(),
        "-p".to_owned(),
        port.to_owned(),
    ];
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
        if !user.is_empty() {
            args.extend(["--user".to_owned(), user.to_owned()]);
        }
        if !password.is_empty() {
            args.extend(["-a".to_owned(), password.to_owned()]);
        }
    }
    if scheme == "rediss" {
        args.push("--tls".to_owned());
    }
    args
}

/// `redis-benchmark -q -P 16 -t set,get -n 1000000` against the server: its summary
/// lines (`SET: … requests per second, …`), or why there are none (with the start of
/// its stderr).
pub fn redis_benchmark(url: &str) -> String {
    let out = Command::new("redis-benchmark")
        .args(connection_args(url))
        .args(["-q", "-P", "16", "-t", "set,get", "-n", "1000000"])
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
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason: String = stderr.trim().chars().take(200).collect();
        format!("redis-benchmark printed no figures ({reason})")
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_args_come_from_the_url() {
        let args = |url| connection_args(url).join(" ");
        assert_eq!(
            args("redis://:pw@10.0.0.1:6390/0"),
            "-h 10.0.0.1 -p 6390 -a pw"
        );
        assert_eq!(args("redis://localhost"), "-h localhost -p 6379");
        assert_eq!(
            args("rediss://bench:s3@[::1]:7000"),
            "-h ::1 -p 7000 --user bench -a s3 --tls"
        );
        assert_eq!(args("redis://[fe80::1]/2"), "-h fe80::1 -p 6379");
    }
}
