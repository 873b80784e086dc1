//! The driver: finds the binaries, sets up the host, prints the report's head, starts the origin, runs the
//! selected scenarios against each target and prints the results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::sleep;

use crate::host::{first_line, pin_self, raise_open_file_limit, tollgate_binary, which};
use crate::interception::{measure_interception, measure_streaming};
use crate::options::{Metric, Options, Scenario, Target};
use crate::parameters::{KEEP_ALIVE_CONNECTIONS, KEEP_ALIVE_PACED_RATE, ROUND_PAUSE};
use crate::processes::{kill_pids, process_tree, tree_rss_kib, CHILD_PIDS};
use crate::proxies::{start_proxy, Harness};
use crate::report::Report;
use crate::rounds::{format_rounds, median};
use crate::route::Route;
use crate::scenarios::{bulk_download, connect_get_close, idle_tunnel_memory, keep_alive_gets, keep_alive_gets_at};
use crate::servers::{serve, Served};
use crate::tollgate_only::{measure_limits, measure_redis, measure_reload, measure_tls, RELOAD_SECONDS};

/// Runs the harness as `options` say; the exit code of the bench.
pub fn run(options: Options) -> ExitCode {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let have_taskset = which("taskset").is_some();
    let Some((binaries, versions)) = find_binaries(&options) else {
        return ExitCode::from(2);
    };

    // Host set-up, before any thread is started.
    let pinned = pin_self(cores, have_taskset);
    let pin_children = cores >= 2 && have_taskset;
    let need_open_files = 2 * options.tunnels as u64 + 1024;
    let (open_files, open_files_message) = raise_open_file_limit(need_open_files);

    let temp_dir = match tempfile::Builder::new().prefix("tollgate-load-").tempdir() {
        Ok(temp_dir) => temp_dir,
        Err(error) => {
            eprintln!("load: cannot create a temp dir: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("load: cannot build the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();

    println!("# tollgate load report\n");
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    println!("- command: `cargo bench --bench load -- {}`", args.join(" ").trim());
    println!("- date: {date}; kernel {}; {cores} cores", kernel.trim());
    let load_average = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let last_minute: f64 = load_average.split_whitespace().next().and_then(|load| load.parse().ok()).unwrap_or(0.0);
    println!(
        "- load average at start: {}{}",
        load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        if last_minute > 0.5 { " (WARNING: the machine is busy; numbers will be noisy)" } else { "" }
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
    println!("- RLIMIT_NOFILE: {open_files_message}");
    println!(
        "- mode: {} ({} s per round for a, b, tls, limits/redis, intercept and sse, {RELOAD_SECONDS} s for reload), {} \
         rounds per scenario, median reported; d opens {} tunnels",
        if options.quick { "--quick" } else { "full" },
        options.round_seconds,
        options.rounds,
        options.tunnels
    );
    for version in &versions {
        println!("- {version}");
    }
    println!("- temp dir: {}\n", temp_dir.path().display());
    if open_files < need_open_files && options.scenarios.contains(&Scenario::IdleTunnels) {
        println!(
            "- WARNING: RLIMIT_NOFILE {open_files} is too low for {} tunnels; scenario d will open fewer\n",
            options.tunnels
        );
    }

    let run_options = options.clone();
    let report = runtime.block_on(async {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(error) => return Err(format!("cannot bind the origin: {error}")),
        };
        let origin = listener.local_addr().map_err(|error| error.to_string())?;
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
        Ok(run_scenarios(harness).await)
    });
    // Stop the origin's tasks before the temp dir goes.
    drop(runtime);
    match report {
        Ok(report) => {
            report.print(&options);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The binaries of the selected targets that are installed, and a version line for each target; `None` (after
/// saying why) when tollgate is selected but not built.
fn find_binaries(options: &Options) -> Option<(BTreeMap<Target, PathBuf>, Vec<String>)> {
    let mut binaries = BTreeMap::new();
    let mut versions = Vec::new();
    if options.targets.contains(&Target::Tollgate) {
        let binary = tollgate_binary();
        if !binary.is_file() {
            eprintln!(
                "load: tollgate binary not found at {}\n\
                 load: run `cargo build --release` first (or set TOLLGATE_BIN, \
                 or pass `--only direct,squid,tinyproxy`)",
                binary.display()
            );
            return None;
        }
        versions.push(format!("tollgate: {} ({})", first_line(&binary, &["--version"]), binary.display()));
        binaries.insert(Target::Tollgate, binary);
    }
    for (target, variable, name, version_flag) in
        [(Target::Squid, "SQUID_BIN", "squid", "-v"), (Target::Tinyproxy, "TINYPROXY_BIN", "tinyproxy", "-v")]
    {
        if !options.targets.contains(&target) {
            continue;
        }
        let binary = std::env::var_os(variable).map(PathBuf::from).or_else(|| which(name));
        match binary {
            Some(binary) if binary.is_file() => {
                versions.push(format!("{name}: {} ({})", first_line(&binary, &[version_flag]), binary.display()));
                binaries.insert(target, binary);
            }
            _ => versions.push(format!("{name}: not installed (`apt-get install -y {name}`)")),
        }
    }

    if options.scenarios.iter().any(|scenario| matches!(scenario, Scenario::Intercept | Scenario::Sse)) {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mitmproxy-venv/bin/mitmdump");
        let binary = std::env::var_os("MITMDUMP_BIN")
            .map(PathBuf::from)
            .or_else(|| venv.is_file().then_some(venv))
            .or_else(|| which("mitmdump"));
        match binary {
            Some(binary) if binary.is_file() => {
                versions.push(format!("mitmproxy: {} ({})", first_line(&binary, &["--version"]), binary.display()));
                binaries.insert(Target::Mitmproxy, binary);
            }
            _ => versions
                .push("mitmproxy: not installed (`benches/run-load.sh` installs it into target/mitmproxy-venv)".into()),
        }
    }
    if options.scenarios.contains(&Scenario::Gateway) {
        if let Some(binary) = std::env::var_os("TOLLGATE_BEFORE_BIN").map(PathBuf::from) {
            if !binary.is_file() {
                eprintln!("load: TOLLGATE_BEFORE_BIN: no file at {}", binary.display());
                return None;
            }
            versions.push(format!("tollgate before: {} ({})", first_line(&binary, &["--version"]), binary.display()));
            binaries.insert(Target::TollgateBefore, binary);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/litellm-venv/bin/litellm");
        let binary = std::env::var_os("LITELLM_BIN")
            .map(PathBuf::from)
            .or_else(|| venv.is_file().then_some(venv))
            .or_else(|| which("litellm"));
        match binary {
            Some(binary) if binary.is_file() => {
                versions.push(format!("LiteLLM proxy: {}", binary.display()));
                binaries.insert(Target::Litellm, binary);
            }
            _ => versions.push(
                "LiteLLM: not installed (`python3 -m venv target/litellm-venv && target/litellm-venv/bin/pip install \
                 'litellm[proxy]'`)"
                    .into(),
            ),
        }
    }
    Some((binaries, versions))
}

/// Every selected scenario: the first table's against each target in turn, then tollgate's own.
async fn run_scenarios(mut harness: Harness) -> Report {
    let mut report = Report::default();
    // Ctrl-C, SIGTERM, SIGHUP: kill the children, then leave.
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut terminate), Ok(mut hangup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup()))
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
        let pids: Vec<u32> = CHILD_PIDS.lock().map(|pids| pids.clone()).unwrap_or_default();
        for pid in pids {
            kill_pids(&process_tree(pid));
        }
        eprintln!("load: interrupted, children killed");
        std::process::exit(130);
    });
    let compares_targets =
        harness.options.scenarios.iter().any(|scenario| Scenario::COMPARING_TARGETS.contains(scenario));
    for target in Target::ALL {
        if !compares_targets {
            break;
        }
        if !harness.options.targets.contains(&target) {
            report.note(&Metric::ALL, target, "not run");
            continue;
        }
        if target != Target::Direct && !harness.binaries.contains_key(&target) {
            println!("- `{}`: not installed", target.name());
            report.note(&Metric::ALL, target, "not installed");
            continue;
        }
        run_rate_scenarios(&mut harness, &mut report, target).await;
        if harness.options.scenarios.contains(&Scenario::IdleTunnels) {
            if target == Target::Direct {
                report.note(&[Metric::RssPerTunnel], target, "n/a");
            } else {
                run_idle_tunnel_memory(&mut harness, &mut report, target).await;
            }
        }
    }
    let features: Vec<Scenario> = harness
        .options
        .scenarios
        .iter()
        .copied()
        .filter(|scenario| !Scenario::COMPARING_TARGETS.contains(scenario))
        .collect();
    if !features.is_empty() && !harness.binaries.contains_key(&Target::Tollgate) {
        println!("- tls, limits, redis, reload, intercept, sse: not run (they need the target tollgate)");
    } else {
        for scenario in features {
            run_feature(&mut harness, &mut report, scenario).await;
        }
    }
    report
}

/// Runs one tollgate-only or interception scenario; a failure becomes a row and a note.
async fn run_feature(harness: &mut Harness, report: &mut Report, scenario: Scenario) {
    let (name, outcome) = match scenario {
        Scenario::Tls => ("tls", measure_tls(harness, report).await),
        Scenario::Limits => ("limits", measure_limits(harness, report).await),
        Scenario::Redis => ("redis", measure_redis(harness, report).await),
        Scenario::Reload => ("reload", measure_reload(harness, report).await),
        Scenario::Intercept => ("intercept", measure_interception(harness, report).await),
        Scenario::Sse => ("sse", measure_streaming(harness, report).await),
        Scenario::Siem => ("siem", crate::siem::measure_siem(harness, report).await),
        Scenario::Gateway => ("gateway", crate::gateway::measure_gateway(harness, report).await),
        Scenario::KeepAlive | Scenario::ConnectGetClose | Scenario::Bulk | Scenario::IdleTunnels => return,
    };
    let Err(error) = outcome else { return };
    if matches!(scenario, Scenario::Intercept | Scenario::Sse) {
        println!("- `{name}`: failed: {error}");
        report.interception_failed(format!("{name}."), format!("{name}: {error}"));
    } else {
        println!("- `tollgate` {name}: failed: {error}");
        report.feature_skipped(format!("{name}."), "failed", Some(format!("{name}: {error}")));
    }
}

/// Scenarios a, b and c against one target (one proxy instance for all of them).
async fn run_rate_scenarios(harness: &mut Harness, report: &mut Report, target: Target) {
    let rate_scenarios: Vec<Scenario> = harness
        .options
        .scenarios
        .iter()
        .copied()
        .filter(|scenario| matches!(scenario, Scenario::KeepAlive | Scenario::ConnectGetClose | Scenario::Bulk))
        .collect();
    if rate_scenarios.is_empty() {
        return;
    }
    let all_metrics = [
        Metric::KeepAliveRate,
        Metric::KeepAliveP50,
        Metric::KeepAliveP99,
        Metric::KeepAlivePacedP50,
        Metric::KeepAlivePacedP99,
        Metric::ConnectRate,
        Metric::BulkThroughput,
    ];
    let proxy = if target == Target::Direct {
        None
    } else {
        match start_proxy(harness, target).await {
            Ok(proxy) => Some(proxy),
            Err(error) => {
                println!("- `{}`: could not start: {error}", target.name());
                report.fail(&all_metrics, target, format!("{}: {error}", target.name()));
                return;
            }
        }
    };
    let address = proxy.as_ref().map_or(harness.origin, |proxy| proxy.address);
    let route = Route::plain(address, proxy.is_some(), harness.origin);
    if let Some(proxy) = &proxy {
        println!("- `{}` started: pid {}, {}", target.name(), proxy.pid(), proxy.address);
    }
    let rounds = harness.options.rounds;
    let duration = Duration::from_secs(harness.options.round_seconds);
    let name = target.name();

    if rate_scenarios.contains(&Scenario::KeepAlive) {
        let (mut rates, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        let (mut paced_p50, mut paced_p99) = (Vec::new(), Vec::new());
        let mut errors = 0;
        let mut connections_opened = 0;
        let mut stale = 0;
        let mut last_error = None;
        for number in 1..=rounds {
            let round =
                crate::scenarios::with_proxy_cpu(proxy.as_ref().map(|p| p.pid()), keep_alive_gets(&route, duration))
                    .await;
            println!("- `{name}` a round {number}/{rounds}: {}", round.describe("req/s"));
            if round.stats.successes > 0 {
                rates.push(round.rate);
                p50.push(round.p50_us);
                p99.push(round.p99_us);
            }
            errors += round.stats.errors;
            connections_opened += round.stats.connections_opened;
            stale += round.stats.stale;
            last_error = round.stats.last_error.or(last_error);
            sleep(ROUND_PAUSE).await;
            // The same connections paced below saturation: the latency a proxy adds, not a queue's.
            let paced = keep_alive_gets_at(&route, duration, Some(KEEP_ALIVE_PACED_RATE)).await;
            println!("- `{name}` a paced round {number}/{rounds}: {}", paced.describe("req/s"));
            if paced.stats.successes > 0 {
                paced_p50.push(paced.p50_us);
                paced_p99.push(paced.p99_us);
            }
            errors += paced.stats.errors;
            last_error = paced.stats.last_error.or(last_error);
            sleep(ROUND_PAUSE).await;
        }
        if rates.is_empty() {
            report.fail(
                &[Metric::KeepAliveRate, Metric::KeepAliveP50, Metric::KeepAliveP99],
                target,
                format!("{name} a: no successful request ({})", last_error.unwrap_or_default()),
            );
        } else {
            println!(
                "  - `{name}` a rounds: req/s [{}], p50 µs [{}], p99 µs [{}]",
                format_rounds(&rates, 0),
                format_rounds(&p50, 0),
                format_rounds(&p99, 0)
            );
            report.set(Metric::KeepAliveRate, target, median(rates));
            report.set(Metric::KeepAliveP50, target, median(p50));
            report.set(Metric::KeepAliveP99, target, median(p99));
            if !paced_p99.is_empty() {
                println!(
                    "  - `{name}` a paced rounds ({KEEP_ALIVE_PACED_RATE} req/s): p50 µs [{}], p99 µs [{}]",
                    format_rounds(&paced_p50, 0),
                    format_rounds(&paced_p99, 0)
                );
                report.set(Metric::KeepAlivePacedP50, target, median(paced_p50));
                report.set(Metric::KeepAlivePacedP99, target, median(paced_p99));
            }
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
        for number in 1..=rounds {
            let round =
                crate::scenarios::with_proxy_cpu(proxy.as_ref().map(|p| p.pid()), connect_get_close(&route, duration))
                    .await;
            println!("- `{name}` b round {number}/{rounds}: {}", round.describe("conn/s"));
            if round.stats.successes > 0 {
                rates.push(round.rate);
            }
            errors += round.stats.errors;
            last_error = round.stats.last_error.or(last_error);
            sleep(ROUND_PAUSE).await;
        }
        if rates.is_empty() {
            report.fail(
                &[Metric::ConnectRate],
                target,
                format!("{name} b: no successful operation ({})", last_error.unwrap_or_default()),
            );
        } else {
            println!("  - `{name}` b rounds: conn/s [{}]", format_rounds(&rates, 0));
            report.set(Metric::ConnectRate, target, median(rates));
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
        for number in 1..=rounds {
            match bulk_download(&route, proxy.as_ref().map(|p| p.pid())).await {
                Ok(round) => {
                    println!("- `{name}` c round {number}/{rounds}: {}", round.describe());
                    rates.push(round.mib_per_second);
                }
                Err(error) => {
                    println!("- `{name}` c round {number}/{rounds}: failed: {error}");
                    last_error = Some(error);
                }
            }
            sleep(ROUND_PAUSE).await;
        }
        if rates.is_empty() {
            report.fail(&[Metric::BulkThroughput], target, format!("{name} c: {}", last_error.unwrap_or_default()));
        } else {
            println!("  - `{name}` c rounds: MiB/s [{}]", format_rounds(&rates, 0));
            report.set(Metric::BulkThroughput, target, median(rates));
            if let Some(error) = last_error {
                report.footnote(format!("{name} c: a round failed: {error}"));
            }
        }
    }
    if let Some(proxy) = &proxy {
        if let Some((kib, processes)) = tree_rss_kib(proxy.pid()) {
            println!("  - `{name}` RSS after a/b/c: {kib} KiB in {processes} process(es)");
        }
    }
    drop(proxy);
}

/// Scenario d against one proxy: a fresh instance per round.
async fn run_idle_tunnel_memory(harness: &mut Harness, report: &mut Report, target: Target) {
    let name = target.name();
    let rounds = harness.options.rounds;
    let mut per_tunnel = Vec::new();
    let mut last_error = None;
    for number in 1..=rounds {
        let proxy = match start_proxy(harness, target).await {
            Ok(proxy) => proxy,
            Err(error) => {
                last_error = Some(error);
                break;
            }
        };
        let route = Route::plain(proxy.address, true, harness.origin);
        match idle_tunnel_memory(&proxy, &route, harness.options.tunnels).await {
            Ok(round) => {
                let mut line = format!(
                    "- `{name}` d round {number}/{rounds}: {:.1} KiB/tunnel ({} tunnels open, RSS {} -> {} KiB, {} process(es)",
                    round.kib_per_tunnel, round.opened, round.before_kib, round.after_kib, round.processes
                );
                if round.errors > 0 {
                    let last = round.last_error.clone().unwrap_or_default();
                    let _ = write!(line, ", {} errors, last: {last}", round.errors);
                }
                line.push(')');
                println!("{line}");
                if round.opened < harness.options.tunnels {
                    report.footnote(format!(
                        "{name} d round {number}: only {} of {} tunnels opened (last error: {})",
                        round.opened,
                        harness.options.tunnels,
                        round.last_error.unwrap_or_default()
                    ));
                }
                per_tunnel.push(round.kib_per_tunnel);
            }
            Err(error) => {
                println!("- `{name}` d round {number}/{rounds}: failed: {error}");
                last_error = Some(error);
            }
        }
        drop(proxy);
        sleep(ROUND_PAUSE).await;
    }
    if per_tunnel.is_empty() {
        report.fail(&[Metric::RssPerTunnel], target, format!("{name} d: {}", last_error.unwrap_or_default()));
    } else {
        println!("  - `{name}` d rounds: KiB/tunnel [{}]", format_rounds(&per_tunnel, 1));
        report.set(Metric::RssPerTunnel, target, median(per_tunnel));
    }
}
