//! `sluice status`: queue depths, counters, jobs waiting in tenant backlogs, and the
//! workers serving the queue now; once, or redrawn with `--watch`.
//!
//! A worker is live while its heartbeat (`Admin::heartbeat`, which says how long it
//! holds) has not run out; a worker without one (a consumer of the queue's group that
//! registered none) is live while it has been heard from (a claim, or a lease renewal,
//! which a busy worker sends every third of its lease) within `--stale-after`. One that
//! is not live is gone: listed while it still holds jobs (other workers take them over
//! once their leases expire), else not listed at all (it exited, or died holding
//! nothing). A worker that exits cleanly removes itself (`Admin::forget_consumer`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sluice_shared::queue::redis::{RedisQueue, RedisStatus, TenantBacklog};
use sluice_shared::units::parse_duration;

use super::RedisArgs;

/// `sluice status` flags.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// One JSON document (with --watch: one per refresh, one per line).
    #[arg(long)]
    pub json: bool,
    /// Refresh every INTERVAL until Ctrl-C (2s when given without a value): redrawn on
    /// a terminal, else one line per refresh.
    #[arg(
        long,
        value_name = "INTERVAL",
        num_args = 0..=1,
        default_missing_value = "2s",
        value_parser = parse_duration
    )]
    pub watch: Option<Duration>,
    /// A worker not heard from for this long is gone (the fleet's default lease; set
    /// it to the workers' --lease when that is longer).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub stale_after: Duration,
    /// Where the queue is.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// One worker as `sluice status` shows it.
#[derive(Debug, Serialize)]
struct Worker {
    name: String,
    /// `live`, or `gone` (not heard from within --stale-after, still holding jobs).
    state: &'static str,
    /// Jobs it holds.
    pending: u64,
    /// Milliseconds since it last claimed or renewed a lease (0 when it never has).
    idle_ms: u64,
}

/// What `sluice status` shows, and its `--json` document.
#[derive(Debug, Serialize)]
struct View {
    queue: String,
    ready: u64,
    leased: u64,
    delayed: u64,
    completed: u64,
    dead: u64,
    retried: u64,
    duplicates: u64,
    stale_completions: u64,
    dlq_retried: u64,
    /// Jobs waiting in tenant backlogs, all tenants.
    backlogged: u64,
    backlogs: Vec<TenantBacklog>,
    live_workers: usize,
    workers: Vec<Worker>,
    /// Consumers not heard from within --stale-after and holding nothing (not listed).
    departed_workers: usize,
}

impl View {
    fn of(queue: &str, status: RedisStatus, stale_after: Duration) -> Self {
        let stale_ms = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        let now = status.server_time_ms;
        // name → (live, pending, idle ms)
        let mut seen: BTreeMap<String, (bool, u64, u64)> = BTreeMap::new();
        for (name, until) in &status.heartbeats {
            seen.insert(name.clone(), (*until >= now, 0, 0));
        }
        for c in status.consumers {
            let by_idle = c.idle_ms <= stale_ms;
            let entry = seen.entry(c.name).or_insert((by_idle, 0, 0));
            entry.1 = c.pending;
            entry.2 = c.idle_ms;
        }
        let (mut workers, mut departed) = (Vec::new(), 0);
        for (name, (live, pending, idle_ms)) in seen {
            if !live && pending == 0 {
                departed += 1;
                continue;
            }
            workers.push(Worker {
                name,
                state: if live { "live" } else { "gone" },
                pending,
                idle_ms,
            });
        }
        workers.sort_by(|a, b| a.state.cmp(b.state).reverse().then(a.name.cmp(&b.name)));
        let s = status.stats;
        View {
            queue: queue.to_owned(),
            ready: s.ready,
            leased: s.leased,
            delayed: s.delayed,
            completed: s.completed,
            dead: s.dead,
            retried: status.retried,
            duplicates: status.duplicates,
            stale_completions: status.stale,
            dlq_retried: status.dlq_retried,
            backlogged: status.backlogs.iter().map(|b| b.waiting).sum(),
            backlogs: status.backlogs,
            live_workers: workers.iter().filter(|w| w.state == "live").count(),
            workers,
            departed_workers: departed,
        }
    }

    /// The full picture, for a person.
    fn text(&self) -> String {
        let mut out = format!("queue {}\n", self.queue);
        out += &format!(
            "  ready {}  leased {}  delayed {}  completed {}  dead {}\n",
            self.ready, self.leased, self.delayed, self.completed, self.dead
        );
        out += &format!(
            "  retried {}  duplicates {}  dlq retried {}\n",
            self.retried, self.duplicates, self.dlq_retried
        );
        if self.backlogged > 0 {
            out += &format!(
                "  waiting in tenant backlogs {} ({})\n",
                self.backlogged,
                self.backlogs
                    .iter()
                    .map(|b| format!("{} {}", b.tenant, b.waiting))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out += &format!("workers ({} live):\n", self.live_workers);
        for w in &self.workers {
            let gone = if w.state == "gone" {
                "  gone: its jobs are taken over once their leases expire"
            } else {
                ""
            };
            out += &format!(
                "  {:<32} pending {:<6} idle {} ms{gone}\n",
                w.name, w.pending, w.idle_ms
            );
        }
        out
    }

    /// One line, for `--watch` into a file or a pipe.
    fn line(&self) -> String {
        format!(
            "ready {} leased {} delayed {} backlogged {} completed {} dead {} workers {}",
            self.ready,
            self.leased,
            self.delayed,
            self.backlogged,
            self.completed,
            self.dead,
            self.live_workers
        )
    }
}

async fn view(queue: &RedisQueue, args: &StatusArgs) -> anyhow::Result<View> {
    let status = queue.admin().status().await?;
    Ok(View::of(&args.redis.queue, status, args.stale_after))
}

/// Prints the queue's status (once, or every `--watch` interval until Ctrl-C).
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let queue = args.redis.connect().await?;
    let Some(every) = args.watch else {
        let view = view(&queue, &args).await?;
        if args.json {
            println!("{}", serde_json::to_string(&view)?);
        } else {
            print!("{}", view.text());
        }
        return Ok(ExitCode::SUCCESS);
    };
    let terminal = std::io::stdout().is_terminal();
    let every = every.max(Duration::from_millis(100));
    loop {
        match view(&queue, &args).await {
            Ok(view) if args.json => println!("{}", serde_json::to_string(&view)?),
            Ok(view) if terminal => print!(
                "\x1b[H\x1b[2J{}  (every {}, Ctrl-C to stop)\n{}",
                stamp(),
                humantime::format_duration(every),
                view.text()
            ),
            Ok(view) => println!("{} {}", stamp(), view.line()),
            // Redis away for a moment: say so and keep watching.
            Err(error) => eprintln!("{} sluice: {error:#}", stamp()),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// The time now, to the second (UTC).
fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
