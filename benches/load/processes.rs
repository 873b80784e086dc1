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

pub fn register_pid(pid: u32) {
    if let Ok(mut v) = CHILD_PIDS.lock() {
        v.push(pid);
    }
}

pub fn unregister_pid(pid: u32) {
    if let Ok(mut v) = CHILD_PIDS.lock() {
        v.retain(|p| *p != pid);
    }
}

/// `(pid, ppid)` of every process in /proc.
pub fn process_table() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// `root` and all its descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let table = process_table();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() && tree.len() < 100_000 {
        let parent = tree[i];
        for (pid, ppid) in &table {
            if *ppid == parent && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    tree
}

pub fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(|p| p.to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `VmRSS` of one process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Summed `VmRSS` of a process and its descendants, KiB, and the number of processes.
pub fn tree_rss_kib(root: u32) -> Option<(u64, usize)> {
    let pids = process_tree(root);
    let mut total = 0;
    let mut n = 0;
    for pid in pids {
        if let Some(kib) = rss_kib(pid) {
            total += kib;
            n += 1;
        }
    }
    (n > 0).then_some((total, n))
}

/// On-CPU and runnable-but-waiting time of a process and its descendants, all threads, ns
/// (`/proc/PID/task/TID/schedstat`; threads that ended are not counted).
pub fn tree_cpu_ns(root: u32) -> (u64, u64) {
    let (mut run, mut wait) = (0, 0);
    for pid in process_tree(root) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(stat) = fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut it = stat.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
            run += it.next().unwrap_or(0);
            wait += it.next().unwrap_or(0);
        }
    }
    (run, wait)
}

pub fn log_tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let from = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[from..]).trim().replace('\n', " | ")
}

/// A running proxy. Dropping it kills the process and its descendants.
pub struct Proxy {
    pub kind: Target,
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its output, and of the log files some proxies write next to it.
    pub fn tail(&self) -> String {
        let mut t = log_tail(&self.log, 600);
        for extra in ["cache.log", "tinyproxy.log"] {
            let f = self.log.with_file_name(extra);
            if f.exists() {
                let _ = write!(t, " | {extra}: {}", log_tail(&f, 400));
            }
        }
        t
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pid = self.child.id();
        let tree = process_tree(pid);
        kill_pids(&tree[1..]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister_pid(pid);
    }
}

/// A running helper (redis-server). Dropping it kills the process and its descendants.
pub struct Daemon {
    pub child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id();
        let tree = process_tree(pid);
        kill_pids(&tree[1..]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister_pid(pid);
    }
}
