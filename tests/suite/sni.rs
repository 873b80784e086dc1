//! `policy.require_sni_match`: after the 200, a pass-through tunnel must open with a TLS ClientHello whose SNI is
//! the CONNECT host. A matching handshake reaches the origin; a mismatched SNI, no SNI, or bytes that are not TLS
//! close the tunnel before anything is forwarded, with a deny in the audit record and the metrics.

use crate::common;

use std::time::Duration;

use common::pki::Pki;
use common::tls::{request_until_closed, server_name, TlsOrigin};
use common::{connect_request, exchange_keep, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn policy(require_sni_match: bool) -> String {
    format!(
        "auth: {{anonymous: dev}}\npolicy:\n  default: deny\n  allow: [\"localhost\", \"127.0.0.1\"]\n  allow_private: [\"127.0.0.0/8\", \"::1/128\"]\n  require_sni_match: {require_sni_match}\n"
    )
}

/// A CONNECT to `authority` that the gateway answered with 200.
async fn tunnel(gateway: &TestGateway, authority: &str) -> TcpStream {
    let (stream, response) = exchange_keep(gateway.proxy, connect_request(authority, &[]).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.body.is_empty(), "nothing after the 200 yet");
    stream
}

/// A TLS handshake with SNI from `name` over `tunnel`.
async fn handshake(
    pki: &Pki,
    tunnel: TcpStream,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(pki.client_config(None)).connect(server_name(name), tunnel).await
}

const SNI_MISMATCH: &str =
    "tollgate_requests_total{decision=\"deny\",kind=\"connect\",listener=\"proxy\",reason=\"sni_mismatch\"}";

/// The tunnel's audit record (the gateway has closed the client connection, so it is written).
async fn assert_denied(gateway: &TestGateway, problem: &str, denials: f64) {
    let records = gateway.audit().await;
    let record = records.last().expect("an audit record");
    assert_eq!(record["kind"], "connect", "{record}");
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["rule"], "policy.require_sni_match", "{record}");
    assert!(record["error"].as_str().unwrap().contains(problem), "expected {problem:?}: {record}");
    assert_eq!(gateway.metric(SNI_MISMATCH).await, denials);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_sni_reaches_the_origin() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let mut gateway = TestGateway::start(&policy(true)).await;

    let stream = tunnel(&gateway, &format!("localhost:{}", origin.address.port())).await;
    let mut tls = handshake(&pki, stream, "localhost").await.expect("the handshake passes through the tunnel");
    let request = b"GET /through HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let response = request_until_closed(&mut tls, request).await.unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "tls origin saw /through"));
    assert!(origin.next_connection().await.handshake.is_ok());
    drop(tls);

    let records = gateway.shutdown_and_audit().await;
    assert_eq!(records.len(), 1);
    assert_eq!((records[0]["decision"].as_str(), records[0]["status"].as_u64()), (Some("allow"), Some(200)));
    assert!(records[0]["bytes_up"].as_u64().unwrap() > 0 && records[0]["bytes_down"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_sni_closes_the_tunnel_before_anything_is_forwarded() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let gateway = TestGateway::start(&policy(true)).await;

    let stream = tunnel(&gateway, &format!("localhost:{}", origin.address.port())).await;
    let error = handshake(&pki, stream, "evil.example").await.expect_err("the gateway closes the tunnel");
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    assert_denied(&gateway, "\"evil.example\"", 1.0).await;
    assert_eq!(origin.next_connection().await.first_read, 0, "the ClientHello was not forwarded to the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_without_sni_closes_the_tunnel() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let gateway = TestGateway::start(&policy(true)).await;

    // An IP server name: rustls sends no SNI.
    let stream = tunnel(&gateway, &format!("127.0.0.1:{}", origin.address.port())).await;
    let error = handshake(&pki, stream, "127.0.0.1").await.expect_err("the gateway closes the tunnel");
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    assert_denied(&gateway, "without SNI", 1.0).await;
    assert_eq!(origin.next_connection().await.first_read, 0);

    // A CONNECT to an IP literal has no name an SNI could equal: a named ClientHello is closed too.
    let stream = tunnel(&gateway, &format!("127.0.0.1:{}", origin.address.port())).await;
    let error = handshake(&pki, stream, "localhost").await.expect_err("the gateway closes the tunnel");
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    assert_denied(&gateway, "does not match CONNECT host 127.0.0.1", 2.0).await;
    assert_eq!(origin.next_connection().await.first_read, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bytes_close_the_tunnel() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let gateway = TestGateway::start(&policy(true)).await;

    let mut stream = tunnel(&gateway, &format!("localhost:{}", origin.address.port())).await;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the tunnel")
        .expect("a clean close");
    assert!(answer.is_empty(), "nothing came back: {:?}", String::from_utf8_lossy(&answer));
    assert_denied(&gateway, "did not start with a TLS ClientHello", 1.0).await;
    assert_eq!(origin.next_connection().await.first_read, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_any_sni_passes_through() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let mut gateway = TestGateway::start(&policy(false)).await;

    // The tunnel carries the mismatched ClientHello to the origin; only the client's own check fails.
    let stream = tunnel(&gateway, &format!("localhost:{}", origin.address.port())).await;
    let error =
        handshake(&pki, stream, "evil.example").await.expect_err("the origin's certificate is not for evil.example");
    assert!(error.to_string().contains("not valid for name"), "{error}");
    assert!(origin.next_connection().await.first_read > 0, "the ClientHello reached the origin");

    let records = gateway.shutdown_and_audit().await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["decision"], "allow", "{records:#?}");
    assert!(records[0]["rule"] != "policy.require_sni_match", "{records:#?}");
}
