//! Where Redis's time goes per job: `INFO commandstats` (calls and microseconds per
//! command) read before and after the throughput run, the difference divided by the
//! run's jobs, printed as a bounded table beside Redis's whole CPU time (`INFO cpu`).
//!
//! How to read it: a script's `EVALSHA` row holds the whole script's time, the commands
//! it calls included; those inner commands also appear as their own rows (Redis counts
//! them like any other call). So the rows do not add up: `EVALSHA` minus the rows of
//! commands only scripts call is the Lua interpreter's own share, and Redis CPU minus
//! the top-level commands' time is reading, parsing and replying (the network). The
//! times are wall-clock inside each command: on a busy machine, where the server is
//! preempted mid-command, they add up to more than its CPU time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Rows the breakdown prints before summing the rest into one `other` row.
pub const TOP_ROWS: usize = 12;

/// One command's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Calls.
    pub calls: u64,
    /// Microseconds spent executing them.
    pub usec: u64,
}

/// `INFO commandstats`, by command (`xgroup|create` for subcommands).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandStats(pub BTreeMap<String, Cost>);

impl CommandStats {
    /// Parses `INFO commandstats` (`cmdstat_<name>:calls=N,usec=N,…` lines; other lines
    /// are skipped).
    pub fn parse(info: &str) -> Self {
        let mut stats = BTreeMap::new();
        for line in info.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
                stats.insert(name.to_owned(), Cost { calls, usec });
            }
        }
        CommandStats(stats)
    }

    /// Every command's calls added up (scripts' inner calls included).
    pub fn calls(&self) -> u64 {
        self.0.values().map(|c| c.calls).sum()
    }

    /// What ran between `earlier` and this reading (commands absent before count from
    /// zero; a counter that went down, after `CONFIG RESETSTAT`, counts as zero).
    pub fn since(&self, earlier: &CommandStats) -> CommandStats {
        CommandStats(
            self.0
                .iter()
                .map(|(name, now)| {
                    let before = earlier.0.get(name).copied().unwrap_or_default();
                    let cost = Cost {
                        calls: now.calls.saturating_sub(before.calls),
                        usec: now.usec.saturating_sub(before.usec),
                    };
                    (name.clone(), cost)
                })
                .filter(|(_, cost)| cost.calls > 0)
                .collect(),
        )
    }

    /// The Markdown breakdown per job: the [`TOP_ROWS`] costliest commands, the rest
    /// in one row, and Redis's whole CPU time per job for scale.
    pub fn table(&self, jobs: usize, redis_cpu: Duration) -> String {
        let jobs = jobs.max(1) as f64;
        let cpu_us = redis_cpu.as_secs_f64() * 1e6;
        let mut rows: Vec<(&str, Cost)> = self.0.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        rows.sort_by(|a, b| b.1.usec.cmp(&a.1.usec).then(a.0.cmp(b.0)));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| Redis command (INFO commandstats; µs: wall time inside the command) | calls/job | µs/job | µs/call | share of Redis CPU |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        let mut line = |name: &str, cost: Cost| {
            let share = if cpu_us > 0.0 {
                format!("{:.0}%", 100.0 * cost.usec as f64 / cpu_us)
            } else {
                "n/a".to_owned()
            };
            let _ = writeln!(
                out,
                "| {name} | {:.3} | {:.2} | {:.2} | {share} |",
                cost.calls as f64 / jobs,
                cost.usec as f64 / jobs,
                cost.usec as f64 / cost.calls.max(1) as f64,
            );
        };
        for (name, cost) in rows.iter().take(TOP_ROWS) {
            line(&cell(name), *cost);
        }
        if rows.len() > TOP_ROWS {
            let rest = &rows[TOP_ROWS..];
            let cost = rest.iter().fold(Cost::default(), |a, (_, c)| Cost {
                calls: a.calls + c.calls,
                usec: a.usec + c.usec,
            });
            line(&format!("other ({} commands)", rest.len()), cost);
        }
        let _ = writeln!(
            out,
            "| Redis CPU (INFO cpu; evalsha includes its scripts' calls, also listed) | | {:.2} | | 100% |",
            cpu_us / jobs
        );
        out
    }
}

/// A command's name as a Markdown table cell: Redis 7 names subcommands
/// `xgroup|create`, and a `|` would split the cell, so it prints `xgroup create`.
fn cell(name: &str) -> String {
    name.replace('|', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# Commandstats\r\n\
        cmdstat_set:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=1,usec=100,usec_per_call=100.00,rejected_calls=0,failed_calls=0\r\n";
    const AFTER: &str = "# Commandstats\r\n\
        cmdstat_set:calls=110,usec=220,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=11,usec=1100,usec_per_call=100.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_xgroup|create:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=1\r\n\
        cmdstat_broken:calls=x\r\n";
    /// Redis 6's lines: no rejected/failed counts, subcommands folded into their command.
    const REDIS6: &str = "# Commandstats\r\n\
        cmdstat_xgroup:calls=3,usec=12,usec_per_call=4.00\r\n";

    #[test]
    fn the_difference_is_per_command() {
        let run = CommandStats::parse(AFTER).since(&CommandStats::parse(BEFORE));
        assert_eq!(
            run.0["set"],
            Cost {
                calls: 100,
                usec: 200
            }
        );
        assert_eq!(
            run.0["evalsha"],
            Cost {
                calls: 10,
                usec: 1000
            }
        );
        assert_eq!(run.0["xgroup|create"], Cost { calls: 1, usec: 5 });
        assert!(!run.0.contains_key("broken"));
        assert_eq!(run.calls(), 111);

        // A Redis 6 line (no rejected/failed fields) parses the same.
        assert_eq!(
            CommandStats::parse(REDIS6).0["xgroup"],
            Cost { calls: 3, usec: 12 }
        );

        // CONFIG RESETSTAT between the readings: a counter that went down counts as
        // zero (not a wrapped u64), and a command with no calls since is left out.
        let reset = CommandStats::parse(BEFORE).since(&CommandStats::parse(AFTER));
        assert!(reset.0.is_empty(), "{reset:?}");
        assert_eq!(reset.calls(), 0);
        let partly = CommandStats::parse(
            "cmdstat_set:calls=5,usec=3\r\ncmdstat_evalsha:calls=12,usec=1300\r\n",
        )
        .since(&CommandStats::parse(AFTER));
        assert_eq!(
            partly.0["evalsha"],
            Cost {
                calls: 1,
                usec: 200
            }
        );
        assert!(!partly.0.contains_key("set"), "{partly:?}");
    }

    #[test]
    fn the_table_is_per_job_costliest_first_and_bounded() {
        let run = CommandStats::parse(AFTER).since(&CommandStats::parse(BEFORE));
        let table = run.table(100, Duration::from_micros(2000));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[2], "| evalsha | 0.100 | 10.00 | 100.00 | 50% |");
        assert_eq!(lines[3], "| set | 1.000 | 2.00 | 2.00 | 10% |");
        // A subcommand keeps the table's columns: `xgroup|create` prints with a space.
        assert_eq!(lines[4], "| xgroup create | 0.010 | 0.05 | 5.00 | 0% |");
        for line in &lines {
            assert_eq!(line.matches('|').count(), 6, "{line}");
        }
        assert!(
            lines.last().unwrap().contains("| 20.00 | | 100% |"),
            "{table}"
        );

        let many = CommandStats(
            (0..20)
                .map(|i| (format!("c{i:02}"), Cost { calls: 1, usec: i }))
                .collect(),
        );
        let table = many.table(1, Duration::ZERO);
        assert_eq!(table.lines().count(), 2 + TOP_ROWS + 1 + 1, "{table}");
        assert!(
            table.contains("| other (8 commands) | 8.000 | 28.00 | 3.50 | n/a |"),
            "{table}"
        );
    }
}
