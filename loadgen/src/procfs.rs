//! CPU and resident memory of processes, read from /proc (Linux).

use std::time::Instant;

/// Resident set size of `pid` in bytes, from /proc/<pid>/status (VmRSS).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Soft open-file limit of `pid`, from /proc/<pid>/limits.
pub fn fd_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU time (user + system) of `pid` in clock ticks, from /proc/<pid>/stat.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after its closing parenthesis
    // are fixed: utime and stime are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on every Linux we run on.
const TICKS_PER_S: f64 = 100.0;

/// Samples the CPU use of a set of processes between calls.
pub struct CpuSampler {
    pids: Vec<u32>,
    last_ticks: u64,
    last_at: Instant,
}

impl CpuSampler {
    pub fn new(pids: Vec<u32>) -> CpuSampler {
        let last_ticks = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        CpuSampler {
            pids,
            last_ticks,
            last_at: Instant::now(),
        }
    }

    /// CPU used since the previous call, in percent of one core (summed over
    /// the processes; 200 means two cores busy).
    pub fn sample(&mut self) -> f64 {
        let ticks: u64 = self.pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64();
        let used = ticks.saturating_sub(self.last_ticks) as f64 / TICKS_PER_S;
        self.last_ticks = ticks;
        self.last_at = now;
        if secs <= 0.0 {
            0.0
        } else {
            100.0 * used / secs
        }
    }

    /// Summed RSS of the processes, in bytes.
    pub fn rss(&self) -> u64 {
        self.pids.iter().filter_map(|p| rss_bytes(*p)).sum()
    }
}

/// What this machine is, from /proc and the kernel.
pub fn machine() -> scenarios::results::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    scenarios::results::Machine {
        hostname,
        cpu_model,
        cores,
        memory_gib: mem_kib / 1048576.0,
        kernel,
        fd_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1024 * 1024);
        let mut s = CpuSampler::new(vec![me]);
        // Burn a little CPU so the sample has something to see.
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let pct = s.sample();
        // Only that it saw some use: how much depends on the machine's load.
        assert!(pct > 0.0, "cpu {pct}");
    }
}
