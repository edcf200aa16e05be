//! `sluice submit`: enqueue one job and print its id.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_shared::job::ModuleNameError;
use sluice_shared::units::parse_duration;
use sluice_shared::{Job, ModuleName, ProgramName, Queue, TenantId};
use sluice_worker::cli::GuestArgs;

use super::RedisArgs;
use crate::distributed;

/// `sluice submit` flags.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Module hash or name (see `sluice module put`).
    #[arg(long)]
    pub module: String,
    /// The input file (`-` for stdin).
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// The job limits, entry point and environment.
    #[command(flatten)]
    pub guest: GuestArgs,
    /// An argument passed to the guest (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Run no earlier than this (milliseconds since the Unix epoch).
    #[arg(long, value_name = "UNIX_MS", conflicts_with = "delay")]
    pub at: Option<u64>,
    /// Run after this delay (measured on the Redis server's clock).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// The tenant the job runs for; its limits are clamped to the tenant's policy.
    #[arg(long, default_value = "local")]
    pub tenant: String,
    /// Where the queue is.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Uploads the input, enqueues the job (or schedules it) and prints its id.
pub async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    // The module-name rule decides the guest's argv[0] and explains an unknown name;
    // a name no rule ever allowed is refused before connecting.
    let rule = ModuleName::of_reference(&args.module);
    if let Err(e @ (ModuleNameError::Empty | ModuleNameError::TooLong { .. })) = &rule {
        anyhow::bail!("--module {:?}: {e}", args.module);
    }
    if args.module.contains('/') {
        anyhow::bail!(
            "--module {:?}: {}",
            args.module,
            ModuleNameError::BadCharacter('/')
        );
    }
    let queue = args.redis.connect().await?;
    let module = match (queue.modules().resolve(&args.module).await?, &rule) {
        (Some(module), _) => module,
        (None, Err(e)) => anyhow::bail!("--module {:?}: {e}", args.module),
        (None, Ok(_)) => anyhow::bail!("no module named {}", args.module),
    };
    // An alias stored before the rule (it breaks it) still runs, its guest seeing the
    // module's hash as argv[0].
    let program = rule.ok().flatten().map(ProgramName::from);
    // The metadata recorded on upload, not the module: a submitter never downloads it.
    let meta = crate::module_meta::stored_meta(&queue, &module)
        .await?
        .with_context(|| format!("module {module} is not stored"))?;
    let input = if args.input.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stdin");
        std::fs::write(&path, &bytes)?;
        distributed::upload_input(&queue, &path, bytes.len() as u64).await?
    } else {
        let len = std::fs::metadata(&args.input)
            .with_context(|| format!("reading {}", args.input.display()))?
            .len();
        distributed::upload_input(&queue, &args.input, len).await?
    };
    let mut job = Job::new(module, input);
    job.entry = args.guest.entry().unwrap_or(meta.default_entry);
    job.args = args.args;
    job.env = args.guest.env.clone();
    sluice_shared::tenant::validate_name(&args.tenant)?;
    job.limits = distributed::clamp_to_policy(&queue, &args.tenant, &args.guest.limits()).await?;
    job.tenant = TenantId(args.tenant);
    job.label = args.input.display().to_string();
    job.program = program;
    let due = match (args.at, args.delay) {
        (Some(at), _) => Some(at),
        (None, Some(delay)) => {
            let delay = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            Some(queue.server_time_ms().await?.saturating_add(delay))
        }
        (None, None) => None,
    };
    match due {
        Some(due) => queue.schedule(std::slice::from_ref(&job), due).await?,
        None => queue.enqueue(std::slice::from_ref(&job)).await?,
    }
    println!("{}", job.id);
    Ok(ExitCode::SUCCESS)
}
