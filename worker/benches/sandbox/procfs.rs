//! What the kernel says this process used: CPU time split into user and kernel, and
//! resident memory (from `/proc/self`, so no `unsafe` getrusage call is needed).

/// CPU time of the whole process (every thread, live or exited), in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// Time in user mode.
    pub user: u64,
    /// Time in the kernel.
    pub system: u64,
}

impl Cpu {
    /// The process's CPU time so far (`/proc/self/stat` fields 14 and 15).
    pub fn now() -> Cpu {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // The command name may hold spaces; the fields after it are fixed.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
        // After the name: state is index 0, so utime (field 14) is 11 and stime 12.
        Cpu {
            user: field(11),
            system: field(12),
        }
    }

    /// The time used since `earlier`.
    pub fn since(earlier: Cpu) -> Cpu {
        let now = Cpu::now();
        Cpu {
            user: now.user.saturating_sub(earlier.user),
            system: now.system.saturating_sub(earlier.system),
        }
    }

    /// User plus kernel time, in microseconds (clock ticks are 10 ms: `USER_HZ` is 100
    /// on every Linux architecture this bench runs on).
    pub fn total_us(&self) -> f64 {
        (self.user + self.system) as f64 * 10_000.0
    }

    /// The kernel's share of the CPU time, 0–1.
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
