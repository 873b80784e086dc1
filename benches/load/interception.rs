//! The interception scenarios: the Messages API through tollgate's intercepted tunnels, straight to the stub (plain
//! and TLS) and through mitmproxy; intercept (back to back, paced, leaf minting) and sse (streamed responses).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};

use crate::certificates::{make_pki, tls_client};
use crate::client::{Connection, Framing};
use crate::host::{on_shared_cores, port};
use crate::options::{Scenario, Target};
use crate::parameters::{
    API_HOST, INTERCEPT_TUNNELS, IO_TIMEOUT, KEEP_ALIVE_MAX_REQUESTS, MAX_ERRORS_PER_WORKER, MAX_SAMPLES_PER_WORKER,
    MINT_DOMAIN, MINT_HOSTS, PACED_RATE, PACED_TUNNELS, PACE_SLACK, READY_ATTEMPTS, ROUND_PAUSE, SMALL_READ_BUFFER,
    SSE_CONNECTIONS, SSE_GAP, SSE_MAX_STREAMS,
};
use crate::processes::Proxy;
use crate::proxies::{
    listener_item, loopback, smoke_once, spawn, start_tollgate, tollgate_yaml, until_smoke, Harness, ALLOW_LOOPBACK,
};
use crate::report::{Cell, Goal, Report};
use crate::rounds::{interleaved, median, median_of, Series};
use crate::route::{Route, TlsDial};
use crate::scenarios::{
    open_ahead, run_keep_alive_load, run_workers, take_from_budget, with_proxy_cpu, KeepAliveLoad, RateRound, Stats,
};
use crate::servers::{serve, stamp_ns, Served, SSE_EVENTS, STUB_MESSAGE};
use crate::tollgate_only::{measure_limits, measure_redis, measure_reload, measure_tls};

/// The columns of the interception table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Tollgate,
    Direct,
    DirectTls,
    Mitmproxy,
}

impl Side {
    /// The table's column order.
    pub const ALL: [Side; 4] = [Side::Tollgate, Side::Direct, Side::DirectTls, Side::Mitmproxy];

    pub fn name(self) -> &'static str {
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
pub struct Stub {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    /// How the client reaches the TLS listener.
    pub dial: TlsDial,
}

/// Starts the stub on the harness's thread, once per run.
pub async fn stub(harness: &mut Harness) -> Result<Stub, String> {
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
pub fn intercepted_route(proxy: SocketAddr, origin: SocketAddr, ca: &Path) -> Result<Route, String> {
    let name = ServerName::try_from(API_HOST).map_err(|e| e.to_string())?;
    let dial = TlsDial { connector: tokio_rustls::TlsConnector::from(tls_client(ca, None)?), name };
    Ok(Route::api(proxy, true, origin, &format!("{API_HOST}:443"), Some(dial)))
}

/// tollgate intercepting `API_HOST` (routed to the plain stub) and `*.MINT_DOMAIN` (handshakes only), its CA
/// created on start in its directory. Checked with one GET through the forward proxy, then one intercepted
/// request (which mints the leaf of `API_HOST`: the cache is warm from then on).
pub async fn start_tollgate_interception(harness: &mut Harness, stub: SocketAddr) -> Result<(Proxy, Route), String> {
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
pub async fn start_mitmproxy(harness: &mut Harness, stub: SocketAddr) -> Result<(Proxy, Route), String> {
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
pub struct InterceptionRun {
    /// In the order each round runs them.
    pub sides: Vec<(Side, Route)>,
    /// Why a side is missing (a cell's text).
    pub missing: Vec<(Side, String)>,
    /// Killed when the run is dropped.
    pub proxies: Vec<Proxy>,
}

impl InterceptionRun {
    pub fn names(&self) -> Vec<&'static str> {
        self.sides.iter().map(|(s, _)| s.name()).collect()
    }

    pub fn target(&self, i: usize) -> &Route {
        &self.sides[i].1
    }

    /// The process behind side `i`, if it is a proxy.
    pub fn pid(&self, i: usize) -> Option<u32> {
        let kind = match self.sides[i].0 {
            Side::Tollgate => Target::Tollgate,
            Side::Mitmproxy => Target::Mitmproxy,
            Side::Direct | Side::DirectTls => return None,
        };
        self.proxies.iter().find(|p| p.kind == kind).map(Proxy::pid)
    }

    /// Notes on how much of the rounds the proxies waited for their core (another process had it).
    pub fn contention(&self, report: &mut Report, tag: &str, series: &[Series]) {
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
    pub fn cells(&self, value: impl Fn(Side, usize) -> Option<f64>) -> [Cell; 4] {
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
    pub fn series_cells(&self, series: &[Series], value: fn(&Series) -> &Vec<f64>) -> [Cell; 4] {
        self.cells(|_, i| Some(median_of(value(&series[i])).unwrap_or(f64::NAN)))
    }

    /// `value` of each side minus direct's (direct itself: n/a).
    pub fn added_cells(&self, series: &[Series], value: fn(&Series) -> &Vec<f64>) -> [Cell; 4] {
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
    pub fn paced_rows(&self, report: &mut Report, layout: &str, series: &[Series]) {
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

    pub fn notes(&self, report: &mut Report, tag: &str, series: &[Series]) {
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
pub async fn start_interception_run(
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
pub async fn measure_interception(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
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
pub async fn new_and_cached_handshakes(host: impl Fn(usize) -> Result<Route, String>) -> Result<(f64, f64), String> {
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
pub async fn measure_streaming(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
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
pub async fn streamed_responses(t: &Route, duration: Duration, warm: Vec<Connection>) -> RateRound {
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
pub struct Streamed {
    /// From sending the request to reading the first event.
    pub first_ns: u64,
    /// Every later event: from the stub's send to the client's read.
    pub delays_ns: Vec<u64>,
    pub keep_alive: bool,
}

/// Sends a streamed request on `c` and reads its events as they arrive; all `SSE_EVENTS` must come, the last
/// `message_stop`.
pub async fn stream_once(c: &mut Connection, req: &[u8]) -> io::Result<Streamed> {
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
pub async fn run_feature(harness: &mut Harness, report: &mut Report, scenario: Scenario) {
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
