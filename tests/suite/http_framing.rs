//! Forwarded HTTP/1.1: what reaches the origin (no hop-by-hop or proxy headers, `Host` from the URI), strict
//! request framing (smuggling shapes are a 400 and a closed connection, the origin untouched), size limits,
//! the header-read timeout, keep-alive with a pooled upstream, and CONNECT tunnels both ways with half-close.

use crate::common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

fn loopback() -> String {
    format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}")
}

/// The header names in a request head as the origin received it, lowercased.
fn header_names(head: &str) -> Vec<String> {
    head.lines().skip(1).filter_map(|line| line.split_once(':')).map(|(name, _)| name.to_ascii_lowercase()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_proxy_headers_never_reach_the_origin() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&format!(
        "auth:\n  anonymous: deny\n  users: [{{name: alice, password_hash: \"{}\", teams: [dev]}}]\nteams: {{dev: {{}}}}\n{LOOPBACK_POLICY}",
        hash("alice-pw")
    ))
    .await;
    let credentials = basic("alice", "alice-pw");
    let request = format!(
        "GET {} HTTP/1.1\r\n\
         Host: evil.example\r\n\
         Proxy-Authorization: {credentials}\r\n\
         Connection: keep-alive, X-Named-Hop, x-other-named\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: websocket\r\n\
         Proxy-Authenticate: Basic realm=\"x\"\r\n\
         X-Named-Hop: secret-1\r\n\
         X-Other-Named: secret-2\r\n\
         X-Tollgate-User: mallory\r\n\
         X-End-To-End: kept\r\n\
         Accept: */*\r\n\
         \r\n",
        origin.url("/first")
    );
    let (mut client, response) = exchange_keep(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, "origin saw /first");
    // The second request names no host at all and asks to close.
    let request = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {credentials}\r\nConnection: close\r\n\r\n",
        origin.url("/second?q=1")
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, "origin saw /second?q=1");

    let heads = origin.request_heads();
    assert_eq!(heads.len(), 2, "{heads:#?}");
    let host = format!("127.0.0.1:{}", origin.address.port());
    for head in &heads {
        let names = header_names(head);
        for banned in [
            "proxy-authorization",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "proxy-authenticate",
            "x-named-hop",
            "x-other-named",
            "x-tollgate-user",
        ] {
            assert!(!names.iter().any(|n| n == banned), "{banned} reached the origin:\n{head}");
        }
        let credentials_value = credentials.strip_prefix("Basic ").unwrap();
        assert!(!head.contains(credentials_value) && !head.contains("alice-pw"), "credentials leaked:\n{head}");
        assert!(!head.contains("evil.example") && !head.contains("secret-"), "{head}");
        let hosts: Vec<&str> = head.lines().filter(|l| l.to_ascii_lowercase().starts_with("host:")).collect();
        assert_eq!(hosts, [format!("Host: {host}")], "Host comes from the absolute URI:\n{head}");
    }
    // The client's Connection header stays behind; only the gateway's own `close` travels, when asked to close.
    assert!(!header_names(&heads[0]).iter().any(|n| n == "connection"), "{}", heads[0]);
    let connection: Vec<&str> =
        heads[1].lines().filter(|l| l.to_ascii_lowercase().starts_with("connection:")).collect();
    assert_eq!(connection, ["Connection: close"], "{}", heads[1]);
    assert!(heads[0].starts_with("GET /first HTTP/1.1\r\n"), "origin-form upstream: {}", heads[0]);
    assert!(heads[0].contains("\r\nX-End-To-End: kept\r\n") && heads[0].contains("\r\nAccept: */*\r\n"));
    assert!(heads[1].starts_with("GET /second?q=1 HTTP/1.1\r\n"), "{}", heads[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_the_framing_headers() {
    let capture = Capture::start(b"0\r\n\r\n").await;
    let gateway = TestGateway::start(&loopback()).await;
    let request = format!(
        "POST http://127.0.0.1:{}/upload HTTP/1.1\r\nHost: x\r\nConnection: transfer-encoding, close\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        capture.address.port()
    );
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let received = capture.received().await;
    let (head, body) = received.split_once("\r\n\r\n").expect("a complete head");
    assert!(head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked")), "{received}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{received}");
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n");

    // Nor Content-Length.
    let origin = Origin::start().await;
    let request = format!(
        "POST {} HTTP/1.1\r\nConnection: content-length, close\r\nContent-Length: 5\r\n\r\nhello",
        origin.url("/cl")
    );
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let heads = origin.request_heads();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].contains("\r\nContent-Length: 5\r\n"), "{}", heads[0]);
    assert!(heads[0].ends_with("\r\n\r\nhello"), "{}", heads[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_400_and_close_without_touching_the_origin() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&loopback()).await;
    let url = origin.url("/smuggle");
    let requests = [
        format!("POST {url} HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("POST {url} HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        format!("POST {url} HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello"),
        format!("POST {url} HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello"),
        format!("POST {url} HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("GET {url} HTTP/1.1\nHost: x\n\n"),
        format!("GET {url} HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nX-A: b\r\n\n"),
        format!("GET {url} HTTP/1.1\r\nX-A: a\rb\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nX-A: a\0b\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nX-Folded: a\r\n\tb\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\n X-Leading: space\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nHost : x\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nX-A : b\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nNo-Colon\r\n\r\n"),
        format!("GET {url} HTTP/2.0\r\n\r\n"),
        format!("GET {url} HTTP/1.2\r\n\r\n"),
        format!("GET  {url} HTTP/1.1\r\n\r\n"),
        format!("GET {url}  HTTP/1.1\r\n\r\n"),
        format!("GET {url}\r\n\r\n"),
        format!("G(T {url} HTTP/1.1\r\n\r\n"),
    ];
    for request in &requests {
        let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
        assert_refused(&response, 400, "bad_request", None, request);
        assert_eq!(response.header("connection").as_deref(), Some("close"), "{request:?}");
    }
    assert_eq!(origin.connection_count(), 0, "a malformed request reached the origin");
    let sample = "tollgate_client_errors_total{listener=\"proxy\",reason=\"bad_request\"}";
    assert_eq!(gateway.metric(sample).await, requests.len() as f64);
    let audit = gateway.audit().await;
    assert_eq!(audit.len(), requests.len());
    assert!(audit.iter().all(|r| r["status"] == 400 && r["decision"] == "error"), "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_400_and_closes() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&loopback()).await;
    let request =
        format!("POST {} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", origin.url("/bad"));
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_refused(&response, 400, "bad_request", None, "bad chunk size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_431_and_long_uris_414() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&loopback()).await;
    let url = origin.url("/");

    // Default limits: a 64 KiB head. Exactly one byte too many, still unterminated.
    let mut head = format!("GET {url} HTTP/1.1\r\nX-Big: ").into_bytes();
    head.resize(64 * 1024 + 1, b'a');
    let response = exchange_until_closed(gateway.proxy, &head).await;
    assert_refused(&response, 431, "headers_too_large", None, "64 KiB + 1 head");

    // More than 100 headers; exactly 100 are fine.
    let many = |n: usize| {
        let mut request = format!("GET {url} HTTP/1.1\r\nConnection: close\r\n");
        for i in 1..n {
            request.push_str(&format!("X-H{i}: v\r\n"));
        }
        request + "\r\n"
    };
    let response = exchange_until_closed(gateway.proxy, many(101).as_bytes()).await;
    assert_refused(&response, 431, "headers_too_large", None, "101 headers");
    let response = exchange_until_closed(gateway.proxy, many(100).as_bytes()).await;
    assert_eq!(response.status, 200, "100 headers are allowed: {response:?}");

    // A request target one byte over the default 8 KiB, in a complete head.
    let long = format!("{url}{}", "a".repeat(8 * 1024 + 1 - url.len()));
    assert_eq!(long.len(), 8 * 1024 + 1);
    let response = exchange_until_closed(gateway.proxy, format!("GET {long} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert_refused(&response, 414, "uri_too_long", None, "8 KiB + 1 URI");
    // A request line that never ends.
    let mut line = format!("GET {url}").into_bytes();
    line.resize(8 * 1024 + 33, b'a');
    let response = exchange_until_closed(gateway.proxy, &line).await;
    assert_refused(&response, 414, "uri_too_long", None, "unterminated request line");
    let at_limit = format!("{url}{}", "a".repeat(8 * 1024 - url.len()));
    let response = exchange_until_closed(
        gateway.proxy,
        format!("GET {at_limit} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200, "a URI of exactly max_uri_bytes is allowed: {response:?}");
    assert_eq!(origin.request_heads().len(), 2, "only the two allowed requests reached the origin");
    for (reason, count) in [("headers_too_large", 2.0), ("uri_too_long", 2.0)] {
        let sample = format!("tollgate_client_errors_total{{listener=\"proxy\",reason=\"{reason}\"}}");
        assert_eq!(gateway.metric(&sample).await, count, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_head_over_the_limit_is_431_however_it_arrives() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&format!(
        "auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}server: {{max_header_bytes: 2KiB, max_uri_bytes: 1KiB}}\n"
    ))
    .await;
    // One write, one read: the terminator arrives together with the excess.
    let mut request = format!("GET {} HTTP/1.1\r\nConnection: close\r\nX-Big: ", origin.url("/")).into_bytes();
    request.resize(3000, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert_refused(&response, 431, "headers_too_large", None, "3000-byte head, limit 2 KiB");
    assert_eq!(origin.connection_count(), 0);
    // Just under the limit is fine.
    let mut request = format!("GET {} HTTP/1.1\r\nConnection: close\r\nX-Big: ", origin.url("/")).into_bytes();
    request.resize(2048 - 4, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let response = exchange_until_closed(gateway.proxy, &request).await;
    assert_eq!(response.status, 200, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_sender_gets_408_and_is_closed() {
    let gateway = TestGateway::start(&format!(
        "auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}server: {{header_read_timeout: 300ms}}\n"
    ))
    .await;
    let mut client = TcpStream::connect(gateway.proxy).await.unwrap();
    client.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let response = read_response(&mut client).await;
    assert_refused(&response, 408, "header_timeout", None, "half a head");
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    assert!(closed_by_peer(&mut client).await);
    let sample = "tollgate_client_errors_total{listener=\"proxy\",reason=\"header_timeout\"}";
    assert_eq!(gateway.metric(sample).await, 1.0);

    // A connection that sends nothing at all is closed the same way.
    let mut silent = TcpStream::connect(gateway.proxy).await.unwrap();
    let response = read_response(&mut silent).await;
    assert_eq!(response.status, 408, "{response:?}");
    assert!(closed_by_peer(&mut silent).await);
    assert_eq!(gateway.metric(sample).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_header_sender_cannot_extend_the_deadline() {
    let gateway = TestGateway::start(&format!(
        "auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}server: {{header_read_timeout: 300ms}}\n"
    ))
    .await;
    let client = TcpStream::connect(gateway.proxy).await.unwrap();
    let (mut reader, mut writer) = client.into_split();
    writer.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\n").await.unwrap();
    // One byte every 20 ms: each read is quick, only a deadline on the whole head stops this. The pacing is the
    // attack, not synchronisation; the response (or its absence within 20 s) is what is asserted.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        for _ in 0..1000 {
            tick.tick().await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut received = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), reader.read_to_end(&mut received)).await;
    trickle.abort();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408 "), "a trickled head must time out as a whole: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_one_upstream_connection() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&loopback()).await;
    let mut client = TcpStream::connect(gateway.proxy).await.unwrap();
    for path in ["/one", "/two"] {
        let request = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url(path));
        client.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut client).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body, format!("origin saw {path}"));
        assert_eq!(response.header("x-origin").as_deref(), Some("yes"));
    }
    // Pipelined: two requests in one write, answered in order.
    let pipelined =
        format!("GET {} HTTP/1.1\r\n\r\nGET {} HTTP/1.1\r\n\r\n", origin.url("/three"), origin.url("/four"));
    client.write_all(pipelined.as_bytes()).await.unwrap();
    let mut both = Vec::new();
    while find(&both, b"origin saw /four").is_none() {
        let mut chunk = [0u8; 4096];
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(20), client.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before both pipelined responses: {}", String::from_utf8_lossy(&both));
        both.extend_from_slice(&chunk[..n]);
    }
    let both = String::from_utf8(both).unwrap();
    assert!(both.starts_with("HTTP/1.1 200 OK\r\n"), "{both}");
    assert!(both.find("origin saw /three").unwrap() < both.find("origin saw /four").unwrap(), "{both}");
    assert!(both.ends_with("origin saw /four"), "{both}");
    // The upstream connection goes back to the pool after the response is relayed. A refused request on the same
    // client connection is read only after that, so its answer shows the pool holds the connection again.
    client.write_all(b"GET http://blocked.example/ HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut client).await.status, 403);
    // A second client connection takes the pooled upstream connection.
    let (mut other, response) =
        exchange_keep(gateway.proxy, format!("GET {} HTTP/1.1\r\n\r\n", origin.url("/five")).as_bytes()).await;
    assert_eq!(response.body, "origin saw /five");
    assert_eq!(origin.connection_count(), 1, "one upstream connection for five requests");

    for (stream, path) in [(&mut client, "/six"), (&mut other, "/seven")] {
        stream
            .write_all(format!("GET {} HTTP/1.1\r\nConnection: close\r\n\r\n", origin.url(path)).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_response(stream).await.body, format!("origin saw {path}"));
        assert!(closed_by_peer(stream).await);
    }
    let audit = gateway.audit().await;
    // Records of different client connections may interleave either way: compare them sorted.
    let mut outcomes: Vec<_> =
        audit.iter().map(|r| (r["path"].as_str().unwrap().to_owned(), r["status"].as_u64().unwrap())).collect();
    outcomes.sort();
    let expected = [
        ("/", 403),
        ("/five", 200),
        ("/four", 200),
        ("/one", 200),
        ("/seven", 200),
        ("/six", 200),
        ("/three", 200),
        ("/two", 200),
    ];
    assert_eq!(outcomes, expected.map(|(p, s)| (p.to_owned(), s)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_told_to_close_is_not_reused() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&loopback()).await;
    for path in ["/a", "/b"] {
        let request = format!("GET {} HTTP/1.1\r\nConnection: close\r\n\r\n", origin.url(path));
        let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
        assert_eq!(response.body, format!("origin saw {path}"));
    }
    let heads = origin.request_heads();
    assert!(heads.iter().all(|h| h.contains("\r\nConnection: close\r\n")), "{heads:#?}");
    // The gateway said it would close each upstream connection (this origin keeps it open anyway): no reuse.
    assert_eq!(origin.connection_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_relays_both_ways_and_half_closes() {
    let echo = Echo::start().await;
    let mut gateway = TestGateway::start(&loopback()).await;
    let authority = format!("127.0.0.1:{}", echo.address.port());
    let (tunnel, response) = exchange_keep(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert!(response.body.is_empty());

    // 1 MiB up while reading the echo down, then half-close: the echo of everything still arrives.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = tunnel.into_split();
    let sent = payload.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
        writer
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), reader.read_to_end(&mut echoed))
        .await
        .expect("tunnel closes after the half-close")
        .unwrap();
    let _writer = writing.await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the echo differs from what was sent");

    let audit = gateway.shutdown_and_audit().await;
    assert_eq!(audit.len(), 1);
    let record = &audit[0];
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes_up"], payload.len());
    assert_eq!(record["bytes_down"], payload.len());
    assert_eq!(record["upstream"], echo.address.to_string());
    assert!(record["error"].is_null(), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_both_framings_reaches_the_client_with_one() {
    // RFC 9112 §6.3: Transfer-Encoding wins, and an intermediary removes Content-Length before forwarding.
    let origin = scripted_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let gateway = TestGateway::start(&loopback()).await;
    let request = format!("GET http://{origin}/ HTTP/1.1\r\nConnection: close\r\n\r\n");
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("transfer-encoding").as_deref(), Some("chunked"), "{response:?}");
    assert_eq!(response.header("content-length"), None, "both framings reached the client: {response:?}");
    assert_eq!(response.body, "5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_tunnels_are_closed() {
    let echo = Echo::start().await;
    let origin = Origin::start().await;
    let mut gateway = TestGateway::start(&format!(
        "auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}server: {{keepalive_timeout: 300ms}}\nupstream: {{idle_timeout: 300ms}}\n"
    ))
    .await;
    // A keep-alive client that goes quiet after its request.
    let (mut client, response) =
        exchange_keep(gateway.proxy, format!("GET {} HTTP/1.1\r\n\r\n", origin.url("/idle")).as_bytes()).await;
    assert_eq!(response.status, 200);
    assert!(closed_by_peer(&mut client).await, "an idle keep-alive connection is closed");
    // A tunnel nobody speaks on.
    let authority = format!("127.0.0.1:{}", echo.address.port());
    let (mut tunnel, response) = exchange_keep(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_eq!(response.status, 200);
    assert!(closed_by_peer(&mut tunnel).await, "an idle tunnel is closed");
    let audit = gateway.shutdown_and_audit().await;
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1]["kind"], "connect");
    assert_eq!(audit[1]["error"], "idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_with_503() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&format!("{}server: {{max_connections: 1}}\n", loopback())).await;
    // The first connection is accepted and served, and stays open.
    let (mut first, response) =
        exchange_keep(gateway.proxy, format!("GET {} HTTP/1.1\r\n\r\n", origin.url("/first")).as_bytes()).await;
    assert_eq!(response.status, 200);
    let mut second = TcpStream::connect(gateway.proxy).await.unwrap();
    let response = read_response(&mut second).await;
    assert_refused(&response, 503, "connection_limit", None, "second connection");
    assert!(closed_by_peer(&mut second).await);
    assert_eq!(
        gateway.metric("tollgate_client_errors_total{listener=\"proxy\",reason=\"connection_limit\"}").await,
        1.0
    );
    // The first one still works.
    first
        .write_all(format!("GET {} HTTP/1.1\r\nConnection: close\r\n\r\n", origin.url("/again")).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut first).await.body, "origin saw /again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_pass_verbatim_and_end_exactly_where_framed() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&loopback()).await;
    // Four requests in one write: a body framed wrongly by one byte would turn the rest into other requests.
    let chunked_body = "5;ext=\"x\"\r\nhello\r\n1a\r\nGET /smuggled HTTP/1.1\r\n\r\n\r\n0\r\nX-Trailer: t\r\n\r\n";
    let requests = format!(
        "POST {} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}\
         GET {} HTTP/1.1\r\n\r\n\
         POST {} HTTP/1.1\r\nContent-Length: 26\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n\
         GET {} HTTP/1.1\r\nConnection: close\r\n\r\n",
        origin.url("/chunked"),
        origin.url("/after-chunked"),
        origin.url("/length"),
        origin.url("/last")
    );
    let mut client = TcpStream::connect(gateway.proxy).await.unwrap();
    client.write_all(requests.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), client.read_to_end(&mut answers)).await.unwrap().unwrap();
    let answers = String::from_utf8(answers).unwrap();
    let bodies: Vec<&str> =
        answers.match_indices("origin saw /").map(|(i, _)| answers[i..].split('H').next().unwrap()).collect();
    assert_eq!(
        bodies,
        ["origin saw /chunked", "origin saw /after-chunked", "origin saw /length", "origin saw /last"],
        "{answers}"
    );
    let heads = origin.request_heads();
    assert_eq!(heads.len(), 4, "{heads:#?}");
    assert!(heads[0].ends_with(&format!("\r\n\r\n{chunked_body}")), "chunked body verbatim: {:?}", heads[0]);
    assert!(heads[2].ends_with("\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"), "{:?}", heads[2]);
    assert!(heads.iter().all(|h| !h.starts_with("GET /smuggled")), "{heads:#?}");
    assert_eq!(origin.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_and_not_forwarded() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&loopback()).await;
    let mut client = TcpStream::connect(gateway.proxy).await.unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
        origin.url("/put")
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let interim = read_exact_bytes(&mut client, 25).await;
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"data").await.unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.body, "origin saw /put");
    let heads = origin.request_heads();
    assert!(!heads[0].to_ascii_lowercase().contains("expect:"), "{}", heads[0]);
    assert!(heads[0].ends_with("\r\n\r\ndata"), "{}", heads[0]);
}
