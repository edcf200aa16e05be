//! `sluice dlq list|retry|purge`: dead letters.

use std::process::ExitCode;

use clap::Subcommand;
use sluice_shared::Queue;

use super::RedisArgs;

/// `sluice dlq` subcommands.
#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters as JSON lines.
    List(RedisArgs),
    /// Put a dead letter (or --all) back on the queue.
    Retry {
        /// The dead letter's id (from `dlq list`).
        id: Option<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Delete every dead letter.
    Purge(RedisArgs),
}

/// Runs a `sluice dlq` subcommand.
pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List(redis) => {
            for dead in redis.connect().await?.dead_letters().await? {
                println!("{}", serde_json::to_string(&dead)?);
            }
        }
        DlqCommand::Retry { id, all, redis } => {
            anyhow::ensure!(all || id.is_some(), "name a dead letter id, or --all");
            let moved = redis
                .connect()
                .await?
                .admin()
                .dlq_retry(id.as_deref())
                .await?;
            println!("re-enqueued {moved}");
        }
        DlqCommand::Purge(redis) => {
            println!(
                "purged {}",
                redis.connect().await?.admin().dlq_purge().await?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
