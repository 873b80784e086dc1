//! Load harness: tollgate against a direct connection, squid and tinyproxy, all on 127.0.0.1.
//!
//! ```text
//! cargo build --release
//! cargo bench --bench load -- [--quick] [--only NAME[,NAME...]] [--rounds N] [--tunnels N]
//! ```
//!
//! `NAME` is a target (`direct`, `tollgate`, `squid`, `tinyproxy`) or a scenario (`a`, `b`, `c`,
//! `d`, or `keepalive`, `connect`, `bulk`, `rss`; tollgate only: `tls`, `limits`, `redis`,
//! `reload`). With no target named every target runs; with no scenario named every scenario runs.
//! See `docs/BENCHMARKS.md` for the method.
//!
//! The tollgate-only scenarios compare tollgate with itself (a feature on against off, measured
//! in one run, rounds alternating) and print a second table: `tls` the TLS listener against the
//! plain one and full TLS/mTLS handshakes, `limits` team and org/user limits against none,
//! `redis` limits in Redis against the embedded backend (needs `redis-server`), `reload` a config
//! of 10,000 rules reloaded every second under load.
//!
//! The interception scenarios (`intercept`, `sse`) send Messages API requests to an in-process stub
//! (`POST /v1/messages`, JSON or SSE) through tollgate's intercepted tunnels, straight to the stub
//! (plain and TLS) and through mitmproxy (`mitmdump`, if installed), and print a third table:
//! `intercept` non-streamed requests back to back and paced at 500 req/s, and the first handshake
//! to a new host against a cached one; `sse` the time to the first event and each event's delay.
//!
//! The harness (load generator and origin server, one tokio thread) pins itself to core 0; each
//! proxy runs alone, pinned to core 1. The paced rounds run twice: so pinned, and with the harness
//! and the proxy both free to run on either core, as a sidecar beside its client is. Every load loop is bounded by time and by a count, every
//! network operation has a timeout, and proxies are killed when their guard is dropped (also on
//! panic and on Ctrl-C).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// Body size of `GET /` on the origin.
const SMALL_BODY_LENGTH: usize = 100;
/// Body size of `GET /bulk` on the origin (1 GiB).
const BULK_LENGTH: u64 = 1 << 30;
/// Read buffer of the bulk download.
const BULK_READ_BUFFER: usize = 256 * 1024;
/// Read buffer of the request/response scenarios.
const SMALL_READ_BUFFER: usize = 16 * 1024;
/// Scenario a: concurrent keep-alive connections.
const KEEP_ALIVE_CONNECTIONS: usize = 32;
/// Scenario b: concurrent CONNECT + GET + close workers.
const CONNECT_WORKERS: usize = 16;
/// Scenario d: concurrent openers.
const TUNNEL_OPENERS: usize = 64;
/// Hard cap on requests in one round of scenario a (the time bound normally ends it first).
const KEEP_ALIVE_MAX_REQUESTS: u64 = 5_000_000;
/// Hard cap on operations in one round of scenario b.
const CONNECT_MAX_OPERATIONS: u64 = 1_000_000;
/// Hard cap on recorded latencies per worker (memory bound).
const MAX_SAMPLES_PER_WORKER: usize = 1_000_000;
/// A worker gives up after this many errors in one round.
const MAX_ERRORS_PER_WORKER: u64 = 200;
/// Timeout of one request/response exchange (including connect).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one 1 GiB download.
const BULK_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed to open all idle tunnels of scenario d.
const TUNNELS_OPEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Readiness: connect attempts, 100 ms apart.
const READY_ATTEMPTS: u32 = 150;
/// RLIMIT_NOFILE the harness asks for (5,000 tunnels need ~10,000 descriptors on each side).
const WANTED_OPEN_FILES: u64 = 65536;
/// Pause between rounds, so closing sockets of one round do not load the next.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Largest request body the in-process servers read.
const MAX_REQUEST_BODY: u64 = 1 << 20;
/// Scenarios intercept and sse: the host tollgate and mitmproxy intercept, and the domain whose names scenario
/// intercept uses to make tollgate and mitmproxy mint a leaf.
const API_HOST: &str = "api.anthropic.com";
const MINT_DOMAIN: &str = "mint.example.com";
/// Scenario intercept: keep-alive tunnels sending requests back to back.
const INTERCEPT_TUNNELS: usize = 32;
/// Scenario intercept, paced: requests/s, evenly spaced, over this many keep-alive tunnels.
const PACED_RATE: u32 = 500;
const PACED_TUNNELS: usize = 8;
/// A paced request sent later than this after its slot is counted as late (tokio's timer has 1 ms ticks).
const PACE_SLACK: Duration = Duration::from_millis(2);
/// Scenario intercept: new hosts per round, each opened twice (CONNECT + TLS handshake): minted, then cached.
const MINT_HOSTS: usize = 20;
/// Scenario sse: concurrent keep-alive connections, each asking for one streamed response after the other.
const SSE_CONNECTIONS: usize = 4;
/// Scenario sse: `content_block_delta` events per response, and the stub's gap between events.
const SSE_DELTAS: usize = 20;
const SSE_GAP: Duration = Duration::from_millis(2);
/// Hard cap on streamed responses in one round of scenario sse.
const SSE_MAX_STREAMS: u64 = 100_000;

// ---------------------------------------------------------------------------------------------
// Targets, scenarios, options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Target {
    Direct,
    Tollgate,
    Squid,
    Tinyproxy,
    /// mitmproxy's `mitmdump`: only in scenarios intercept and sse (not one of `ALL`, the first table's columns).
    Mitmproxy,
}

impl Target {
    const ALL: [Target; 4] = [Target::Direct, Target::Tollgate, Target::Squid, Target::Tinyproxy];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Tollgate => "tollgate",
            Target::Squid => "squid",
            Target::Tinyproxy => "tinyproxy",
            Target::Mitmproxy => "mitmproxy",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Scenario {
    /// a: keep-alive GETs through the proxy (absolute-form), req/s and latency.
    KeepAlive,
    /// b: connect, CONNECT, one GET inside the tunnel, close; operations/s.
    ConnectGetClose,
    /// c: 1 GiB through one tunnel, MiB/s.
    Bulk,
    /// d: the proxy's RSS per idle tunnel.
    IdleTunnels,
    /// tollgate only: the TLS listener against the plain one (e, f), TLS and mTLS handshakes (g, h).
    Tls,
    /// tollgate only: scenario a with team and org/user limits against the same without.
    Limits,
    /// tollgate only: scenario a with limits in Redis against the embedded backend.
    Redis,
    /// tollgate only: scenario a with 10,000 allow rules while the config is reloaded once a second.
    Reload,
    /// Interception: non-streamed Messages API requests through intercepted tunnels, back to back and paced,
    /// and leaf minting; against the stub direct (plain and TLS) and mitmproxy.
    Intercept,
    /// Interception: streamed (SSE) responses, time to first event and per-event delay; same comparison.
    Sse,
}

impl Scenario {
    const ALL: [Scenario; 10] = [
        Scenario::KeepAlive,
        Scenario::ConnectGetClose,
        Scenario::Bulk,
        Scenario::IdleTunnels,
        Scenario::Tls,
        Scenario::Limits,
        Scenario::Redis,
        Scenario::Reload,
        Scenario::Intercept,
        Scenario::Sse,
    ];
    /// The scenarios that compare targets (the first table); the others are tollgate's features.
    const COMPARING_TARGETS: [Scenario; 4] =
        [Scenario::KeepAlive, Scenario::ConnectGetClose, Scenario::Bulk, Scenario::IdleTunnels];

    fn parse(s: &str) -> Option<Scenario> {
        match s {
            "a" | "keepalive" | "keep-alive" => Some(Scenario::KeepAlive),
            "b" | "connect" | "cc" => Some(Scenario::ConnectGetClose),
            "c" | "bulk" | "throughput" => Some(Scenario::Bulk),
            "d" | "rss" | "memory" => Some(Scenario::IdleTunnels),
            "tls" | "e" | "f" | "g" | "h" => Some(Scenario::Tls),
            "limits" => Some(Scenario::Limits),
            "redis" => Some(Scenario::Redis),
            "reload" => Some(Scenario::Reload),
            "intercept" | "interception" | "mint" | "paced" => Some(Scenario::Intercept),
            "sse" | "stream" | "streaming" => Some(Scenario::Sse),
            _ => None,
        }
    }
}

/// One row of the result table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Metric {
    KeepAliveRate,
    KeepAliveP50,
    KeepAliveP99,
    ConnectRate,
    BulkThroughput,
    RssPerTunnel,
}

impl Metric {
    const ALL: [Metric; 6] = [
        Metric::KeepAliveRate,
        Metric::KeepAliveP50,
        Metric::KeepAliveP99,
        Metric::ConnectRate,
        Metric::BulkThroughput,
        Metric::RssPerTunnel,
    ];

    fn label(self, options: &Options) -> String {
        match self {
            Metric::KeepAliveRate => format!("a. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns (req/s)"),
            Metric::KeepAliveP50 => "a. latency p50 (µs)".to_string(),
            Metric::KeepAliveP99 => "a. latency p99 (µs)".to_string(),
            Metric::ConnectRate => format!("b. CONNECT + GET + close, {CONNECT_WORKERS} workers (conn/s)"),
            Metric::BulkThroughput => "c. 1 GiB through one tunnel (MiB/s)".to_string(),
            Metric::RssPerTunnel => format!("d. RSS per idle tunnel, {} tunnels (KiB)", options.tunnels),
        }
    }

    fn decimals(self) -> usize {
        match self {
            Metric::RssPerTunnel => 1,
            _ => 0,
        }
    }
}

#[derive(Clone)]
struct Options {
    quick: bool,
    rounds: usize,
    round_secs: u64,
    tunnels: usize,
    targets: Vec<Target>,
    scenarios: Vec<Scenario>,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--quick] [--only NAME[,NAME...]] [--rounds N] [--tunnels N]
  NAME: direct, tollgate, squid, tinyproxy (targets) or a|keepalive, b|connect, c|bulk, d|rss (scenarios)
        or tls, limits, redis, reload (tollgate-only scenarios)
        or intercept, sse (interception: tollgate against the Messages API stub direct and mitmproxy)
  env:  TOLLGATE_BIN (default target/release/tollgate), SQUID_BIN, TINYPROXY_BIN,
        MITMDUMP_BIN (default target/mitmproxy-venv/bin/mitmdump, else mitmdump on PATH)";

fn parse_args() -> Result<Options, String> {
    let mut quick = false;
    let mut rounds = 3usize;
    let mut tunnels = 5000usize;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match key.as_str() {
            "--quick" => quick = true,
            "--only" => only
                .extend(value("--only")?.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty())),
            "--rounds" => {
                rounds = value("--rounds")?.parse().map_err(|_| "--rounds: not a number".to_string())?;
                if !(1..=9).contains(&rounds) {
                    return Err("--rounds must be 1..=9".into());
                }
            }
            "--tunnels" => {
                tunnels = value("--tunnels")?.parse().map_err(|_| "--tunnels: not a number".to_string())?;
                if !(1..=20_000).contains(&tunnels) {
                    return Err("--tunnels must be 1..=20000".into());
                }
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            // `cargo bench` passes `--bench` to harness = false targets.
            "--bench" => {}
            other => eprintln!("load: ignoring unknown argument {other:?}"),
        }
    }
    let mut targets = Vec::new();
    let mut scenarios = Vec::new();
    for name in &only {
        if let Some(k) = Target::ALL.iter().find(|k| k.name() == name) {
            targets.push(*k);
        } else if let Some(s) = Scenario::parse(name) {
            scenarios.push(s);
        } else {
            return Err(format!("--only: unknown name {name:?}\n{USAGE}"));
        }
    }
    if targets.is_empty() {
        targets = Target::ALL.to_vec();
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    targets.sort();
    targets.dedup();
    scenarios.sort();
    scenarios.dedup();
    Ok(Options { quick, rounds, round_secs: if quick { 2 } else { 5 }, tunnels, targets, scenarios })
}

// ---------------------------------------------------------------------------------------------
// Child processes: registry (for Ctrl-C), guard (for Drop / panic), process-tree helpers
// ---------------------------------------------------------------------------------------------

/// Pids of running children, killed by the Ctrl-C handler.
static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register_pid(pid: u32) {
    if let Ok(mut v) = CHILD_PIDS.lock() {
        v.push(pid);
    }
}

fn unregister_pid(pid: u32) {
    if let Ok(mut v) = CHILD_PIDS.lock() {
        v.retain(|p| *p != pid);
    }
}

/// `(pid, ppid)` of every process in /proc.
fn process_table() -> Vec<(u32, u32)> {
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
fn process_tree(root: u32) -> Vec<u32> {
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

fn kill_pids(pids: &[u32]) {
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
fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Summed `VmRSS` of a process and its descendants, KiB, and the number of processes.
fn tree_rss_kib(root: u32) -> Option<(u64, usize)> {
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
fn tree_cpu_ns(root: u32) -> (u64, u64) {
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

fn log_tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let from = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[from..]).trim().replace('\n', " | ")
}

/// A running proxy. Dropping it kills the process and its descendants.
struct Proxy {
    kind: Target,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its output, and of the log files some proxies write next to it.
    fn tail(&self) -> String {
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

// ---------------------------------------------------------------------------------------------
// Host setup: pinning, RLIMIT_NOFILE, binaries
// ---------------------------------------------------------------------------------------------

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn cpus_allowed() -> String {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

/// Sets the cores every thread of `pid` may run on (`taskset -a -p -c CORES PID`).
fn set_cores(pid: u32, cores: &str) -> Result<(), String> {
    let out = Command::new("taskset").args(["-a", "-p", "-c", cores, &pid.to_string()]).output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("taskset -c {cores} {pid}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("taskset: {e}")),
    }
}

/// Runs `round` with this harness and the proxy `pid` (if any) free to run on cores 0 and 1, then pins them back
/// (harness on 0, proxy on 1). Sharing cores, a request need not wake an idle core to reach the other process.
async fn on_shared_cores(pid: Option<u32>, round: impl std::future::Future<Output = RateRound>) -> RateRound {
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
fn pin_self(cores: usize, have_taskset: bool) -> String {
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

fn open_file_limits() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let soft = it.next()?.parse().ok()?;
    let hard = it.next()?.parse().ok()?;
    Some((soft, hard))
}

/// Raises RLIMIT_NOFILE of this process with `prlimit` (children inherit it).
/// `need`: descriptors scenario d needs in this process.
fn raise_open_file_limit(need: u64) -> (u64, String) {
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

fn tollgate_binary() -> PathBuf {
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

fn first_line(cmd: &Path, args: &[&str]) -> String {
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

fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// Origin server and Messages API stub (in-process, HTTP/1.1 keep-alive)
// ---------------------------------------------------------------------------------------------

fn small_response(close: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {SMALL_BODY_LENGTH}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', SMALL_BODY_LENGTH));
    r
}

fn header_has_token(value: &[u8], token: &str) -> bool {
    String::from_utf8_lossy(value).split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What an in-process server answers.
#[derive(Clone, Copy)]
enum Served {
    /// The origin of scenarios a-d and tls, limits, redis, reload: `GET /` and `GET /bulk`.
    Origin,
    /// The Messages API stub of scenarios intercept and sse: `POST /v1/messages`.
    Stub,
}

/// What a request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// The origin's 100-byte body (any path but `/bulk`).
    Small,
    /// The origin's 1 GiB body.
    Bulk,
    /// `POST /v1/messages`.
    Messages,
}

struct IncomingRequest {
    resource: Resource,
    close: bool,
    body: u64,
    chunked: bool,
}

fn origin_req(req: &httparse::Request) -> IncomingRequest {
    let path = req.path.unwrap_or("/");
    // Accept absolute-form too (RFC 9112 3.2.2), in case a proxy forwards it unchanged.
    let path = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
        .map(|rest| rest.find('/').map_or("/", |i| &rest[i..]))
        .unwrap_or(path);
    let http10 = req.version == Some(0);
    let mut close = http10;
    let mut body = 0;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            if header_has_token(h.value, "close") {
                close = true;
            } else if http10 && header_has_token(h.value, "keep-alive") {
                // We never answer HTTP/1.0 keep-alive; keep it simple and close.
                close = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = header_has_token(h.value, "chunked");
        }
    }
    let resource = if path == "/bulk" || path.starts_with("/bulk?") {
        Resource::Bulk
    } else if req.method == Some("POST") && (path == "/v1/messages" || path.starts_with("/v1/messages?")) {
        Resource::Messages
    } else {
        Resource::Small
    };
    IncomingRequest { resource, close, body, chunked }
}

/// A server-side connection (plain TCP or TLS) with its read buffer.
struct ServerConnection<S> {
    s: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerConnection<S> {
    /// Writes and flushes (TLS buffers records until flushed; for TCP the flush is free).
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes).await?;
        self.s.flush().await
    }

    /// The next request and its body (at most `MAX_REQUEST_BODY` bytes, `Content-Length` only); `None` when
    /// the client closed between requests or sent one this server refuses (answered, then closed).
    async fn request(&mut self) -> io::Result<Option<(IncomingRequest, Vec<u8>)>> {
        let (n, req) = loop {
            if self.end > self.start {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut hs);
                match req.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => break (n, origin_req(&req)),
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => {
                        self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await?;
                        return Ok(None);
                    }
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                self.send(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await?;
                return Ok(None);
            }
            let got = self.s.read(&mut self.buf[self.end..]).await?;
            if got == 0 {
                return Ok(None);
            }
            self.end += got;
        };
        self.start += n;
        if req.chunked || req.body > MAX_REQUEST_BODY {
            self.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
            return Ok(None);
        }
        let want = req.body as usize;
        let mut body = Vec::with_capacity(want);
        let buffered = (self.end - self.start).min(want);
        body.extend_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        while body.len() < want {
            // Everything buffered is consumed: read the rest from the start of the buffer.
            let got = self.s.read(&mut self.buf).await?;
            if got == 0 {
                return Ok(None);
            }
            let used = got.min(want - body.len());
            body.extend_from_slice(&self.buf[..used]);
            self.start = used;
            self.end = got;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some((req, body)))
    }
}

/// Serves one connection until the client closes or asks to.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(s: S, served: Served) -> io::Result<()> {
    let mut c = ServerConnection { s, buf: vec![0u8; SMALL_READ_BUFFER], start: 0, end: 0 };
    let small_ka = small_response(false);
    let small_close = small_response(true);
    while let Some((req, body)) = c.request().await? {
        match (served, req.resource) {
            (Served::Origin, Resource::Bulk) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {BULK_LENGTH}\r\n{}\r\n",
                    if req.close { "Connection: close\r\n" } else { "" }
                );
                c.s.write_all(head.as_bytes()).await?;
                let chunk = vec![b'b'; BULK_READ_BUFFER];
                let mut left = BULK_LENGTH;
                while left > 0 {
                    let n = (chunk.len() as u64).min(left) as usize;
                    c.s.write_all(&chunk[..n]).await?;
                    left -= n as u64;
                }
                c.s.flush().await?;
            }
            (Served::Origin, _) => c.send(if req.close { &small_close } else { &small_ka }).await?,
            (Served::Stub, Resource::Messages) if wants_stream(&body) => stub_stream(&mut c).await?,
            (Served::Stub, Resource::Messages) => c.send(&stub_message_response(req.close)).await?,
            (Served::Stub, _) => {
                c.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
                return Ok(());
            }
        }
        if req.close {
            let _ = c.s.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}

/// Accepts until the runtime shuts down (end of `main`); with `tls`, every connection is a TLS server first.
async fn serve(listener: TcpListener, served: Served, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let _ = match tls {
                        None => serve_connection(s, served).await,
                        Some(acceptor) => match timeout(IO_TIMEOUT, acceptor.accept(s)).await {
                            Ok(Ok(s)) => serve_connection(s, served).await,
                            _ => Ok(()),
                        },
                    };
                });
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The request body asks for a streamed response (`"stream": true`).
fn wants_stream(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"stream\":true";
    let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    compact.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

/// The stub's non-streamed answer: a Messages API message with its `usage`.
const STUB_MESSAGE: &str = concat!(
    r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","#,
    r#""content":[{"type":"text","text":"Hello! How can I help you today?"}],"stop_reason":"end_turn","#,
    r#""stop_sequence":null,"usage":{"input_tokens":8,"output_tokens":12,"cache_creation_input_tokens":0,"#,
    r#""cache_read_input_tokens":0}}"#
);

fn stub_message_response(close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nrequest-id: req_bench\r\nContent-Length: {}\r\n{}\r\n{STUB_MESSAGE}",
        STUB_MESSAGE.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Events of one streamed response: message_start, content_block_start, ping, `SSE_DELTAS` content_block_delta,
/// content_block_stop, message_delta (with the usage), message_stop.
const SSE_EVENTS: usize = SSE_DELTAS + 6;

/// The `event:` and `data:` lines of the streamed response's events, in order.
fn sse_events() -> Vec<String> {
    let mut events = vec![
        concat!(
            "event: message_start\n",
            r#"data: {"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","#,
            r#""model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"#,
            r#""usage":{"input_tokens":8,"output_tokens":1}}}"#,
            "\n"
        )
        .to_string(),
        concat!(
            "event: content_block_start\n",
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            "\n"
        )
        .to_string(),
        "event: ping\ndata: {\"type\": \"ping\"}\n".to_string(),
    ];
    for i in 0..SSE_DELTAS {
        events.push(format!(
            "event: content_block_delta\n\
             data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word{i} \"}}}}\n"
        ));
    }
    events.push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n".to_string());
    events.push(format!(
        "event: message_delta\n\
         data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\
         \"usage\":{{\"output_tokens\":{SSE_DELTAS}}}}}\n"
    ));
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n".to_string());
    events
}

/// The harness's clock for SSE stamps: nanoseconds since its first use (stub and client share the process).
fn stamp_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The streamed answer: the head, then each event as one chunk, written and flushed on its own, `SSE_GAP` apart.
/// Each event carries its send time as an SSE `id:` line (`stamp_ns`), which SSE readers pass over.
async fn stub_stream<S: AsyncRead + AsyncWrite + Unpin>(c: &mut ServerConnection<S>) -> io::Result<()> {
    c.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nrequest-id: req_bench\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    for (i, event) in sse_events().iter().enumerate() {
        if i > 0 {
            sleep(SSE_GAP).await;
        }
        let payload = format!("id: {}\n{event}\n", stamp_ns());
        c.send(format!("{:x}\r\n{payload}\r\n", payload.len()).as_bytes()).await?;
    }
    c.send(b"0\r\n\r\n").await
}

// ---------------------------------------------------------------------------------------------
// Client side: a connection with a read buffer and a small HTTP/1.1 response reader
// ---------------------------------------------------------------------------------------------

struct Head {
    status: u16,
    http10: bool,
    close: bool,
    keep_alive: bool,
    length: Option<u64>,
    chunked: bool,
}

fn parse_head(r: &httparse::Response) -> Head {
    let mut h = Head {
        status: r.code.unwrap_or(0),
        http10: r.version == Some(0),
        close: false,
        keep_alive: false,
        length: None,
        chunked: false,
    };
    for hd in r.headers.iter() {
        let name = hd.name;
        if name.eq_ignore_ascii_case("content-length") {
            h.length = std::str::from_utf8(hd.value).ok().and_then(|v| v.trim().parse().ok());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = header_has_token(hd.value, "chunked");
        } else if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("proxy-connection") {
            h.close |= header_has_token(hd.value, "close");
            h.keep_alive |= header_has_token(hd.value, "keep-alive");
        }
    }
    h
}

impl Head {
    /// The connection stays open after this response (unless its body runs to the end of the stream).
    fn persistent(&self) -> bool {
        if self.http10 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

/// How a response body ends, for reading it piece by piece as it arrives (`Connection::piece`).
enum Framing {
    /// `left` bytes to go in the current chunk (0: a chunk-size line is next); `crlf`: the CRLF that ends the
    /// previous chunk is still to read.
    Chunked {
        left: u64,
        crlf: bool,
    },
    Length(u64),
    /// Until the server closes.
    Eof,
    Done,
}

impl Framing {
    fn of(h: &Head) -> Framing {
        if h.chunked {
            Framing::Chunked { left: 0, crlf: false }
        } else if let Some(n) = h.length {
            Framing::Length(n)
        } else {
            Framing::Eof
        }
    }
}

struct Response {
    status: u16,
    keep_alive: bool,
    body: u64,
}

/// A client connection: plain TCP, or TLS to a TLS listener of the proxy.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                // rustls buffers the records; push them out now.
                s.flush().await
            }
        }
    }

    /// Closes the write side (TLS: sends close_notify first).
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}

struct Connection {
    s: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes received so far.
    read_bytes: u64,
}

/// One request and its response on an open connection.
async fn exchange(c: &mut Connection, req: &[u8]) -> io::Result<Response> {
    c.send(req).await?;
    c.response(false).await
}

/// The peer closed the connection (as opposed to a protocol error).
fn closed_by_peer(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

fn closed_early() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early")
}

impl Connection {
    /// Connects to `addr`; with `tls`, makes the TLS handshake too.
    async fn open(addr: SocketAddr, tls: Option<&TlsDial>, buf: usize) -> io::Result<Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let c = Connection { s: Stream::Tcp(tcp), buf: vec![0; buf], start: 0, end: 0, read_bytes: 0 };
        match tls {
            None => Ok(c),
            Some(d) => c.start_tls(d).await,
        }
    }

    /// The TLS handshake as a client over this TCP connection: to a TLS listener, to a TLS origin, or inside a
    /// CONNECT tunnel (interception).
    async fn start_tls(self, d: &TlsDial) -> io::Result<Connection> {
        let Stream::Tcp(tcp) = self.s else {
            return Err(io::Error::other("TLS inside a TLS connection is not supported"));
        };
        if self.start != self.end {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes before the TLS handshake"));
        }
        let tls = d.connector.connect(d.name.clone(), tcp).await?;
        Ok(Connection { s: Stream::Tls(Box::new(tls)), buf: self.buf, start: 0, end: 0, read_bytes: self.read_bytes })
    }

    async fn read_some(&mut self, at: usize) -> io::Result<usize> {
        let n = self.s.read(&mut self.buf[at..]).await?;
        self.read_bytes += n as u64;
        Ok(n)
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes).await
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(io::Error::other("response head larger than the buffer"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.read_some(self.end).await?;
        if n == 0 {
            return Err(closed_early());
        }
        self.end += n;
        Ok(())
    }

    async fn head(&mut self) -> io::Result<Head> {
        loop {
            if self.end > self.start {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let h = parse_head(&r);
                        self.start += n;
                        return Ok(h);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
            self.fill().await?;
        }
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            let window = &self.buf[self.start..self.end];
            if let Some(i) = window.windows(2).position(|w| w == b"\r\n") {
                let s = String::from_utf8_lossy(&window[..i]).into_owned();
                self.start += i + 2;
                return Ok(s);
            }
            self.fill().await?;
        }
    }

    /// Reads and discards `n` body bytes; reads straight into the whole buffer.
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let taken = ((self.end - self.start) as u64).min(n);
        self.start += taken as usize;
        n -= taken;
        while n > 0 {
            let got = self.read_some(0).await?;
            if got == 0 {
                return Err(closed_early());
            }
            if got as u64 > n {
                self.start = n as usize;
                self.end = got;
                n = 0;
            } else {
                self.start = 0;
                self.end = 0;
                n -= got as u64;
            }
        }
        Ok(())
    }

    /// The next piece of a body as it arrives: what is buffered, else what one read brings (within the framing);
    /// `None` after the last byte (and, when chunked, the trailers).
    async fn piece(&mut self, f: &mut Framing) -> io::Result<Option<Vec<u8>>> {
        loop {
            let left = match f {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    *f = Framing::Done;
                    return Ok(None);
                }
                Framing::Length(left) => left,
                Framing::Chunked { crlf, .. } if *crlf => {
                    if !self.line().await?.is_empty() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk end"));
                    }
                    *crlf = false;
                    continue;
                }
                Framing::Chunked { left: 0, .. } => {
                    let line = self.line().await?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                    if size == 0 {
                        // Trailers, up to the empty line.
                        for _ in 0..100 {
                            if self.line().await?.is_empty() {
                                *f = Framing::Done;
                                return Ok(None);
                            }
                        }
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many trailers"));
                    }
                    *f = Framing::Chunked { left: size, crlf: false };
                    continue;
                }
                Framing::Chunked { left, .. } => left,
                Framing::Eof => {
                    if self.start == self.end {
                        match self.fill().await {
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                                *f = Framing::Done;
                                return Ok(None);
                            }
                            r => r?,
                        }
                    }
                    let piece = self.buf[self.start..self.end].to_vec();
                    self.start = self.end;
                    return Ok(Some(piece));
                }
            };
            if self.start == self.end {
                self.fill().await?;
            }
            let taken = ((self.end - self.start) as u64).min(*left) as usize;
            let piece = self.buf[self.start..self.start + taken].to_vec();
            self.start += taken;
            *left -= taken as u64;
            if let Framing::Chunked { left: 0, crlf } = f {
                // Read with the next piece, so that a piece is never held back waiting for its CRLF.
                *crlf = true;
            }
            return Ok(Some(piece));
        }
    }

    /// A chunked body, read and counted.
    async fn dechunk(&mut self) -> io::Result<u64> {
        let mut f = Framing::Chunked { left: 0, crlf: false };
        let mut total = 0;
        for _ in 0..10_000_000 {
            match self.piece(&mut f).await? {
                Some(p) => total += p.len() as u64,
                None => return Ok(total),
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "too many chunks"))
    }

    async fn drain_to_eof(&mut self) -> io::Result<u64> {
        let mut total = (self.end - self.start) as u64;
        self.start = 0;
        self.end = 0;
        while total < 4 * BULK_LENGTH {
            let got = self.read_some(0).await?;
            if got == 0 {
                return Ok(total);
            }
            total += got as u64;
        }
        Err(io::Error::other("body without length too long"))
    }

    /// Reads one response; `connect`: the answer to a CONNECT (a 2xx has no body).
    async fn response(&mut self, connect: bool) -> io::Result<Response> {
        let mut h = self.head().await?;
        let mut interim = 0;
        while (100..200).contains(&h.status) && h.status != 101 {
            interim += 1;
            if interim > 5 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too many 1xx"));
            }
            h = self.head().await?;
        }
        let mut keep_alive = h.persistent();
        let body = if (connect && (200..300).contains(&h.status)) || h.status == 204 || h.status == 304 {
            0
        } else if h.chunked {
            self.dechunk().await?
        } else if let Some(n) = h.length {
            self.skip(n).await?;
            n
        } else {
            keep_alive = false;
            self.drain_to_eof().await?
        };
        Ok(Response { status: h.status, keep_alive, body })
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// How the client reaches a TLS listener: full handshakes only (resumption off), TLS 1.3, ALPN http/1.1.
#[derive(Clone)]
struct TlsDial {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

#[derive(Clone)]
struct Route {
    /// Where the client connects: the origin (direct) or the proxy.
    addr: SocketAddr,
    proxy: bool,
    origin: SocketAddr,
    /// The proxy listener speaks TLS.
    tls: Option<TlsDial>,
    /// A `Proxy-Authorization` value sent with every request to the proxy.
    auth: Option<Arc<str>>,
    /// The destination as `host:port`, named in the CONNECT and (its host) in `Host`; `None`: the origin.
    authority: Option<Arc<str>>,
    /// TLS with the destination: inside the CONNECT tunnel (interception), or straight to it (direct TLS).
    inner: Option<TlsDial>,
}

impl Route {
    /// A plain-TCP target without credentials.
    fn plain(addr: SocketAddr, proxy: bool, origin: SocketAddr) -> Route {
        Route { addr, proxy, origin, tls: None, auth: None, authority: None, inner: None }
    }

    /// The Messages API at `authority` (`host:port`) through `addr`: with `inner`, TLS to it (through a proxy:
    /// inside the tunnel).
    fn api(addr: SocketAddr, proxy: bool, origin: SocketAddr, authority: &str, inner: Option<TlsDial>) -> Route {
        Route { authority: Some(authority.into()), inner, ..Route::plain(addr, proxy, origin) }
    }

    /// The same proxy and trust, for another intercepted `host` on port 443.
    fn for_host(&self, host: &str) -> Result<Route, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let inner = self.inner.as_ref().map(|d| TlsDial { connector: d.connector.clone(), name });
        Ok(Route { authority: Some(format!("{host}:443").into()), inner, ..self.clone() })
    }

    fn with_tls(&self, addr: SocketAddr, tls: TlsDial) -> Route {
        Route { addr, tls: Some(tls), ..self.clone() }
    }

    fn with_auth(&self, auth: &str) -> Route {
        Route { auth: Some(auth.into()), ..self.clone() }
    }

    fn auth_line(&self) -> String {
        match &self.auth {
            Some(a) if self.proxy => format!("Proxy-Authorization: {a}\r\n"),
            _ => String::new(),
        }
    }

    fn get_ka(&self) -> Vec<u8> {
        let o = self.origin;
        if self.proxy {
            let auth = self.auth_line();
            format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n{auth}\r\n").into_bytes()
        } else {
            format!("GET / HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n\r\n").into_bytes()
        }
    }

    fn get_origin_form(&self, path: &str) -> Vec<u8> {
        let o = self.origin;
        format!("GET {path} HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n\r\n").into_bytes()
    }

    fn connect_req(&self) -> Vec<u8> {
        let o = self.authority.as_deref().map_or_else(|| self.origin.to_string(), str::to_string);
        let auth = self.auth_line();
        format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n{auth}\r\n").into_bytes()
    }

    /// `POST /v1/messages` (origin-form, as a client speaks inside the tunnel), small; `stream` asks for SSE.
    fn messages_req(&self, stream: bool) -> Vec<u8> {
        let authority = self.authority.as_deref().unwrap_or(API_HOST);
        let host = authority.strip_suffix(":443").unwrap_or(authority);
        let body = format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":16,{}"messages":[{{"role":"user","content":"hi"}}]}}"#,
            if stream { r#""stream":true,"# } else { "" }
        );
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate-load\r\nx-api-key: sk-ant-bench\r\n\
             anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A connection to the proxy (or, direct, to the origin): TCP, plus the TLS handshake for a TLS listener.
    async fn open(&self, buf: usize) -> io::Result<Connection> {
        Connection::open(self.addr, self.tls.as_ref(), buf).await
    }

    /// A connection to the destination: direct, or through a CONNECT tunnel of the proxy; then the TLS
    /// handshake with it when `inner` is set.
    async fn tunnel(&self, buf: usize) -> io::Result<Connection> {
        let mut c = self.open(buf).await?;
        if self.proxy {
            c.send(&self.connect_req()).await?;
            let r = c.response(true).await?;
            if r.status != 200 {
                return Err(io::Error::other(format!("CONNECT answered {}", r.status)));
            }
        }
        match &self.inner {
            Some(d) => c.start_tls(d).await,
            None => Ok(c),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    ok: u64,
    errors: u64,
    connections_opened: u64,
    /// Requests retried on a new connection because the proxy had closed the kept-alive one.
    stale: u64,
    /// Paced loads: requests sent more than `PACE_SLACK` after their slot.
    late: u64,
    latencies_ns: Vec<u64>,
    /// Scenario sse: each streamed event's delay from the stub's send to the client's read.
    event_delays_ns: Vec<u64>,
    last_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.connections_opened += o.connections_opened;
        self.stale += o.stale;
        self.late += o.late;
        self.latencies_ns.extend(o.latencies_ns);
        self.event_delays_ns.extend(o.event_delays_ns);
        if o.last_error.is_some() {
            self.last_error = o.last_error;
        }
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.last_error = Some(e.to_string());
    }

    fn record(&mut self, t0: Instant) {
        self.sample(t0.elapsed().as_nanos() as u64);
    }

    /// One successful operation that took `ns`.
    fn sample(&mut self, ns: u64) {
        self.ok += 1;
        if self.latencies_ns.len() < MAX_SAMPLES_PER_WORKER {
            self.latencies_ns.push(ns);
        }
    }
}

fn percentile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() - 1) as f64 * q).round() as usize;
    sorted_ns[i] as f64 / 1000.0
}

fn mean_us(ns: &[u64]) -> f64 {
    if ns.is_empty() {
        return f64::NAN;
    }
    ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64 / 1000.0
}

struct RateRound {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    stats: Stats,
    /// The proxy's CPU time per successful operation (µs), and the share of the round it was runnable but
    /// waiting for its core (another process had it), when measured (`with_proxy_cpu`).
    cpu_us: Option<f64>,
    waiting: Option<f64>,
}

impl RateRound {
    fn describe(&self, unit: &str) -> String {
        let mut s = format!(
            "{:.0} {unit}, p50 {:.0} µs, p99 {:.0} µs, {} ok, {} errors, {} connections opened",
            self.rate, self.p50_us, self.p99_us, self.stats.ok, self.stats.errors, self.stats.connections_opened
        );
        if self.stats.stale > 0 {
            let _ = write!(s, ", {} retried after the proxy closed a kept-alive connection", self.stats.stale);
        }
        if self.stats.late > 0 {
            let _ = write!(s, ", {} sent more than {PACE_SLACK:?} after their slot", self.stats.late);
        }
        if let (Some(cpu), Some(waiting)) = (self.cpu_us, self.waiting) {
            let _ = write!(
                s,
                ", proxy CPU {cpu:.1} µs per operation, runnable but waiting for its core {:.0}% of the round",
                waiting * 100.0
            );
        }
        if !self.stats.event_delays_ns.is_empty() {
            let mut ev = self.stats.event_delays_ns.clone();
            ev.sort_unstable();
            let _ = write!(
                s,
                ", {} events: delay mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
                ev.len(),
                mean_us(&ev),
                percentile_us(&ev, 0.50),
                percentile_us(&ev, 0.99)
            );
        }
        if let Some(e) = &self.stats.last_error {
            let _ = write!(s, " (last error: {e})");
        }
        s
    }
}

/// Runs `workers` copies of a worker for `dur`, bounded by `max_ops` in total.
async fn run_workers<F, Fut>(workers: usize, duration: Duration, max_ops: u64, worker: F) -> RateRound
where
    F: Fn(Instant, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let budget = Arc::new(AtomicU64::new(max_ops));
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..workers).map(|_| tokio::spawn(worker(deadline, budget.clone()))).collect();
    let mut all = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => all.merge(s),
            Err(e) => all.error(format!("worker panicked: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_ns.sort_unstable();
    RateRound {
        rate: all.ok as f64 / elapsed,
        p50_us: percentile_us(&all.latencies_ns, 0.50),
        p99_us: percentile_us(&all.latencies_ns, 0.99),
        max_us: percentile_us(&all.latencies_ns, 1.0),
        stats: all,
        cpu_us: None,
        waiting: None,
    }
}

/// `round`, with the CPU time the process tree of `pid` spent during it per successful operation, and the share
/// of the round it spent runnable but waiting for a core.
async fn with_proxy_cpu(pid: Option<u32>, round: impl std::future::Future<Output = RateRound>) -> RateRound {
    let Some(pid) = pid else {
        return round.await;
    };
    let (t0, (run0, wait0)) = (Instant::now(), tree_cpu_ns(pid));
    let mut r = round.await;
    let (run1, wait1) = tree_cpu_ns(pid);
    if r.stats.ok > 0 {
        r.cpu_us = Some(run1.saturating_sub(run0) as f64 / r.stats.ok as f64 / 1000.0);
        r.waiting = Some(wait1.saturating_sub(wait0) as f64 / t0.elapsed().as_nanos() as f64);
    }
    r
}

/// Takes one unit of the shared operation budget.
fn take_from_budget(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok()
}

/// Scenario a: keep-alive GETs (absolute-form through a proxy, origin-form direct).
async fn keep_alive_gets(t: &Route, duration: Duration) -> RateRound {
    let load = KeepAliveLoad {
        conns: KEEP_ALIVE_CONNECTIONS,
        req: Arc::new(t.get_ka()),
        body: SMALL_BODY_LENGTH as u64,
        tunnel: false,
        warm: Vec::new(),
        rate: None,
        max_requests: KEEP_ALIVE_MAX_REQUESTS,
    };
    run_keep_alive_load(t, duration, load).await
}

/// A keep-alive load: `conns` connections, each sending `req` and reading its answer, one at a time.
struct KeepAliveLoad {
    conns: usize,
    req: Arc<Vec<u8>>,
    /// The body length of the expected `200`.
    body: u64,
    /// Each connection is `Route::tunnel` (CONNECT, then TLS inside when the target says so); else
    /// `Route::open`, the proxy connection itself (absolute-form requests).
    tunnel: bool,
    /// Connections opened before the clock started (`open_ahead`), taken by the first workers; the others open
    /// theirs on the clock.
    warm: Vec<Connection>,
    /// Paced: requests/s over all connections, in evenly spaced slots; `None`: each connection back to back.
    rate: Option<u32>,
    max_requests: u64,
}

/// Runs a keep-alive load for `dur`. Paced, a connection takes the next free slot (`start + k / rate`), waits
/// for it, and sends: open loop as long as a connection is free, latency from the send.
async fn run_keep_alive_load(t: &Route, duration: Duration, load: KeepAliveLoad) -> RateRound {
    let t = t.clone();
    let slots = Arc::new(AtomicU64::new(0));
    let KeepAliveLoad { conns, req, body, tunnel, warm, rate, max_requests } = load;
    let interval = rate.map(|r| Duration::from_secs(1) / r.max(1));
    let opened = Arc::new(Mutex::new(warm));
    run_workers(conns, duration, max_requests, move |deadline, budget| {
        let (req, t, slots) = (req.clone(), t.clone(), slots.clone());
        let start = deadline - duration;
        let mut conn: Option<Connection> = opened.lock().ok().and_then(|mut v| v.pop());
        async move {
            let mut stats = Stats::default();
            stats.connections_opened += u64::from(conn.is_some());
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                if let Some(interval) = interval {
                    let slot = start + interval * slots.fetch_add(1, Ordering::Relaxed) as u32;
                    if slot >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(slot.into()).await;
                    if slot.elapsed() > PACE_SLACK {
                        stats.late += 1;
                    }
                }
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, async {
                    let mut retried = false;
                    loop {
                        let reused = conn.is_some();
                        if !reused {
                            conn = Some(if tunnel {
                                t.tunnel(SMALL_READ_BUFFER).await?
                            } else {
                                t.open(SMALL_READ_BUFFER).await?
                            });
                            stats.connections_opened += 1;
                        }
                        let c = conn.as_mut().expect("connection just opened");
                        let seen = c.read_bytes;
                        match exchange(c, &req).await {
                            // The peer closed a kept-alive connection before answering: what
                            // any HTTP client does is retry on a new connection (counted).
                            Err(e) if reused && !retried && c.read_bytes == seen && closed_by_peer(&e) => {
                                conn = None;
                                retried = true;
                                stats.stale += 1;
                            }
                            r => return r,
                        }
                    }
                })
                .await;
                match res {
                    Ok(Ok(r)) => {
                        if r.status == 200 && r.body == body {
                            stats.record(t0);
                        } else {
                            stats.error(format!("status {} body {}", r.status, r.body));
                        }
                        if !r.keep_alive {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        stats.error(e);
                        conn = None;
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        stats.error("timeout");
                        conn = None;
                    }
                }
            }
            stats
        }
    })
    .await
}

/// `n` connections to `t` (`Route::tunnel` with `tunnel`, else `Route::open`), opened concurrently before a
/// load starts, so that its clock measures the steady state; those that fail are left out.
async fn open_ahead(t: &Route, n: usize, tunnel: bool) -> Vec<Connection> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let open = async {
                    if tunnel {
                        t.tunnel(SMALL_READ_BUFFER).await
                    } else {
                        t.open(SMALL_READ_BUFFER).await
                    }
                };
                timeout(IO_TIMEOUT, open).await.ok().and_then(Result::ok)
            })
        })
        .collect();
    let mut opened = Vec::with_capacity(n);
    for h in handles {
        opened.extend(h.await.ok().flatten());
    }
    opened
}

/// Scenario b: CONNECT + one GET + close (direct: connect + one GET + close).
async fn connect_get_close(t: &Route, duration: Duration) -> RateRound {
    let get = Arc::new(t.get_origin_form("/"));
    let t = t.clone();
    run_workers(CONNECT_WORKERS, duration, CONNECT_MAX_OPERATIONS, move |deadline, budget| {
        let get = get.clone();
        let t = t.clone();
        async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, async {
                    let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
                    c.send(&get).await?;
                    c.response(false).await
                    // `c` is dropped here: the client closes.
                })
                .await;
                stats.connections_opened += 1;
                match res {
                    Ok(Ok(r)) if r.status == 200 && r.body == SMALL_BODY_LENGTH as u64 => stats.record(t0),
                    Ok(Ok(r)) => stats.error(format!("status {} body {}", r.status, r.body)),
                    Ok(Err(e)) => {
                        stats.error(e);
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => stats.error("timeout"),
                }
            }
            stats
        }
    })
    .await
}

/// Scenario c: 1 GiB through one tunnel (direct: a straight download), MiB/s.
async fn bulk_download(t: &Route) -> Result<f64, String> {
    let res = timeout(BULK_TIMEOUT, async {
        let mut c = t.tunnel(BULK_READ_BUFFER).await?;
        let t0 = Instant::now();
        c.send(&t.get_origin_form("/bulk")).await?;
        let r = c.response(false).await?;
        Ok::<_, io::Error>((r, t0.elapsed()))
    })
    .await;
    match res {
        Ok(Ok((r, el))) if r.status == 200 && r.body == BULK_LENGTH => {
            Ok(r.body as f64 / (1024.0 * 1024.0) / el.as_secs_f64())
        }
        Ok(Ok((r, _))) => Err(format!("status {} body {} bytes", r.status, r.body)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not done within {BULK_TIMEOUT:?}")),
    }
}

struct MemoryRound {
    kib_per_tunnel: f64,
    opened: usize,
    before_kib: u64,
    after_kib: u64,
    processes: usize,
    errors: u64,
    last_error: Option<String>,
}

/// Scenario d: open `n` idle CONNECT tunnels to the origin, compare the proxy's RSS.
async fn idle_tunnel_memory(proxy: &Proxy, t: &Route, n: usize) -> Result<MemoryRound, String> {
    let pid = proxy.pid();
    // Warm up: a few tunnels used and closed, so one-time allocations are not counted.
    let get = t.get_origin_form("/");
    for _ in 0..20 {
        let res = timeout(IO_TIMEOUT, async {
            let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
            c.send(&get).await?;
            c.response(false).await
        })
        .await;
        if !matches!(res, Ok(Ok(ref r)) if r.status == 200) {
            return Err("warm-up tunnel failed".into());
        }
    }
    sleep(Duration::from_millis(500)).await;
    let (before_kib, _) = tree_rss_kib(pid).ok_or("cannot read /proc/PID/status")?;

    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + TUNNELS_OPEN_TIMEOUT;
    let handles: Vec<_> = (0..TUNNEL_OPENERS.min(n))
        .map(|_| {
            let next = next.clone();
            let t = t.clone();
            tokio::spawn(async move {
                let mut open = Vec::new();
                let mut errors = 0u64;
                let mut last_error = None;
                while Instant::now() < deadline
                    && errors < MAX_ERRORS_PER_WORKER
                    && (next.fetch_add(1, Ordering::Relaxed) as usize) < n
                {
                    match timeout(IO_TIMEOUT, t.tunnel(1024)).await {
                        Ok(Ok(c)) => open.push(c),
                        Ok(Err(e)) => {
                            errors += 1;
                            last_error = Some(e.to_string());
                        }
                        Err(_) => {
                            errors += 1;
                            last_error = Some("timeout".to_string());
                        }
                    }
                }
                (open, errors, last_error)
            })
        })
        .collect();
    let mut tunnels = Vec::with_capacity(n);
    let mut errors = 0;
    let mut last_error = None;
    for h in handles {
        if let Ok((open, e, le)) = h.await {
            tunnels.extend(open);
            errors += e;
            if le.is_some() {
                last_error = le;
            }
        }
    }
    if tunnels.is_empty() {
        return Err(format!("no tunnel opened ({errors} errors, last: {})", last_error.unwrap_or_default()));
    }
    sleep(Duration::from_secs(1)).await;
    let (after_kib, processes) = tree_rss_kib(pid).ok_or("cannot read /proc/PID/status")?;
    // Check that the last tunnel still carries traffic.
    if let Some(c) = tunnels.last_mut() {
        let res = timeout(IO_TIMEOUT, async {
            c.send(&get).await?;
            c.response(false).await
        })
        .await;
        if !matches!(res, Ok(Ok(ref r)) if r.status == 200) {
            errors += 1;
            last_error = Some("an open tunnel did not carry a GET".into());
        }
    }
    let opened = tunnels.len();
    drop(tunnels);
    Ok(MemoryRound {
        kib_per_tunnel: (after_kib as f64 - before_kib as f64) / opened as f64,
        opened,
        before_kib,
        after_kib,
        processes,
        errors,
        last_error,
    })
}

// ---------------------------------------------------------------------------------------------
// Proxies: configs and start-up
// ---------------------------------------------------------------------------------------------

struct Harness {
    options: Options,
    origin: SocketAddr,
    temp_dir: PathBuf,
    pin_children: bool,
    binaries: BTreeMap<Target, PathBuf>,
    instances: u32,
    /// The argon2id hash of the Basic user's password, made once by `tollgate passwd`.
    basic_user_hash: Option<String>,
    /// The Messages API stub, started by the first interception scenario.
    stub: Option<Stub>,
}

impl Harness {
    /// A fresh directory for one instance (config, logs, state).
    fn instance_dir(&mut self, tag: &str) -> Result<PathBuf, String> {
        self.instances += 1;
        let dir = self.temp_dir.join(format!("{tag}-{}", self.instances));
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// A command pinned to core 1 (when pinning is possible).
    fn pinned(&self, bin: &Path) -> Command {
        if self.pin_children {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("1").arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `policy.allow` entry every tollgate config has (the origin), as a YAML block-list item.
const ALLOW_LOOPBACK: &str = "    - \"127.0.0.1\"\n";

/// A tollgate config: `listeners` are YAML block-list items, `admin` and `auth` flow maps, `allow` block-list
/// items of `policy.allow`, `extra` further top-level sections. Private destinations: 127.0.0.0/8 only; audit
/// to a file in `dir`.
fn tollgate_yaml(dir: &Path, listeners: &str, admin: &str, auth: &str, allow: &str, extra: &str) -> String {
    let d = dir.display();
    format!(
        "listeners:\n{listeners}\
         admin: {admin}\n\
         auth: {auth}\n\
         policy:\n  default: deny\n  allow:\n{allow}  allow_private: [\"127.0.0.0/8\"]\n\
         audit: {{file: {{path: \"{d}/audit.jsonl\"}}}}\n\
         {extra}"
    )
}

fn write_config(kind: Target, dir: &Path, port: u16, origin: SocketAddr) -> io::Result<Vec<String>> {
    let d = dir.display();
    let listen = format!("127.0.0.1:{port}");
    match kind {
        // mitmproxy is started by `start_mitmproxy`, for the interception scenarios only.
        Target::Direct | Target::Mitmproxy => Ok(Vec::new()),
        Target::Tollgate => {
            let admin = free_port()?;
            let path = dir.join("tollgate.yaml");
            let listeners = format!("  - {{name: proxy, bind: \"{listen}\"}}\n");
            let admin = format!("{{bind: \"127.0.0.1:{admin}\"}}");
            fs::write(&path, tollgate_yaml(dir, &listeners, &admin, "{anonymous: bench}", ALLOW_LOOPBACK, ""))?;
            Ok(vec!["run".into(), "-c".into(), path.display().to_string()])
        }
        Target::Squid => {
            // squid drops privileges to its cache_effective_user when started as root.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?;
            let path = dir.join("squid.conf");
            fs::write(
                &path,
                format!(
                    "http_port {listen}\n\
                     http_access allow all\n\
                     cache deny all\n\
                     cache_mem 8 MB\n\
                     access_log none\n\
                     cache_store_log none\n\
                     cache_log {d}/cache.log\n\
                     pid_filename {d}/squid.pid\n\
                     coredump_dir {d}\n\
                     visible_hostname tollgate-load\n\
                     via off\n\
                     forwarded_for delete\n\
                     max_filedescriptors {WANTED_OPEN_FILES}\n\
                     shutdown_lifetime 0 seconds\n\
                     workers 1\n\
                     pinger_enable off\n"
                ),
            )?;
            Ok(vec!["-N".into(), "-f".into(), path.display().to_string()])
        }
        Target::Tinyproxy => {
            let path = dir.join("tinyproxy.conf");
            fs::write(
                &path,
                format!(
                    "Port {port}\n\
                     Listen 127.0.0.1\n\
                     Timeout 600\n\
                     MaxClients 20000\n\
                     LogLevel Error\n\
                     LogFile \"{d}/tinyproxy.log\"\n\
                     PidFile \"{d}/tinyproxy.pid\"\n\
                     Allow 127.0.0.1\n\
                     ConnectPort {}\n\
                     DisableViaHeader Yes\n\
                     XTinyproxy No\n",
                    origin.port()
                ),
            )?;
            Ok(vec!["-d".into(), "-c".into(), path.display().to_string()])
        }
    }
}

/// Starts a fresh instance of a proxy pinned to core 1, waits until it accepts and answers
/// one request and one CONNECT.
async fn start_proxy(harness: &mut Harness, kind: Target) -> Result<Proxy, String> {
    if !harness.binaries.contains_key(&kind) {
        return Err("not installed".into());
    }
    let dir = harness.instance_dir(kind.name())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let args = write_config(kind, &dir, port, harness.origin).map_err(|e| e.to_string())?;
    launch(harness, kind, &dir, &args, &Route::plain(loopback(port), true, harness.origin)).await
}

/// Writes `yaml` to `dir/tollgate.yaml` and starts tollgate on it; `smoke` is the listener to check.
async fn start_tollgate(harness: &Harness, dir: &Path, yaml: &str, smoke: &Route) -> Result<Proxy, String> {
    let path = dir.join("tollgate.yaml");
    fs::write(&path, yaml).map_err(|e| format!("write {}: {e}", path.display()))?;
    let args = ["run".to_string(), "-c".to_string(), path.display().to_string()];
    launch(harness, Target::Tollgate, dir, &args, smoke).await
}

/// One absolute-form GET and one CONNECT + GET through `t`; for a Messages API target, one `POST /v1/messages`
/// through a tunnel.
async fn smoke_once(t: &Route) -> Result<(), String> {
    if t.authority.is_some() {
        let res = timeout(IO_TIMEOUT, async {
            let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
            exchange(&mut c, &t.messages_req(false)).await
        })
        .await;
        return match res {
            Ok(Ok(r)) if r.status == 200 && r.body == STUB_MESSAGE.len() as u64 => Ok(()),
            Ok(Ok(r)) => Err(format!("POST /v1/messages: status {}, {} body bytes", r.status, r.body)),
            Ok(Err(e)) => Err(format!("POST /v1/messages: {e}")),
            Err(_) => Err("POST /v1/messages: timeout".into()),
        };
    }
    let get = timeout(IO_TIMEOUT, async {
        let mut c = t.open(SMALL_READ_BUFFER).await?;
        c.send(&t.get_ka()).await?;
        c.response(false).await
    })
    .await;
    let tun = timeout(IO_TIMEOUT, async {
        let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
        c.send(&t.get_origin_form("/")).await?;
        c.response(false).await
    })
    .await;
    match (get, tun) {
        (Ok(Ok(a)), Ok(Ok(b))) if a.status == 200 && b.status == 200 => Ok(()),
        (g, c) => {
            let d = |r: Result<io::Result<Response>, _>| match r {
                Ok(Ok(r)) => format!("status {}", r.status),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timeout".into(),
            };
            Err(format!("GET: {}, CONNECT: {}", d(g), d(c)))
        }
    }
}

/// Spawns `kind` with `args` in `dir`, pinned to core 1; waits until `smoke.addr` accepts and
/// `smoke` answers one request and one CONNECT.
async fn launch(harness: &Harness, kind: Target, dir: &Path, args: &[String], smoke: &Route) -> Result<Proxy, String> {
    let mut proxy = spawn(harness, kind, dir, args, smoke.addr).await?;
    until_smoke(&mut proxy, smoke).await?;
    Ok(proxy)
}

/// Spawns `kind` with `args` in `dir`, pinned to core 1; waits until `addr` accepts.
async fn spawn(
    harness: &Harness,
    kind: Target,
    dir: &Path,
    args: &[String],
    addr: SocketAddr,
) -> Result<Proxy, String> {
    let bin = harness.binaries.get(&kind).cloned().ok_or("not installed")?;
    let log = dir.join("stdio.log");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = harness.pinned(&bin);
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).stdout(out).stderr(err);
    if kind == Target::Tollgate && std::env::var_os("TOLLGATE_LOG").is_none() {
        // The peers run without an access log; tollgate's per-request log line is off too (its audit record,
        // the contract, stays on).
        cmd.env("TOLLGATE_LOG", "warn");
    }
    let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    register_pid(child.id());
    let mut proxy = Proxy { kind, child, addr, log };
    for _ in 0..READY_ATTEMPTS {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited at start-up ({status}): {}", kind.name(), proxy.tail()));
        }
        if let Ok(Ok(_)) = timeout(Duration::from_millis(500), TcpStream::connect(proxy.addr)).await {
            return Ok(proxy);
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{} did not accept on {} within {} attempts: {}",
        kind.name(),
        proxy.addr,
        READY_ATTEMPTS,
        proxy.tail()
    ))
}

/// Smoke test: one absolute-form GET and one CONNECT (or, for the Messages API, one request), retried briefly
/// while the proxy finishes start-up.
async fn until_smoke(proxy: &mut Proxy, smoke: &Route) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        match smoke_once(smoke).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited ({status}): {}", proxy.kind.name(), proxy.tail()));
        }
        sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{} does not proxy ({last}): {}", proxy.kind.name(), proxy.tail()))
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

enum Cell {
    Value(f64),
    Note(String),
}

/// One row of the second table: a tollgate feature against a tollgate baseline, measured in one run.
struct FeatureRow {
    label: String,
    base: Cell,
    value: Cell,
    decimals: usize,
    target: String,
}

/// What a row of the interception table is held to.
enum Goal {
    None,
    /// tollgate's value at least this many times mitmproxy's (req/s).
    TimesMitmproxy(f64),
    /// tollgate's value below this (µs).
    Below(f64),
}

/// One row of the interception table: tollgate, the stub direct (plain, TLS) and mitmproxy, in one run.
struct InterceptionRow {
    label: String,
    /// In `Side::ALL` order.
    cells: [Cell; 4],
    decimals: usize,
    goal: Goal,
}

#[derive(Default)]
struct Report {
    cells: BTreeMap<(Metric, Target), Cell>,
    notes: Vec<String>,
    features: Vec<FeatureRow>,
    api: Vec<InterceptionRow>,
}

impl Report {
    fn set(&mut self, m: Metric, k: Target, v: f64) {
        self.cells.insert((m, k), Cell::Value(v));
    }

    fn note(&mut self, metrics: &[Metric], k: Target, short: &str) {
        for m in metrics {
            self.cells.insert((*m, k), Cell::Note(short.to_string()));
        }
    }

    fn fail(&mut self, metrics: &[Metric], k: Target, msg: String) {
        self.notes.push(msg);
        let short = format!("failed [{}]", self.notes.len());
        self.note(metrics, k, &short);
    }

    fn footnote(&mut self, msg: String) -> usize {
        self.notes.push(msg);
        self.notes.len()
    }

    fn value(&self, m: Metric, k: Target) -> Option<f64> {
        match self.cells.get(&(m, k)) {
            Some(Cell::Value(v)) => Some(*v),
            _ => None,
        }
    }

    fn cell(&self, m: Metric, k: Target) -> String {
        match self.cells.get(&(m, k)) {
            Some(Cell::Value(v)) => format!("{v:.*}", m.decimals()),
            Some(Cell::Note(n)) => n.clone(),
            None => "not run".into(),
        }
    }

    fn table(&self, options: &Options) -> String {
        let mut s = String::new();
        s.push_str("| scenario | direct | tollgate | squid | tinyproxy | tollgate/direct | squid/direct | tinyproxy/direct |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for m in Metric::ALL {
            let _ = write!(s, "| {} |", m.label(options));
            for k in Target::ALL {
                let _ = write!(s, " {} |", self.cell(m, k));
            }
            for k in [Target::Tollgate, Target::Squid, Target::Tinyproxy] {
                let r = match (self.value(m, k), self.value(m, Target::Direct)) {
                    (Some(v), Some(d)) if d > 0.0 => format!("{:.2}x", v / d),
                    _ => "n/a".into(),
                };
                let _ = write!(s, " {r} |");
            }
            s.push('\n');
        }
        s
    }

    /// A feature row; `None` for the baseline means there is none ("n/a"), for the value "failed".
    fn feature(&mut self, label: String, base: Option<f64>, value: Option<f64>, decimals: usize, target: &str) {
        let base = base.map_or_else(|| Cell::Note("n/a".into()), Cell::Value);
        let value = value.map_or_else(|| Cell::Note("failed".into()), Cell::Value);
        self.features.push(FeatureRow { label, base, value, decimals, target: target.to_string() });
    }

    /// A feature scenario that could not run: one row saying why (`short`), the details in a note.
    fn feature_skipped(&mut self, label: String, short: &str, msg: Option<String>) {
        let short = match msg {
            Some(m) => format!("{short} [{}]", self.footnote(m)),
            None => short.to_string(),
        };
        self.features.push(FeatureRow {
            label,
            base: Cell::Note(short.clone()),
            value: Cell::Note(short),
            decimals: 0,
            target: String::new(),
        });
    }

    fn feature_table(&self) -> String {
        let mut s = String::from(
            "| scenario (tollgate only) | baseline | measured | measured/baseline | target |\n|---|---:|---:|---:|---|\n",
        );
        let cell = |c: &Cell, decimals: usize| match c {
            Cell::Value(v) => format!("{v:.decimals$}"),
            Cell::Note(n) => n.clone(),
        };
        for r in &self.features {
            let ratio = match (&r.base, &r.value) {
                (Cell::Value(b), Cell::Value(v)) if *b > 0.0 => format!("{:.2}x", v / b),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {ratio} | {} |",
                r.label,
                cell(&r.base, r.decimals),
                cell(&r.value, r.decimals),
                r.target
            );
        }
        s
    }

    fn api(&mut self, label: String, cells: [Cell; 4], decimals: usize, goal: Goal) {
        self.api.push(InterceptionRow { label, cells, decimals, goal });
    }

    /// An interception scenario that could not run: one row saying so, the details in a note.
    fn interception_failed(&mut self, label: String, msg: String) {
        let short = format!("failed [{}]", self.footnote(msg));
        self.api(label, Side::ALL.map(|_| Cell::Note(short.clone())), 0, Goal::None);
    }

    fn interception_table(&self) -> String {
        let mut s = String::from("| scenario |");
        for side in Side::ALL {
            let _ = write!(s, " {} |", side.name());
        }
        s.push_str(" tollgate/mitmproxy | target | met? |\n|---|---:|---:|---:|---:|---:|---|---|\n");
        let val = |c: &Cell| match c {
            Cell::Value(v) => Some(*v),
            Cell::Note(_) => None,
        };
        for r in &self.api {
            let _ = write!(s, "| {} |", r.label);
            for c in &r.cells {
                match c {
                    Cell::Value(v) => {
                        let _ = write!(s, " {v:.*} |", r.decimals);
                    }
                    Cell::Note(n) => {
                        let _ = write!(s, " {n} |");
                    }
                }
            }
            let (tollgate, mitmproxy) = (val(&r.cells[0]), val(&r.cells[3]));
            let ratio = match (tollgate, mitmproxy) {
                (Some(t), Some(m)) if m > 0.0 => Some(t / m),
                _ => None,
            };
            let ratio_text = ratio.map_or_else(|| "n/a".into(), |x| format!("{x:.2}x"));
            let (target, met) = match r.goal {
                Goal::None => (String::new(), ""),
                Goal::TimesMitmproxy(x) => {
                    (format!("≥ {x:.0}× mitmproxy"), ratio.map_or("n/a", |v| if v >= x { "✓" } else { "✗" }))
                }
                Goal::Below(x) => (format!("< {x:.0} µs"), tollgate.map_or("n/a", |v| if v < x { "✓" } else { "✗" })),
            };
            let _ = writeln!(s, " {ratio_text} | {target} | {met} |");
        }
        s
    }

    fn latency_table(&self) -> String {
        let mut s = String::from("| target | req/s | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|\n");
        for k in Target::ALL {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                k.name(),
                self.cell(Metric::KeepAliveRate, k),
                self.cell(Metric::KeepAliveP50, k),
                self.cell(Metric::KeepAliveP99, k)
            );
        }
        s
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn format_rounds(v: &[f64], decimals: usize) -> String {
    v.iter().map(|x| format!("{x:.decimals$}")).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------------
// tollgate-only scenarios: the TLS listener, limits, the Redis state backend, reload
// ---------------------------------------------------------------------------------------------

/// Scenario tls, e and f: name of the mTLS client certificate's CN (the principal, `auth.mtls.identity: cn`).
const MTLS_USER: &str = "bench-client";
/// Scenarios limits and redis: the Basic user and its password.
const BASIC_USER: &str = "bench-user";
const BASIC_PASSWORD: &str = "pw";
/// Scenarios limits and redis: team `bench` and org/user limits, all far above what one core can reach.
const TEAM_LIMITS: &str =
    "teams:\n  bench:\n    limits: {rpm: 10000000, user_rpm: 10000000, user_concurrent: 100000}\n\
                           limits:\n  org: {rpm: 10000000, concurrent: 100000}\n  \
                           user: {rpm: 10000000, concurrent: 100000}\n";
/// Scenario reload: `policy.allow` rules besides the origin's, and the length of each round.
const RELOAD_RULES: usize = 10_000;
const RELOAD_SECONDS: u64 = 10;
/// Scenario reload: `admin.token`.
const ADMIN_TOKEN: &str = "bench";

/// A running helper (redis-server). Dropping it kills the process and its descendants.
struct Daemon {
    child: Child,
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

/// A listener as a YAML block-list item.
fn listener_item(name: &str, port: u16) -> String {
    format!("  - {{name: {name}, bind: \"127.0.0.1:{port}\"}}\n")
}

fn port() -> Result<u16, String> {
    free_port().map_err(|e| format!("no free port: {e}"))
}

/// Scenarios g and h: full TLS handshakes (connect, handshake, close; no request).
async fn full_handshakes(t: &Route, duration: Duration) -> RateRound {
    let t = t.clone();
    run_workers(CONNECT_WORKERS, duration, CONNECT_MAX_OPERATIONS, move |deadline, budget| {
        let t = t.clone();
        async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, handshake_once(&t)).await;
                stats.connections_opened += 1;
                match res {
                    Ok(Ok(())) => stats.record(t0),
                    Ok(Err(e)) => {
                        stats.error(e);
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => stats.error("timeout"),
                }
            }
            stats
        }
    })
    .await
}

/// Connects, completes the handshake, sends close_notify and waits for the proxy to close in turn: by then it
/// has processed the client's whole flight (with mTLS, checked its certificate), and a refusal (an alert) is
/// an error rather than a handshake.
async fn handshake_once(t: &Route) -> io::Result<()> {
    let mut c = t.open(1024).await?;
    c.s.shutdown().await?;
    for _ in 0..64 {
        match c.s.read(&mut c.buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if closed_by_peer(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the proxy kept sending instead of closing"))
}

/// The rounds of one side of a comparison.
#[derive(Default)]
struct Series {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    /// Scenario sse: per round, the mean and the p99 of the events' delays (µs).
    event_mean: Vec<f64>,
    event_p99: Vec<f64>,
    /// Per round, the proxy's CPU per operation (µs) and its share of the round waiting for its core.
    cpu: Vec<f64>,
    waiting: Vec<f64>,
    late: u64,
    errors: u64,
    last_error: Option<String>,
}

fn median_of(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| median(v.to_vec()))
}

impl Series {
    fn add(&mut self, mut r: RateRound) {
        let mut events = std::mem::take(&mut r.stats.event_delays_ns);
        if !events.is_empty() {
            events.sort_unstable();
            self.event_mean.push(mean_us(&events));
            self.event_p99.push(percentile_us(&events, 0.99));
        }
        self.late += r.stats.late;
        self.cpu.extend(r.cpu_us);
        self.waiting.extend(r.waiting);
        if r.stats.ok > 0 {
            self.rate.push(r.rate);
            self.p50.push(r.p50_us);
            self.p99.push(r.p99_us);
            self.max.push(r.max_us);
        }
        self.errors += r.stats.errors;
        if r.stats.last_error.is_some() {
            self.last_error = r.stats.last_error;
        }
    }
}

/// Runs `rounds` rounds of every side in turn (`run(i)` runs side `i`), so that a change in the machine's load
/// hits all alike; prints every round (`what` starts the lines) and each side's rounds.
async fn interleaved<F, Fut>(rounds: usize, what: &str, names: &[&str], unit: &str, mut run: F) -> Vec<Series>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = RateRound>,
{
    let mut out: Vec<Series> = names.iter().map(|_| Series::default()).collect();
    for r in 1..=rounds {
        for (i, name) in names.iter().enumerate() {
            let round = run(i).await;
            println!("- {what} round {r}/{rounds}, {name}: {}", round.describe(unit));
            out[i].add(round);
            sleep(ROUND_PAUSE).await;
        }
    }
    for (name, s) in names.iter().zip(&out) {
        println!(
            "  - {what} rounds, {name}: {unit} [{}], p50 µs [{}], p99 µs [{}], max µs [{}]",
            format_rounds(&s.rate, 0),
            format_rounds(&s.p50, 0),
            format_rounds(&s.p99, 0),
            format_rounds(&s.max, 0)
        );
        if !s.event_mean.is_empty() {
            println!(
                "  - {what} rounds, {name}: event delay mean µs [{}], p99 µs [{}]",
                format_rounds(&s.event_mean, 0),
                format_rounds(&s.event_p99, 0)
            );
        }
        if !s.cpu.is_empty() {
            println!(
                "  - {what} rounds, {name}: proxy CPU µs per operation [{}], waiting for its core % [{}]",
                format_rounds(&s.cpu, 1),
                format_rounds(&s.waiting.iter().map(|w| w * 100.0).collect::<Vec<_>>(), 0)
            );
        }
    }
    out
}

/// Runs `rounds` rounds of the baseline (`false`) and of the variant (`true`) alternately, so that a change in
/// the machine's load hits both alike; prints every round. `names`: baseline, variant.
async fn paired<F, Fut>(rounds: usize, what: &str, names: [&str; 2], unit: &str, mut run: F) -> [Series; 2]
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = RateRound>,
{
    let what = format!("`tollgate` {what}");
    let mut sides = interleaved(rounds, &what, &names, unit, |i| run(i == 1)).await.into_iter();
    let out = [sides.next().unwrap_or_default(), sides.next().unwrap_or_default()];
    if out[0].rate.len() == rounds && out[1].rate.len() == rounds {
        // Each pair ran back to back: its ratio is the least disturbed by a change in the machine's load.
        let ratios: Vec<f64> = out[1].rate.iter().zip(&out[0].rate).map(|(v, b)| v / b).collect();
        println!("  - {what}: {unit} measured/baseline per round [{}]", format_rounds(&ratios, 2));
    }
    out
}

/// The rows of a comparison: the rate (`rate_label`), and with `latency` p50 and p99 (`tag` starts their
/// labels); failed requests go to the notes.
fn compare_rows(report: &mut Report, tag: &str, rate_label: String, s: &[Series; 2], target: &str, latency: bool) {
    report.feature(rate_label, median_of(&s[0].rate), median_of(&s[1].rate), 0, target);
    if latency {
        report.feature(format!("{tag} latency p50 (µs)"), median_of(&s[0].p50), median_of(&s[1].p50), 0, "");
        report.feature(format!("{tag} latency p99 (µs)"), median_of(&s[0].p99), median_of(&s[1].p99), 0, "");
    }
    for (side, series) in ["baseline", "measured"].iter().zip(s) {
        if series.errors > 0 {
            report.footnote(format!(
                "{tag} {side}: {} failed operations (last: {})",
                series.errors,
                series.last_error.clone().unwrap_or_default()
            ));
        }
    }
}

/// TLS material for scenario tls, written to `dir`, and the two client configs.
struct Pki {
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    /// Trusts the server CA; no client certificate.
    client: Arc<rustls::ClientConfig>,
    /// Trusts the server CA; presents the client certificate.
    mtls_client: Arc<rustls::ClientConfig>,
}

/// A TLS 1.3 client config that trusts `ca`, with `client` (certificate, key) for mTLS. Resumption is off:
/// every connection is a full handshake.
fn tls_client(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tollgate::tls::load_certs(ca)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(tollgate::tls::load_certs(cert)?, tollgate::tls::load_key(key)?)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server CA and leaf (`localhost`, 127.0.0.1), a clients CA and a client leaf (CN `MTLS_USER`); all ECDSA
/// P-256, made with `tollgate::certs`.
fn make_pki(dir: &Path) -> Result<Pki, String> {
    use tollgate::certs::{Ca, Leaf};
    let err = |e: tollgate::certs::CertError| e.to_string();
    let server_ca = Ca::generate("tollgate-load server CA").map_err(err)?;
    let clients_ca = Ca::generate("tollgate-load clients CA").map_err(err)?;
    let server_leaf = Leaf::server(&["localhost".to_string()], &[std::net::IpAddr::from([127, 0, 0, 1])]);
    let (cert, key) = server_ca.issue(&server_leaf.map_err(err)?).map_err(err)?;
    let (client_cert, client_key) = clients_ca.issue(&Leaf::client(MTLS_USER, None).map_err(err)?).map_err(err)?;
    let file = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))?;
        Ok(p)
    };
    let server_cert = file("server.pem", &format!("{}\n{}\n", cert.trim_end(), server_ca.cert_pem().trim_end()))?;
    let server_key = file("server.key", &key)?;
    let server_ca = file("server-ca.pem", server_ca.cert_pem())?;
    let client_ca = file("clients-ca.pem", clients_ca.cert_pem())?;
    let client_cert = file("client.pem", &client_cert)?;
    let client_key = file("client.key", &client_key)?;
    Ok(Pki {
        client: tls_client(&server_ca, None)?,
        mtls_client: tls_client(&server_ca, Some((&client_cert, &client_key)))?,
        server_cert,
        server_key,
        client_ca,
    })
}

/// Scenario tls: one tollgate with a plain, a TLS and an mTLS listener; e and f compare the TLS listener with
/// the plain one, g counts full handshakes, h the same with a client certificate.
async fn measure_tls(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let dir = harness.instance_dir("tollgate-tls")?;
    let pki = make_pki(&dir)?;
    let (plain, tls, mtls, admin) = (port()?, port()?, port()?, port()?);
    let (cert, key, ca) = (pki.server_cert.display(), pki.server_key.display(), pki.client_ca.display());
    let tls_map = |extra: &str| format!("tls: {{cert: \"{cert}\", key: \"{key}\"{extra}}}");
    let listeners = format!(
        "{}  - {{name: proxy-tls, bind: \"127.0.0.1:{tls}\", {}}}\n  - {{name: proxy-mtls, bind: \"127.0.0.1:{mtls}\", {}}}\n",
        listener_item("proxy", plain),
        tls_map(""),
        tls_map(&format!(", client_ca: \"{ca}\", client_auth: required"))
    );
    let admin = format!("{{bind: \"127.0.0.1:{admin}\"}}");
    let auth = "{anonymous: bench, mtls: {identity: cn}}";
    let yaml = tollgate_yaml(&dir, &listeners, &admin, auth, ALLOW_LOOPBACK, "");
    let base = Route::plain(loopback(plain), true, harness.origin);
    let proxy = start_tollgate(harness, &dir, &yaml, &base).await?;
    let localhost = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let dial = |config: &Arc<rustls::ClientConfig>| TlsDial {
        connector: tokio_rustls::TlsConnector::from(config.clone()),
        name: localhost.clone(),
    };
    let t_tls = base.with_tls(loopback(tls), dial(&pki.client));
    let t_mtls = base.with_tls(loopback(mtls), dial(&pki.mtls_client));
    smoke_once(&t_tls).await.map_err(|e| format!("TLS listener: {e}"))?;
    smoke_once(&t_mtls).await.map_err(|e| format!("mTLS listener: {e}"))?;
    // The mTLS listener must refuse a client without a certificate (else h would measure nothing new).
    let no_cert = base.with_tls(loopback(mtls), dial(&pki.client));
    if smoke_once(&no_cert).await.is_ok() {
        return Err("the mTLS listener served a client without a certificate".into());
    }
    println!(
        "- `tollgate` tls started: pid {}, plain {}, TLS {}, mTLS {} (TLS 1.3 only on the client, ECDSA P-256, \
         resumption off)",
        proxy.pid(),
        base.addr,
        t_tls.addr,
        t_mtls.addr
    );
    let rounds = harness.options.rounds;
    let duration = Duration::from_secs(harness.options.round_secs);

    let e = paired(rounds, "e", ["plain listener", "TLS listener"], "req/s", |v| {
        keep_alive_gets(if v { &t_tls } else { &base }, duration)
    })
    .await;
    let label = format!("e. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns: TLS listener vs plain (req/s)");
    compare_rows(report, "e.", label, &e, "≥ 0.80", true);

    let f = paired(rounds, "f", ["plain listener", "TLS listener"], "conn/s", |v| {
        connect_get_close(if v { &t_tls } else { &base }, duration)
    })
    .await;
    let label = format!("f. CONNECT + GET + close, {CONNECT_WORKERS} workers: TLS listener vs plain (conn/s)");
    compare_rows(report, "f.", label, &f, "", false);

    let gh = paired(rounds, "g/h", ["TLS", "mTLS"], "handshakes/s", |v| {
        full_handshakes(if v { &t_mtls } else { &t_tls }, duration)
    })
    .await;
    report.feature(
        format!("g. full TLS 1.3 handshakes, {CONNECT_WORKERS} workers: connect, handshake, close (handshakes/s)"),
        None,
        median_of(&gh[0].rate),
        0,
        "",
    );
    report.feature(
        "h. the same with mTLS (client certificate required and sent), vs g (handshakes/s)".into(),
        median_of(&gh[0].rate),
        median_of(&gh[1].rate),
        0,
        "",
    );
    for (side, s) in ["g.", "h."].iter().zip(&gh) {
        if s.errors > 0 {
            report.footnote(format!(
                "{side} {} failed handshakes (last: {})",
                s.errors,
                s.last_error.clone().unwrap_or_default()
            ));
        }
    }
    if let Some((kib, _)) = tree_rss_kib(proxy.pid()) {
        println!("  - `tollgate` tls RSS after e-h: {kib} KiB");
    }
    drop(proxy);
    Ok(())
}

/// The argon2id hash of `BASIC_PASSWORD`, from `tollgate passwd` (made once).
fn basic_user_hash(harness: &mut Harness) -> Result<String, String> {
    if let Some(h) = &harness.basic_user_hash {
        return Ok(h.clone());
    }
    let bin = harness.binaries.get(&Target::Tollgate).ok_or("tollgate not installed")?;
    let mut child = Command::new(bin)
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tollgate passwd: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, BASIC_PASSWORD.as_bytes())
            .map_err(|e| format!("tollgate passwd: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("tollgate passwd: {e}"))?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !hash.starts_with("$argon2id$") {
        return Err(format!(
            "tollgate passwd failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    harness.basic_user_hash = Some(hash.clone());
    Ok(hash)
}

/// `Proxy-Authorization` of the Basic user.
fn basic_user_authorization() -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    format!("Basic {token}")
}

/// A config with the Basic user (and no anonymous access); `limits`: the user is in team `bench` and the team,
/// org and user limits are set; `state`: a `state:` section, or "". Returns the directory, the YAML and the
/// target (with the user's credentials).
fn basic_config(
    harness: &mut Harness,
    tag: &str,
    limits: bool,
    state: &str,
) -> Result<(PathBuf, String, Route), String> {
    let hash = basic_user_hash(harness)?;
    let dir = harness.instance_dir(tag)?;
    let (proxy, admin) = (port()?, port()?);
    let teams = if limits { ", teams: [bench]" } else { "" };
    let auth = format!("{{anonymous: deny, users: [{{name: {BASIC_USER}, password_hash: \"{hash}\"{teams}}}]}}");
    let extra = format!("{}{state}", if limits { TEAM_LIMITS } else { "" });
    let admin = format!("{{bind: \"127.0.0.1:{admin}\"}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy), &admin, &auth, ALLOW_LOOPBACK, &extra);
    let t = Route::plain(loopback(proxy), true, harness.origin).with_auth(&basic_user_authorization());
    Ok((dir, yaml, t))
}

/// Scenario limits: scenario a as the Basic user, with the team and org/user limits against without.
async fn measure_limits(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let (dir, yaml, t_plain) = basic_config(harness, "tollgate-basic", false, "")?;
    let p_plain = start_tollgate(harness, &dir, &yaml, &t_plain).await?;
    let (dir, yaml, t_limits) = basic_config(harness, "tollgate-limits", true, "")?;
    let p_limits = start_tollgate(harness, &dir, &yaml, &t_limits).await?;
    println!(
        "- `tollgate` limits started: without limits pid {} on {}, with limits pid {} on {} (both on core 1, \
         used one at a time)",
        p_plain.pid(),
        t_plain.addr,
        p_limits.pid(),
        t_limits.addr
    );
    let duration = Duration::from_secs(harness.options.round_secs);
    let pids = [p_plain.pid(), p_limits.pid()];
    let s = paired(
        harness.options.rounds,
        "limits",
        ["Basic user, no limits", "Basic user, team + limits"],
        "req/s",
        |v| with_proxy_cpu(Some(pids[usize::from(v)]), keep_alive_gets(if v { &t_limits } else { &t_plain }, duration)),
    )
    .await;
    let label = format!(
        "limits. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns, Basic user: team + org/user limits (embedded) vs none (req/s)"
    );
    compare_rows(report, "limits.", label, &s, "≥ 0.95", true);
    // CPU per request does not move with what else the machine runs, unlike req/s.
    report.feature(
        "limits. proxy CPU per request, all threads (µs; lower is better)".into(),
        median_of(&s[0].cpu),
        median_of(&s[1].cpu),
        2,
        "≤ 1.05",
    );
    drop(p_limits);
    drop(p_plain);
    Ok(())
}

/// Starts redis-server on a free port, pinned to core 1 with the proxy, without persistence.
async fn start_redis(harness: &mut Harness, bin: &Path) -> Result<(Daemon, u16), String> {
    let dir = harness.instance_dir("redis")?;
    let port = port()?;
    let log = dir.join("redis.log");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = harness.pinned(bin);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir"])
        .arg(&dir)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null());
    let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    register_pid(child.id());
    let mut daemon = Daemon { child };
    for _ in 0..READY_ATTEMPTS {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("redis-server exited at start-up ({status}): {}", log_tail(&log, 600)));
        }
        let ping = timeout(Duration::from_millis(500), async {
            let mut s = TcpStream::connect(loopback(port)).await?;
            s.write_all(b"PING\r\n").await?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await?;
            Ok::<_, io::Error>(buf[..n].starts_with(b"+PONG"))
        })
        .await;
        if let Ok(Ok(true)) = ping {
            return Ok((daemon, port));
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(format!("redis-server did not answer PING on port {port}: {}", log_tail(&log, 600)))
}

/// Scenario redis: scenario a as the Basic user with the limits, state in Redis against embedded.
async fn measure_redis(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let label = "redis. keep-alive GET with limits: state in Redis vs embedded".to_string();
    let Some(bin) = which("redis-server") else {
        println!("- `tollgate` redis: redis-server not found on PATH; skipped");
        report.feature_skipped(label, "redis-server not installed", None);
        return Ok(());
    };
    let unavailable = |report: &mut Report, why: String| {
        println!("- `tollgate` redis: redis backend not available in this build ({why})");
        report.feature_skipped(
            label.clone(),
            "redis backend not available in this build",
            Some(format!("redis: redis backend not available in this build: {why}")),
        );
    };
    // The backend's address is only known once redis-server runs; `tollgate check` first, on a placeholder.
    let tollgate = harness.binaries.get(&Target::Tollgate).cloned().ok_or("tollgate not installed")?;
    let (dir, yaml, _) = basic_config(harness, "tollgate-redis-check", true, &redis_state(6379))?;
    let path = dir.join("tollgate.yaml");
    fs::write(&path, &yaml).map_err(|e| format!("write {}: {e}", path.display()))?;
    let check = Command::new(&tollgate).arg("check").arg("-c").arg(&path).output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let why = format!("`tollgate check`: {}", String::from_utf8_lossy(&o.stderr).trim().replace('\n', " | "));
            unavailable(report, why);
            return Ok(());
        }
        Err(e) => return Err(format!("tollgate check: {e}")),
    }
    let (redis, redis_port) = start_redis(harness, &bin).await?;
    let (dir, yaml, t_redis) = basic_config(harness, "tollgate-redis", true, &redis_state(redis_port))?;
    let p_redis = match start_tollgate(harness, &dir, &yaml, &t_redis).await {
        Ok(p) => p,
        Err(e) if e.contains("redis") && e.contains("not available") => {
            unavailable(report, format!("`tollgate run`: {e}"));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let (dir, yaml, t_embedded) = basic_config(harness, "tollgate-embedded", true, "")?;
    let p_embedded = start_tollgate(harness, &dir, &yaml, &t_embedded).await?;
    println!(
        "- `tollgate` redis started: {} on port {redis_port} (pid {}, core 1); embedded pid {} on {}, redis pid {} \
         on {}",
        first_line(&bin, &["--version"]),
        redis.child.id(),
        p_embedded.pid(),
        t_embedded.addr,
        p_redis.pid(),
        t_redis.addr
    );
    let duration = Duration::from_secs(harness.options.round_secs);
    let s = paired(harness.options.rounds, "redis", ["embedded state", "redis state"], "req/s", |v| {
        keep_alive_gets(if v { &t_redis } else { &t_embedded }, duration)
    })
    .await;
    let rate_label = format!("{label}, {KEEP_ALIVE_CONNECTIONS} conns, Basic user (req/s)");
    compare_rows(report, "redis.", rate_label, &s, "", true);
    let added = |q: fn(&Series) -> &Vec<f64>| match (median_of(q(&s[0])), median_of(q(&s[1]))) {
        (Some(b), Some(v)) => Some(v - b),
        _ => None,
    };
    report.feature("redis. added latency per request, p50 (µs)".into(), None, added(|s| &s.p50), 0, "");
    report.feature("redis. added latency per request, p99 (µs)".into(), None, added(|s| &s.p99), 0, "");
    drop(p_redis);
    drop(p_embedded);
    drop(redis);
    Ok(())
}

fn redis_state(port: u16) -> String {
    format!("state: {{backend: redis, redis_url: \"redis://127.0.0.1:{port}\"}}\n")
}

/// The outcomes of the reloads of one round: round trip (ms) or error.
type Reloads = Vec<Result<f64, String>>;

/// One `POST /admin/reload` with the bearer token; its round trip, ms.
async fn reload_once(admin: SocketAddr) -> Result<f64, String> {
    let req = format!(
        "POST /admin/reload HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let t0 = Instant::now();
    let res = timeout(IO_TIMEOUT, async {
        let mut c = Connection::open(admin, None, SMALL_READ_BUFFER).await?;
        c.send(req.as_bytes()).await?;
        c.response(false).await
    })
    .await;
    match res {
        Ok(Ok(r)) if r.status == 200 => Ok(t0.elapsed().as_secs_f64() * 1000.0),
        Ok(Ok(r)) => Err(format!("POST /admin/reload answered {}", r.status)),
        Ok(Err(e)) => Err(format!("POST /admin/reload: {e}")),
        Err(_) => Err("POST /admin/reload: timeout".into()),
    }
}

/// `POST /admin/reload` once a second during `dur` (the first after 0.5 s); each one's outcome.
async fn reload_loop(admin: SocketAddr, duration: Duration) -> Reloads {
    let start = Instant::now();
    let mut out = Vec::new();
    for i in 0..duration.as_secs() {
        let at = start + Duration::from_millis(500) + Duration::from_secs(i);
        tokio::time::sleep_until(at.into()).await;
        out.push(reload_once(admin).await);
    }
    out
}

/// Scenario reload: scenario a for `RELOAD_SECONDS` against a config with `RELOAD_RULES` allow rules, with a reload
/// every second against without.
async fn measure_reload(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let dir = harness.instance_dir("tollgate-reload")?;
    let (proxy_port, admin_port) = (port()?, port()?);
    let mut allow = String::with_capacity(RELOAD_RULES * 32);
    for i in 0..RELOAD_RULES {
        let _ = writeln!(allow, "    - \"host{i}.example.com\"");
    }
    allow.push_str(ALLOW_LOOPBACK);
    let admin_map = format!("{{bind: \"127.0.0.1:{admin_port}\", token: {ADMIN_TOKEN}}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy_port), &admin_map, "{anonymous: bench}", &allow, "");
    let t = Route::plain(loopback(proxy_port), true, harness.origin);
    let t0 = Instant::now();
    let proxy = start_tollgate(harness, &dir, &yaml, &t).await?;
    let started = t0.elapsed();
    let admin = loopback(admin_port);
    let first = reload_once(admin).await?;
    println!(
        "- `tollgate` reload started: pid {}, {} ({} allow rules, {} KiB of YAML; up and proxying in {:.0} ms), \
         first reload {first:.1} ms",
        proxy.pid(),
        t.addr,
        RELOAD_RULES + 1,
        yaml.len() / 1024,
        started.as_secs_f64() * 1000.0
    );
    let duration = Duration::from_secs(RELOAD_SECONDS);
    // Each round's reload outcomes.
    let trips: Arc<Mutex<Vec<Reloads>>> = Arc::default();
    let s = paired(harness.options.rounds, "reload", ["no reloads", "a reload every second"], "req/s", |v| {
        let (t, trips) = (&t, trips.clone());
        async move {
            if v {
                let (round, outcomes) = tokio::join!(keep_alive_gets(t, duration), reload_loop(admin, duration));
                if let Ok(mut all) = trips.lock() {
                    all.push(outcomes);
                }
                round
            } else {
                keep_alive_gets(t, duration).await
            }
        }
    })
    .await;
    let label = format!(
        "reload. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns, {RELOAD_RULES} allow rules, {RELOAD_SECONDS} s: \
         POST /admin/reload every second vs none (req/s)"
    );
    compare_rows(report, "reload.", label, &s, "", true);
    report.feature("reload. latency max (µs)".into(), median_of(&s[0].max), median_of(&s[1].max), 0, "");
    let rounds = trips.lock().map(|v| v.clone()).unwrap_or_default();
    for (r, outcomes) in rounds.iter().enumerate() {
        let ok: Vec<String> = outcomes.iter().flatten().map(|ms| format!("{ms:.1}")).collect();
        println!(
            "  - `tollgate` reload round {}: {} of {} reloads ok, round trips ms [{}]",
            r + 1,
            ok.len(),
            outcomes.len(),
            ok.join(", ")
        );
    }
    let outcomes: Reloads = rounds.into_iter().flatten().collect();
    let mut ms: Vec<f64> = outcomes.iter().flatten().copied().collect();
    let failed: Vec<&String> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    report.feature(
        format!("reload. round trip of POST /admin/reload under load, median of {} (ms)", ms.len()),
        None,
        median_of(&ms),
        1,
        "",
    );
    report.feature(
        "reload. round trip of POST /admin/reload under load, max (ms)".into(),
        None,
        ms.last().copied(),
        1,
        "",
    );
    if let Some(e) = failed.last() {
        report.footnote(format!("reload: {} of {} reloads failed (last: {e})", failed.len(), outcomes.len()));
    }
    drop(proxy);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Interception: the Messages API through tollgate, straight to the stub, and through mitmproxy
// ---------------------------------------------------------------------------------------------

/// The columns of the interception table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Tollgate,
    Direct,
    DirectTls,
    Mitmproxy,
}

impl Side {
    /// The table's column order.
    const ALL: [Side; 4] = [Side::Tollgate, Side::Direct, Side::DirectTls, Side::Mitmproxy];

    fn name(self) -> &'static str {
        match self {
            Side::Tollgate => "tollgate",
            Side::Direct => "direct",
            Side::DirectTls => "direct TLS",
            Side::Mitmproxy => "mitmproxy",
        }
    }
}

/// The Messages API stub: a plain and a TLS listener (a certificate for `localhost` from `make_pki`).
#[derive(Clone)]
struct Stub {
    plain: SocketAddr,
    tls: SocketAddr,
    /// How the client reaches the TLS listener.
    dial: TlsDial,
}

/// Starts the stub on the harness's thread, once per run.
async fn stub(harness: &mut Harness) -> Result<Stub, String> {
    if let Some(s) = &harness.stub {
        return Ok(s.clone());
    }
    let dir = harness.instance_dir("stub")?;
    let pki = make_pki(&dir)?;
    let certs = tollgate::tls::load_certs(&pki.server_cert)?;
    let key = tollgate::tls::load_key(&pki.server_key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(tollgate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("stub certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let plain = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot bind the stub: {e}"))?;
    let tls = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot bind the stub: {e}"))?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let stub = Stub {
        plain: plain.local_addr().map_err(|e| e.to_string())?,
        tls: tls.local_addr().map_err(|e| e.to_string())?,
        dial: TlsDial { connector: tokio_rustls::TlsConnector::from(pki.client.clone()), name },
    };
    tokio::spawn(serve(plain, Served::Stub, None));
    tokio::spawn(serve(tls, Served::Stub, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))));
    println!(
        "- Messages API stub: {} (plain), {} (TLS, certificate for localhost); SSE: {SSE_EVENTS} events, \
         {SSE_GAP:?} apart",
        stub.plain, stub.tls
    );
    harness.stub = Some(stub.clone());
    Ok(stub)
}

/// The Messages API through the proxy at `proxy`, intercepting with the CA in `ca`.
fn intercepted_route(proxy: SocketAddr, origin: SocketAddr, ca: &Path) -> Result<Route, String> {
    let name = ServerName::try_from(API_HOST).map_err(|e| e.to_string())?;
    let dial = TlsDial { connector: tokio_rustls::TlsConnector::from(tls_client(ca, None)?), name };
    Ok(Route::api(proxy, true, origin, &format!("{API_HOST}:443"), Some(dial)))
}

/// tollgate intercepting `API_HOST` (routed to the plain stub) and `*.MINT_DOMAIN` (handshakes only), its CA
/// created on start in its directory. Checked with one GET through the forward proxy, then one intercepted
/// request (which mints the leaf of `API_HOST`: the cache is warm from then on).
async fn start_tollgate_interception(harness: &mut Harness, stub: SocketAddr) -> Result<(Proxy, Route), String> {
    let dir = harness.instance_dir("tollgate-intercept")?;
    let (proxy_port, admin_port) = (port()?, port()?);
    let d = dir.display();
    let allow = format!("    - \"{API_HOST}\"\n    - \"*.{MINT_DOMAIN}\"\n{ALLOW_LOOPBACK}");
    let extra = format!(
        "upstreams: {{stub: {{url: \"http://{stub}\"}}}}\n\
         routing: [{{when: {{host: {API_HOST}}}, to: stub}}]\n\
         intercept: {{ca: {{cert: \"{d}/ca.pem\", key: \"{d}/ca.key\"}}, hosts: [\"{API_HOST}\", \"*.{MINT_DOMAIN}\"]}}\n\
         state: {{path: \"{d}/state\"}}\n"
    );
    let admin = format!("{{bind: \"127.0.0.1:{admin_port}\"}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy_port), &admin, "{anonymous: bench}", &allow, &extra);
    let forward = Route::plain(loopback(proxy_port), true, harness.origin);
    let mut proxy = start_tollgate(harness, &dir, &yaml, &forward).await?;
    let t = intercepted_route(forward.addr, harness.origin, &dir.join("ca.pem"))?;
    until_smoke(&mut proxy, &t).await?;
    Ok((proxy, t))
}

/// `mitmdump` in regular proxy mode with `benches/mitm_stub.py` (requests for `API_HOST` go to the plain stub,
/// SSE responses are streamed), leaves minted for the SNI without asking the upstream, no upstream connection
/// before a request; its CA created in its directory.
async fn start_mitmproxy(harness: &mut Harness, stub: SocketAddr) -> Result<(Proxy, Route), String> {
    if !harness.binaries.contains_key(&Target::Mitmproxy) {
        return Err("not installed".into());
    }
    let dir = harness.instance_dir("mitmproxy")?;
    let port = port()?;
    let addon = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/mitm_stub.py");
    let mut args: Vec<String> =
        ["--listen-host", "127.0.0.1", "--listen-port", &port.to_string(), "-q", "-s"].map(String::from).to_vec();
    args.push(addon.display().to_string());
    for set in [
        format!("confdir={}", dir.display()),
        "upstream_cert=false".into(),
        "connection_strategy=lazy".into(),
        "termlog_verbosity=error".into(),
        "flow_detail=0".into(),
        format!("bench_stub={stub}"),
    ] {
        args.push("--set".into());
        args.push(set);
    }
    let mut proxy = spawn(harness, Target::Mitmproxy, &dir, &args, loopback(port)).await?;
    let ca = dir.join("mitmproxy-ca-cert.pem");
    for _ in 0..READY_ATTEMPTS {
        if ca.is_file() {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let t = intercepted_route(proxy.addr, harness.origin, &ca)?;
    until_smoke(&mut proxy, &t).await?;
    Ok((proxy, t))
}

/// The sides of one interception scenario, the proxies they need, and the sides that could not run.
struct InterceptionRun {
    /// In the order each round runs them.
    sides: Vec<(Side, Route)>,
    /// Why a side is missing (a cell's text).
    missing: Vec<(Side, String)>,
    /// Killed when the run is dropped.
    proxies: Vec<Proxy>,
}

impl InterceptionRun {
    fn names(&self) -> Vec<&'static str> {
        self.sides.iter().map(|(s, _)| s.name()).collect()
    }

    fn target(&self, i: usize) -> &Route {
        &self.sides[i].1
    }

    /// The process behind side `i`, if it is a proxy.
    fn pid(&self, i: usize) -> Option<u32> {
        let kind = match self.sides[i].0 {
            Side::Tollgate => Target::Tollgate,
            Side::Mitmproxy => Target::Mitmproxy,
            Side::Direct | Side::DirectTls => return None,
        };
        self.proxies.iter().find(|p| p.kind == kind).map(Proxy::pid)
    }

    /// Notes on how much of the rounds the proxies waited for their core (another process had it).
    fn contention(&self, report: &mut Report, tag: &str, series: &[Series]) {
        for ((side, _), s) in self.sides.iter().zip(series) {
            if let Some(w) = median_of(&s.waiting).filter(|w| *w > 0.05) {
                report.footnote(format!(
                    "{tag} {}: runnable but waiting for its core {:.0}% of the round (median; the machine was busy)",
                    side.name(),
                    w * 100.0
                ));
            }
        }
    }

    /// A row's cells: `value(side, i)` for each side that ran (`None`: n/a, NaN: failed).
    fn cells(&self, value: impl Fn(Side, usize) -> Option<f64>) -> [Cell; 4] {
        Side::ALL.map(|side| match self.sides.iter().position(|(s, _)| *s == side) {
            Some(i) => match value(side, i) {
                Some(v) if v.is_finite() => Cell::Value(v),
                Some(_) => Cell::Note("failed".into()),
                None => Cell::Note("n/a".into()),
            },
            None => Cell::Note(
                self.missing.iter().find(|(s, _)| *s == side).map_or_else(|| "n/a".into(), |(_, why)| why.clone()),
            ),
        })
    }

    /// The rows of one measurement's series: `value` picks a number from a series.
    fn series_cells(&self, series: &[Series], value: fn(&Series) -> &Vec<f64>) -> [Cell; 4] {
        self.cells(|_, i| Some(median_of(value(&series[i])).unwrap_or(f64::NAN)))
    }

    /// `value` of each side minus direct's (direct itself: n/a).
    fn added_cells(&self, series: &[Series], value: fn(&Series) -> &Vec<f64>) -> [Cell; 4] {
        let direct = self.sides.iter().position(|(s, _)| *s == Side::Direct).and_then(|i| median_of(value(&series[i])));
        self.cells(|side, i| {
            (side != Side::Direct).then(|| match (median_of(value(&series[i])), direct) {
                (Some(v), Some(d)) => v - d,
                _ => f64::NAN,
            })
        })
    }

    /// A note per side whose operations failed or ran late.
    /// The rows of one paced layout: latencies, the added latency over direct (p99 against the target), notes.
    fn paced_rows(&self, report: &mut Report, layout: &str, series: &[Series]) {
        let tag = format!("paced, {layout}");
        let load = format!("{PACED_RATE} req/s evenly spaced over {PACED_TUNNELS} tunnels");
        report.api(format!("{tag}. {load}: latency p50 (µs)"), self.series_cells(series, |s| &s.p50), 0, Goal::None);
        report.api(format!("{tag}. {load}: latency p99 (µs)"), self.series_cells(series, |s| &s.p99), 0, Goal::None);
        let added = |quantile: &str| format!("{tag}. added latency {quantile}, over direct (µs)");
        report.api(added("p50"), self.added_cells(series, |s| &s.p50), 0, Goal::None);
        report.api(added("p99"), self.added_cells(series, |s| &s.p99), 0, Goal::Below(1000.0));
        self.notes(report, &tag, series);
        self.contention(report, &tag, series);
    }

    fn notes(&self, report: &mut Report, tag: &str, series: &[Series]) {
        for ((side, _), s) in self.sides.iter().zip(series) {
            if s.errors > 0 {
                report.footnote(format!(
                    "{tag} {}: {} failed operations (last: {})",
                    side.name(),
                    s.errors,
                    s.last_error.clone().unwrap_or_default()
                ));
            }
            if s.late > 0 {
                report.footnote(format!(
                    "{tag} {}: {} requests were sent more than {PACE_SLACK:?} after their slot",
                    side.name(),
                    s.late
                ));
            }
        }
    }
}

/// The stub direct (plain and TLS), tollgate and mitmproxy, each checked with one request.
async fn start_interception_run(
    harness: &mut Harness,
    report: &mut Report,
    tag: &str,
) -> Result<InterceptionRun, String> {
    let stub = stub(harness).await?;
    let authority = format!("{API_HOST}:443");
    let mut run = InterceptionRun {
        sides: vec![
            (Side::Direct, Route::api(stub.plain, false, harness.origin, &authority, None)),
            (Side::DirectTls, Route::api(stub.tls, false, harness.origin, &authority, Some(stub.dial.clone()))),
        ],
        missing: Vec::new(),
        proxies: Vec::new(),
    };
    for (side, t) in &run.sides {
        smoke_once(t).await.map_err(|e| format!("the stub, {}: {e}", side.name()))?;
    }
    let (proxy, t) = start_tollgate_interception(harness, stub.plain).await?;
    println!(
        "- `{tag}` tollgate started: pid {}, {} (intercepting {API_HOST}, routed to the stub)",
        proxy.pid(),
        t.addr
    );
    run.sides.push((Side::Tollgate, t));
    run.proxies.push(proxy);
    match start_mitmproxy(harness, stub.plain).await {
        Ok((proxy, t)) => {
            println!("- `{tag}` mitmproxy started: pid {}, {}", proxy.pid(), t.addr);
            run.sides.push((Side::Mitmproxy, t));
            run.proxies.push(proxy);
        }
        Err(e) if e == "not installed" => {
            println!("- `{tag}` mitmproxy: not installed");
            run.missing.push((Side::Mitmproxy, e));
        }
        Err(e) => {
            println!("- `{tag}` mitmproxy: could not start: {e}");
            let n = report.footnote(format!("{tag}: mitmproxy: {e}"));
            run.missing.push((Side::Mitmproxy, format!("failed [{n}]")));
        }
    }
    Ok(run)
}

/// Scenario intercept: non-streamed `POST /v1/messages` back to back over `INTERCEPT_TUNNELS` tunnels, then paced
/// at `PACED_RATE` over `PACED_TUNNELS`; then the first handshake to a new host against a cached one.
async fn measure_interception(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let run = start_interception_run(harness, report, "intercept").await?;
    let names = run.names();
    let (rounds, duration) = (harness.options.rounds, Duration::from_secs(harness.options.round_secs));
    // The tunnels of a round are opened (CONNECT, TLS handshake) before its clock and CPU count start.
    let round = |i: usize, conns: usize, rate: Option<u32>| {
        let (t, pid) = (run.target(i), run.pid(i));
        async move {
            let warm = open_ahead(t, conns, true).await;
            let req = Arc::new(t.messages_req(false));
            let body = STUB_MESSAGE.len() as u64;
            let load =
                KeepAliveLoad { conns, req, body, tunnel: true, warm, rate, max_requests: KEEP_ALIVE_MAX_REQUESTS };
            with_proxy_cpu(pid, run_keep_alive_load(t, duration, load)).await
        }
    };

    let s = interleaved(rounds, "`intercept`", &names, "req/s", |i| round(i, INTERCEPT_TUNNELS, None)).await;
    report.api(
        format!(
            "intercept. `POST /v1/messages` (non-streamed), {INTERCEPT_TUNNELS} keep-alive tunnels, back to back (req/s)"
        ),
        run.series_cells(&s, |s| &s.rate),
        0,
        Goal::TimesMitmproxy(20.0),
    );
    report.api("intercept. latency p50 (µs)".into(), run.series_cells(&s, |s| &s.p50), 0, Goal::None);
    report.api("intercept. latency p99 (µs)".into(), run.series_cells(&s, |s| &s.p99), 0, Goal::None);
    report.api(
        "intercept. proxy CPU per request, user + kernel, all threads (µs)".into(),
        run.cells(|side, i| {
            matches!(side, Side::Tollgate | Side::Mitmproxy).then(|| median_of(&s[i].cpu).unwrap_or(f64::NAN))
        }),
        1,
        Goal::None,
    );
    report.api(
        "intercept. one free core's worth: 10⁶ / CPU per request (req/s; unlike req/s, not skewed by other processes \
         on the proxy's core)"
            .into(),
        run.cells(|side, i| {
            matches!(side, Side::Tollgate | Side::Mitmproxy).then(|| median_of(&s[i].cpu).map_or(f64::NAN, |c| 1e6 / c))
        }),
        0,
        Goal::TimesMitmproxy(20.0),
    );
    run.notes(report, "intercept", &s);
    run.contention(report, "intercept", &s);

    let p =
        interleaved(rounds, "`intercept` paced", &names, "req/s", |i| round(i, PACED_TUNNELS, Some(PACED_RATE))).await;
    run.paced_rows(report, "pinned", &p);
    if harness.pin_children {
        let shared = interleaved(rounds, "`intercept` paced, shared cores", &names, "req/s", |i| {
            on_shared_cores(run.pid(i), round(i, PACED_TUNNELS, Some(PACED_RATE)))
        })
        .await;
        run.paced_rows(report, "shared cores", &shared);
    }

    // Minting: each round, new names; the direct TLS side shows a handshake with a fixed certificate.
    let mut minted: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); run.sides.len()];
    for r in 1..=rounds {
        for (i, (side, t)) in run.sides.iter().enumerate() {
            if *side == Side::Direct {
                continue;
            }
            let host = |h: usize| {
                if *side == Side::DirectTls {
                    Ok(t.clone())
                } else {
                    t.for_host(&format!("h{r}-{h}.{MINT_DOMAIN}"))
                }
            };
            match new_and_cached_handshakes(host).await {
                Ok((new, cached)) => {
                    println!(
                        "- `intercept` handshake round {r}/{rounds}, {}: new host {new:.0} µs, cached host {cached:.0} µs \
                         (medians of {MINT_HOSTS})",
                        side.name()
                    );
                    minted[i].0.push(new);
                    minted[i].1.push(cached);
                }
                Err(e) => {
                    println!("- `intercept` handshake round {r}/{rounds}, {}: failed: {e}", side.name());
                    report.footnote(format!("mint {}: {e}", side.name()));
                }
            }
            sleep(ROUND_PAUSE).await;
        }
    }
    let pick = |i: usize, new: bool| median_of(if new { &minted[i].0 } else { &minted[i].1 }).unwrap_or(f64::NAN);
    report.api(
        format!("mint. CONNECT + TLS handshake, new host: leaf minted (µs, median of {MINT_HOSTS} hosts)"),
        run.cells(|side, i| (side != Side::DirectTls && side != Side::Direct).then(|| pick(i, true))),
        0,
        Goal::None,
    );
    report.api(
        "mint. CONNECT + TLS handshake, cached host (µs; direct TLS: TCP + TLS handshake to the stub)".into(),
        run.cells(|side, i| (side != Side::Direct).then(|| pick(i, false))),
        0,
        Goal::None,
    );
    drop(run);
    Ok(())
}

/// `MINT_HOSTS` hosts (`host(i)`), each opened twice in a row (connect, CONNECT, TLS handshake, close): the
/// first to a new host mints its leaf, the second finds it cached. Each median, µs.
async fn new_and_cached_handshakes(host: impl Fn(usize) -> Result<Route, String>) -> Result<(f64, f64), String> {
    let (mut new, mut cached) = (Vec::new(), Vec::new());
    for h in 0..MINT_HOSTS {
        let t = host(h)?;
        for out in [&mut new, &mut cached] {
            let t0 = Instant::now();
            match timeout(IO_TIMEOUT, t.tunnel(1024)).await {
                Ok(Ok(_)) => out.push(t0.elapsed().as_secs_f64() * 1e6),
                Ok(Err(e)) => return Err(format!("{:?}: {e}", t.authority)),
                Err(_) => return Err(format!("{:?}: timeout", t.authority)),
            }
        }
    }
    Ok((median(new), median(cached)))
}

/// Scenario sse: streamed responses; time to the first event, each later event's delay, per side.
async fn measure_streaming(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let run = start_interception_run(harness, report, "sse").await?;
    let names = run.names();
    let (rounds, duration) = (harness.options.rounds, Duration::from_secs(harness.options.round_secs));
    let s = interleaved(rounds, "`sse`", &names, "streams/s", |i| {
        let (t, pid) = (run.target(i), run.pid(i));
        async move {
            let warm = open_ahead(t, SSE_CONNECTIONS, true).await;
            with_proxy_cpu(pid, streamed_responses(t, duration, warm)).await
        }
    })
    .await;
    let tag = format!("sse. {SSE_CONNECTIONS} connections, {SSE_EVENTS} events per response, {SSE_GAP:?} apart");
    report.api(format!("{tag}: time to first event p50 (µs)"), run.series_cells(&s, |s| &s.p50), 0, Goal::None);
    report.api(format!("{tag}: time to first event p99 (µs)"), run.series_cells(&s, |s| &s.p99), 0, Goal::None);
    report.api(
        "sse. added time to first event p50, over direct (µs)".into(),
        run.added_cells(&s, |s| &s.p50),
        0,
        Goal::None,
    );
    report.api(
        "sse. event delay, stub's send → client's read, mean (µs)".into(),
        run.series_cells(&s, |s| &s.event_mean),
        0,
        Goal::None,
    );
    report.api("sse. event delay p99 (µs)".into(), run.series_cells(&s, |s| &s.event_p99), 0, Goal::None);
    report.api(
        "sse. added latency per event, mean over direct (µs)".into(),
        run.added_cells(&s, |s| &s.event_mean),
        0,
        Goal::Below(1000.0),
    );
    report.api(
        "sse. added latency per event, p99 over direct (µs)".into(),
        run.added_cells(&s, |s| &s.event_p99),
        0,
        Goal::None,
    );
    report.api(
        format!("sse. proxy CPU per streamed response ({SSE_EVENTS} events), all threads (µs)"),
        run.cells(|side, i| {
            matches!(side, Side::Tollgate | Side::Mitmproxy).then(|| median_of(&s[i].cpu).unwrap_or(f64::NAN))
        }),
        0,
        Goal::None,
    );
    run.notes(report, "sse", &s);
    run.contention(report, "sse", &s);
    drop(run);
    Ok(())
}

/// Scenario sse on one side: `SSE_CONNECTIONS` keep-alive connections (tunnels), each asking for one streamed response
/// after the other (`warm`: connections already open). Records the time from sending the request to reading the
/// first event, and for every later event its delay from the stub's send (its `id:` stamp) to the client's read.
async fn streamed_responses(t: &Route, duration: Duration, warm: Vec<Connection>) -> RateRound {
    let req = Arc::new(t.messages_req(true));
    let t = t.clone();
    let warm = Arc::new(Mutex::new(warm));
    run_workers(SSE_CONNECTIONS, duration, SSE_MAX_STREAMS, move |deadline, budget| {
        let (req, t) = (req.clone(), t.clone());
        let mut conn: Option<Connection> = warm.lock().ok().and_then(|mut v| v.pop());
        async move {
            let mut stats = Stats::default();
            stats.connections_opened += u64::from(conn.is_some());
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                let res = timeout(IO_TIMEOUT, async {
                    if conn.is_none() {
                        conn = Some(t.tunnel(SMALL_READ_BUFFER).await?);
                        stats.connections_opened += 1;
                    }
                    stream_once(conn.as_mut().expect("connection just opened"), &req).await
                })
                .await;
                match res {
                    Ok(Ok(streamed)) => {
                        stats.sample(streamed.first_ns);
                        if stats.event_delays_ns.len() + streamed.delays_ns.len() <= MAX_SAMPLES_PER_WORKER {
                            stats.event_delays_ns.extend(streamed.delays_ns);
                        }
                        if !streamed.keep_alive {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        stats.error(e);
                        conn = None;
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        stats.error("timeout");
                        conn = None;
                    }
                }
            }
            stats
        }
    })
    .await
}

/// One streamed response, read event by event.
struct Streamed {
    /// From sending the request to reading the first event.
    first_ns: u64,
    /// Every later event: from the stub's send to the client's read.
    delays_ns: Vec<u64>,
    keep_alive: bool,
}

/// Sends a streamed request on `c` and reads its events as they arrive; all `SSE_EVENTS` must come, the last
/// `message_stop`.
async fn stream_once(c: &mut Connection, req: &[u8]) -> io::Result<Streamed> {
    let t0 = Instant::now();
    c.send(req).await?;
    let h = c.head().await?;
    if h.status != 200 {
        return Err(io::Error::other(format!("status {}", h.status)));
    }
    let mut framing = Framing::of(&h);
    let keep_alive = h.persistent() && !matches!(framing, Framing::Eof);
    let mut pending: Vec<u8> = Vec::new();
    let (mut first_ns, mut events, mut stopped) = (None, 0, false);
    let mut delays_ns = Vec::with_capacity(SSE_EVENTS);
    while let Some(piece) = c.piece(&mut framing).await? {
        let (now, now_ns) = (Instant::now(), stamp_ns());
        pending.extend_from_slice(&piece);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            events += 1;
            if events > SSE_EVENTS {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "more events than the stub sent"));
            }
            if first_ns.is_none() {
                first_ns = Some(now.duration_since(t0).as_nanos() as u64);
            } else if let Some(sent) =
                event.lines().find_map(|l| l.strip_prefix("id:")).and_then(|v| v.trim().parse::<u64>().ok())
            {
                delays_ns.push(now_ns.saturating_sub(sent));
            }
            stopped = event.lines().any(|l| l == "event: message_stop");
        }
    }
    match first_ns {
        Some(first_ns) if stopped && events == SSE_EVENTS => Ok(Streamed { first_ns, delays_ns, keep_alive }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the response ended after {events} of {SSE_EVENTS} events"),
        )),
    }
}

/// Runs one tollgate-only scenario; a failure becomes a row and a note.
async fn run_feature(harness: &mut Harness, report: &mut Report, scenario: Scenario) {
    let (name, res) = match scenario {
        Scenario::Tls => ("tls", measure_tls(harness, report).await),
        Scenario::Limits => ("limits", measure_limits(harness, report).await),
        Scenario::Redis => ("redis", measure_redis(harness, report).await),
        Scenario::Reload => ("reload", measure_reload(harness, report).await),
        Scenario::Intercept => ("intercept", measure_interception(harness, report).await),
        Scenario::Sse => ("sse", measure_streaming(harness, report).await),
        Scenario::KeepAlive | Scenario::ConnectGetClose | Scenario::Bulk | Scenario::IdleTunnels => return,
    };
    if let Err(e) = &res {
        if matches!(scenario, Scenario::Intercept | Scenario::Sse) {
            println!("- `{name}`: failed: {e}");
            report.interception_failed(format!("{name}."), format!("{name}: {e}"));
            return;
        }
    }
    if let Err(e) = res {
        println!("- `tollgate` {name}: failed: {e}");
        report.feature_skipped(format!("{name}."), "failed", Some(format!("{name}: {e}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// Scenarios a, b and c against one target (one proxy instance for all of them).
async fn run_rate_scenarios(harness: &mut Harness, report: &mut Report, kind: Target) {
    let rate_scenarios: Vec<Scenario> = harness
        .options
        .scenarios
        .iter()
        .copied()
        .filter(|s| matches!(s, Scenario::KeepAlive | Scenario::ConnectGetClose | Scenario::Bulk))
        .collect();
    if rate_scenarios.is_empty() {
        return;
    }
    let all_metrics = [
        Metric::KeepAliveRate,
        Metric::KeepAliveP50,
        Metric::KeepAliveP99,
        Metric::ConnectRate,
        Metric::BulkThroughput,
    ];
    let proxy = if kind == Target::Direct {
        None
    } else {
        match start_proxy(harness, kind).await {
            Ok(p) => Some(p),
            Err(e) => {
                println!("- `{}`: could not start: {e}", kind.name());
                report.fail(&all_metrics, kind, format!("{}: {e}", kind.name()));
                return;
            }
        }
    };
    let t = Route::plain(proxy.as_ref().map_or(harness.origin, |p| p.addr), proxy.is_some(), harness.origin);
    if let Some(p) = &proxy {
        println!("- `{}` started: pid {}, {}", kind.name(), p.pid(), p.addr);
    }
    let rounds = harness.options.rounds;
    let duration = Duration::from_secs(harness.options.round_secs);
    let name = kind.name();

    if rate_scenarios.contains(&Scenario::KeepAlive) {
        let (mut rps, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        let mut errors = 0;
        let mut connections_opened = 0;
        let mut stale = 0;
        let mut last_error = None;
        for r in 1..=rounds {
            let round = keep_alive_gets(&t, duration).await;
            println!("- `{name}` a round {r}/{rounds}: {}", round.describe("req/s"));
            if round.stats.ok > 0 {
                rps.push(round.rate);
                p50.push(round.p50_us);
                p99.push(round.p99_us);
            }
            errors += round.stats.errors;
            connections_opened += round.stats.connections_opened;
            stale += round.stats.stale;
            last_error = round.stats.last_error.or(last_error);
            sleep(ROUND_PAUSE).await;
        }
        if rps.is_empty() {
            report.fail(
                &[Metric::KeepAliveRate, Metric::KeepAliveP50, Metric::KeepAliveP99],
                kind,
                format!("{name} a: no successful request ({})", last_error.unwrap_or_default()),
            );
        } else {
            println!(
                "  - `{name}` a rounds: req/s [{}], p50 µs [{}], p99 µs [{}]",
                format_rounds(&rps, 0),
                format_rounds(&p50, 0),
                format_rounds(&p99, 0)
            );
            report.set(Metric::KeepAliveRate, kind, median(rps));
            report.set(Metric::KeepAliveP50, kind, median(p50));
            report.set(Metric::KeepAliveP99, kind, median(p99));
            if errors > 0 {
                report.footnote(format!(
                    "{name} a: {errors} failed requests over {rounds} rounds (last: {})",
                    last_error.unwrap_or_default()
                ));
            }
            let per_round = connections_opened as f64 / rounds as f64;
            if per_round > 2.0 * KEEP_ALIVE_CONNECTIONS as f64 {
                report.footnote(format!(
                    "{name} a: the proxy did not keep client connections alive \
                     ({per_round:.0} connections opened per round for {KEEP_ALIVE_CONNECTIONS} clients; \
                     {stale} requests were re-sent on a new connection because the proxy closed \
                     the previous one after a response that did not say `Connection: close`; \
                     their latency includes the failed attempt)"
                ));
            }
        }
    }

    if rate_scenarios.contains(&Scenario::ConnectGetClose) {
        let mut rates = Vec::new();
        let mut errors = 0;
        let mut last_error = None;
        for r in 1..=rounds {
            let round = connect_get_close(&t, duration).await;
            println!("- `{name}` b round {r}/{rounds}: {}", round.describe("conn/s"));
            if round.stats.ok > 0 {
                rates.push(round.rate);
            }
            errors += round.stats.errors;
            last_error = round.stats.last_error.or(last_error);
            sleep(ROUND_PAUSE).await;
        }
        if rates.is_empty() {
            report.fail(
                &[Metric::ConnectRate],
                kind,
                format!("{name} b: no successful operation ({})", last_error.unwrap_or_default()),
            );
        } else {
            println!("  - `{name}` b rounds: conn/s [{}]", format_rounds(&rates, 0));
            report.set(Metric::ConnectRate, kind, median(rates));
            if errors > 0 {
                report.footnote(format!(
                    "{name} b: {errors} failed operations over {rounds} rounds (last: {})",
                    last_error.unwrap_or_default()
                ));
            }
        }
    }

    if rate_scenarios.contains(&Scenario::Bulk) {
        let mut rates = Vec::new();
        let mut last_error = None;
        for r in 1..=rounds {
            match bulk_download(&t).await {
                Ok(v) => {
                    println!("- `{name}` c round {r}/{rounds}: {v:.0} MiB/s");
                    rates.push(v);
                }
                Err(e) => {
                    println!("- `{name}` c round {r}/{rounds}: failed: {e}");
                    last_error = Some(e);
                }
            }
            sleep(ROUND_PAUSE).await;
        }
        if rates.is_empty() {
            report.fail(&[Metric::BulkThroughput], kind, format!("{name} c: {}", last_error.unwrap_or_default()));
        } else {
            println!("  - `{name}` c rounds: MiB/s [{}]", format_rounds(&rates, 0));
            report.set(Metric::BulkThroughput, kind, median(rates));
            if let Some(e) = last_error {
                report.footnote(format!("{name} c: a round failed: {e}"));
            }
        }
    }
    if let Some(p) = &proxy {
        if let Some((kib, n)) = tree_rss_kib(p.pid()) {
            println!("  - `{name}` RSS after a/b/c: {kib} KiB in {n} process(es)");
        }
    }
    drop(proxy);
}

/// Scenario d against one proxy: a fresh instance per round.
async fn run_idle_tunnel_memory(harness: &mut Harness, report: &mut Report, kind: Target) {
    let name = kind.name();
    let rounds = harness.options.rounds;
    let mut vals = Vec::new();
    let mut last_error = None;
    for r in 1..=rounds {
        let proxy = match start_proxy(harness, kind).await {
            Ok(p) => p,
            Err(e) => {
                last_error = Some(e);
                break;
            }
        };
        let t = Route::plain(proxy.addr, true, harness.origin);
        match idle_tunnel_memory(&proxy, &t, harness.options.tunnels).await {
            Ok(d) => {
                let mut line = format!(
                    "- `{name}` d round {r}/{rounds}: {:.1} KiB/tunnel ({} tunnels open, RSS {} -> {} KiB, {} process(es)",
                    d.kib_per_tunnel, d.opened, d.before_kib, d.after_kib, d.processes
                );
                if d.errors > 0 {
                    let _ = write!(line, ", {} errors, last: {}", d.errors, d.last_error.clone().unwrap_or_default());
                }
                line.push(')');
                println!("{line}");
                if d.opened < harness.options.tunnels {
                    report.footnote(format!(
                        "{name} d round {r}: only {} of {} tunnels opened (last error: {})",
                        d.opened,
                        harness.options.tunnels,
                        d.last_error.unwrap_or_default()
                    ));
                }
                vals.push(d.kib_per_tunnel);
            }
            Err(e) => {
                println!("- `{name}` d round {r}/{rounds}: failed: {e}");
                last_error = Some(e);
            }
        }
        drop(proxy);
        sleep(ROUND_PAUSE).await;
    }
    if vals.is_empty() {
        report.fail(&[Metric::RssPerTunnel], kind, format!("{name} d: {}", last_error.unwrap_or_default()));
    } else {
        println!("  - `{name}` d rounds: KiB/tunnel [{}]", format_rounds(&vals, 1));
        report.set(Metric::RssPerTunnel, kind, median(vals));
    }
}

async fn run(mut harness: Harness) -> Report {
    let mut report = Report::default();
    // Ctrl-C, SIGTERM, SIGHUP: kill the children, then leave.
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        let pids: Vec<u32> = CHILD_PIDS.lock().map(|v| v.clone()).unwrap_or_default();
        for pid in pids {
            kill_pids(&process_tree(pid));
        }
        eprintln!("load: interrupted, children killed");
        std::process::exit(130);
    });
    let compares_targets = harness.options.scenarios.iter().any(|s| Scenario::COMPARING_TARGETS.contains(s));
    for kind in Target::ALL {
        if !compares_targets {
            break;
        }
        if !harness.options.targets.contains(&kind) {
            report.note(&Metric::ALL, kind, "not run");
            continue;
        }
        if kind != Target::Direct && !harness.binaries.contains_key(&kind) {
            println!("- `{}`: not installed", kind.name());
            report.note(&Metric::ALL, kind, "not installed");
            continue;
        }
        run_rate_scenarios(&mut harness, &mut report, kind).await;
        if harness.options.scenarios.contains(&Scenario::IdleTunnels) {
            if kind == Target::Direct {
                report.note(&[Metric::RssPerTunnel], kind, "n/a");
            } else {
                run_idle_tunnel_memory(&mut harness, &mut report, kind).await;
            }
        }
    }
    let features: Vec<Scenario> =
        harness.options.scenarios.iter().copied().filter(|s| !Scenario::COMPARING_TARGETS.contains(s)).collect();
    if !features.is_empty() && !harness.binaries.contains_key(&Target::Tollgate) {
        println!("- tls, limits, redis, reload, intercept, sse: not run (they need the target tollgate)");
    } else {
        for scenario in features {
            run_feature(&mut harness, &mut report, scenario).await;
        }
    }
    report
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let have_taskset = which("taskset").is_some();

    // Binaries.
    let mut binaries = BTreeMap::new();
    let mut versions = Vec::new();
    if options.targets.contains(&Target::Tollgate) {
        let bin = tollgate_binary();
        if !bin.is_file() {
            eprintln!(
                "load: tollgate binary not found at {}\n\
                 load: run `cargo build --release` first (or set TOLLGATE_BIN, \
                 or pass `--only direct,squid,tinyproxy`)",
                bin.display()
            );
            return ExitCode::from(2);
        }
        versions.push(format!("tollgate: {} ({})", first_line(&bin, &["--version"]), bin.display()));
        binaries.insert(Target::Tollgate, bin);
    }
    for (kind, env, name, vflag) in
        [(Target::Squid, "SQUID_BIN", "squid", "-v"), (Target::Tinyproxy, "TINYPROXY_BIN", "tinyproxy", "-v")]
    {
        if !options.targets.contains(&kind) {
            continue;
        }
        let bin = std::env::var_os(env).map(PathBuf::from).or_else(|| which(name));
        match bin {
            Some(b) if b.is_file() => {
                versions.push(format!("{name}: {} ({})", first_line(&b, &[vflag]), b.display()));
                binaries.insert(kind, b);
            }
            _ => versions.push(format!("{name}: not installed (`apt-get install -y {name}`)")),
        }
    }

    if options.scenarios.iter().any(|s| matches!(s, Scenario::Intercept | Scenario::Sse)) {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mitmproxy-venv/bin/mitmdump");
        let bin = std::env::var_os("MITMDUMP_BIN")
            .map(PathBuf::from)
            .or_else(|| venv.is_file().then_some(venv))
            .or_else(|| which("mitmdump"));
        match bin {
            Some(b) if b.is_file() => {
                versions.push(format!("mitmproxy: {} ({})", first_line(&b, &["--version"]), b.display()));
                binaries.insert(Target::Mitmproxy, b);
            }
            _ => versions
                .push("mitmproxy: not installed (`benches/run-load.sh` installs it into target/mitmproxy-venv)".into()),
        }
    }

    // Host set-up, before any thread is started.
    let pinned = pin_self(cores, have_taskset);
    let pin_children = cores >= 2 && have_taskset;
    let need_nofile = 2 * options.tunnels as u64 + 1024;
    let (nofile, nofile_msg) = raise_open_file_limit(need_nofile);

    let temp_dir = match tempfile::Builder::new().prefix("tollgate-load-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("load: cannot create a temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();

    println!("# tollgate load report\n");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    println!("- command: `cargo bench --bench load -- {}`", args.join(" ").trim());
    println!("- date: {date}; kernel {}; {cores} cores", kernel.trim());
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = loadavg.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    println!(
        "- load average at start: {}{}",
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        if load1 > 0.5 { " (WARNING: the machine is busy; numbers will be noisy)" } else { "" }
    );
    println!("- load generator + origin (one tokio thread): {pinned}");
    println!(
        "- proxies: {}",
        if pin_children {
            "core 1 (`taskset -c 1`), one proxy running at a time"
        } else {
            "NOT pinned (needs taskset and 2 cores)"
        }
    );
    println!("- RLIMIT_NOFILE: {nofile_msg}");
    println!(
        "- mode: {} ({} s per round for a, b, tls, limits/redis, intercept and sse, {RELOAD_SECONDS} s for reload), {} \
         rounds per scenario, median reported; d opens {} tunnels",
        if options.quick { "--quick" } else { "full" },
        options.round_secs,
        options.rounds,
        options.tunnels
    );
    for v in &versions {
        println!("- {v}");
    }
    println!("- temp dir: {}\n", temp_dir.path().display());
    if nofile < need_nofile && options.scenarios.contains(&Scenario::IdleTunnels) {
        println!(
            "- WARNING: RLIMIT_NOFILE {nofile} is too low for {} tunnels; scenario d will open fewer\n",
            options.tunnels
        );
    }

    let run_options = options.clone();
    let report = rt.block_on(async {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => return Err(format!("cannot bind the origin: {e}")),
        };
        let origin = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(serve(listener, Served::Origin, None));
        println!("## progress (origin on {origin})\n");
        let harness = Harness {
            options: run_options,
            origin,
            temp_dir: temp_dir.path().to_path_buf(),
            pin_children,
            binaries,
            instances: 0,
            basic_user_hash: None,
            stub: None,
        };
        Ok(run(harness).await)
    });
    // Stop the origin's tasks before the temp dir goes.
    drop(rt);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::FAILURE;
        }
    };

    println!("\n## results (median of {} rounds)", options.rounds);
    let compares_targets = options.scenarios.iter().any(|s| Scenario::COMPARING_TARGETS.contains(s));
    if compares_targets {
        print!("\n{}", report.table(&options));
    }
    if options.scenarios.contains(&Scenario::KeepAlive) {
        println!("\n### a. keep-alive GET latency\n");
        print!("{}", report.latency_table());
    }
    if !report.features.is_empty() {
        println!("\n### tollgate only: TLS listener, limits, Redis state, reload (baseline and measured in one run)\n");
        print!("{}", report.feature_table());
    }
    if !report.api.is_empty() {
        println!("\n### interception: tollgate, the stub direct (plain and TLS) and mitmproxy (same run)\n");
        print!("{}", report.interception_table());
    }
    if !report.notes.is_empty() {
        println!("\n### notes\n");
        for (i, n) in report.notes.iter().enumerate() {
            println!("{}. {n}", i + 1);
        }
    }
    if compares_targets {
        println!(
            "\nratios are target/direct: for req/s, conn/s and MiB/s higher is better, for latency lower is better. \
             b for direct is connect + GET + close without a proxy; d has no direct value. \
             d is the growth of the summed VmRSS of the proxy's process tree divided by the tunnels opened."
        );
    }
    if !report.api.is_empty() {
        println!(
            "\nin the interception table every cell is the median of rounds that run direct, direct TLS, tollgate and \
             mitmproxy in turn; \"added\" is the side's value minus direct's. Direct is the client speaking the same \
             HTTP/1.1 to the plain stub, direct TLS the same over TLS; both have client and stub on core 0 with no \
             proxy: the harness's ceiling. The intercepted tunnels are kept alive (one full TLS handshake each)."
        );
    }
    if !report.features.is_empty() {
        println!(
            "\nin the tollgate-only table the ratio is measured/baseline, each the median of rounds that alternate \
             baseline and measured; for latency lower is better. Every TLS connection is a full handshake (no \
             resumption)."
        );
    }
    ExitCode::SUCCESS
}
