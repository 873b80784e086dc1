//! The TLS listener: an `https://` proxy URL works for curl and rustls clients (forwarding and CONNECT), mTLS
//! refuses every kind of bad client certificate in the handshake (and counts it), and a verified certificate
//! names the principal and team, winning over any `Proxy-Authorization`.

use crate::common;

use std::sync::Arc;

use common::pki::{self, Leaf, Pki};
use common::tls::{connect, get, tls_exchange};
use common::{basic, curl, hash, metric_value, Echo, Origin, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Destinations: loopback origins only.
const POLICY: &str = "policy:\n  default: deny\n  allow: [\"127.0.0.1\"]\n  allow_private: [\"127.0.0.0/8\"]\n";

/// A TLS listener called `proxy-tls` with the server leaf and `extra` TLS keys (e.g. `client_auth: required`).
fn listener(pki: &Pki, extra: &str) -> String {
    format!(
        "listeners:\n  - name: proxy-tls\n    bind: \"127.0.0.1:0\"\n    tls: {{cert: \"{}\", key: \"{}\"{extra}}}\n",
        pki.server.pem.display(),
        pki.server.key.display()
    )
}

/// The mTLS keys of a listener's `tls:` map: `client_ca` (the test CA), the CRL, and `mode`.
fn mtls(pki: &Pki, mode: &str) -> String {
    format!(", client_ca: \"{}\", crl: \"{}\", client_auth: {mode}", pki.ca.pem.display(), pki.crl.display())
}

fn proxy_url(gateway: &TestGateway) -> String {
    format!("https://localhost:{}", gateway.listener("proxy-tls").port())
}

/// Connects with `client` and waits for the outcome of the handshake: the error the client saw. With TLS 1.3
/// the client finishes its side before the server has checked the certificate; the server's alert then ends
/// the first read. Panics when the gateway accepted the connection.
async fn refused(gateway: &TestGateway, config: Arc<rustls::ClientConfig>, context: &str) -> String {
    let mut stream = match connect(gateway.listener("proxy-tls"), "localhost", config).await {
        Ok(stream) => stream,
        Err(error) => return error.to_string(),
    };
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut buf)).await {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(n)) => panic!("{context}: the handshake should fail, but the connection read {n} bytes"),
        Err(_) => panic!("{context}: the handshake should fail, but the gateway kept the connection open"),
    }
}

/// curl through the TLS listener, trusting the test CA and presenting `leaf`.
async fn curl_with_certificate(gateway: &TestGateway, pki: &Pki, leaf: &Leaf, url: &str) -> (i32, String, String) {
    let (cert, key) = (leaf.pem.to_str().unwrap(), leaf.key.to_str().unwrap());
    let ca = pki.ca.pem.to_str().unwrap();
    curl(&["--proxy", &proxy_url(gateway), "--proxy-cacert", ca, "--proxy-cert", cert, "--proxy-key", key, url]).await
}

fn tls12_client(pki: &Pki, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some(leaf) => builder.with_client_auth_cert(leaf.chain(), leaf.private_key()).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uses_an_https_proxy_for_forwarding_and_connect() {
    let pki = Pki::new();
    let origin = Origin::start().await;
    let mut gateway =
        TestGateway::start_full(&format!("{}auth: {{anonymous: dev}}\n{POLICY}", listener(&pki, ""))).await;
    let proxy = proxy_url(&gateway);
    let ca = pki.ca.pem.to_str().unwrap();

    let (code, body, stderr) = curl(&["--proxy", &proxy, "--proxy-cacert", ca, &origin.url("/forwarded")]).await;
    assert_eq!((code, body.as_str()), (0, "origin saw /forwarded"), "forwarded through the TLS listener: {stderr}");
    let (code, body, stderr) =
        curl(&["--proxy", &proxy, "--proxy-cacert", ca, "--proxytunnel", &origin.url("/tunnelled")]).await;
    assert_eq!((code, body.as_str()), (0, "origin saw /tunnelled"), "CONNECT through the TLS listener: {stderr}");
    // The listener really is TLS with the configured certificate: without the CA, curl refuses it.
    let (code, _, stderr) = curl(&["--proxy", &proxy, &origin.url("/unverified")]).await;
    assert_ne!(code, 0, "curl must not trust the listener without --proxy-cacert: {stderr}");

    // A rustls client offering h2 is held to HTTP/1.1 (ALPN), and TLS 1.2 is served too.
    let mut config = (*pki.client_config(None)).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let stream = connect(gateway.listener("proxy-tls"), "localhost", Arc::new(config)).await.expect("TLS 1.3");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(stream);
    let response =
        tls_exchange(gateway.listener("proxy-tls"), tls12_client(&pki, None), &get(&origin.url("/tls12"), &[]))
            .await
            .expect("TLS 1.2 client served");
    assert_eq!((response.status, response.body.as_str()), (200, "origin saw /tls12"));

    let records = gateway.shutdown_and_audit().await;
    let kinds: Vec<_> = records
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["listener"].as_str().unwrap(), r["status"].as_u64()))
        .collect();
    assert_eq!(
        kinds,
        [("http", "proxy-tls", Some(200)), ("connect", "proxy-tls", Some(200)), ("http", "proxy-tls", Some(200))],
        "{records:#?}"
    );
    assert_eq!(origin.request_heads().len(), 3, "the unverified curl never reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_every_bad_kind_in_the_handshake() {
    let pki = Pki::new();
    let origin = Origin::start().await;
    let mut gateway = TestGateway::start_full(&format!(
        "{}auth: {{anonymous: deny, mtls: {{identity: san_email, team_from: ou}}}}\n{POLICY}",
        listener(&pki, &mtls(&pki, "required"))
    ))
    .await;

    // Each refusal carries the alert for its reason.
    let cases: [(Option<&Leaf>, &str, &str); 6] = [
        (None, "CertificateRequired", "no client certificate"),
        (Some(&pki.untrusted), "UnknownCA", "a certificate from an untrusted CA"),
        (Some(&pki.expired), "CertificateExpired", "an expired certificate"),
        (Some(&pki.not_yet_valid), "CertificateExpired", "a certificate not valid yet"),
        (Some(&pki.revoked), "CertificateRevoked", "a certificate the CRL revokes"),
        (Some(&pki.wrong_usage), "UnsupportedCertificate", "a serverAuth-only certificate"),
    ];
    for (client, alert, context) in cases {
        let error = refused(&gateway, pki.client_config(client), context).await;
        assert!(error.contains(alert), "{context}: expected alert {alert}, got {error:?}");
    }
    // TLS 1.2 without a certificate fails inside the handshake itself.
    let error = refused(&gateway, tls12_client(&pki, None), "TLS 1.2 without a certificate").await;
    assert!(!error.is_empty());

    // A good certificate is served: rustls and curl.
    let response = tls_exchange(
        gateway.listener("proxy-tls"),
        pki.client_config(Some(&pki.client_email)),
        &get(&origin.url("/good"), &[]),
    )
    .await
    .expect("a valid client certificate is accepted");
    assert_eq!((response.status, response.body.as_str()), (200, "origin saw /good"));
    let (code, body, stderr) = curl_with_certificate(&gateway, &pki, &pki.client_cn, &origin.url("/curl-cert")).await;
    // client_cn has no SAN e-mail: the handshake succeeds but it names no principal, so anonymous: deny answers.
    assert_eq!(code, 0, "{stderr}");
    assert!(body.contains("proxy_auth_required"), "a certificate without the identity field does not admit: {body}");
    let (code, body, stderr) =
        curl_with_certificate(&gateway, &pki, &pki.client_email, &origin.url("/curl-good")).await;
    assert_eq!((code, body.as_str()), (0, "origin saw /curl-good"), "{stderr}");
    let (code, _, stderr) = curl(&[
        "--proxy",
        &proxy_url(&gateway),
        "--proxy-cacert",
        pki.ca.pem.to_str().unwrap(),
        &origin.url("/curl-none"),
    ])
    .await;
    assert_ne!(code, 0, "curl without a client certificate is refused: {stderr}");

    let paths: Vec<String> = origin.request_heads().iter().map(|h| h.split(' ').nth(1).unwrap().to_owned()).collect();
    assert_eq!(paths, ["/good", "/curl-good"], "only the good certificates reached the origin");
    // Every connection task has ended after shutdown: the counters are final.
    let metrics = gateway.shutdown_and_metrics().await;
    let sample = |reason: &str| {
        metric_value(
            &metrics,
            &format!("tollgate_tls_handshake_failures_total{{listener=\"proxy-tls\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(sample("client_certificate"), 8.0, "6 bad kinds + TLS 1.2 + curl without a certificate:\n{metrics}");
    assert_eq!(sample("protocol"), 0.0, "{metrics}");
}

/// An `auth.users` entry `carol` / `right` (team `red`, defined), for the Basic-versus-certificate cases.
fn carol() -> String {
    format!(
        "  users:\n    - {{name: carol, password_hash: \"{}\", teams: [red]}}\nteams: {{red: {{}}}}\n",
        hash("right")
    )
}

/// One `auth.mtls` setting, a certificate with its expected user and team, and a verified certificate that
/// lacks the configured field.
struct IdentityCase<'a> {
    mtls: &'static str,
    leaf: &'a Leaf,
    user: &'static str,
    team: Option<&'static str>,
    lacking: Option<&'a Leaf>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_names_user_and_team_for_each_identity_field() {
    let pki = Pki::new();
    let origin = Origin::start().await;
    let cases = [
        IdentityCase {
            mtls: "{identity: san_email, team_from: ou}",
            leaf: &pki.client_email,
            user: pki::EMAIL,
            team: Some(pki::EMAIL_TEAM),
            lacking: Some(&pki.client_cn),
        },
        IdentityCase {
            mtls: "{identity: san_uri, team_from: ou}",
            leaf: &pki.client_uri,
            user: pki::URI,
            team: Some(pki::URI_TEAM),
            lacking: Some(&pki.client_email),
        },
        IdentityCase {
            mtls: "{identity: cn, team_from: ou}",
            leaf: &pki.client_cn,
            user: pki::CN,
            team: Some(pki::CN_TEAM),
            lacking: None,
        },
        IdentityCase {
            mtls: "{identity: san_email}",
            leaf: &pki.client_email,
            user: pki::EMAIL,
            team: None,
            lacking: None,
        },
    ];
    for IdentityCase { mtls: mtls_config, leaf, user, team, lacking } in cases {
        let gateway = TestGateway::start_full(&format!(
            "{}auth:\n  anonymous: deny\n  mtls: {mtls_config}\n{POLICY}",
            listener(&pki, &mtls(&pki, "required"))
        ))
        .await;
        let address = gateway.listener("proxy-tls");
        let response = tls_exchange(address, pki.client_config(Some(leaf)), &get(&origin.url("/who"), &[]))
            .await
            .unwrap_or_else(|e| panic!("{mtls_config}: {e}"));
        assert_eq!(response.status, 200, "{mtls_config}: the certificate alone admits: {response:?}");
        if let Some(lacking) = lacking {
            let response = tls_exchange(address, pki.client_config(Some(lacking)), &get(&origin.url("/nobody"), &[]))
                .await
                .expect("a verified certificate completes the handshake");
            assert_eq!(
                response.status, 407,
                "{mtls_config}: a certificate without the field names nobody: {response:?}"
            );
        }
        let records = gateway.audit().await;
        assert_eq!(records[0]["user"].as_str(), Some(user), "{mtls_config}: {records:#?}");
        assert_eq!(records[0]["team"].as_str(), team, "{mtls_config}: {records:#?}");
        assert_eq!(records[0]["listener"], "proxy-tls");
        assert_eq!(records.len(), 1 + usize::from(lacking.is_some()), "{records:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_wins_over_proxy_authorization() {
    let pki = Pki::new();
    let origin = Origin::start().await;
    let mut gateway = TestGateway::start_full(&format!(
        "{}auth:\n  anonymous: deny\n  mtls: {{identity: san_email, team_from: ou}}\n{}{POLICY}",
        listener(&pki, &mtls(&pki, "optional")),
        carol()
    ))
    .await;
    let address = gateway.listener("proxy-tls");
    let wrong = format!("Proxy-Authorization: {}", basic("carol", "wrong"));
    let right = format!("Proxy-Authorization: {}", basic("carol", "right"));

    // Without a certificate, Basic decides: nothing or wrong → 407, right → carol.
    let anonymous = tls_exchange(address, pki.client_config(None), &get(&origin.url("/none"), &[])).await.unwrap();
    assert_eq!(anonymous.status, 407, "{anonymous:?}");
    assert_eq!(anonymous.header("proxy-authenticate").as_deref(), Some("Basic realm=\"tollgate\""));
    let bad = tls_exchange(address, pki.client_config(None), &get(&origin.url("/wrong"), &[&wrong])).await.unwrap();
    assert_eq!(bad.status, 407, "{bad:?}");
    let good = tls_exchange(address, pki.client_config(None), &get(&origin.url("/basic"), &[&right])).await.unwrap();
    assert_eq!(good.status, 200, "{good:?}");

    // With a certificate, the certificate decides, whatever the header says.
    let cert = pki.client_config(Some(&pki.client_email));
    let response = tls_exchange(address, cert.clone(), &get(&origin.url("/cert-wrong"), &[&wrong])).await.unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "origin saw /cert-wrong"));
    let response = tls_exchange(address, cert, &get(&origin.url("/cert-right"), &[&right])).await.unwrap();
    assert_eq!(response.status, 200, "{response:?}");

    let records = gateway.audit().await;
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["status"].as_u64().unwrap(), r["user"].as_str(), r["team"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("/none", 407, None, None),
            ("/wrong", 407, None, None),
            ("/basic", 200, Some("carol"), Some("red")),
            ("/cert-wrong", 200, Some(pki::EMAIL), Some(pki::EMAIL_TEAM)),
            ("/cert-right", 200, Some(pki::EMAIL), Some(pki::EMAIL_TEAM)),
        ],
        "{records:#?}"
    );
    // Proxy-Authorization never reaches the origin, whoever it named.
    assert!(origin.request_heads().iter().all(|h| !h.to_ascii_lowercase().contains("proxy-authorization")));

    // A CONNECT on the TLS listener is admitted by the certificate too.
    let echo = Echo::start().await;
    let mut stream = connect(address, "localhost", pki.client_config(Some(&pki.client_email))).await.unwrap();
    let authority = echo.address.to_string();
    stream.write_all(common::connect_request(&authority, &[&wrong]).as_bytes()).await.unwrap();
    let mut answer = vec![0u8; common::tls::ESTABLISHED.len()];
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_exact(&mut answer))
        .await
        .expect("200 in time")
        .expect("200");
    assert_eq!(answer, common::tls::ESTABLISHED, "{:?}", String::from_utf8_lossy(&answer));
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping");
    drop(stream);
    // `optional` does not let a bad certificate through.
    let error = refused(&gateway, pki.client_config(Some(&pki.expired)), "optional, expired certificate").await;
    assert!(error.contains("CertificateExpired"), "{error}");

    let records = gateway.shutdown_and_audit().await;
    let tunnel = records.last().unwrap();
    assert_eq!((tunnel["kind"].as_str(), tunnel["status"].as_u64()), (Some("connect"), Some(200)), "{tunnel}");
    assert_eq!(tunnel["user"].as_str(), Some(pki::EMAIL), "{tunnel}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_plain_clients_are_cut_and_counted() {
    let pki = Pki::new();
    let mut gateway = TestGateway::start_full(&format!(
        "{}auth: {{anonymous: dev}}
server: {{tls_handshake_timeout: 200ms}}
{POLICY}",
        listener(&pki, "")
    ))
    .await;
    let address = gateway.listener("proxy-tls");
    // Connects and sends nothing: the handshake timeout closes it.
    let mut stalled = tokio::net::TcpStream::connect(address).await.unwrap();
    assert!(common::closed_by_peer(&mut stalled).await, "a stalled handshake is closed");
    // Speaks plain HTTP to the TLS port: not a TLS record, refused.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    plain.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"), "no HTTP answer on a TLS port");

    let metrics = gateway.shutdown_and_metrics().await;
    let sample = |reason: &str| {
        metric_value(
            &metrics,
            &format!("tollgate_tls_handshake_failures_total{{listener=\"proxy-tls\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!((sample("timeout"), sample("protocol"), sample("client_certificate")), (1.0, 1.0, 0.0), "{metrics}");
    assert!(gateway.audit_path().metadata().map(|m| m.len() == 0).unwrap_or(true), "no request, no audit record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ou_team_is_the_team_policy_applies() {
    let pki = Pki::new();
    let origin = Origin::start().await;
    // Nothing is allowed globally; team `backend` (the OU of the e-mail certificate) may reach the origin.
    let gateway = TestGateway::start_full(&format!(
        "{}auth:\n  anonymous: deny\n  mtls: {{identity: cn, team_from: ou}}\n\
         teams:\n  backend: {{allow: [\"127.0.0.1\"]}}\n  ops: {{}}\n\
         policy: {{default: deny, allow_private: [\"127.0.0.0/8\"]}}\n",
        listener(&pki, &mtls(&pki, "required"))
    ))
    .await;
    let address = gateway.listener("proxy-tls");
    let backend = pki.client_config(Some(&pki.client_email));
    let response = tls_exchange(address, backend, &get(&origin.url("/team"), &[])).await.unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "origin saw /team"), "{response:?}");
    let ops = pki.client_config(Some(&pki.client_cn));
    let response = tls_exchange(address, ops, &get(&origin.url("/other-team"), &[])).await.unwrap();
    assert_eq!(response.status, 403, "team ops has no allow rule: {response:?}");

    let records = gateway.audit().await;
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r["user"].as_str().unwrap(), r["team"].as_str().unwrap(), r["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("alice", pki::EMAIL_TEAM, "allow"), (pki::CN, pki::CN_TEAM, "deny")], "{records:#?}");
    assert_eq!(origin.request_heads().len(), 1);
}

/// A client config that trusts only `authority`.
fn trusting(authority: &pki::Authority) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(authority.der()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_listener_certificate_without_a_restart() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::copy(&pki.server.pem, &cert).unwrap();
    std::fs::copy(&pki.server.key, &key).unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - name: proxy-tls\n    bind: \"127.0.0.1:0\"\n    tls: {{cert: \"{}\", key: \"{}\"}}\nauth: {{anonymous: dev}}\nstate: {{path: \"{}\"}}\n{POLICY}",
            cert.display(),
            key.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let running = tollgate::app::start(tollgate::config::Config::load(&path).unwrap()).await.unwrap();
    let address = running.address("proxy-tls").unwrap();
    connect(address, "localhost", trusting(&pki.ca)).await.expect("the original certificate is served");

    std::fs::copy(&pki.rotated_server.pem, &cert).unwrap();
    std::fs::copy(&pki.rotated_server.key, &key).unwrap();
    tollgate::reload::reload(&running.shared).expect("the rotated certificate loads");

    connect(address, "localhost", trusting(&pki.rogue_ca))
        .await
        .expect("new handshakes present the rotated certificate");
    assert!(
        connect(address, "localhost", trusting(&pki.ca)).await.is_err(),
        "the old certificate must no longer be served"
    );
    running.shutdown().await;
}
