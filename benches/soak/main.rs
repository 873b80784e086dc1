//! Endurance runs: tollgate under hours of load, reloads, a Redis restart, upstream faults, SIGTERM and kill -9,
//! all on 127.0.0.1.
//!
//! ```text
//! cargo build --release
//! cargo bench --bench soak -- [--quick] [--only NAME[,NAME...]] [--minutes N]
//! ```
//!
//! `NAME` is a run: `connections` (10,000 connections held with forward traffic), `reload` (a reload every second
//! under load), `redis` (redis-server killed and restarted under load), `faults` (upstream resets, stalls, slow
//! bodies, TLS failures), `shutdown` (SIGTERM with streamed responses in flight, then kill -9 under load), `mixed`
//! (forward, CONNECT and intercepted SSE for 30 minutes). With none named every run runs. `--minutes N` sets the
//! length of the timed runs (reload, mixed, connections); `--quick` runs each for seconds, with fewer connections, to
//! check the harness. Each run prints its samples and a PASS or FAIL verdict with its numbers; the exit code is 1
//! when any run failed. See `docs/RELIABILITY.md`.
//!
//! The harness reuses the load harness's parts (`benches/load/`: the in-process origin and Messages API stub, the
//! client, routes, starting tollgate and redis-server, reading /proc) and adds its own: `plan` (what to run),
//! `gateway` (tollgate's config for a run, its admin endpoints and audit file), `traffic` (bounded load loops that
//! count every status), `watch` (RSS and descriptor samples, and their trend), `verdict`, and one module per run
//! (`held`, `reload`, `redis_restart`, `faults`, `shutdown`, `mixed`). Every loop is bounded by time and by a
//! count, every network operation has a timeout, and child processes are killed when their guard is dropped.

use std::process::ExitCode;

// The load harness's modules, at the crate root where they expect each other. The soak runs use a part of each.
#[allow(dead_code)]
#[path = "../load/certificates.rs"]
mod certificates;
#[allow(dead_code)]
#[path = "../load/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../load/host.rs"]
mod host;
#[allow(dead_code)]
#[path = "../load/interception.rs"]
mod interception;
#[allow(dead_code)]
#[path = "../load/options.rs"]
mod options;
#[allow(dead_code)]
#[path = "../load/parameters.rs"]
mod parameters;
#[allow(dead_code)]
#[path = "../load/processes.rs"]
mod processes;
#[allow(dead_code)]
#[path = "../load/proxies.rs"]
mod proxies;
#[allow(dead_code)]
#[path = "../load/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../load/rounds.rs"]
mod rounds;
#[allow(dead_code)]
#[path = "../load/route.rs"]
mod route;
#[allow(dead_code)]
#[path = "../load/scenarios.rs"]
mod scenarios;
#[allow(dead_code)]
#[path = "../load/servers.rs"]
mod servers;
#[allow(dead_code)]
#[path = "../load/siem.rs"]
mod siem;
#[allow(dead_code)]
#[path = "../load/support.rs"]
mod support;
#[allow(dead_code)]
#[path = "../load/tollgate_only.rs"]
mod tollgate_only;

mod faults;
mod gateway;
mod held;
mod mixed;
mod plan;
mod redis_restart;
mod reload;
mod shutdown;
mod traffic;
mod verdict;
mod watch;

fn main() -> ExitCode {
    match plan::parse_args() {
        Ok(plan) => plan::run(plan),
        // The usage, or what is wrong with the arguments.
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
