//! Run `shutdown`: SIGTERM with streamed Messages API responses in flight, then kill -9 under load.
//!
//! SIGTERM: tollgate (`server.shutdown_grace: 3s`) intercepts `API_HOST`, routed to a stub whose events come
//! `x-soak-gap-ms` apart. Short streams (1 s) must complete within the grace period; long ones (15 s) are cut when
//! it ends, and each must still have its audit record, billed for the usage seen. tollgate must exit within the
//! grace period and a little more.
//!
//! kill -9: the same tollgate started again on the same files, under forward and intercepted load, is killed with
//! SIGKILL and started again; then `tollgate audit verify` must pass on the audit file, and the spend ledger of the
//! embedded state must equal what the audit records billed.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use crate::gateway::{
    audit_records, audit_verify, billed_micro_usd, restart, serve_each, signal, start, wait_exit, Gateway, Settings,
};
use crate::parameters::{API_HOST, MODEL, SMALL_READ_BUFFER, SSE_DELTAS};
use crate::proxies::Harness;
use crate::route::Route;
use crate::servers::{stub_message, SSE_EVENTS};
use crate::support::messages;
use crate::traffic::{self, read_stream, Kind, Stream, Streamed};
use crate::verdict::Verdict;

/// tollgate's grace period in this run.
const GRACE: Duration = Duration::from_secs(3);
/// tollgate may take this much longer than the grace period to exit (cutting, the last audit flush).
const EXIT_SLACK: Duration = Duration::from_secs(2);
/// Streams of each length in flight at SIGTERM, and the gap between their events.
const STREAMS_EACH: usize = 8;
const SHORT_GAP_MS: u64 = 40;
const LONG_GAP_MS: u64 = 600;
/// The header the slow stub reads its gap from, and its gap without it.
const GAP_HEADER: &str = "x-soak-gap-ms";
const DEFAULT_GAP_MS: u64 = 2;

/// Runs it; `length` is the kill -9 part's load (half before the kill, half after).
pub async fn run(harness: &mut Harness, length: Duration) -> Result<Verdict, String> {
    let stub = slow_stub().await?;
    let settings = Settings {
        server: format!("shutdown_grace: {}s", GRACE.as_secs()),
        intercepted: vec![(API_HOST.to_string(), format!("http://{stub}"))],
        ..Settings::default()
    };
    let mut gateway = start(harness, "tollgate-shutdown", &settings).await?;
    let route = gateway.intercepted_route(API_HOST)?;
    let mut verdict = Verdict::new("shutdown");
    sigterm_part(&mut gateway, &route, &mut verdict).await?;
    kill_part(harness, &mut gateway, &route, length, &mut verdict).await?;
    Ok(verdict)
}

/// SIGTERM with `STREAMS_EACH` short and long streams in flight.
async fn sigterm_part(gateway: &mut Gateway, route: &Route, verdict: &mut Verdict) -> Result<(), String> {
    let streamed_request = route.messages_request(true);
    let mut handles = Vec::new();
    for gap in [SHORT_GAP_MS, LONG_GAP_MS] {
        for _ in 0..STREAMS_EACH {
            let (route, request) = (route.clone(), with_gap(&streamed_request, gap));
            handles.push((
                gap,
                tokio::spawn(async move {
                    let mut connection = route.tunnel(SMALL_READ_BUFFER).await?;
                    timeout(Duration::from_secs(60), read_stream(&mut connection, &request))
                        .await
                        .map_err(|_| io::Error::other("stream did not end within 60 s"))?
                }),
            ));
        }
    }
    // Every stream has its head and first events by now.
    sleep(Duration::from_millis(500)).await;
    signal(gateway.pid(), "TERM")?;
    let terminated = Instant::now();
    let exit = wait_exit(&mut gateway.proxy, GRACE + EXIT_SLACK + Duration::from_secs(10)).await;
    let exit_after = terminated.elapsed();
    let mut short: Vec<Streamed> = Vec::new();
    let mut long: Vec<Streamed> = Vec::new();
    let mut broken = Vec::new();
    for (gap, handle) in handles {
        match handle.await {
            Ok(Ok(streamed)) if gap == SHORT_GAP_MS => short.push(streamed),
            Ok(Ok(streamed)) => long.push(streamed),
            Ok(Err(error)) => broken.push(error.to_string()),
            Err(error) => broken.push(error.to_string()),
        }
    }
    let complete =
        |streamed: &Streamed| streamed.head.status == 200 && streamed.stopped && streamed.events == SSE_EVENTS;
    verdict.check(
        exit.is_some_and(|status| status.success()) && exit_after <= GRACE + EXIT_SLACK,
        format!(
            "SIGTERM: tollgate exited {} after {:.2} s (grace period {GRACE:?}, allowed {:?})",
            exit.map_or("not at all".into(), |status| format!("with {status}")),
            exit_after.as_secs_f64(),
            GRACE + EXIT_SLACK
        ),
    );
    verdict.check(
        short.len() == STREAMS_EACH && short.iter().all(complete) && broken.is_empty(),
        format!(
            "SIGTERM: {} of {STREAMS_EACH} streams of ~{:.1} s completed within the grace period{}",
            short.iter().filter(|streamed| complete(streamed)).count(),
            (SSE_EVENTS as u64 * SHORT_GAP_MS) as f64 / 1000.0,
            if broken.is_empty() { String::new() } else { format!("; broken: {}", broken.join("; ")) }
        ),
    );
    let cut_events: Vec<usize> = long.iter().map(|streamed| streamed.events).collect();
    verdict.check(
        long.len() == STREAMS_EACH && long.iter().all(|streamed| !complete(streamed)),
        format!(
            "SIGTERM: {} streams of ~{:.0} s cut when the grace period ended, after {cut_events:?} of {SSE_EVENTS} events",
            long.len(),
            (SSE_EVENTS as u64 * LONG_GAP_MS) as f64 / 1000.0
        ),
    );
    // The audit records of the streams: the file is complete once tollgate has exited.
    let (records, unreadable) = audit_records(&gateway.audit_path())?;
    let streams: Vec<&Value> = records
        .iter()
        .filter(|record| record["path"].as_str().is_some_and(|path| path.starts_with("/v1/messages")))
        .collect();
    let output_tokens = |record: &Value| record["usage"]["output_tokens"].as_u64().unwrap_or(0);
    let cost = |record: &Value| record["cost_usd"].as_f64().unwrap_or(0.0);
    let completed_records =
        streams.iter().filter(|record| output_tokens(record) == SSE_DELTAS as u64 && cost(record) > 0.0).count();
    let cut_records: Vec<&&Value> = streams.iter().filter(|record| output_tokens(record) < SSE_DELTAS as u64).collect();
    let cut_billed = cut_records.iter().filter(|record| cost(record) > 0.0).count();
    // The grace period's end cut them: the records must say so, not blame the client.
    let cut_by_shutdown = cut_records
        .iter()
        .filter(|record| record["error"].as_str().is_some_and(|error| error.starts_with("stream cut at shutdown")))
        .count();
    verdict.check(
        completed_records >= STREAMS_EACH
            && cut_billed >= STREAMS_EACH
            && cut_by_shutdown == cut_records.len()
            && unreadable == 0,
        format!(
            "SIGTERM: audit records of the streamed requests: {completed_records} complete (output_tokens \
             {SSE_DELTAS}, billed), {} cut, {cut_billed} of them billed for what was seen, {cut_by_shutdown} \
             audited as cut at shutdown (cut records: {})",
            cut_records.len(),
            cut_records
                .iter()
                .take(3)
                .map(|record| json!({"usage": record["usage"], "cost_usd": record["cost_usd"], "error": record["error"], "status": record["status"]}).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(())
}

/// kill -9 under load, a restart, `audit verify`, and the spend ledger against the audit records.
async fn kill_part(
    harness: &mut Harness,
    gateway: &mut Gateway,
    route: &Route,
    length: Duration,
    verdict: &mut Verdict,
) -> Result<(), String> {
    restart(harness, gateway).await?;
    let streams = |gateway: &Gateway| {
        vec![
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
                route: route.clone(),
                workers: 2,
                pause: Duration::from_millis(5),
            },
            Stream {
                name: "intercepted SSE",
                kind: Kind::Sse,
                route: route.clone(),
                workers: 4,
                pause: Duration::from_millis(5),
            },
        ]
    };
    let load = traffic::start(streams(gateway), length, 5_000_000);
    sleep(length / 2).await;
    let (ok_before, _) = load.counts();
    signal(gateway.pid(), "KILL")?;
    let killed = Instant::now();
    let _ = wait_exit(&mut gateway.proxy, Duration::from_secs(5)).await;
    load.finish().await;
    restart(harness, gateway).await?;
    let back_after = killed.elapsed();
    let load = traffic::start(streams(gateway), length / 2, 5_000_000);
    sleep(length / 2).await;
    let (ok_after, failed_after) = load.counts();
    let lines = load.describe();
    load.finish().await;
    // A clean stop, so the audit file and the ledger are complete when they are read.
    signal(gateway.pid(), "TERM")?;
    let exit = wait_exit(&mut gateway.proxy, GRACE + EXIT_SLACK + Duration::from_secs(10)).await;
    verdict.note(format!(
        "kill -9: {ok_before} requests passed before the SIGKILL; tollgate was up again {:.2} s later; after it {}",
        back_after.as_secs_f64(),
        lines.join("; ")
    ));
    verdict.check(
        failed_after == 0 && ok_after > 0 && exit.is_some_and(|status| status.success()),
        format!("kill -9: after the restart {ok_after} requests passed, {failed_after} failed; then SIGTERM: exited {exit:?}"),
    );
    let (verified, output) = audit_verify(harness, &gateway.audit_path())?;
    verdict.check(verified, format!("kill -9: `tollgate audit verify audit.jsonl`: {output}"));
    let (records, _) = audit_records(&gateway.audit_path())?;
    let (billed, metered) = billed_micro_usd(&records);
    let ledger = ledger_org_month(&gateway.dir.join("state/spend.jsonl"))?;
    verdict.check(
        ledger == billed,
        format!(
            "kill -9: org spend in the embedded ledger {ledger} µ$ against {billed} µ$ billed by {metered} audit \
             records (difference {:+} µ$)",
            ledger - billed
        ),
    );
    Ok(())
}

/// The org's monthly spend in the embedded ledger (`state/spend.jsonl`): the sum of the deltas of its lines that
/// name a `spend:org:month:` key.
fn ledger_org_month(path: &Path) -> Result<i64, String> {
    let text = fs::read_to_string(path).map_err(|error| format!("read {}: {error}", path.display()))?;
    let mut total = 0;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let org = entry["keys"].as_array().is_some_and(|keys| {
            keys.iter().any(|key| key["key"].as_str().is_some_and(|key| key.starts_with("spend:org:month:")))
        });
        if org {
            total += entry["delta"].as_i64().unwrap_or(0);
        }
    }
    Ok(total)
}

/// `request` with the `GAP_HEADER` header.
fn with_gap(request: &[u8], gap_ms: u64) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    text.replacen("\r\n", &format!("\r\n{GAP_HEADER}: {gap_ms}\r\n"), 1).into_bytes()
}

/// The slow stub: `POST /v1/messages` answered as the load harness's stub answers it, but streamed events come
/// `GAP_HEADER` ms apart. Keep-alive; its address.
async fn slow_stub() -> Result<SocketAddr, String> {
    serve_each("the slow stub", |stream| async move {
        let _ = serve_slowly(stream).await;
    })
    .await
}

async fn serve_slowly(mut stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        // The head.
        let (head_length, body_length, gap_ms) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(length)) = request.parse(&buffer[..filled]) {
                let header = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|header| header.name.eq_ignore_ascii_case(name))
                        .and_then(|header| std::str::from_utf8(header.value).ok()?.trim().parse::<u64>().ok())
                };
                break (
                    length,
                    header("content-length").unwrap_or(0) as usize,
                    header(GAP_HEADER).unwrap_or(DEFAULT_GAP_MS),
                );
            }
            if filled == buffer.len() {
                return Ok(());
            }
            let read = stream.read(&mut buffer[filled..]).await?;
            if read == 0 {
                return Ok(());
            }
            filled += read;
        };
        if head_length + body_length > buffer.len() {
            return Ok(());
        }
        while filled < head_length + body_length {
            let read = stream.read(&mut buffer[filled..]).await?;
            if read == 0 {
                return Ok(());
            }
            filled += read;
        }
        let body = &buffer[head_length..head_length + body_length];
        let streamed = serde_json::from_slice::<Value>(body).is_ok_and(|body| body["stream"] == true);
        if streamed {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                      Transfer-Encoding: chunked\r\n\r\n",
                )
                .await?;
            let deltas: Vec<String> = (0..SSE_DELTAS).map(|index| format!("word{index} ")).collect();
            let deltas: Vec<&str> = deltas.iter().map(String::as_str).collect();
            let events = messages::stream(
                "msg_soak",
                MODEL,
                json!({"input_tokens": 8, "output_tokens": 1}),
                &deltas,
                json!({"output_tokens": SSE_DELTAS}),
            );
            for (index, event) in events.iter().enumerate() {
                if index > 0 {
                    sleep(Duration::from_millis(gap_ms)).await;
                }
                stream.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes()).await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        } else {
            let message = stub_message();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                message.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(message.as_bytes()).await?;
        }
        buffer.copy_within(head_length + body_length..filled, 0);
        filled -= head_length + body_length;
    }
}
