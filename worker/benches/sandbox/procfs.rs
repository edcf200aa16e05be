//! What the kernel says this process used: CPU time (to the nanosecond, from
//! `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`) split into user and kernel (clock ticks,
//! from `/proc/self/stat`), and resident memory (`/proc/self/status`). No `unsafe`
//! getrusage call is needed, and getrusage would not split finer: Linux derives its
//! user/system split from the same tick samples, scaled to the precise total.

use rustix::time::{ClockId, clock_gettime};

/// CPU time of the whole process (every thread, live or exited).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// Time in user mode, clock ticks (10 ms).
    pub user: u64,
    /// Time in the kernel, clock ticks.
    pub system: u64,
    /// User plus kernel, nanoseconds.
    pub total_ns: u64,
}

impl Cpu {
    /// The process's CPU time so far.
    pub fn now() -> Cpu {
        let clock = clock_gettime(ClockId::ProcessCPUTime);
        let total_ns = (clock.tv_sec as u64) * 1_000_000_000 + clock.tv_nsec as u64;
        let (user, system) = Self::ticks();
        Cpu {
            user,
            system,
            total_ns,
        }
    }

    /// User and kernel clock ticks so far (`/proc/self/stat` fields 14 and 15).
    fn ticks() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // The command name may hold spaces; the fields after it are fixed.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
        // After the name: state is index 0, so utime (field 14) is 11 and stime 12.
        (field(11), field(12))
    }

    /// The time used since `earlier`.
    pub fn since(earlier: Cpu) -> Cpu {
        let now = Cpu::now();
        Cpu {
            user: now.user.saturating_sub(earlier.user),
            system: now.system.saturating_sub(earlier.system),
            total_ns: now.total_ns.saturating_sub(earlier.total_ns),
        }
    }

    /// User plus kernel time, in microseconds.
    pub fn total_us(&self) -> f64 {
        self.total_ns as f64 / 1_000.0
    }

    /// User plus kernel clock ticks (`USER_HZ` is 100 on every Linux architecture this
    /// bench runs on): the resolution of [`Self::kernel_share`] is one in this many.
    pub fn ticks_total(&self) -> u64 {
        self.user + self.system
    }

    /// The kernel's share of the CPU time, 0–1, to one clock tick: see
    /// [`share_text`].
    pub fn kernel_share(&self) -> f64 {
        let total = self.user + self.system;
        if total == 0 {
            0.0
        } else {
            self.system as f64 / total as f64
        }
    }
}

/// Resident memory of this process, in KiB: (`VmRSS`, `RssAnon`, `RssFile`).
pub fn rss_kib() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

/// The load average over the last minute, for labelling figures taken on a busy machine.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A kernel share for a table: `< 1%` when no kernel tick was seen in a sample of at
/// least 100 ticks (the share is counted in whole ticks, so "0.0%" would claim more
/// than the clock shows), else the share to a tenth of a percent.
pub fn share_text(share: f64) -> String {
    if share == 0.0 {
        "< 1%".to_owned()
    } else {
        format!("{:.1}%", share * 100.0)
    }
}
