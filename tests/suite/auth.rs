//! Proxy authentication: 407 with a Basic challenge, malformed credentials, per-request checks on keep-alive
//! connections, nothing sent upstream before authorisation, the failed-attempt throttle, and real curl.

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

const CHALLENGE: &str = "Basic realm=\"tollgate\"";
/// A password with the characters that break naive parsing: the first ':' separates user and password.
const PASSWORD: &str = "pa:ss@wo rd";

/// Users alice and bob (same password), no anonymous access, loopback destinations allowed.
fn config(extra: &str) -> String {
    let hash = hash(PASSWORD);
    format!(
        "auth:\n  anonymous: deny\n  users:\n    - {{name: alice, password_hash: \"{hash}\", teams: [red]}}\n    - {{name: bob, password_hash: \"{hash}\", teams: [blue]}}\n{extra}teams: {{red: {{}}, blue: {{}}}}\n{LOOPBACK_POLICY}"
    )
}

fn get(url: &str, credentials: Option<&str>, close: bool) -> String {
    let mut request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n");
    if let Some(value) = credentials {
        request.push_str(&format!("Proxy-Authorization: {value}\r\n"));
    }
    if close {
        request.push_str("Connection: close\r\n");
    }
    request + "\r\n"
}

fn assert_challenge(response: &Response, context: &str) {
    assert_refused(response, 407, "proxy_auth_required", None, context);
    assert_eq!(response.header("proxy-authenticate").as_deref(), Some(CHALLENGE), "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_malformed_credentials_are_refused() {
    use base64::Engine;
    let b64 = |text: &[u8]| base64::engine::general_purpose::STANDARD.encode(text);
    let origin = Origin::start().await;
    let tripwire = Tripwire::new();
    let gateway = TestGateway::start(&config("server: {max_header_bytes: 256KiB}\n")).await;
    let url = origin.url("/secret");
    let huge = format!("Basic {}", "QUFB".repeat(16 * 1024));
    let refused: Vec<(Option<String>, &str)> = vec![
        (None, "no credentials"),
        (Some(basic("alice", "wrong")), "wrong password"),
        (Some(basic("alice", "pa")), "password cut at the second ':'"),
        (Some(basic("alice", "")), "empty password"),
        (Some(basic("mallory", PASSWORD)), "unknown user"),
        (Some(basic("*)(uid=*", PASSWORD)), "LDAP metacharacters"),
        (Some(basic("ALICE", PASSWORD)), "user names are exact"),
        (Some(format!("Basic {}", b64(b"alicepassword"))), "no colon"),
        (Some(format!("Basic {}", b64(format!(":{PASSWORD}").as_bytes()))), "empty user"),
        (Some("Basic !!!not-base64!!!".to_owned()), "bad base64"),
        (Some("Basic".to_owned()), "no token"),
        (Some("Basic ".to_owned()), "empty token"),
        (Some(format!("Basic {}", b64(b"alice\xff\xfe:x"))), "credentials not UTF-8"),
        (Some(format!("Bearer {}", b64(format!("alice:{PASSWORD}").as_bytes()))), "another scheme"),
        (Some(huge.clone()), "64 KiB token"),
    ];
    for (credentials, context) in &refused {
        let response = exchange_until_closed(gateway.proxy, get(&url, credentials.as_deref(), true).as_bytes()).await;
        assert_challenge(&response, context);
        let authority = format!("127.0.0.1:{}", tripwire.address.port());
        let header = credentials.as_ref().map(|c| format!("Proxy-Authorization: {c}"));
        let mut headers: Vec<&str> = header.iter().map(String::as_str).collect();
        headers.push("Connection: close");
        let response = exchange_until_closed(gateway.proxy, connect_request(&authority, &headers).as_bytes()).await;
        assert_challenge(&response, &format!("CONNECT, {context}"));
        tripwire.assert_untouched();
    }
    // Raw bytes that are not UTF-8 in the header value itself.
    let mut request = format!("GET {url} HTTP/1.1\r\nConnection: close\r\nProxy-Authorization: Basic ").into_bytes();
    request.extend_from_slice(b"\xff\xfe\r\n\r\n");
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert!(response.status == 407 || response.status == 400, "{response:?}");
    assert_eq!(origin.connection_count(), 0, "nothing reaches the origin without credentials");

    // The scheme is case-insensitive; the right password works.
    let good = format!("bAsIc {}", b64(format!("alice:{PASSWORD}").as_bytes()));
    let response = exchange_until_closed(gateway.proxy, get(&url, Some(&good), true).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");

    let none = gateway.metric("tollgate_auth_failures_total{method=\"none\"}").await;
    let basic_failures = gateway.metric("tollgate_auth_failures_total{method=\"basic\"}").await;
    assert_eq!(none, 2.0);
    assert_eq!(basic_failures, 2.0 * (refused.len() - 1) as f64 + 1.0);
    let audit = gateway.audit().await;
    assert_eq!(audit.len(), 2 * refused.len() + 2);
    for record in &audit[..audit.len() - 1] {
        assert_eq!(record["status"], 407, "{record}");
        assert_eq!(record["decision"], "deny", "{record}");
        assert!(record["user"].is_null(), "a refused caller is nobody: {record}");
    }
    assert_eq!(audit.last().unwrap()["user"], "alice");
    assert_eq!(audit.last().unwrap()["team"], "red");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_deny_with_good_credentials_is_403_not_407() {
    let tripwire = Tripwire::new();
    let gateway = TestGateway::start(&config("")).await;
    let credentials = basic("alice", PASSWORD);
    let header = format!("Proxy-Authorization: {credentials}");
    for authority in ["10.0.0.1:443".to_owned(), "blocked.example:443".to_owned()] {
        let response = exchange_until_closed(gateway.proxy, connect_request(&authority, &[&header]).as_bytes()).await;
        assert_eq!(response.status, 403, "{authority}: {response:?}");
        assert!(response.header("proxy-authenticate").is_none(), "{response:?}");
    }
    let url = format!("http://blocked.example:{}/", tripwire.address.port());
    let response = exchange_until_closed(gateway.proxy, get(&url, Some(&credentials), true).as_bytes()).await;
    assert_refused(&response, 403, "default", Some("policy.default"), &url);
    // Without credentials the same request is a 407: identity comes before policy.
    let response = exchange_until_closed(gateway.proxy, get(&url, None, true).as_bytes()).await;
    assert_challenge(&response, "no credentials");
    tripwire.assert_untouched();
    let audit = gateway.audit().await;
    assert_eq!(audit.iter().filter(|r| r["user"] == "alice" && r["status"] == 403).count(), 3, "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_on_every_request_of_a_connection() {
    let origin = Origin::start().await;
    let echo = Echo::start().await;
    let gateway = TestGateway::start(&config("")).await;
    let alice = basic("alice", PASSWORD);
    let bob = basic("bob", PASSWORD);
    let wrong = basic("alice", "wrong");
    let mut client = TcpStream::connect(gateway.proxy).await.unwrap();
    let (alice, bob, wrong) = (alice.as_str(), bob.as_str(), wrong.as_str());
    let steps =
        [(Some(alice), 200), (Some(wrong), 407), (None, 407), (Some(bob), 200), (Some(wrong), 407), (Some(alice), 200)];
    for (i, (credentials, status)) in steps.iter().enumerate() {
        client.write_all(get(&origin.url(&format!("/{i}")), *credentials, false).as_bytes()).await.unwrap();
        let response = read_response(&mut client).await;
        assert_eq!(response.status, *status, "step {i}: {response:?}");
        if *status == 407 {
            assert_challenge(&response, &format!("step {i}"));
        }
    }
    // A refused CONNECT with nothing pipelined keeps the connection: the client retries with credentials.
    let authority = format!("127.0.0.1:{}", echo.address.port());
    client.write_all(connect_request(&authority, &[]).as_bytes()).await.unwrap();
    let response = read_response(&mut client).await;
    assert_challenge(&response, "CONNECT without credentials");
    assert_eq!(echo.connection_count(), 0);
    let header = format!("Proxy-Authorization: {bob}");
    client.write_all(connect_request(&authority, &[&header]).as_bytes()).await.unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 200, "{response:?}");
    client.write_all(b"tunnelled").await.unwrap();
    assert_eq!(read_exact_bytes(&mut client, 9).await, b"tunnelled");
    drop(client);

    let heads = origin.request_heads();
    let paths: Vec<&str> = heads.iter().map(|h| h.split(' ').nth(1).unwrap()).collect();
    assert_eq!(paths, ["/0", "/3", "/5"], "only authenticated requests reached the origin");
    assert!(heads.iter().all(|h| !h.to_ascii_lowercase().contains("proxy-authorization")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pipelined_after_connect_wait_for_authorisation() {
    let echo = Echo::start().await;
    let mut gateway = TestGateway::start(&config("")).await;
    let authority = format!("127.0.0.1:{}", echo.address.port());

    // No credentials: 407, the connection is closed (the pipelined bytes were meant for a tunnel), nothing sent.
    let mut request = connect_request(&authority, &[]).into_bytes();
    request.extend_from_slice(b"HELLO");
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert_challenge(&response, "pipelined CONNECT without credentials");
    // Wrong credentials, same.
    let mut request =
        connect_request(&authority, &[&format!("Proxy-Authorization: {}", basic("alice", "x"))]).into_bytes();
    request.extend_from_slice(b"HELLO");
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert_challenge(&response, "pipelined CONNECT with a wrong password");
    assert_eq!(echo.connection_count(), 0);
    assert!(echo.received.lock().unwrap().is_empty());
    // Good credentials, denied destination: 403, nothing sent anywhere.
    let header = format!("Proxy-Authorization: {}", basic("alice", PASSWORD));
    let mut request = connect_request("blocked.example:443", &[&header]).into_bytes();
    request.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert_refused(&response, 403, "default", Some("policy.default"), "pipelined CONNECT to a denied host");

    // Good credentials: the pipelined bytes follow the 200 through the tunnel.
    let mut request = connect_request(&authority, &[&header]).into_bytes();
    request.extend_from_slice(b"HELLO");
    let (mut tunnel, response) = exchange_keep(gateway.proxy, &request).await;
    assert_eq!(response.head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    let mut echoed = response.body.into_bytes();
    echoed.extend(read_exact_bytes(&mut tunnel, 5 - echoed.len()).await);
    assert_eq!(echoed, b"HELLO");
    tunnel.shutdown().await.unwrap();
    assert!(closed_by_peer(&mut tunnel).await);
    // The echo server accepts in order: had a refused CONNECT dialled, it would be counted before this one.
    assert_eq!(echo.connection_count(), 1, "only the authorised CONNECT reached the echo server");
    assert_eq!(&*echo.received.lock().unwrap(), b"HELLO");
    let audit = gateway.shutdown_and_audit().await;
    assert_eq!(audit.len(), 4);
    assert_eq!(audit[3]["bytes_up"], 5);
    assert_eq!(audit[3]["bytes_down"], 5);
    assert_eq!(audit[3]["user"], "alice");
}

fn current_minute() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_are_throttled() {
    let origin = Origin::start().await;
    let url = origin.url("/");
    // The limit counts per wall-clock minute: a run that straddles a minute boundary is repeated once.
    for attempt in 0..2 {
        let started = current_minute();
        let gateway = TestGateway::start(&config("  failed_auth_limit: {per_minute: 3}\n")).await;
        let mut responses = Vec::new();
        for password in ["w1", "w2", "w3", "w4", PASSWORD] {
            let request = get(&url, Some(&basic("alice", password)), true);
            responses.push(exchange_until_closed(gateway.proxy, request.as_bytes()).await);
        }
        let header = format!("Proxy-Authorization: {}", basic("bob", PASSWORD));
        let connect = connect_request(&format!("127.0.0.1:{}", origin.address.port()), &[&header]);
        responses.push(exchange_until_closed(gateway.proxy, connect.as_bytes()).await);
        if current_minute() != started && attempt == 0 {
            continue;
        }
        for (i, response) in responses[..3].iter().enumerate() {
            assert_challenge(response, &format!("failure {i}"));
        }
        for (i, response) in responses[3..].iter().enumerate() {
            assert_refused(response, 429, "auth_throttled", None, &format!("attempt {} after the limit", i + 3));
            let retry: u64 = response.header("retry-after").expect("retry-after").parse().expect("seconds");
            assert!((1..=60).contains(&retry), "{retry}");
        }
        assert_eq!(origin.connection_count(), 0, "even the right password waits out the throttle");
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_authenticates_through_the_proxy() {
    let origin = Origin::start().await;
    let mut gateway = TestGateway::start(&config("")).await;
    let proxy = format!("http://alice:pa%3Ass%40wo%20rd@{}", gateway.proxy);
    let (code, out, err) = curl(&["-x", &proxy, &origin.url("/plain")]).await;
    assert_eq!((code, out.as_str()), (0, "origin saw /plain"), "{err}");
    // The same through a CONNECT tunnel, credentials given separately (curl splits at the first ':').
    let bare = format!("http://{}", gateway.proxy);
    let user = format!("bob:{PASSWORD}");
    let (code, out, err) = curl(&["-p", "-x", &bare, "--proxy-user", &user, &origin.url("/tunnelled")]).await;
    assert_eq!((code, out.as_str()), (0, "origin saw /tunnelled"), "{err}");
    // Wrong password: a 407 for plain HTTP, a failed tunnel for CONNECT.
    let wrong = format!("http://alice:nope@{}", gateway.proxy);
    let (code, out, err) = curl(&["-x", &wrong, "-o", "/dev/null", "-w", "%{http_code}", &origin.url("/x")]).await;
    assert_eq!((code, out.as_str()), (0, "407"), "{err}");
    let (code, _, err) = curl(&["-p", "-x", &wrong, &origin.url("/x")]).await;
    assert_ne!(code, 0);
    assert!(err.contains("407"), "{err}");
    let heads = origin.request_heads();
    assert_eq!(heads.len(), 2, "{heads:#?}");
    assert!(heads.iter().all(|h| !h.to_ascii_lowercase().contains("proxy-authorization")), "{heads:#?}");
    let audit = gateway.shutdown_and_audit().await;
    let users: Vec<_> = audit.iter().map(|r| r["user"].clone()).collect();
    assert!(users.contains(&"alice".into()) && users.contains(&"bob".into()), "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_of_a_refused_request_is_never_read_as_a_request() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&config("")).await;
    // The body is a complete request with good credentials: were it read as the next request, it would pass.
    let smuggled = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        origin.url("/smuggled"),
        basic("alice", PASSWORD)
    );
    let request =
        format!("POST {} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{smuggled}", origin.url("/post"), smuggled.len());
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_challenge(&response, "POST without credentials");
    let chunked = format!(
        "POST {} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        origin.url("/post"),
        smuggled.len()
    );
    let response = exchange_until_closed(gateway.proxy, chunked.as_bytes()).await;
    assert_challenge(&response, "chunked POST without credentials");
    assert_eq!(origin.connection_count(), 0);
}
