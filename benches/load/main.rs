//! Load harness: tollgate against a direct connection, squid and tinyproxy, all on 127.0.0.1.
//!
//! ```text
//! cargo build --release
//! cargo bench --bench load -- [--quick] [--only NAME[,NAME...]] [--rounds N] [--tunnels N]
//! ```
//!
//! `NAME` is a target (`direct`, `tollgate`, `squid`, `tinyproxy`) or a scenario (`a`, `b`, `c`,
//! `d`, or `keepalive`, `connect`, `bulk`, `rss`; tollgate only: `tls`, `limits`, `redis`,
//! `reload`, `siem`; interception: `intercept`, `sse`; the gateway listener: `gateway`). With no target named every target runs; with no
//! scenario named every scenario runs.
//! See `docs/BENCHMARKS.md` for the method.
//!
//! The tollgate-only scenarios compare tollgate with itself (a feature on against off, measured
//! in one run, rounds alternating) and print a second table: `tls` the TLS listener against the
//! plain one and full TLS/mTLS handshakes, `limits` team and org/user limits against none,
//! `redis` limits in Redis against the embedded backend (needs `redis-server`), `reload` a config
//! of 10,000 rules reloaded every second under load, `siem` forward and intercepted requests with two SIEM sinks
//! (in-process Splunk HEC and syslog receivers) against none.
//!
//! The interception scenarios (`intercept`, `sse`) send Messages API requests to an in-process stub
//! (`POST /v1/messages`, JSON or SSE) through tollgate's intercepted tunnels, straight to the stub
//! (plain and TLS) and through mitmproxy (`mitmdump`, if installed), and print a third table:
//! `intercept` non-streamed requests back to back and paced at 500 req/s, and the first handshake
//! to a new host against a cached one; `sse` the time to the first event and each event's delay.
//!
//! The harness (load generator and origin server, one tokio thread) pins itself to core 0; each
//! proxy runs alone, pinned to core 1. The paced rounds run twice: so pinned, and with the harness
//! and the proxy both free to run on either core, as a sidecar beside its client is. Every load
//! loop is bounded by time and by a count, every network operation has a timeout, and proxies are
//! killed when their guard is dropped (also on panic and on Ctrl-C).
//!
//! The modules, in the order a run uses them: `options` (what to run) and `parameters`; `driver`
//! (host set-up, the run, the report); `host` and `processes` (cores, limits, child processes);
//! `servers` (the in-process origin and Messages API stub) and `client` (the client's connection
//! and response reader); `route` (where a request goes, and its bytes); `proxies` (configs and
//! start-up of the proxies, and the run's `Harness`); `scenarios` (the first table's scenarios and
//! the load workers), `rounds` (comparisons in rounds), `tollgate_only`, `interception` and
//! `certificates`; `report`. `support` is code shared with the integration tests
//! (`tests/support/`).

use std::process::ExitCode;

mod certificates;
mod client;
mod driver;
mod gateway;
mod host;
mod interception;
mod options;
mod parameters;
mod processes;
mod proxies;
mod report;
mod rounds;
mod route;
mod scenarios;
mod servers;
mod siem;
mod support;
mod tollgate_only;

fn main() -> ExitCode {
    match options::parse_args() {
        Ok(options) => driver::run(options),
        // The usage, or what is wrong with the arguments.
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
