//! What to run: the targets (direct, tollgate, squid, tinyproxy, mitmproxy), the scenarios, the rows of the first
//! table, and the command line that picks them.

use crate::parameters::{CONNECT_WORKERS, KEEP_ALIVE_CONNECTIONS, KEEP_ALIVE_PACED_RATE};

/// What the client talks to: the origin straight (`direct`), or a proxy in front of it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Target {
    Direct,
    Tollgate,
    Squid,
    Tinyproxy,
    /// mitmproxy's `mitmdump`: only in scenarios intercept and sse (not one of `ALL`, the first table's columns).
    Mitmproxy,
    /// An earlier tollgate (`TOLLGATE_BEFORE_BIN`): only in scenario gateway, beside this build.
    TollgateBefore,
    /// LiteLLM's proxy (`LITELLM_BIN`): only in scenario gateway.
    Litellm,
}

impl Target {
    /// The first table's columns, in order.
    pub const ALL: [Target; 4] = [Target::Direct, Target::Tollgate, Target::Squid, Target::Tinyproxy];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Tollgate => "tollgate",
            Target::Squid => "squid",
            Target::Tinyproxy => "tinyproxy",
            Target::Mitmproxy => "mitmproxy",
            Target::TollgateBefore => "tollgate-before",
            Target::Litellm => "litellm",
        }
    }
}

/// A scenario, named on the command line by its letter or its name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Scenario {
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
    /// tollgate only: forward and intercepted requests with two SIEM sinks (HEC + syslog) against none.
    Siem,
    /// The Messages API through tollgate's gateway listener, back to back and paced; against the stub direct, an
    /// earlier tollgate and LiteLLM's proxy when given.
    Gateway,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 12] = [
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
        Scenario::Siem,
        Scenario::Gateway,
    ];
    /// The scenarios that compare targets (the first table); the others are tollgate's features.
    pub const COMPARING_TARGETS: [Scenario; 4] =
        [Scenario::KeepAlive, Scenario::ConnectGetClose, Scenario::Bulk, Scenario::IdleTunnels];

    /// The scenario a `--only` name picks.
    pub fn parse(name: &str) -> Option<Scenario> {
        match name {
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
            "siem" => Some(Scenario::Siem),
            "gateway" | "model" => Some(Scenario::Gateway),
            _ => None,
        }
    }
}

/// One row of the first table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Metric {
    KeepAliveRate,
    KeepAliveP50,
    KeepAliveP99,
    KeepAlivePacedP50,
    KeepAlivePacedP99,
    ConnectRate,
    BulkThroughput,
    RssPerTunnel,
}

impl Metric {
    /// The first table's rows, in order.
    pub const ALL: [Metric; 8] = [
        Metric::KeepAliveRate,
        Metric::KeepAliveP50,
        Metric::KeepAliveP99,
        Metric::KeepAlivePacedP50,
        Metric::KeepAlivePacedP99,
        Metric::ConnectRate,
        Metric::BulkThroughput,
        Metric::RssPerTunnel,
    ];

    /// The row's label, as `docs/BENCHMARKS.md` quotes it.
    pub fn label(self, options: &Options) -> String {
        match self {
            Metric::KeepAliveRate => format!("a. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns (req/s)"),
            Metric::KeepAliveP50 => "a. latency p50 (µs)".to_string(),
            Metric::KeepAliveP99 => "a. latency p99 (µs)".to_string(),
            Metric::KeepAlivePacedP50 => format!("a. paced, {KEEP_ALIVE_PACED_RATE} req/s: latency p50 (µs)"),
            Metric::KeepAlivePacedP99 => format!("a. paced, {KEEP_ALIVE_PACED_RATE} req/s: latency p99 (µs)"),
            Metric::ConnectRate => format!("b. CONNECT + GET + close, {CONNECT_WORKERS} workers (conn/s)"),
            Metric::BulkThroughput => "c. 1 GiB through one tunnel (MiB/s)".to_string(),
            Metric::RssPerTunnel => format!("d. RSS per idle tunnel, {} tunnels (KiB)", options.tunnels),
        }
    }

    /// Decimals printed.
    pub fn decimals(self) -> usize {
        match self {
            Metric::RssPerTunnel => 1,
            _ => 0,
        }
    }
}

/// The command line, parsed.
#[derive(Clone)]
pub struct Options {
    /// `--quick`: 2 s rounds instead of 5 s.
    pub quick: bool,
    /// `--rounds N`: rounds per scenario.
    pub rounds: usize,
    /// Length of a round (but reload's), seconds.
    pub round_seconds: u64,
    /// `--tunnels N`: idle tunnels of scenario d.
    pub tunnels: usize,
    /// Named with `--only`, sorted; all when none is named.
    pub targets: Vec<Target>,
    /// Named with `--only`, sorted; all when none is named.
    pub scenarios: Vec<Scenario>,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--quick] [--only NAME[,NAME...]] [--rounds N] [--tunnels N]
  NAME: direct, tollgate, squid, tinyproxy (targets) or a|keepalive, b|connect, c|bulk, d|rss (scenarios)
        or tls, limits, redis, reload, siem (tollgate-only scenarios)
        or intercept, sse (interception: tollgate against the Messages API stub direct and mitmproxy)
        or gateway (the gateway listener against the stub direct, TOLLGATE_BEFORE_BIN and LiteLLM)
  env:  TOLLGATE_BIN (default target/release/tollgate), SQUID_BIN, TINYPROXY_BIN,
        MITMDUMP_BIN (default target/mitmproxy-venv/bin/mitmdump, else mitmdump on PATH),
        TOLLGATE_BEFORE_BIN (an earlier tollgate, scenario gateway only),
        LITELLM_BIN (default target/litellm-venv/bin/litellm, else litellm on PATH),
        TOLLGATE_SIEM_GZIP=false (scenario siem: the HEC sink sends its batches uncompressed)";

/// Parses the arguments after `--`; `Err` holds the message to print (the usage for `--help`).
pub fn parse_args() -> Result<Options, String> {
    let mut quick = false;
    let mut rounds = 3usize;
    let mut tunnels = 5000usize;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(argument) = args.next() {
        let (key, inline) = match argument.split_once('=') {
            Some((key, value)) if key.starts_with("--") => (key.to_string(), Some(value.to_string())),
            _ => (argument.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match key.as_str() {
            "--quick" => quick = true,
            "--only" => only.extend(
                value("--only")?
                    .split(',')
                    .map(|name| name.trim().to_ascii_lowercase())
                    .filter(|name| !name.is_empty()),
            ),
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
        if let Some(target) = Target::ALL.iter().find(|target| target.name() == name) {
            targets.push(*target);
        } else if let Some(scenario) = Scenario::parse(name) {
            scenarios.push(scenario);
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
    Ok(Options { quick, rounds, round_seconds: if quick { 2 } else { 5 }, tunnels, targets, scenarios })
}
