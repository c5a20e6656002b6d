//! Host-wide CPU time from `/proc/stat`, for the CPU cost of a run: the
//! system and softirq time that passed between two snapshots. It counts
//! every process on the host, so it is only meaningful as a ratio against
//! a baseline taken in the same run, on an otherwise quiet machine.

use anyhow::Context as _;

/// The `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub irq: u64,
    pub softirq: u64,
    /// Time the hypervisor ran something else on our virtual CPUs.
    pub steal: u64,
    pub total: u64,
}

impl CpuTimes {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&stat)
    }

    pub fn parse(stat: &str) -> anyhow::Result<Self> {
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no cpu line")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(Self {
            user: at(0) + at(1),
            system: at(2),
            idle: at(3) + at(4),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
            total: v.iter().take(8).sum(),
        })
    }

    /// System plus softirq seconds from `earlier` to `self`.
    pub fn sys_softirq_secs_since(&self, earlier: &Self) -> f64 {
        let ticks = (self.system + self.softirq).saturating_sub(earlier.system + earlier.softirq);
        ticks as f64 / clock_ticks_per_sec()
    }
}

impl CpuTimes {
    /// Steal seconds from `earlier` to `self`: a virtual machine's CPUs
    /// taken away by the host, which inflates every timing in between.
    pub fn steal_secs_since(&self, earlier: &Self) -> f64 {
        self.steal.saturating_sub(earlier.steal) as f64 / clock_ticks_per_sec()
    }
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cpu_line() {
        let stat = "cpu  10 1 20 300 4 5 6 7 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = CpuTimes::parse(stat).expect("parse");
        assert_eq!(
            (t.user, t.system, t.idle, t.irq, t.softirq),
            (11, 20, 304, 5, 6)
        );
        let later = CpuTimes {
            system: 120,
            softirq: 56,
            ..t
        };
        let secs = later.sys_softirq_secs_since(&t);
        assert!(secs > 0.0);
    }
}
