//! `sluice module put|ls|rm`: store, list and delete modules in Redis.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use sluice_shared::ModuleName;
use sluice_shared::queue::redis::MAX_LISTED_MODULES;

use super::RedisArgs;
use crate::modules;

/// `sluice module` subcommands.
#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Validate FILE (.wasm or .wat), store it content-addressed, print its hash.
    Put {
        /// The module file.
        file: PathBuf,
        /// Also name it (jobs may then say --module NAME; their guests see it as
        /// argv[0]): 1-128 bytes of printable characters, no whitespace, `/`, control
        /// or format characters (bidi, zero-width), no leading `-`, not a module hash.
        #[arg(long, value_parser = module_name)]
        name: Option<String>,
        /// Re-point --name to this module when it already names another one.
        #[arg(long, requires = "name")]
        force: bool,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// List stored modules (hash, size, names): a table, or JSON lines with --json.
    Ls {
        /// One JSON document per module, one per line.
        #[arg(long)]
        json: bool,
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
        ModuleCommand::Put {
            file,
            name,
            force,
            redis,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let (wasm, hash) =
                modules::prepare(&bytes).with_context(|| format!("module {}", file.display()))?;
            let queue = redis.connect().await?;
            if let Some(name) = &name
                && !force
                && let Some(current) = queue.modules().resolve(name).await?
                && current != hash
            {
                anyhow::bail!(
                    "name {name} already names module {current}; --force re-points it to {hash}"
                );
            }
            let meta = modules::metadata(&wasm);
            let stored = queue
                .modules()
                .put_with_meta(&wasm, &meta, name.as_deref())
                .await?;
            println!("{stored}");
        }
        ModuleCommand::Ls { json, redis } => {
            let listed = redis.connect().await?.admin().modules().await?;
            if json {
                for module in &listed {
                    println!("{}", serde_json::to_string(module)?);
                }
            } else {
                println!("{:<64} {:>10}  names", "hash", "bytes");
                for module in &listed {
                    println!(
                        "{:<64} {:>10}  {}",
                        module.hash,
                        module.bytes,
                        module.names.join(" ")
                    );
                }
            }
            if listed.len() >= MAX_LISTED_MODULES {
                eprintln!("sluice: listing stopped at {MAX_LISTED_MODULES} modules");
            }
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

/// `--name`, checked by the one module-name rule ([`ModuleName`]).
fn module_name(text: &str) -> Result<String, sluice_shared::job::ModuleNameError> {
    text.parse::<ModuleName>().map(String::from)
}
