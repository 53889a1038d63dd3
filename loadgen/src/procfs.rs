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

/// From /proc/<pid>/stat: (CPU time, user + system, in clock ticks; start
/// time since boot in clock ticks, which tells a process from a later one
/// that got the same pid).
fn stat_times(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after its closing parenthesis
    // are fixed: utime and stime are the 12th and 13th of them, starttime
    // the 20th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((utime + stime, start))
}

/// The parent pid of `pid`, from /proc/<pid>/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether this kernel lists children in /proc/<pid>/task/<tid>/children
/// (CONFIG_PROC_CHILDREN).
fn kernel_lists_children() -> bool {
    static LISTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LISTS.get_or_init(|| {
        let me = std::process::id();
        std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists()
    })
}

/// The direct children of `pid`: from every thread's children list (a
/// child belongs to the thread that forked it).
fn children_listed(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Every live process under `roots`: the roots and all their descendants,
/// each once, in ascending order. Processes started since the last call
/// are found (a pool's replacement nodes, a server's worker processes).
pub fn process_trees(roots: &[u32]) -> Vec<u32> {
    let mut found: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let mut todo: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    // Without children lists: one pass over every process's parent.
    let by_parent: Option<std::collections::HashMap<u32, Vec<u32>>> = (!kernel_lists_children())
        .then(|| {
            let mut m: std::collections::HashMap<u32, Vec<u32>> = Default::default();
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if let Some(parent) = parent_of(pid) {
                    m.entry(parent).or_default().push(pid);
                }
            }
            m
        });
    while let Some(pid) = todo.pop() {
        if !found.insert(pid) {
            continue;
        }
        match &by_parent {
            Some(m) => todo.extend(m.get(&pid).into_iter().flatten()),
            None => todo.extend(children_listed(pid)),
        }
    }
    found.into_iter().collect()
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on every Linux we run on.
const TICKS_PER_S: f64 = 100.0;

/// Which processes a sampler reads.
enum Scope {
    /// These processes only.
    Processes(Vec<u32>),
    /// These processes and all their descendants, found anew each sample.
    Trees(Vec<u32>),
}

/// Samples the CPU use of a set of processes between calls.
pub struct CpuSampler {
    scope: Scope,
    /// The processes of the last sample.
    pids: Vec<u32>,
    /// CPU ticks of each process (by pid and start time) at the last sample.
    last_ticks: std::collections::HashMap<(u32, u64), u64>,
    last_at: Instant,
}

impl CpuSampler {
    /// Samples exactly `pids`.
    pub fn new(pids: Vec<u32>) -> CpuSampler {
        CpuSampler::start(Scope::Processes(pids))
    }

    /// Samples the process trees under `roots`: each root and every
    /// process descending from it, including those started later (a
    /// failover's backup nodes started by `pool local`, a node's stream
    /// workers) and without those that ended.
    pub fn trees(roots: Vec<u32>) -> CpuSampler {
        CpuSampler::start(Scope::Trees(roots))
    }

    fn start(scope: Scope) -> CpuSampler {
        let mut s = CpuSampler {
            scope,
            pids: Vec::new(),
            last_ticks: Default::default(),
            last_at: Instant::now(),
        };
        s.pids = s.current();
        s.last_ticks = read_ticks(&s.pids);
        s
    }

    fn current(&self) -> Vec<u32> {
        match &self.scope {
            Scope::Processes(pids) => pids.clone(),
            Scope::Trees(roots) => process_trees(roots),
        }
    }

    /// The processes the last sample read.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// CPU used since the previous call, in percent of one core (summed over
    /// the processes; 200 means two cores busy). A process that appeared
    /// since then counts all its CPU time (it started in between); one that
    /// ended counts nothing of its last interval (it cannot be read).
    pub fn sample(&mut self) -> f64 {
        self.pids = self.current();
        let ticks = read_ticks(&self.pids);
        let used: u64 = ticks
            .iter()
            .map(|(k, t)| t.saturating_sub(self.last_ticks.get(k).copied().unwrap_or(0)))
            .sum();
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64();
        self.last_ticks = ticks;
        self.last_at = now;
        if secs <= 0.0 {
            0.0
        } else {
            100.0 * (used as f64 / TICKS_PER_S) / secs
        }
    }

    /// Summed RSS of the processes of the last sample, in bytes.
    pub fn rss(&self) -> u64 {
        self.pids.iter().filter_map(|p| rss_bytes(*p)).sum()
    }
}

/// Samples the whole machine's CPU from the first line of /proc/stat:
/// every process, PostgreSQL included, and the kernel's interrupt and
/// softirq time that no process is charged with (on loopback, much of a
/// TCP send's cost is the receiver's softirq).
pub struct HostCpu {
    /// (busy, total) ticks at the last sample.
    last: Option<(u64, u64)>,
    cores: u32,
}

impl HostCpu {
    pub fn new(cores: u32) -> HostCpu {
        HostCpu {
            last: host_ticks(),
            cores: cores.max(1),
        }
    }

    /// The machine's busy CPU since the previous call, in percent of one
    /// core (200 means two cores busy), or 0 when /proc/stat is unreadable.
    pub fn sample(&mut self) -> f64 {
        let now = host_ticks();
        let pct = match (self.last, now) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                100.0 * f64::from(self.cores) * (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64
            }
            _ => 0.0,
        };
        self.last = now;
        pct
    }
}

/// (busy, total) CPU ticks of the machine; idle and iowait are not busy.
fn host_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_host_ticks(stat.lines().next()?)
}

fn parse_host_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user and nice).
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// CPU ticks of each of `pids` that can be read, by (pid, start time).
fn read_ticks(pids: &[u32]) -> std::collections::HashMap<(u32, u64), u64> {
    pids.iter()
        .filter_map(|p| stat_times(*p).map(|(ticks, start)| ((*p, start), ticks)))
        .collect()
}

/// What this machine is, from /proc and the kernel.
pub fn machine() -> scenarios::results::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo_field(&cpuinfo, "model name")
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
    let max_khz = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok());
    scenarios::results::Machine {
        hostname,
        cpu_model,
        cores,
        memory_gib: mem_kib / 1048576.0,
        kernel,
        fd_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0)),
        cpu_mhz: max_khz
            .map(|khz| khz / 1000.0)
            .or_else(|| cpuinfo_mhz(&cpuinfo)),
        virtual_machine: under_hypervisor(&cpuinfo),
    }
}

/// The value of the first processor's `key` line in /proc/cpuinfo.
fn cpuinfo_field<'a>(cpuinfo: &'a str, key: &str) -> Option<&'a str> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split(':').nth(1))
}

/// The first processor's clock as /proc/cpuinfo gives it (`cpu MHz`).
fn cpuinfo_mhz(cpuinfo: &str) -> Option<f64> {
    cpuinfo_field(cpuinfo, "cpu MHz")
        .and_then(|v| v.trim().parse().ok())
        .filter(|mhz: &f64| *mhz > 0.0)
}

/// Whether /proc/cpuinfo shows a hypervisor: on x86 the processor's
/// `hypervisor` flag, which every hypervisor sets for its guests and no
/// physical processor does. `None` where the file lists no flags (another
/// architecture, or no /proc): then it cannot be told.
fn under_hypervisor(cpuinfo: &str) -> Option<bool> {
    let flags = cpuinfo_field(cpuinfo, "flags")?;
    Some(flags.split_whitespace().any(|f| f == "hypervisor"))
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

    #[test]
    fn cpuinfo_tells_a_guest_and_its_clock() {
        let guest = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.140\n\
                     flags\t\t: fpu vme sse2 hypervisor lahf_lm\n";
        assert_eq!(under_hypervisor(guest), Some(true));
        assert_eq!(cpuinfo_mhz(guest), Some(2596.14));
        // A flag that only contains the word is not the flag.
        let bare = "cpu MHz\t\t: 0\nflags\t\t: fpu not_hypervisor sse2\n";
        assert_eq!(under_hypervisor(bare), Some(false));
        assert_eq!(cpuinfo_mhz(bare), None, "a clock of 0 is not known");
        // No flags line (another architecture): it cannot be told.
        assert_eq!(
            under_hypervisor("processor\t: 0\nBogoMIPS\t: 50.00\n"),
            None
        );
    }

    #[test]
    fn host_ticks_count_idle_and_iowait_as_not_busy() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let line = "cpu  100 5 20 1000 50 3 7 2 40 0";
        assert_eq!(parse_host_ticks(line), Some((137, 1187)));
        assert_eq!(parse_host_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_host_ticks("cpu  1 x 3 4 5"), None);
    }

    /// A shell in a process group of its own; the whole group is killed
    /// when the test ends, however it ends.
    struct Group(std::process::Child);

    impl Group {
        fn start(script: &str) -> Group {
            use std::os::unix::process::CommandExt as _;
            Group(
                std::process::Command::new("sh")
                    .args(["-c", script])
                    .process_group(0)
                    .spawn()
                    .expect("start sh"),
            )
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            let group = format!("-{}", self.0.id());
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &group])
                .status();
            let _ = self.0.wait();
        }
    }

    /// Waits (at most 10 s) until `done` holds.
    fn eventually(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_tree_holds_the_root_its_children_and_theirs() {
        // sh, two sleeps it starts, and a sleep started by a child shell.
        let sh = Group::start("sleep 30 & sleep 30 & sh -c 'sleep 30 & wait' & wait");
        let root = sh.pid();
        // The shells start their children on their own time.
        eventually(|| process_trees(&[root]).len() >= 5);
        let tree = process_trees(&[root]);
        assert_eq!(tree.len(), 5, "sh, 2 sleeps, sh, its sleep: {tree:?}");
        assert!(tree.contains(&root));
        for pid in &tree {
            let mut p = *pid;
            while p != root {
                p = parent_of(p).unwrap_or_else(|| panic!("{pid} left the tree"));
                assert_ne!(p, 0, "{pid} does not descend from {root}");
            }
        }
        // The sampler reads the same tree, not this process.
        let s = CpuSampler::trees(vec![root]);
        assert_eq!(s.pids(), tree.as_slice());
        assert!(!tree.contains(&std::process::id()));
        assert!(s.rss() > 0);
        // A root that is gone has no tree.
        drop(sh);
        assert!(process_trees(&[root]).is_empty());
    }

    #[test]
    fn a_process_started_under_a_root_after_the_last_sample_counts_its_cpu_time() {
        // An idle shell that, later, starts one that burns CPU.
        let sh = Group::start(
            "sleep 0.3; sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 30' & wait",
        );
        let mut s = CpuSampler::trees(vec![sh.pid()]);
        // A descendant that has used 50 ms of CPU: the burner.
        let burner = || {
            process_trees(&[sh.pid()])
                .into_iter()
                .filter(|p| *p != sh.pid())
                .find(|p| stat_times(*p).is_some_and(|(ticks, _)| ticks >= 5))
        };
        eventually(|| burner().is_some());
        let pid = burner().expect("the burner started and used CPU");
        assert!(!s.pids().contains(&pid), "the burner was there before");
        let pct = s.sample();
        assert!(s.pids().contains(&pid), "{:?}", s.pids());
        assert!(pct > 0.0, "cpu {pct}");
    }
}
