//! What to run (the command line), and the driver: raises the descriptor limit, starts the origin, runs each
//! selected run in turn and prints the verdicts.

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, ExitCode};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::host::{first_line, raise_open_file_limit, tollgate_binary};
use crate::options::{Options, Target};
use crate::processes::{kill_pids, process_tree, CHILD_PIDS};
use crate::proxies::Harness;
use crate::servers::{serve, Served};
use crate::verdict::Verdict;

/// One endurance run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Run {
    /// 10,000 connections held open with forward traffic flowing.
    Connections,
    /// A reload every second under load.
    Reload,
    /// redis-server killed and restarted under load.
    Redis,
    /// Upstream resets, stalls, slow bodies and TLS failures at a steady rate.
    Faults,
    /// SIGTERM with streamed responses in flight, then kill -9 under load.
    Shutdown,
    /// Forward, CONNECT and intercepted SSE traffic for a long time.
    Mixed,
}

impl Run {
    /// Every run, in the order they run (the long ones last).
    pub const ALL: [Run; 6] = [Run::Connections, Run::Redis, Run::Faults, Run::Shutdown, Run::Reload, Run::Mixed];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Run::Connections => "connections",
            Run::Reload => "reload",
            Run::Redis => "redis",
            Run::Faults => "faults",
            Run::Shutdown => "shutdown",
            Run::Mixed => "mixed",
        }
    }

    /// How long the run's load lasts by default (`--quick`: seconds instead).
    fn default_length(self, quick: bool) -> Duration {
        match (self, quick) {
            (Run::Connections, false) => Duration::from_secs(120),
            (Run::Reload, false) => Duration::from_secs(600),
            (Run::Mixed, false) => Duration::from_secs(1800),
            (Run::Redis | Run::Faults | Run::Shutdown, false) => Duration::from_secs(60),
            (Run::Reload | Run::Mixed | Run::Connections, true) => Duration::from_secs(20),
            (Run::Redis | Run::Faults | Run::Shutdown, true) => Duration::from_secs(10),
        }
    }
}

/// The command line, parsed.
#[derive(Clone)]
pub struct Plan {
    /// `--quick`: seconds instead of minutes, 1,000 connections instead of 10,000.
    pub quick: bool,
    /// `--minutes N`: the length of the timed runs (connections, reload, mixed, and the load of faults).
    pub minutes: Option<u64>,
    /// Named with `--only`, in run order; all when none is named.
    pub runs: Vec<Run>,
}

impl Plan {
    /// How long `run`'s load lasts.
    pub fn length(&self, run: Run) -> Duration {
        match (self.minutes, run) {
            (Some(minutes), Run::Connections | Run::Reload | Run::Mixed | Run::Faults) => {
                Duration::from_secs(minutes * 60)
            }
            _ => run.default_length(self.quick),
        }
    }

    /// Connections the connections run holds.
    pub fn held_connections(&self) -> usize {
        if self.quick {
            1_000
        } else {
            10_000
        }
    }
}

const USAGE: &str = "usage: cargo bench --bench soak -- [--quick] [--only NAME[,NAME...]] [--minutes N]
  NAME: connections, reload, redis, faults, shutdown, mixed
  --minutes N: length of connections, reload, faults and mixed (defaults 2, 10, 1 and 30 minutes)
  --quick: seconds instead of minutes, 1,000 held connections instead of 10,000 (checks the harness)
  env: TOLLGATE_BIN (default target/release/tollgate), REDIS_SERVER_BIN (default redis-server on PATH)";

/// Parses the arguments after `--`; `Err` holds the message to print (the usage for `--help`).
pub fn parse_args() -> Result<Plan, String> {
    let mut plan = Plan { quick: false, minutes: None, runs: Vec::new() };
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
            "--quick" => plan.quick = true,
            "--only" => {
                for name in value("--only")?.split(',').map(str::trim).filter(|name| !name.is_empty()) {
                    let name = name.to_ascii_lowercase();
                    let run = Run::ALL
                        .into_iter()
                        .find(|run| run.name() == name)
                        .ok_or_else(|| format!("--only: unknown run {name:?}\n{USAGE}"))?;
                    plan.runs.push(run);
                }
            }
            "--minutes" => {
                let minutes: u64 = value("--minutes")?.parse().map_err(|_| "--minutes: not a number".to_string())?;
                if !(1..=600).contains(&minutes) {
                    return Err("--minutes must be 1..=600".into());
                }
                plan.minutes = Some(minutes);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            // `cargo bench` passes `--bench` to harness = false targets.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if plan.runs.is_empty() {
        plan.runs = Run::ALL.to_vec();
    }
    plan.runs.sort_by_key(|run| Run::ALL.iter().position(|listed| listed == run));
    plan.runs.dedup();
    Ok(plan)
}

/// Runs the plan; the exit code is 1 when a run failed.
pub fn run(plan: Plan) -> ExitCode {
    let binary = tollgate_binary();
    if !binary.is_file() {
        eprintln!(
            "soak: tollgate binary not found at {}\nsoak: run `cargo build --release` first (or set TOLLGATE_BIN)",
            binary.display()
        );
        return ExitCode::from(2);
    }
    let need_open_files = plan.held_connections() as u64 + crate::held::SPARE_DESCRIPTORS;
    let (open_files, open_files_message) = raise_open_file_limit(need_open_files);
    let temp_dir = match tempfile::Builder::new().prefix("tollgate-soak-").tempdir() {
        Ok(temp_dir) => temp_dir,
        Err(error) => {
            eprintln!("soak: cannot create a temp dir: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("soak: cannot build the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    println!("# tollgate soak report\n");
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    println!("- command: `cargo bench --bench soak -- {}`", args.join(" ").trim());
    println!("- date: {date}; commit {commit}; {cores} cores (shared with other work: timings are not the point)");
    println!(
        "- load average at start: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("- tollgate: {} ({})", first_line(&binary, &["--version"]), binary.display());
    println!("- RLIMIT_NOFILE: {open_files_message}");
    println!("- temp dir: {}", temp_dir.path().display());
    println!(
        "- runs: {}\n",
        plan.runs.iter().map(|run| format!("{} ({:?})", run.name(), plan.length(*run))).collect::<Vec<_>>().join(", ")
    );

    let verdicts = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|error| format!("bind the origin: {error}"))?;
        let origin = listener.local_addr().map_err(|error| error.to_string())?;
        tokio::spawn(serve(listener, Served::Origin, None));
        tokio::spawn(kill_children_on_signal());
        let options = Options {
            quick: plan.quick,
            rounds: 1,
            round_seconds: 2,
            tunnels: 0,
            targets: vec![Target::Tollgate],
            scenarios: Vec::new(),
        };
        let mut harness = Harness {
            options,
            origin,
            temp_dir: temp_dir.path().to_path_buf(),
            // The runs look for leaks and failures, not speed: tollgate runs on any core.
            pin_children: false,
            binaries: BTreeMap::from([(Target::Tollgate, binary)]),
            instances: 0,
            basic_user_hash: None,
            stub: None,
        };
        let mut verdicts = Vec::new();
        for run in &plan.runs {
            println!("## {} (origin on {origin})\n", run.name());
            let verdict = run_one(*run, &plan, &mut harness, open_files).await;
            verdict.print();
            verdicts.push(verdict);
        }
        Ok::<_, String>(verdicts)
    });
    // Stop the origin's tasks before the temp dir goes.
    drop(runtime);
    let verdicts = match verdicts {
        Ok(verdicts) => verdicts,
        Err(error) => {
            eprintln!("soak: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("## summary\n");
    for verdict in &verdicts {
        println!("- {}: {}", verdict.name, if verdict.passed() { "PASS" } else { "FAIL" });
    }
    if verdicts.iter().all(Verdict::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One run; a run that could not even start is a failed verdict naming why.
async fn run_one(run: Run, plan: &Plan, harness: &mut Harness, open_files: u64) -> Verdict {
    let length = plan.length(run);
    let outcome = match run {
        Run::Connections => crate::held::run(harness, length, plan.held_connections(), open_files).await,
        Run::Reload => crate::reload::run(harness, length).await,
        Run::Redis => crate::redis_restart::run(harness, length).await,
        Run::Faults => crate::faults::run(harness, length).await,
        Run::Shutdown => crate::shutdown::run(harness, length).await,
        Run::Mixed => crate::mixed::run(harness, length).await,
    };
    outcome.unwrap_or_else(|error| {
        let mut verdict = Verdict::new(run.name());
        verdict.check(false, format!("the run could not complete: {error}"));
        verdict
    })
}

/// Ctrl-C, SIGTERM, SIGHUP: kill the children, then leave.
async fn kill_children_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut hangup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
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
    eprintln!("soak: interrupted; children killed");
    std::process::exit(130);
}
