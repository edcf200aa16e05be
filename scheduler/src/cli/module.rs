//! `sluice module put|rm`: store and delete modules in Redis.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::RedisArgs;
use crate::distributed;

/// `sluice module` subcommands.
#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Validate FILE (.wasm or .wat), store it content-addressed, print its hash.
    Put {
        /// The module file.
        file: PathBuf,
        /// Also name it (jobs may then say --module NAME).
        #[arg(long)]
        name: Option<String>,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Delete a module: a NAME deletes that name; a HASH deletes the bytes (jobs that
    /// name them then fail as invalid_module).
    Rm {
        /// The module's name or hash.
        name: String,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
}

/// Runs a `sluice module` subcommand.
pub async fn run(command: ModuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModuleCommand::Put { file, name, redis } => {
            let queue = redis.connect().await?;
            let (hash, _) = distributed::put_module(&queue, &file, name.as_deref()).await?;
            println!("{hash}");
        }
        ModuleCommand::Rm { name, redis } => {
            let queue = redis.connect().await?;
            anyhow::ensure!(
                queue.modules().remove(&name).await?,
                "no module named {name}"
            );
            println!("deleted {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
