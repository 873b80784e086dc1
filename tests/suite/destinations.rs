//! Where requests may go: the private-address guard (on literals and on resolved names), host normalisation,
//! legacy numeric IPv4 forms, ports, self-connections and malformed authorities.
//!
//! Every refusal here must happen before any upstream socket: loopback targets point at a `Tripwire`.

use crate::common;

use common::*;

const PRIVATE_RULE: &str = "policy.private_destinations";

/// Only the private-address guard can deny: the default allows everything else.
const GUARD_ONLY: &str = "auth: {anonymous: dev}\npolicy: {default: allow}\n";

fn get_request(url: &str) -> String {
    format!("GET {url} HTTP/1.1\r\nHost: {url}\r\nConnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_loopback_destinations_are_refused_before_any_socket() {
    let tripwire = Tripwire::new();
    let port = tripwire.address.port();
    let gateway = TestGateway::start(GUARD_ONLY).await;
    let connects = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST.:{port}"),
        format!("0.0.0.0:{port}"),
        format!("[::1]:{port}"),
        format!("[::]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[0:0:0:0:0:ffff:7f00:1]:{port}"),
        format!("[::127.0.0.1]:{port}"),
        "169.254.169.254:80".to_owned(),
        "[::ffff:169.254.169.254]:80".to_owned(),
        "[fd00:ec2::254]:80".to_owned(),
        "100.100.100.200:80".to_owned(),
        "10.1.2.3:443".to_owned(),
        "172.16.0.1:443".to_owned(),
        "192.168.1.1:443".to_owned(),
        "100.64.0.1:443".to_owned(),
        "[fc00::1]:443".to_owned(),
        "[fe80::1]:443".to_owned(),
        "224.0.0.1:443".to_owned(),
        "255.255.255.255:443".to_owned(),
        "[64:ff9b::a9fe:a9fe]:443".to_owned(),
        "[2002:a9fe:a9fe::1]:443".to_owned(),
        "[2001:0:4136:e378::1]:443".to_owned(),
    ];
    let gets = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("https://localhost:{port}/"),
        "https://169.254.169.254/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ];
    let mut ids = Vec::new();
    for authority in &connects {
        let response = exchange_until_closed(gateway.proxy, connect_request(authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "private_address", Some(PRIVATE_RULE), &format!("CONNECT {authority}"));
        tripwire.assert_untouched();
        ids.push((response.header("x-tollgate-request-id").unwrap(), "connect", "CONNECT"));
    }
    for url in &gets {
        let response = exchange_until_closed(gateway.proxy, get_request(url).as_bytes()).await;
        assert_refused(&response, 403, "private_address", Some(PRIVATE_RULE), &format!("GET {url}"));
        tripwire.assert_untouched();
        ids.push((response.header("x-tollgate-request-id").unwrap(), "http", "GET"));
    }

    let audit = gateway.audit().await;
    assert_eq!(audit.len(), ids.len(), "one audit record per refusal: {audit:#?}");
    for (record, (id, kind, method)) in audit.iter().zip(&ids) {
        assert_eq!(record["id"], *id, "{record}");
        assert_eq!(record["kind"], **kind, "{record}");
        assert_eq!(record["method"], **method, "{record}");
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["rule"], PRIVATE_RULE, "{record}");
        assert_eq!(record["status"], 403, "{record}");
        assert_eq!(record["user"], "dev", "{record}");
        assert!(record["upstream"].is_null(), "nothing was dialled: {record}");
    }
    // Literals are recorded canonically: the mapped and the long forms are 127.0.0.1.
    assert_eq!(audit[6]["host"], "127.0.0.1");
    assert_eq!(audit[7]["host"], "127.0.0.1");
    assert_eq!(audit[2]["host"], "localhost");
    let sample =
        "tollgate_requests_total{decision=\"deny\",kind=\"connect\",listener=\"proxy\",reason=\"private_address\"}";
    assert_eq!(gateway.metric(sample).await, connects.len() as f64);
    let sample =
        "tollgate_requests_total{decision=\"deny\",kind=\"http\",listener=\"proxy\",reason=\"private_address\"}";
    assert_eq!(gateway.metric(sample).await, gets.len() as f64);
    tripwire.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_resolving_to_a_private_address_needs_allow_private() {
    let echo = Echo::start().await;
    let tripwire = Tripwire::new();

    // Allowed by name, but the name resolves to loopback: the guard on the resolved address refuses.
    let gateway = TestGateway::start("auth: {anonymous: dev}\npolicy: {default: deny, allow: [localhost]}\n").await;
    for authority in [format!("localhost:{}", tripwire.address.port()), format!("localhost:{}", echo.address.port())] {
        let response = exchange_until_closed(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "private_address", Some(PRIVATE_RULE), &authority);
        assert!(response.json()["error"]["message"].as_str().unwrap().contains("127.0.0.1"), "{response:?}");
    }
    let url = format!("http://localhost:{}/x", tripwire.address.port());
    let response = exchange_until_closed(gateway.proxy, get_request(&url).as_bytes()).await;
    assert_refused(&response, 403, "private_address", Some(PRIVATE_RULE), &url);
    tripwire.assert_untouched();

    // allow_private naming another range does not help.
    let other = TestGateway::start(
        "auth: {anonymous: dev}\npolicy: {default: deny, allow: [localhost], allow_private: [10.0.0.0/8]}\n",
    )
    .await;
    let authority = format!("localhost:{}", tripwire.address.port());
    let response = exchange_until_closed(other.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_refused(&response, 403, "private_address", Some(PRIVATE_RULE), "allow_private for 10/8 only");
    tripwire.assert_untouched();
    assert_eq!(echo.connection_count(), 0);

    // A deny CIDR applies to the resolved address too, even when allow_private covers it.
    let denied = TestGateway::start(
        "auth: {anonymous: dev}\npolicy: {default: deny, allow: [localhost], allow_private: [127.0.0.0/8], deny: [127.0.0.0/8]}\n",
    )
    .await;
    let response = exchange_until_closed(denied.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_refused(&response, 403, "deny_rule", Some("policy.deny[0]"), "deny CIDR on the resolved address");
    tripwire.assert_untouched();

    // With the range opted in, the same name goes through to the echo server.
    let opened = TestGateway::start(
        "auth: {anonymous: dev}\npolicy: {default: deny, allow: [localhost], allow_private: [127.0.0.0/8, \"::1/128\"]}\n",
    )
    .await;
    let authority = format!("localhost:{}", echo.address.port());
    let (mut tunnel, response) = exchange_keep(opened.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    tokio::io::AsyncWriteExt::write_all(&mut tunnel, b"ping").await.unwrap();
    assert_eq!(read_exact_bytes(&mut tunnel, 4).await, b"ping");
    assert_eq!(echo.connection_count(), 1);
    drop(tunnel);
    tripwire.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_are_normalised_before_matching() {
    let gateway =
        TestGateway::start("auth: {anonymous: dev}\npolicy: {default: allow, deny: [api.anthropic.com]}\n").await;
    for authority in
        ["API.Anthropic.COM.:443", "api.anthropic.com.:443", "Api.Anthropic.Com:443", "api.anthropic.com:443"]
    {
        let response = exchange_until_closed(gateway.proxy, connect_request(authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "deny_rule", Some("policy.deny[0]"), authority);
    }
    let response = exchange_until_closed(gateway.proxy, get_request("http://API.ANTHROPIC.COM./v1/x").as_bytes()).await;
    assert_refused(&response, 403, "deny_rule", Some("policy.deny[0]"), "absolute-form");
    for record in gateway.audit().await {
        assert_eq!(record["host"], "api.anthropic.com", "{record}");
        assert_eq!(record["rule"], "policy.deny[0]", "{record}");
    }

    // A suffix glob matches sub-domains only: never the apex, a longer label, or the name inside another domain.
    let gateway = TestGateway::start("auth: {anonymous: dev}\npolicy: {default: deny, deny: [\"*.x.com\"]}\n").await;
    for authority in ["x.com:443", "evilx.com:443", "x.com.evil.net:443", "a.x.com.evil.net:443", "X.COM.:443"] {
        let response = exchange_until_closed(gateway.proxy, connect_request(authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "default", Some("policy.default"), authority);
    }
    for authority in ["a.x.com:443", "A.B.X.COM.:443", "www.x.com:8443"] {
        let response = exchange_until_closed(gateway.proxy, connect_request(authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "deny_rule", Some("policy.deny[0]"), authority);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_numeric_ipv4_forms_never_reach_loopback() {
    let tripwire = Tripwire::new();
    let port = tripwire.address.port();
    let gateway = TestGateway::start(GUARD_ONLY).await;
    let hosts = [
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "127.1",
        "0x7f000001",
        "017700000001",
        "0x7F.0.0.1",
        "127.0.0.1.",
        "127.0.1",
        "0",
        "[::ffff:7f00:1]",
        "１２７.０.０.１",
    ];
    let mut requests = Vec::new();
    for host in hosts {
        requests.push(get_request(&format!("http://{host}:{port}/")));
        requests.push(get_request(&format!("http://{host}:{port}")));
        requests.push(connect_request(&format!("{host}:{port}"), &[]));
    }
    for request in &requests {
        let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
        if response.status == 400 {
            assert_refused(&response, 400, "bad_request", None, request);
        } else {
            assert_refused(&response, 403, "private_address", Some(PRIVATE_RULE), request);
        }
        tripwire.assert_untouched();
    }
    // What was recorded is the address the text means, never the raw text.
    for record in gateway.audit().await {
        if record["status"] == 403 {
            assert!(record["host"] == "127.0.0.1" || record["host"] == "0.0.0.0", "{record}");
        }
    }
    // Malformed numeric hosts are a 400, not a DNS lookup.
    for host in ["127.0.0.256", "0x7g.1", "1.2.3.4.5", "08.1.1.1", "4294967296"] {
        let response =
            exchange_until_closed(gateway.proxy, get_request(&format!("http://{host}:{port}/")).as_bytes()).await;
        assert_refused(&response, 400, "bad_request", None, host);
    }
    tripwire.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ports_are_400_and_policy_ports_are_enforced() {
    let tripwire = Tripwire::new();
    let echo = Echo::start().await;
    let mut gateway = TestGateway::start(&format!(
        "auth: {{anonymous: dev}}\npolicy:\n  default: deny\n  ports: [443]\n  allow_private: [127.0.0.0/8]\n  allow: [localhost, \"127.0.0.1:{}\"]\n",
        echo.address.port()
    ))
    .await;
    for port in ["0", "65536", "-1", "https", "", "99999999999", "+443", " 443", "44 3"] {
        let authority = format!("example.com:{port}");
        let response = exchange_until_closed(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
        assert_refused(&response, 400, "bad_request", None, &authority);
        if !port.contains(' ') {
            let url = format!("http://example.com:{port}/");
            let response = exchange_until_closed(gateway.proxy, get_request(&url).as_bytes()).await;
            assert_refused(&response, 400, "bad_request", None, &url);
        }
    }
    // CONNECT needs a port.
    let response = exchange_until_closed(gateway.proxy, connect_request("example.com", &[]).as_bytes()).await;
    assert_refused(&response, 400, "bad_request", None, "CONNECT without a port");

    // Allowed by a rule without a port, but outside policy.ports.
    for authority in [format!("localhost:{}", tripwire.address.port()), format!("localhost:{}", echo.address.port())] {
        let response = exchange_until_closed(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "port", Some("policy.ports"), &authority);
    }
    let url = format!("http://localhost:{}/", tripwire.address.port());
    let response = exchange_until_closed(gateway.proxy, get_request(&url).as_bytes()).await;
    assert_refused(&response, 403, "port", Some("policy.ports"), &url);
    // A rule naming a port allows that port only.
    let authority = format!("127.0.0.1:{}", tripwire.address.port());
    let response = exchange_until_closed(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_refused(&response, 403, "port", Some("policy.ports"), &authority);
    tripwire.assert_untouched();
    assert_eq!(echo.connection_count(), 0);

    let authority = format!("127.0.0.1:{}", echo.address.port());
    let (mut tunnel, response) = exchange_keep(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    tokio::io::AsyncWriteExt::write_all(&mut tunnel, b"port ok").await.unwrap();
    assert_eq!(read_exact_bytes(&mut tunnel, 7).await, b"port ok");
    tokio::io::AsyncWriteExt::shutdown(&mut tunnel).await.unwrap();
    assert!(closed_by_peer(&mut tunnel).await);
    let audit = gateway.shutdown_and_audit().await;
    let allowed: Vec<_> = audit.iter().filter(|r| r["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 1, "{audit:#?}");
    assert_eq!(allowed[0]["rule"], "policy.allow[1]");
    assert_eq!(echo.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_never_connects_to_itself() {
    let gateway = TestGateway::start(
        "auth: {anonymous: dev}\npolicy: {default: allow, allow_private: [127.0.0.0/8, \"::1/128\"]}\n",
    )
    .await;
    let proxy = gateway.proxy.port();
    let admin = gateway.admin.port();
    for authority in [format!("127.0.0.1:{proxy}"), format!("localhost:{proxy}"), format!("127.0.0.1:{admin}")] {
        let response = exchange_until_closed(gateway.proxy, connect_request(&authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "self_connection", Some("listeners"), &authority);
    }
    let url = format!("http://localhost:{proxy}/loop");
    let response = exchange_until_closed(gateway.proxy, get_request(&url).as_bytes()).await;
    assert_refused(&response, 403, "self_connection", Some("listeners"), &url);
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let response = exchange_until_closed(gateway.proxy, get_request(&url).as_bytes()).await;
    assert_refused(&response, 403, "self_connection", Some("listeners"), &url);

    // With the private-address guard off, only the self-connection check stands between a client and a loop;
    // on Linux 0.0.0.0 reaches a listener bound to 127.0.0.1.
    let open =
        TestGateway::start("auth: {anonymous: dev}\npolicy: {default: allow, private_destinations: allow}\n").await;
    let port = open.proxy.port();
    for authority in
        [format!("0.0.0.0:{port}"), format!("0:{port}"), format!("127.0.0.1:{port}"), format!("[::]:{port}")]
    {
        let response = exchange_until_closed(open.proxy, connect_request(&authority, &[]).as_bytes()).await;
        assert_refused(&response, 403, "self_connection", Some("listeners"), &authority);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_targets_are_400_before_any_socket() {
    let tripwire = Tripwire::new();
    let port = tripwire.address.port();
    let gateway = TestGateway::start(GUARD_ONLY).await;
    let requests = [
        connect_request(&format!("127.0.0.1:{port}@evil.com"), &[]),
        connect_request(&format!("evil.com@127.0.0.1:{port}"), &[]),
        connect_request(&format!("a.com:443:{port}"), &[]),
        connect_request("[[::1]]:443", &[]),
        connect_request(&format!("[::1]x:{port}"), &[]),
        connect_request(&format!(":{port}"), &[]),
        connect_request(&format!("[fe80::1%25lo]:{port}"), &[]),
        connect_request(&format!("127%2e0.0.1:{port}"), &[]),
        connect_request("/just/a/path", &[]),
        format!("CONNECT http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        "GET /relative HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_owned(),
        format!("GET ftp://127.0.0.1:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
        format!("GET http://user:pw@127.0.0.1:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
        format!("GET http://evil.com@127.0.0.1:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
        format!("GET http://evil.com\\@127.0.0.1:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
        format!("GET http://127.0.0.1:{port}\\.evil.com/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
        format!("connect 127.0.0.1:{port} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        "GET http:///path HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        "GET http://exa_mple..com/ HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        "GET http://-bad-.com/ HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        format!("GET http://{}.com/ HTTP/1.1\r\nConnection: close\r\n\r\n", "a".repeat(64)),
    ];
    for request in &requests {
        let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
        assert_refused(&response, 400, "bad_request", None, request);
        tripwire.assert_untouched();
    }
    let audit = gateway.audit().await;
    assert_eq!(audit.len(), requests.len());
    assert!(audit.iter().all(|r| r["status"] == 400 && r["decision"] == "error" && r["upstream"].is_null()));
}

// Team precedence on names and literals is in tests/suite/teams.rs; this is the resolved-address half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_deny_cidr_applies_to_resolved_addresses() {
    let tripwire = Tripwire::new();
    let hash = hash("pw");
    let gateway = TestGateway::start(&format!(
        "auth:\n  anonymous: deny\n  users: [{{name: bob, password_hash: \"{hash}\", teams: [blue]}}]\n\
         teams:\n  blue: {{deny: [127.0.0.0/8]}}\n\
         policy:\n  default: deny\n  allow: [localhost]\n  allow_private: [127.0.0.0/8]\n"
    ))
    .await;
    let header = format!("Proxy-Authorization: {}", basic("bob", "pw"));
    let authority = format!("localhost:{}", tripwire.address.port());
    let response = exchange(gateway.proxy, connect_request(&authority, &[&header]).as_bytes()).await;
    assert_refused(&response, 403, "deny_rule", Some("teams.blue.deny[0]"), "localhost resolves into blue's deny CIDR");
    tripwire.assert_untouched();
}
