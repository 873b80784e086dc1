//! Hot reload from a real config file: `POST /admin/reload` (bearer `admin.token`), the file watcher (also on a
//! Kubernetes ConfigMap volume, whose `..data` symlink the kubelet swaps), what a valid and an invalid change do,
//! `GET /admin/config`, open tunnels the new config denies being closed and audited, and no request failing while
//! the config is reloaded under load.
//!
//! Tests that drive the endpoint run without the file watcher (`app::Options::watch_interval: None`): otherwise
//! the watcher could see the edited file between the write and the `POST` and reload it first, and the versions
//! and counters the tests assert would depend on timing.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use common::*;
use tollgate::app::Options;

const PASSWORD: &str = "correct horse";
const TOKEN: &str = "admin-token-for-tests";

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash(PASSWORD))
}

/// A config file in a temp dir; the gateway is started from it and the tests rewrite it.
struct ConfigFile {
    path: PathBuf,
    header: String,
}

impl ConfigFile {
    /// `admin` is the `admin:` value (with or without a token).
    fn new(dir: &Path, admin: &str) -> Self {
        let header = format!(
            "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nadmin: {admin}\naudit: {{file: {{path: \"{}\"}}}}\n\
             state: {{path: \"{}\"}}\n",
            dir.join("audit.jsonl").display(),
            dir.join("state").display()
        );
        Self { path: dir.join("tollgate.yaml"), header }
    }

    /// Writes the header and `body`; returns the whole text.
    fn write(&self, body: &str) -> String {
        let text = format!("{}{body}", self.header);
        std::fs::write(&self.path, &text).expect("write the config file");
        text
    }
}

/// Users (each with the test password), `policy.deny` entries, and loopback allowed.
fn body(users: &[&str], deny: &[String]) -> String {
    let mut text = String::from("auth:\n  anonymous: deny\n  users:\n");
    for user in users {
        text.push_str(&format!("    - {{name: {user}, password_hash: \"{}\"}}\n", password_hash()));
    }
    let deny: Vec<String> = deny.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "{text}policy:\n  default: deny\n  allow: [\"127.0.0.1\"]\n  allow_private: [\"127.0.0.0/8\"]\n  deny: [{}]\n",
        deny.join(", ")
    )
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn no_watcher() -> Options {
    Options { watch_interval: None, ..Options::default() }
}

/// Writes the config and starts the gateway from the file, as `tollgate run` does.
async fn start(body: &str, options: Options) -> (TestGateway, ConfigFile, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = ConfigFile::new(dir.path(), &format!("{{bind: \"127.0.0.1:0\", token: \"{TOKEN}\"}}"));
    let text = file.write(body);
    let gateway = TestGateway::start_file(&file.path, dir, options).await;
    (gateway, file, text)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn reload(gateway: &TestGateway) -> Response {
    admin(gateway, "POST", "/admin/reload", Some(&bearer())).await
}

async fn config_info(gateway: &TestGateway) -> serde_json::Value {
    let response = admin(gateway, "GET", "/admin/config", Some(&bearer())).await;
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}

/// A GET through the proxy as `user`, on a new connection that the gateway closes after.
async fn get(gateway: &TestGateway, user: &str, origin: &Origin) -> Response {
    get_as(gateway.proxy, &origin.url("/reload"), &basic(user, PASSWORD)).await
}

/// Opens a tunnel to `echo` as `user` and proves it carries bytes (so it is spliced and registered).
async fn open_tunnel(gateway: &TestGateway, echo: &Echo, user: &str) -> TcpStream {
    let credentials = format!("Proxy-Authorization: {}", basic(user, PASSWORD));
    let request = connect_request(&echo.address.to_string(), &[&credentials]);
    let (mut stream, response) = exchange_keep(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{user}'s tunnel to {}: {response:?}", echo.address);
    assert_echoes(&mut stream, b"ping").await;
    stream
}

async fn assert_echoes(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write into the tunnel");
    assert_eq!(read_exact_bytes(stream, bytes.len()).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_endpoint_applies_a_valid_change_and_keeps_the_old_config_on_an_invalid_one() {
    let origin = Origin::start().await;
    let other = Origin::start().await;
    let (mut gateway, file, text) = start(&body(&["alice"], &[]), no_watcher()).await;
    let info = config_info(&gateway).await;
    assert_eq!(info["version"], 1, "{info}");
    assert_eq!(info["sha256"], sha256(&text), "{info}");
    let loaded_at = info["loaded_at"].as_str().expect("loaded_at").to_owned();
    assert_eq!(get(&gateway, "alice", &origin).await.status, 200);

    // A valid change: the origin is denied from the next request on.
    let denied = format!("127.0.0.1:{}", origin.address.port());
    let text = file.write(&body(&["alice"], std::slice::from_ref(&denied)));
    let response = reload(&gateway).await;
    assert_eq!(response.status, 200, "{response:?}");
    let report = response.json();
    assert_eq!(report["version"], 2, "{report}");
    assert_eq!(report["sha256"], sha256(&text), "{report}");
    assert_eq!(report["tunnels_revoked"], 0, "{report}");
    assert_eq!(report["needs_restart"], serde_json::json!([]), "{report}");
    assert_refused(&get(&gateway, "alice", &origin).await, 403, "deny_rule", Some("policy.deny[0]"), "newly denied");
    assert_eq!(get(&gateway, "alice", &other).await.status, 200, "the rest is still allowed");
    let info = config_info(&gateway).await;
    assert_eq!((info["version"].clone(), info["sha256"].clone()), (2.into(), sha256(&text).into()), "{info}");
    assert!(info["loaded_at"].as_str().expect("loaded_at") >= loaded_at.as_str(), "{info}");

    // An invalid change (line 5, column 12 of the file): refused with its place, the old config stays.
    file.write("policy:\n  default: sometimes\n");
    let response = reload(&gateway).await;
    assert_eq!(response.status, 422, "{response:?}");
    let error = response.json()["error"].as_str().expect("error message").to_owned();
    let place = format!("{}:6:12: policy.default: ", file.path.display());
    assert!(error.starts_with(&place), "{error:?} should start with {place:?}");
    assert_refused(&get(&gateway, "alice", &origin).await, 403, "deny_rule", Some("policy.deny[0]"), "still denied");
    assert_eq!(get(&gateway, "alice", &other).await.status, 200, "still allowed");
    let info = config_info(&gateway).await;
    assert_eq!((info["version"].clone(), info["sha256"].clone()), (2.into(), sha256(&text).into()), "{info}");
    assert_eq!(gateway.metric("tollgate_config_reloads_total{result=\"error\"}").await, 1.0);
    assert_eq!(gateway.metric("tollgate_config_reloads_total{result=\"ok\"}").await, 1.0);

    // A file that is not even YAML, and one that names an undefined team: refused the same way.
    file.write("policy: [unclosed\n");
    assert_eq!(reload(&gateway).await.status, 422);
    file.write(&format!(
        "auth:\n  users:\n    - {{name: alice, password_hash: \"{}\", teams: [ghosts]}}\npolicy: {{default: deny}}\n",
        password_hash()
    ));
    let response = reload(&gateway).await;
    assert_eq!(response.status, 422, "{response:?}");
    let error = response.json()["error"].as_str().expect("error message").to_owned();
    assert!(error.contains("auth.users[0].teams") && error.contains("ghosts"), "{error}");
    assert_eq!(gateway.metric("tollgate_config_reloads_total{result=\"error\"}").await, 3.0);

    // Fixed again: version 3, the deny is gone.
    let text = file.write(&body(&["alice"], &[]));
    let response = reload(&gateway).await;
    assert_eq!((response.status, response.json()["version"].clone()), (200, 3.into()), "{response:?}");
    assert_eq!(get(&gateway, "alice", &origin).await.status, 200);
    assert_eq!(config_info(&gateway).await["sha256"], sha256(&text));
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_config_reloads_total{result=\"ok\"}"), 2.0);
    assert_eq!(metric_value(&metrics, "tollgate_config_reloads_total{result=\"error\"}"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_the_changes_that_need_a_restart_and_applies_the_rest() {
    let origin = Origin::start().await;
    let (gateway, file, _) = start(&body(&["alice"], &[]), no_watcher()).await;
    let denied = format!("127.0.0.1:{}", origin.address.port());
    let moved = file.header.replace("bind: \"127.0.0.1:0\"}]", "bind: \"127.0.0.1:1\"}]");
    assert_ne!(moved, file.header);
    let text = format!("{moved}server: {{max_connections: 7}}\n{}", body(&["alice"], std::slice::from_ref(&denied)));
    std::fs::write(&file.path, &text).expect("write config");
    let response = reload(&gateway).await;
    assert_eq!(response.status, 200, "{response:?}");
    let report = response.json();
    assert_eq!(
        report["needs_restart"],
        serde_json::json!(["listener proxy moves from 127.0.0.1:0 to 127.0.0.1:1", "server.max_connections changed"]),
        "{report}"
    );
    // The listener stays where it is; the policy change applies at once.
    assert_refused(&get(&gateway, "alice", &origin).await, 403, "deny_rule", Some("policy.deny[0]"), "applied");
    assert_eq!(config_info(&gateway).await["sha256"], sha256(&text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_configured_token() {
    let origin = Origin::start().await;
    let (gateway, file, _) = start(&body(&["alice"], &[]), no_watcher()).await;
    let denied = format!("127.0.0.1:{}", origin.address.port());
    file.write(&body(&["alice"], &[denied]));
    let wrong = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(format!("bearer{TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    for authorization in &wrong {
        for (method, path) in [("POST", "/admin/reload"), ("GET", "/admin/config")] {
            let response = admin(&gateway, method, path, authorization.as_deref()).await;
            assert_eq!(response.status, 401, "{method} {path} with {authorization:?}: {response:?}");
            assert!(!response.body.contains("sha256"), "{response:?}");
        }
    }
    // Nothing was reloaded by the refused attempts.
    assert_eq!(get(&gateway, "alice", &origin).await.status, 200);
    assert_eq!(config_info(&gateway).await["version"], 1);
    assert_eq!(gateway.metric("tollgate_config_reloads_total{result=\"ok\"}").await, 0.0);
    // Metrics and health need no token.
    assert_eq!(exchange(gateway.admin, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await.status, 200);

    // Without admin.token, /admin/* is off for everyone, with or without a token.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = ConfigFile::new(dir.path(), "{bind: \"127.0.0.1:0\"}");
    file.write(&body(&["alice"], &[]));
    let untokened = TestGateway::start_file(&file.path, dir, no_watcher()).await;
    for authorization in [None, Some(bearer())] {
        for (method, path) in [("POST", "/admin/reload"), ("GET", "/admin/config")] {
            let response = admin(&untokened, method, path, authorization.as_deref()).await;
            assert_eq!(response.status, 403, "{method} {path} with {authorization:?}: {response:?}");
        }
    }
    assert_eq!(untokened.metric("tollgate_config_reloads_total{result=\"ok\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_the_open_tunnels_the_new_config_denies() {
    let kept = Echo::start().await;
    let banned = Echo::start().await;
    let (mut gateway, file, _) = start(&body(&["alice", "bob"], &[]), no_watcher()).await;
    let mut alice_kept = open_tunnel(&gateway, &kept, "alice").await;
    let mut bob_kept = open_tunnel(&gateway, &kept, "bob").await;
    let mut alice_banned = open_tunnel(&gateway, &banned, "alice").await;
    assert_eq!(gateway.metric("tollgate_tunnels_active").await, 3.0);

    // bob is removed from auth.users, and the second echo server is denied.
    let denied = format!("127.0.0.1:{}", banned.address.port());
    file.write(&body(&["alice"], &[denied]));
    let response = reload(&gateway).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["tunnels_revoked"], 2, "{response:?}");
    assert!(closed_by_peer(&mut bob_kept).await, "the removed user's tunnel is closed");
    assert!(closed_by_peer(&mut alice_banned).await, "the tunnel to the denied destination is closed");
    // alice's tunnel to an allowed destination is untouched.
    assert_echoes(&mut alice_kept, b"still here").await;
    // New requests follow the new config: bob is unknown, the destination denied.
    let credentials = format!("Proxy-Authorization: {}", basic("bob", PASSWORD));
    let request = connect_request(&kept.address.to_string(), &[&credentials, "Connection: close"]);
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 407, "{response:?}");
    let credentials = format!("Proxy-Authorization: {}", basic("alice", PASSWORD));
    let request = connect_request(&banned.address.to_string(), &[&credentials, "Connection: close"]);
    let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
    assert_refused(&response, 403, "deny_rule", Some("policy.deny[0]"), "alice to the denied destination");
    alice_kept.shutdown().await.expect("half-close");
    assert!(closed_by_peer(&mut alice_kept).await);

    let audit = gateway.shutdown_and_audit().await;
    let tunnels: Vec<_> = audit.iter().filter(|r| r["kind"] == "connect" && r["status"] == 200).collect();
    assert_eq!(tunnels.len(), 3, "{audit:#?}");
    let revoked: Vec<_> = tunnels.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(revoked.len(), 2, "{audit:#?}");
    for record in &revoked {
        assert!(record["error"].as_str().is_some_and(|e| e.contains("reload")), "the error names the reload: {record}");
        assert_eq!(record["bytes_up"], 4, "{record}");
    }
    let mut who: Vec<(String, u64)> =
        revoked.iter().map(|r| (r["user"].as_str().unwrap().to_owned(), r["port"].as_u64().unwrap())).collect();
    who.sort();
    assert_eq!(
        who,
        vec![("alice".to_owned(), banned.address.port() as u64), ("bob".to_owned(), kept.address.port() as u64)]
    );
    let kept_record = tunnels.iter().find(|r| r["decision"] == "allow").expect("alice's kept tunnel");
    assert_eq!((kept_record["user"].as_str(), kept_record["bytes_up"].as_u64()), (Some("alice"), Some(14)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_still_waiting_for_its_client_hello_is_closed_by_a_reload_that_denies_it() {
    // With require_sni_match the 200 goes out before the ClientHello is read: the tunnel is open for the client
    // from then on, and a reload in between must close it without forwarding a byte.
    let pki = common::pki::Pki::new();
    let origin = common::tls::TlsOrigin::start(&pki.server, None).await;
    let with_sni = |deny: &[String]| {
        body(&["alice"], deny)
            .replace("  default: deny\n", "  default: deny\n  require_sni_match: true\n")
            .replace("allow: [\"127.0.0.1\"]", "allow: [\"localhost\"]")
            .replace("allow_private: [\"127.0.0.0/8\"]", "allow_private: [\"127.0.0.0/8\", \"::1/128\"]")
    };
    let (mut gateway, file, _) = start(&with_sni(&[]), no_watcher()).await;
    let authority = format!("localhost:{}", origin.address.port());
    let credentials = format!("Proxy-Authorization: {}", basic("alice", PASSWORD));
    let (tunnel, response) =
        exchange_keep(gateway.proxy, connect_request(&authority, &[&credentials]).as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");

    file.write(&with_sni(std::slice::from_ref(&authority)));
    let response = reload(&gateway).await;
    assert_eq!(response.json()["tunnels_revoked"], 1, "{response:?}");
    let handshake = tokio_rustls::TlsConnector::from(pki.client_config(None))
        .connect(common::tls::server_name("localhost"), tunnel)
        .await;
    assert!(handshake.is_err(), "the handshake must not pass through a revoked tunnel");
    let seen = origin.next_connection().await;
    assert_eq!(seen.first_read, 0, "not a byte reached the origin: {seen:?}");
    let audit = gateway.shutdown_and_audit().await;
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(audit[0]["decision"], "deny", "{}", audit[0]);
    assert!(audit[0]["error"].as_str().is_some_and(|e| e.contains("reload")), "{}", audit[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tunnels_are_counted_as_denies() {
    let echo = Echo::start().await;
    let (mut gateway, file, _) = start(&body(&["alice", "bob"], &[]), no_watcher()).await;
    let mut tunnel = open_tunnel(&gateway, &echo, "bob").await;
    file.write(&body(&["alice"], &[]));
    assert_eq!(reload(&gateway).await.json()["tunnels_revoked"], 1);
    assert!(closed_by_peer(&mut tunnel).await);
    let metrics = gateway.shutdown_and_metrics().await;
    let sample = "tollgate_requests_total{decision=\"deny\",kind=\"connect\",listener=\"proxy\",reason=\"revoked\"}";
    assert_eq!(metric_value(&metrics, sample), 1.0);
    assert_eq!(metric_value(&metrics, "tollgate_tunnels_active"), 0.0);
}

/// Polls `/admin/config` until its version is `version` (bounded): the watcher's reload is observable there.
async fn wait_for_version(gateway: &TestGateway, version: u64) {
    for _ in 0..800 {
        if config_info(gateway).await["version"] == version {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the config did not reach version {version} within 20s: {}", config_info(gateway).await);
}

/// Polls the reload error counter until it is `count` (bounded).
async fn wait_for_reload_errors(gateway: &TestGateway, count: f64) {
    for _ in 0..800 {
        if gateway.metric("tollgate_config_reloads_total{result=\"error\"}").await == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the reload error count did not reach {count} within 20s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watcher_reloads_changed_files_without_the_endpoint() {
    let origin = Origin::start().await;
    let options = Options { watch_interval: Some(Duration::from_millis(50)), ..Options::default() };
    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users.yaml");
    let file = ConfigFile::new(dir.path(), &format!("{{bind: \"127.0.0.1:0\", token: \"{TOKEN}\"}}"));
    let with_users_file =
        |deny: &[String]| body(&[], deny).replace("  users:\n", &format!("  users_file: \"{}\"\n", users.display()));
    let user_line = |name: &str| format!("- {{name: {name}, password_hash: \"{}\"}}\n", password_hash());
    std::fs::write(&users, user_line("alice")).expect("write users");
    file.write(&with_users_file(&[]));
    let gateway = TestGateway::start_file(&file.path, dir, options).await;
    assert_eq!(get(&gateway, "alice", &origin).await.status, 200);

    // The config file changes.
    let denied = format!("127.0.0.1:{}", origin.address.port());
    let text = file.write(&with_users_file(std::slice::from_ref(&denied)));
    wait_for_version(&gateway, 2).await;
    assert_eq!(config_info(&gateway).await["sha256"], sha256(&text));
    assert_refused(&get(&gateway, "alice", &origin).await, 403, "deny_rule", Some("policy.deny[0]"), "watched");

    // A file the config names changes: the users file.
    file.write(&with_users_file(&[]));
    wait_for_version(&gateway, 3).await;
    std::fs::write(&users, user_line("zoe")).expect("rewrite users");
    wait_for_version(&gateway, 4).await;
    assert_eq!(get(&gateway, "zoe", &origin).await.status, 200, "the new user");
    assert_eq!(get(&gateway, "alice", &origin).await.status, 407, "the removed user");

    // An invalid change is refused once (not on every poll), and the running config stays.
    file.write("policy:\n  default: sometimes\n");
    wait_for_reload_errors(&gateway, 1.0).await;
    assert_eq!(get(&gateway, "zoe", &origin).await.status, 200);
    assert_eq!(config_info(&gateway).await["version"], 4);
    let text = file.write(&with_users_file(&[denied]));
    wait_for_version(&gateway, 5).await;
    assert_eq!(config_info(&gateway).await["sha256"], sha256(&text));
    assert_eq!(gateway.metric("tollgate_config_reloads_total{result=\"error\"}").await, 1.0);
    assert_eq!(gateway.metric("tollgate_config_reloads_total{result=\"ok\"}").await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_the_config_is_reloaded_under_load() {
    const CLIENTS: usize = 4;
    const REQUESTS: usize = 300;
    const RELOADS: usize = 20;
    let origin = Origin::start().await;
    let echo = Echo::start().await;
    // Two versions of the config that differ (a user, a deny rule elsewhere) but both allow the traffic.
    let a = body(&["alice"], &[]);
    let b = body(&["alice", "bob"], &["203.0.113.0/24".to_owned()]);
    let (mut gateway, file, _) = start(&a, no_watcher()).await;
    let mut tunnel = open_tunnel(&gateway, &echo, "alice").await;
    let gateway_address = gateway.proxy;
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (done, progress, url) = (done.clone(), progress.clone(), origin.url(&format!("/load/{client}")));
        clients.push(tokio::spawn(async move {
            let request = format!(
                "GET {url} HTTP/1.1\r\nHost: origin\r\nProxy-Authorization: {}\r\n\r\n",
                basic("alice", PASSWORD)
            );
            let mut stream = TcpStream::connect(gateway_address).await.expect("connect");
            for n in 0..REQUESTS {
                stream.write_all(request.as_bytes()).await.expect("write request");
                let response = read_response(&mut stream).await;
                assert_eq!(response.status, 200, "client {client}, request {n}: {response:?}");
                done.fetch_add(1, Ordering::SeqCst);
                progress.notify_one();
            }
        }));
    }
    // Reloads spread over the load: the i-th waits until i × 50 of the 1200 requests are done.
    let mut versions = Vec::new();
    for i in 1..=RELOADS {
        while done.load(Ordering::SeqCst) < i * 50 {
            tokio::time::timeout(Duration::from_secs(20), progress.notified()).await.expect("the load makes progress");
        }
        file.write(if i % 2 == 1 { &b } else { &a });
        let response = reload(&gateway).await;
        assert_eq!(response.status, 200, "reload {i}: {response:?}");
        assert_eq!(response.json()["tunnels_revoked"], 0);
        versions.push(response.json()["version"].as_u64().expect("version"));
    }
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client).await.expect("clients finish").expect("client task");
    }
    assert_eq!(versions, (2..=RELOADS as u64 + 1).collect::<Vec<_>>());
    assert_eq!(origin.request_heads().len(), CLIENTS * REQUESTS);
    // The tunnel that every version allows stayed open through all of it.
    assert_echoes(&mut tunnel, b"after the reloads").await;
    drop(tunnel);
    let metrics = gateway.shutdown_and_metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_config_reloads_total{result=\"ok\"}"), RELOADS as f64);
    assert_eq!(metric_value(&metrics, "tollgate_config_reloads_total{result=\"error\"}"), 0.0);
    let allowed = "tollgate_requests_total{decision=\"allow\",kind=\"http\",listener=\"proxy\",reason=\"ok\"}";
    assert_eq!(metric_value(&metrics, allowed), (CLIENTS * REQUESTS) as f64);
}

/// Updates a Kubernetes-style volume in `dir` the way the kubelet does for a ConfigMap or Secret: the files go into
/// a new timestamped directory, a `..data_tmp` symlink to it is renamed over `..data` (one atomic step), and the old
/// directory is removed. `dir/NAME` is a symlink to `..data/NAME` throughout, so the file's path never changes.
fn publish_like_the_kubelet(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    let timestamped = format!("..2026_12_05_12_00_{generation:02}.{generation}");
    std::fs::create_dir(dir.join(&timestamped)).expect("timestamped dir");
    for (name, text) in files {
        std::fs::write(dir.join(&timestamped).join(name), text).expect("write into the timestamped dir");
    }
    std::os::unix::fs::symlink(&timestamped, dir.join("..data_tmp")).expect("..data_tmp");
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).expect("the file's symlink");
        }
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).expect("remove the old timestamped dir");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watcher_reloads_a_config_map_volume_whose_data_symlink_the_kubelet_swapped() {
    let origin = Origin::start().await;
    let options = Options { watch_interval: Some(Duration::from_millis(50)), ..Options::default() };
    let dir = tempfile::tempdir().expect("temp dir");
    let volume = dir.path().join("config");
    std::fs::create_dir(&volume).expect("the volume's mount point");
    let file = ConfigFile::new(dir.path(), &format!("{{bind: \"127.0.0.1:0\", token: \"{TOKEN}\"}}"));
    let text = |deny: &[String]| format!("{}{}", file.header, body(&["alice"], deny));
    let denied = format!("127.0.0.1:{}", origin.address.port());
    publish_like_the_kubelet(&volume, 1, &[("tollgate.yaml", &text(&[]))]);
    let gateway = TestGateway::start_file(&volume.join("tollgate.yaml"), dir, options).await;
    assert_eq!(get(&gateway, "alice", &origin).await.status, 200);

    // The ConfigMap changes: the path the gateway reads is the same symlink, now resolving to a new file.
    let changed = text(std::slice::from_ref(&denied));
    publish_like_the_kubelet(&volume, 2, &[("tollgate.yaml", &changed)]);
    wait_for_version(&gateway, 2).await;
    assert_eq!(config_info(&gateway).await["sha256"], sha256(&changed));
    assert_refused(&get(&gateway, "alice", &origin).await, 403, "deny_rule", Some("policy.deny[0]"), "swapped");

    // Another change of the same length: the swap itself is noticed, not only a change of size.
    let same_length = changed.replace(&denied, &format!("127.0.0.9:{}", origin.address.port()));
    assert_eq!(same_length.len(), changed.len());
    publish_like_the_kubelet(&volume, 3, &[("tollgate.yaml", &same_length)]);
    wait_for_version(&gateway, 3).await;
    assert_eq!(config_info(&gateway).await["sha256"], sha256(&same_length));
    assert_eq!(get(&gateway, "alice", &origin).await.status, 200, "the deny no longer names the origin");
    assert_eq!(gateway.metric("tollgate_config_reloads_total{result=\"error\"}").await, 0.0);
}
