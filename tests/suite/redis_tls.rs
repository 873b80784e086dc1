//! `rediss://`: the Redis state backend over TLS to a real `redis-server --tls-port`, verified with the upstream
//! trust settings (`upstream.trust.extra_ca`, `upstream.client_cert` presented to a server that requires one).

use crate::common;

use std::time::Duration;

use common::pki::{client_params, server_params, Authority};
use common::redis::{RedisServer, TlsFiles};
use rcgen::DnType;
use tollgate::limits::redis::{Redis, RedisOptions};
use tollgate::limits::{Admission, Backend, Bucket, Rate, Scope};
use tollgate::tls::UpstreamFiles;

const T0: u64 = 1_764_300_000_000_000;

/// A CA, the server's certificate for 127.0.0.1 and a client certificate, all in `dir`.
struct Files {
    ca: Authority,
    server: common::pki::Leaf,
    client: common::pki::Leaf,
}

fn files(dir: &std::path::Path) -> Files {
    let ca = Authority::new(dir, "redis-ca", "tollgate tests redis CA");
    let server = ca.issue(dir, "redis-server", server_params(&["127.0.0.1", "localhost"]));
    let client = ca.issue(dir, "redis-client", client_params(&[(DnType::CommonName, "tollgate")], Vec::new()));
    Files { ca, server, client }
}

fn bucket() -> Bucket {
    Bucket { key: "rate:org".into(), scope: Scope::Org, rate: Rate { per_minute: 60, burst: 2 } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_is_verified_with_the_upstream_trust_and_presents_the_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = files(dir.path());
    let server =
        RedisServer::start_tls(TlsFiles { cert: &files.server.pem, key: &files.server.key, client_ca: &files.ca.pem })
            .await;
    assert!(server.url().starts_with("rediss://"));
    let options = RedisOptions { timeout: Duration::from_secs(3), ..RedisOptions::default() };

    // The CA and the client certificate from the upstream settings: verified, admitted, exact.
    let trust = UpstreamFiles {
        system_roots: false,
        extra_ca: vec![files.ca.pem.clone()],
        client_cert: Some((files.client.pem.clone(), files.client.key.clone())),
    };
    let redis = Redis::open(&server.url(), options, Some(&trust)).expect("valid URL");
    redis.ping().await.expect("PING over TLS");
    let org = [bucket()];
    assert_eq!(redis.acquire(&org, T0).await.expect("answers"), Admission::Admit);
    assert_eq!(redis.acquire(&org, T0).await.expect("answers"), Admission::Admit);
    assert!(matches!(redis.acquire(&org, T0).await.expect("answers"), Admission::Limited { bucket: 0, .. }));

    // Only the system roots: the private CA is unknown, and nothing is admitted.
    let system_only = UpstreamFiles { system_roots: true, extra_ca: Vec::new(), ..trust.clone() };
    let untrusted = Redis::open(&server.url(), options, Some(&system_only)).expect("valid URL");
    let error = untrusted.acquire(&org, T0).await.expect_err("an unknown issuer is refused");
    println!("untrusted server: {error}");
    assert!(error.to_string().contains("state backend unavailable"), "{error}");

    // Trusted, but without the client certificate the server requires.
    let anonymous = UpstreamFiles { client_cert: None, ..trust.clone() };
    let refused = Redis::open(&server.url(), options, Some(&anonymous)).expect("valid URL");
    assert!(refused.ping().await.is_err(), "the server requires a client certificate");

    // No trusted root at all is refused before any connection, naming the settings.
    let nothing = UpstreamFiles { system_roots: false, extra_ca: Vec::new(), client_cert: None };
    let error = Redis::open(&server.url(), options, Some(&nothing)).expect_err("no roots");
    assert!(error.to_string().contains("extra_ca"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_rediss_state_uses_the_upstream_trust_settings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = files(dir.path());
    let server =
        RedisServer::start_tls(TlsFiles { cert: &files.server.pem, key: &files.server.key, client_ca: &files.ca.pem })
            .await;
    let origin = common::Origin::start().await;
    let yaml = format!(
        "auth: {{anonymous: dev}}\n{}limits:\n  org: {{rpm: 2}}\nstate:\n  backend: redis\n  redis_url: \"{}\"\n\
         upstream:\n  trust: {{system_roots: false, extra_ca: [\"{}\"]}}\n  client_cert: {{cert: \"{}\", key: \"{}\"}}\n",
        common::LOOPBACK_POLICY,
        server.url(),
        files.ca.pem.display(),
        files.client.pem.display(),
        files.client.key.display()
    );
    let mut gateway = common::TestGateway::start(&yaml).await;
    let request =
        format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", origin.url("/tls-state"), origin.address);
    let statuses = [
        common::exchange(gateway.proxy, request.as_bytes()).await.status,
        common::exchange(gateway.proxy, request.as_bytes()).await.status,
        common::exchange(gateway.proxy, request.as_bytes()).await.status,
    ];
    assert_eq!(statuses, [200, 200, 429], "the org's burst of 2 is kept in Redis over TLS");
    assert_eq!(gateway.metric("tollgate_state_errors_total{backend=\"redis\"}").await, 0.0);
    gateway.shutdown().await;
}
