//! Run `reload`: the config rewritten (one allow rule changes) and reloaded with `POST /admin/reload` every second
//! for 10 minutes, under forward, CONNECT and intercepted load: every reload must succeed, no request may fail,
//! and RSS and descriptors (sampled every 5 s) must not grow.

use std::fs;
use std::time::{Duration, Instant};

use crate::gateway::{metric_with, metrics, start, Settings};
use crate::proxies::Harness;
use crate::tollgate_only::reload_once;
use crate::traffic::{self, Kind, Stream};
use crate::verdict::Verdict;
use crate::watch::{judge_flat, sample, settle_to, Watch};

/// Requests of the whole run at most.
const MAX_REQUESTS: u64 = 10_000_000;

/// The allow rule that changes with every reload (its number), after the origin's.
fn with_rule(yaml: &str, number: u64) -> String {
    let origin_rule = crate::proxies::ALLOW_LOOPBACK;
    yaml.replacen(origin_rule, &format!("{origin_rule}    - \"reload-{number}.soak.example\"\n"), 1)
}

/// Runs it for `length`.
pub async fn run(harness: &mut Harness, length: Duration) -> Result<Verdict, String> {
    let quick = length < Duration::from_secs(120);
    let gateway = start(harness, "tollgate-reload", &Settings { stub: true, ..Settings::default() }).await?;
    let messages = gateway.messages.clone().ok_or("no intercepted route")?;
    let original = fs::read_to_string(&gateway.config).map_err(|error| error.to_string())?;
    let before = metrics(gateway.admin).await?;
    let baseline = sample(gateway.pid(), gateway.admin, 0.0).await;
    println!("- baseline: {}", baseline.describe());
    let every = if quick { Duration::from_secs(2) } else { Duration::from_secs(5) };
    let watch = Watch::start(gateway.pid(), gateway.admin, every, true);
    let streams = vec![
        Stream {
            name: "forward keep-alive GET",
            kind: Kind::Forward,
            route: gateway.forward.clone(),
            workers: 8,
            pause: Duration::from_millis(10),
        },
        Stream {
            name: "CONNECT + GET + close",
            kind: Kind::Connect,
            route: gateway.forward.clone(),
            workers: 2,
            pause: Duration::from_millis(20),
        },
        Stream {
            name: "intercepted POST /v1/messages",
            kind: Kind::Messages,
            route: messages,
            workers: 2,
            pause: Duration::from_millis(20),
        },
    ];
    let load = traffic::start(streams, length, MAX_REQUESTS);

    // One reload a second, each with a changed rule; the first after half a second.
    let started = Instant::now();
    let mut reloads = 0u64;
    let mut refused = Vec::new();
    let mut slowest_ms = 0f64;
    for second in 0..length.as_secs() {
        tokio::time::sleep_until((started + Duration::from_millis(500) + Duration::from_secs(second)).into()).await;
        let path = &gateway.config;
        if let Err(error) = fs::write(path, with_rule(&original, second)) {
            refused.push(format!("write {}: {error}", path.display()));
            continue;
        }
        reloads += 1;
        match reload_once(gateway.admin).await {
            Ok(milliseconds) => slowest_ms = slowest_ms.max(milliseconds),
            Err(error) => {
                if refused.len() < 10 {
                    refused.push(error);
                }
            }
        }
    }
    tokio::time::sleep_until((started + length).into()).await;
    let (ok, failed) = load.counts();
    let lines = load.describe();
    load.finish().await;
    let samples = watch.finish().await;
    let after = settle_to(gateway.pid(), gateway.admin, &baseline, 0, Duration::from_secs(15)).await;
    let after_metrics = metrics(gateway.admin).await?;
    let counted =
        |text: &str, result: &str| metric_with(text, "tollgate_config_reloads_total", &format!("result=\"{result}\""));
    let (reloads_ok, reloads_error) = (
        counted(&after_metrics, "ok") - counted(&before, "ok"),
        counted(&after_metrics, "error") - counted(&before, "error"),
    );

    let mut verdict = Verdict::new("reload");
    for line in &lines {
        verdict.note(line.clone());
    }
    verdict.check(
        refused.is_empty() && reloads > 0 && reloads_error == 0.0 && reloads_ok >= reloads as f64,
        format!(
            "{reloads} reloads by POST /admin/reload, each after rewriting the config: tollgate counted {reloads_ok:.0} \
             ok (at least one per POST: a change of the file may reload it too) and {reloads_error:.0} failed; slowest answer {slowest_ms:.0} ms{}",
            if refused.is_empty() { String::new() } else { format!("; refused: {}", refused.join("; ")) }
        ),
    );
    verdict.check(failed == 0 && ok > 0, format!("{ok} requests during the reloads, {failed} failed"));
    let warm_up = if quick { 4.0 } else { 60.0 };
    judge_flat(&mut verdict, &samples, warm_up, 8.0, 32.0);
    verdict.check(
        after.back_to(&baseline, 0),
        format!("after the load, back to the baseline: {} (baseline {})", after.describe(), baseline.describe()),
    );
    Ok(verdict)
}
