//! Run `redis`: tollgate with its limits and spend in Redis (`state.backend: redis`, `on_error: deny`), under
//! forward and intercepted load, while redis-server (append-only file, fsync always, so its kill loses nothing) is
//! killed with SIGKILL and started again on the same port and files. While it is down every request must be
//! refused with 503 and the error contract; after it is back requests must pass again within seconds; and once the
//! load stops no concurrency slot may be left taken (`tollgate:slots:*`) and the org's spend counter must equal
//! what the audit records billed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::time::{sleep, timeout};

use crate::gateway::{audit_records, billed_micro_usd, start, Gateway, Settings};
use crate::host::{free_port, which};
use crate::parameters::{IO_TIMEOUT, SMALL_READ_BUFFER};
use crate::proxies::Harness;
use crate::route::Route;
use crate::tollgate_only::start_redis_in;
use crate::traffic::{self, check_expected, describe, read_response, Expect, Kind, Stream};
use crate::verdict::Verdict;

/// redis-server persisting every write before answering, so a SIGKILL loses nothing.
const PERSISTENT: [&str; 6] = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"];
/// Limits far above what the run reaches: they are there so every request takes a rate token and a slot.
const LIMITS: &str =
    "limits:\n  org: {rpm: 10000000, concurrent: 100000}\n  user: {rpm: 10000000, concurrent: 100000}\n";
/// Requests of the whole run at most.
const MAX_REQUESTS: u64 = 5_000_000;
/// After redis-server is back, requests must pass within this time.
const RECOVER_WITHIN: Duration = Duration::from_secs(10);

/// Runs it; `length` is the whole run (a third before the kill; the outage at most 10 s).
pub async fn run(harness: &mut Harness, length: Duration) -> Result<Verdict, String> {
    let redis_server = std::env::var_os("REDIS_SERVER_BIN")
        .map(Into::into)
        .or_else(|| which("redis-server"))
        .ok_or("redis-server is not installed (apt-get install redis-server)")?;
    let redis_cli = which("redis-cli").ok_or("redis-cli is not installed")?;
    let redis_dir = harness.instance_dir("redis")?;
    let port = free_port()?;
    let redis = start_redis_in(harness, &redis_server, &redis_dir, port, &PERSISTENT).await?;
    let settings = Settings {
        stub: true,
        state: format!("backend: redis, redis_url: \"redis://127.0.0.1:{port}\", on_error: deny"),
        extra: LIMITS.into(),
        ..Settings::default()
    };
    let gateway = start(harness, "tollgate-redis", &settings).await?;
    let messages = gateway.messages.clone().ok_or("no intercepted route")?;
    let before = length / 3;
    let outage = (length / 5).min(Duration::from_secs(10));
    let after = length.saturating_sub(before + outage);

    let streams = vec![
        Stream {
            name: "forward keep-alive GET",
            kind: Kind::Forward,
            route: gateway.forward.clone(),
            workers: 4,
            pause: Duration::from_millis(5),
        },
        Stream {
            name: "intercepted POST /v1/messages",
            kind: Kind::Messages,
            route: messages.clone(),
            workers: 2,
            pause: Duration::from_millis(10),
        },
        Stream {
            name: "intercepted SSE",
            kind: Kind::Sse,
            route: messages.clone(),
            workers: 2,
            pause: Duration::from_millis(20),
        },
    ];
    let load = traffic::start(streams, length + Duration::from_secs(60), MAX_REQUESTS);
    sleep(before).await;
    let (ok_before, failed_before) = load.counts();

    // The outage.
    drop(redis);
    let killed = Instant::now();
    println!("- redis-server killed (SIGKILL) after {before:?}: {ok_before} ok, {failed_before} failed so far");
    let mut down_probes = Vec::new();
    sleep(Duration::from_millis(500)).await;
    while killed.elapsed() < outage {
        down_probes.push(probe(&gateway, &messages, &[503]).await);
        sleep(Duration::from_millis(250)).await;
    }
    let redis = start_redis_in(harness, &redis_server, &redis_dir, port, &PERSISTENT).await?;
    let restarted = Instant::now();
    let mut recovered = None;
    while restarted.elapsed() < RECOVER_WITHIN * 3 {
        if probe(&gateway, &messages, &[200]).await.is_ok() {
            recovered = Some(restarted.elapsed());
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    println!(
        "- redis-server started again after {:.1} s down; requests pass again {}",
        killed.elapsed().as_secs_f64() - restarted.elapsed().as_secs_f64(),
        recovered.map_or("never (within 30 s)".into(), |after| format!("{:.2} s after", after.as_secs_f64()))
    );
    sleep(after).await;
    let lines = load.describe();
    let reasons: Vec<(String, u64)> = load.tallies.iter().flat_map(|(_, tally)| tally.reasons()).collect();
    let (ok, failed) = load.counts();
    load.finish().await;
    // Releases and settlements may trail the last response a little.
    sleep(Duration::from_secs(2)).await;

    let mut verdict = Verdict::new("redis");
    for line in lines {
        verdict.note(line);
    }
    let refused_ok = down_probes.iter().filter(|outcome| outcome.is_ok()).count();
    let first_wrong = down_probes.iter().find_map(|outcome| outcome.as_ref().err().cloned());
    verdict.check(
        !down_probes.is_empty() && refused_ok == down_probes.len(),
        format!(
            "while redis-server was down ({:.1} s): {refused_ok} of {} probes (a forward GET and an intercepted \
             POST /v1/messages each) refused with 503 and the error contract{}",
            outage.as_secs_f64(),
            down_probes.len(),
            first_wrong.map_or(String::new(), |wrong| format!("; first other answer: {wrong}"))
        ),
    );
    verdict.check(
        recovered.is_some_and(|after| after <= RECOVER_WITHIN),
        format!(
            "requests pass again {} after redis-server is back (bound {RECOVER_WITHIN:?})",
            recovered.map_or("never".into(), |after| format!("{:.2} s", after.as_secs_f64()))
        ),
    );
    let other: Vec<String> = reasons
        .iter()
        .filter(|(reason, _)| !reason.starts_with("status 503"))
        .map(|(reason, count)| format!("{count}× {reason}"))
        .collect();
    verdict.check(
        other.is_empty(),
        format!(
            "{ok} requests of the load passed, {failed} failed, all of them with 503 (the outage){}",
            if other.is_empty() { String::new() } else { format!(" — but also: {}", other.join("; ")) }
        ),
    );

    // What Redis holds now.
    // Each `tollgate:slots:SCOPE` is a hash: one field per replica, the slots it holds.
    let slots = redis_values(&redis_cli, port, "tollgate:slots:*")?;
    let taken: i64 = slots.iter().map(|(_, value)| value).sum();
    verdict.check(
        taken == 0,
        format!(
            "concurrency slots taken after the load: {taken} ({})",
            if slots.is_empty() {
                "no tollgate:slots:* key left".to_string()
            } else {
                slots.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(", ")
            }
        ),
    );
    let spend = redis_values(&redis_cli, port, "tollgate:spend:org:month:*")?;
    let counted: i64 = spend.iter().map(|(_, value)| value).sum();
    let (records, unreadable) = audit_records(&gateway.audit_path())?;
    let (billed, metered) = billed_micro_usd(&records);
    verdict.check(
        counted == billed && unreadable == 0,
        format!(
            "org spend in Redis {counted} µ$ against {billed} µ$ billed by {metered} audit records with a cost \
             (difference {:+} µ$; {} audit records{})",
            counted - billed,
            records.len(),
            if unreadable > 0 { format!(", {unreadable} unreadable lines") } else { String::new() }
        ),
    );
    drop(redis);
    Ok(verdict)
}

/// One forward GET and one intercepted `POST /v1/messages`, each on a new connection: both answered with one of
/// `statuses` (and, for errors, the error contract); `Err` says what came instead.
async fn probe(gateway: &Gateway, messages: &Route, statuses: &[u16]) -> Result<(), String> {
    let forward = Expect { statuses: statuses.to_vec(), anthropic: false };
    let model = Expect { statuses: statuses.to_vec(), anthropic: true };
    let get = one_request(&gateway.forward, &gateway.forward.keep_alive_get(), false).await;
    let post = one_request(messages, &messages.messages_request(false), true).await;
    let checked = |outcome: Result<(crate::client::Head, Vec<u8>), String>, expect: &Expect| {
        outcome.and_then(|(head, body)| check_expected(&head, &body, expect))
    };
    checked(get, &forward).map_err(|error| format!("forward GET: {error}"))?;
    checked(post, &model).map_err(|error| format!("intercepted POST: {error}"))
}

/// `request` on a new connection (through the tunnel when `tunnel`).
async fn one_request(route: &Route, request: &[u8], tunnel: bool) -> Result<(crate::client::Head, Vec<u8>), String> {
    let outcome = timeout(IO_TIMEOUT, async {
        let mut connection =
            if tunnel { route.tunnel(SMALL_READ_BUFFER).await? } else { route.open(SMALL_READ_BUFFER).await? };
        connection.send(request).await?;
        read_response(&mut connection).await
    })
    .await;
    match outcome {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(describe(&error)),
        Err(_) => Err("timeout".into()),
    }
}

/// The integer values of the keys matching `pattern` (`redis-cli --scan`, then `GET` each).
fn redis_values(redis_cli: &Path, port: u16, pattern: &str) -> Result<Vec<(String, i64)>, String> {
    let cli = |args: &[&str]| {
        Command::new(redis_cli)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .map_err(|error| format!("redis-cli: {error}"))
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let keys = cli(&["--scan", "--pattern", pattern])?;
    let mut values = Vec::new();
    for key in keys.lines().map(str::trim).filter(|key| !key.is_empty()).take(10_000) {
        // A counter, or a hash of counters (the slots per replica): its fields summed.
        let value = if cli(&["TYPE", key])?.trim() == "hash" {
            cli(&["HVALS", key])?.lines().filter_map(|value| value.trim().parse::<i64>().ok()).sum()
        } else {
            cli(&["GET", key])?.trim().parse().unwrap_or(0)
        };
        values.push((key.to_string(), value));
    }
    Ok(values)
}
