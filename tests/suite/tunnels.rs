//! Large CONNECT tunnels: tens of MiB both ways at once, long past the point where a plain tunnel moves its bytes
//! through a pipe (`splice(2)`), arrive whole and in order; either side's half-close reaches the other while the
//! other direction keeps flowing; the audit record counts every byte.

use crate::common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use common::*;

/// Bytes each side sends.
const LENGTH: usize = 64 * 1024 * 1024;
/// What is sent: this block over and over, from the offset a side's `seed` picks. Its length is no power of two,
/// so a chunk lost, repeated or reordered by any buffer or pipe size shows as a mismatch.
const BLOCK: usize = 1024 * 1024 + 7;
/// The whole exchange, both ways, on a loaded machine.
const WITHIN: Duration = Duration::from_secs(120);

/// A block of pseudo-random bytes (xorshift), the same for every run.
fn block() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..BLOCK)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes `LENGTH` bytes of the block, starting at `seed`, in uneven chunks.
async fn send_pattern<W: AsyncWriteExt + Unpin>(to: &mut W, block: &[u8], seed: usize) -> std::io::Result<()> {
    let mut sent = 0;
    let mut chunk = 61 * 1024;
    while sent < LENGTH {
        let offset = (seed + sent) % BLOCK;
        let length = chunk.min(BLOCK - offset).min(LENGTH - sent);
        to.write_all(&block[offset..offset + length]).await?;
        sent += length;
        chunk = if chunk > 300 * 1024 { 7 * 1024 } else { chunk * 2 };
    }
    Ok(())
}

/// Reads until EOF and checks every byte against the block from `seed`; the count of bytes read, or where the
/// first difference was.
async fn receive_pattern<R: AsyncReadExt + Unpin>(from: &mut R, block: &[u8], seed: usize) -> Result<usize, String> {
    let mut buf = vec![0u8; 100_000];
    let mut received = 0;
    loop {
        let n = from.read(&mut buf).await.map_err(|e| format!("read after {received} bytes: {e}"))?;
        if n == 0 {
            return Ok(received);
        }
        let mut checked = 0;
        while checked < n {
            let offset = (seed + received + checked) % BLOCK;
            let length = (n - checked).min(BLOCK - offset);
            if buf[checked..checked + length] != block[offset..offset + length] {
                return Err(format!("bytes differ within {length} bytes from {}", received + checked));
            }
            checked += length;
        }
        received += n;
    }
}

/// Which side finishes sending (and half-closes) first; the other keeps sending until it has seen that EOF.
#[derive(Clone, Copy, PartialEq)]
enum FirstToClose {
    Client,
    Upstream,
}

/// An upstream for one connection: sends `LENGTH` bytes (seed 1) while it reads and checks the client's `LENGTH`
/// (seed 0). With `FirstToClose::Client` it sends only after the client's half-close arrived; otherwise it sends
/// at once, half-closes, and goes on reading. Reports what it read.
async fn upstream(order: FirstToClose) -> (std::net::SocketAddr, oneshot::Receiver<Result<usize, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let address = listener.local_addr().expect("upstream address");
    let (report, reported) = oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept the tunnel");
        let block = block();
        let (mut reader, mut writer) = stream.into_split();
        let outcome = match order {
            FirstToClose::Client => {
                let received = receive_pattern(&mut reader, &block, 0).await;
                // The client's EOF came through: now the other direction, long after this one ended.
                send_pattern(&mut writer, &block, 1).await.expect("send down");
                writer.shutdown().await.expect("close down");
                received
            }
            FirstToClose::Upstream => {
                let sending = async {
                    send_pattern(&mut writer, &block, 1).await.expect("send down");
                    writer.shutdown().await.expect("close down");
                };
                let (received, ()) = tokio::join!(receive_pattern(&mut reader, &block, 0), sending);
                received
            }
        };
        let _ = report.send(outcome);
    });
    (address, reported)
}

/// Opens a tunnel through `gateway` to a fresh upstream, moves `LENGTH` bytes each way with the half-closes in
/// `order`, checks both sides got every byte, and returns the tunnel's audit record.
async fn transfer(order: FirstToClose) -> serde_json::Value {
    let (address, reported) = upstream(order).await;
    let mut gateway = TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}")).await;
    let authority = format!("127.0.0.1:{}", address.port());
    let (tunnel, response) = exchange_keep(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let (mut reader, mut writer) = tunnel.into_split();
    let block = block();
    let sending = async {
        send_pattern(&mut writer, &block, 0).await.expect("send up");
        writer.shutdown().await.expect("half-close up");
    };
    // With `FirstToClose::Client`, nothing comes down before the client's half-close has reached the upstream.
    let receiving = receive_pattern(&mut reader, &block, 1);
    let (received, ()) =
        tokio::time::timeout(WITHIN, async { tokio::join!(receiving, sending) }).await.expect("transfer in time");
    assert_eq!(received, Ok(LENGTH), "bytes down");
    let upstream_received = tokio::time::timeout(WITHIN, reported).await.expect("upstream done").expect("report");
    assert_eq!(upstream_received, Ok(LENGTH), "bytes up");

    let audit = gateway.shutdown_and_audit().await;
    assert_eq!(audit.len(), 1, "{audit:#?}");
    audit[0].clone()
}

fn assert_counted(record: &serde_json::Value) {
    assert_eq!(record["kind"], "connect", "{record:#}");
    assert_eq!(record["status"], 200, "{record:#}");
    assert_eq!(record["bytes_up"].as_u64(), Some(LENGTH as u64), "{record:#}");
    assert_eq!(record["bytes_down"].as_u64(), Some(LENGTH as u64), "{record:#}");
    assert!(record["error"].is_null(), "{record:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_whole_when_the_client_half_closes_first() {
    let record = transfer(FirstToClose::Client).await;
    assert_counted(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_whole_when_the_upstream_half_closes_first() {
    let record = transfer(FirstToClose::Upstream).await;
    assert_counted(&record);
}

/// Pipelined bytes sent with the CONNECT head, then a large upload: the first bytes are forwarded first and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pipelined_after_the_connect_head_come_first_and_are_counted() {
    let echo = Echo::start().await;
    let mut gateway = TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}")).await;
    let authority = format!("127.0.0.1:{}", echo.address.port());
    let block = block();
    let mut tunnel = TcpStream::connect(gateway.proxy).await.expect("connect");
    let mut first = connect_request(&authority, &[]).into_bytes();
    first.extend_from_slice(&block[..1000]);
    tunnel.write_all(&first).await.expect("CONNECT with bytes after it");
    // The head only, byte by byte: the echo of the pipelined bytes may follow it in the same segment.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tunnel.read_u8().await.expect("the CONNECT answer"));
    }
    assert_eq!(head, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    let (mut reader, mut writer) = tunnel.into_split();
    let rest = 8 * 1024 * 1024;
    let sending = async {
        writer.write_all(&block[1000..]).await.expect("send up");
        for _ in 0..rest / BLOCK {
            writer.write_all(&block).await.expect("send up");
        }
        writer.shutdown().await.expect("half-close");
    };
    let mut echoed = Vec::new();
    let receiving = reader.read_to_end(&mut echoed);
    let (read, ()) = tokio::time::timeout(WITHIN, async { tokio::join!(receiving, sending) }).await.expect("in time");
    read.expect("read the echo");
    let sent = BLOCK * (1 + rest / BLOCK);
    assert_eq!(echoed.len(), sent);
    assert!(echoed.chunks(BLOCK).all(|chunk| chunk == &block[..chunk.len()]), "the echo differs from what was sent");

    let audit = gateway.shutdown_and_audit().await;
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(audit[0]["bytes_up"].as_u64(), Some(sent as u64), "{:#}", audit[0]);
    assert_eq!(audit[0]["bytes_down"].as_u64(), Some(sent as u64), "{:#}", audit[0]);
}
