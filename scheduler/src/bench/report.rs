//! A bench run's figures and their Markdown: a figure/value table (`--format table`,
//! what docs/benchmarks.md pastes for one configuration) or one row under a header
//! (`--format row`: lines 1-3, what `scripts/bench-fleet` stacks into one table of
//! configurations). Either is followed, after a blank line, by the run's Redis
//! breakdown (time per command per job, [`Figures::breakdown`]), so `--format row`
//! prints more than one row: readers take lines 1-3, or the lines up to the first
//! blank one.

use std::fmt::Write;
use std::time::Duration;

use super::commandstats::CommandStats;
use super::cpu::CpuTime;
use super::drain::Drain;
use super::workload::Checked;

/// How `sluice bench` prints its figures (its variants carry no doc comments, which
/// clap would print as a second help layout; `--format`'s own help says what each is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    // A figure | value table.
    #[default]
    Table,
    // A header and one row per run (columns: see `ROW_COLUMNS`), then the breakdown.
    Row,
}

/// The columns of `--format row`, in order (new ones are appended: scripts read them
/// by index). The `drain …` columns are `-` under `--no-drain`, `failed` when the drain
/// run failed (the table says why).
pub const ROW_COLUMNS: [&str; 28] = [
    "module",
    "input",
    "workers × slots",
    "jobs",
    "failed",
    "expired",
    "retried",
    "jobs/s",
    "latency jobs",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "worker CPU/job µs",
    "worker kernel %",
    "worker ctx switches/job",
    "Redis CPU/job µs",
    "bench CPU/job µs",
    "commands/job",
    "sender late p99 ms",
    "XADD p99 ms",
    "XADD reply → notice p99 ms",
    "drain jobs/s",
    "drain s",
    "drain worker CPU/job µs",
    "drain Redis CPU/job µs",
    "drain jobs checked",
    "drain ready spread ms",
    "drain first notice ms",
];

/// Latency percentiles of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Jobs timed.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
}

impl Percentiles {
    /// p99.9 in milliseconds; below 1,000 samples it is the largest, and says so.
    pub fn p999_ms(&self) -> String {
        if self.count < 1000 {
            format!("{:.2} (max)", ms(self.p999))
        } else {
            format!("{:.2}", ms(self.p999))
        }
    }

    /// The percentiles of `sorted` (ascending), nearest rank.
    pub fn of(sorted: &[Duration]) -> Self {
        Percentiles {
            count: sorted.len(),
            p50: percentile(sorted, 0.5),
            p99: percentile(sorted, 0.99),
            p999: percentile(sorted, 0.999),
        }
    }
}

/// The `p`-quantile of ascending `sorted` (nearest rank: the smallest value with at
/// least `p` of the values at or below it; zero for no values).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Every figure of one bench run.
#[derive(Debug)]
pub struct Figures {
    /// The module's name.
    pub module: String,
    /// Bytes per input.
    pub input_size: usize,
    /// Worker processes.
    pub workers: usize,
    /// Job slots per worker.
    pub slots: usize,
    /// Jobs in the throughput run.
    pub jobs: usize,
    /// How the throughput run's jobs were checked.
    pub throughput_checked: Checked,
    /// Time to enqueue them.
    pub enqueued: Duration,
    /// Time from the first enqueue to the last notice.
    pub elapsed: Duration,
    /// Enqueue-to-notice latency under the throughput run's backlog.
    pub backlog_latency: Percentiles,
    /// Redis commands executed during the throughput run.
    pub commands: u64,
    /// Those commands' calls and time, by command (the per-job breakdown).
    pub redis_commands: CommandStats,
    /// Worker processes' CPU time over the throughput run.
    pub worker_cpu: CpuTime,
    /// Worker threads' context switches (voluntary + nonvoluntary) over the throughput
    /// run.
    pub context_switches: u64,
    /// redis-server's CPU time over the throughput run.
    pub redis_cpu: CpuTime,
    /// The bench process's own CPU time over the throughput run (the submitter).
    pub bench_cpu: CpuTime,
    /// Offered rate of the latency run, jobs/s.
    pub rate: u32,
    /// Jobs sent in the latency run.
    pub latency_jobs: usize,
    /// How the latency run's jobs were checked.
    pub latency_checked: Checked,
    /// Send-to-notice latency at the offered rate.
    pub latency: Percentiles,
    /// That latency's stages: sender lateness (send − scheduled send), the `XADD`
    /// round trip, and `XADD` reply → notice read (claim, run, `complete.lua`, notice).
    pub latency_stages: [Percentiles; 3],
    /// The drain run (jobs enqueued before the workers start), unless `--no-drain`: its
    /// figures, or why it failed (the other runs' figures are printed all the same).
    pub drain: Option<Result<Drain, String>>,
    /// `redis-benchmark` on the same server, when run.
    pub baseline: Option<String>,
    /// Redis `used_memory` before the run and after the TTL (with the TTL as given),
    /// when measured.
    pub memory: Option<(u64, u64, String)>,
}

/// `d` per job in microseconds.
fn per_job_us(d: Duration, jobs: usize) -> f64 {
    d.as_secs_f64() * 1e6 / jobs.max(1) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The kernel's share of `cpu`, in percent.
fn kernel_share(cpu: CpuTime) -> f64 {
    let total = cpu.total().as_secs_f64();
    if total > 0.0 {
        100.0 * cpu.system.as_secs_f64() / total
    } else {
        0.0
    }
}

/// `text` as one Markdown table cell: on one line, its `|` escaped.
fn table_cell(text: &str) -> String {
    text.replace('|', "\\|")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

impl Figures {
    /// Jobs that failed in any run (an outcome other than success, a wrong output,
    /// or a latency job that never finished).
    pub fn failed(&self) -> usize {
        self.throughput_checked.not_ok()
            + self.latency_checked.not_ok()
            + self.latency_jobs.saturating_sub(self.latency.count)
            + self.drain_run().map_or(0, |d| d.checked.not_ok())
    }

    /// The drain run's figures, when it ran and did not fail.
    pub fn drain_run(&self) -> Option<&Drain> {
        self.drain.as_ref().and_then(|d| d.as_ref().ok())
    }

    /// Why the drain run failed, when it did.
    pub fn drain_failure(&self) -> Option<&str> {
        self.drain
            .as_ref()
            .and_then(|d| d.as_ref().err())
            .map(String::as_str)
    }

    /// Whether every run succeeded: no failed job and no failed drain run (the bench's
    /// exit status).
    pub fn succeeded(&self) -> bool {
        self.failed() == 0 && self.drain_failure().is_none()
    }

    /// Jobs/s of the throughput run, over the jobs [`Checked::counted`] counts.
    pub fn jobs_per_s(&self) -> f64 {
        self.throughput_checked.counted() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Jobs of any run whose result expired before it was checked.
    pub fn expired(&self) -> usize {
        self.throughput_checked.missing
            + self.latency_checked.missing
            + self.drain_run().map_or(0, |d| d.checked.missing)
    }

    /// Jobs of any run that ran more than once.
    pub fn retried(&self) -> usize {
        self.throughput_checked.retried
            + self.latency_checked.retried
            + self.drain_run().map_or(0, |d| d.checked.retried)
    }

    fn switches_per_job(&self) -> f64 {
        self.context_switches as f64 / self.jobs.max(1) as f64
    }

    fn kernel_share(&self) -> f64 {
        kernel_share(self.worker_cpu)
    }

    fn input(&self) -> String {
        match self.input_size {
            0 => "empty".to_owned(),
            n if n % 1024 == 0 => format!("{} KiB", n / 1024),
            n => format!("{n} B"),
        }
    }

    /// The figure | value table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |figure: &str, value: String| {
            let _ = writeln!(out, "| {figure} | {value} |");
        };
        row("figure", "value".into());
        row("---", "---".into());
        row(
            "module, input",
            format!("{}, {}", self.module, self.input()),
        );
        row(
            "worker processes × slots",
            format!("{} × {}", self.workers, self.slots),
        );
        row("jobs (throughput run)", self.jobs.to_string());
        row(
            "failed jobs (wrong output counts as failed)",
            match &self.drain {
                Some(Ok(drain)) => format!(
                    "{} (throughput: {}; latency: {}; drain: {})",
                    self.failed(),
                    self.throughput_checked.describe(),
                    self.latency_failures(),
                    drain.checked.describe()
                ),
                Some(Err(_)) => format!(
                    "{} (throughput: {}; latency: {}; drain: failed, below)",
                    self.failed(),
                    self.throughput_checked.describe(),
                    self.latency_failures()
                ),
                None => format!(
                    "{} (throughput: {}; latency: {})",
                    self.failed(),
                    self.throughput_checked.describe(),
                    self.latency_failures()
                ),
            },
        );
        row(
            "results expired before checked (success, output unchecked)",
            self.expired().to_string(),
        );
        row(
            "jobs retried (ran more than once; their CPU is counted)",
            self.retried().to_string(),
        );
        row(
            "enqueue time",
            format!("{:.2} s", self.enqueued.as_secs_f64()),
        );
        row(
            "end to end",
            format!(
                "{:.2} s → **{:.0} jobs/s**",
                self.elapsed.as_secs_f64(),
                self.jobs_per_s()
            ),
        );
        row(
            "enqueue→result latency under that backlog, p50 / p99",
            format!(
                "{:.0} ms / {:.0} ms",
                ms(self.backlog_latency.p50),
                ms(self.backlog_latency.p99)
            ),
        );
        row(
            "worker CPU per job (all worker processes, /proc utime+stime), of which kernel",
            format!(
                "{:.1} µs, {:.0}%",
                per_job_us(self.worker_cpu.total(), self.jobs),
                self.kernel_share()
            ),
        );
        row(
            "worker context switches per job (voluntary + nonvoluntary, live threads)",
            format!("{:.1}", self.switches_per_job()),
        );
        row(
            "Redis CPU per job (INFO cpu)",
            format!("{:.1} µs", per_job_us(self.redis_cpu.total(), self.jobs)),
        );
        row(
            "bench (submitter) CPU per job",
            format!("{:.1} µs", per_job_us(self.bench_cpu.total(), self.jobs)),
        );
        row(
            "Redis commands per job (INFO commandstats, all clients, scripts' calls included)",
            format!("{:.2}", self.commands as f64 / self.jobs.max(1) as f64),
        );
        row(
            &format!(
                "latency at {} jobs/s offered ({} jobs), p50 / p99 / p99.9",
                self.rate, self.latency.count
            ),
            format!(
                "{:.2} ms / {:.2} ms / {} ms",
                ms(self.latency.p50),
                ms(self.latency.p99),
                self.latency.p999_ms()
            ),
        );
        let [late, xadd, rest] = &self.latency_stages;
        row(
            "of which, p50 / p99 / p99.9: sender late (send − scheduled send); XADD round trip; XADD reply → notice read (claim, run, complete.lua, notice)",
            format!(
                "{:.3} / {:.3} / {} ms; {:.3} / {:.3} / {} ms; {:.3} / {:.3} / {} ms",
                ms(late.p50),
                ms(late.p99),
                late.p999_ms(),
                ms(xadd.p50),
                ms(xadd.p99),
                xadd.p999_ms(),
                ms(rest.p50),
                ms(rest.p99),
                rest.p999_ms()
            ),
        );
        match &self.drain {
            Some(Ok(drain)) => {
                row(
                    "drain: jobs enqueued before the workers start, checked (outcome and output)",
                    format!(
                        "{} of {} ({}); enqueued in {:.2} s",
                        drain.checked_jobs(),
                        drain.jobs,
                        drain.checked.describe(),
                        drain.enqueued.as_secs_f64()
                    ),
                );
                row(
                    "drain: first worker ready → last notice (as the peer measures)",
                    format!(
                        "{:.3} s → **{:.0} jobs/s**",
                        drain.elapsed.as_secs_f64(),
                        drain.jobs_per_s()
                    ),
                );
                row(
                    "drain: first worker ready → last worker ready (spread); → first drained job's notice",
                    format!(
                        "{:.1} ms; {:.1} ms",
                        ms(drain.ready_spread),
                        ms(drain.first_notice)
                    ),
                );
                row(
                    "drain: worker CPU per job (from each worker's ready line), of which kernel",
                    format!(
                        "{:.1} µs, {:.0}%",
                        per_job_us(drain.worker_cpu.total(), drain.jobs),
                        kernel_share(drain.worker_cpu)
                    ),
                );
                row(
                    "drain: Redis CPU per job (INFO cpu, from before the workers start)",
                    format!("{:.1} µs", per_job_us(drain.redis_cpu.total(), drain.jobs)),
                );
            }
            Some(Err(reason)) => row("drain", format!("**failed**: {}", table_cell(reason))),
            None => row("drain", "not run (--no-drain)".into()),
        }
        if let Some(baseline) = &self.baseline {
            row(
                "redis-benchmark -q -P 16 -t set,get (same server)",
                baseline.clone(),
            );
        }
        if let Some((before, after, ttl)) = &self.memory {
            row(
                &format!("Redis used_memory before the run / after the {ttl} TTL"),
                format!("{:.1} MiB / {:.1} MiB", mib(*before), mib(*after)),
            );
        }
        out.push('\n');
        out.push_str(&self.breakdown());
        out
    }

    /// Where Redis's time went per job of the throughput run (see [`CommandStats::table`]).
    pub fn breakdown(&self) -> String {
        self.redis_commands.table(self.jobs, self.redis_cpu.total())
    }

    fn latency_failures(&self) -> String {
        let unfinished = self.latency_jobs.saturating_sub(self.latency.count);
        match unfinished {
            0 => self.latency_checked.describe(),
            n => format!("{}, {n} unfinished", self.latency_checked.describe()),
        }
    }

    /// A drain figure for the row, `-` when the drain was not run, `failed` when it
    /// failed.
    fn drain_cell(&self, cell: impl Fn(&Drain) -> String) -> String {
        match &self.drain {
            Some(Ok(drain)) => cell(drain),
            Some(Err(_)) => "failed".to_owned(),
            None => "-".to_owned(),
        }
    }

    /// The header, separator and this run's row; then, after a blank line, the
    /// run's Redis breakdown ([`Figures::breakdown`]).
    pub fn row(&self) -> String {
        let cells = [
            self.module.clone(),
            self.input(),
            format!("{} × {}", self.workers, self.slots),
            self.jobs.to_string(),
            self.failed().to_string(),
            self.expired().to_string(),
            self.retried().to_string(),
            format!("{:.0}", self.jobs_per_s()),
            self.latency.count.to_string(),
            format!("{:.2}", ms(self.latency.p50)),
            format!("{:.2}", ms(self.latency.p99)),
            self.latency.p999_ms(),
            format!("{:.1}", per_job_us(self.worker_cpu.total(), self.jobs)),
            format!("{:.0}", self.kernel_share()),
            format!("{:.1}", self.switches_per_job()),
            format!("{:.1}", per_job_us(self.redis_cpu.total(), self.jobs)),
            format!("{:.1}", per_job_us(self.bench_cpu.total(), self.jobs)),
            format!("{:.2}", self.commands as f64 / self.jobs.max(1) as f64),
            format!("{:.2}", ms(self.latency_stages[0].p99)),
            format!("{:.2}", ms(self.latency_stages[1].p99)),
            format!("{:.2}", ms(self.latency_stages[2].p99)),
            self.drain_cell(|d| format!("{:.0}", d.jobs_per_s())),
            self.drain_cell(|d| format!("{:.3}", d.elapsed.as_secs_f64())),
            self.drain_cell(|d| format!("{:.1}", per_job_us(d.worker_cpu.total(), d.jobs))),
            self.drain_cell(|d| format!("{:.1}", per_job_us(d.redis_cpu.total(), d.jobs))),
            self.drain_cell(|d| d.checked_jobs().to_string()),
            self.drain_cell(|d| format!("{:.1}", ms(d.ready_spread))),
            self.drain_cell(|d| format!("{:.1}", ms(d.first_notice))),
        ];
        format!(
            "| {} |\n|{}\n| {} |\n\n{}",
            ROW_COLUMNS.join(" | "),
            " --- |".repeat(ROW_COLUMNS.len()),
            cells.join(" | "),
            self.breakdown()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures {
            module: "uppercase.wasm".into(),
            input_size: 4096,
            workers: 2,
            slots: 64,
            jobs: 1000,
            throughput_checked: Checked {
                ok: 999,
                wrong_output: 1,
                ..Checked::default()
            },
            enqueued: Duration::from_millis(100),
            elapsed: Duration::from_secs(1),
            backlog_latency: Percentiles::default(),
            commands: 2600,
            redis_commands: CommandStats::default(),
            worker_cpu: CpuTime {
                user: Duration::from_millis(30),
                system: Duration::from_millis(10),
            },
            context_switches: 2500,
            redis_cpu: CpuTime {
                user: Duration::from_millis(13),
                system: Duration::ZERO,
            },
            bench_cpu: CpuTime::default(),
            rate: 200,
            latency_jobs: 10,
            latency_checked: Checked {
                ok: 9,
                ..Checked::default()
            },
            latency: Percentiles::of(&[Duration::from_millis(1); 9]),
            latency_stages: [Percentiles::default(); 3],
            drain: Some(Ok(Drain {
                jobs: 1000,
                checked: Checked {
                    ok: 1000,
                    ..Checked::default()
                },
                enqueued: Duration::from_millis(50),
                elapsed: Duration::from_millis(500),
                ready_spread: Duration::from_millis(12),
                first_notice: Duration::from_millis(3),
                worker_cpu: CpuTime {
                    user: Duration::from_millis(24),
                    system: Duration::from_millis(6),
                },
                redis_cpu: CpuTime {
                    user: Duration::from_millis(10),
                    system: Duration::ZERO,
                },
            })),
            baseline: None,
            memory: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let p = Percentiles::of(&values);
        assert_eq!(p.p50, Duration::from_millis(500));
        assert_eq!(p.p99, Duration::from_millis(990));
        assert_eq!(p.p999, Duration::from_millis(999));
        assert_eq!(Percentiles::of(&[]).p999, Duration::ZERO);
        assert_eq!(p.p999_ms(), "999.00");
        assert_eq!(Percentiles::of(&values[..999]).p999_ms(), "999.00 (max)");
    }

    #[test]
    fn failures_and_throughput_count_only_exact_outputs() {
        let f = figures();
        // One wrong output, one latency job that never finished.
        assert_eq!(f.failed(), 2);
        assert_eq!(f.jobs_per_s().round(), 999.0);
    }

    #[test]
    fn row_has_every_column() {
        let row = figures().row();
        let lines: Vec<&str> = row.lines().take_while(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 3);
        for line in lines {
            assert_eq!(line.matches('|').count(), ROW_COLUMNS.len() + 1, "{line}");
        }
        assert!(
            row.contains("| uppercase.wasm | 4 KiB | 2 × 64 | 1000 | 2 | 0 | 0 | 999 | 9 |"),
            "{row}"
        );
        assert!(
            row.contains("| 1.00 (max) | 40.0 | 25 | 2.5 | 13.0 |"),
            "{row}"
        );
    }

    #[test]
    fn drain_figures_are_appended_to_the_row_and_its_failures_counted() {
        let mut f = figures();
        let row = f.row();
        assert!(
            row.lines()
                .nth(2)
                .unwrap()
                .ends_with("| 2000 | 0.500 | 30.0 | 10.0 | 1000 | 12.0 | 3.0 |"),
            "{row}"
        );
        assert!(
            row.lines().next().unwrap().ends_with(
                "| drain jobs/s | drain s | drain worker CPU/job µs | drain Redis CPU/job µs \
                 | drain jobs checked | drain ready spread ms | drain first notice ms |"
            ),
            "{row}"
        );
        let table = f.table();
        assert!(table.contains("| drain: first worker ready → last notice (as the peer measures) | 0.500 s → **2000 jobs/s** |"), "{table}");
        assert!(
            table.contains("→ first drained job's notice | 12.0 ms; 3.0 ms |"),
            "{table}"
        );
        assert!(
            table
                .contains("(throughput: 1 wrong output; latency: none, 1 unfinished; drain: none)"),
            "{table}"
        );
        // Two drained jobs trapped: failures, not throughput.
        let drain = f.drain.as_mut().unwrap().as_mut().unwrap();
        drain.checked.ok = 998;
        drain.checked.failed.insert("trapped".into(), 2);
        assert_eq!(f.failed(), 4);
        assert!(
            f.row()
                .contains("| 1996 | 0.500 | 30.0 | 10.0 | 1000 | 12.0 | 3.0 |")
        );
        assert!(f.table().contains("drain: 2 trapped)"), "{}", f.table());
        // A failed drain: the other runs' figures stand, the drain's columns say
        // `failed` and the table says why (on one line, its `|` escaped); the bench
        // fails.
        f.drain = Some(Err("the drain run: no notice\nin 600 s | gave up".into()));
        assert!(!f.succeeded());
        let row = f.row();
        let line = row.lines().nth(2).unwrap();
        assert_eq!(line.matches(" | ").count(), ROW_COLUMNS.len() - 1, "{line}");
        assert!(
            line.ends_with(&format!("|{}", " failed |".repeat(7))),
            "{line}"
        );
        assert!(
            line.contains("| 999 | 9 |"),
            "throughput and latency: {line}"
        );
        let table = f.table();
        assert!(
            table.contains("| drain | **failed**: the drain run: no notice in 600 s \\| gave up |"),
            "{table}"
        );
        assert!(table.contains("**999 jobs/s**"), "{table}");
        assert!(table.contains("drain: failed, below)"), "{table}");
        // --no-drain: the columns stay, each `-`.
        f.drain = None;
        let row = f.row();
        let line = row.lines().nth(2).unwrap();
        assert_eq!(line.matches('|').count(), ROW_COLUMNS.len() + 1, "{line}");
        assert!(line.ends_with("| - | - | - | - | - | - | - |"), "{line}");
        assert!(f.table().contains("| drain | not run (--no-drain) |"));
    }
}
