//! What one audit record costs a SIEM delivery, stage by stage, on one thread and away from the request path:
//! reading the spooled lines back (`event::parse_into`); a Splunk HEC batch formatted and gzipped (`event::gzip`,
//! the delivery's own code and settings) or formatted only (`gzip: false`); RFC 5424 frames formatted, and those
//! frames written to a syslog receiver on loopback TCP (a thread reading on the other end). Records are shaped as
//! tollgate writes them for a forward request and an intercepted Messages API request, hashes included, in batches
//! of 500 (the sinks' default), from a spool of 20,000 records (more than a core's L2 cache, as a delivery reads
//! records written megabytes earlier).
//!
//! `cargo bench --bench siem`; criterion's throughput line gives records per second (time per record = 1 / that).
//! The scenario `siem` of `benches/load` measures the same work against requests on one shared core.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flate2::{Compress, Compression};

use tollgate::audit::siem::event::{self, Event, Shape};

/// Records in the spool the batches are read from.
const RECORDS: usize = 20_000;
/// Records per batch.
const BATCH: usize = 500;

/// Spooled lines of `RECORDS` records of one kind, each with its own id, time, client port and hash chain.
fn spool(kind: &str) -> Vec<u8> {
    let mut lines = Vec::new();
    let mut prev = "0".repeat(64);
    for n in 0..RECORDS {
        let (second, milli) = (n / 55_000, (n / 55) % 1000);
        let head = format!(
            "{{\"ts\":\"2026-12-06T01:{:02}:{:02}.{milli:03}Z\",\"id\":\"4636bc01{n:08x}\",\"kind\":\"{kind}\",\
             \"listener\":\"proxy\",\"client\":\"127.0.0.1:{}\",\"user\":\"bench\",\"team\":null,",
            second / 60,
            second % 60,
            40_000 + n % 20_000
        );
        let body = match kind {
            "http" => "\"method\":\"GET\",\"host\":\"127.0.0.1\",\"port\":44867,\"path\":\"/\",\"decision\":\"allow\",\
                       \"rule\":\"policy.allow[2]\",\"status\":200,\"bytes_up\":68,\"bytes_down\":166,\
                       \"duration_ms\":0,\"upstream\":\"127.0.0.1:44867\",\"error\":null,"
                .to_owned(),
            _ => format!(
                "\"method\":\"POST\",\"host\":\"api.anthropic.com\",\"port\":443,\"path\":\"/v1/messages\",\
                 \"decision\":\"allow\",\"rule\":\"policy.allow[0]\",\"status\":200,\"bytes_up\":89,\"bytes_down\":304,\
                 \"duration_ms\":{},\"upstream\":\"stub\",\"model\":\"claude-sonnet-4-5\",\
                 \"usage\":{{\"input_tokens\":{},\"output_tokens\":{},\
                 \"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}},\
                 \"cost_usd\":0.000204,\"error\":null,\"user_agent\":\"claude-cli/2.0.14 (external, cli)\",",
                n % 7,
                8 + n % 300,
                12 + n % 900
            ),
        };
        let record = format!("{head}{body}\"prev\":\"{prev}\"");
        let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, record.as_bytes()));
        lines.extend_from_slice(format!("{record},\"hash\":\"{hash}\"}}\n").as_bytes());
        prev = hash;
    }
    lines
}

/// The spool cut into batches of `BATCH` whole lines.
fn batches(spool: &[u8]) -> Vec<&[u8]> {
    let mut batches = Vec::new();
    let (mut start, mut lines) = (0, 0);
    for (at, _) in spool.iter().enumerate().filter(|(_, byte)| **byte == b'\n') {
        lines += 1;
        if lines == BATCH {
            batches.push(&spool[start..=at]);
            (start, lines) = (at + 1, 0);
        }
    }
    batches
}

/// Calls `deliver` with the events of every batch in turn.
fn each_batch(batches: &[&[u8]], events: &mut Vec<Event<'static>>, mut deliver: impl FnMut(&[Event])) {
    for batch in batches {
        let mut parsed = event::recycle(std::mem::take(events));
        event::parse_into([*batch], None, &mut parsed);
        deliver(&parsed);
        *events = event::recycle(parsed);
    }
}

/// Formats `events` as syslog frames a piece (32 KiB) at a time, each piece handed to `write`, as the delivery
/// does.
fn frames(events: &[Event], syslog: &mut Shape, plain: &mut Vec<u8>, mut write: impl FnMut(&[u8])) {
    let mut events = events.iter().peekable();
    while events.peek().is_some() {
        syslog.piece(&mut events, plain);
        write(plain);
    }
}

/// A syslog receiver on loopback that reads and drops; the writer's end.
fn receiver() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the writer connects");
        let mut buffer = vec![0; 256 * 1024];
        while matches!(stream.read(&mut buffer), Ok(read) if read > 0) {}
    });
    let stream = TcpStream::connect(address).expect("connected");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

fn stages(c: &mut Criterion) {
    let mut group = c.benchmark_group("siem");
    group.sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    for (name, kind) in [("forward", "http"), ("intercepted", "intercepted")] {
        let spool = spool(kind);
        let batches = batches(&spool);
        let records = (batches.len() * BATCH) as u64;
        group.throughput(Throughput::Elements(records));
        let mut events = Vec::new();
        let (mut plain, mut output) = (Vec::new(), Vec::new());

        group.bench_function(BenchmarkId::new("read back", name), |b| {
            b.iter(|| each_batch(&batches, &mut events, |events| assert_eq!(events.len(), BATCH)))
        });

        let mut hec = Shape::hec(None, "gateway-1.corp.example");
        let mut deflate = Compress::new_gzip(Compression::fast(), 15);
        group.bench_function(BenchmarkId::new("HEC gzip batch", name), |b| {
            b.iter(|| {
                each_batch(&batches, &mut events, |events| {
                    event::gzip(&mut deflate, &mut hec, events, &mut plain, &mut output).expect("compressed");
                })
            })
        });

        group.bench_function(BenchmarkId::new("HEC batch without gzip", name), |b| {
            b.iter(|| {
                each_batch(&batches, &mut events, |events| {
                    output.clear();
                    for event in events {
                        hec.append(event, &mut output);
                    }
                })
            })
        });

        let mut syslog = Shape::syslog("gateway-1.corp.example", 4242);
        group.bench_function(BenchmarkId::new("syslog frames", name), |b| {
            b.iter(|| each_batch(&batches, &mut events, |events| frames(events, &mut syslog, &mut plain, |_| {})))
        });
        let mut stream = receiver();
        group.bench_function(BenchmarkId::new("syslog frames over loopback TCP", name), |b| {
            b.iter(|| {
                each_batch(&batches, &mut events, |events| {
                    frames(events, &mut syslog, &mut plain, |frames| stream.write_all(frames).expect("written"))
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
