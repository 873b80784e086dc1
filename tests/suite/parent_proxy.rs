//! `upstream.parent_proxy`: a child tollgate sends CONNECT and `http://` requests through a parent tollgate
//! (which requires Basic credentials), refusals by the parent are a 502 naming them, and
//! `parent_proxy_bypass` goes direct.

use crate::common;

use std::net::SocketAddr;

use common::pki::Pki;
use common::tls::{get, TlsOrigin};
use common::{
    exchange_keep, exchange_until_closed, hash, read_exact_bytes, Echo, Origin, TestGateway, LOOPBACK_POLICY,
};
use tokio::io::AsyncWriteExt;

/// A parent on a plain listener: user `relay` / `secret` (team `egress`), no anonymous access.
async fn parent() -> TestGateway {
    TestGateway::start(&format!(
        "auth:\n  anonymous: deny\n  users:\n    - {{name: relay, password_hash: \"{}\", teams: [egress]}}\nteams: {{egress: {{}}}}\n{LOOPBACK_POLICY}",
        hash("secret")
    ))
    .await
}

/// A child whose `upstream:` block is `upstream`; clients reach it anonymously as `dev`.
async fn child(upstream: &str) -> TestGateway {
    TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}upstream:\n{upstream}")).await
}

fn via(parent: SocketAddr, password: &str) -> String {
    format!("  parent_proxy: \"http://relay:{password}@{parent}\"\n")
}

/// Opens a tunnel through `proxy` to `echo` and checks bytes come back.
async fn echo_through(proxy: SocketAddr, echo: &Echo) {
    let authority = echo.address.to_string();
    let (mut stream, response) = exchange_keep(proxy, common::connect_request(&authority, &[]).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    stream.write_all(b"ping through").await.unwrap();
    assert_eq!(read_exact_bytes(&mut stream, 12).await, b"ping through");
}

fn summary(records: &[serde_json::Value]) -> Vec<(String, String, u64)> {
    records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["user"].as_str().unwrap_or("-").to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_http_go_through_the_parent_with_its_credentials() {
    let (echo, origin) = (Echo::start().await, Origin::start().await);
    let mut parent = parent().await;
    let mut child = child(&via(parent.proxy, "secret")).await;

    echo_through(child.proxy, &echo).await;
    let response = exchange_until_closed(child.proxy, &get(&origin.url("/via-parent?q=1"), &[])).await;
    assert_eq!((response.status, response.body.as_str()), (200, "origin saw /via-parent?q=1"), "{response:?}");

    let heads = origin.request_heads();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].starts_with("GET /via-parent?q=1 HTTP/1.1\r\n"), "origin-form at the origin: {heads:?}");
    assert!(!heads[0].to_ascii_lowercase().contains("proxy-authorization"), "{heads:?}");

    let child_records = child.shutdown_and_audit().await;
    let parent_records = parent.shutdown_and_audit().await;
    let mut child_seen = summary(&child_records);
    child_seen.sort();
    assert_eq!(child_seen, [("connect".into(), "dev".into(), 200), ("http".into(), "dev".into(), 200)]);
    for record in &child_records {
        assert_eq!(record["upstream"].as_str(), Some(parent.proxy.to_string().as_str()), "{record}");
    }
    let mut parent_seen = summary(&parent_records);
    parent_seen.sort();
    assert_eq!(
        parent_seen,
        [("connect".into(), "relay".into(), 200), ("http".into(), "relay".into(), 200)],
        "the parent authenticated the child: {parent_records:#?}"
    );
    for record in &parent_records {
        assert_eq!(record["team"], "egress");
        assert_eq!(record["host"], "127.0.0.1");
    }
    assert!(parent_records.iter().any(|r| r["path"] == "/via-parent"), "no query in a record: {parent_records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_parent_credentials_are_a_502_naming_the_407() {
    let (echo, origin) = (Echo::start().await, Origin::start().await);
    let mut parent = parent().await;
    let child = child(&via(parent.proxy, "wrong")).await;

    let request = common::connect_request(&echo.address.to_string(), &[]);
    let response = exchange_until_closed(child.proxy, request.as_bytes()).await;
    common::assert_refused(&response, 502, "parent_proxy_refused", None, "CONNECT");
    let message = response.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("407"), "{message}");
    assert!(!message.contains("wrong"), "the parent password is not shown: {message}");

    // An http:// request the parent refuses is the child's 502 too, not the parent's 407 challenge.
    let response = exchange_until_closed(child.proxy, &get(&origin.url("/refused"), &[])).await;
    common::assert_refused(&response, 502, "parent_proxy_refused", None, "http://");
    assert!(response.header("proxy-authenticate").is_none(), "{response:?}");
    assert!(response.json()["error"]["message"].as_str().unwrap().contains("407"), "{response:?}");

    assert_eq!((echo.connection_count(), origin.connection_count()), (0, 0));
    let records = child.audit().await;
    assert!(records.iter().all(|r| r["status"] == 502 && r["decision"] == "error"), "{records:#?}");
    let parent_records = parent.shutdown_and_audit().await;
    assert_eq!(parent_records.len(), 2, "{parent_records:#?}");
    assert!(parent_records.iter().all(|r| r["status"] == 407 && r["decision"] == "deny"), "{parent_records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypassed_destinations_never_reach_the_parent() {
    let (echo, origin) = (Echo::start().await, Origin::start().await);
    let mut parent = parent().await;
    let mut child = child(&format!("{}  parent_proxy_bypass: [\"127.0.0.1\"]\n", via(parent.proxy, "secret"))).await;

    echo_through(child.proxy, &echo).await;
    let response = exchange_until_closed(child.proxy, &get(&origin.url("/direct"), &[])).await;
    assert_eq!((response.status, response.body.as_str()), (200, "origin saw /direct"), "{response:?}");

    let child_records = child.shutdown_and_audit().await;
    assert_eq!(child_records.len(), 2);
    let upstreams: Vec<_> = child_records.iter().map(|r| r["upstream"].as_str().unwrap().to_owned()).collect();
    assert!(upstreams.contains(&echo.address.to_string()) && upstreams.contains(&origin.address.to_string()));
    assert!(parent.shutdown_and_audit().await.is_empty(), "the parent saw nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_parent_proxy_is_reached_over_tls() {
    let pki = Pki::new();
    let (echo, origin) = (Echo::start().await, Origin::start().await);
    let mut parent = TestGateway::start_full(&format!(
        "listeners:\n  - {{name: parent-tls, bind: \"127.0.0.1:0\", tls: {{cert: \"{}\", key: \"{}\"}}}}\n\
         auth:\n  anonymous: deny\n  users:\n    - {{name: relay, password_hash: \"{}\", teams: [egress]}}\nteams: {{egress: {{}}}}\n{LOOPBACK_POLICY}",
        pki.server.pem.display(),
        pki.server.key.display(),
        hash("secret")
    ))
    .await;
    let port = parent.listener("parent-tls").port();
    let mut child = child(&format!(
        "  parent_proxy: \"https://relay:secret@localhost:{port}\"\n  trust: {{system_roots: false, extra_ca: [\"{}\"]}}\n",
        pki.ca.pem.display()
    ))
    .await;

    echo_through(child.proxy, &echo).await;
    let response = exchange_until_closed(child.proxy, &get(&origin.url("/via-tls-parent"), &[])).await;
    assert_eq!((response.status, response.body.as_str()), (200, "origin saw /via-tls-parent"), "{response:?}");

    child.shutdown_and_audit().await;
    let parent_records = parent.shutdown_and_audit().await;
    let mut seen = summary(&parent_records);
    seen.sort();
    assert_eq!(seen, [("connect".into(), "relay".into(), 200), ("http".into(), "relay".into(), 200)]);
    assert!(parent_records.iter().all(|r| r["listener"] == "parent-tls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_tunnel_through_the_parent_and_verify_the_origin() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let mut parent = parent().await;
    let mut child = child(&format!(
        "{}  trust: {{system_roots: false, extra_ca: [\"{}\"]}}\n",
        via(parent.proxy, "secret"),
        pki.ca.pem.display()
    ))
    .await;

    let url = format!("https://localhost:{}/secure-via-parent", origin.address.port());
    let response = exchange_until_closed(child.proxy, &get(&url, &[])).await;
    assert_eq!((response.status, response.body.as_str()), (200, "tls origin saw /secure-via-parent"), "{response:?}");
    assert!(origin.next_connection().await.handshake.is_ok());

    child.shutdown_and_audit().await;
    let parent_records = parent.shutdown_and_audit().await;
    assert_eq!(summary(&parent_records), [("connect".into(), "relay".into(), 200)], "{parent_records:#?}");
    assert_eq!(parent_records[0]["host"], "localhost");
}
