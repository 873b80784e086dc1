//! Rate limits (GCRA, burst = rpm) and concurrency caps, per user, per team, per team member and for the whole
//! organisation, against the real gateway with an injected clock: exact at the boundary (computed from
//! `60_000_000 / rpm` microseconds), per request on keep-alive connections, all or nothing across scopes, and
//! the 429s, metrics and audit records agree.

use crate::common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use common::*;

const PASSWORD: &str = "correct horse";
const T0: &str = "2026-12-01T12:00:00Z";

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash(PASSWORD))
}

/// Users (name, teams), `extra` (teams, limits), and a policy that allows loopback.
fn config(users: &[(&str, &[&str])], extra: &str) -> String {
    let mut text = String::from("auth:\n  anonymous: deny\n  users:\n");
    for (name, teams) in users {
        text.push_str(&format!(
            "    - {{name: {name}, password_hash: \"{}\", teams: [{}]}}\n",
            password_hash(),
            teams.join(", ")
        ));
    }
    format!("{text}{extra}{LOOPBACK_POLICY}")
}

/// The steady-rate interval of `rpm`, as the gateway computes it.
fn interval(rpm: u64) -> Duration {
    Duration::from_micros(60_000_000 / rpm)
}

/// A keep-alive GET as `user`.
fn get(origin: &Origin, user: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\n\r\n",
        origin.url("/limited"),
        origin.address,
        basic(user, PASSWORD)
    )
}

/// One client connection that sends requests one after the other.
struct Client(TcpStream);

impl Client {
    async fn connect(gateway: &TestGateway) -> Self {
        Self(TcpStream::connect(gateway.proxy).await.expect("connect"))
    }

    async fn send(&mut self, request: &str) -> Response {
        self.0.write_all(request.as_bytes()).await.expect("write request");
        read_response(&mut self.0).await
    }
}

/// Asserts a 429 from `scope`'s rate limit, with `retry-after` in whole seconds (rounded up).
fn assert_rate_limited(response: &Response, scope: &str, retry_after: u64, context: &str) {
    assert_refused(response, 429, "rate_limited", Some(&format!("limits.{scope}")), context);
    assert_eq!(response.header("retry-after"), Some(retry_after.to_string()), "{context}: {response:?}");
    // Keep-alive: a refused request without a body leaves the connection usable.
    assert!(response.header("connection").is_none(), "{context}: {response:?}");
}

/// Tallies what the gateway answered, to compare with its metrics and audit records afterwards.
#[derive(Default)]
struct Tally {
    ok: usize,
    limited: Vec<(&'static str, &'static str)>,
}

impl Tally {
    fn ok(&mut self, response: &Response, context: &str) {
        assert_eq!(response.status, 200, "{context}: {response:?}");
        assert_eq!(response.header("x-origin").as_deref(), Some("yes"), "{context}: {response:?}");
        self.ok += 1;
    }

    fn limited(&mut self, response: &Response, scope: &'static str, retry_after: u64, context: &str) {
        assert_rate_limited(response, scope, retry_after, context);
        self.limited.push((scope, "rate_limited"));
    }

    fn count(&self, scope: &str) -> usize {
        self.limited.iter().filter(|(s, _)| *s == scope).count()
    }

    /// `tollgate_rate_limited_total{scope}` and the audit records agree with what the clients saw.
    async fn check(&self, gateway: &mut TestGateway) {
        // A request's record is written just after its response: shut down first (every connection has ended),
        // then every record and counter is final.
        let shared = gateway.shared().clone();
        let audit = gateway.shutdown_and_audit().await;
        let metrics = shared.metrics.render();
        let allowed: Vec<_> = audit.iter().filter(|r| r["decision"] == "allow").collect();
        assert_eq!(allowed.len(), self.ok, "allowed records: {audit:#?}");
        assert!(allowed.iter().all(|r| r["status"] == 200), "{audit:#?}");
        let limited: Vec<_> = audit.iter().filter(|r| r["status"] == 429).collect();
        assert_eq!(limited.len(), self.limited.len(), "429 records: {audit:#?}");
        assert_eq!(audit.len(), self.ok + self.limited.len(), "nothing else was recorded: {audit:#?}");
        for record in &limited {
            assert_eq!(record["decision"], "deny", "{record}");
        }
        for scope in ["user", "team", "team_member", "org"] {
            let recorded = limited.iter().filter(|r| r["rule"] == format!("limits.{scope}")).count();
            assert_eq!(recorded, self.count(scope), "audit records for limits.{scope}");
            let sample = format!("tollgate_rate_limited_total{{scope=\"{scope}\"}}");
            assert_eq!(metric_value(&metrics, &sample), self.count(scope) as f64, "{sample}");
        }
        let sample =
            "tollgate_requests_total{decision=\"deny\",kind=\"http\",listener=\"proxy\",reason=\"rate_limited\"}";
        assert_eq!(metric_value(&metrics, sample), self.limited.len() as f64, "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_rpm_is_exact_at_the_boundary_on_one_keep_alive_connection() {
    // 7 a minute does not divide a minute in whole microseconds: the interval is 8_571_428µs, rounded down.
    const RPM: u64 = 7;
    let step = interval(RPM);
    assert_eq!(step, Duration::from_micros(8_571_428));
    let retry_after = step.as_secs_f64().ceil() as u64; // 9
    let origin = Origin::start().await;
    let clock = TestClock::at(T0);
    let yaml = config(&[("alice", &[])], &format!("limits: {{user: {{rpm: {RPM}}}}}\n"));
    let mut gateway = TestGateway::start_with_clock(&yaml, clock.clone()).await;
    let mut tally = Tally::default();
    let mut client = Client::connect(&gateway).await;
    let request = get(&origin, "alice");

    // The burst: RPM requests at one instant, then the next is refused for one interval.
    for n in 1..=RPM {
        tally.ok(&client.send(&request).await, &format!("burst request {n}"));
    }
    tally.limited(&client.send(&request).await, "user", retry_after, "one past the burst");
    // One microsecond short of the interval: still refused, and told to come back in (at least) a second.
    clock.advance(step - Duration::from_micros(1));
    tally.limited(&client.send(&request).await, "user", 1, "1µs before the interval");
    // Exactly the interval after the burst: one more, and only one.
    clock.advance(Duration::from_micros(1));
    tally.ok(&client.send(&request).await, "exactly one interval later");
    tally.limited(&client.send(&request).await, "user", retry_after, "right after the refill");
    // Refused requests take nothing: after one more interval there is exactly one request again.
    clock.advance(step);
    tally.ok(&client.send(&request).await, "two intervals later");
    tally.limited(&client.send(&request).await, "user", retry_after, "right after the second refill");
    // Idle for an hour: the bucket refills to the burst, never beyond it.
    clock.advance(Duration::from_secs(3600));
    for n in 1..=RPM {
        tally.ok(&client.send(&request).await, &format!("second burst request {n}"));
    }
    tally.limited(&client.send(&request).await, "user", retry_after, "one past the second burst");

    assert_eq!(origin.request_heads().len(), tally.ok, "refused requests never reach the origin");
    assert_eq!(tally.ok, 2 * RPM as usize + 2);
    tally.check(&mut gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_rpm_is_shared_by_its_members() {
    const RPM: u64 = 3;
    let origin = Origin::start().await;
    let clock = TestClock::at(T0);
    let yaml = config(
        &[("alice", &["red"]), ("bob", &["red"]), ("zed", &["blue"])],
        &format!("teams:\n  red: {{limits: {{rpm: {RPM}}}}}\n  blue: {{}}\n"),
    );
    let mut gateway = TestGateway::start_with_clock(&yaml, clock.clone()).await;
    let mut tally = Tally::default();
    let (mut alice, mut bob, mut zed) =
        (Client::connect(&gateway).await, Client::connect(&gateway).await, Client::connect(&gateway).await);
    let retry_after = interval(RPM).as_secs(); // 20

    tally.ok(&alice.send(&get(&origin, "alice")).await, "alice 1");
    tally.ok(&alice.send(&get(&origin, "alice")).await, "alice 2");
    tally.ok(&bob.send(&get(&origin, "bob")).await, "bob 1");
    tally.limited(&bob.send(&get(&origin, "bob")).await, "team", retry_after, "bob: the team's minute is used");
    tally.limited(&alice.send(&get(&origin, "alice")).await, "team", retry_after, "alice, same team");
    tally.ok(&zed.send(&get(&origin, "zed")).await, "another team is not affected");
    clock.advance(interval(RPM));
    tally.ok(&bob.send(&get(&origin, "bob")).await, "one interval later: one for the team");
    tally.limited(&alice.send(&get(&origin, "alice")).await, "team", retry_after, "and only one");
    tally.check(&mut gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_rpm_of_a_team_applies_to_each_member_and_the_strictest_team_wins() {
    let origin = Origin::start().await;
    let clock = TestClock::at(T0);
    let yaml = config(
        &[("carol", &["blue"]), ("dave", &["blue"]), ("erin", &["red", "blue"])],
        "teams:\n  red: {limits: {user_rpm: 5}}\n  blue: {limits: {user_rpm: 2}}\n",
    );
    let mut gateway = TestGateway::start_with_clock(&yaml, clock.clone()).await;
    let mut tally = Tally::default();
    let mut client = Client::connect(&gateway).await;
    let retry_after = interval(2).as_secs(); // 30
    for user in ["carol", "dave"] {
        tally.ok(&client.send(&get(&origin, user)).await, &format!("{user} 1"));
        tally.ok(&client.send(&get(&origin, user)).await, &format!("{user} 2"));
        let context = format!("{user} 3: each member has their own 2 a minute");
        tally.limited(&client.send(&get(&origin, user)).await, "team_member", retry_after, &context);
    }
    // erin is in red (5 a minute) and blue (2 a minute): both apply, so blue's stops her after 2.
    tally.ok(&client.send(&get(&origin, "erin")).await, "erin 1");
    tally.ok(&client.send(&get(&origin, "erin")).await, "erin 2");
    tally.limited(&client.send(&get(&origin, "erin")).await, "team_member", retry_after, "erin 3: blue's limit");
    tally.check(&mut gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_takes_nothing_from_the_other_limits() {
    let origin = Origin::start().await;
    let clock = TestClock::at(T0);
    let yaml = config(
        &[("alice", &["red"]), ("bob", &["red"])],
        "teams:\n  red: {limits: {rpm: 3}}\nlimits: {user: {rpm: 2}}\n",
    );
    let mut gateway = TestGateway::start_with_clock(&yaml, clock.clone()).await;
    let mut tally = Tally::default();
    let mut client = Client::connect(&gateway).await;
    tally.ok(&client.send(&get(&origin, "alice")).await, "alice 1");
    tally.ok(&client.send(&get(&origin, "alice")).await, "alice 2");
    // alice's own limit refuses her: the team's third request of the minute must still be there for bob.
    for n in 3..6 {
        tally.limited(&client.send(&get(&origin, "alice")).await, "user", 30, &format!("alice {n}"));
    }
    tally.ok(&client.send(&get(&origin, "bob")).await, "bob: the team's last request");
    tally.limited(&client.send(&get(&origin, "bob")).await, "team", 20, "bob: the team's minute is used");
    tally.check(&mut gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_rpm_covers_every_principal() {
    let origin = Origin::start().await;
    let clock = TestClock::at(T0);
    let yaml = config(
        &[("alice", &["red"]), ("bob", &["blue"]), ("carol", &[])],
        "teams: {red: {}, blue: {}}\nlimits: {org: {rpm: 3}}\n",
    );
    let mut gateway = TestGateway::start_with_clock(&yaml, clock.clone()).await;
    let mut tally = Tally::default();
    for user in ["alice", "bob", "carol"] {
        let mut client = Client::connect(&gateway).await;
        tally.ok(&client.send(&get(&origin, user)).await, user);
    }
    for user in ["alice", "bob", "carol"] {
        let mut client = Client::connect(&gateway).await;
        tally.limited(&client.send(&get(&origin, user)).await, "org", 20, &format!("{user}: the org's minute is used"));
    }
    clock.advance(interval(3));
    let mut client = Client::connect(&gateway).await;
    tally.ok(&client.send(&get(&origin, "carol")).await, "one interval later");
    tally.check(&mut gateway).await;
}

/// Opens a CONNECT tunnel to `echo` as `user` and proves it carries bytes (so it is open and counted).
async fn open_tunnel(gateway: &TestGateway, echo: &Echo, user: &str) -> TcpStream {
    let credentials = format!("Proxy-Authorization: {}", basic(user, PASSWORD));
    let request = connect_request(&echo.address.to_string(), &[&credentials]);
    let (mut stream, response) = exchange_keep(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{user}'s tunnel: {response:?}");
    stream.write_all(b"ping").await.expect("write into the tunnel");
    assert_eq!(read_exact_bytes(&mut stream, 4).await, b"ping");
    stream
}

/// Closes a tunnel from the client side and waits until the gateway has closed it too.
async fn close_tunnel(mut stream: TcpStream) {
    stream.shutdown().await.expect("half-close the tunnel");
    assert!(closed_by_peer(&mut stream).await, "the gateway closes the tunnel once both sides are done");
}

fn assert_concurrency_limited(response: &Response, scope: &str, context: &str) {
    assert_refused(response, 429, "concurrency_limited", Some(&format!("limits.{scope}")), context);
    assert_eq!(response.header("retry-after").as_deref(), Some("1"), "{context}: {response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_tunnel_takes_the_users_only_concurrency_slot() {
    let echo = Echo::start().await;
    let yaml = config(&[("alice", &[]), ("bob", &[])], "limits: {user: {concurrent: 1}}\n");
    let mut gateway = TestGateway::start(&yaml).await;
    let credentials = format!("Proxy-Authorization: {}", basic("alice", PASSWORD));
    let second = connect_request(&echo.address.to_string(), &[&credentials]);

    let first = open_tunnel(&gateway, &echo, "alice").await;
    assert_eq!(gateway.metric("tollgate_tunnels_active").await, 1.0);
    let response = exchange_until_closed(gateway.proxy, second.as_bytes()).await;
    assert_concurrency_limited(&response, "user", "alice's second tunnel");
    assert!(response.body.contains("at most 1 open"), "{response:?}");
    // The cap is per user.
    let bobs = open_tunnel(&gateway, &echo, "bob").await;

    // Synchronisation: the gateway gives a tunnel's slots back before it writes the tunnel's record and closes
    // the client connection, so once `close_tunnel` has seen the gateway close it, the slot is free and the
    // next CONNECT must succeed at once. Neither polling `tollgate_tunnels_active` (it drops before the slot
    // is given back) nor retrying (which would hide a slot that stays taken for a while, and make the 429
    // count vary) would prove that.
    close_tunnel(first).await;
    let third = open_tunnel(&gateway, &echo, "alice").await;
    close_tunnel(third).await;
    close_tunnel(bobs).await;
    assert_eq!(echo.connection_count(), 3, "the refused tunnel never reached the echo server");

    // The client sees a tunnel end while its splice winds down, a moment before its record is queued: wait
    // (bounded) for the four records rather than read the file once.
    let audit = async {
        loop {
            let audit = gateway.audit().await;
            if audit.len() >= 4 {
                return audit;
            }
            tokio::task::yield_now().await;
        }
    };
    let audit = tokio::time::timeout(std::time::Duration::from_secs(10), audit).await.expect("four records within 10s");
    assert_eq!(audit.len(), 4, "{audit:#?}");
    let refused: Vec<_> = audit.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(refused.len(), 1, "{audit:#?}");
    assert_eq!(refused[0]["status"], 429);
    assert_eq!(refused[0]["rule"], "limits.user");
    assert_eq!(refused[0]["user"], "alice");
    assert_eq!(refused[0]["kind"], "connect");
    assert!(audit.iter().filter(|r| r["decision"] == "allow").all(|r| r["status"] == 200 && r["bytes_up"] == 4));
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_rate_limited_total{scope=\"user\"}"), 1.0);
    assert_eq!(metric_value(&metrics, "tollgate_tunnels_active"), 0.0);
    let sample =
        "tollgate_requests_total{decision=\"deny\",kind=\"connect\",listener=\"proxy\",reason=\"concurrency_limited\"}";
    assert_eq!(metric_value(&metrics, sample), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_refusal_takes_nothing_from_the_rate_limit() {
    // A client refused for concurrency retries (Claude Code retries a refused CONNECT for minutes): those
    // refusals must not use up its requests per minute, or it is rate limited once its slot is free.
    let echo = Echo::start().await;
    let clock = TestClock::at(T0);
    let yaml = config(&[("alice", &[])], "limits: {user: {rpm: 2, concurrent: 1}}\n");
    let mut gateway = TestGateway::start_with_clock(&yaml, clock.clone()).await;
    let credentials = format!("Proxy-Authorization: {}", basic("alice", PASSWORD));
    let request = connect_request(&echo.address.to_string(), &[&credentials]);
    let first = open_tunnel(&gateway, &echo, "alice").await;
    for attempt in 1..=3 {
        let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
        assert_concurrency_limited(&response, "user", &format!("retry {attempt} while the slot is taken"));
    }
    close_tunnel(first).await;
    let second = open_tunnel(&gateway, &echo, "alice").await;
    close_tunnel(second).await;
    // Two tunnels in the minute: now the rate limit speaks.
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_refused(&response, 429, "rate_limited", Some("limits.user"), "the third tunnel in the minute");
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_rate_limited_total{scope=\"user\"}"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_concurrency_caps_the_team_and_each_member() {
    let echo = Echo::start().await;
    let yaml = config(
        &[("alice", &["red"]), ("bob", &["red"]), ("carol", &["red"]), ("zed", &[])],
        "teams:\n  red: {limits: {concurrent: 2, user_concurrent: 1}}\n",
    );
    let mut gateway = TestGateway::start(&yaml).await;
    let refused = |user: &str| {
        let credentials = format!("Proxy-Authorization: {}", basic(user, PASSWORD));
        connect_request(&echo.address.to_string(), &[&credentials])
    };
    let alice = open_tunnel(&gateway, &echo, "alice").await;
    let response = exchange_until_closed(gateway.proxy, refused("alice").as_bytes()).await;
    assert_concurrency_limited(&response, "team_member", "alice's second tunnel");
    let bob = open_tunnel(&gateway, &echo, "bob").await;
    let response = exchange_until_closed(gateway.proxy, refused("carol").as_bytes()).await;
    assert_concurrency_limited(&response, "team", "carol: the team's two slots are taken");
    let zed = open_tunnel(&gateway, &echo, "zed").await;
    close_tunnel(bob).await;
    let carol = open_tunnel(&gateway, &echo, "carol").await;
    for tunnel in [alice, carol, zed] {
        close_tunnel(tunnel).await;
    }
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_rate_limited_total{scope=\"team\"}"), 1.0);
    assert_eq!(metric_value(&metrics, "tollgate_rate_limited_total{scope=\"team_member\"}"), 1.0);
}

/// An origin whose every response waits for `release`: requests stay in flight as long as the test wants.
struct HeldOrigin {
    address: std::net::SocketAddr,
    release: Arc<Notify>,
    arrived: Arc<Notify>,
}

impl HeldOrigin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind held origin");
        let address = listener.local_addr().expect("address");
        let (release, arrived) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (r, a) = (release.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (r, a) = (r.clone(), a.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while find(&buf, b"\r\n\r\n").is_none() {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    a.notify_one();
                    r.notified().await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld")
                        .await;
                });
            }
        });
        Self { address, release, arrived }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_request_holds_its_slot_until_its_response_is_relayed() {
    let held = HeldOrigin::start().await;
    let yaml = config(&[("alice", &[])], "limits: {user: {concurrent: 1}}\n");
    let mut gateway = TestGateway::start(&yaml).await;
    let request = format!(
        "GET http://{}/slow HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        held.address,
        held.address,
        basic("alice", PASSWORD)
    );
    let first = {
        let request = request.clone();
        let proxy = gateway.proxy;
        tokio::spawn(async move { exchange_until_closed(proxy, request.as_bytes()).await })
    };
    // The origin has the first request: it is in flight and holds alice's slot.
    tokio::time::timeout(Duration::from_secs(20), held.arrived.notified()).await.expect("first request arrives");
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_concurrency_limited(&response, "user", "a second request while the first is in flight");
    held.release.notify_one();
    let response = first.await.expect("first request task");
    assert_eq!((response.status, response.body.as_str()), (200, "held"));
    // The first request's connection is closed (Connection: close): its slot was given back before that.
    let third = {
        let request = request.clone();
        let proxy = gateway.proxy;
        tokio::spawn(async move { exchange_until_closed(proxy, request.as_bytes()).await })
    };
    tokio::time::timeout(Duration::from_secs(20), held.arrived.notified()).await.expect("third request arrives");
    held.release.notify_one();
    assert_eq!(third.await.expect("third request task").status, 200);
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_rate_limited_total{scope=\"user\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_on_one_connection_never_count_as_concurrent() {
    // Pipelined on one keep-alive connection, the requests are still served one after the other: each must find
    // the slot its predecessor held free again, although the next request is already buffered.
    let origin = Origin::start().await;
    let yaml = config(&[("alice", &[])], "limits: {user: {concurrent: 1}}\n");
    let mut gateway = TestGateway::start(&yaml).await;
    let mut stream = TcpStream::connect(gateway.proxy).await.expect("connect");
    let request = get(&origin, "alice");
    let mut buf = Vec::new();
    for round in 0..10 {
        stream.write_all(request.repeat(5).as_bytes()).await.expect("pipelined requests");
        for n in 0..5 {
            let (status, head) = read_pipelined(&mut stream, &mut buf).await;
            assert_eq!(status, 200, "round {round}, request {n}: {head}");
        }
    }
    assert_eq!(origin.request_heads().len(), 50);
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_rate_limited_total{scope=\"user\"}"), 0.0);
}

/// Reads the next response (status and head; the body by Content-Length) from `stream`, keeping whatever follows
/// it in `buf` for the next call: responses to pipelined requests may arrive in one read.
async fn read_pipelined(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("responses here have a Content-Length");
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
                return (status, head);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("response within 20s")
            .expect("read");
        assert!(n > 0, "the gateway closed the connection; unread: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}
