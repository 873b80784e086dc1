//! `tollgate ca init` and `tollgate cert server|client` through the real binary, checked with real TLS clients
//! (curl and rustls) against an in-test tokio-rustls server on 127.0.0.1:0, and every certificate tollgate writes or
//! mints checked by a strict DER parser (Python's `cryptography`, `tests/clients/strict_der.py`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tollgate::intercept::ca::Minter;
use tollgate::target::Host;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Runs the real `tollgate` binary.
fn tollgate(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")).args(args).output().expect("tollgate runs")
}

/// Runs `tollgate` and asserts it exits 0.
fn tollgate_ok(args: &[&str]) -> String {
    let output = tollgate(args);
    assert!(output.status.success(), "tollgate {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut text(path).as_bytes()).collect::<Result<_, _>>().expect("PEM certificates")
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut text(path).as_bytes()).expect("PEM").expect("a private key")
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in chain(ca) {
        roots.add(cert).expect("usable root");
    }
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server on 127.0.0.1:0 presenting `DIR/server.pem`; with `client_ca` it requires a client certificate
/// signed by it. It answers every request with `200 OK` and the body `hello <client CN or ->`.
async fn serve(dir: &Path, client_ca: Option<&Path>) -> SocketAddr {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().expect("TLS");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain(&dir.join("server.pem")), key(&dir.join("server.key"))).expect("cert");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake is what some tests expect; the client reports it.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let client = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first()).map(common_name);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("hello {}", client.as_deref().unwrap_or("-"));
                let response =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    address
}

fn common_name(der: &CertificateDer<'_>) -> String {
    let (_, cert) = X509Certificate::from_der(der).expect("parses");
    let cn = cert.subject().iter_common_name().next().expect("a CN");
    cn.as_str().expect("a string CN").to_owned()
}

/// `GET /` with a rustls client trusting only `ca`, optionally presenting `identity` (`(cert, key)`); the response.
async fn rustls_get(
    address: SocketAddr,
    name: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> std::io::Result<String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS")
        .with_root_certificates(roots(ca));
    let config = match identity {
        Some((cert, key_path)) => builder.with_client_auth_cert(chain(cert), key(key_path)).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

/// curl with a 10 s cap; the output.
async fn curl(args: &[&str]) -> Output {
    tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (scripts/test installs it)")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test]
async fn a_server_certificate_is_trusted_through_the_tollgate_ca_for_its_names_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let stdout = tollgate_ok(&["cert", "server", "--name", "proxy.test", "--ip", "127.0.0.1", "--dir", d]);
    assert!(stdout.contains("created the CA"), "{stdout}");
    assert!(stdout.contains("tls: {cert: ") && stdout.contains("server.pem, key: "), "{stdout}");
    assert!(stdout.contains("--proxy-cacert ") && stdout.contains("NODE_EXTRA_CA_CERTS="), "{stdout}");
    let server_chain = chain(&dir.path().join("server.pem"));
    assert_eq!(server_chain.len(), 2, "leaf and CA");
    assert_eq!(server_chain[1], chain(&dir.path().join("tollgate-ca.pem"))[0]);

    let address = serve(dir.path(), None).await;
    let port = address.port();
    let ca = format!("{d}/tollgate-ca.pem");
    let resolve = |host: &str| format!("{host}:{port}:127.0.0.1");

    let output =
        curl(&["--cacert", &ca, "--resolve", &resolve("proxy.test"), &format!("https://proxy.test:{port}/")]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello -");

    let output = curl(&["--cacert", &ca, &format!("https://127.0.0.1:{port}/")]).await;
    assert!(output.status.success(), "IP SAN: {}", String::from_utf8_lossy(&output.stderr));

    let output =
        curl(&["--cacert", &ca, "--resolve", &resolve("other.test"), &format!("https://other.test:{port}/")]).await;
    assert_eq!(output.status.code(), Some(60), "a name not given fails verification: {output:?}");

    let output = curl(&["--resolve", &resolve("proxy.test"), &format!("https://proxy.test:{port}/")]).await;
    assert_eq!(output.status.code(), Some(60), "without the tollgate CA the chain is untrusted: {output:?}");

    let response = rustls_get(address, "proxy.test", &dir.path().join("tollgate-ca.pem"), None).await.expect("rustls");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    rustls_get(address, "127.0.0.1", &dir.path().join("tollgate-ca.pem"), None).await.expect("rustls, IP SAN");
    assert!(rustls_get(address, "other.test", &dir.path().join("tollgate-ca.pem"), None).await.is_err());
}

#[tokio::test]
async fn a_client_certificate_names_user_and_team_and_passes_an_mtls_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    tollgate_ok(&["cert", "server", "--name", "proxy.test", "--dir", d]);
    let stdout = tollgate_ok(&["cert", "client", "--user", "alice@corp.example", "--team", "backend", "--dir", d]);
    assert!(stdout.contains("created the CA"), "{stdout}");
    assert!(stdout.contains("client_ca: ") && stdout.contains("client_auth: required"), "{stdout}");
    assert!(stdout.contains("--proxy-cert ") && stdout.contains("--proxy-key "), "{stdout}");
    assert!(stdout.contains("CLAUDE_CODE_CLIENT_CERT=") && stdout.contains("CLAUDE_CODE_CLIENT_KEY="), "{stdout}");

    let cert_path = dir.path().join("alice@corp.example.pem");
    let key_path = dir.path().join("alice@corp.example.key");
    let client_chain = chain(&cert_path);
    assert_eq!(client_chain.len(), 2, "leaf and CA");
    assert_eq!(client_chain[1], chain(&dir.path().join("clients-ca.pem"))[0]);
    let (_, cert) = X509Certificate::from_der(&client_chain[0]).expect("parses");
    let subject = cert.subject();
    assert_eq!(subject.iter_common_name().next().and_then(|a| a.as_str().ok()), Some("alice@corp.example"));
    assert_eq!(subject.iter_organizational_unit().next().and_then(|a| a.as_str().ok()), Some("backend"));
    let names = &cert.subject_alternative_name().expect("valid SAN").expect("a SAN").value.general_names;
    assert!(names.contains(&GeneralName::RFC822Name("alice@corp.example")), "{names:?}");
    assert!(names.contains(&GeneralName::URI("spiffe://tollgate/user/alice@corp.example")), "{names:?}");
    let usage = cert.extended_key_usage().expect("valid EKU").expect("an EKU").value;
    assert!(usage.client_auth && !usage.server_auth);
    assert_eq!(mode(&key_path), 0o600);

    let address = serve(dir.path(), Some(&dir.path().join("clients-ca.pem"))).await;
    let port = address.port();
    let tollgate_ca = dir.path().join("tollgate-ca.pem");
    let response =
        rustls_get(address, "proxy.test", &tollgate_ca, Some((&cert_path, &key_path))).await.expect("mTLS accepted");
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("hello alice@corp.example"),
        "{response}"
    );
    assert!(rustls_get(address, "proxy.test", &tollgate_ca, None).await.is_err(), "no client certificate");

    // A certificate from another clients CA is refused.
    let other = tempfile::tempdir().expect("temp dir");
    tollgate_ok(&["cert", "client", "--user", "mallory", "--dir", other.path().to_str().expect("utf-8")]);
    let (other_cert, other_key) = (other.path().join("mallory.pem"), other.path().join("mallory.key"));
    assert!(rustls_get(address, "proxy.test", &tollgate_ca, Some((&other_cert, &other_key))).await.is_err());

    let (ca, cert, key) =
        (format!("{d}/tollgate-ca.pem"), cert_path.display().to_string(), key_path.display().to_string());
    let resolve = format!("proxy.test:{port}:127.0.0.1");
    let url = format!("https://proxy.test:{port}/");
    let output = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, "--resolve", &resolve, &url]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello alice@corp.example");
    let output = curl(&["--cacert", &ca, "--resolve", &resolve, &url]).await;
    assert!(!output.status.success(), "curl without a client certificate is refused");
}

#[tokio::test]
async fn existing_files_are_kept_unless_forced_and_the_ca_is_reused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");

    let stdout = tollgate_ok(&["ca", "init", "--dir", d]);
    assert!(stdout.contains("NODE_EXTRA_CA_CERTS=") && stdout.contains("SSL_CERT_FILE"), "{stdout}");
    let output = tollgate(&["ca", "init", "--dir", d]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tollgate-ca.pem") && stderr.contains("--force"), "{stderr}");
    let ca_before = text(&dir.path().join("tollgate-ca.pem"));
    let stdout = tollgate_ok(&["ca", "init", "--dir", d, "--force"]);
    assert!(stdout.contains("replaced the previous CA"), "{stdout}");
    let ca = text(&dir.path().join("tollgate-ca.pem"));
    assert_ne!(ca, ca_before, "--force makes a new CA");

    let server = ["cert", "server", "--name", "proxy.test", "--dir", d];
    let stdout = tollgate_ok(&server);
    assert!(!stdout.contains("created the CA"), "the existing CA signs: {stdout}");
    let output = tollgate(&server);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.pem") && stderr.contains("--force"), "{stderr}");
    let first = text(&dir.path().join("server.pem"));
    tollgate_ok(&[&server[..], &["--force"]].concat());
    assert_ne!(text(&dir.path().join("server.pem")), first, "--force issues a new certificate");
    assert_eq!(text(&dir.path().join("tollgate-ca.pem")), ca, "--force on a certificate never replaces the CA");

    let client = ["cert", "client", "--user", "bob", "--dir", d];
    tollgate_ok(&client);
    let output = tollgate(&client);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bob.pem") && stderr.contains("--force"), "{stderr}");
    tollgate_ok(&[&client[..], &["--force"]].concat());

    for key in ["tollgate-ca.key", "clients-ca.key", "server.key", "bob.key"] {
        assert_eq!(mode(&dir.path().join(key)), 0o600, "{key}");
    }

    // The reissued server certificate chains to the CA loaded from disk.
    let address = serve(dir.path(), None).await;
    rustls_get(address, "proxy.test", &dir.path().join("tollgate-ca.pem"), None).await.expect("verifies");
}

#[test]
fn bad_names_are_usage_errors_and_write_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("certs");
    let d = target.to_str().expect("utf-8 path");
    for args in [
        &["cert", "server", "--name", "bad name", "--dir", d][..],
        &["cert", "server", "--name", "10.0.0.1", "--dir", d],
        &["cert", "server", "--name", "proxy.test", "--ip", "not-an-ip", "--dir", d],
        &["cert", "server", "--dir", d],
        &["cert", "client", "--user", "a b", "--dir", d],
        &["cert", "client", "--user", "clients-ca", "--dir", d],
    ] {
        let output = tollgate(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    assert!(!target.exists(), "nothing was written");
}

/// A plain HTTP origin on 127.0.0.1:0 that answers every request with `200` and the body `origin`.
async fn http_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin").await;
            });
        }
    });
    address
}

#[tokio::test]
async fn the_gateway_serves_its_tls_listener_with_the_generated_files_and_names_the_client() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    tollgate_ok(&["cert", "server", "--name", "proxy.test", "--ip", "127.0.0.1", "--dir", d]);
    tollgate_ok(&["cert", "client", "--user", "alice@corp.example", "--team", "backend", "--dir", d]);
    let yaml = format!(
        "listeners:\n  - {{name: proxy-tls, bind: \"127.0.0.1:0\", tls: {{cert: {d}/server.pem, key: {d}/server.key, \
         client_ca: {d}/clients-ca.pem, client_auth: required}}}}\n\
         auth: {{anonymous: deny, mtls: {{identity: san_email, team_from: ou}}}}\n\
         audit: {{file: {{path: {d}/audit.jsonl}}}}\n\
         state: {{path: {d}/state}}\n\
         policy:\n  default: deny\n  allow: [\"127.0.0.1\"]\n  allow_private: [\"127.0.0.0/8\"]\n"
    );
    let config = tollgate::config::Config::from_text(&yaml, Path::new("certs.yaml"), &|_| None).expect("config loads");
    let running = tollgate::app::start(config).await.expect("gateway starts");
    let proxy = running.listeners.iter().find(|(name, _)| &**name == "proxy-tls").expect("TLS listener").1;
    let origin = http_origin().await;

    let (ca, url) = (format!("{d}/tollgate-ca.pem"), format!("http://{origin}/"));
    let proxy_url = format!("https://127.0.0.1:{}", proxy.port());
    let (cert, key) = (format!("{d}/alice@corp.example.pem"), format!("{d}/alice@corp.example.key"));
    let output =
        curl(&["--proxy-cacert", &ca, "--proxy-cert", &cert, "--proxy-key", &key, "-x", &proxy_url, &url]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "origin");

    let output = curl(&["--proxy-cacert", &ca, "-x", &proxy_url, &url]).await;
    assert!(!output.status.success(), "no client certificate: {output:?}");
    running.shutdown().await;

    // The certificate named the principal: user from the SAN email, team from the OU.
    let audit = text(&dir.path().join("audit.jsonl"));
    let record: serde_json::Value = serde_json::from_str(audit.lines().next().expect("one record")).expect("JSON");
    assert_eq!(record["user"], "alice@corp.example", "{record}");
    assert_eq!(record["team"], "backend", "{record}");
    assert_eq!(record["decision"], "allow", "{record}");
}

/// Runs `tests/clients/strict_der.py` (Python's `cryptography`, from `scripts/test`'s venv) on `checks`; its exit
/// status and its one JSON line.
fn strict_der(checks: &[String]) -> (bool, serde_json::Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/strict_der.py");
    let output =
        std::process::Command::new(crate::common::python()).arg(script).args(checks).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("one JSON line ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    (output.status.success(), report)
}

/// Certificates as PEM, 64 base64 characters a line.
fn pem(chain: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut text = String::new();
    for cert in chain {
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        text.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            text.push('\n');
        }
        text.push_str("-----END CERTIFICATE-----\n");
    }
    text
}

/// The chain an intercepting gateway's minter presents for `host` (leaf, then its CA), as a rustls client trusting
/// `ca` receives it in a real handshake.
async fn minted_chain(minter: &Minter, host: &str, ca: &Path) -> Vec<CertificateDer<'static>> {
    let target = match host.parse() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(host.into()),
    };
    let server = minter.server_config(&target).await.expect("minted");
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS")
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).expect("server name");
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let (accepted, connected) = tokio::join!(
        TlsAcceptor::from(server).accept(server_io),
        TlsConnector::from(Arc::new(client)).connect(name, client_io)
    );
    accepted.expect("server side of the handshake");
    let tls = connected.expect("the minted leaf verifies");
    tls.get_ref().1.peer_certificates().expect("a chain").to_vec()
}

#[tokio::test]
async fn every_certificate_tollgate_writes_or_mints_is_strict_der() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    tollgate_ok(&["ca", "init", "--dir", d]);
    tollgate_ok(&["ca", "init", "--client", "--dir", d]);
    let server = "cert server --name proxy.test --name *.proxy.test --ip 127.0.0.1 --ip ::1 --dir";
    tollgate_ok(&server.split(' ').chain([d]).collect::<Vec<_>>());
    tollgate_ok(&["cert", "client", "--user", "alice@corp.example", "--team", "backend", "--dir", d]);
    tollgate_ok(&["cert", "client", "--user", "bob", "--dir", d]);

    // Interception leaves: a name, a name too long for a CN (the SAN alone names it), and IP addresses.
    let (ca_cert, ca_key) = (dir.path().join("interception-ca.pem"), dir.path().join("interception-ca.key"));
    let (minter, _) =
        Minter::load_or_create(&ca_cert, &ca_key, Duration::from_secs(24 * 60 * 60), 16).expect("interception CA");
    let long_name = format!("{}.example.test", "a".repeat(63));
    let mut checks: Vec<String> =
        ["tollgate-ca", "clients-ca", "interception-ca"].iter().map(|stem| format!("ca:{d}/{stem}.pem")).collect();
    for name in ["proxy.test", "www.proxy.test", "127.0.0.1", "::1"] {
        checks.push(format!("server:{d}/server.pem:{name}"));
    }
    checks.push(format!("client:{d}/alice@corp.example.pem"));
    checks.push(format!("client:{d}/bob.pem"));
    for (index, host) in ["api.anthropic.com", long_name.as_str(), "10.1.2.3", "2001:db8::7"].into_iter().enumerate() {
        let path = dir.path().join(format!("minted-{index}.pem"));
        std::fs::write(&path, pem(&minted_chain(&minter, host, &ca_cert).await)).expect("write the minted chain");
        checks.push(format!("server:{}:{host}", path.display()));
    }

    let (ok, report) = strict_der(&checks);
    assert!(ok, "{report:#}");
    assert_eq!(report["certificates"], 3 + 2 * (4 + 2 + 4), "{report}");
}

#[test]
fn the_strict_check_refuses_what_der_forbids() {
    use rcgen::{CertificateParams, CustomExtension, KeyPair};
    let dir = tempfile::tempdir().expect("temp dir");
    // A self-signed certificate carrying one extension whose value breaks a DER rule.
    let self_signed = |name: &str, oid: &[u64], value: &[u8]| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["strict.test".to_owned()]).expect("params");
        let mut extension = CustomExtension::from_oid_content(oid, value.to_vec());
        extension.set_criticality(true);
        params.custom_extensions = vec![extension];
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, params.self_signed(&key).expect("signed").pem()).expect("write");
        format!("ca:{}", path.display())
    };
    // basicConstraints `cA FALSE` written out, though FALSE is its DEFAULT.
    let explicit_default = self_signed("explicit-default", &[2, 5, 29, 19], &[0x30, 0x03, 0x01, 0x01, 0x00]);
    // keyUsage digitalSignature as nine bits, trailing zeros kept.
    let padded_bits = self_signed("padded-bits", &[2, 5, 29, 15], &[0x03, 0x03, 0x07, 0x80, 0x00]);
    let (ok, report) = strict_der(&[explicit_default.clone(), padded_bits.clone()]);
    assert!(!ok, "{report}");
    let errors: Vec<&str> = report["errors"].as_array().expect("errors").iter().filter_map(|e| e.as_str()).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with(&explicit_default) && errors[0].contains("EncodedDefault"), "{}", errors[0]);
    assert!(errors[1].starts_with(&padded_bits) && errors[1].contains("keyUsage is not in DER"), "{}", errors[1]);
}
