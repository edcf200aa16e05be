//! `sluice result`: a job's result, and its output with `--output`; with `--wait`, once
//! the job has finished.
//!
//! The record (the job's report line) and the output never share a stream: the record
//! goes to stdout unless the output does (`--output -`, or a file that is stdout), in
//! which case it goes to stderr, or to `--record FILE`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::units::parse_duration;
use sluice_shared::{JobId, JobResult, ReportLine};

use super::RedisArgs;
use super::job_state;
use super::wait::{self, DEFAULT_WAIT, Settled};
use crate::distributed;

/// `sluice result` flags.
#[derive(Args, Debug)]
#[command(after_help = job_state::EXIT_HELP)]
pub struct ResultArgs {
    /// The job id.
    pub id: JobId,
    /// Write the job's output here (`-` for stdout; the record then goes to stderr).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write the record (the job's report line) to this file instead.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Wait for the job to finish, at most DURATION (10m when given without a value).
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        default_missing_value = DEFAULT_WAIT,
        value_parser = parse_duration
    )]
    pub wait: Option<Duration>,
    /// An unfinished job's state as one JSON document on stdout (not a message on
    /// stderr); the record is JSON either way.
    #[arg(long)]
    pub json: bool,
    /// Where the queue is.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Prints the job's record (and writes its output); exits 0 only for a job that
/// succeeded, and with a status of its own for each unfinished state.
pub async fn run(args: ResultArgs) -> anyhow::Result<ExitCode> {
    let queue = args.redis.connect().await?;
    let mut settled = None;
    wait::settle(&queue, &[args.id], args.wait, |_, s| {
        settled = Some(s);
        Ok(())
    })
    .await?;
    let settled = settled.context("the job was not looked up")?;
    let Settled::Finished(result) = &settled else {
        let code = wait::report(&queue, args.id, &settled, args.json, args.wait.is_some())?;
        return Ok(ExitCode::from(code));
    };
    write_record(&args, result)?;
    if let Some(path) = &args.output {
        write_output(&queue, result, path).await?;
    }
    Ok(if result.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(job_state::EXIT_FAILED)
    })
}

/// The record to `--record`, else to stdout, else (when the output takes stdout) to
/// stderr.
fn write_record(args: &ResultArgs, result: &JobResult) -> anyhow::Result<()> {
    let line = serde_json::to_string(&ReportLine::new("", result))? + "\n";
    if let Some(path) = &args.record {
        std::fs::write(path, line).with_context(|| format!("writing {}", path.display()))?;
    } else if args.output.as_deref().is_some_and(is_stdout) {
        std::io::stderr().write_all(line.as_bytes())?;
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(line.as_bytes())?;
        stdout.flush()?;
    }
    Ok(())
}

async fn write_output(queue: &RedisQueue, result: &JobResult, path: &Path) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        distributed::write_output(queue, result, tokio::io::stdout()).await?;
    } else {
        let file = tokio::fs::File::create(path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        distributed::write_output(queue, result, file)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Whether `path` is this process's stdout: `-`, or the file stdout is open on
/// (`/dev/stdout`, or the file stdout was redirected to).
fn is_stdout(path: &Path) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    if path.as_os_str() == "-" {
        return true;
    }
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(stdout) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    std::fs::metadata(path).is_ok_and(|m| m.dev() == stdout.dev() && m.ino() == stdout.ino())
}
