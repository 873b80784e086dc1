//! Run `mixed`: keep-alive GETs through the forward proxy, CONNECT + GET + close, and streamed Messages API
//! responses through intercepted tunnels, paced, for a long time (30 minutes by default); tollgate's RSS and
//! descriptors sampled every 10 s must stay flat, no request may fail, and after the load everything it opened
//! must close.

use std::time::Duration;

use crate::gateway::{start, Settings};
use crate::proxies::Harness;
use crate::traffic::{self, Kind, Stream};
use crate::verdict::Verdict;
use crate::watch::{judge_flat, sample, settle_to, Watch};

/// Requests of the whole run at most (about 700 a second are sent).
const MAX_REQUESTS: u64 = 20_000_000;

/// Runs it for `length`.
pub async fn run(harness: &mut Harness, length: Duration) -> Result<Verdict, String> {
    let quick = length < Duration::from_secs(120);
    let gateway = start(harness, "tollgate-mixed", &Settings { stub: true, ..Settings::default() }).await?;
    let messages = gateway.messages.clone().ok_or("no intercepted route")?;
    let baseline = sample(gateway.pid(), gateway.admin, 0.0).await;
    println!("- baseline: {}", baseline.describe());
    let every = if quick { Duration::from_secs(2) } else { Duration::from_secs(10) };
    let watch = Watch::start(gateway.pid(), gateway.admin, every, true);
    let streams = vec![
        Stream {
            name: "forward keep-alive GET",
            kind: Kind::Forward,
            route: gateway.forward.clone(),
            workers: 8,
            pause: Duration::from_millis(20),
        },
        Stream {
            name: "CONNECT + GET + close",
            kind: Kind::Connect,
            route: gateway.forward.clone(),
            workers: 4,
            pause: Duration::from_millis(20),
        },
        Stream {
            name: "intercepted SSE",
            kind: Kind::Sse,
            route: messages,
            workers: 4,
            pause: Duration::from_millis(50),
        },
    ];
    let load = traffic::start(streams, length, MAX_REQUESTS);
    tokio::time::sleep(length).await;
    let (ok, failed) = load.counts();
    let lines = load.describe();
    load.finish().await;
    let samples = watch.finish().await;
    let after = settle_to(gateway.pid(), gateway.admin, &baseline, 0, Duration::from_secs(15)).await;

    let mut verdict = Verdict::new("mixed");
    for line in &lines {
        verdict.note(line.clone());
    }
    verdict.check(
        failed == 0 && ok > 0,
        format!("{ok} requests over {:.1} min, {failed} failed", length.as_secs_f64() / 60.0),
    );
    let warm_up = if quick { 4.0 } else { 120.0 };
    judge_flat(&mut verdict, &samples, warm_up, 16.0, 64.0);
    verdict.check(
        after.back_to(&baseline, 0),
        format!("after the load, back to the baseline: {} (baseline {})", after.describe(), baseline.describe()),
    );
    verdict.note(format!("{} samples, every {every:?}", samples.len()));
    Ok(verdict)
}
