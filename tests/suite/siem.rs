//! SIEM delivery (`audit.siem`) against real protocol servers on loopback: a Splunk HTTP Event Collector over TLS
//! (token, gzip, batch shape), a generic NDJSON endpoint, syslog over TCP and TLS (octet-counted RFC 5424). The
//! SIEM goes down under load, tollgate restarts (cleanly, and with kill -9) meanwhile, the SIEM comes back: every
//! record of the audit file arrives, in order, once. Full spools drop (counted) or block (the audit sink turns
//! unhealthy, /readyz says why, admission refuses); pseudonymised fields differ from the file's and are stable.
//!
//! Nothing waits by sleeping: the tests wait on the receivers' counts, on /readyz and on responses, each within
//! `PATIENCE`.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::siem::{free_port, HttpReceiver, Retain, Shape, SyslogReceiver};
use common::*;
use tollgate::app;
use tollgate::config::Config;

/// How long any single step may take before the test gives up (a bound, never a synchronisation).
const PATIENCE: Duration = Duration::from_secs(60);

const HEC_TOKEN: &str = "6f1d2c3b-0000-4a4a-9e9e-hec-test-token";

/// A gateway on `dir` (the audit file and spools live there, so a second gateway on the same `dir` is a restart):
/// `audit` holds the lines under `audit:` after `file`.
async fn start_on(dir: &Path, audit: &str, extra: &str) -> TestGateway {
    start_with(gateway_yaml(dir, audit, extra)).await
}

/// A gateway with the configuration `text`.
async fn start_with(text: String) -> TestGateway {
    let env = |name: &str| (name == "HEC_TOKEN").then(|| HEC_TOKEN.to_owned());
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut config = Config::from_text(&text, Path::new("test.yaml"), &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
    isolate_state(&mut config, scratch.path());
    let running = app::start(config).await.unwrap_or_else(|e| panic!("gateway should start: {e}"));
    let proxy = running.address("proxy").expect("proxy listener");
    let admin = running.admin.expect("admin listener");
    TestGateway { running: Some(running), proxy, admin, dir: scratch }
}

fn gateway_yaml(dir: &Path, audit: &str, extra: &str) -> String {
    let auth = if extra.contains("auth:") { "" } else { "auth: {anonymous: tester}\n" };
    format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nadmin: {{bind: \"127.0.0.1:0\"}}\n\
         audit:\n  file: {{path: \"{}/audit.jsonl\"}}\n{audit}{auth}{extra}{LOOPBACK_POLICY}",
        dir.display()
    )
}

/// A HEC sink item at `address`, plain HTTP, retried quickly.
fn hec_sink(dir: &Path, address: SocketAddr, spool: &str) -> String {
    format!(
        "    - {{type: splunk_hec, url: \"http://{address}\", token: \"${{HEC_TOKEN}}\", retry_max: 200ms, \
         spool: {{dir: \"{}/{spool}\"}}, batch: {{records: 50, wait: 20ms}}}}\n",
        dir.display()
    )
}

/// An HEC receiver on a free port, checking the token and keeping the records.
async fn hec_receiver() -> HttpReceiver {
    let any = "127.0.0.1:0".parse().unwrap();
    HttpReceiver::start(any, Shape::Hec { token: HEC_TOKEN.into() }, None, None, Retain::Records).await.expect("HEC")
}

/// Four clients sending up to `each` requests through `proxy` to `url`, one connection each, until one fails (the
/// process is killed meanwhile).
fn clients_until_killed(proxy: SocketAddr, url: &str, each: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|client| {
            let url = format!("{url}/{client}");
            tokio::spawn(async move {
                for number in 0..each {
                    let request = format!("GET {url}/{number} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n");
                    let Ok(mut stream) = tokio::net::TcpStream::connect(proxy).await else { break };
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut answer = Vec::new();
                    if stream.write_all(request.as_bytes()).await.is_err()
                        || stream.read_to_end(&mut answer).await.is_err()
                        || !answer.starts_with(b"HTTP/1.1 200")
                    {
                        break;
                    }
                }
            })
        })
        .collect()
}

/// Every record of the audit file at `dir`.
fn file_records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).expect("audit lines are JSON")).collect()
}

fn ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|record| record["id"].as_str().expect("an id").to_owned()).collect()
}

/// `clients` concurrent clients, each sending `each` requests through the proxy to `origin`, one connection each;
/// every response must be 200.
async fn load(proxy: SocketAddr, origin: &Origin, tag: &str, clients: usize, each: usize) {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let url = origin.url(&format!("/{tag}/{client}"));
        tasks.push(tokio::spawn(async move {
            for number in 0..each {
                let request = format!("GET {url}/{number} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n");
                let response = exchange_until_closed(proxy, request.as_bytes()).await;
                assert_eq!(response.status, 200, "{response:?}");
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(PATIENCE, task).await.expect("load finishes").expect("every request served");
    }
}

/// The ids in `received` are the file's, in order; returns how many arrived twice (allowed by at-least-once only
/// right after the batch they repeat).
fn assert_in_order_without_gaps(file: &[String], received: &[String]) -> usize {
    let mut duplicates = 0;
    let mut next = 0;
    for id in received {
        if next < file.len() && file[next] == *id {
            next += 1;
            continue;
        }
        let earlier = file[..next].iter().rposition(|seen| seen == id);
        assert!(earlier.is_some(), "{id} arrived out of order (expected {:?})", file.get(next));
        duplicates += 1;
    }
    assert_eq!(next, file.len(), "every record arrived");
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_over_tls_gets_every_record_batched_gzipped_with_its_token() {
    let pki = pki::Pki::new();
    let tls = Arc::new(tls::server_config(pki.server.chain(), pki.server.private_key(), None).expect("HEC TLS"));
    let hec = HttpReceiver::start(
        "127.0.0.1:0".parse().unwrap(),
        Shape::Hec { token: HEC_TOKEN.into() },
        Some(tls),
        None,
        Retain::Records,
    )
    .await
    .expect("HEC receiver");
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = format!(
        "  siem:\n    - {{type: splunk_hec, url: \"https://localhost:{}\", token: \"${{HEC_TOKEN}}\", index: tollgate, \
         spool: {{dir: \"{}/hec\"}}, batch: {{records: 7, wait: 20ms}}}}\n",
        hec.address.port(),
        dir.path().display()
    );
    let trust = format!("upstream:\n  trust: {{system_roots: false, extra_ca: [\"{}\"]}}\n", pki.ca.pem.display());
    let mut gateway = start_on(dir.path(), &audit, &trust).await;
    load(gateway.proxy, &origin, "hec", 3, 10).await;

    let file = file_records(dir.path());
    assert_eq!(file.len(), 30);
    let received = hec.wait_for(30, PATIENCE).await.unwrap();
    assert_eq!(hec.count(), 30);
    assert_eq!(received, file, "each event is the file's record, in order");
    for (envelope, record) in hec.envelopes().iter().zip(&file) {
        assert_eq!(envelope["sourcetype"], "tollgate:audit");
        assert_eq!(envelope["index"], "tollgate");
        let ts = humantime::parse_rfc3339(record["ts"].as_str().unwrap()).unwrap();
        let seconds = ts.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((envelope["time"].as_f64().unwrap() - seconds).abs() < 0.001, "{envelope}");
    }
    let deliveries = hec.deliveries();
    assert!(deliveries.iter().all(|delivery| delivery.gzip && delivery.status == 200), "{deliveries:?}");
    assert!(deliveries.iter().all(|delivery| delivery.records <= 7), "batch.records bounds a batch");
    assert!(deliveries.len() >= 5, "30 records in batches of 7 at most");

    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_siem_sent_total{sink=\"splunk_hec\"}"), 30.0);
    assert_eq!(metric_value(&metrics, "tollgate_siem_spool_bytes{sink=\"splunk_hec\"}"), 0.0);
    assert_eq!(metric_value(&metrics, "tollgate_siem_dropped_total{sink=\"splunk_hec\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siem_down_under_load_across_a_restart_gets_every_record_in_order_once() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let address = free_port();
    let audit = format!("  siem:\n{}", hec_sink(dir.path(), address, "hec"));

    // The SIEM is down: requests are served all the same, records wait in the spool.
    let mut first = start_on(dir.path(), &audit, "").await;
    let sink = "{sink=\"splunk_hec\"}";
    assert_eq!(first.metric(&format!("tollgate_siem_sent_total{sink}")).await, 0.0, "registered at 0");
    load(first.proxy, &origin, "before", 4, 25).await;
    assert!(first.metric(&format!("tollgate_siem_spool_bytes{sink}")).await > 0.0);
    first.shutdown().await;

    // Restarted on the same file and spool, more load, still down.
    let mut second = start_on(dir.path(), &audit, "").await;
    load(second.proxy, &origin, "after", 4, 25).await;
    // The SIEM comes back only once this process has tried it and failed (its delivery runs at the lowest
    // priority: on a busy machine the load can end before its first attempt).
    let errors = format!("tollgate_siem_errors_total{sink}");
    tokio::time::timeout(PATIENCE, async {
        while second.metric(&errors).await == 0.0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a failed delivery attempt while the SIEM is down");
    let file = ids(&file_records(dir.path()));
    assert_eq!(file.len(), 200);

    // The SIEM comes back: everything arrives.
    let hec = HttpReceiver::start(address, Shape::Hec { token: HEC_TOKEN.into() }, None, None, Retain::Records)
        .await
        .expect("HEC");
    hec.wait_for(200, PATIENCE).await.unwrap();
    load(second.proxy, &origin, "back", 1, 5).await;
    let file = ids(&file_records(dir.path()));
    let received = ids(&hec.wait_for(205, PATIENCE).await.unwrap());
    let duplicates = assert_in_order_without_gaps(&file, &received);
    assert_eq!(duplicates, 0, "a clean restart sends nothing twice");
    let metrics = second.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, &format!("tollgate_siem_sent_total{sink}")), 205.0);
    assert!(metric_value(&metrics, &format!("tollgate_siem_errors_total{sink}")) > 0.0, "the failed attempts");
}

/// Lines in the spool segments of `dir`.
fn spooled_lines(dir: &Path) -> usize {
    let segments = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path());
    let segments = segments.filter(|path| path.extension().is_some_and(|extension| extension == "spool"));
    segments.map(|path| std::fs::read(path).unwrap().iter().filter(|b| **b == b'\n').count()).sum()
}

/// Killed while the spool holds records in memory only (the delivery waits for a batch that never fills, the
/// audit file is synced hourly): the next start spools them again from the audit file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_during_load_the_spool_resumes_and_nothing_is_lost() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let address = free_port();
    let config = dir.path().join("tollgate.yaml");
    let audit = format!("  siem:\n{}", hec_sink(dir.path(), address, "hec")).replace("${HEC_TOKEN}", HEC_TOKEN);
    let waiting = audit.replace("batch: {records: 50, wait: 20ms}", "batch: {records: 100000, wait: 1h}");
    let yaml = gateway_yaml(dir.path(), &waiting, "").replace("audit.jsonl\"}", "audit.jsonl\", sync: 1h}");
    assert!(yaml.contains("sync: 1h") && yaml.contains("wait: 1h"), "{yaml}");
    std::fs::write(&config, yaml).unwrap();
    let binary = |config: &Path| {
        let config = config.to_owned();
        async move { binary::Tollgate::start(&config, binary::Stderr::Drained).await }
    };

    let child = binary(&config).await;
    let proxy = child.listener("proxy");
    // Clients keep sending while the process is killed: some requests fail, every record written must arrive.
    let clients = clients_until_killed(proxy, &origin.url("/kill"), 1000);
    // Killed once at least 100 records are in the file.
    let audit_path = dir.path().join("audit.jsonl");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let lines = std::fs::read(&audit_path).map(|text| text.iter().filter(|b| **b == b'\n').count());
            if lines.unwrap_or(0) >= 100 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("100 records written");
    child.kill().await;
    for client in clients {
        client.await.expect("client");
    }
    let written = std::fs::read(&audit_path).unwrap().iter().filter(|b| **b == b'\n').count();
    let spooled = spooled_lines(&dir.path().join("hec"));
    assert!(spooled < written, "records were in memory only when killed: {spooled} spooled of {written}");

    std::fs::write(&config, gateway_yaml(dir.path(), &audit, "")).unwrap();
    let restarted = binary(&config).await;
    let audit_file = std::io::BufReader::new(std::fs::File::open(&audit_path).unwrap());
    tollgate::audit::verify(audit_file).expect("the chain verifies after kill -9");
    let file = ids(&file_records(dir.path()));
    assert!(file.len() >= 100);
    let hec = HttpReceiver::start(address, Shape::Hec { token: HEC_TOKEN.into() }, None, None, Retain::Records)
        .await
        .expect("HEC");
    let received = ids(&hec.wait_for(file.len(), PATIENCE).await.unwrap());
    let duplicates = assert_in_order_without_gaps(&file, &received);
    assert_eq!(duplicates, 0, "the SIEM was down: nothing was in flight when the process died");
    restarted.stop().await;
}

/// Killed while the SIEM takes records: those it accepted before the spool wrote them are in no spool file, the
/// newest ones are in memory only. The spool's `delivered` file keeps the last delivered line: the next start
/// spools again what the audit file holds after it, and every record arrives, in order (the batch in flight may
/// repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_with_records_delivered_unwritten_every_record_arrives() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hec = hec_receiver().await;
    let config = dir.path().join("tollgate.yaml");
    let audit = format!("  siem:\n{}", hec_sink(dir.path(), hec.address, "hec")).replace("${HEC_TOKEN}", HEC_TOKEN);
    // Synced hourly: the spool's file gets nothing but its first append (its anchor) unless the SIEM falls behind.
    let yaml = gateway_yaml(dir.path(), &audit, "").replace("audit.jsonl\"}", "audit.jsonl\", sync: 1h}");
    std::fs::write(&config, yaml).unwrap();
    let child = binary::Tollgate::start(&config, binary::Stderr::Drained).await;
    let proxy = child.listener("proxy");
    let clients = clients_until_killed(proxy, &origin.url("/delivered"), 2000);
    // Killed once the SIEM has 300 records, with the load still on.
    hec.wait_for(300, PATIENCE).await.expect("300 records delivered");
    child.kill().await;
    for client in clients {
        client.await.expect("client");
    }
    let spool = dir.path().join("hec");
    let (spooled, delivered) = (spooled_lines(&spool), hec.count());
    assert!(spooled < delivered, "records were delivered without being written: {spooled} spooled, {delivered} sent");
    let anchor = std::fs::read_to_string(spool.join("delivered")).unwrap();
    let (_, line) = anchor.split_once('\n').expect("a position, then the last delivered line");
    let last: Value = serde_json::from_str(line.lines().next().unwrap()).expect("the last delivered record");
    let received = ids(&hec.records());
    assert!(received.contains(&last["id"].as_str().unwrap().to_owned()), "{last}");

    let restarted = binary::Tollgate::start(&config, binary::Stderr::Drained).await;
    let audit_file = std::io::BufReader::new(std::fs::File::open(dir.path().join("audit.jsonl")).unwrap());
    tollgate::audit::verify(audit_file).expect("the chain verifies after kill -9");
    let file = ids(&file_records(dir.path()));
    assert!(file.len() > delivered, "records in memory only when killed: {} in the file", file.len());
    // Until every record is there once at least (repeats count towards what the receiver holds).
    let mut wanted = file.len();
    let received = loop {
        let received = ids(&hec.wait_for(wanted, PATIENCE).await.unwrap());
        let unique: std::collections::HashSet<&String> = received.iter().collect();
        if unique.len() >= file.len() {
            break received;
        }
        wanted = received.len() + file.len() - unique.len();
    };
    let duplicates = assert_in_order_without_gaps(&file, &received);
    // Catch-up started at the last delivered line, not at the spool file's last (its first append): what repeats
    // is at most the batch in flight and the records it was acknowledged in before (a batch is 50).
    assert!(duplicates <= 100, "{duplicates} records sent twice of {delivered} delivered before the kill");
    restarted.stop().await;
}

/// With `sync: batch` a response waits for its record to be on disk in the file and in every spool: the spool
/// holds nothing in memory only once a request is answered, even with a delivery that never takes records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sync_batch_every_answered_record_is_in_the_spool_file() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sink =
        hec_sink(dir.path(), free_port(), "hec").replace("batch: {records: 50, wait: 20ms}", "batch: {wait: 1h}");
    let yaml = gateway_yaml(dir.path(), &format!("  siem:\n{sink}"), "");
    let mut gateway = start_with(yaml.replace("audit.jsonl\"}", "audit.jsonl\", sync: batch}")).await;
    for round in 0..3 {
        load(gateway.proxy, &origin, &format!("sync{round}"), 2, 5).await;
        let written = file_records(dir.path()).len();
        assert_eq!(written, 10 * (round + 1));
        assert_eq!(spooled_lines(&dir.path().join("hec")), written, "round {round}");
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tcp_and_tls_gets_octet_counted_rfc5424_messages() {
    let pki = pki::Pki::new();
    let tls = Arc::new(tls::server_config(pki.server.chain(), pki.server.private_key(), None).expect("syslog TLS"));
    let plain = SyslogReceiver::start("127.0.0.1:0".parse().unwrap(), None, Retain::Records).await.expect("syslog TCP");
    let secure =
        SyslogReceiver::start("127.0.0.1:0".parse().unwrap(), Some(tls), Retain::Records).await.expect("syslog TLS");
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let audit = format!(
        "  siem:\n    - {{type: syslog, url: \"tcp://127.0.0.1:{}\", spool: {{dir: \"{d}/tcp\"}}, batch: {{wait: 10ms}}}}\n    \
         - {{type: syslog, name: secure-syslog, url: \"tls://localhost:{}\", spool: {{dir: \"{d}/tls\"}}, batch: {{wait: 10ms}}}}\n",
        plain.address.port(),
        secure.address.port()
    );
    let trust = format!("upstream:\n  trust: {{system_roots: false, extra_ca: [\"{}\"]}}\n", pki.ca.pem.display());
    let mut gateway = start_on(dir.path(), &audit, &trust).await;
    load(gateway.proxy, &origin, "syslog", 2, 10).await;
    let file = file_records(dir.path());
    for receiver in [&plain, &secure] {
        let messages = receiver.wait_for(20, PATIENCE).await.unwrap();
        assert_eq!(receiver.errors(), Vec::<String>::new());
        for (message, record) in messages.iter().zip(&file) {
            assert_eq!((message.priority, message.version), (110, 1), "log audit, informational; RFC 5424");
            assert_eq!(message.app, "tollgate");
            assert_eq!(message.message_id, record["kind"].as_str().unwrap());
            assert_eq!(message.timestamp, record["ts"].as_str().unwrap());
            assert_eq!(message.sd_id, "tollgate@32473");
            assert_eq!(message.id, record["id"].as_str().unwrap());
            assert_eq!(&message.record, record);
        }
        assert_eq!((messages.len(), receiver.count()), (20, 20));
    }
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_siem_sent_total{sink=\"syslog\"}"), 20.0);
    assert_eq!(metric_value(&metrics, "tollgate_siem_sent_total{sink=\"secure-syslog\"}"), 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_gets_the_file_lines_as_ndjson() {
    let pki = pki::Pki::new();
    let tls = Arc::new(tls::server_config(pki.server.chain(), pki.server.private_key(), None).expect("TLS"));
    let shape = Shape::Ndjson { token: Some("bearer-secret".into()) };
    let receiver = HttpReceiver::start("127.0.0.1:0".parse().unwrap(), shape, Some(tls), None, Retain::Records)
        .await
        .expect("NDJSON");
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = format!(
        "  siem:\n    - {{type: https, url: \"https://localhost:{}/ingest\", token: bearer-secret, gzip: false, \
         spool: {{dir: \"{}/ndjson\"}}, batch: {{wait: 10ms}}}}\n",
        receiver.address.port(),
        dir.path().display()
    );
    let trust = format!("upstream:\n  trust: {{system_roots: false, extra_ca: [\"{}\"]}}\n", pki.ca.pem.display());
    let mut gateway = start_on(dir.path(), &audit, &trust).await;
    load(gateway.proxy, &origin, "ndjson", 2, 5).await;
    receiver.wait_for(10, PATIENCE).await.unwrap();
    let body: Vec<u8> = receiver.deliveries().iter().flat_map(|delivery| delivery.body.clone()).collect();
    let file = std::fs::read(dir.path().join("audit.jsonl")).unwrap();
    assert!(body == file, "the NDJSON lines are the file's lines, byte for byte");
    assert!(receiver.deliveries().iter().all(|delivery| !delivery.gzip));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_with_drop_oldest_drops_the_oldest_records_and_counts_them() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let address = free_port();
    let audit = format!(
        "  siem:\n    - {{type: splunk_hec, url: \"http://{address}\", token: t0k3n, retry_max: 200ms, \
         spool: {{dir: \"{}/hec\", max: 64KiB, on_full: drop_oldest}}, batch: {{bytes: 16KiB, wait: 10ms}}}}\n",
        dir.path().display()
    );
    let mut gateway = start_on(dir.path(), &audit, "").await;
    // About 400 bytes a record: 200 records are more than the spool holds.
    let long = "x".repeat(200);
    load(gateway.proxy, &origin, &long, 4, 50).await;
    let dropped = gateway.metric("tollgate_siem_dropped_total{sink=\"splunk_hec\"}").await as usize;
    assert!(dropped > 0, "records were dropped");
    assert!(gateway.metric("tollgate_siem_spool_bytes{sink=\"splunk_hec\"}").await <= 64.0 * 1024.0);

    let hec = HttpReceiver::start(address, Shape::Hec { token: "t0k3n".into() }, None, None, Retain::Records)
        .await
        .expect("HEC");
    let file = ids(&file_records(dir.path()));
    let received = ids(&hec.wait_for(file.len() - dropped, PATIENCE).await.unwrap());
    // Each record is delivered or counted as dropped, never both, and those delivered arrive in the file's order
    // (the oldest went, except any that were being sent when their segment was dropped and that the SIEM took).
    let mut rest = file.iter();
    for id in &received {
        assert!(rest.any(|written| written == id), "{id} arrived out of order or twice: {received:?} of {file:?}");
    }
    assert_eq!(received.len() + dropped, file.len(), "delivered + dropped = written: {received:?} of {file:?}");
    assert_eq!(received.last(), file.last(), "the newest arrived");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_that_blocks_makes_the_audit_sink_unready_and_admission_refuse() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let address = free_port();
    let audit = format!(
        "  on_failure: block\n  siem:\n    - {{type: splunk_hec, url: \"http://{address}\", token: t0k3n, retry_max: 200ms, \
         spool: {{dir: \"{}/hec\", max: 64KiB, on_full: block}}, batch: {{bytes: 16KiB, wait: 10ms}}}}\n",
        dir.path().display()
    );
    let mut gateway = start_on(dir.path(), &audit, "").await;
    let proxy = gateway.proxy;
    // Clients keep sending long requests; once the spool is full the writer waits for room, and with it the
    // responses whose records wait to be written.
    let long = "x".repeat(400);
    let url = origin.url(&format!("/{long}"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|client| {
            let (url, stop) = (format!("{url}/{client}"), stop.clone());
            tokio::spawn(async move {
                let mut number = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let request = format!("GET {url}/{number} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n");
                    let response = exchange_until_closed(proxy, request.as_bytes()).await;
                    assert!(matches!(response.status, 200 | 503), "{response:?}");
                    number += 1;
                }
            })
        })
        .collect();
    let ready = tokio::time::timeout(PATIENCE, async {
        loop {
            let ready = admin(&gateway, "GET", "/readyz", None).await;
            if ready.status == 503 {
                return ready;
            }
        }
    })
    .await
    .expect("/readyz reports the full spool");
    assert!(ready.body.contains("SIEM spool splunk_hec") && ready.body.contains("is full"), "{}", ready.body);
    let request = format!("GET {} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n", origin.url("/refused"));
    let refused = exchange_until_closed(proxy, request.as_bytes()).await;
    assert_refused(&refused, 503, "audit_unavailable", None, "a full SIEM spool");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    // The SIEM comes back: the spool drains, the sink is healthy again, requests are served.
    let hec = HttpReceiver::start(address, Shape::Hec { token: "t0k3n".into() }, None, None, Retain::Records)
        .await
        .expect("HEC");
    for sender in senders {
        tokio::time::timeout(PATIENCE, sender)
            .await
            .expect("held responses complete once records are spooled")
            .unwrap();
    }
    tokio::time::timeout(PATIENCE, async { while admin(&gateway, "GET", "/readyz", None).await.status != 200 {} })
        .await
        .expect("ready again");
    load(proxy, &origin, "again", 1, 3).await;
    let file = ids(&file_records(dir.path()));
    assert_eq!(ids(&hec.wait_for(file.len(), PATIENCE).await.unwrap()), file, "nothing dropped under block");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonymised_fields_differ_from_the_file_and_are_stable() {
    let origin = Origin::start().await;
    let hec = hec_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pseudonym.key");
    std::fs::write(&key, "a key of thirty-two bytes, shared").unwrap();
    let audit = format!(
        "  siem:\n{}  pseudonymize: {{fields: [user, client], key: \"{}\"}}\n",
        hec_sink(dir.path(), hec.address, "hec"),
        key.display()
    );
    let users =
        format!("auth:\n  users:\n    - {{name: alice, password_hash: \"{}\", teams: []}}\n", common::hash("secret"));
    let mut gateway = start_on(dir.path(), &audit, &users).await;
    for number in 0..2 {
        let response = get_as(gateway.proxy, &origin.url(&format!("/p/{number}")), &basic("alice", "secret")).await;
        assert_eq!(response.status, 200);
    }
    let file = file_records(dir.path());
    let received = hec.wait_for(2, PATIENCE).await.unwrap();
    let hmac = |value: &str| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"a key of thirty-two bytes, shared");
        hex::encode(&ring::hmac::sign(&key, value.as_bytes()).as_ref()[..16])
    };
    for (sent, kept) in received.iter().zip(&file) {
        assert_eq!(kept["user"], "alice", "the file keeps the real values");
        assert_eq!(sent["user"], hmac("alice"));
        assert_eq!(sent["client"], hmac(kept["client"].as_str().unwrap()));
        assert_ne!(sent["client"], kept["client"]);
        assert_eq!(sent["id"], kept["id"]);
        assert_eq!(sent["hash"], kept["hash"], "the SIEM copy names the file line it came from");
    }
    assert_eq!(received[0]["user"], received[1]["user"], "the same input gives the same pseudonym");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_siem_refuses_is_dropped_alone_and_counted() {
    let origin = Origin::start().await;
    let poison: common::siem::Poison =
        Arc::new(|record: &Value| record["path"].as_str().is_some_and(|path| path.contains("poison")));
    let shape = Shape::Hec { token: HEC_TOKEN.into() };
    let hec = HttpReceiver::start("127.0.0.1:0".parse().unwrap(), shape, None, Some(poison), Retain::Records)
        .await
        .expect("HEC");
    let dir = tempfile::tempdir().unwrap();
    let audit = format!(
        "  siem:\n    - {{type: splunk_hec, url: \"http://{}\", token: \"${{HEC_TOKEN}}\", retry_max: 200ms, \
         spool: {{dir: \"{}/hec\"}}, batch: {{wait: 200ms}}}}\n",
        hec.address,
        dir.path().display()
    );
    let mut gateway = start_on(dir.path(), &audit, "").await;
    // Sent together (within the batch wait), so that the poison record shares a batch with good ones.
    let mut tasks = Vec::new();
    for number in 0..9 {
        let proxy = gateway.proxy;
        let path = if number == 4 { "/poison".to_owned() } else { format!("/good/{number}") };
        let url = origin.url(&path);
        tasks.push(tokio::spawn(async move {
            let request = format!("GET {url} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n");
            exchange_until_closed(proxy, request.as_bytes()).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let file = file_records(dir.path());
    let received = hec.wait_for(8, PATIENCE).await.unwrap();
    let expected: Vec<Value> = file.iter().filter(|record| record["path"] != "/poison").cloned().collect();
    assert_eq!(received, expected, "every record but the refused one, in order");
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_siem_dropped_total{sink=\"splunk_hec\"}"), 1.0);
    assert_eq!(metric_value(&metrics, "tollgate_siem_sent_total{sink=\"splunk_hec\"}"), 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_crash_left_in_the_file_but_not_in_the_spool_are_spooled_on_start() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let address = free_port();
    let audit = format!("  siem:\n{}", hec_sink(dir.path(), address, "hec"));
    let mut first = start_on(dir.path(), &audit, "").await;
    load(first.proxy, &origin, "crash", 2, 5).await;
    first.shutdown().await;

    // A crash between the file's write and the spool's: the spool lacks the file's last two records.
    let mut segments: Vec<_> = std::fs::read_dir(dir.path().join("hec"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "spool"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment");
    let text = std::fs::read_to_string(last).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    std::fs::write(last, kept[..kept.len() - 2].iter().map(|line| format!("{line}\n")).collect::<String>()).unwrap();

    let mut second = start_on(dir.path(), &audit, "").await;
    let hec = HttpReceiver::start(address, Shape::Hec { token: HEC_TOKEN.into() }, None, None, Retain::Records)
        .await
        .expect("HEC");
    let file = ids(&file_records(dir.path()));
    assert_eq!(file.len(), 10);
    let received = ids(&hec.wait_for(10, PATIENCE).await.unwrap());
    assert_eq!(assert_in_order_without_gaps(&file, &received), 0);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siem_that_takes_connections_and_never_answers_does_not_hold_requests() {
    // Accepts every connection and never reads or answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = format!(
        "  siem:\n    - {{type: splunk_hec, url: \"http://{address}\", token: t0k3n, timeout: 1h, \
         spool: {{dir: \"{}/hec\"}}, batch: {{wait: 10ms}}}}\n",
        dir.path().display()
    );
    // A grace period longer than the test's patience: a shutdown that waited for the silent SIEM would not end in time.
    let mut gateway = start_on(dir.path(), &audit, "server: {shutdown_grace: 10m}\n").await;
    load(gateway.proxy, &origin, "silent", 4, 25).await;
    assert_eq!(file_records(dir.path()).len(), 100, "every request served and written");
    assert!(gateway.metric("tollgate_siem_spool_bytes{sink=\"splunk_hec\"}").await > 0.0);
    assert_eq!(gateway.metric("tollgate_siem_sent_total{sink=\"splunk_hec\"}").await, 0.0);
    let ready = admin(&gateway, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "a silent SIEM is no reason to refuse: {ready:?}");
    tokio::time::timeout(PATIENCE, gateway.shutdown()).await.expect("a silent SIEM does not hold the shutdown");
    held.abort();
}

/// Why a gateway with the configuration `text` does not start.
async fn start_error(text: String) -> String {
    let env = |name: &str| (name == "HEC_TOKEN").then(|| HEC_TOKEN.to_owned());
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut config = Config::from_text(&text, Path::new("test.yaml"), &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
    isolate_state(&mut config, scratch.path());
    match app::start(config).await {
        Ok(_) => panic!("a second gateway started on files the first one holds:\n{text}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tollgate_on_the_same_audit_file_or_spool_is_refused_and_a_restart_is_not() {
    let hec = hec_receiver().await;
    let (dir, other) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
    let sinks = format!("  siem:\n{}", hec_sink(dir.path(), hec.address, "spool"));
    let mut first = start_on(dir.path(), &sinks, "").await;
    let pid = std::process::id();

    // Another process: the binary, on the same audit file, exits at once naming the file and who holds it.
    let config = other.path().join("tollgate.yaml");
    let text = gateway_yaml(dir.path(), "", "").replace("127.0.0.1:0\"}]", "127.0.0.1:0\"}]\nstate: {path: state}");
    std::fs::write(&config, text).expect("write the config");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "-c"])
        .arg(&config)
        .current_dir(other.path())
        .env_remove("TOLLGATE_CONFIG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run).await.expect("it exits").expect("it runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let audit = dir.path().join("audit.jsonl");
    let held = format!("cannot open audit file: {} is in use by process {pid}", audit.display());
    assert!(stderr.contains(&held) && stderr.contains("audit.jsonl.lock"), "{stderr}");

    // A spool another gateway delivers, behind an audit file of its own.
    let spool_taken = gateway_yaml(other.path(), &sinks, "");
    let error = start_error(spool_taken).await;
    let spool = dir.path().join("spool");
    let expected = format!("the spool of SIEM sink splunk_hec ({}) is in use by process {pid}", spool.display());
    assert!(error.contains(&expected), "{error}");

    // Nothing the refused starts did reached the first gateway's files; once it stops, a restart takes them.
    let origin = Origin::start().await;
    load(first.proxy, &origin, "first", 1, 3).await;
    first.shutdown().await;
    let mut again = start_on(dir.path(), &sinks, "").await;
    load(again.proxy, &origin, "again", 1, 3).await;
    hec.wait_for(6, PATIENCE).await.expect("every record delivered by the restarted gateway");
    again.shutdown().await;
    let text = std::fs::read_to_string(&audit).expect("the audit file");
    assert_eq!(tollgate::audit::verify_chain(&text), Ok(6), "one chain across the restart");
}
