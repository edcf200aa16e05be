//! `sluice tenant …`: tenants, their tokens and policies, directly on Redis.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_shared::TenantPolicy;

use super::RedisArgs;

/// A tenant policy, as flags (unset ones keep their current or default values).
#[derive(Args, Debug, Default)]
pub struct PolicyArgs {
    /// Largest fuel budget; every job of the tenant then runs metered.
    #[arg(long)]
    pub max_fuel: Option<u64>,
    /// Allow unmetered jobs again (clears --max-fuel).
    #[arg(long, conflicts_with = "max_fuel")]
    pub unmetered: bool,
    /// Largest guest memory.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    pub max_memory: Option<u64>,
    /// Longest deadline.
    #[arg(long, value_parser = sluice_shared::units::parse_duration)]
    pub max_timeout: Option<std::time::Duration>,
    /// Largest output.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    pub max_output: Option<u64>,
    /// Most jobs running at once.
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Most jobs started per second (a positive finite number).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Allow any start rate again (clears --rate).
    #[arg(long, conflicts_with = "rate")]
    pub no_rate: bool,
    /// Largest input of one job.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    pub max_input: Option<u64>,
    /// Most arguments of one job.
    #[arg(long)]
    pub max_args: Option<u32>,
    /// Most environment variables of one job.
    #[arg(long)]
    pub max_env: Option<u32>,
    /// Most bytes of one job's arguments and environment together.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    pub max_args_env: Option<u64>,
    /// Most inputs in one batch request.
    #[arg(long)]
    pub max_batch_jobs: Option<u32>,
    /// Most bytes one batch request may enqueue.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    pub max_batch_bytes: Option<u64>,
    /// Most input bytes stored for the tenant within one blob lifetime.
    #[arg(long, value_parser = sluice_shared::units::parse_size)]
    pub max_stored: Option<u64>,
    /// Most modules the tenant may hold.
    #[arg(long)]
    pub max_modules: Option<u32>,
    /// Most jobs waiting in the tenant's backlog.
    #[arg(long)]
    pub max_backlog: Option<u64>,
}

impl PolicyArgs {
    /// `policy` with the flags applied, checked value by value.
    pub fn apply(&self, mut policy: TenantPolicy) -> anyhow::Result<TenantPolicy> {
        if self.unmetered {
            policy.max_fuel = None;
        }
        if let Some(v) = self.max_fuel {
            policy.max_fuel = Some(v);
        }
        if let Some(v) = self.max_memory {
            policy.max_memory_bytes = v;
        }
        if let Some(v) = self.max_timeout {
            policy.max_timeout_ms = sluice_shared::units::millis_at_least_one(v);
        }
        if let Some(v) = self.max_output {
            policy.max_output_bytes = v;
        }
        if let Some(v) = self.max_concurrent {
            policy.max_concurrent_jobs = v;
        }
        if let Some(v) = self.rate {
            policy.rate_per_second = Some(v);
        }
        if self.no_rate {
            policy.rate_per_second = None;
        }
        let quotas = [
            (&mut policy.max_input_bytes, self.max_input),
            (&mut policy.max_args_env_bytes, self.max_args_env),
            (&mut policy.max_batch_bytes, self.max_batch_bytes),
            (&mut policy.max_stored_bytes, self.max_stored),
            (&mut policy.max_backlog_jobs, self.max_backlog),
        ];
        for (field, value) in quotas {
            if let Some(v) = value {
                *field = v;
            }
        }
        let counts = [
            (&mut policy.max_args, self.max_args),
            (&mut policy.max_env, self.max_env),
            (&mut policy.max_batch_jobs, self.max_batch_jobs),
            (&mut policy.max_modules, self.max_modules),
        ];
        for (field, value) in counts {
            if let Some(v) = value {
                *field = v;
            }
        }
        policy.validate()?;
        Ok(policy)
    }

    /// Whether no flag is given (the policy is only shown).
    pub fn is_empty(&self) -> bool {
        self.max_fuel.is_none()
            && !self.unmetered
            && self.max_memory.is_none()
            && self.max_timeout.is_none()
            && self.max_output.is_none()
            && self.max_concurrent.is_none()
            && self.rate.is_none()
            && !self.no_rate
            && self.max_input.is_none()
            && self.max_args.is_none()
            && self.max_env.is_none()
            && self.max_args_env.is_none()
            && self.max_batch_jobs.is_none()
            && self.max_batch_bytes.is_none()
            && self.max_stored.is_none()
            && self.max_modules.is_none()
            && self.max_backlog.is_none()
    }
}

/// `sluice tenant` subcommands.
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant; prints its first token (shown once: only its hash is stored).
    Create {
        /// The tenant's name.
        name: String,
        /// The policy's values.
        #[command(flatten)]
        policy: PolicyArgs,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Issue another token for a tenant; prints it.
    Token {
        /// The tenant's name.
        name: String,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Revoke every token of a tenant.
    Revoke {
        /// The tenant's name.
        name: String,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Show a tenant's policy, or change it with flags.
    Policy {
        /// The tenant's name.
        name: String,
        /// The policy's values.
        #[command(flatten)]
        policy: PolicyArgs,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// List tenants and their main limits: a table, or JSON lines (with the whole
    /// policy) with --json.
    List {
        /// One JSON document per tenant (`tenant`, `policy`), one per line.
        #[arg(long)]
        json: bool,
        /// Where the queue is.
        #[command(flatten)]
        redis: RedisArgs,
    },
}

/// Runs a `sluice tenant` subcommand.
pub async fn run(command: TenantCommand) -> anyhow::Result<ExitCode> {
    match command {
        TenantCommand::Create {
            name,
            policy,
            redis,
        } => {
            let queue = redis.connect().await?;
            let token = queue
                .tenants()
                .create(&name, &policy.apply(TenantPolicy::default())?)
                .await?
                .with_context(|| format!("tenant {name} already exists"))?;
            println!("{token}");
        }
        TenantCommand::Token { name, redis } => {
            println!(
                "{}",
                redis.connect().await?.tenants().issue_token(&name).await?
            );
        }
        TenantCommand::Revoke { name, redis } => {
            println!(
                "revoked {}",
                redis
                    .connect()
                    .await?
                    .tenants()
                    .revoke_tokens(&name)
                    .await?
            );
        }
        TenantCommand::Policy {
            name,
            policy,
            redis,
        } => {
            let queue = redis.connect().await?;
            let current = queue
                .tenants()
                .policy(&name)
                .await?
                .with_context(|| format!("no tenant {name}"))?;
            let updated = policy.apply(current.clone())?;
            if !policy.is_empty() {
                queue.tenants().set_policy(&name, &updated).await?;
            }
            println!("{}", serde_json::to_string(&updated)?);
        }
        TenantCommand::List { json, redis } => {
            let tenants = redis.connect().await?.tenants().all().await?;
            if json {
                for (name, policy) in tenants {
                    println!(
                        "{}",
                        serde_json::json!({ "tenant": name, "policy": policy })
                    );
                }
            } else {
                print_table(&tenants);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tenants and their main limits, one per line (`tenant policy NAME` shows the rest).
fn print_table(tenants: &[(String, TenantPolicy)]) {
    println!(
        "{:<24} {:>10} {:>8} {:>14} {:>10} {:>8} {:>8}",
        "tenant", "memory", "timeout", "fuel", "concurrent", "rate/s", "backlog"
    );
    for (name, p) in tenants {
        let memory = format!("{}MiB", p.max_memory_bytes >> 20);
        let timeout =
            humantime::format_duration(std::time::Duration::from_millis(p.max_timeout_ms));
        let fuel = p.max_fuel.map_or("unmetered".into(), |f| f.to_string());
        let rate = p.rate_per_second.map_or("-".into(), |r| r.to_string());
        println!(
            "{name:<24} {memory:>10} {timeout:>8} {fuel:>14} {:>10} {rate:>8} {:>8}",
            p.max_concurrent_jobs, p.max_backlog_jobs
        );
    }
}
