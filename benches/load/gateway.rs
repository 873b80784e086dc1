//! Scenario gateway: non-streamed `POST /v1/messages` sent straight to tollgate's gateway listener (origin-form,
//! plain HTTP, no tunnel), routed to the Messages API stub; against the stub direct, optionally an earlier tollgate
//! (`TOLLGATE_BEFORE_BIN`, same config) and LiteLLM's proxy (`LITELLM_BIN`, one worker, the same stub), all in
//! rounds that take each side in turn. Back to back over `KEEP_ALIVE_CONNECTIONS` connections (req/s, latency,
//! the proxy's CPU per request), then paced at `GATEWAY_PACED_RATES` over `PACED_TUNNELS` connections (the
//! latency each side adds to direct's, taken over all rounds' requests pooled).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::client::exchange;
use crate::host::free_port;
use crate::interception::messages_stub;
use crate::options::Target;
use crate::parameters::{
    API_HOST, GATEWAY_PACED_RATES, IO_TIMEOUT, KEEP_ALIVE_CONNECTIONS, KEEP_ALIVE_MAX_REQUESTS, MODEL, PACED_TUNNELS,
    SMALL_READ_BUFFER,
};
use crate::processes::Proxy;
use crate::proxies::{loopback, spawn, spawn_within, tollgate_yaml, Harness, ALLOW_LOOPBACK};
use crate::report::{Cell, Report};
use crate::rounds::{interleaved, median_of, Series};
use crate::route::Route;
use crate::scenarios::{open_ahead, percentile_us, run_keep_alive_load, with_proxy_cpu, KeepAliveLoad};
use crate::tollgate_only::{basic_user_hash, BASIC_PASSWORD, BASIC_USER};

/// LiteLLM's start-up (Python imports) takes seconds, a minute and more on a busy machine: connects, 100 ms apart.
const LITELLM_READY_ATTEMPTS: u32 = 1800;

/// How long a paced round at `rate` lasts: at least 150 requests, so its p99 is not its maximum.
fn paced_duration(rate: u32, round: Duration) -> Duration {
    round.max(Duration::from_secs_f64(150.0 / f64::from(rate.max(1))))
}

/// One side of the comparison: where its requests go, its process, and the length of its `200`'s body.
struct Side {
    name: &'static str,
    route: Route,
    proxy: Option<Proxy>,
    body_length: u64,
}

/// Scenario gateway: the sides in turn, back to back and paced.
pub async fn measure_gateway(harness: &mut Harness, report: &mut Report) -> Result<(), String> {
    let stub = messages_stub(harness).await?;
    let authority = format!("{API_HOST}:443");
    let direct = Route::messages_api(stub.plain, false, harness.origin, &authority, None);
    let mut sides = vec![Side { name: "direct", body_length: smoke(&direct).await?, route: direct, proxy: None }];
    let mut missing = Vec::new();
    for (target, name) in [(Target::Tollgate, "tollgate"), (Target::TollgateBefore, "tollgate before")] {
        if !harness.binaries.contains_key(&target) {
            continue;
        }
        let (proxy, route) = start_gateway(harness, target, stub.plain).await?;
        let body_length = smoke(&route).await?;
        println!("- `gateway` {name} started: pid {}, gateway listener {}", proxy.pid(), route.address);
        sides.push(Side { name, route, proxy: Some(proxy), body_length });
    }
    match start_litellm(harness, stub.plain).await {
        Ok((proxy, route)) => {
            let body_length = smoke(&route).await?;
            println!("- `gateway` LiteLLM started: pid {}, {} (one worker)", proxy.pid(), route.address);
            sides.push(Side { name: "LiteLLM", route, proxy: Some(proxy), body_length });
        }
        Err(error) => {
            println!("- `gateway` LiteLLM: {error}");
            missing.push(format!("LiteLLM: {error}"));
        }
    }
    let names: Vec<&str> = sides.iter().map(|side| side.name).collect();
    let (rounds, duration) = (harness.options.rounds, Duration::from_secs(harness.options.round_seconds));
    let round = |index: usize, connections: usize, rate: Option<u32>| {
        let side = &sides[index];
        let pid = side.proxy.as_ref().map(Proxy::pid);
        let duration = rate.map_or(duration, |rate| paced_duration(rate, duration));
        async move {
            let opened_ahead = open_ahead(&side.route, connections, true).await;
            let load = KeepAliveLoad {
                connections,
                request: Arc::new(side.route.messages_request(false)),
                body_length: side.body_length,
                tunnel: true,
                opened_ahead,
                rate,
                max_requests: KEEP_ALIVE_MAX_REQUESTS,
            };
            with_proxy_cpu(pid, run_keep_alive_load(&side.route, duration, load)).await
        }
    };
    let back_to_back =
        interleaved(rounds, "`gateway`", &names, "req/s", |side| round(side, KEEP_ALIVE_CONNECTIONS, None)).await;
    let load = format!("{KEEP_ALIVE_CONNECTIONS} keep-alive connections, back to back");
    let cells = |series: &[Series], value: fn(&Series) -> &Vec<f64>| -> Vec<Cell> {
        series.iter().map(|series| median_of(value(series)).map_or(Cell::Note("n/a".into()), Cell::Value)).collect()
    };
    report.gateway(&names, format!("gateway. {load} (req/s)"), cells(&back_to_back, |s| &s.rate), 0);
    report.gateway(&names, "gateway. latency p50 (µs)".into(), cells(&back_to_back, |s| &s.p50), 0);
    report.gateway(&names, "gateway. latency p99 (µs)".into(), cells(&back_to_back, |s| &s.p99), 0);
    report.gateway(
        &names,
        "gateway. proxy CPU per request, user + kernel, all threads (µs)".into(),
        cells(&back_to_back, |s| &s.cpu),
        1,
    );
    for rate in GATEWAY_PACED_RATES {
        let what = format!("`gateway` paced {rate} req/s");
        // Every round's latencies, per side: the added p50/p99 are taken over all rounds' requests together, so
        // that at 15 req/s (151 requests a round) the p99 is not one round's second-slowest request.
        let pooled = RefCell::new(vec![Vec::new(); names.len()]);
        let paced = interleaved(rounds, &what, &names, "req/s", |side| {
            let (pooled, run) = (&pooled, round(side, PACED_TUNNELS, Some(rate)));
            async move {
                let result = run.await;
                pooled.borrow_mut()[side].extend_from_slice(&result.stats.latencies_ns);
                result
            }
        })
        .await;
        let pooled: Vec<Vec<u64>> = pooled
            .into_inner()
            .into_iter()
            .map(|mut latencies| {
                latencies.sort_unstable();
                latencies
            })
            .collect();
        for (name, latencies) in names.iter().zip(&pooled) {
            println!(
                "  - {what}, {name}, all rounds' {} requests pooled: p50 µs {:.0}, p99 µs {:.0}, max µs {:.0}",
                latencies.len(),
                percentile_us(latencies, 0.50),
                percentile_us(latencies, 0.99),
                percentile_us(latencies, 1.0)
            );
        }
        let paced_load = format!("{rate} req/s over {PACED_TUNNELS} connections");
        report.gateway(&names, format!("gateway paced. {paced_load}: latency p50 (µs)"), cells(&paced, |s| &s.p50), 0);
        report.gateway(&names, format!("gateway paced. {paced_load}: latency p99 (µs)"), cells(&paced, |s| &s.p99), 0);
        for (name, quantile) in [("p50", 0.50), ("p99", 0.99)] {
            let direct = percentile_us(&pooled[0], quantile);
            let added = pooled
                .iter()
                .enumerate()
                .map(|(index, latencies)| match (index, percentile_us(latencies, quantile)) {
                    (0, _) => Cell::Note("n/a".into()),
                    (_, value) if value.is_finite() && direct.is_finite() => Cell::Value(value - direct),
                    _ => Cell::Note("failed".into()),
                })
                .collect();
            let row =
                format!("gateway paced. {paced_load}: added {name} over direct, all rounds' requests pooled (µs)");
            report.gateway(&names, row, added, 0);
        }
        report.gateway(
            &names,
            format!("gateway paced. {paced_load}: proxy CPU per request (µs)"),
            cells(&paced, |s| &s.cpu),
            1,
        );
        for (side, series) in names.iter().zip(&paced) {
            if series.errors > 0 {
                report.footnote(format!(
                    "gateway paced {rate} {side}: {} failed requests (last: {})",
                    series.errors,
                    series.last_error.clone().unwrap_or_default()
                ));
            }
        }
    }
    for (side, series) in names.iter().zip(&back_to_back) {
        if series.errors > 0 {
            report.footnote(format!(
                "gateway {side}: {} failed requests (last: {})",
                series.errors,
                series.last_error.clone().unwrap_or_default()
            ));
        }
    }
    for message in missing {
        report.footnote(format!("gateway: {message}"));
    }
    drop(sides);
    Ok(())
}

/// One request by `route`; the body length of its `200`.
async fn smoke(route: &Route) -> Result<u64, String> {
    let outcome = tokio::time::timeout(IO_TIMEOUT, async {
        let mut connection = route.tunnel(SMALL_READ_BUFFER).await?;
        exchange(&mut connection, &route.messages_request(false)).await
    })
    .await;
    match outcome {
        Ok(Ok(response)) if response.status == 200 && response.body_length > 0 => Ok(response.body_length),
        Ok(Ok(response)) => Err(format!("POST /v1/messages to {}: status {}", route.address, response.status)),
        Ok(Err(error)) => Err(format!("POST /v1/messages to {}: {error}", route.address)),
        Err(_) => Err(format!("POST /v1/messages to {}: timeout", route.address)),
    }
}

/// tollgate (`target`: this build or `TOLLGATE_BEFORE_BIN`) with a plain gateway listener routed to the stub, as
/// `config/examples/gateway.yaml` sets one up: a user whose `x-api-key` is `USER:PASSWORD`, in a team with a model
/// list and daily budgets, an organisation budget (every request reserved and settled), DLP blocking with the
/// built-in detectors, the default audit file (`on_failure: block`) and default pricing.
async fn start_gateway(
    harness: &mut Harness,
    target: Target,
    stub: std::net::SocketAddr,
) -> Result<(Proxy, Route), String> {
    let hash = basic_user_hash(harness)?;
    let dir = harness.instance_dir(if target == Target::Tollgate { "tollgate-gateway" } else { "tollgate-before" })?;
    let (proxy_port, gateway_port, admin_port) = (free_port()?, free_port()?, free_port()?);
    let listeners = format!(
        "  - {{name: proxy, bind: \"127.0.0.1:{proxy_port}\"}}\n  \
         - {{name: gateway, bind: \"127.0.0.1:{gateway_port}\", mode: gateway}}\n"
    );
    let extra = format!(
        "upstreams: {{stub: {{url: \"http://{stub}\"}}}}\n\
         routing: [{{when: {{listener: gateway}}, to: stub}}]\n\
         teams: {{bench: {{models: [\"claude-sonnet-*\", \"claude-haiku-*\"], \
         budget: {{daily_usd: 1000000, user_daily_usd: 1000000}}}}}}\n\
         budgets: {{org_monthly_usd: 100000000}}\n\
         dlp: {{action: block, detectors: [private_key, aws_access_key, github_token, credit_card, ssn]}}\n\
         state: {{path: \"{}/state\"}}\n",
        dir.display()
    );
    let admin = format!("{{bind: \"127.0.0.1:{admin_port}\"}}");
    let auth =
        format!("{{anonymous: deny, users: [{{name: {BASIC_USER}, password_hash: \"{hash}\", teams: [bench]}}]}}");
    let yaml = tollgate_yaml(&dir, &listeners, &admin, &auth, ALLOW_LOOPBACK, &extra);
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).map_err(|error| format!("write {}: {error}", path.display()))?;
    let args = ["run".to_string(), "-c".to_string(), path.display().to_string()];
    let address = loopback(gateway_port);
    let proxy = spawn(harness, target, &dir, &args, address).await?;
    let route = Route::messages_api(address, false, harness.origin, &format!("{API_HOST}:443"), None)
        .with_api_key(&format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    Ok((proxy, route))
}

/// LiteLLM's proxy (`litellm --num_workers 1`) with one model routed to the stub; its model cost map from the
/// package (no download); the client's `x-api-key` is its master key. Start-up takes seconds: waited for, bounded.
async fn start_litellm(harness: &mut Harness, stub: std::net::SocketAddr) -> Result<(Proxy, Route), String> {
    if !harness.binaries.contains_key(&Target::Litellm) {
        return Err("not installed".into());
    }
    let dir = harness.instance_dir("litellm")?;
    let port = free_port()?;
    let config = format!(
        "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: anthropic/{MODEL}\n      \
         api_base: \"http://{stub}\"\n      api_key: sk-ant-bench\n\
         litellm_settings:\n  drop_params: true\n  telemetry: false\n\
         general_settings:\n  master_key: sk-ant-bench\n"
    );
    let path: PathBuf = dir.join("litellm.yaml");
    std::fs::write(&path, config).map_err(|error| format!("write {}: {error}", path.display()))?;
    let args: Vec<String> = [
        "--config",
        &path.display().to_string(),
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--num_workers",
        "1",
        "--telemetry",
        "False",
    ]
    .map(String::from)
    .to_vec();
    let proxy = spawn_within(harness, Target::Litellm, &dir, &args, loopback(port), LITELLM_READY_ATTEMPTS).await?;
    let route = Route::messages_api(loopback(port), false, harness.origin, &format!("{API_HOST}:443"), None);
    Ok((proxy, route))
}
