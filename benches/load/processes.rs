//! Child processes: a registry of their pids (for Ctrl-C), guards that kill a proxy or helper and its descendants
//! when dropped (also on panic), and readings from /proc (process tree, RSS, CPU time).

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use crate::options::Target;

/// Pids of running children, killed by the Ctrl-C handler.
pub static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Adds `pid` to `CHILD_PIDS`.
pub fn register_pid(pid: u32) {
    if let Ok(mut pids) = CHILD_PIDS.lock() {
        pids.push(pid);
    }
}

fn unregister_pid(pid: u32) {
    if let Ok(mut pids) = CHILD_PIDS.lock() {
        pids.retain(|registered| *registered != pid);
    }
}

/// `(pid, parent pid)` of every process in /proc.
fn process_table() -> Vec<(u32, u32)> {
    let mut table = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return table;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
            continue;
        };
        if let Some(parent) = rest.split_whitespace().nth(1).and_then(|field| field.parse().ok()) {
            table.push((pid, parent));
        }
    }
    table
}

/// `root` and all its descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let table = process_table();
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() && tree.len() < 100_000 {
        let parent = tree[next];
        for (pid, parent_pid) in &table {
            if *parent_pid == parent && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        next += 1;
    }
    tree
}

/// `kill -KILL` for every pid.
pub fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(|pid| pid.to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `VmRSS` of one process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Summed `VmRSS` of a process and its descendants, KiB, and the number of processes.
pub fn tree_rss_kib(root: u32) -> Option<(u64, usize)> {
    let pids = process_tree(root);
    let mut total = 0;
    let mut processes = 0;
    for pid in pids {
        if let Some(kib) = rss_kib(pid) {
            total += kib;
            processes += 1;
        }
    }
    (processes > 0).then_some((total, processes))
}

/// On-CPU and runnable-but-waiting time of a process and its descendants, all threads, ns
/// (`/proc/PID/task/TID/schedstat`; threads that ended are not counted).
pub fn tree_cpu_ns(root: u32) -> (u64, u64) {
    process_tree(root)
        .into_iter()
        .map(process_cpu_ns)
        .fold((0, 0), |(running, waiting), (r, w)| (running + r, waiting + w))
}

/// On-CPU and runnable-but-waiting time of one process (all its threads, not its children), ns.
pub fn process_cpu_ns(pid: u32) -> (u64, u64) {
    let (mut running, mut waiting) = (0, 0);
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let Ok(schedstat) = fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut fields = schedstat.split_whitespace().map(|field| field.parse::<u64>().unwrap_or(0));
        running += fields.next().unwrap_or(0);
        waiting += fields.next().unwrap_or(0);
    }
    (running, waiting)
}

/// The last `max` bytes of a log file, on one line.
pub fn log_tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let from = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[from..]).trim().replace('\n', " | ")
}

/// Kills `child` and its descendants, and reaps it.
fn kill_tree(child: &mut Child) {
    let pid = child.id();
    let tree = process_tree(pid);
    kill_pids(&tree[1..]);
    let _ = child.kill();
    let _ = child.wait();
    unregister_pid(pid);
}

/// A running proxy. Dropping it kills the process and its descendants.
pub struct Proxy {
    pub target: Target,
    pub child: Child,
    /// Where it listens (its first listener).
    pub address: SocketAddr,
    /// Its standard output and error.
    pub log: PathBuf,
}

impl Proxy {
    /// Its process id (with `taskset`, that of the proxy itself: taskset execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its output, and of the log files some proxies write next to it.
    pub fn tail(&self) -> String {
        let mut tail = log_tail(&self.log, 600);
        for extra in ["cache.log", "tinyproxy.log"] {
            let file = self.log.with_file_name(extra);
            if file.exists() {
                let _ = write!(tail, " | {extra}: {}", log_tail(&file, 400));
            }
        }
        tail
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// A running helper (redis-server). Dropping it kills the process and its descendants.
pub struct Daemon {
    pub child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}
