//! `sluice-worker`: runs one module over stdin → stdout under the sandbox's limits,
//! mirroring `wasmtime run`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_shared::{Job, JobInput, Outcome, ReportLine};
use sluice_worker::cli::GuestArgs;
use sluice_worker::{DirGrant, Sandbox, SandboxConfig};

/// Exit status when the sandbox (not the guest) ended the run.
const EXIT_SANDBOX_STOPPED: u8 = 125;

#[derive(Parser)]
#[command(
    name = "sluice-worker",
    version,
    about = "Sluice worker: runs WebAssembly transforms under hard limits"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run MODULE (.wasm or .wat) with stdin as its input and stdout as its output.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The module: a .wasm binary or .wat text.
    module: PathBuf,
    #[command(flatten)]
    guest: GuestArgs,
    /// Also write the job's report (outcome, fuel, wall time, memory, the worker's peak
    /// RSS) as JSON to this file.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// Arguments passed to the guest after its argv[0].
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(serde::Serialize)]
struct RunReport {
    #[serde(flatten)]
    line: ReportLine,
    /// The worker process's peak resident set size (VmHWM), in bytes.
    peak_rss_bytes: Option<u64>,
}

/// The process's peak RSS from `/proc/self/status` (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let dir_grants = args
        .guest
        .dirs
        .iter()
        .map(|spec| DirGrant::parse(spec, args.guest.read_only_dirs))
        .collect::<Result<Vec<_>, _>>()?;
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 1,
        dir_grants,
        ..SandboxConfig::default()
    })?;
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading module {}", args.module.display()))?;

    // Our own handles on fds 0 and 1: unbuffered reads of whole chunks in, and one
    // buffer out instead of std's line buffering.
    let stdin = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let output = BufWriter::with_capacity(64 << 10, stdout);

    let (mut job, result) = match sandbox.load_module(&bytes) {
        Ok(module) => {
            let mut job = Job::new(
                module.hash(),
                JobInput::Blob {
                    uri: "stdin:".into(),
                    len: 0,
                },
            );
            job.entry = args
                .guest
                .entry()
                .unwrap_or_else(|| module.default_entry(&sandbox));
            job.args = args.args.clone();
            job.env = args.guest.env.clone();
            job.limits = args.guest.limits();
            let result = sandbox.run(&module, &job, Box::new(stdin), Box::new(output));
            (job, result)
        }
        Err(outcome) => {
            let job = Job::new(
                sluice_shared::ModuleHash::of(&bytes),
                JobInput::Inline(Vec::new()),
            );
            let result = sluice_shared::JobResult::without_run(job.id, outcome, 1);
            (job, result)
        }
    };
    job.label = args.module.display().to_string();

    std::io::stderr().write_all(&result.stderr)?;
    if let Some(path) = &args.report {
        let report = RunReport {
            line: ReportLine::new(job.label.clone(), &result),
            peak_rss_bytes: peak_rss_bytes(),
        };
        std::fs::write(path, serde_json::to_vec(&report)?)
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    Ok(match result.outcome {
        Outcome::Success => ExitCode::SUCCESS,
        Outcome::NonZeroExit { code } => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        outcome => {
            eprintln!("outcome: {outcome}");
            ExitCode::from(EXIT_SANDBOX_STOPPED)
        }
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    result.unwrap_or_else(|error| {
        eprintln!("sluice-worker: {error:#}");
        ExitCode::from(EXIT_SANDBOX_STOPPED)
    })
}
