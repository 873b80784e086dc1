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
//! The harness (load generator and origin server, one tokio thread) pins itself to core 0; each
//! proxy runs alone, pinned to core 1. Every load loop is bounded by time and by a count, every
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// Body size of `GET /` on the origin.
const SMALL_BODY: usize = 100;
/// Body size of `GET /bulk` on the origin (1 GiB).
const BULK_LEN: u64 = 1 << 30;
/// Read buffer of the bulk download.
const BULK_READ_BUF: usize = 256 * 1024;
/// Read buffer of the request/response scenarios.
const SMALL_READ_BUF: usize = 16 * 1024;
/// Scenario a: concurrent keep-alive connections.
const KA_CONNS: usize = 32;
/// Scenario b: concurrent CONNECT + GET + close workers.
const CC_WORKERS: usize = 16;
/// Scenario d: concurrent openers.
const RSS_OPENERS: usize = 64;
/// Hard cap on requests in one round of scenario a (the time bound normally ends it first).
const KA_MAX_REQUESTS: u64 = 5_000_000;
/// Hard cap on operations in one round of scenario b.
const CC_MAX_OPS: u64 = 1_000_000;
/// Hard cap on recorded latencies per worker (memory bound).
const MAX_SAMPLES_PER_WORKER: usize = 1_000_000;
/// A worker gives up after this many errors in one round.
const MAX_ERRORS_PER_WORKER: u64 = 200;
/// Timeout of one request/response exchange (including connect).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one 1 GiB download.
const BULK_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed to open all idle tunnels of scenario d.
const RSS_OPEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Readiness: connect attempts, 100 ms apart.
const READY_ATTEMPTS: u32 = 150;
/// RLIMIT_NOFILE the harness asks for (5,000 tunnels need ~10,000 descriptors on each side).
const WANT_NOFILE: u64 = 65536;
/// Pause between rounds, so closing sockets of one round do not load the next.
const ROUND_PAUSE: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Targets, scenarios, options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Direct,
    Tollgate,
    Squid,
    Tinyproxy,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Direct, Kind::Tollgate, Kind::Squid, Kind::Tinyproxy];

    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Tollgate => "tollgate",
            Kind::Squid => "squid",
            Kind::Tinyproxy => "tinyproxy",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Scen {
    A,
    B,
    C,
    D,
    /// tollgate only: the TLS listener against the plain one (e, f), TLS and mTLS handshakes (g, h).
    Tls,
    /// tollgate only: scenario a with team and org/user limits against the same without.
    Limits,
    /// tollgate only: scenario a with limits in Redis against the embedded backend.
    Redis,
    /// tollgate only: scenario a with 10,000 allow rules while the config is reloaded once a second.
    Reload,
}

impl Scen {
    const ALL: [Scen; 8] = [Scen::A, Scen::B, Scen::C, Scen::D, Scen::Tls, Scen::Limits, Scen::Redis, Scen::Reload];
    /// The scenarios that compare targets (the first table); the others are tollgate's features.
    const TARGETS: [Scen; 4] = [Scen::A, Scen::B, Scen::C, Scen::D];

    fn parse(s: &str) -> Option<Scen> {
        match s {
            "a" | "keepalive" | "keep-alive" => Some(Scen::A),
            "b" | "connect" | "cc" => Some(Scen::B),
            "c" | "bulk" | "throughput" => Some(Scen::C),
            "d" | "rss" | "memory" => Some(Scen::D),
            "tls" | "e" | "f" | "g" | "h" => Some(Scen::Tls),
            "limits" => Some(Scen::Limits),
            "redis" => Some(Scen::Redis),
            "reload" => Some(Scen::Reload),
            _ => None,
        }
    }
}

/// One row of the result table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Metric {
    KaRps,
    KaP50,
    KaP99,
    CcRate,
    BulkMibs,
    RssKib,
}

impl Metric {
    const ALL: [Metric; 6] =
        [Metric::KaRps, Metric::KaP50, Metric::KaP99, Metric::CcRate, Metric::BulkMibs, Metric::RssKib];

    fn label(self, opts: &Opts) -> String {
        match self {
            Metric::KaRps => format!("a. keep-alive GET, {KA_CONNS} conns (req/s)"),
            Metric::KaP50 => "a. latency p50 (µs)".to_string(),
            Metric::KaP99 => "a. latency p99 (µs)".to_string(),
            Metric::CcRate => format!("b. CONNECT + GET + close, {CC_WORKERS} workers (conn/s)"),
            Metric::BulkMibs => "c. 1 GiB through one tunnel (MiB/s)".to_string(),
            Metric::RssKib => format!("d. RSS per idle tunnel, {} tunnels (KiB)", opts.tunnels),
        }
    }

    fn decimals(self) -> usize {
        match self {
            Metric::RssKib => 1,
            _ => 0,
        }
    }
}

#[derive(Clone)]
struct Opts {
    quick: bool,
    rounds: usize,
    round_secs: u64,
    tunnels: usize,
    kinds: Vec<Kind>,
    scens: Vec<Scen>,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--quick] [--only NAME[,NAME...]] [--rounds N] [--tunnels N]
  NAME: direct, tollgate, squid, tinyproxy (targets) or a|keepalive, b|connect, c|bulk, d|rss (scenarios)
        or tls, limits, redis, reload (tollgate-only scenarios)
  env:  TOLLGATE_BIN (default target/release/tollgate), SQUID_BIN, TINYPROXY_BIN";

fn parse_args() -> Result<Opts, String> {
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
    let mut kinds = Vec::new();
    let mut scens = Vec::new();
    for name in &only {
        if let Some(k) = Kind::ALL.iter().find(|k| k.name() == name) {
            kinds.push(*k);
        } else if let Some(s) = Scen::parse(name) {
            scens.push(s);
        } else {
            return Err(format!("--only: unknown name {name:?}\n{USAGE}"));
        }
    }
    if kinds.is_empty() {
        kinds = Kind::ALL.to_vec();
    }
    if scens.is_empty() {
        scens = Scen::ALL.to_vec();
    }
    kinds.sort();
    kinds.dedup();
    scens.sort();
    scens.dedup();
    Ok(Opts { quick, rounds, round_secs: if quick { 2 } else { 5 }, tunnels, kinds, scens })
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

fn log_tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let from = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[from..]).trim().replace('\n', " | ")
}

/// A running proxy. Dropping it kills the process and its descendants.
struct Proxy {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    fn pid(&self) -> u32 {
        self.child.id()
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

fn nofile_limits() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let soft = it.next()?.parse().ok()?;
    let hard = it.next()?.parse().ok()?;
    Some((soft, hard))
}

/// Raises RLIMIT_NOFILE of this process with `prlimit` (children inherit it).
/// `need`: descriptors scenario d needs in this process.
fn raise_nofile(need: u64) -> (u64, String) {
    let pid = std::process::id().to_string();
    let before = nofile_limits();
    if let Some((soft, _)) = before {
        if soft >= WANT_NOFILE {
            return (soft, format!("{soft} (already)"));
        }
    }
    let mut how = String::new();
    for spec in [
        format!("--nofile={WANT_NOFILE}:{WANT_NOFILE}"),
        // Without privileges, at least raise the soft limit to the hard one.
        format!(
            "--nofile={}:{}",
            before.map_or(WANT_NOFILE, |(_, h)| h.min(WANT_NOFILE)),
            before.map_or(WANT_NOFILE, |(_, h)| h)
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
    let now = nofile_limits().map_or(0, |(s, _)| s);
    if now >= WANT_NOFILE {
        (now, format!("{now} (raised with prlimit)"))
    } else {
        let verdict = if now >= need {
            "enough for scenario d".to_string()
        } else {
            format!("TOO LOW for scenario d, which needs about {need}")
        };
        (
            now,
            format!("{now}: could not raise it to {WANT_NOFILE} ({how}run under `ulimit -n {WANT_NOFILE}`); {verdict}"),
        )
    }
}

fn tollgate_bin() -> PathBuf {
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
// Origin server (in-process, HTTP/1.1 keep-alive)
// ---------------------------------------------------------------------------------------------

fn small_response(close: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {SMALL_BODY}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', SMALL_BODY));
    r
}

fn header_has(value: &[u8], token: &str) -> bool {
    String::from_utf8_lossy(value).split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

struct OriginReq {
    bulk: bool,
    close: bool,
    body: u64,
}

fn origin_req(req: &httparse::Request) -> OriginReq {
    let path = req.path.unwrap_or("/");
    // Accept absolute-form too (RFC 9112 3.2.2), in case a proxy forwards it unchanged.
    let path = path.strip_prefix("http://").map(|rest| rest.find('/').map_or("/", |i| &rest[i..])).unwrap_or(path);
    let http10 = req.version == Some(0);
    let mut close = http10;
    let mut body = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            if header_has(h.value, "close") {
                close = true;
            } else if http10 && header_has(h.value, "keep-alive") {
                // We never answer HTTP/1.0 keep-alive; keep it simple and close.
                close = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        }
    }
    OriginReq { bulk: path == "/bulk" || path.starts_with("/bulk?"), close, body }
}

async fn origin_conn(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let small_ka = small_response(false);
    let small_close = small_response(true);
    let mut buf = vec![0u8; SMALL_READ_BUF];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        let (n, req) = loop {
            if end > start {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut hs);
                match req.parse(&buf[start..end]) {
                    Ok(httparse::Status::Complete(n)) => break (n, origin_req(&req)),
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => {
                        s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await?;
                        return Ok(());
                    }
                }
            }
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            if end == buf.len() {
                s.write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await?;
                return Ok(());
            }
            let got = s.read(&mut buf[end..]).await?;
            if got == 0 {
                return Ok(());
            }
            end += got;
        };
        start += n;
        // Discard a request body, if any.
        let mut body = req.body;
        let buffered = ((end - start) as u64).min(body);
        start += buffered as usize;
        body -= buffered;
        while body > 0 {
            let got = s.read(&mut buf).await?;
            if got == 0 {
                return Ok(());
            }
            let used = (got as u64).min(body);
            body -= used;
            start = used as usize;
            end = got;
        }
        if start == end {
            start = 0;
            end = 0;
        }
        if req.bulk {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {BULK_LEN}\r\n{}\r\n",
                if req.close { "Connection: close\r\n" } else { "" }
            );
            s.write_all(head.as_bytes()).await?;
            let chunk = vec![b'b'; BULK_READ_BUF];
            let mut left = BULK_LEN;
            while left > 0 {
                let n = (chunk.len() as u64).min(left) as usize;
                s.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
        } else if req.close {
            s.write_all(&small_close).await?;
        } else {
            s.write_all(&small_ka).await?;
        }
        if req.close {
            let _ = s.shutdown().await;
            return Ok(());
        }
    }
}

/// Accepts until the runtime shuts down (end of `main`).
async fn origin_serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(async move {
                    let _ = origin_conn(s).await;
                });
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => sleep(Duration::from_millis(20)).await,
        }
    }
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

fn head_of(r: &httparse::Response) -> Head {
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
            h.chunked = header_has(hd.value, "chunked");
        } else if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("proxy-connection") {
            h.close |= header_has(hd.value, "close");
            h.keep_alive |= header_has(hd.value, "keep-alive");
        }
    }
    h
}

struct Resp {
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

struct Conn {
    s: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes received so far.
    read_bytes: u64,
}

/// One request and its response on an open connection.
async fn exchange(c: &mut Conn, req: &[u8]) -> io::Result<Resp> {
    c.send(req).await?;
    c.response(false).await
}

/// The peer closed the connection (as opposed to a protocol error).
fn closed(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early")
}

impl Conn {
    /// Connects to `addr`; with `tls`, makes the TLS handshake too.
    async fn open(addr: SocketAddr, tls: Option<&TlsDial>, buf: usize) -> io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let s = match tls {
            None => Stream::Tcp(tcp),
            Some(d) => Stream::Tls(Box::new(d.connector.connect(d.name.clone(), tcp).await?)),
        };
        Ok(Conn { s, buf: vec![0; buf], start: 0, end: 0, read_bytes: 0 })
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
            return Err(eof());
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
                        let h = head_of(&r);
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
        let take = ((self.end - self.start) as u64).min(n);
        self.start += take as usize;
        n -= take;
        while n > 0 {
            let got = self.read_some(0).await?;
            if got == 0 {
                return Err(eof());
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

    async fn dechunk(&mut self) -> io::Result<u64> {
        let mut total = 0;
        for _ in 0..1_000_000 {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                for _ in 0..100 {
                    if self.line().await?.is_empty() {
                        return Ok(total);
                    }
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too many trailers"));
            }
            self.skip(size).await?;
            total += size;
            if !self.line().await?.is_empty() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk end"));
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "too many chunks"))
    }

    async fn drain_to_eof(&mut self) -> io::Result<u64> {
        let mut total = (self.end - self.start) as u64;
        self.start = 0;
        self.end = 0;
        while total < 4 * BULK_LEN {
            let got = self.read_some(0).await?;
            if got == 0 {
                return Ok(total);
            }
            total += got as u64;
        }
        Err(io::Error::other("body without length too long"))
    }

    /// Reads one response; `connect`: the answer to a CONNECT (a 2xx has no body).
    async fn response(&mut self, connect: bool) -> io::Result<Resp> {
        let mut h = self.head().await?;
        let mut interim = 0;
        while (100..200).contains(&h.status) && h.status != 101 {
            interim += 1;
            if interim > 5 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too many 1xx"));
            }
            h = self.head().await?;
        }
        let mut keep_alive = if h.http10 { h.keep_alive } else { !h.close };
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
        Ok(Resp { status: h.status, keep_alive, body })
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
struct Target {
    /// Where the client connects: the origin (direct) or the proxy.
    addr: SocketAddr,
    proxy: bool,
    origin: SocketAddr,
    /// The proxy listener speaks TLS.
    tls: Option<TlsDial>,
    /// A `Proxy-Authorization` value sent with every request to the proxy.
    auth: Option<Arc<str>>,
}

impl Target {
    /// A plain-TCP target without credentials.
    fn plain(addr: SocketAddr, proxy: bool, origin: SocketAddr) -> Target {
        Target { addr, proxy, origin, tls: None, auth: None }
    }

    fn with_tls(&self, addr: SocketAddr, tls: TlsDial) -> Target {
        Target { addr, tls: Some(tls), ..self.clone() }
    }

    fn with_auth(&self, auth: &str) -> Target {
        Target { auth: Some(auth.into()), ..self.clone() }
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
        let o = self.origin;
        let auth = self.auth_line();
        format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n{auth}\r\n").into_bytes()
    }

    /// A connection to the proxy (or, direct, to the origin): TCP, plus the TLS handshake for a TLS listener.
    async fn open(&self, buf: usize) -> io::Result<Conn> {
        Conn::open(self.addr, self.tls.as_ref(), buf).await
    }

    /// A connection to the origin: direct, or through a CONNECT tunnel of the proxy.
    async fn tunnel(&self, buf: usize) -> io::Result<Conn> {
        let mut c = self.open(buf).await?;
        if self.proxy {
            c.send(&self.connect_req()).await?;
            let r = c.response(true).await?;
            if r.status != 200 {
                return Err(io::Error::other(format!("CONNECT answered {}", r.status)));
            }
        }
        Ok(c)
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    ok: u64,
    errors: u64,
    connects: u64,
    /// Requests retried on a new connection because the proxy had closed the kept-alive one.
    stale: u64,
    lat_ns: Vec<u64>,
    last_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.connects += o.connects;
        self.stale += o.stale;
        self.lat_ns.extend(o.lat_ns);
        if o.last_error.is_some() {
            self.last_error = o.last_error;
        }
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.last_error = Some(e.to_string());
    }

    fn record(&mut self, t0: Instant) {
        self.ok += 1;
        if self.lat_ns.len() < MAX_SAMPLES_PER_WORKER {
            self.lat_ns.push(t0.elapsed().as_nanos() as u64);
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

struct RateRound {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    stats: Stats,
}

impl RateRound {
    fn describe(&self, unit: &str) -> String {
        let mut s = format!(
            "{:.0} {unit}, p50 {:.0} µs, p99 {:.0} µs, {} ok, {} errors, {} connections opened",
            self.rate, self.p50_us, self.p99_us, self.stats.ok, self.stats.errors, self.stats.connects
        );
        if self.stats.stale > 0 {
            let _ = write!(s, ", {} retried after the proxy closed a kept-alive connection", self.stats.stale);
        }
        if let Some(e) = &self.stats.last_error {
            let _ = write!(s, " (last error: {e})");
        }
        s
    }
}

/// Runs `workers` copies of a worker for `dur`, bounded by `max_ops` in total.
async fn run_workers<F, Fut>(workers: usize, dur: Duration, max_ops: u64, worker: F) -> RateRound
where
    F: Fn(Instant, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let budget = Arc::new(AtomicU64::new(max_ops));
    let start = Instant::now();
    let deadline = start + dur;
    let handles: Vec<_> = (0..workers).map(|_| tokio::spawn(worker(deadline, budget.clone()))).collect();
    let mut all = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => all.merge(s),
            Err(e) => all.error(format!("worker panicked: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.lat_ns.sort_unstable();
    RateRound {
        rate: all.ok as f64 / elapsed,
        p50_us: percentile_us(&all.lat_ns, 0.50),
        p99_us: percentile_us(&all.lat_ns, 0.99),
        max_us: percentile_us(&all.lat_ns, 1.0),
        stats: all,
    }
}

/// Takes one unit of the shared operation budget.
fn take(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok()
}

/// Scenario a: keep-alive GETs (absolute-form through a proxy, origin-form direct).
async fn scenario_a(t: &Target, dur: Duration) -> RateRound {
    let req = Arc::new(t.get_ka());
    let t = t.clone();
    run_workers(KA_CONNS, dur, KA_MAX_REQUESTS, move |deadline, budget| {
        let req = req.clone();
        let t = t.clone();
        async move {
            let mut st = Stats::default();
            let mut conn: Option<Conn> = None;
            while Instant::now() < deadline && st.errors < MAX_ERRORS_PER_WORKER && take(&budget) {
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, async {
                    let mut retried = false;
                    loop {
                        let reused = conn.is_some();
                        if !reused {
                            conn = Some(t.open(SMALL_READ_BUF).await?);
                            st.connects += 1;
                        }
                        let c = conn.as_mut().expect("connection just opened");
                        let seen = c.read_bytes;
                        match exchange(c, &req).await {
                            // The peer closed a kept-alive connection before answering: what
                            // any HTTP client does is retry on a new connection (counted).
                            Err(e) if reused && !retried && c.read_bytes == seen && closed(&e) => {
                                conn = None;
                                retried = true;
                                st.stale += 1;
                            }
                            r => return r,
                        }
                    }
                })
                .await;
                match res {
                    Ok(Ok(r)) => {
                        if r.status == 200 && r.body == SMALL_BODY as u64 {
                            st.record(t0);
                        } else {
                            st.error(format!("status {} body {}", r.status, r.body));
                        }
                        if !r.keep_alive {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        st.error(e);
                        conn = None;
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        st.error("timeout");
                        conn = None;
                    }
                }
            }
            st
        }
    })
    .await
}

/// Scenario b: CONNECT + one GET + close (direct: connect + one GET + close).
async fn scenario_b(t: &Target, dur: Duration) -> RateRound {
    let get = Arc::new(t.get_origin_form("/"));
    let t = t.clone();
    run_workers(CC_WORKERS, dur, CC_MAX_OPS, move |deadline, budget| {
        let get = get.clone();
        let t = t.clone();
        async move {
            let mut st = Stats::default();
            while Instant::now() < deadline && st.errors < MAX_ERRORS_PER_WORKER && take(&budget) {
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, async {
                    let mut c = t.tunnel(SMALL_READ_BUF).await?;
                    c.send(&get).await?;
                    c.response(false).await
                    // `c` is dropped here: the client closes.
                })
                .await;
                st.connects += 1;
                match res {
                    Ok(Ok(r)) if r.status == 200 && r.body == SMALL_BODY as u64 => st.record(t0),
                    Ok(Ok(r)) => st.error(format!("status {} body {}", r.status, r.body)),
                    Ok(Err(e)) => {
                        st.error(e);
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => st.error("timeout"),
                }
            }
            st
        }
    })
    .await
}

/// Scenario c: 1 GiB through one tunnel (direct: a straight download), MiB/s.
async fn scenario_c(t: &Target) -> Result<f64, String> {
    let res = timeout(BULK_TIMEOUT, async {
        let mut c = t.tunnel(BULK_READ_BUF).await?;
        let t0 = Instant::now();
        c.send(&t.get_origin_form("/bulk")).await?;
        let r = c.response(false).await?;
        Ok::<_, io::Error>((r, t0.elapsed()))
    })
    .await;
    match res {
        Ok(Ok((r, el))) if r.status == 200 && r.body == BULK_LEN => {
            Ok(r.body as f64 / (1024.0 * 1024.0) / el.as_secs_f64())
        }
        Ok(Ok((r, _))) => Err(format!("status {} body {} bytes", r.status, r.body)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not done within {BULK_TIMEOUT:?}")),
    }
}

struct RssRound {
    kib_per_tunnel: f64,
    opened: usize,
    before_kib: u64,
    after_kib: u64,
    procs: usize,
    errors: u64,
    last_error: Option<String>,
}

/// Scenario d: open `n` idle CONNECT tunnels to the origin, compare the proxy's RSS.
async fn scenario_d(proxy: &Proxy, t: &Target, n: usize) -> Result<RssRound, String> {
    let pid = proxy.pid();
    // Warm up: a few tunnels used and closed, so one-time allocations are not counted.
    let get = t.get_origin_form("/");
    for _ in 0..20 {
        let res = timeout(IO_TIMEOUT, async {
            let mut c = t.tunnel(SMALL_READ_BUF).await?;
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
    let deadline = Instant::now() + RSS_OPEN_TIMEOUT;
    let handles: Vec<_> = (0..RSS_OPENERS.min(n))
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
    let (after_kib, procs) = tree_rss_kib(pid).ok_or("cannot read /proc/PID/status")?;
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
    Ok(RssRound {
        kib_per_tunnel: (after_kib as f64 - before_kib as f64) / opened as f64,
        opened,
        before_kib,
        after_kib,
        procs,
        errors,
        last_error,
    })
}

// ---------------------------------------------------------------------------------------------
// Proxies: configs and start-up
// ---------------------------------------------------------------------------------------------

struct Ctx {
    opts: Opts,
    origin: SocketAddr,
    tmp: PathBuf,
    pin_children: bool,
    bins: BTreeMap<Kind, PathBuf>,
    instances: u32,
    /// The argon2id hash of the Basic user's password, made once by `tollgate passwd`.
    bench_hash: Option<String>,
}

impl Ctx {
    /// A fresh directory for one instance (config, logs, state).
    fn instance_dir(&mut self, tag: &str) -> Result<PathBuf, String> {
        self.instances += 1;
        let dir = self.tmp.join(format!("{tag}-{}", self.instances));
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

fn write_config(kind: Kind, dir: &Path, port: u16, origin: SocketAddr) -> io::Result<Vec<String>> {
    let d = dir.display();
    let listen = format!("127.0.0.1:{port}");
    match kind {
        Kind::Direct => Ok(Vec::new()),
        Kind::Tollgate => {
            let admin = free_port()?;
            let path = dir.join("tollgate.yaml");
            let listeners = format!("  - {{name: proxy, bind: \"{listen}\"}}\n");
            let admin = format!("{{bind: \"127.0.0.1:{admin}\"}}");
            fs::write(&path, tollgate_yaml(dir, &listeners, &admin, "{anonymous: bench}", ALLOW_LOOPBACK, ""))?;
            Ok(vec!["run".into(), "-c".into(), path.display().to_string()])
        }
        Kind::Squid => {
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
                     max_filedescriptors {WANT_NOFILE}\n\
                     shutdown_lifetime 0 seconds\n\
                     workers 1\n\
                     pinger_enable off\n"
                ),
            )?;
            Ok(vec!["-N".into(), "-f".into(), path.display().to_string()])
        }
        Kind::Tinyproxy => {
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
async fn start_proxy(ctx: &mut Ctx, kind: Kind) -> Result<Proxy, String> {
    if !ctx.bins.contains_key(&kind) {
        return Err("not installed".into());
    }
    let dir = ctx.instance_dir(kind.name())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let args = write_config(kind, &dir, port, ctx.origin).map_err(|e| e.to_string())?;
    launch(ctx, kind, &dir, &args, &Target::plain(loopback(port), true, ctx.origin)).await
}

/// Writes `yaml` to `dir/tollgate.yaml` and starts tollgate on it; `smoke` is the listener to check.
async fn start_tollgate(ctx: &Ctx, dir: &Path, yaml: &str, smoke: &Target) -> Result<Proxy, String> {
    let path = dir.join("tollgate.yaml");
    fs::write(&path, yaml).map_err(|e| format!("write {}: {e}", path.display()))?;
    let args = ["run".to_string(), "-c".to_string(), path.display().to_string()];
    launch(ctx, Kind::Tollgate, dir, &args, smoke).await
}

/// One absolute-form GET and one CONNECT + GET through `t`.
async fn smoke_once(t: &Target) -> Result<(), String> {
    let get = timeout(IO_TIMEOUT, async {
        let mut c = t.open(SMALL_READ_BUF).await?;
        c.send(&t.get_ka()).await?;
        c.response(false).await
    })
    .await;
    let tun = timeout(IO_TIMEOUT, async {
        let mut c = t.tunnel(SMALL_READ_BUF).await?;
        c.send(&t.get_origin_form("/")).await?;
        c.response(false).await
    })
    .await;
    match (get, tun) {
        (Ok(Ok(a)), Ok(Ok(b))) if a.status == 200 && b.status == 200 => Ok(()),
        (g, c) => {
            let d = |r: Result<io::Result<Resp>, _>| match r {
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
async fn launch(ctx: &Ctx, kind: Kind, dir: &Path, args: &[String], smoke: &Target) -> Result<Proxy, String> {
    let bin = ctx.bins.get(&kind).cloned().ok_or("not installed")?;
    let log = dir.join("stdio.log");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = ctx.pinned(&bin);
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).stdout(out).stderr(err);
    if kind == Kind::Tollgate && std::env::var_os("TOLLGATE_LOG").is_none() {
        // The peers run without an access log; tollgate's per-request log line is off too (its audit record,
        // the contract, stays on).
        cmd.env("TOLLGATE_LOG", "warn");
    }
    let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    register_pid(child.id());
    let mut proxy = Proxy { kind, child, addr: smoke.addr, log };
    let tail = |p: &Proxy| {
        let mut t = log_tail(&p.log, 600);
        for extra in ["cache.log", "tinyproxy.log"] {
            let f = dir.join(extra);
            if f.exists() {
                let _ = write!(t, " | {extra}: {}", log_tail(&f, 400));
            }
        }
        t
    };
    let mut ready = false;
    for _ in 0..READY_ATTEMPTS {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited at start-up ({status}): {}", kind.name(), tail(&proxy)));
        }
        if let Ok(Ok(_)) = timeout(Duration::from_millis(500), TcpStream::connect(proxy.addr)).await {
            ready = true;
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        return Err(format!(
            "{} did not accept on {} within {} attempts: {}",
            kind.name(),
            proxy.addr,
            READY_ATTEMPTS,
            tail(&proxy)
        ));
    }
    // Smoke test: one absolute-form GET and one CONNECT, retried briefly while it finishes start-up.
    let mut last = String::new();
    for _ in 0..20 {
        match smoke_once(smoke).await {
            Ok(()) => return Ok(proxy),
            Err(e) => last = e,
        }
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited ({status}): {}", kind.name(), tail(&proxy)));
        }
        sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{} does not proxy ({last}): {}", proxy.kind.name(), tail(&proxy)))
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

enum Cell {
    Val(f64),
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

#[derive(Default)]
struct Report {
    cells: BTreeMap<(Metric, Kind), Cell>,
    notes: Vec<String>,
    features: Vec<FeatureRow>,
}

impl Report {
    fn set(&mut self, m: Metric, k: Kind, v: f64) {
        self.cells.insert((m, k), Cell::Val(v));
    }

    fn note(&mut self, metrics: &[Metric], k: Kind, short: &str) {
        for m in metrics {
            self.cells.insert((*m, k), Cell::Note(short.to_string()));
        }
    }

    fn fail(&mut self, metrics: &[Metric], k: Kind, msg: String) {
        self.notes.push(msg);
        let short = format!("failed [{}]", self.notes.len());
        self.note(metrics, k, &short);
    }

    fn footnote(&mut self, msg: String) -> usize {
        self.notes.push(msg);
        self.notes.len()
    }

    fn value(&self, m: Metric, k: Kind) -> Option<f64> {
        match self.cells.get(&(m, k)) {
            Some(Cell::Val(v)) => Some(*v),
            _ => None,
        }
    }

    fn cell(&self, m: Metric, k: Kind) -> String {
        match self.cells.get(&(m, k)) {
            Some(Cell::Val(v)) => format!("{v:.*}", m.decimals()),
            Some(Cell::Note(n)) => n.clone(),
            None => "not run".into(),
        }
    }

    fn table(&self, opts: &Opts) -> String {
        let mut s = String::new();
        s.push_str("| scenario | direct | tollgate | squid | tinyproxy | tollgate/direct | squid/direct | tinyproxy/direct |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for m in Metric::ALL {
            let _ = write!(s, "| {} |", m.label(opts));
            for k in Kind::ALL {
                let _ = write!(s, " {} |", self.cell(m, k));
            }
            for k in [Kind::Tollgate, Kind::Squid, Kind::Tinyproxy] {
                let r = match (self.value(m, k), self.value(m, Kind::Direct)) {
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
        let base = base.map_or_else(|| Cell::Note("n/a".into()), Cell::Val);
        let value = value.map_or_else(|| Cell::Note("failed".into()), Cell::Val);
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
            Cell::Val(v) => format!("{v:.decimals$}"),
            Cell::Note(n) => n.clone(),
        };
        for r in &self.features {
            let ratio = match (&r.base, &r.value) {
                (Cell::Val(b), Cell::Val(v)) if *b > 0.0 => format!("{:.2}x", v / b),
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

    fn latency_table(&self) -> String {
        let mut s = String::from("| target | req/s | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|\n");
        for k in Kind::ALL {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                k.name(),
                self.cell(Metric::KaRps, k),
                self.cell(Metric::KaP50, k),
                self.cell(Metric::KaP99, k)
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

fn fmt_rounds(v: &[f64], decimals: usize) -> String {
    v.iter().map(|x| format!("{x:.decimals$}")).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------------
// tollgate-only scenarios: the TLS listener, limits, the Redis state backend, reload
// ---------------------------------------------------------------------------------------------

/// Scenario tls, e and f: name of the mTLS client certificate's CN (the principal, `auth.mtls.identity: cn`).
const MTLS_USER: &str = "bench-client";
/// Scenarios limits and redis: the Basic user and its password.
const BENCH_USER: &str = "bench-user";
const BENCH_PASSWORD: &str = "pw";
/// Scenarios limits and redis: team `bench` and org/user limits, all far above what one core can reach.
const TEAM_LIMITS: &str =
    "teams:\n  bench:\n    limits: {rpm: 10000000, user_rpm: 10000000, user_concurrent: 100000}\n\
                           limits:\n  org: {rpm: 10000000, concurrent: 100000}\n  \
                           user: {rpm: 10000000, concurrent: 100000}\n";
/// Scenario reload: `policy.allow` rules besides the origin's, and the length of each round.
const RELOAD_RULES: usize = 10_000;
const RELOAD_SECS: u64 = 10;
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
async fn scenario_handshake(t: &Target, dur: Duration) -> RateRound {
    let t = t.clone();
    run_workers(CC_WORKERS, dur, CC_MAX_OPS, move |deadline, budget| {
        let t = t.clone();
        async move {
            let mut st = Stats::default();
            while Instant::now() < deadline && st.errors < MAX_ERRORS_PER_WORKER && take(&budget) {
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, handshake_once(&t)).await;
                st.connects += 1;
                match res {
                    Ok(Ok(())) => st.record(t0),
                    Ok(Err(e)) => {
                        st.error(e);
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => st.error("timeout"),
                }
            }
            st
        }
    })
    .await
}

/// Connects, completes the handshake, sends close_notify and waits for the proxy to close in turn: by then it
/// has processed the client's whole flight (with mTLS, checked its certificate), and a refusal (an alert) is
/// an error rather than a handshake.
async fn handshake_once(t: &Target) -> io::Result<()> {
    let mut c = t.open(1024).await?;
    c.s.shutdown().await?;
    for _ in 0..64 {
        match c.s.read(&mut c.buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if closed(&e) => return Ok(()),
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
    errors: u64,
    last_error: Option<String>,
}

fn median_of(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| median(v.to_vec()))
}

impl Series {
    fn add(&mut self, r: RateRound) {
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

/// Runs `rounds` rounds of the baseline (`false`) and of the variant (`true`) alternately, so that a change in
/// the machine's load hits both alike; prints every round. `names`: baseline, variant.
async fn paired<F, Fut>(rounds: usize, what: &str, names: [&str; 2], unit: &str, mut run: F) -> [Series; 2]
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = RateRound>,
{
    let mut out = [Series::default(), Series::default()];
    for r in 1..=rounds {
        for (i, variant) in [false, true].into_iter().enumerate() {
            let round = run(variant).await;
            println!("- `tollgate` {what} round {r}/{rounds}, {}: {}", names[i], round.describe(unit));
            out[i].add(round);
            sleep(ROUND_PAUSE).await;
        }
    }
    for (i, s) in out.iter().enumerate() {
        println!(
            "  - `tollgate` {what} rounds, {}: {unit} [{}], p50 µs [{}], p99 µs [{}], max µs [{}]",
            names[i],
            fmt_rounds(&s.rate, 0),
            fmt_rounds(&s.p50, 0),
            fmt_rounds(&s.p99, 0),
            fmt_rounds(&s.max, 0)
        );
    }
    if out[0].rate.len() == rounds && out[1].rate.len() == rounds {
        // Each pair ran back to back: its ratio is the least disturbed by a change in the machine's load.
        let ratios: Vec<f64> = out[1].rate.iter().zip(&out[0].rate).map(|(v, b)| v / b).collect();
        println!("  - `tollgate` {what}: {unit} measured/baseline per round [{}]", fmt_rounds(&ratios, 2));
    }
    out
}

/// The rows of a comparison: the rate (`rate_label`), and with `latency` p50 and p99 (`tag` starts their
/// labels); failed requests go to the notes.
fn compare_rows(rep: &mut Report, tag: &str, rate_label: String, s: &[Series; 2], target: &str, latency: bool) {
    rep.feature(rate_label, median_of(&s[0].rate), median_of(&s[1].rate), 0, target);
    if latency {
        rep.feature(format!("{tag} latency p50 (µs)"), median_of(&s[0].p50), median_of(&s[1].p50), 0, "");
        rep.feature(format!("{tag} latency p99 (µs)"), median_of(&s[0].p99), median_of(&s[1].p99), 0, "");
    }
    for (side, series) in ["baseline", "measured"].iter().zip(s) {
        if series.errors > 0 {
            rep.footnote(format!(
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
async fn feature_tls(ctx: &mut Ctx, rep: &mut Report) -> Result<(), String> {
    let dir = ctx.instance_dir("tollgate-tls")?;
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
    let base = Target::plain(loopback(plain), true, ctx.origin);
    let proxy = start_tollgate(ctx, &dir, &yaml, &base).await?;
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
    let rounds = ctx.opts.rounds;
    let dur = Duration::from_secs(ctx.opts.round_secs);

    let e = paired(rounds, "e", ["plain listener", "TLS listener"], "req/s", |v| {
        scenario_a(if v { &t_tls } else { &base }, dur)
    })
    .await;
    let label = format!("e. keep-alive GET, {KA_CONNS} conns: TLS listener vs plain (req/s)");
    compare_rows(rep, "e.", label, &e, "≥ 0.80", true);

    let f = paired(rounds, "f", ["plain listener", "TLS listener"], "conn/s", |v| {
        scenario_b(if v { &t_tls } else { &base }, dur)
    })
    .await;
    let label = format!("f. CONNECT + GET + close, {CC_WORKERS} workers: TLS listener vs plain (conn/s)");
    compare_rows(rep, "f.", label, &f, "", false);

    let gh = paired(rounds, "g/h", ["TLS", "mTLS"], "handshakes/s", |v| {
        scenario_handshake(if v { &t_mtls } else { &t_tls }, dur)
    })
    .await;
    rep.feature(
        format!("g. full TLS 1.3 handshakes, {CC_WORKERS} workers: connect, handshake, close (handshakes/s)"),
        None,
        median_of(&gh[0].rate),
        0,
        "",
    );
    rep.feature(
        "h. the same with mTLS (client certificate required and sent), vs g (handshakes/s)".into(),
        median_of(&gh[0].rate),
        median_of(&gh[1].rate),
        0,
        "",
    );
    for (side, s) in ["g.", "h."].iter().zip(&gh) {
        if s.errors > 0 {
            rep.footnote(format!(
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

/// The argon2id hash of `BENCH_PASSWORD`, from `tollgate passwd` (made once).
fn bench_hash(ctx: &mut Ctx) -> Result<String, String> {
    if let Some(h) = &ctx.bench_hash {
        return Ok(h.clone());
    }
    let bin = ctx.bins.get(&Kind::Tollgate).ok_or("tollgate not installed")?;
    let mut child = Command::new(bin)
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tollgate passwd: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, BENCH_PASSWORD.as_bytes())
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
    ctx.bench_hash = Some(hash.clone());
    Ok(hash)
}

/// `Proxy-Authorization` of the Basic user.
fn bench_basic() -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{BENCH_USER}:{BENCH_PASSWORD}"));
    format!("Basic {token}")
}

/// A config with the Basic user (and no anonymous access); `limits`: the user is in team `bench` and the team,
/// org and user limits are set; `state`: a `state:` section, or "". Returns the directory, the YAML and the
/// target (with the user's credentials).
fn basic_config(ctx: &mut Ctx, tag: &str, limits: bool, state: &str) -> Result<(PathBuf, String, Target), String> {
    let hash = bench_hash(ctx)?;
    let dir = ctx.instance_dir(tag)?;
    let (proxy, admin) = (port()?, port()?);
    let teams = if limits { ", teams: [bench]" } else { "" };
    let auth = format!("{{anonymous: deny, users: [{{name: {BENCH_USER}, password_hash: \"{hash}\"{teams}}}]}}");
    let extra = format!("{}{state}", if limits { TEAM_LIMITS } else { "" });
    let admin = format!("{{bind: \"127.0.0.1:{admin}\"}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy), &admin, &auth, ALLOW_LOOPBACK, &extra);
    let t = Target::plain(loopback(proxy), true, ctx.origin).with_auth(&bench_basic());
    Ok((dir, yaml, t))
}

/// Scenario limits: scenario a as the Basic user, with the team and org/user limits against without.
async fn feature_limits(ctx: &mut Ctx, rep: &mut Report) -> Result<(), String> {
    let (dir, yaml, t_plain) = basic_config(ctx, "tollgate-basic", false, "")?;
    let p_plain = start_tollgate(ctx, &dir, &yaml, &t_plain).await?;
    let (dir, yaml, t_limits) = basic_config(ctx, "tollgate-limits", true, "")?;
    let p_limits = start_tollgate(ctx, &dir, &yaml, &t_limits).await?;
    println!(
        "- `tollgate` limits started: without limits pid {} on {}, with limits pid {} on {} (both on core 1, \
         used one at a time)",
        p_plain.pid(),
        t_plain.addr,
        p_limits.pid(),
        t_limits.addr
    );
    let dur = Duration::from_secs(ctx.opts.round_secs);
    let s = paired(ctx.opts.rounds, "limits", ["Basic user, no limits", "Basic user, team + limits"], "req/s", |v| {
        scenario_a(if v { &t_limits } else { &t_plain }, dur)
    })
    .await;
    let label = format!(
        "limits. keep-alive GET, {KA_CONNS} conns, Basic user: team + org/user limits (embedded) vs none (req/s)"
    );
    compare_rows(rep, "limits.", label, &s, "≥ 0.95", true);
    drop(p_limits);
    drop(p_plain);
    Ok(())
}

/// Starts redis-server on a free port, pinned to core 1 with the proxy, without persistence.
async fn start_redis(ctx: &mut Ctx, bin: &Path) -> Result<(Daemon, u16), String> {
    let dir = ctx.instance_dir("redis")?;
    let port = port()?;
    let log = dir.join("redis.log");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = ctx.pinned(bin);
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
async fn feature_redis(ctx: &mut Ctx, rep: &mut Report) -> Result<(), String> {
    let label = "redis. keep-alive GET with limits: state in Redis vs embedded".to_string();
    let Some(bin) = which("redis-server") else {
        println!("- `tollgate` redis: redis-server not found on PATH; skipped");
        rep.feature_skipped(label, "redis-server not installed", None);
        return Ok(());
    };
    let unavailable = |rep: &mut Report, why: String| {
        println!("- `tollgate` redis: redis backend not available in this build ({why})");
        rep.feature_skipped(
            label.clone(),
            "redis backend not available in this build",
            Some(format!("redis: redis backend not available in this build: {why}")),
        );
    };
    // The backend's address is only known once redis-server runs; `tollgate check` first, on a placeholder.
    let tollgate = ctx.bins.get(&Kind::Tollgate).cloned().ok_or("tollgate not installed")?;
    let (dir, yaml, _) = basic_config(ctx, "tollgate-redis-check", true, &redis_state(6379))?;
    let path = dir.join("tollgate.yaml");
    fs::write(&path, &yaml).map_err(|e| format!("write {}: {e}", path.display()))?;
    let check = Command::new(&tollgate).arg("check").arg("-c").arg(&path).output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let why = format!("`tollgate check`: {}", String::from_utf8_lossy(&o.stderr).trim().replace('\n', " | "));
            unavailable(rep, why);
            return Ok(());
        }
        Err(e) => return Err(format!("tollgate check: {e}")),
    }
    let (redis, redis_port) = start_redis(ctx, &bin).await?;
    let (dir, yaml, t_redis) = basic_config(ctx, "tollgate-redis", true, &redis_state(redis_port))?;
    let p_redis = match start_tollgate(ctx, &dir, &yaml, &t_redis).await {
        Ok(p) => p,
        Err(e) if e.contains("redis") && e.contains("not available") => {
            unavailable(rep, format!("`tollgate run`: {e}"));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let (dir, yaml, t_embedded) = basic_config(ctx, "tollgate-embedded", true, "")?;
    let p_embedded = start_tollgate(ctx, &dir, &yaml, &t_embedded).await?;
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
    let dur = Duration::from_secs(ctx.opts.round_secs);
    let s = paired(ctx.opts.rounds, "redis", ["embedded state", "redis state"], "req/s", |v| {
        scenario_a(if v { &t_redis } else { &t_embedded }, dur)
    })
    .await;
    let rate_label = format!("{label}, {KA_CONNS} conns, Basic user (req/s)");
    compare_rows(rep, "redis.", rate_label, &s, "", true);
    let added = |q: fn(&Series) -> &Vec<f64>| match (median_of(q(&s[0])), median_of(q(&s[1]))) {
        (Some(b), Some(v)) => Some(v - b),
        _ => None,
    };
    rep.feature("redis. added latency per request, p50 (µs)".into(), None, added(|s| &s.p50), 0, "");
    rep.feature("redis. added latency per request, p99 (µs)".into(), None, added(|s| &s.p99), 0, "");
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
        let mut c = Conn::open(admin, None, SMALL_READ_BUF).await?;
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
async fn reload_loop(admin: SocketAddr, dur: Duration) -> Reloads {
    let start = Instant::now();
    let mut out = Vec::new();
    for i in 0..dur.as_secs() {
        let at = start + Duration::from_millis(500) + Duration::from_secs(i);
        tokio::time::sleep_until(at.into()).await;
        out.push(reload_once(admin).await);
    }
    out
}

/// Scenario reload: scenario a for `RELOAD_SECS` against a config with `RELOAD_RULES` allow rules, with a reload
/// every second against without.
async fn feature_reload(ctx: &mut Ctx, rep: &mut Report) -> Result<(), String> {
    let dir = ctx.instance_dir("tollgate-reload")?;
    let (proxy_port, admin_port) = (port()?, port()?);
    let mut allow = String::with_capacity(RELOAD_RULES * 32);
    for i in 0..RELOAD_RULES {
        let _ = writeln!(allow, "    - \"host{i}.example.com\"");
    }
    allow.push_str(ALLOW_LOOPBACK);
    let admin_map = format!("{{bind: \"127.0.0.1:{admin_port}\", token: {ADMIN_TOKEN}}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy_port), &admin_map, "{anonymous: bench}", &allow, "");
    let t = Target::plain(loopback(proxy_port), true, ctx.origin);
    let t0 = Instant::now();
    let proxy = start_tollgate(ctx, &dir, &yaml, &t).await?;
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
    let dur = Duration::from_secs(RELOAD_SECS);
    // Each round's reload outcomes.
    let trips: Arc<Mutex<Vec<Reloads>>> = Arc::default();
    let s = paired(ctx.opts.rounds, "reload", ["no reloads", "a reload every second"], "req/s", |v| {
        let (t, trips) = (&t, trips.clone());
        async move {
            if v {
                let (round, outcomes) = tokio::join!(scenario_a(t, dur), reload_loop(admin, dur));
                if let Ok(mut all) = trips.lock() {
                    all.push(outcomes);
                }
                round
            } else {
                scenario_a(t, dur).await
            }
        }
    })
    .await;
    let label = format!(
        "reload. keep-alive GET, {KA_CONNS} conns, {RELOAD_RULES} allow rules, {RELOAD_SECS} s: \
         POST /admin/reload every second vs none (req/s)"
    );
    compare_rows(rep, "reload.", label, &s, "", true);
    rep.feature("reload. latency max (µs)".into(), median_of(&s[0].max), median_of(&s[1].max), 0, "");
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
    rep.feature(
        format!("reload. round trip of POST /admin/reload under load, median of {} (ms)", ms.len()),
        None,
        median_of(&ms),
        1,
        "",
    );
    rep.feature(
        "reload. round trip of POST /admin/reload under load, max (ms)".into(),
        None,
        ms.last().copied(),
        1,
        "",
    );
    if let Some(e) = failed.last() {
        rep.footnote(format!("reload: {} of {} reloads failed (last: {e})", failed.len(), outcomes.len()));
    }
    drop(proxy);
    Ok(())
}

/// Runs one tollgate-only scenario; a failure becomes a row and a note.
async fn run_feature(ctx: &mut Ctx, rep: &mut Report, scen: Scen) {
    let (name, res) = match scen {
        Scen::Tls => ("tls", feature_tls(ctx, rep).await),
        Scen::Limits => ("limits", feature_limits(ctx, rep).await),
        Scen::Redis => ("redis", feature_redis(ctx, rep).await),
        Scen::Reload => ("reload", feature_reload(ctx, rep).await),
        Scen::A | Scen::B | Scen::C | Scen::D => return,
    };
    if let Err(e) = res {
        println!("- `tollgate` {name}: failed: {e}");
        rep.feature_skipped(format!("{name}."), "failed", Some(format!("{name}: {e}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// Scenarios a, b and c against one target (one proxy instance for all of them).
async fn run_rate_scenarios(ctx: &mut Ctx, rep: &mut Report, kind: Kind) {
    let rate_scens: Vec<Scen> =
        ctx.opts.scens.iter().copied().filter(|s| matches!(s, Scen::A | Scen::B | Scen::C)).collect();
    if rate_scens.is_empty() {
        return;
    }
    let all_metrics = [Metric::KaRps, Metric::KaP50, Metric::KaP99, Metric::CcRate, Metric::BulkMibs];
    let proxy = if kind == Kind::Direct {
        None
    } else {
        match start_proxy(ctx, kind).await {
            Ok(p) => Some(p),
            Err(e) => {
                println!("- `{}`: could not start: {e}", kind.name());
                rep.fail(&all_metrics, kind, format!("{}: {e}", kind.name()));
                return;
            }
        }
    };
    let t = Target::plain(proxy.as_ref().map_or(ctx.origin, |p| p.addr), proxy.is_some(), ctx.origin);
    if let Some(p) = &proxy {
        println!("- `{}` started: pid {}, {}", kind.name(), p.pid(), p.addr);
    }
    let rounds = ctx.opts.rounds;
    let dur = Duration::from_secs(ctx.opts.round_secs);
    let name = kind.name();

    if rate_scens.contains(&Scen::A) {
        let (mut rps, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        let mut errors = 0;
        let mut connects = 0;
        let mut stale = 0;
        let mut last_error = None;
        for r in 1..=rounds {
            let round = scenario_a(&t, dur).await;
            println!("- `{name}` a round {r}/{rounds}: {}", round.describe("req/s"));
            if round.stats.ok > 0 {
                rps.push(round.rate);
                p50.push(round.p50_us);
                p99.push(round.p99_us);
            }
            errors += round.stats.errors;
            connects += round.stats.connects;
            stale += round.stats.stale;
            last_error = round.stats.last_error.or(last_error);
            sleep(ROUND_PAUSE).await;
        }
        if rps.is_empty() {
            rep.fail(
                &[Metric::KaRps, Metric::KaP50, Metric::KaP99],
                kind,
                format!("{name} a: no successful request ({})", last_error.unwrap_or_default()),
            );
        } else {
            println!(
                "  - `{name}` a rounds: req/s [{}], p50 µs [{}], p99 µs [{}]",
                fmt_rounds(&rps, 0),
                fmt_rounds(&p50, 0),
                fmt_rounds(&p99, 0)
            );
            rep.set(Metric::KaRps, kind, median(rps));
            rep.set(Metric::KaP50, kind, median(p50));
            rep.set(Metric::KaP99, kind, median(p99));
            if errors > 0 {
                rep.footnote(format!(
                    "{name} a: {errors} failed requests over {rounds} rounds (last: {})",
                    last_error.unwrap_or_default()
                ));
            }
            let per_round = connects as f64 / rounds as f64;
            if per_round > 2.0 * KA_CONNS as f64 {
                rep.footnote(format!(
                    "{name} a: the proxy did not keep client connections alive \
                     ({per_round:.0} connections opened per round for {KA_CONNS} clients; \
                     {stale} requests were re-sent on a new connection because the proxy closed \
                     the previous one after a response that did not say `Connection: close`; \
                     their latency includes the failed attempt)"
                ));
            }
        }
    }

    if rate_scens.contains(&Scen::B) {
        let mut rates = Vec::new();
        let mut errors = 0;
        let mut last_error = None;
        for r in 1..=rounds {
            let round = scenario_b(&t, dur).await;
            println!("- `{name}` b round {r}/{rounds}: {}", round.describe("conn/s"));
            if round.stats.ok > 0 {
                rates.push(round.rate);
            }
            errors += round.stats.errors;
            last_error = round.stats.last_error.or(last_error);
            sleep(ROUND_PAUSE).await;
        }
        if rates.is_empty() {
            rep.fail(
                &[Metric::CcRate],
                kind,
                format!("{name} b: no successful operation ({})", last_error.unwrap_or_default()),
            );
        } else {
            println!("  - `{name}` b rounds: conn/s [{}]", fmt_rounds(&rates, 0));
            rep.set(Metric::CcRate, kind, median(rates));
            if errors > 0 {
                rep.footnote(format!(
                    "{name} b: {errors} failed operations over {rounds} rounds (last: {})",
                    last_error.unwrap_or_default()
                ));
            }
        }
    }

    if rate_scens.contains(&Scen::C) {
        let mut rates = Vec::new();
        let mut last_error = None;
        for r in 1..=rounds {
            match scenario_c(&t).await {
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
            rep.fail(&[Metric::BulkMibs], kind, format!("{name} c: {}", last_error.unwrap_or_default()));
        } else {
            println!("  - `{name}` c rounds: MiB/s [{}]", fmt_rounds(&rates, 0));
            rep.set(Metric::BulkMibs, kind, median(rates));
            if let Some(e) = last_error {
                rep.footnote(format!("{name} c: a round failed: {e}"));
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
async fn run_rss(ctx: &mut Ctx, rep: &mut Report, kind: Kind) {
    let name = kind.name();
    let rounds = ctx.opts.rounds;
    let mut vals = Vec::new();
    let mut last_error = None;
    for r in 1..=rounds {
        let proxy = match start_proxy(ctx, kind).await {
            Ok(p) => p,
            Err(e) => {
                last_error = Some(e);
                break;
            }
        };
        let t = Target::plain(proxy.addr, true, ctx.origin);
        match scenario_d(&proxy, &t, ctx.opts.tunnels).await {
            Ok(d) => {
                let mut line = format!(
                    "- `{name}` d round {r}/{rounds}: {:.1} KiB/tunnel ({} tunnels open, RSS {} -> {} KiB, {} process(es)",
                    d.kib_per_tunnel, d.opened, d.before_kib, d.after_kib, d.procs
                );
                if d.errors > 0 {
                    let _ = write!(line, ", {} errors, last: {}", d.errors, d.last_error.clone().unwrap_or_default());
                }
                line.push(')');
                println!("{line}");
                if d.opened < ctx.opts.tunnels {
                    rep.footnote(format!(
                        "{name} d round {r}: only {} of {} tunnels opened (last error: {})",
                        d.opened,
                        ctx.opts.tunnels,
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
        rep.fail(&[Metric::RssKib], kind, format!("{name} d: {}", last_error.unwrap_or_default()));
    } else {
        println!("  - `{name}` d rounds: KiB/tunnel [{}]", fmt_rounds(&vals, 1));
        rep.set(Metric::RssKib, kind, median(vals));
    }
}

async fn run(mut ctx: Ctx) -> Report {
    let mut rep = Report::default();
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
    let target_scens = ctx.opts.scens.iter().any(|s| Scen::TARGETS.contains(s));
    for kind in Kind::ALL {
        if !target_scens {
            break;
        }
        if !ctx.opts.kinds.contains(&kind) {
            rep.note(&Metric::ALL, kind, "not run");
            continue;
        }
        if kind != Kind::Direct && !ctx.bins.contains_key(&kind) {
            println!("- `{}`: not installed", kind.name());
            rep.note(&Metric::ALL, kind, "not installed");
            continue;
        }
        run_rate_scenarios(&mut ctx, &mut rep, kind).await;
        if ctx.opts.scens.contains(&Scen::D) {
            if kind == Kind::Direct {
                rep.note(&[Metric::RssKib], kind, "n/a");
            } else {
                run_rss(&mut ctx, &mut rep, kind).await;
            }
        }
    }
    let features: Vec<Scen> = ctx.opts.scens.iter().copied().filter(|s| !Scen::TARGETS.contains(s)).collect();
    if !features.is_empty() && !ctx.bins.contains_key(&Kind::Tollgate) {
        println!("- tls, limits, redis, reload: not run (they need the target tollgate)");
    } else {
        for scen in features {
            run_feature(&mut ctx, &mut rep, scen).await;
        }
    }
    rep
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let have_taskset = which("taskset").is_some();

    // Binaries.
    let mut bins = BTreeMap::new();
    let mut versions = Vec::new();
    if opts.kinds.contains(&Kind::Tollgate) {
        let bin = tollgate_bin();
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
        bins.insert(Kind::Tollgate, bin);
    }
    for (kind, env, name, vflag) in
        [(Kind::Squid, "SQUID_BIN", "squid", "-v"), (Kind::Tinyproxy, "TINYPROXY_BIN", "tinyproxy", "-v")]
    {
        if !opts.kinds.contains(&kind) {
            continue;
        }
        let bin = std::env::var_os(env).map(PathBuf::from).or_else(|| which(name));
        match bin {
            Some(b) if b.is_file() => {
                versions.push(format!("{name}: {} ({})", first_line(&b, &[vflag]), b.display()));
                bins.insert(kind, b);
            }
            _ => versions.push(format!("{name}: not installed (`apt-get install -y {name}`)")),
        }
    }

    // Host set-up, before any thread is started.
    let pinned = pin_self(cores, have_taskset);
    let pin_children = cores >= 2 && have_taskset;
    let need_nofile = 2 * opts.tunnels as u64 + 1024;
    let (nofile, nofile_msg) = raise_nofile(need_nofile);

    let tmp = match tempfile::Builder::new().prefix("tollgate-load-").tempdir() {
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
        "- mode: {} ({} s per round for a, b, tls and limits/redis, {RELOAD_SECS} s for reload), {} rounds per \
         scenario, median reported; d opens {} tunnels",
        if opts.quick { "--quick" } else { "full" },
        opts.round_secs,
        opts.rounds,
        opts.tunnels
    );
    for v in &versions {
        println!("- {v}");
    }
    println!("- temp dir: {}\n", tmp.path().display());
    if nofile < need_nofile && opts.scens.contains(&Scen::D) {
        println!(
            "- WARNING: RLIMIT_NOFILE {nofile} is too low for {} tunnels; scenario d will open fewer\n",
            opts.tunnels
        );
    }

    let run_opts = opts.clone();
    let report = rt.block_on(async {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => return Err(format!("cannot bind the origin: {e}")),
        };
        let origin = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(origin_serve(listener));
        println!("## progress (origin on {origin})\n");
        let ctx = Ctx {
            opts: run_opts,
            origin,
            tmp: tmp.path().to_path_buf(),
            pin_children,
            bins,
            instances: 0,
            bench_hash: None,
        };
        Ok(run(ctx).await)
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

    println!("\n## results (median of {} rounds)", opts.rounds);
    let target_scens = opts.scens.iter().any(|s| Scen::TARGETS.contains(s));
    if target_scens {
        print!("\n{}", report.table(&opts));
    }
    if opts.scens.contains(&Scen::A) {
        println!("\n### a. keep-alive GET latency\n");
        print!("{}", report.latency_table());
    }
    if !report.features.is_empty() {
        println!("\n### tollgate only: TLS listener, limits, Redis state, reload (baseline and measured in one run)\n");
        print!("{}", report.feature_table());
    }
    if !report.notes.is_empty() {
        println!("\n### notes\n");
        for (i, n) in report.notes.iter().enumerate() {
            println!("{}. {n}", i + 1);
        }
    }
    if target_scens {
        println!(
            "\nratios are target/direct: for req/s, conn/s and MiB/s higher is better, for latency lower is better. \
             b for direct is connect + GET + close without a proxy; d has no direct value. \
             d is the growth of the summed VmRSS of the proxy's process tree divided by the tunnels opened."
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
