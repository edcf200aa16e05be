//! CPU time spent by the processes a bench run measures: worker processes and the bench
//! itself from `/proc/<pid>/stat` (utime + stime: every thread of the process, in clock
//! ticks), and redis-server from its own `INFO cpu` (`used_cpu_user`/`used_cpu_sys`:
//! the server's getrusage, every thread, in microseconds; read over the connection, so
//! it works for a server on another machine too).

use std::process::Command;
use std::time::Duration;

/// User and kernel CPU time of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Time in user mode.
    pub user: Duration,
    /// Time in the kernel on the process's behalf.
    pub system: Duration,
}

impl CpuTime {
    /// User plus kernel time.
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The CPU time spent between `earlier` and this reading.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl std::iter::Sum for CpuTime {
    fn sum<I: Iterator<Item = CpuTime>>(iter: I) -> Self {
        iter.fold(CpuTime::default(), |a, b| CpuTime {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// Why a process's CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// `/proc/<pid>/stat` or its task list could not be read (the process is gone, or
    /// no procfs).
    #[error("reading /proc/{pid}: {source}")]
    Read {
        /// The process.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` or a thread's `status` is not in the documented format.
    #[error("/proc/{pid}: no utime/stime or ctxt_switches fields")]
    Format {
        /// The process.
        pid: u32,
    },
}

/// The length of a clock tick (`getconf CLK_TCK`; Linux's USER_HZ of 100 when getconf
/// is missing): the unit of `/proc/<pid>/stat`'s times.
pub fn clock_tick() -> Duration {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Duration::from_nanos(1_000_000_000 / hz)
}

/// CPU time of process `pid` so far.
pub fn process(pid: u32, tick: Duration) -> Result<CpuTime, CpuError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| CpuError::Read { pid, source })?;
    parse_stat(&stat, tick).ok_or(CpuError::Format { pid })
}

/// utime and stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn parse_stat(stat: &str, tick: Duration) -> Option<CpuTime> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = |n: u64| Duration::from_nanos((tick.as_nanos() as u64).saturating_mul(n));
    Some(CpuTime {
        user: ticks(utime),
        system: ticks(stime),
    })
}

/// Context switches (voluntary + nonvoluntary) of process `pid`'s live threads so far,
/// summed over `/proc/<pid>/task/*/status` (a process's own `status` counts its main
/// thread only; threads that have exited are not counted).
pub fn context_switches(pid: u32) -> Result<u64, CpuError> {
    let dir = format!("/proc/{pid}/task");
    let read = |source| CpuError::Read { pid, source };
    let mut total = 0u64;
    for entry in std::fs::read_dir(&dir).map_err(read)? {
        let path = entry.map_err(read)?.path().join("status");
        // A thread that exited since the listing has nothing left to count.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        total = total.saturating_add(parse_switches(&status).ok_or(CpuError::Format { pid })?);
    }
    Ok(total)
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of a `status` file.
fn parse_switches(status: &str) -> Option<u64> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse::<u64>()
            .ok()
    };
    Some(field("voluntary_ctxt_switches")? + field("nonvoluntary_ctxt_switches")?)
}

/// redis-server's CPU time from the text of `INFO cpu`.
pub fn from_redis_info(info: &str) -> Option<CpuTime> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(Duration::from_secs_f64)
    };
    Some(CpuTime {
        user: field("used_cpu_user")?,
        system: field("used_cpu_sys")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat =
            "4242 (sluice (w) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        let cpu = parse_stat(stat, Duration::from_millis(10)).unwrap();
        assert_eq!(cpu.user, Duration::from_millis(2500));
        assert_eq!(cpu.system, Duration::from_millis(750));
        assert_eq!(parse_stat("1 (x) S 1 2", Duration::from_millis(10)), None);
    }

    #[test]
    fn context_switches_are_both_kinds() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_switches(status), Some(127));
        assert_eq!(parse_switches("Name:\tx\n"), None);
        assert!(context_switches(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn own_process_has_a_cpu_time() {
        let tick = clock_tick();
        assert!(tick > Duration::ZERO);
        process(std::process::id(), tick).unwrap();
    }

    #[test]
    fn redis_info_cpu_is_read() {
        let info = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:0.000000\r\n";
        let cpu = from_redis_info(info).unwrap();
        assert_eq!(cpu.system, Duration::from_millis(1500));
        assert_eq!(cpu.user, Duration::from_millis(2250));
        assert_eq!(cpu.total(), Duration::from_millis(3750));
        assert_eq!(from_redis_info("# CPU\r\n"), None);
    }

    #[test]
    fn since_and_sum() {
        let a = CpuTime {
            user: Duration::from_secs(3),
            system: Duration::from_secs(1),
        };
        let b = CpuTime {
            user: Duration::from_secs(1),
            system: Duration::from_secs(1),
        };
        assert_eq!(a.since(b).total(), Duration::from_secs(2));
        assert_eq!(
            [a, b].into_iter().sum::<CpuTime>().total(),
            Duration::from_secs(6)
        );
    }
}
