//! `sluice top`: the live terminal view of a queue (`crate::top`), or with `--once`
//! one plain-text reading. Without `--once` stdout must be a terminal.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sluice_shared::units::parse_duration;

use super::RedisArgs;
use crate::top::{Header, Source, terminal, text};

/// The shortest `--interval`: Redis is read once per interval.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest `--interval`.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// `sluice top` flags.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// How often to read the queue (100ms to 1h).
    #[arg(long, value_name = "DURATION", value_parser = interval, default_value = "1s")]
    pub interval: Duration,
    /// Print one plain-text reading and exit (for scripts; no terminal needed).
    #[arg(long)]
    pub once: bool,
    /// A worker not heard from for this long is gone (the fleet's default lease; set
    /// it to the workers' --lease when that is longer).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub stale_after: Duration,
    /// Where the queue is.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// `--interval`: a duration within [`MIN_INTERVAL`, `MAX_INTERVAL`].
fn interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| e.to_string())?;
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        Ok(d)
    } else {
        Err(format!("{text} is outside 100ms..1h"))
    }
}

/// Shows the view until the user quits (exit 0), or prints one reading with `--once`.
pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let header = Header {
        queue: args.redis.queue.clone(),
        interval: args.interval,
    };
    let mut source = Source::new(args.redis, args.stale_after);
    if args.once {
        let sample = source.read().await?;
        print!("{}", text::frame(&header, &sample));
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top draws a full-screen view and stdout is not a terminal; \
             use `sluice top --once` for one plain-text reading"
        );
    }
    terminal::run(source, header).await?;
    Ok(ExitCode::SUCCESS)
}
