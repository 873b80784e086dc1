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
use crate::host::{free_port, on_shared_cores};
use crate::options::Target;
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
use crate::servers::{serve, stamp_ns, stub_message, Served, SSE_EVENTS};
use crate::siem::SiemSinks;
use crate::support::tls::server_config;

/// The columns of the interception table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Tollgate,
    /// tollgate with an `actions` policy that can deny: every response's tool calls are held until decided.
    TollgateActions,
    Direct,
    DirectTls,
    Mitmproxy,
}

impl Side {
    /// The table's column order.
    pub const ALL: [Side; 5] = [Side::Tollgate, Side::TollgateActions, Side::Direct, Side::DirectTls, Side::Mitmproxy];

    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            Side::Tollgate => "tollgate",
            Side::TollgateActions => "tollgate, actions held",
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

/// Scenario intercept: non-streamed `POST /v1/messages` back to back over `INTERCEPT_TUNNELS` tunnels, then paced
/// at `PACED_RATE` over `PACED_TUNNELS`; then the first handshake to a new host against a cached one.
pub async fn measure_interception(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let run = start_interception_run(harness, report, "intercept").await?;
    let names = run.names();
    let (rounds, duration) = (harness.options.rounds, Duration::from_secs(harness.options.round_seconds));
    // The tunnels of a round are opened (CONNECT, TLS handshake) before its clock and CPU count start.
    let round = |side: usize, connections: usize, rate: Option<u32>| {
        let (route, pid) = (run.route(side), run.pid(side));
        async move {
            let opened_ahead = open_ahead(route, connections, true).await;
            let load = KeepAliveLoad {
                connections,
                request: Arc::new(route.messages_request(false)),
                body_length: stub_message().len() as u64,
                tunnel: true,
                opened_ahead,
                rate,
                max_requests: KEEP_ALIVE_MAX_REQUESTS,
            };
            with_proxy_cpu(pid, run_keep_alive_load(route, duration, load)).await
        }
    };

    let back_to_back =
        interleaved(rounds, "`intercept`", &names, "req/s", |side| round(side, INTERCEPT_TUNNELS, None)).await;
    report.interception(
        format!(
            "intercept. `POST /v1/messages` (non-streamed), {INTERCEPT_TUNNELS} keep-alive tunnels, back to back (req/s)"
        ),
        run.series_cells(&back_to_back, |series| &series.rate),
        0,
        Goal::TimesMitmproxy(20.0),
    );
    report.interception(
        "intercept. latency p50 (µs)".into(),
        run.series_cells(&back_to_back, |series| &series.p50),
        0,
        Goal::None,
    );
    report.interception(
        "intercept. latency p99 (µs)".into(),
        run.series_cells(&back_to_back, |series| &series.p99),
        0,
        Goal::None,
    );
    let proxy_cpu = |side: Side, index: usize| {
        matches!(side, Side::Tollgate | Side::TollgateActions | Side::Mitmproxy)
            .then(|| median_of(&back_to_back[index].cpu))
    };
    report.interception(
        "intercept. proxy CPU per request, user + kernel, all threads (µs)".into(),
        run.cells(|side, index| proxy_cpu(side, index).map(|cpu| cpu.unwrap_or(f64::NAN))),
        1,
        Goal::None,
    );
    report.interception(
        "intercept. one free core's worth: 10⁶ / CPU per request (req/s; unlike req/s, not skewed by other processes \
         on the proxy's core)"
            .into(),
        run.cells(|side, index| proxy_cpu(side, index).map(|cpu| cpu.map_or(f64::NAN, |cpu| 1e6 / cpu))),
        0,
        Goal::TimesMitmproxy(20.0),
    );
    run.notes(report, "intercept", &back_to_back);
    run.contention(report, "intercept", &back_to_back);

    let paced =
        interleaved(rounds, "`intercept` paced", &names, "req/s", |side| round(side, PACED_TUNNELS, Some(PACED_RATE)))
            .await;
    run.paced_rows(report, "pinned", &paced);
    if harness.pin_children {
        let shared = interleaved(rounds, "`intercept` paced, shared cores", &names, "req/s", |side| {
            on_shared_cores(run.pid(side), round(side, PACED_TUNNELS, Some(PACED_RATE)))
        })
        .await;
        run.paced_rows(report, "shared cores", &shared);
    }

    // Minting: each round, new names; the direct TLS side shows a handshake with a fixed certificate.
    let mut minted: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); run.sides.len()];
    for number in 1..=rounds {
        for (index, (side, route)) in run.sides.iter().enumerate() {
            if *side == Side::Direct {
                continue;
            }
            let host = |host: usize| {
                if *side == Side::DirectTls {
                    Ok(route.clone())
                } else {
                    route.for_host(&format!("h{number}-{host}.{MINT_DOMAIN}"))
                }
            };
            match new_and_cached_handshakes(host).await {
                Ok((new, cached)) => {
                    println!(
                        "- `intercept` handshake round {number}/{rounds}, {}: new host {new:.0} µs, cached host {cached:.0} µs \
                         (medians of {MINT_HOSTS})",
                        side.name()
                    );
                    minted[index].0.push(new);
                    minted[index].1.push(cached);
                }
                Err(error) => {
                    println!("- `intercept` handshake round {number}/{rounds}, {}: failed: {error}", side.name());
                    report.footnote(format!("mint {}: {error}", side.name()));
                }
            }
            sleep(ROUND_PAUSE).await;
        }
    }
    let pick = |index: usize, new: bool| {
        let (new_hosts, cached_hosts) = &minted[index];
        median_of(if new { new_hosts } else { cached_hosts }).unwrap_or(f64::NAN)
    };
    report.interception(
        format!("mint. CONNECT + TLS handshake, new host: leaf minted (µs, median of {MINT_HOSTS} hosts)"),
        run.cells(|side, index| (side != Side::DirectTls && side != Side::Direct).then(|| pick(index, true))),
        0,
        Goal::None,
    );
    report.interception(
        "mint. CONNECT + TLS handshake, cached host (µs; direct TLS: TCP + TLS handshake to the stub)".into(),
        run.cells(|side, index| (side != Side::Direct).then(|| pick(index, false))),
        0,
        Goal::None,
    );
    drop(run);
    Ok(())
}

/// Scenario sse: streamed responses; time to the first event, each later event's delay, per side.
pub async fn measure_streaming(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let run = start_interception_run(harness, report, "sse").await?;
    let names = run.names();
    let (rounds, duration) = (harness.options.rounds, Duration::from_secs(harness.options.round_seconds));
    let series = interleaved(rounds, "`sse`", &names, "streams/s", |side| {
        let (route, pid) = (run.route(side), run.pid(side));
        async move {
            let opened_ahead = open_ahead(route, SSE_CONNECTIONS, true).await;
            with_proxy_cpu(pid, streamed_responses(route, duration, opened_ahead)).await
        }
    })
    .await;
    let tag = format!("sse. {SSE_CONNECTIONS} connections, {SSE_EVENTS} events per response, {SSE_GAP:?} apart");
    report.interception(
        format!("{tag}: time to first event p50 (µs)"),
        run.series_cells(&series, |series| &series.p50),
        0,
        Goal::None,
    );
    report.interception(
        format!("{tag}: time to first event p99 (µs)"),
        run.series_cells(&series, |series| &series.p99),
        0,
        Goal::None,
    );
    report.interception(
        "sse. added time to first event p50, over direct (µs)".into(),
        run.added_cells(&series, |series| &series.p50),
        0,
        Goal::None,
    );
    report.interception(
        "sse. event delay, stub's send → client's read, mean (µs)".into(),
        run.series_cells(&series, |series| &series.event_mean),
        0,
        Goal::None,
    );
    report.interception(
        "sse. event delay p99 (µs)".into(),
        run.series_cells(&series, |series| &series.event_p99),
        0,
        Goal::None,
    );
    report.interception(
        "sse. added latency per event, mean over direct (µs)".into(),
        run.added_cells(&series, |series| &series.event_mean),
        0,
        Goal::Below(1000.0),
    );
    report.interception(
        "sse. added latency per event, p99 over direct (µs)".into(),
        run.added_cells(&series, |series| &series.event_p99),
        0,
        Goal::None,
    );
    report.interception(
        format!("sse. proxy CPU per streamed response ({SSE_EVENTS} events), all threads (µs)"),
        run.cells(|side, index| {
            matches!(side, Side::Tollgate | Side::TollgateActions | Side::Mitmproxy)
                .then(|| median_of(&series[index].cpu).unwrap_or(f64::NAN))
        }),
        0,
        Goal::None,
    );
    run.notes(report, "sse", &series);
    run.contention(report, "sse", &series);
    drop(run);
    Ok(())
}

/// The sides of one interception scenario, the proxies they need, and the sides that could not run.
struct InterceptionRun {
    /// In the order each round runs them.
    sides: Vec<(Side, Route)>,
    /// Why a side is missing (a cell's text).
    missing: Vec<(Side, String)>,
    /// Killed when the run is dropped.
    proxies: Vec<(Side, Proxy)>,
}

impl InterceptionRun {
    fn names(&self) -> Vec<&'static str> {
        self.sides.iter().map(|(side, _)| side.name()).collect()
    }

    fn route(&self, index: usize) -> &Route {
        &self.sides[index].1
    }

    /// The process behind side number `index`, if it is a proxy.
    fn pid(&self, index: usize) -> Option<u32> {
        let side = self.sides[index].0;
        self.proxies.iter().find(|(ran, _)| *ran == side).map(|(_, proxy)| proxy.pid())
    }

    /// Notes on how much of the rounds the proxies waited for their core (another process had it).
    fn contention(&self, report: &mut Report, tag: &str, series: &[Series]) {
        for ((side, _), side_series) in self.sides.iter().zip(series) {
            if let Some(waiting) = median_of(&side_series.waiting).filter(|waiting| *waiting > 0.05) {
                report.footnote(format!(
                    "{tag} {}: runnable but waiting for its core {:.0}% of the round (median; the machine was busy)",
                    side.name(),
                    waiting * 100.0
                ));
            }
        }
    }

    /// A row's cells: `value(side, index)` for each side that ran (`None`: n/a, NaN: failed).
    fn cells(&self, value: impl Fn(Side, usize) -> Option<f64>) -> [Cell; Side::ALL.len()] {
        Side::ALL.map(|side| match self.sides.iter().position(|(ran, _)| *ran == side) {
            Some(index) => match value(side, index) {
                Some(value) if value.is_finite() => Cell::Value(value),
                Some(_) => Cell::Note("failed".into()),
                None => Cell::Note("n/a".into()),
            },
            None => Cell::Note(
                self.missing
                    .iter()
                    .find(|(missing, _)| *missing == side)
                    .map_or_else(|| "n/a".into(), |(_, why)| why.clone()),
            ),
        })
    }

    /// The cells of one measurement's series: `value` picks a number from a series.
    fn series_cells(&self, series: &[Series], value: fn(&Series) -> &Vec<f64>) -> [Cell; Side::ALL.len()] {
        self.cells(|_, index| Some(median_of(value(&series[index])).unwrap_or(f64::NAN)))
    }

    /// `value` of each side minus direct's (direct itself: n/a).
    fn added_cells(&self, series: &[Series], value: fn(&Series) -> &Vec<f64>) -> [Cell; Side::ALL.len()] {
        let direct = self
            .sides
            .iter()
            .position(|(side, _)| *side == Side::Direct)
            .and_then(|index| median_of(value(&series[index])));
        self.cells(|side, index| {
            (side != Side::Direct).then(|| match (median_of(value(&series[index])), direct) {
                (Some(value), Some(direct)) => value - direct,
                _ => f64::NAN,
            })
        })
    }

    /// The rows of one paced layout: latencies, the added latency over direct (p99 against the target), notes.
    fn paced_rows(&self, report: &mut Report, layout: &str, series: &[Series]) {
        let tag = format!("paced, {layout}");
        let load = format!("{PACED_RATE} req/s evenly spaced over {PACED_TUNNELS} tunnels");
        let latency = |quantile: &str| format!("{tag}. {load}: latency {quantile} (µs)");
        report.interception(latency("p50"), self.series_cells(series, |series| &series.p50), 0, Goal::None);
        report.interception(latency("p99"), self.series_cells(series, |series| &series.p99), 0, Goal::None);
        let added = |quantile: &str| format!("{tag}. added latency {quantile}, over direct (µs)");
        report.interception(added("p50"), self.added_cells(series, |series| &series.p50), 0, Goal::None);
        report.interception(added("p99"), self.added_cells(series, |series| &series.p99), 0, Goal::Below(1000.0));
        self.notes(report, &tag, series);
        self.contention(report, &tag, series);
    }

    /// A note per side whose operations failed or ran late.
    fn notes(&self, report: &mut Report, tag: &str, series: &[Series]) {
        for ((side, _), side_series) in self.sides.iter().zip(series) {
            if side_series.errors > 0 {
                report.footnote(format!(
                    "{tag} {}: {} failed operations (last: {})",
                    side.name(),
                    side_series.errors,
                    side_series.last_error.clone().unwrap_or_default()
                ));
            }
            if side_series.late > 0 {
                report.footnote(format!(
                    "{tag} {}: {} requests were sent more than {PACE_SLACK:?} after their slot",
                    side.name(),
                    side_series.late
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
    let stub = messages_stub(harness).await?;
    let authority = format!("{API_HOST}:443");
    let direct_tls = Route::messages_api(stub.tls, false, harness.origin, &authority, Some(stub.dial.clone()));
    let mut run = InterceptionRun {
        sides: vec![
            (Side::Direct, Route::messages_api(stub.plain, false, harness.origin, &authority, None)),
            (Side::DirectTls, direct_tls),
        ],
        missing: Vec::new(),
        proxies: Vec::new(),
    };
    for (side, route) in &run.sides {
        smoke_once(route).await.map_err(|error| format!("the stub, {}: {error}", side.name()))?;
    }
    for side in [Side::Tollgate, Side::TollgateActions] {
        let started = start_tollgate_interception(harness, stub.plain, side == Side::TollgateActions, None).await;
        let (proxy, route) = match started {
            Ok(started) => started,
            Err(error) if side == Side::TollgateActions => {
                // An older tollgate (`TOLLGATE_BIN`) without `actions`: the other sides still run.
                println!("- `{tag}` {}: could not start: {error}", side.name());
                let note = report.footnote(format!("{tag}: {}: {error}", side.name()));
                run.missing.push((side, format!("failed [{note}]")));
                continue;
            }
            Err(error) => return Err(error),
        };
        println!(
            "- `{tag}` {} started: pid {}, {} (intercepting {API_HOST}, routed to the stub)",
            side.name(),
            proxy.pid(),
            route.address
        );
        run.sides.push((side, route));
        run.proxies.push((side, proxy));
    }
    match start_mitmproxy(harness, stub.plain).await {
        Ok((proxy, route)) => {
            println!("- `{tag}` mitmproxy started: pid {}, {}", proxy.pid(), route.address);
            run.sides.push((Side::Mitmproxy, route));
            run.proxies.push((Side::Mitmproxy, proxy));
        }
        Err(error) if error == "not installed" => {
            println!("- `{tag}` mitmproxy: not installed");
            run.missing.push((Side::Mitmproxy, error));
        }
        Err(error) => {
            println!("- `{tag}` mitmproxy: could not start: {error}");
            let note = report.footnote(format!("{tag}: mitmproxy: {error}"));
            run.missing.push((Side::Mitmproxy, format!("failed [{note}]")));
        }
    }
    Ok(run)
}

/// Starts the stub on the harness's thread, once per run.
pub async fn messages_stub(harness: &mut Harness) -> Result<Stub, String> {
    if let Some(stub) = &harness.stub {
        return Ok(stub.clone());
    }
    let dir = harness.instance_dir("stub")?;
    let pki = make_pki(&dir)?;
    let chain = tollgate::tls::load_certs(&pki.server_chain)?;
    let key = tollgate::tls::load_key(&pki.server_key)?;
    let mut config = server_config(chain, key, None).map_err(|error| format!("stub: {error}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let bind_error = |error: io::Error| format!("cannot bind the stub: {error}");
    let plain = TcpListener::bind("127.0.0.1:0").await.map_err(bind_error)?;
    let tls = TcpListener::bind("127.0.0.1:0").await.map_err(bind_error)?;
    let name = ServerName::try_from("localhost").map_err(|error| error.to_string())?;
    let stub = Stub {
        plain: plain.local_addr().map_err(|error| error.to_string())?,
        tls: tls.local_addr().map_err(|error| error.to_string())?,
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
    let name = ServerName::try_from(API_HOST).map_err(|error| error.to_string())?;
    let dial = TlsDial { connector: tokio_rustls::TlsConnector::from(tls_client(ca)?), name };
    Ok(Route::messages_api(proxy, true, origin, &format!("{API_HOST}:443"), Some(dial)))
}

/// tollgate intercepting `API_HOST` (routed to the plain stub) and `*.MINT_DOMAIN` (handshakes only), its CA
/// created on start in its directory. Checked with one GET through the forward proxy, then one intercepted
/// request (which mints the leaf of `API_HOST`: the cache is warm from then on).
pub async fn start_tollgate_interception(
    harness: &mut Harness,
    stub: SocketAddr,
    actions: bool,
    siem: Option<&SiemSinks>,
) -> Result<(Proxy, Route), String> {
    let tag = match (actions, siem) {
        (true, _) => "tollgate-intercept-actions",
        (false, Some(_)) => "tollgate-intercept-siem",
        (false, None) => "tollgate-intercept",
    };
    let dir = harness.instance_dir(tag)?;
    let (proxy_port, admin_port) = (free_port()?, free_port()?);
    let directory = dir.display();
    let allow = format!("    - \"{API_HOST}\"\n    - \"*.{MINT_DOMAIN}\"\n{ALLOW_LOOPBACK}");
    let extra = format!(
        "upstreams: {{stub: {{url: \"http://{stub}\"}}}}\n\
         routing: [{{when: {{host: {API_HOST}}}, to: stub}}]\n\
         intercept: {{ca: {{cert: \"{directory}/ca.pem\", key: \"{directory}/ca.key\"}}, hosts: [\"{API_HOST}\", \"*.{MINT_DOMAIN}\"]}}\n\
         state: {{path: \"{directory}/state\"}}\n"
    );
    // A policy that can deny: tool calls are held until decided (the stub's responses carry none, so this measures
    // what holding costs a response without tool calls).
    let extra = if actions {
        format!("{extra}actions: {{deny: [\"file:read:/etc/shadow\", \"bash:run:curl *\"]}}\n")
    } else {
        extra
    };
    let admin = format!("{{bind: \"127.0.0.1:{admin_port}\"}}");
    let yaml = tollgate_yaml(&dir, &listener_item("proxy", proxy_port), &admin, "{anonymous: bench}", &allow, &extra);
    let yaml = match siem {
        Some(sinks) => sinks.configure(&yaml, &dir)?,
        None => yaml,
    };
    let forward = Route::plain(loopback(proxy_port), true, harness.origin);
    let mut proxy = start_tollgate(harness, &dir, &yaml, &forward).await?;
    let route = intercepted_route(forward.address, harness.origin, &dir.join("ca.pem"))?;
    until_smoke(&mut proxy, &route).await?;
    Ok((proxy, route))
}

/// `mitmdump` in regular proxy mode with `benches/mitm_stub.py` (requests for `API_HOST` go to the plain stub,
/// SSE responses are streamed), leaves minted for the SNI without asking the upstream, no upstream connection
/// before a request; its CA created in its directory.
async fn start_mitmproxy(harness: &mut Harness, stub: SocketAddr) -> Result<(Proxy, Route), String> {
    if !harness.binaries.contains_key(&Target::Mitmproxy) {
        return Err("not installed".into());
    }
    let dir = harness.instance_dir("mitmproxy")?;
    let port = free_port()?;
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
    let route = intercepted_route(proxy.address, harness.origin, &ca)?;
    until_smoke(&mut proxy, &route).await?;
    Ok((proxy, route))
}

/// `MINT_HOSTS` hosts (`host(index)`), each opened twice in a row (connect, CONNECT, TLS handshake, close): the
/// first to a new host mints its leaf, the second finds it cached. Each median, µs.
async fn new_and_cached_handshakes(host: impl Fn(usize) -> Result<Route, String>) -> Result<(f64, f64), String> {
    let (mut new, mut cached) = (Vec::new(), Vec::new());
    for index in 0..MINT_HOSTS {
        let route = host(index)?;
        for handshakes in [&mut new, &mut cached] {
            let started = Instant::now();
            match timeout(IO_TIMEOUT, route.tunnel(1024)).await {
                Ok(Ok(_)) => handshakes.push(started.elapsed().as_secs_f64() * 1e6),
                Ok(Err(error)) => return Err(format!("{:?}: {error}", route.authority)),
                Err(_) => return Err(format!("{:?}: timeout", route.authority)),
            }
        }
    }
    Ok((median(new), median(cached)))
}

/// Scenario sse on one side: `SSE_CONNECTIONS` keep-alive connections (tunnels), each asking for one streamed
/// response after the other (`opened_ahead`: connections already open). Records the time from sending the request
/// to reading the first event, and for every later event its delay from the stub's send (its `id:` stamp) to the
/// client's read.
async fn streamed_responses(route: &Route, duration: Duration, opened_ahead: Vec<Connection>) -> RateRound {
    let request = Arc::new(route.messages_request(true));
    let route = route.clone();
    let opened_ahead = Arc::new(Mutex::new(opened_ahead));
    run_workers(SSE_CONNECTIONS, duration, SSE_MAX_STREAMS, move |deadline, budget| {
        let (request, route) = (request.clone(), route.clone());
        let mut connection: Option<Connection> = opened_ahead.lock().ok().and_then(|mut opened| opened.pop());
        async move {
            let mut stats = Stats::default();
            stats.connections_opened += u64::from(connection.is_some());
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                let outcome = timeout(IO_TIMEOUT, async {
                    if connection.is_none() {
                        connection = Some(route.tunnel(SMALL_READ_BUFFER).await?);
                        stats.connections_opened += 1;
                    }
                    stream_once(connection.as_mut().expect("connection just opened"), &request).await
                })
                .await;
                match outcome {
                    Ok(Ok(streamed)) => {
                        stats.sample(streamed.first_ns);
                        if stats.event_delays_ns.len() + streamed.delays_ns.len() <= MAX_SAMPLES_PER_WORKER {
                            stats.event_delays_ns.extend(streamed.delays_ns);
                        }
                        if !streamed.keep_alive {
                            connection = None;
                        }
                    }
                    Ok(Err(error)) => {
                        stats.error(error);
                        connection = None;
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        stats.error("timeout");
                        connection = None;
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

/// Sends a streamed request on `connection` and reads its events as they arrive; all `SSE_EVENTS` must come, the
/// last `message_stop`.
async fn stream_once(connection: &mut Connection, request: &[u8]) -> io::Result<Streamed> {
    let sent = Instant::now();
    connection.send(request).await?;
    let head = connection.head().await?;
    if head.status != 200 {
        return Err(io::Error::other(format!("status {}", head.status)));
    }
    let mut framing = Framing::of(&head);
    let keep_alive = head.persistent() && !matches!(framing, Framing::UntilClose);
    let mut pending: Vec<u8> = Vec::new();
    let (mut first_ns, mut events, mut stopped) = (None, 0, false);
    let mut delays_ns = Vec::with_capacity(SSE_EVENTS);
    while let Some(piece) = connection.piece(&mut framing).await? {
        let (now, now_ns) = (Instant::now(), stamp_ns());
        pending.extend_from_slice(&piece);
        while let Some(end) = pending.windows(2).position(|pair| pair == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            events += 1;
            if events > SSE_EVENTS {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "more events than the stub sent"));
            }
            if first_ns.is_none() {
                first_ns = Some(now.duration_since(sent).as_nanos() as u64);
            } else if let Some(stamp) =
                event.lines().find_map(|line| line.strip_prefix("id:")).and_then(|id| id.trim().parse::<u64>().ok())
            {
                delays_ns.push(now_ns.saturating_sub(stamp));
            }
            stopped = event.lines().any(|line| line == "event: message_stop");
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
