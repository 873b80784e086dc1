//! Scenario siem (tollgate only): what delivering the audit trail to two SIEM sinks costs the request path, in
//! paired rounds against the same tollgate without them. The sinks are in-process receivers on loopback (a Splunk
//! HEC endpoint and a syslog TCP receiver, from `tests/support/siem.rs`, counting only); each tollgate with SIEM
//! has both configured, each with its own spool. Forward: scenario a's keep-alive GETs; intercepted: non-streamed
//! Messages API requests over keep-alive tunnels, as in scenario intercept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::interception::{messages_stub, start_tollgate_interception};
use crate::parameters::{INTERCEPT_TUNNELS, KEEP_ALIVE_CONNECTIONS, KEEP_ALIVE_MAX_REQUESTS};
use crate::proxies::{listener_item, loopback, start_tollgate, tollgate_yaml, Harness, ALLOW_LOOPBACK};
use crate::report::Report;
use crate::rounds::{median_of, paired, Series};
use crate::route::Route;
use crate::scenarios::{keep_alive_gets, open_ahead, run_keep_alive_load, with_proxy_cpu, KeepAliveLoad};
use crate::servers::stub_message;
use crate::support::siem::{HttpReceiver, Retain, Shape, SyslogReceiver};

/// The HEC token the receiver expects.
const HEC_TOKEN: &str = "bench-hec-token";

/// The two receivers every tollgate with SIEM delivers to.
pub struct SiemSinks {
    hec: HttpReceiver,
    syslog: SyslogReceiver,
}

impl SiemSinks {
    /// Starts both receivers on the harness's thread.
    pub async fn start() -> Result<Self, String> {
        let any = "127.0.0.1:0".parse().expect("an address");
        let hec = HttpReceiver::start(any, Shape::Hec { token: HEC_TOKEN.into() }, None, None, Retain::Count)
            .await
            .map_err(|error| format!("HEC receiver: {error}"))?;
        let syslog = SyslogReceiver::start(any, None, Retain::Count)
            .await
            .map_err(|error| format!("syslog receiver: {error}"))?;
        let gzip = if hec_gzip() { "gzip" } else { "no gzip: TOLLGATE_SIEM_GZIP=false" };
        println!("- SIEM receivers: HEC {} ({gzip}, batches of 500), syslog TCP {}", hec.address, syslog.address);
        Ok(Self { hec, syslog })
    }

    /// `yaml` (from `tollgate_yaml`) with both sinks under `audit`, their spools in `dir`.
    pub fn configure(&self, yaml: &str, dir: &Path) -> Result<String, String> {
        let audit = format!("audit: {{file: {{path: \"{}/audit.jsonl\"}}}}", dir.display());
        if !yaml.contains(&audit) {
            return Err("the config has no audit file to add SIEM sinks to".into());
        }
        let directory = dir.display();
        let gzip = hec_gzip();
        let sinks = format!(
            "audit:\n  file: {{path: \"{directory}/audit.jsonl\"}}\n  siem:\n    \
             - {{type: splunk_hec, url: \"http://{}\", token: {HEC_TOKEN}, gzip: {gzip}, \
             spool: {{dir: \"{directory}/spool-hec\"}}}}\n    \
             - {{type: syslog, url: \"tcp://{}\", spool: {{dir: \"{directory}/spool-syslog\"}}}}",
            self.hec.address, self.syslog.address
        );
        Ok(yaml.replace(&audit, &sinks))
    }

    /// Records received so far: HEC, syslog.
    fn received(&self) -> (usize, usize) {
        (self.hec.count(), self.syslog.count())
    }
}

/// Whether the HEC sink gzips its batches: yes (the default) unless `TOLLGATE_SIEM_GZIP=false`, which measures
/// what the compression costs in the rounds.
fn hec_gzip() -> bool {
    std::env::var("TOLLGATE_SIEM_GZIP").map_or(true, |value| value != "false")
}

/// Scenario siem: forward and intercepted req/s without SIEM sinks against with two, in paired rounds.
pub async fn measure_siem(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let sinks = SiemSinks::start().await?;
    let (rounds, duration) = (harness.options.rounds, Duration::from_secs(harness.options.round_seconds));

    // Forward: two tollgates, one with the sinks.
    let mut forward = Vec::new();
    for with_siem in [false, true] {
        let dir = harness.instance_dir(if with_siem { "tollgate-siem" } else { "tollgate-no-siem" })?;
        let (proxy_port, admin_port) = (crate::host::free_port()?, crate::host::free_port()?);
        let admin = format!("{{bind: \"127.0.0.1:{admin_port}\"}}");
        let yaml =
            tollgate_yaml(&dir, &listener_item("proxy", proxy_port), &admin, "{anonymous: bench}", ALLOW_LOOPBACK, "");
        let yaml = if with_siem { sinks.configure(&yaml, &dir)? } else { yaml };
        let route = Route::plain(loopback(proxy_port), true, harness.origin);
        let proxy = start_tollgate(harness, &dir, &yaml, &route).await?;
        forward.push((proxy, route));
    }
    println!(
        "- `tollgate` siem forward started: without SIEM pid {}, with two SIEM sinks pid {} (both on core 1, used one \
         at a time)",
        forward[0].0.pid(),
        forward[1].0.pid()
    );
    let pids = [forward[0].0.pid(), forward[1].0.pid()];
    let series = paired(rounds, "siem forward", ["no SIEM", "two SIEM sinks"], "req/s", |with_siem| {
        let index = usize::from(with_siem);
        with_proxy_cpu(Some(pids[index]), keep_alive_gets(&forward[index].1, duration))
    })
    .await;
    rows(
        report,
        format!("siem. keep-alive GET, {KEEP_ALIVE_CONNECTIONS} conns: two SIEM sinks (HEC + syslog) vs none (req/s)"),
        &series,
    );
    drop(forward);

    // Intercepted: the Messages API stub through two intercepting tollgates, one with the sinks.
    let stub = messages_stub(harness).await?;
    let without = start_tollgate_interception(harness, stub.plain, false, None).await?;
    let with = start_tollgate_interception(harness, stub.plain, false, Some(&sinks)).await?;
    println!(
        "- `tollgate` siem intercept started: without SIEM pid {}, with two SIEM sinks pid {}",
        without.0.pid(),
        with.0.pid()
    );
    let sides = [(without.0.pid(), without.1.clone()), (with.0.pid(), with.1.clone())];
    let series = paired(rounds, "siem intercept", ["no SIEM", "two SIEM sinks"], "req/s", |with_siem| {
        let (pid, route) = &sides[usize::from(with_siem)];
        let (pid, route) = (*pid, route.clone());
        async move {
            let opened_ahead = open_ahead(&route, INTERCEPT_TUNNELS, true).await;
            let load = KeepAliveLoad {
                connections: INTERCEPT_TUNNELS,
                request: Arc::new(route.messages_request(false)),
                body_length: stub_message().len() as u64,
                tunnel: true,
                opened_ahead,
                rate: None,
                max_requests: KEEP_ALIVE_MAX_REQUESTS,
            };
            with_proxy_cpu(Some(pid), run_keep_alive_load(&route, duration, load)).await
        }
    })
    .await;
    rows(
        report,
        format!(
            "siem. `POST /v1/messages` intercepted, {INTERCEPT_TUNNELS} keep-alive tunnels: two SIEM sinks vs none (req/s)"
        ),
        &series,
    );
    let (hec, syslog) = sinks.received();
    println!("  - SIEM records received during the scenario: HEC {hec}, syslog {syslog}");
    drop(with);
    drop(without);
    Ok(())
}

/// The rate, latency and CPU rows of one comparison.
fn rows(report: &mut Report, label: String, series: &[Series; 2]) {
    let [baseline, measured] = series;
    report.feature(label, median_of(&baseline.rate), median_of(&measured.rate), 0, "≥ 0.95");
    report.feature("siem. latency p99 (µs)".into(), median_of(&baseline.p99), median_of(&measured.p99), 0, "");
    report.feature(
        "siem. proxy CPU per request, all threads (µs; lower is better)".into(),
        median_of(&baseline.cpu),
        median_of(&measured.cpu),
        2,
        "",
    );
    for (side, series) in ["no SIEM", "two SIEM sinks"].iter().zip(series) {
        if series.errors > 0 {
            report.footnote(format!(
                "siem {side}: {} failed requests (last: {})",
                series.errors,
                series.last_error.clone().unwrap_or_default()
            ));
        }
    }
}
