//! Where a phase's CPU went: the nodes' and the load tester's own CPU time
//! per acknowledged message, and how busy the machine was (with the time
//! the hypervisor took away, `steal`), read from Linux's `/proc`. On a
//! shared 2-core machine the throughput of one phase moves by 10-20%; the
//! CPU a message costs moves much less, so it says whether a change made
//! the work cheaper.

use serde_json::json;

/// CPU counters at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// utime + stime of each watched process, in clock ticks.
    procs: Vec<u64>,
    /// This process's utime + stime.
    own: u64,
    /// The machine's counters (`cpu` line of /proc/stat): busy, idle, steal.
    busy: u64,
    idle: u64,
    steal: u64,
}

/// CPU use between two samples, per message.
#[derive(Clone, Debug)]
pub struct CpuUse {
    pub node_us_per_msg: f64,
    pub tester_us_per_msg: f64,
    /// Shares of the machine's time over the phase.
    pub idle: f64,
    pub steal: f64,
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn proc_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (busy, idle, steal) from the first line of `/proc/stat`.
fn machine_ticks(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    let steal = v.get(7).copied().unwrap_or(0);
    let busy = v.iter().take(7).sum::<u64>() - idle;
    Some((busy, idle, steal))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}

impl Sample {
    /// Reads the counters of `pids` and of this process; `None` where
    /// `/proc` cannot be read (not Linux).
    pub fn take(pids: &[u32]) -> Option<Sample> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let procs = pids
            .iter()
            .map(|p| read(&format!("/proc/{p}/stat")).and_then(|s| proc_ticks(&s)))
            .collect::<Option<Vec<u64>>>()?;
        let own = proc_ticks(&read("/proc/self/stat")?)?;
        let (busy, idle, steal) = machine_ticks(&read("/proc/stat")?)?;
        Some(Sample {
            procs,
            own,
            busy,
            idle,
            steal,
        })
    }

    /// What was used from `before` to `self`, over `msgs` messages.
    pub fn since(&self, before: &Sample, msgs: u64) -> CpuUse {
        let us = 1e6 / ticks_per_second() / msgs.max(1) as f64;
        let nodes: u64 = self
            .procs
            .iter()
            .zip(&before.procs)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        let all = (self.busy + self.idle + self.steal)
            .saturating_sub(before.busy + before.idle + before.steal)
            .max(1) as f64;
        CpuUse {
            node_us_per_msg: nodes as f64 * us,
            tester_us_per_msg: self.own.saturating_sub(before.own) as f64 * us,
            idle: self.idle.saturating_sub(before.idle) as f64 / all,
            steal: self.steal.saturating_sub(before.steal) as f64 / all,
        }
    }
}

impl CpuUse {
    pub fn line(&self) -> String {
        format!(
            "CPU per message: nodes {:.1} µs, load tester {:.1} µs; machine idle {:.0}%, stolen {:.0}%",
            self.node_us_per_msg,
            self.tester_us_per_msg,
            self.idle * 100.0,
            self.steal * 100.0
        )
    }
    pub fn json(&self) -> serde_json::Value {
        json!({"node_us_per_msg": self.node_us_per_msg, "tester_us_per_msg": self.tester_us_per_msg,
               "idle": self.idle, "steal": self.steal})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis in it.
        let line = "4242 (threadline (x) y) S 1 4242 4242 0 -1 4194560 9 0 0 0 \
                    1234 567 0 0 20 0 8 0 100 0 0";
        assert_eq!(proc_ticks(line), Some(1234 + 567));
        assert_eq!(proc_ticks("garbage"), None);
    }

    #[test]
    fn machine_counters_split_busy_idle_and_steal() {
        let stat = "cpu  100 5 50 800 20 3 7 15 0 0\ncpu0 1 2 3\n";
        // busy: user+nice+system+irq+softirq; idle: idle+iowait.
        assert_eq!(machine_ticks(stat), Some((165, 820, 15)));
    }
}
