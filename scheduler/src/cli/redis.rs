//! Where the queue is: the Redis flags every subcommand that talks to Redis shares.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use sluice_shared::queue::redis::{RedisConfig, RedisQueue, Topology, redacted_url};

/// Where the queue is.
#[derive(Args, Clone)]
pub struct RedisArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], or rediss:// for TLS (with
    /// --redis-cluster: seed nodes, comma-separated).
    #[arg(long = "redis", env = "SLUICE_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// Queue name.
    #[arg(long, env = "SLUICE_QUEUE", default_value = "default")]
    pub queue: String,
    /// PEM file of the CA that signed the Redis server's TLS certificate (rediss://).
    #[arg(long, env = "SLUICE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// The Redis URL names a Redis Cluster (one or more seed nodes, comma-separated).
    // The variable reads as the worker's does: 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "SLUICE_REDIS_CLUSTER", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,
}

impl RedisArgs {
    /// The configuration these flags name (the CA file read), without connecting.
    pub fn config(&self) -> anyhow::Result<RedisConfig> {
        let mut config = RedisConfig::new(&self.redis_url);
        config.queue = self.queue.clone();
        if self.redis_cluster {
            config.topology = Topology::Cluster;
        }
        if let Some(ca) = &self.redis_ca {
            config.tls_ca_pem =
                Some(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
        }
        Ok(config)
    }

    /// Connects to the queue these flags name.
    pub async fn connect(&self) -> anyhow::Result<RedisQueue> {
        let config = self.config()?;
        RedisQueue::connect(config)
            .await
            .with_context(|| format!("connecting to {}", redacted_url(&self.redis_url)))
    }
}

/// The URL's password never shows in debug output.
impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &redacted_url(&self.redis_url))
            .field("queue", &self.queue)
            .field("redis_ca", &self.redis_ca)
            .field("redis_cluster", &self.redis_cluster)
            .finish()
    }
}
