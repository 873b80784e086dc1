//! The tollgate-only scenarios, tollgate against itself (a feature on against off, in one run): tls (the TLS
//! listener and full handshakes), limits, redis (limits in Redis) and reload (a 10,000-rule config reloaded every
//! second under load).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use crate::certificates::make_pki;
use crate::client::{closed_by_peer, Connection};
use crate::host::{first_line, free_port, which};
use crate::options::Target;
use crate::parameters::{
    CONNECT_MAX_OPERATIONS, CONNECT_WORKERS, IO_TIMEOUT, KEEP_ALIVE_CONNECTIONS, MAX_ERRORS_PER_WORKER, READY_ATTEMPTS,
    SMALL_READ_BUFFER,
};
use crate::processes::{log_tail, register_pid, tree_cpu_ns, tree_rss_kib, Daemon};
use crate::proxies::{listener_item, loopback, smoke_once, start_tollgate, tollgate_yaml, Harness, ALLOW_LOOPBACK};
use crate::report::Report;
use crate::rounds::{median_of, paired, Series};
use crate::route::{Route, TlsDial};
use crate::scenarios::{
    connect_get_close, keep_alive_gets, run_workers, take_from_budget, with_proxy_cpu, RateRound, Stats,
};

/// Scenarios limits and redis: the Basic user and its password.
pub const BASIC_USER: &str = "bench-user";
pub const BASIC_PASSWORD: &str = "pw";
/// Scenarios limits and redis: team `bench` and org/user limits, all far above what one core can reach.
const TEAM_LIMITS: &str =
    "teams:\n  bench:\n    limits: {rpm: 10000000, user_rpm: 10000000, user_concurrent: 100000}\n\
                           limits:\n  org: {rpm: 10000000, concurrent: 100000}\n  \
                           user: {rpm: 10000000, concurrent: 100000}\n";
/// Scenario reload: `policy.allow` rules besides the origin's, and the length of each round.
const RELOAD_RULES: usize = 10_000;
pub const RELOAD_SECONDS: u64 = 10;
/// Scenario reload: `admin.token`.
pub const ADMIN_TOKEN: &str = "bench";

/// Scenario tls: one tollgate with a plain, a TLS and an mTLS listener; e and f compare the TLS listener with
/// the plain one, g counts full handshakes, h the same with a client certificate.
pub async fn measure_tls(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let dir = harness.instance_dir("tollgate-tls")?;
    let pki = make_pki(&dir)?;
    let (plain_port, tls_port, mtls_port, admin_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let (cert, key, clients_ca) = (pki.server_chain.display(), pki.server_key.display(), pki.clients_ca.display());
    let tls_map = |extra: &str| format!("tls: {{cert: \"{cert}\", key: \"{key}\"{extra}}}");
    let listeners = format!(
        "{}  - {{name: proxy-tls, bind: \"127.0.0.1:{tls_port}\", {}}}\n  - {{name: proxy-mtls, bind: \"127.0.0.1:{mtls_port}\", {}}}\n",
        listener_item("proxy", plain_port),
        tls_map(""),
        tls_map(&format!(", client_ca: \"{clients_ca}\", client_auth: required"))
    );
    let admin = format!("{{bind: \"127.0.0.1:{admin_port}\"}}");
    let auth = "{anonymous: bench, mtls: {identity: cn}}";
    let yaml = tollgate_yaml(&dir, &listeners, &admin, auth, ALLOW_LOOPBACK, "");
    let plain = Route::plain(loopback(plain_port), true, harness.origin);
    let proxy = start_tollgate(harness, &dir, &yaml, &plain).await?;
    let localhost = ServerName::try_from("localhost").map_err(|error| error.to_string())?;
    let dial = |config: &Arc<rustls::ClientConfig>| TlsDial {
        connector: tokio_rustls::TlsConnector::from(config.clone()),
        name: localhost.clone(),
    };
    let tls = plain.with_tls(loopback(tls_port), dial(&pki.client));
    let mtls = plain.with_tls(loopback(mtls_port), dial(&pki.mtls_client));
    smoke_once(&tls).await.map_err(|error| format!("TLS listener: {error}"))?;
    smoke_once(&mtls).await.map_err(|error| format!("mTLS listener: {error}"))?;
    // The mTLS listener must refuse a client without a certificate (else h would measure nothing new).
    let without_certificate = plain.with_tls(loopback(mtls_port), dial(&pki.client));
    if smoke_once(&without_certificate).await.is_ok() {
        return Err("the mTLS listener served a client without a certificate".into());
    }
    println!(
        "- `tollgate` tls started: pid {}, plain {}, TLS {}, mTLS {} (TLS 1.3 only on the client, ECDSA P-256, \
         resumption off)",
        proxy.pid(),
        plain.address,
        tls.address,
        mtls.address
    );
    let rounds = harness.options.rounds;
    let duration = Duration::from_secs(harness.options.round_seconds);

    let keep_alive = paired(rounds, "e", ["plain listener", "TLS listener"], "req/s", |over_tls| {
        keep_alive_gets(if over_tls { &tls } else { &plain }, duration)
    })
    .await;
    let label = format!("e. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns: TLS listener vs plain (req/s)");
    compare_rows(report, "e.", label, &keep_alive, "≥ 0.80", true);

    let connect = paired(rounds, "f", ["plain listener", "TLS listener"], "conn/s", |over_tls| {
        connect_get_close(if over_tls { &tls } else { &plain }, duration)
    })
    .await;
    let label = format!("f. CONNECT + GET + close, {CONNECT_WORKERS} workers: TLS listener vs plain (conn/s)");
    compare_rows(report, "f.", label, &connect, "", false);

    let handshakes = paired(rounds, "g/h", ["TLS", "mTLS"], "handshakes/s", |with_certificate| {
        full_handshakes(if with_certificate { &mtls } else { &tls }, duration)
    })
    .await;
    report.feature(
        format!("g. full TLS 1.3 handshakes, {CONNECT_WORKERS} workers: connect, handshake, close (handshakes/s)"),
        None,
        median_of(&handshakes[0].rate),
        0,
        "",
    );
    report.feature(
        "h. the same with mTLS (client certificate required and sent), vs g (handshakes/s)".into(),
        median_of(&handshakes[0].rate),
        median_of(&handshakes[1].rate),
        0,
        "",
    );
    for (side, series) in ["g.", "h."].iter().zip(&handshakes) {
        if series.errors > 0 {
            report.footnote(format!(
                "{side} {} failed handshakes (last: {})",
                series.errors,
                series.last_error.clone().unwrap_or_default()
            ));
        }
    }
    if let Some((kib, _)) = tree_rss_kib(proxy.pid()) {
        println!("  - `tollgate` tls RSS after e-h: {kib} KiB");
    }
    drop(proxy);
    Ok(())
}

/// Scenarios g and h: full TLS handshakes (connect, handshake, close; no request).
async fn full_handshakes(route: &Route, duration: Duration) -> RateRound {
    let route = route.clone();
    run_workers(CONNECT_WORKERS, duration, CONNECT_MAX_OPERATIONS, move |deadline, budget| {
        let route = route.clone();
        async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                let started = Instant::now();
                let outcome = timeout(IO_TIMEOUT, handshake_once(&route)).await;
                stats.connections_opened += 1;
                match outcome {
                    Ok(Ok(())) => stats.record(started),
                    Ok(Err(error)) => {
                        stats.error(error);
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
async fn handshake_once(route: &Route) -> io::Result<()> {
    let mut connection = route.open(1024).await?;
    connection.close_write().await?;
    for _ in 0..64 {
        match connection.read_some(0).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(error) if closed_by_peer(&error) => return Ok(()),
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::other("the proxy kept sending instead of closing"))
}

/// The rows of a comparison: the rate (`rate_label`), and with `latency` p50 and p99 (`tag` starts their
/// labels); failed requests go to the notes.
fn compare_rows(report: &mut Report, tag: &str, rate_label: String, series: &[Series; 2], target: &str, latency: bool) {
    let [baseline, measured] = series;
    report.feature(rate_label, median_of(&baseline.rate), median_of(&measured.rate), 0, target);
    if latency {
        report.feature(format!("{tag} latency p50 (µs)"), median_of(&baseline.p50), median_of(&measured.p50), 0, "");
        report.feature(format!("{tag} latency p99 (µs)"), median_of(&baseline.p99), median_of(&measured.p99), 0, "");
    }
    for (side, series) in ["baseline", "measured"].iter().zip(series) {
        if series.errors > 0 {
            report.footnote(format!(
                "{tag} {side}: {} failed operations (last: {})",
                series.errors,
                series.last_error.clone().unwrap_or_default()
            ));
        }
    }
}

/// The argon2id hash of `BASIC_PASSWORD`, from `tollgate passwd` (made once).
pub fn basic_user_hash(harness: &mut Harness) -> Result<String, String> {
    if let Some(hash) = &harness.basic_user_hash {
        return Ok(hash.clone());
    }
    let binary = harness.binaries.get(&Target::Tollgate).ok_or("tollgate not installed")?;
    let mut child = Command::new(binary)
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("tollgate passwd: {error}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, BASIC_PASSWORD.as_bytes())
            .map_err(|error| format!("tollgate passwd: {error}"))?;
    }
    let output = child.wait_with_output().map_err(|error| format!("tollgate passwd: {error}"))?;
    let hash = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || !hash.starts_with("$argon2id$") {
        return Err(format!(
            "tollgate passwd failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
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
/// route (with the user's credentials).
fn basic_config(
    harness: &mut Harness,
    tag: &str,
    limits: bool,
    state: &str,
) -> Result<(PathBuf, String, Route), String> {
    let hash = basic_user_hash(harness)?;
    let dir = harness.instance_dir(tag)?;
    let (proxy_port, admin_port) = (free_port()?, free_port()?);
    let teams = if limits { ", teams: [bench]" } else { "" };
    let auth = format!("{{anonymous: deny, users: [{{name: {BASIC_USER}, password_hash: \"{hash}\"{teams}}}]}}");
    let extra = format!("{}{state}", if limits { TEAM_LIMITS } else { "" });
    let admin = format!("{{bind: \"127.0.0.1:{admin_port}\"}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy_port), &admin, &auth, ALLOW_LOOPBACK, &extra);
    let route =
        Route::plain(loopback(proxy_port), true, harness.origin).with_authorization(&basic_user_authorization());
    Ok((dir, yaml, route))
}

/// Scenario limits: scenario a as the Basic user, with the team and org/user limits against without.
pub async fn measure_limits(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let (dir, yaml, without_limits) = basic_config(harness, "tollgate-basic", false, "")?;
    let proxy_without = start_tollgate(harness, &dir, &yaml, &without_limits).await?;
    let (dir, yaml, with_limits) = basic_config(harness, "tollgate-limits", true, "")?;
    let proxy_with = start_tollgate(harness, &dir, &yaml, &with_limits).await?;
    println!(
        "- `tollgate` limits started: without limits pid {} on {}, with limits pid {} on {} (both on core 1, \
         used one at a time)",
        proxy_without.pid(),
        without_limits.address,
        proxy_with.pid(),
        with_limits.address
    );
    let duration = Duration::from_secs(harness.options.round_seconds);
    let pids = [proxy_without.pid(), proxy_with.pid()];
    let series = paired(
        harness.options.rounds,
        "limits",
        ["Basic user, no limits", "Basic user, team + limits"],
        "req/s",
        |limited| {
            let route = if limited { &with_limits } else { &without_limits };
            with_proxy_cpu(Some(pids[usize::from(limited)]), keep_alive_gets(route, duration))
        },
    )
    .await;
    let label = format!(
        "limits. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns, Basic user: team + org/user limits (embedded) vs none (req/s)"
    );
    compare_rows(report, "limits.", label, &series, "≥ 0.95", true);
    // CPU per request does not move with what else the machine runs, unlike req/s.
    report.feature(
        "limits. proxy CPU per request, all threads (µs; lower is better)".into(),
        median_of(&series[0].cpu),
        median_of(&series[1].cpu),
        2,
        "≤ 1.05",
    );
    drop(proxy_with);
    drop(proxy_without);
    Ok(())
}

/// Starts redis-server on a free port, pinned to core 1 with the proxy, without persistence.
async fn start_redis(harness: &mut Harness, binary: &Path) -> Result<(Daemon, u16), String> {
    let dir = harness.instance_dir("redis")?;
    let port = free_port()?;
    let daemon = start_redis_in(harness, binary, &dir, port, &["--save", "", "--appendonly", "no"]).await?;
    Ok((daemon, port))
}

/// Starts redis-server on `port` with its files and log (appended to) in `dir` and further `settings` (e.g. its
/// persistence), pinned to core 1 with the proxy; waits until it answers PING.
pub async fn start_redis_in(
    harness: &Harness,
    binary: &Path,
    dir: &Path,
    port: u16,
    settings: &[&str],
) -> Result<Daemon, String> {
    let log = dir.join("redis.log");
    let stdout = fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|error| error.to_string())?;
    let mut command = harness.pinned(binary);
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(settings)
        .args(["--daemonize", "no", "--dir"])
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null());
    let child = command.spawn().map_err(|error| format!("spawn {}: {error}", binary.display()))?;
    register_pid(child.id());
    let mut daemon = Daemon { child };
    for _ in 0..READY_ATTEMPTS {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("redis-server exited at start-up ({status}): {}", log_tail(&log, 600)));
        }
        let ping = timeout(Duration::from_millis(500), async {
            let mut stream = TcpStream::connect(loopback(port)).await?;
            stream.write_all(b"PING\r\n").await?;
            let mut answer = [0u8; 64];
            let read = stream.read(&mut answer).await?;
            Ok::<_, io::Error>(answer[..read].starts_with(b"+PONG"))
        })
        .await;
        if let Ok(Ok(true)) = ping {
            return Ok(daemon);
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(format!("redis-server did not answer PING on port {port}: {}", log_tail(&log, 600)))
}

/// Scenario redis: scenario a as the Basic user with the limits, state in Redis against embedded.
pub async fn measure_redis(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let label = "redis. keep-alive GET with limits: state in Redis vs embedded".to_string();
    let Some(redis_binary) = which("redis-server") else {
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
    fs::write(&path, &yaml).map_err(|error| format!("write {}: {error}", path.display()))?;
    let check = Command::new(&tollgate).arg("check").arg("-c").arg(&path).output();
    match check {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().replace('\n', " | ");
            unavailable(report, format!("`tollgate check`: {stderr}"));
            return Ok(());
        }
        Err(error) => return Err(format!("tollgate check: {error}")),
    }
    let (redis, redis_port) = start_redis(harness, &redis_binary).await?;
    let (dir, yaml, in_redis) = basic_config(harness, "tollgate-redis", true, &redis_state(redis_port))?;
    let proxy_redis = match start_tollgate(harness, &dir, &yaml, &in_redis).await {
        Ok(proxy) => proxy,
        Err(error) if error.contains("redis") && error.contains("not available") => {
            unavailable(report, format!("`tollgate run`: {error}"));
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let (dir, yaml, embedded) = basic_config(harness, "tollgate-embedded", true, "")?;
    let proxy_embedded = start_tollgate(harness, &dir, &yaml, &embedded).await?;
    println!(
        "- `tollgate` redis started: {} on port {redis_port} (pid {}, core 1); embedded pid {} on {}, redis pid {} \
         on {}",
        first_line(&redis_binary, &["--version"]),
        redis.child.id(),
        proxy_embedded.pid(),
        embedded.address,
        proxy_redis.pid(),
        in_redis.address
    );
    let duration = Duration::from_secs(harness.options.round_seconds);
    let (embedded_pid, redis_state_pid, server_pid) = (proxy_embedded.pid(), proxy_redis.pid(), redis.child.id());
    let calls = Mutex::new(Vec::new());
    let series = paired(harness.options.rounds, "redis", ["embedded state", "redis state"], "req/s", |redis| {
        let (route, calls) = (if redis { &in_redis } else { &embedded }, &calls);
        async move {
            if !redis {
                return with_proxy_cpu(Some(embedded_pid), keep_alive_gets(route, duration)).await;
            }
            redis_round(route, duration, [redis_state_pid, server_pid], redis_port, calls).await
        }
    })
    .await;
    let rate_label = format!("{label}, {KEEP_ALIVE_CONNECTIONS} conns, Basic user (req/s)");
    compare_rows(report, "redis.", rate_label, &series, "", true);
    report.feature(
        "redis. CPU per request: tollgate (embedded) vs tollgate + redis-server (µs)".into(),
        median_of(&series[0].cpu),
        median_of(&series[1].cpu),
        1,
        "",
    );
    let calls = calls.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    report.feature("redis. requests per script call".into(), None, median_of(&calls), 1, "");
    let added =
        |quantile: fn(&Series) -> &Vec<f64>| match (median_of(quantile(&series[0])), median_of(quantile(&series[1]))) {
            (Some(baseline), Some(measured)) => Some(measured - baseline),
            _ => None,
        };
    report.feature("redis. added latency per request, p50 (µs)".into(), None, added(|side| &side.p50), 0, "");
    report.feature("redis. added latency per request, p99 (µs)".into(), None, added(|side| &side.p99), 0, "");
    drop(proxy_redis);
    drop(proxy_embedded);
    drop(redis);
    Ok(())
}

/// One round against the Redis-state tollgate: its CPU and redis-server's per request (`pids`: tollgate, then
/// redis-server; the round's `cpu_us` is their sum, since both share the proxy's core) and the requests per script
/// call (`INFO commandstats` after `CONFIG RESETSTAT`), printed and kept in `calls`.
async fn redis_round(
    route: &Route,
    duration: Duration,
    pids: [u32; 2],
    port: u16,
    calls: &Mutex<Vec<f64>>,
) -> RateRound {
    let reset = redis_command(port, "CONFIG RESETSTAT").await;
    let before = pids.map(|pid| tree_cpu_ns(pid).0);
    let mut round = keep_alive_gets(route, duration).await;
    let after = pids.map(|pid| tree_cpu_ns(pid).0);
    let stats = redis_command(port, "INFO commandstats").await;
    let requests = round.stats.successes.max(1) as f64;
    let [tollgate_us, server_us] = [0, 1].map(|at| after[at].saturating_sub(before[at]) as f64 / requests / 1000.0);
    round.cpu_us = Some(tollgate_us + server_us);
    let scripts = match (reset, stats) {
        (Ok(_), Ok(stats)) => ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
            .iter()
            .filter_map(|field| stats.split(field).nth(1))
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum::<u64>(),
        (Err(error), _) | (_, Err(error)) => {
            println!("  - `tollgate` redis: INFO commandstats: {error}");
            0
        }
    };
    let per_call = (scripts > 0).then(|| round.stats.successes as f64 / scripts as f64);
    println!(
        "  - `tollgate` redis state: CPU per request tollgate {tollgate_us:.1} µs + redis-server {server_us:.1} µs, \
         {scripts} script calls, {} requests per call",
        per_call.map_or_else(|| "n/a".to_owned(), |per_call| format!("{per_call:.1}"))
    );
    if let Some(per_call) = per_call {
        calls.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(per_call);
    }
    round
}

/// Sends one inline command to the redis-server on `port` and reads its whole answer (a status or one bulk
/// string), as text.
async fn redis_command(port: u16, command: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(loopback(port)).await?;
        stream.write_all(format!("{command}\r\n").as_bytes()).await?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the whole answer"));
            }
            answer.extend_from_slice(&buffer[..read]);
            let Some(line_end) = answer.windows(2).position(|pair| pair == b"\r\n") else { continue };
            let complete = match answer[0] {
                b'$' => {
                    let length: usize = std::str::from_utf8(&answer[1..line_end])
                        .ok()
                        .and_then(|length| length.parse().ok())
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad bulk length"))?;
                    answer.len() >= line_end + 2 + length + 2
                }
                _ => true,
            };
            if complete {
                return Ok(String::from_utf8_lossy(&answer).into_owned());
            }
        }
    };
    match timeout(IO_TIMEOUT, exchange).await {
        Ok(Ok(answer)) if answer.starts_with('-') => Err(answer.trim().to_owned()),
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {IO_TIMEOUT:?}")),
    }
}

fn redis_state(port: u16) -> String {
    format!("state: {{backend: redis, redis_url: \"redis://127.0.0.1:{port}\"}}\n")
}

/// The outcomes of the reloads of one round: round trip (ms) or error.
type Reloads = Vec<Result<f64, String>>;

/// One `POST /admin/reload` with the bearer token; its round trip, ms.
pub async fn reload_once(admin: SocketAddr) -> Result<f64, String> {
    let request = format!(
        "POST /admin/reload HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let started = Instant::now();
    let outcome = timeout(IO_TIMEOUT, async {
        let mut connection = Connection::open(admin, None, SMALL_READ_BUFFER).await?;
        connection.send(request.as_bytes()).await?;
        connection.response(false).await
    })
    .await;
    match outcome {
        Ok(Ok(response)) if response.status == 200 => Ok(started.elapsed().as_secs_f64() * 1000.0),
        Ok(Ok(response)) => Err(format!("POST /admin/reload answered {}", response.status)),
        Ok(Err(error)) => Err(format!("POST /admin/reload: {error}")),
        Err(_) => Err("POST /admin/reload: timeout".into()),
    }
}

/// `POST /admin/reload` once a second during `duration` (the first after 0.5 s); each one's outcome.
async fn reload_every_second(admin: SocketAddr, duration: Duration) -> Reloads {
    let start = Instant::now();
    let mut outcomes = Vec::new();
    for second in 0..duration.as_secs() {
        let at = start + Duration::from_millis(500) + Duration::from_secs(second);
        tokio::time::sleep_until(at.into()).await;
        outcomes.push(reload_once(admin).await);
    }
    outcomes
}

/// Scenario reload: scenario a for `RELOAD_SECONDS` against a config with `RELOAD_RULES` allow rules, with a reload
/// every second against without.
pub async fn measure_reload(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let dir = harness.instance_dir("tollgate-reload")?;
    let (proxy_port, admin_port) = (free_port()?, free_port()?);
    let mut allow = String::with_capacity(RELOAD_RULES * 32);
    for rule in 0..RELOAD_RULES {
        let _ = writeln!(allow, "    - \"host{rule}.example.com\"");
    }
    allow.push_str(ALLOW_LOOPBACK);
    let admin_map = format!("{{bind: \"127.0.0.1:{admin_port}\", token: {ADMIN_TOKEN}}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy_port), &admin_map, "{anonymous: bench}", &allow, "");
    let route = Route::plain(loopback(proxy_port), true, harness.origin);
    let starting = Instant::now();
    let proxy = start_tollgate(harness, &dir, &yaml, &route).await?;
    let started = starting.elapsed();
    let admin = loopback(admin_port);
    let first = reload_once(admin).await?;
    println!(
        "- `tollgate` reload started: pid {}, {} ({} allow rules, {} KiB of YAML; up and proxying in {:.0} ms), \
         first reload {first:.1} ms",
        proxy.pid(),
        route.address,
        RELOAD_RULES + 1,
        yaml.len() / 1024,
        started.as_secs_f64() * 1000.0
    );
    let duration = Duration::from_secs(RELOAD_SECONDS);
    // Each round's reload outcomes.
    let reloads: Arc<Mutex<Vec<Reloads>>> = Arc::default();
    let series = paired(harness.options.rounds, "reload", ["no reloads", "a reload every second"], "req/s", |reload| {
        let (route, reloads) = (&route, reloads.clone());
        async move {
            if reload {
                let (round, outcomes) =
                    tokio::join!(keep_alive_gets(route, duration), reload_every_second(admin, duration));
                if let Ok(mut all) = reloads.lock() {
                    all.push(outcomes);
                }
                round
            } else {
                keep_alive_gets(route, duration).await
            }
        }
    })
    .await;
    let label = format!(
        "reload. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns, {RELOAD_RULES} allow rules, {RELOAD_SECONDS} s: \
         POST /admin/reload every second vs none (req/s)"
    );
    compare_rows(report, "reload.", label, &series, "", true);
    report.feature("reload. latency max (µs)".into(), median_of(&series[0].max), median_of(&series[1].max), 0, "");
    let rounds = reloads.lock().map(|all| all.clone()).unwrap_or_default();
    for (index, outcomes) in rounds.iter().enumerate() {
        let succeeded: Vec<String> = outcomes.iter().flatten().map(|ms| format!("{ms:.1}")).collect();
        println!(
            "  - `tollgate` reload round {}: {} of {} reloads ok, round trips ms [{}]",
            index + 1,
            succeeded.len(),
            outcomes.len(),
            succeeded.join(", ")
        );
    }
    let outcomes: Reloads = rounds.into_iter().flatten().collect();
    let mut round_trips_ms: Vec<f64> = outcomes.iter().flatten().copied().collect();
    let failed: Vec<&String> = outcomes.iter().filter_map(|outcome| outcome.as_ref().err()).collect();
    round_trips_ms.sort_by(|a, b| a.total_cmp(b));
    report.feature(
        format!("reload. round trip of POST /admin/reload under load, median of {} (ms)", round_trips_ms.len()),
        None,
        median_of(&round_trips_ms),
        1,
        "",
    );
    report.feature(
        "reload. round trip of POST /admin/reload under load, max (ms)".into(),
        None,
        round_trips_ms.last().copied(),
        1,
        "",
    );
    if let Some(error) = failed.last() {
        report.footnote(format!("reload: {} of {} reloads failed (last: {error})", failed.len(), outcomes.len()));
    }
    drop(proxy);
    Ok(())
}
