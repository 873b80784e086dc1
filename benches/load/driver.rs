//! The driver: sets up the host, starts the origin, runs the selected scenarios against each target and prints
//! the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::sleep;

use crate::host::{first_line, pin_self, raise_open_file_limit, tollgate_binary, which};
use crate::interception::run_feature;
use crate::options::{parse_args, Metric, Scenario, Target};
use crate::parameters::{KEEP_ALIVE_CONNECTIONS, ROUND_PAUSE};
use crate::processes::{kill_pids, process_tree, tree_rss_kib, CHILD_PIDS};
use crate::proxies::{start_proxy, Harness};
use crate::report::Report;
use crate::rounds::{format_rounds, median};
use crate::route::Route;
use crate::scenarios::{bulk_download, connect_get_close, idle_tunnel_memory, keep_alive_gets};
use crate::servers::{serve, Served};
use crate::tollgate_only::RELOAD_SECONDS;

/// Scenarios a, b and c against one target (one proxy instance for all of them).
pub async fn run_rate_scenarios(harness: &mut Harness, report: &mut Report, kind: Target) {
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
pub async fn run_idle_tunnel_memory(harness: &mut Harness, report: &mut Report, kind: Target) {
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

pub async fn run(mut harness: Harness) -> Report {
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

pub fn main() -> ExitCode {
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
