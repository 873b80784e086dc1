//! Single sign-on on the developer's machine, end to end against the test identity provider
//! (`tests/support/idp.rs`): `tollgate login` (the device authorization grant, approved through the provider while
//! the real binary polls), the stored credentials and their modes, `tollgate token` (cached, refreshed with a
//! rotated refresh token, refused once the provider revokes it), and `tollgate login --cert`: a short-lived client
//! certificate enrolled on the TLS proxy listener (`POST /enroll`) and used through it by curl and the Python SDK,
//! the audit naming the user. Enrollment without a token, with an expired one, or with a bad CSR is refused.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use common::gateway::{start_full_with, upstreams_yaml};
use common::idp::{Idp, SigningKey, CLIENT_ID};
use common::messages::{anthropic_client, MessagesStub};
use common::pki::Pki;
use common::*;

const AUDIENCE: &str = "api://tollgate";
const USER: &str = "jane@corp.example";
const MODEL: &str = "claude-sonnet-4-5";
/// A bound on one command or one line of its output (never a synchronisation: each wait ends on an event).
const PATIENCE: Duration = Duration::from_secs(60);

/// The parts of one test: certificates, the provider, an origin and a Messages stub, the gateway, and the
/// developer's home directory (`XDG_CONFIG_HOME`).
struct Setup {
    pki: Pki,
    idp: Idp,
    origin: Origin,
    stub: MessagesStub,
    gateway: TestGateway,
    /// The gateway's config, as `tollgate login --config` can read it.
    yaml: String,
    /// Holds the clients CA (`tollgate ca init --client`).
    _certs: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Setup {
    /// A plain proxy listener and a TLS proxy listener (`proxy-tls`, client certificates optional, from the clients
    /// CA) that enrolls for 12 hours; `auth.oidc` maps the group `grp-backend` to the team `backend`, and a
    /// certificate's OU is its team.
    async fn start() -> Setup {
        Setup::start_with("").await
    }

    /// Like `start`, with `auth_extra` YAML lines under `auth:`.
    async fn start_with(auth_extra: &str) -> Setup {
        let pki = Pki::new();
        let idp = Idp::start(&pki.server, AUDIENCE, &[SigningKey::es256("es-1")]).await;
        let certs = tempfile::tempdir().expect("temp dir");
        let dir = certs.path().to_str().expect("UTF-8 path").to_owned();
        let made = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["ca", "init", "--client", "--dir", &dir])
            .output()
            .expect("tollgate runs");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let stub = MessagesStub::start().await;
        let yaml = format!(
            "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n\
             \x20 - {{name: proxy-tls, bind: \"127.0.0.1:0\", tls: {{cert: \"{cert}\", key: \"{key}\", \
             client_ca: \"{dir}/clients-ca.pem\", client_auth: optional}}}}\n\
             auth:\n  anonymous: deny\n  mtls: {{identity: san_email, team_from: ou}}\n{auth_extra}\
             \x20 oidc: {{issuer: \"{issuer}\", audience: \"{AUDIENCE}\", user_claim: email, \
             teams: {{grp-backend: backend}}, device_client_id: {CLIENT_ID}}}\n\
             \x20 enroll: {{listener: proxy-tls, client_ca: {{cert: \"{dir}/clients-ca.pem\", \
             key: \"{dir}/clients-ca.key\"}}, validity: 12h}}\n\
             teams: {{backend: {{}}}}\n\
             upstream:\n  trust: {{system_roots: false, extra_ca: [\"{ca}\"]}}\n{upstreams}{LOOPBACK_POLICY}",
            cert = pki.server.pem.display(),
            key = pki.server.key.display(),
            issuer = idp.issuer,
            ca = pki.ca.pem.display(),
            upstreams = upstreams_yaml(&[("stub", &stub, "sk-upstream")]),
        );
        let gateway = start_full_with(&yaml, Default::default()).await;
        let origin = Origin::start().await;
        let home = tempfile::tempdir().expect("temp dir");
        Setup { pki, idp, origin, stub, gateway, yaml, _certs: certs, home }
    }

    fn ca(&self) -> String {
        self.pki.ca.pem.display().to_string()
    }

    fn tls_proxy(&self) -> String {
        format!("https://localhost:{}", self.gateway.listener("proxy-tls").port())
    }

    /// `tollgate ARGS` as the developer runs it: their config directory, nothing from the test's environment.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args(args)
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("HOME", self.home.path())
            .env_remove("TOLLGATE_CONFIG")
            .env_remove("SSL_CERT_FILE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `tollgate token ARGS`: exit code, stdout, stderr.
    async fn token(&self, args: &[&str]) -> (i32, String, String) {
        let output = tokio::time::timeout(PATIENCE, self.command(&[&["token"], args].concat()).output())
            .await
            .expect("tollgate token ends")
            .expect("tollgate runs");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
    }

    /// `tollgate login ARGS` (with the issuer, client ID and test CA): reads its output until it shows the user
    /// code, has the provider record the user's decision (`claims` approve, `None` denies), and waits for it to
    /// end. Exit code, stdout, stderr.
    async fn login(&self, args: &[&str], claims: Option<Value>) -> (i32, String, String) {
        let ca = self.ca();
        let base = ["--issuer", &self.idp.issuer, "--client-id", CLIENT_ID, "--ca", &ca];
        self.login_with(&[&base[..], args].concat(), claims).await
    }

    /// `tollgate login ARGS` as given, otherwise like `login`.
    async fn login_with(&self, args: &[&str], claims: Option<Value>) -> (i32, String, String) {
        let mut child = self
            .command(&[&["login"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate login");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut stdout = String::new();
        let code = loop {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .expect("tollgate login prints the code")
                .expect("read stdout")
                .unwrap_or_else(|| panic!("tollgate login ended without a code:\n{stdout}"));
            stdout.push_str(&line);
            stdout.push('\n');
            if let Some(code) = line.trim().strip_prefix("code: ") {
                break code.to_owned();
            }
        };
        self.idp.decide(&code, claims);
        let mut rest = String::new();
        lines.into_inner().read_to_string(&mut rest).await.expect("read stdout");
        stdout.push_str(&rest);
        let mut stderr = String::new();
        child.stderr.take().expect("stderr").read_to_string(&mut stderr).await.expect("read stderr");
        let status = tokio::time::timeout(PATIENCE, child.wait()).await.expect("login ends").expect("wait");
        (status.code().unwrap_or(-1), stdout, stderr)
    }

    fn config_dir(&self) -> PathBuf {
        self.home.path().join("tollgate")
    }

    fn credentials(&self) -> Value {
        let text = std::fs::read_to_string(self.config_dir().join("credentials.json")).expect("credentials stored");
        serde_json::from_str(&text).expect("credentials are JSON")
    }

    /// Makes the stored access token expired, as it is once its lifetime has passed.
    fn expire_stored_token(&self) {
        let mut credentials = self.credentials();
        credentials["expires_at"] = json!(0);
        std::fs::write(self.config_dir().join("credentials.json"), credentials.to_string()).expect("rewrite");
    }

    /// A token for `USER` in `grp-backend`, signed with the provider's key, living `lifetime` seconds.
    fn direct_token(&self, lifetime: i64) -> String {
        let key = self.idp.signing_keys().pop().expect("a signing key");
        key.sign(&self.idp.claims(lifetime, json!({"email": USER, "groups": ["grp-backend"]})))
    }

    /// `GET` on the origin through the plain proxy listener with `Proxy-Authorization: Bearer TOKEN`.
    async fn through_proxy(&self, token: &str, path: &str) -> (i32, String, String) {
        let proxy = format!("http://{}", self.gateway.proxy);
        let header = format!("Proxy-Authorization: Bearer {token}");
        curl(&["-x", &proxy, "--proxy-header", &header, &self.origin.url(path)]).await
    }

    /// `POST /enroll` on the TLS listener with curl: the status and the JSON answer.
    async fn enroll(&self, authorization: Option<&str>, body: &str) -> (u16, Value) {
        let (status, _, answer) = self.enroll_with_headers(authorization, body).await;
        (status, answer)
    }

    /// `POST /enroll` like `enroll`, with the response head too.
    async fn enroll_with_headers(&self, authorization: Option<&str>, body: &str) -> (u16, String, Value) {
        let url = format!("{}/enroll", self.tls_proxy());
        let ca = self.ca();
        let mut args =
            vec!["--cacert", &ca, "-i", "-X", "POST", "-H", "content-type: application/json", "--data-binary"];
        args.extend([body, "-w", "\n%{http_code}", url.as_str()]);
        let header;
        if let Some(value) = authorization {
            header = format!("Authorization: {value}");
            args.extend(["-H", header.as_str()]);
        }
        let (code, stdout, stderr) = curl(&args).await;
        assert_eq!(code, 0, "{stderr}");
        let (response, status) = stdout.rsplit_once('\n').expect("a status line");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        (status.parse().expect("a status"), head.to_owned(), serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("exists").permissions().mode() & 0o777
}

fn user_claims() -> Value {
    json!({"email": USER, "groups": ["grp-backend"]})
}

/// `tollgate login` signs in with the device grant: it prints the verification page with the code, polls while the
/// user approves (a `slow_down` answer makes it wait longer, not fail), and stores the credentials (directory 0700,
/// file 0600). `tollgate token` prints the stored token while it is fresh, and the gateway admits it; the audit
/// record names the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_signs_in_with_the_device_grant_and_stores_private_credentials() {
    let mut setup = Setup::start().await;
    setup.idp.slow_down(1);
    let (code, stdout, stderr) = setup.login(&[], Some(user_claims())).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The first poll got slow_down; login went on polling rather than failing.
    assert!(setup.idp.device_polls() >= 2, "{} polls", setup.idp.device_polls());
    assert!(stdout.contains(&format!("{}/device/verify?user_code=", setup.idp.issuer)), "{stdout}");
    assert!(stdout.contains(&format!("Signed in as {USER}.")), "{stdout}");

    assert_eq!(mode(&setup.config_dir()), 0o700);
    assert_eq!(mode(&setup.config_dir().join("credentials.json")), 0o600);
    let stored = setup.credentials();
    assert_eq!(stored["issuer"], setup.idp.issuer.as_str());
    assert!(stored["refresh_token"].as_str().is_some_and(|t| t.starts_with("refresh-")), "{stored}");

    let (code, token, stderr) = setup.token(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(token, stored["access_token"].as_str().unwrap(), "a fresh token is printed as stored, no newline");
    let (code, bearer, _) = setup.token(&["--bearer"]).await;
    assert_eq!((code, bearer), (0, format!("Bearer {token}")), "the whole stdout, as a helper's header value");

    let (code, body, stderr) = setup.through_proxy(token.trim(), "/signed-in").await;
    assert_eq!((code, body.as_str()), (0, "origin saw /signed-in"), "{stderr}");
    let audit = setup.gateway.shutdown_and_audit().await;
    let record = audit.iter().find(|r| r["path"] == "/signed-in").expect("the request's record");
    assert_eq!((record["user"].as_str(), record["team"].as_str()), (Some(USER), Some("backend")), "{record}");
}

/// A sign-in the user denies fails with exit 1 and says so; without a sign-in, `tollgate token` exits 1 with the
/// line a helper script shows. The issuer and client ID come from the gateway's config (`--config`:
/// `auth.oidc.issuer` and `device_client_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_sign_in_and_a_missing_one_say_to_run_login() {
    let setup = Setup::start().await;
    let (code, _, stderr) = setup.token(&[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim(), "tollgate: not signed in: run `tollgate login`");

    let config = setup.home.path().join("gateway.yaml");
    std::fs::write(&config, &setup.yaml).unwrap();
    let (config, ca) = (config.display().to_string(), setup.ca());
    let (code, stdout, stderr) = setup.login_with(&["--config", &config, "--ca", &ca], None).await;
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("the sign-in was denied: run `tollgate login`"), "{stderr}");
    assert!(!setup.config_dir().join("credentials.json").exists(), "nothing is stored");
}

/// An expired access token is refreshed: `tollgate token` prints a new token, stores the rotated refresh token,
/// and the gateway admits the new token. Once the provider revokes the refresh token, `tollgate token` exits 1
/// saying why and what to do, and keeps saying so without asking the provider again. The sign-in takes its
/// settings from the user's `config.yaml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refreshes_an_expired_token_and_a_revoked_refresh_token_means_login() {
    let setup = Setup::start().await;
    std::fs::create_dir(setup.config_dir()).unwrap();
    let settings = format!("issuer: \"{}\"\nclient_id: {CLIENT_ID}\nca: [\"{}\"]\n", setup.idp.issuer, setup.ca());
    std::fs::write(setup.config_dir().join("config.yaml"), settings).unwrap();
    let (code, stdout, stderr) = setup.login_with(&[], Some(user_claims())).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let before = setup.credentials();

    setup.expire_stored_token();
    let (code, token, stderr) = setup.token(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    let after = setup.credentials();
    assert_ne!(token.trim(), before["access_token"].as_str().unwrap(), "a new token");
    assert_eq!(token.trim(), after["access_token"].as_str().unwrap(), "stored");
    assert_ne!(after["refresh_token"], before["refresh_token"], "the rotated refresh token is stored");
    assert!(after["expires_at"].as_u64().unwrap() > 0);
    assert_eq!(mode(&setup.config_dir().join("credentials.json")), 0o600);
    let (code, body, stderr) = setup.through_proxy(token.trim(), "/refreshed").await;
    assert_eq!((code, body.as_str()), (0, "origin saw /refreshed"), "{stderr}");

    setup.idp.revoke_refresh_tokens();
    setup.expire_stored_token();
    let (code, stdout, stderr) = setup.token(&[]).await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.contains("the identity provider refused the refresh token (invalid_grant"), "{stderr}");
    assert!(stderr.trim_end().ends_with("run `tollgate login`"), "{stderr}");
    let (code, _, stderr) = setup.token(&[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("there is no refresh token") && stderr.contains("run `tollgate login`"), "{stderr}");
}

/// `tollgate login --cert` signs in, sends a CSR for a key made on the developer's machine and writes the
/// certificate and key (0600). curl and the Python SDK present them to the TLS proxy listener and are identified
/// by them alone; the enrollment and the requests are audited under the user, and the issuance is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cert_enrolls_a_certificate_that_curl_and_the_python_sdk_use_through_the_tls_proxy() {
    let mut setup = Setup::start().await;
    let proxy = setup.tls_proxy();
    let (code, stdout, stderr) = setup.login(&["--cert", "--proxy", &proxy], Some(user_claims())).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (cert, key) = (setup.config_dir().join("cert.pem"), setup.config_dir().join("key.pem"));
    assert_eq!((mode(&cert), mode(&key)), (0o600, 0o600));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    for line in [
        format!("CLAUDE_CODE_CLIENT_CERT={cert}"),
        format!("CLAUDE_CODE_CLIENT_KEY={key}"),
        format!("--proxy-cert {cert} --proxy-key {key}"),
        format!("http.proxySSLCert {cert}"),
        format!("http.proxySSLKey {key}"),
    ] {
        assert!(stdout.contains(&line), "{line:?} in:\n{stdout}");
    }
    // Valid for the configured 12 hours, named as auth.mtls reads it.
    let pem = std::fs::read(&cert).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let validity = parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
    assert_eq!(validity, 13 * 3_600, "12 h, and 1 h backdated for clock skew");
    assert!(format!("{:?}", parsed.subject_alternative_name()).contains(USER));

    let ca = setup.ca();
    let url = setup.origin.url("/with-certificate");
    let (code, body, stderr) =
        curl(&["--proxy", &proxy, "--proxy-cacert", &ca, "--proxy-cert", &cert, "--proxy-key", &key, &url]).await;
    assert_eq!((code, body.as_str()), (0, "origin saw /with-certificate"), "{stderr}");
    // Without the certificate, the same listener wants credentials.
    let (code, body, _) = curl(&["--proxy", &proxy, "--proxy-cacert", &ca, "-w", "%{http_code}", &url]).await;
    assert!(code != 0 || body.ends_with("407"), "{code} {body}");

    let env = [
        ("ANTHROPIC_BASE_URL", setup.stub.url()),
        ("HTTPS_PROXY", proxy.clone()),
        ("SSL_CERT_FILE", ca.clone()),
        ("TOLLGATE_CLIENT_PROXY_CERT", cert.clone()),
        ("TOLLGATE_CLIENT_PROXY_KEY", key.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let answer = anthropic_client("create", MODEL, &env).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(setup.stub.requests().len(), 1, "the SDK's call reached the Messages API through the proxy");

    // Again, as a daily renewal runs: the stored token is used (no code to approve) and a new certificate written.
    let first = std::fs::read(&cert).unwrap();
    let output = setup.command(&["login", "--cert"]).output().await.expect("tollgate runs");
    let renewed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{renewed}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!renewed.contains("code: ") && renewed.contains("Certificate for jane@corp.example"), "{renewed}");
    assert_ne!(std::fs::read(&cert).unwrap(), first, "a new certificate");

    assert_eq!(setup.gateway.metric("tollgate_enrollments_total{result=\"issued\"}").await, 2.0);
    let audit = setup.gateway.shutdown_and_audit().await;
    let enrolled = audit.iter().find(|r| r["path"] == "/enroll").expect("the enrollment's record");
    assert_eq!((enrolled["user"].as_str(), enrolled["status"].as_u64()), (Some(USER), Some(200)), "{enrolled}");
    assert_eq!(enrolled["decision"], "allow");
    let used = audit.iter().find(|r| r["path"] == "/with-certificate").expect("curl's record");
    assert_eq!((used["user"].as_str(), used["team"].as_str()), (Some(USER), Some("backend")), "{used}");
    let sdk = audit.iter().find(|r| r["path"] == "/v1/messages").expect("the SDK's record");
    assert_eq!((sdk["user"].as_str(), sdk["listener"].as_str()), (Some(USER), Some("proxy-tls")), "{sdk}");
}

/// `POST /enroll` refuses, with a JSON error, a request without a token (401), with an expired token (401), with a
/// CSR that is not one, with an RSA key under 2048 bits, and a body over the limit; each refusal is audited and
/// counted, and none issues a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_is_refused_without_a_valid_token_or_with_a_bad_csr() {
    let mut setup = Setup::start().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
    let body = json!({"csr": csr.pem().unwrap()}).to_string();

    let (status, answer) = setup.enroll(None, &body).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_token")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("Authorization: Bearer"), "{answer}");

    let expired = format!("Bearer {}", setup.direct_token(-300));
    let (status, answer) = setup.enroll(Some(&expired), &body).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_token")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("expired"), "{answer}");

    let valid = format!("Bearer {}", setup.direct_token(600));
    let garbage =
        json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"});
    let (status, answer) = setup.enroll(Some(&valid), &garbage.to_string()).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_request")), "{answer}");
    assert!(answer["message"].as_str().unwrap().starts_with("csr: "), "{answer}");

    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=weak", "-keyout", "weak.key"])
        .args(["-out", "weak.csr"])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let weak = std::fs::read_to_string(dir.path().join("weak.csr")).unwrap();
    let (status, answer) = setup.enroll(Some(&valid), &json!({"csr": weak}).to_string()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["message"], "csr: an RSA key must have at least 2048 bits", "{answer}");

    let oversized = json!({"csr": "x".repeat(20_000)}).to_string();
    let (status, answer) = setup.enroll(Some(&valid), &oversized).await;
    assert_eq!((status, answer["error"].as_str()), (413, Some("body_too_large")), "{answer}");

    // The same token and CSR are accepted: the refusals were for what they said.
    let (status, answer) = setup.enroll(Some(&valid), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["user"].as_str(), answer["teams"][0].as_str()), (Some(USER), Some("backend")), "{answer}");
    assert!(answer.get("key").is_none(), "the key stays with the client");

    assert_eq!(setup.gateway.metric("tollgate_enrollments_total{result=\"unauthenticated\"}").await, 2.0);
    assert_eq!(setup.gateway.metric("tollgate_enrollments_total{result=\"invalid\"}").await, 3.0);
    assert_eq!(setup.gateway.metric("tollgate_enrollments_total{result=\"issued\"}").await, 1.0);
    let audit = setup.gateway.shutdown_and_audit().await;
    let statuses: Vec<u64> =
        audit.iter().filter(|r| r["path"] == "/enroll").map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [401, 401, 400, 400, 413, 200]);
    let unauthenticated = audit.iter().find(|r| r["status"] == 401).unwrap();
    assert_eq!((unauthenticated["decision"].as_str(), unauthenticated["user"].as_str()), (Some("deny"), None));
}

/// The enrollment listener must accept the certificates it issues: a `client_ca` without the enrolling CA, and a
/// listener that asks for no client certificate, are config errors naming the keys.
#[test]
fn an_enrollment_listener_that_would_refuse_its_certificates_is_a_config_error() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["ca", "init", "--client", "--dir", d])
        .output()
        .expect("tollgate runs");
    assert!(made.status.success());
    let config = |tls_extra: &str| {
        format!(
            "listeners:\n  - {{name: proxy-tls, bind: \"127.0.0.1:0\", tls: {{cert: \"{}\", key: \"{}\"{tls_extra}}}}}\n\
             auth:\n  oidc: {{issuer: \"https://login.corp.example\", audience: tollgate}}\n\
             \x20 enroll: {{listener: proxy-tls, client_ca: {{cert: \"{d}/clients-ca.pem\", key: \"{d}/clients-ca.key\"}}}}\n\
             {LOOPBACK_POLICY}",
            pki.server.pem.display(),
            pki.server.key.display()
        )
    };
    let error = |yaml: String| {
        tollgate::config::Config::from_text(&yaml, Path::new("enroll.yaml"), &|_| None).unwrap_err().to_string()
    };
    let other_ca = format!(", client_ca: \"{}\", client_auth: optional", pki.ca.pem.display());
    let message = error(config(&other_ca));
    assert!(
        message.contains("auth.enroll.client_ca: ") && message.contains("would refuse the certificates"),
        "{message}"
    );
    let message = error(config(""));
    assert!(message.contains("auth.enroll.listener: \"proxy-tls\" must ask for client certificates"), "{message}");
    let ours = format!(", client_ca: \"{d}/clients-ca.pem\", client_auth: optional");
    tollgate::config::Config::from_text(&config(&ours), Path::new("enroll.yaml"), &|_| None).expect("a usable config");
    // `tollgate check` says where enrollment is served and for how long.
    let file = dir.path().join("enroll.yaml");
    std::fs::write(&file, config(&ours).replace("clients-ca.key\"}}", "clients-ca.key\"}, validity: 8h}")).unwrap();
    let checked =
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")).arg("check").arg("-c").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}{}", String::from_utf8_lossy(&checked.stderr));
    assert!(stdout.contains("  enroll: POST /enroll on proxy-tls, client certificates valid 8h\n"), "{stdout}");
}

/// Refused tokens count toward `auth.failed_auth_limit`: once an address has used up its failures, enrollment
/// answers 429 with `Retry-After`, even with a valid token, as the proxy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_enrollments_count_toward_the_failed_auth_limit() {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
    let body = json!({"csr": csr.pem().unwrap()}).to_string();
    // The limit counts per wall-clock minute: a run that straddles a minute boundary is repeated once.
    for attempt in 0..2 {
        let started = minute();
        let setup = Setup::start_with("  failed_auth_limit: {per_minute: 2}\n").await;
        let expired = format!("Bearer {}", setup.direct_token(-300));
        let valid = format!("Bearer {}", setup.direct_token(600));
        let mut answers = Vec::new();
        for token in [&expired, &expired, &valid] {
            answers.push(setup.enroll_with_headers(Some(token), &body).await);
        }
        if minute() != started && attempt == 0 {
            continue;
        }
        let statuses: Vec<u16> = answers.iter().map(|(status, _, _)| *status).collect();
        assert_eq!(statuses, [401, 401, 429], "{answers:?}");
        let (_, head, answer) = &answers[2];
        assert_eq!(answer["error"], "too_many_attempts", "{answer}");
        assert!(head.to_ascii_lowercase().contains("\r\nretry-after: "), "{head}");
        assert_eq!(setup.gateway.metric("tollgate_enrollments_total{result=\"issued\"}").await, 0.0);
        return;
    }
}

fn minute() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60
}
