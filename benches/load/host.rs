//! Host setup: pinning to cores, RLIMIT_NOFILE, finding binaries and free ports.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::parameters::WANTED_OPEN_FILES;
use crate::scenarios::RateRound;

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn cpus_allowed() -> String {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

/// Sets the cores every thread of `pid` may run on (`taskset -a -p -c CORES PID`).
pub fn set_cores(pid: u32, cores: &str) -> Result<(), String> {
    let out = Command::new("taskset").args(["-a", "-p", "-c", cores, &pid.to_string()]).output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("taskset -c {cores} {pid}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("taskset: {e}")),
    }
}

/// Runs `round` with this harness and the proxy `pid` (if any) free to run on cores 0 and 1, then pins them back
/// (harness on 0, proxy on 1). Sharing cores, a request need not wake an idle core to reach the other process.
pub async fn on_shared_cores(pid: Option<u32>, round: impl std::future::Future<Output = RateRound>) -> RateRound {
    let me = std::process::id();
    let moved: Result<(), String> = pid.into_iter().chain([me]).try_for_each(|p| set_cores(p, "0,1"));
    if let Err(e) = moved {
        panic!("could not unpin for the shared-cores round: {e}");
    }
    let result = round.await;
    let restored = set_cores(me, "0").and_then(|()| pid.map_or(Ok(()), |p| set_cores(p, "1")));
    restored.unwrap_or_else(|e| panic!("could not pin back after the shared-cores round: {e}"));
    result
}

/// Pins this process (all threads; called before the runtime starts) to core 0.
pub fn pin_self(cores: usize, have_taskset: bool) -> String {
    if cores < 2 {
        return format!("not pinned: only {cores} core(s) available (allowed: {})", cpus_allowed());
    }
    if !have_taskset {
        return "not pinned: taskset not found".into();
    }
    let out = Command::new("taskset").args(["-a", "-p", "-c", "0", &std::process::id().to_string()]).output();
    match out {
        Ok(o) if o.status.success() => {
            format!("core 0 (`taskset -a -p -c 0`; Cpus_allowed_list now {})", cpus_allowed())
        }
        Ok(o) => format!("not pinned: taskset failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("not pinned: {e}"),
    }
}

pub fn open_file_limits() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let soft = it.next()?.parse().ok()?;
    let hard = it.next()?.parse().ok()?;
    Some((soft, hard))
}

/// Raises RLIMIT_NOFILE of this process with `prlimit` (children inherit it).
/// `need`: descriptors scenario d needs in this process.
pub fn raise_open_file_limit(need: u64) -> (u64, String) {
    let pid = std::process::id().to_string();
    let before = open_file_limits();
    if let Some((soft, _)) = before {
        if soft >= WANTED_OPEN_FILES {
            return (soft, format!("{soft} (already)"));
        }
    }
    let mut how = String::new();
    for spec in [
        format!("--nofile={WANTED_OPEN_FILES}:{WANTED_OPEN_FILES}"),
        // Without privileges, at least raise the soft limit to the hard one.
        format!(
            "--nofile={}:{}",
            before.map_or(WANTED_OPEN_FILES, |(_, h)| h.min(WANTED_OPEN_FILES)),
            before.map_or(WANTED_OPEN_FILES, |(_, h)| h)
        ),
    ] {
        match Command::new("prlimit").args(["--pid", &pid, &spec]).output() {
            Ok(o) if o.status.success() => break,
            Ok(o) => {
                let _ = write!(how, "prlimit {spec}: {}; ", String::from_utf8_lossy(&o.stderr).trim());
            }
            Err(e) => {
                let _ = write!(how, "prlimit: {e}; ");
                break;
            }
        }
    }
    let now = open_file_limits().map_or(0, |(s, _)| s);
    if now >= WANTED_OPEN_FILES {
        (now, format!("{now} (raised with prlimit)"))
    } else {
        let verdict = if now >= need {
            "enough for scenario d".to_string()
        } else {
            format!("TOO LOW for scenario d, which needs about {need}")
        };
        (
            now,
            format!("{now}: could not raise it to {WANTED_OPEN_FILES} ({how}run under `ulimit -n {WANTED_OPEN_FILES}`); {verdict}"),
        )
    }
}

pub fn tollgate_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir).join("release/tollgate");
        if p.is_file() {
            return p;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tollgate")
}

pub fn first_line(cmd: &Path, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "version unknown".into())
}

pub fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub fn port() -> Result<u16, String> {
    free_port().map_err(|e| format!("no free port: {e}"))
}
