//! Upstream trust for absolute-form `https://` requests (tollgate makes the TLS connection to the origin):
//! `extra_ca` extends the trusted roots, certificate problems are a 502 `upstream_tls` naming them, and
//! `upstream.client_cert` is presented to origins that ask for one.

use crate::common;

use common::pki::Pki;
use common::tls::{get, TlsOrigin};
use common::{exchange_until_closed, TestGateway, LOOPBACK_POLICY};

/// Anonymous access, loopback destinations, and the given `upstream:` block.
async fn gateway(upstream: &str) -> TestGateway {
    TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}upstream:\n{upstream}")).await
}

fn trust_ca(pki: &Pki) -> String {
    format!("  trust: {{system_roots: true, extra_ca: [\"{}\"]}}\n", pki.ca.pem.display())
}

/// Asserts a 502 `upstream_tls` whose message names `problem`, and the audit record and metric that go with it.
async fn assert_upstream_tls(gateway: &TestGateway, response: &common::Response, problem: &str) {
    assert_eq!(response.status, 502, "{response:?}");
    let body = response.json();
    assert_eq!(body["error"]["type"], "upstream_tls", "{response:?}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(problem), "the message should name {problem:?}: {message}");
    let records = gateway.audit().await;
    let record = records.last().expect("an audit record");
    assert_eq!((record["decision"].as_str(), record["status"].as_u64()), (Some("error"), Some(502)), "{record}");
    assert!(record["error"].as_str().unwrap().contains(problem), "{record}");
    assert!(gateway.metric("tollgate_upstream_errors_total{kind=\"tls\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_ca_makes_a_private_origin_trusted() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let gateway = gateway(&trust_ca(&pki)).await;
    let port = origin.address.port();

    let response = exchange_until_closed(gateway.proxy, &get(&format!("https://localhost:{port}/by-name"), &[])).await;
    assert_eq!((response.status, response.body.as_str()), (200, "tls origin saw /by-name"), "{response:?}");
    assert_eq!(response.header("x-origin").as_deref(), Some("tls"));
    assert!(origin.next_connection().await.handshake.expect("handshake").is_none(), "no client certificate asked");
    // An IP literal is verified against the certificate's IP SAN.
    let response = exchange_until_closed(gateway.proxy, &get(&format!("https://127.0.0.1:{port}/by-ip"), &[])).await;
    assert_eq!((response.status, response.body.as_str()), (200, "tls origin saw /by-ip"), "{response:?}");

    let records = gateway.audit().await;
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!((record["kind"].as_str(), record["status"].as_u64()), (Some("http"), Some(200)), "{record}");
        assert_eq!(record["port"].as_u64(), Some(u64::from(port)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_extra_ca_the_private_origin_is_a_502_naming_the_unknown_issuer() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let gateway = gateway("  trust: {system_roots: true}\n").await;
    let request = get(&format!("https://localhost:{}/untrusted", origin.address.port()), &[]);
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert_upstream_tls(&gateway, &response, "UnknownIssuer").await;
    assert!(origin.next_connection().await.handshake.is_err(), "the origin saw the handshake fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_a_502() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.other_host, None).await;
    let gateway = gateway(&trust_ca(&pki)).await;
    let request = get(&format!("https://localhost:{}/wrong-name", origin.address.port()), &[]);
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert_upstream_tls(&gateway, &response, "not valid for name \"localhost\"").await;
    assert!(response.json()["error"]["message"].as_str().unwrap().contains("other.test"), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_client_certificate_is_presented_when_the_origin_requires_one() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, Some(&pki.ca)).await;
    let url = format!("https://localhost:{}/mtls", origin.address.port());

    let with_cert = gateway(&format!(
        "{}  client_cert: {{cert: \"{}\", key: \"{}\"}}\n",
        trust_ca(&pki),
        pki.client_cn.pem.display(),
        pki.client_cn.key.display()
    ))
    .await;
    let response = exchange_until_closed(with_cert.proxy, &get(&url, &[])).await;
    assert_eq!((response.status, response.body.as_str()), (200, "tls origin saw /mtls"), "{response:?}");
    let presented = origin.next_connection().await.handshake.expect("the origin accepted the client certificate");
    assert_eq!(presented.as_ref(), Some(&pki.client_cn.der), "the origin saw upstream.client_cert");

    let without_cert = gateway(&trust_ca(&pki)).await;
    let response = exchange_until_closed(without_cert.proxy, &get(&url, &[])).await;
    assert_upstream_tls(&without_cert, &response, "CertificateRequired").await;
    let refused = origin.next_connection().await.handshake.expect_err("the origin refused the handshake");
    assert!(refused.contains("no certificates"), "{refused}");
}
