//! `sluice dlq list|retry|purge`: dead letters.

use std::process::ExitCode;

use clap::Subcommand;
use sluice_shared::queue::redis::AdminError;
use sluice_shared::{JobId, Queue};

use super::RedisArgs;

/// `sluice dlq` subcommands.
#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters: a table, or JSON lines with --json.
    List {
        /// One JSON document per dead letter, one per line.
        #[arg(long)]
        json: bool,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Put a dead letter (or --all) back on the queue.
    Retry {
        /// The dead letter's entry id (from `dlq list`), or its job's id.
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
        DlqCommand::List { json, redis } => {
            let letters = redis.connect().await?.dead_letters().await?;
            if json {
                for dead in letters {
                    println!("{}", serde_json::to_string(&dead)?);
                }
            } else {
                println!(
                    "{:<16} {:<36} {:<18} {:>8}  reason",
                    "entry", "job", "outcome", "attempts"
                );
                for dead in letters {
                    let job = dead.job_id.map(|j| j.to_string()).unwrap_or("-".into());
                    println!(
                        "{:<16} {:<36} {:<18} {:>8}  {}",
                        dead.entry_id,
                        job,
                        dead.kind.as_str(),
                        dead.attempts,
                        one_line(&dead.reason)
                    );
                }
            }
        }
        DlqCommand::Retry { id, all, redis } => {
            anyhow::ensure!(
                all || id.is_some(),
                "name a dead letter (its entry id or its job's id), or --all"
            );
            let queue = redis.connect().await?;
            let entry = match id.as_deref().map(|id| (id, id.parse::<JobId>())) {
                Some((_, Ok(job))) => Some(
                    queue
                        .admin()
                        .dead_letter_of(job)
                        .await?
                        .ok_or_else(|| AdminError::NoSuchDeadLetter(format!("of job {job}")))?,
                ),
                Some((id, Err(_))) => Some(id.to_owned()),
                None => None,
            };
            let moved = queue.admin().dlq_retry(entry.as_deref()).await?;
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

/// `text` on one line, at most 120 characters (a reason can hold a backtrace).
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    if text.chars().count() > 120 {
        line + "…"
    } else {
        line
    }
}
