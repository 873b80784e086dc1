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
use crate::host::{first_line, port, which};
use crate::options::Target;
use crate::parameters::{
    CONNECT_MAX_OPERATIONS, CONNECT_WORKERS, IO_TIMEOUT, KEEP_ALIVE_CONNECTIONS, MAX_ERRORS_PER_WORKER, READY_ATTEMPTS,
    SMALL_READ_BUFFER,
};
use crate::processes::{log_tail, register_pid, tree_rss_kib, Daemon};
use crate::proxies::{listener_item, loopback, smoke_once, start_tollgate, tollgate_yaml, Harness, ALLOW_LOOPBACK};
use crate::report::Report;
use crate::rounds::{median_of, paired, Series};
use crate::route::{Route, TlsDial};
use crate::scenarios::{
    connect_get_close, keep_alive_gets, run_workers, take_from_budget, with_proxy_cpu, RateRound, Stats,
};

/// Scenario tls, e and f: name of the mTLS client certificate's CN (the principal, `auth.mtls.identity: cn`).
pub const MTLS_USER: &str = "bench-client";
/// Scenarios limits and redis: the Basic user and its password.
pub const BASIC_USER: &str = "bench-user";
pub const BASIC_PASSWORD: &str = "pw";
/// Scenarios limits and redis: team `bench` and org/user limits, all far above what one core can reach.
pub const TEAM_LIMITS: &str =
    "teams:\n  bench:\n    limits: {rpm: 10000000, user_rpm: 10000000, user_concurrent: 100000}\n\
                           limits:\n  org: {rpm: 10000000, concurrent: 100000}\n  \
                           user: {rpm: 10000000, concurrent: 100000}\n";
/// Scenario reload: `policy.allow` rules besides the origin's, and the length of each round.
pub const RELOAD_RULES: usize = 10_000;
pub const RELOAD_SECONDS: u64 = 10;
/// Scenario reload: `admin.token`.
pub const ADMIN_TOKEN: &str = "bench";

/// Scenarios g and h: full TLS handshakes (connect, handshake, close; no request).
pub async fn full_handshakes(t: &Route, duration: Duration) -> RateRound {
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
pub async fn handshake_once(t: &Route) -> io::Result<()> {
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

/// The rows of a comparison: the rate (`rate_label`), and with `latency` p50 and p99 (`tag` starts their
/// labels); failed requests go to the notes.
pub fn compare_rows(report: &mut Report, tag: &str, rate_label: String, s: &[Series; 2], target: &str, latency: bool) {
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

/// Scenario tls: one tollgate with a plain, a TLS and an mTLS listener; e and f compare the TLS listener with
/// the plain one, g counts full handshakes, h the same with a client certificate.
pub async fn measure_tls(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
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
pub fn basic_user_hash(harness: &mut Harness) -> Result<String, String> {
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
pub fn basic_user_authorization() -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    format!("Basic {token}")
}

/// A config with the Basic user (and no anonymous access); `limits`: the user is in team `bench` and the team,
/// org and user limits are set; `state`: a `state:` section, or "". Returns the directory, the YAML and the
/// target (with the user's credentials).
pub fn basic_config(
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
pub async fn measure_limits(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
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
pub async fn start_redis(harness: &mut Harness, bin: &Path) -> Result<(Daemon, u16), String> {
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
pub async fn measure_redis(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
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

pub fn redis_state(port: u16) -> String {
    format!("state: {{backend: redis, redis_url: \"redis://127.0.0.1:{port}\"}}\n")
}

/// The outcomes of the reloads of one round: round trip (ms) or error.
pub type Reloads = Vec<Result<f64, String>>;

/// One `POST /admin/reload` with the bearer token; its round trip, ms.
pub async fn reload_once(admin: SocketAddr) -> Result<f64, String> {
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
pub async fn reload_loop(admin: SocketAddr, duration: Duration) -> Reloads {
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
pub async fn measure_reload(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
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
