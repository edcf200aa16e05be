//! `sluice result`: a job's result, and its output with `--output`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sluice_shared::{JobId, Queue, ReportLine};

use super::RedisArgs;
use crate::distributed;

/// `sluice result` flags.
#[derive(Args, Debug)]
pub struct ResultArgs {
    /// The job id.
    pub id: JobId,
    /// Write the job's output here (`-` for stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Where the queue is.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Prints the job's result as a report line (and writes its output); exits 0 only for
/// a job that succeeded.
pub async fn run(args: ResultArgs) -> anyhow::Result<ExitCode> {
    let queue = args.redis.connect().await?;
    let Some(result) = queue.result(args.id).await? else {
        eprintln!(
            "sluice: no result for {} (not finished, unknown, or expired)",
            args.id
        );
        return Ok(ExitCode::FAILURE);
    };
    println!("{}", serde_json::to_string(&ReportLine::new("", &result))?);
    if let Some(path) = args.output {
        if path.as_os_str() == "-" {
            distributed::write_output(&queue, &result, tokio::io::stdout()).await?;
        } else {
            let file = tokio::fs::File::create(&path).await?;
            distributed::write_output(&queue, &result, file).await?;
        }
    }
    Ok(if result.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
