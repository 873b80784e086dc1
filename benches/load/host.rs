//! Host setup: pinning to cores, RLIMIT_NOFILE, finding binaries and free ports.

use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::parameters::WANTED_OPEN_FILES;
use crate::scenarios::RateRound;

/// The file `name` on `PATH` or in the sbin directories.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

fn cpus_allowed() -> String {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:")).map(|cpus| cpus.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Sets the cores every thread of `pid` may run on (`taskset -a -p -c CORES PID`).
fn set_cores(pid: u32, cores: &str) -> Result<(), String> {
    let output = Command::new("taskset").args(["-a", "-p", "-c", cores, &pid.to_string()]).output();
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!("taskset -c {cores} {pid}: {}", String::from_utf8_lossy(&output.stderr).trim())),
        Err(error) => Err(format!("taskset: {error}")),
    }
}

/// Runs `round` with this harness and the proxy `pid` (if any) free to run on cores 0 and 1, then pins them back
/// (harness on 0, proxy on 1). Sharing cores, a request need not wake an idle core to reach the other process.
pub async fn on_shared_cores(pid: Option<u32>, round: impl Future<Output = RateRound>) -> RateRound {
    let harness = std::process::id();
    let moved: Result<(), String> = pid.into_iter().chain([harness]).try_for_each(|pid| set_cores(pid, "0,1"));
    if let Err(error) = moved {
        panic!("could not unpin for the shared-cores round: {error}");
    }
    let result = round.await;
    let restored = set_cores(harness, "0").and_then(|()| pid.map_or(Ok(()), |pid| set_cores(pid, "1")));
    restored.unwrap_or_else(|error| panic!("could not pin back after the shared-cores round: {error}"));
    result
}

/// Pins this process (all threads; called before the runtime starts) to core 0; says how it went.
pub fn pin_self(cores: usize, have_taskset: bool) -> String {
    if cores < 2 {
        return format!("not pinned: only {cores} core(s) available (allowed: {})", cpus_allowed());
    }
    if !have_taskset {
        return "not pinned: taskset not found".into();
    }
    let output = Command::new("taskset").args(["-a", "-p", "-c", "0", &std::process::id().to_string()]).output();
    match output {
        Ok(output) if output.status.success() => {
            format!("core 0 (`taskset -a -p -c 0`; Cpus_allowed_list now {})", cpus_allowed())
        }
        Ok(output) => format!("not pinned: taskset failed: {}", String::from_utf8_lossy(&output.stderr).trim()),
        Err(error) => format!("not pinned: {error}"),
    }
}

/// RLIMIT_NOFILE of this process: (soft, hard).
fn open_file_limits() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next()?.parse().ok()?;
    let hard = fields.next()?.parse().ok()?;
    Some((soft, hard))
}

/// Raises RLIMIT_NOFILE of this process with `prlimit` (children inherit it): the limit it got, and what to print.
/// `need`: descriptors the run needs in this process (scenario d's tunnels, the soak's held connections).
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
            before.map_or(WANTED_OPEN_FILES, |(_, hard)| hard.min(WANTED_OPEN_FILES)),
            before.map_or(WANTED_OPEN_FILES, |(_, hard)| hard)
        ),
    ] {
        match Command::new("prlimit").args(["--pid", &pid, &spec]).output() {
            Ok(output) if output.status.success() => break,
            Ok(output) => {
                let _ = write!(how, "prlimit {spec}: {}; ", String::from_utf8_lossy(&output.stderr).trim());
            }
            Err(error) => {
                let _ = write!(how, "prlimit: {error}; ");
                break;
            }
        }
    }
    let now = open_file_limits().map_or(0, |(soft, _)| soft);
    if now >= WANTED_OPEN_FILES {
        (now, format!("{now} (raised with prlimit)"))
    } else {
        let verdict = if now >= need {
            format!("enough for this run, which needs about {need}")
        } else {
            format!("TOO LOW for this run, which needs about {need}")
        };
        (
            now,
            format!("{now}: could not raise it to {WANTED_OPEN_FILES} ({how}run under `ulimit -n {WANTED_OPEN_FILES}`); {verdict}"),
        )
    }
}

/// `TOLLGATE_BIN`, else the release build.
pub fn tollgate_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(binary);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let binary = PathBuf::from(dir).join("release/tollgate");
        if binary.is_file() {
            return binary;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tollgate")
}

/// The first line `command ARGS` prints (its version).
pub fn first_line(command: &Path, args: &[&str]) -> String {
    Command::new(command)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|output| {
            let mut text = String::from_utf8_lossy(&output.stdout).to_string();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| "version unknown".into())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| format!("no free port: {error}"))?;
    Ok(listener.local_addr().map_err(|error| format!("no free port: {error}"))?.port())
}
