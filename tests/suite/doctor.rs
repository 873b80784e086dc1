//! `tollgate doctor` (the real binary) against a real gateway intercepting `api.anthropic.com` toward the Messages
//! stub: a working setup passes every step; each broken step (no proxy variable, NO_PROXY covering the model host,
//! the proxy unreachable, an https:// proxy whose CA is not trusted, bad credentials, NODE_EXTRA_CA_CERTS missing or
//! wrong, the upstream refusing) fails with its own advice, and the steps after it that need it are skipped.
//!
//! The doctor runs with a cleared environment and a scratch HOME, so neither the machine's proxy variables nor its
//! Claude Code settings leak in.

use crate::common;

use std::path::Path;

use serde_json::Value;

use common::gateway::{start_full_with, users_yaml, User};
use common::intercept::{self, Intercepting, Parts};
use common::messages::MessagesStub;
use common::pki::Pki;
use common::TestGateway;

const ALICE: User = User { name: "alice@corp.example", password: "pa:ss@word", teams: &[] };

/// The steps, in order.
const STEPS: [&str; 8] = ["settings", "proxy", "no_proxy", "reach", "proxy_tls", "credentials", "ca", "model"];

fn parts(auth: &str) -> Parts<'_> {
    Parts { auth, ..Parts::default() }
}

fn alice_auth() -> String {
    format!("auth:\n{}", users_yaml(&[&ALICE]))
}

/// The proxy URL with alice's credentials, percent-encoded as a user must write them.
fn alice_url(proxy: std::net::SocketAddr, scheme: &str) -> String {
    format!("{scheme}://alice%40corp.example:pa%3Ass%40word@{proxy}")
}

/// What one doctor run printed and returned.
struct Diagnosis {
    code: i32,
    json: Value,
}

impl Diagnosis {
    fn step(&self, name: &str) -> &Value {
        self.json["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("{name}"))
    }

    fn verdicts(&self) -> Vec<(String, String)> {
        self.json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["step"].as_str().unwrap().to_owned(), s["verdict"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// Asserts `name` failed with a fix containing `advice`, and that every other step passed or was skipped
    /// (the ones before it passed or were skipped for a reason of their own).
    fn assert_fails_at(&self, name: &str, detail: &str, advice: &str) {
        assert_eq!(self.code, 1, "{:#}", self.json);
        assert_eq!(self.json["ok"], false);
        let step = self.step(name);
        assert_eq!(step["verdict"], "fail", "{:#}", self.json);
        assert!(step["detail"].as_str().unwrap().contains(detail), "{name} detail: {step:#}");
        assert!(step["fix"].as_str().unwrap().contains(advice), "{name} fix: {step:#}");
        let failed: Vec<_> = self.verdicts().into_iter().filter(|(_, v)| v == "fail").map(|(s, _)| s).collect();
        assert_eq!(failed, vec![name.to_owned()], "only {name} fails: {:#}", self.json);
    }
}

/// Runs `tollgate doctor --format json` with only `env` (and a scratch HOME holding `settings`, if any).
async fn doctor(env: &[(&str, String)], settings: Option<&str>) -> Diagnosis {
    let home = tempfile::tempdir().expect("home");
    if let Some(settings) = settings {
        std::fs::create_dir_all(home.path().join(".claude")).unwrap();
        std::fs::write(home.path().join(".claude/settings.json"), settings).unwrap();
    }
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["doctor", "--format", "json", "--timeout", "10s", "--model-host", "api.anthropic.com"])
        .arg("--managed-settings")
        .arg(home.path().join("no-managed-settings.json"))
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .output()
        .await
        .expect("run tollgate doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    let steps: Vec<&str> = json["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, STEPS, "every step, in order");
    Diagnosis { code: output.status.code().unwrap_or(-1), json }
}

fn working_env(setup: &Intercepting) -> Vec<(&'static str, String)> {
    vec![
        ("HTTPS_PROXY", alice_url(setup.gateway.proxy, "http")),
        ("NODE_EXTRA_CA_CERTS", setup.ca_pem().display().to_string()),
        ("NO_PROXY", "localhost,127.0.0.1".to_owned()),
    ]
}

fn without(env: &[(&'static str, String)], name: &str) -> Vec<(&'static str, String)> {
    env.iter().filter(|(n, _)| *n != name).cloned().collect()
}

fn with(env: &[(&'static str, String)], name: &'static str, value: String) -> Vec<(&'static str, String)> {
    let mut env = without(env, name);
    env.push((name, value));
    env
}

/// A working setup passes every step (the proxy's TLS is skipped for an http:// proxy), and the request reached
/// the stub through the interception; the text report says so too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_setup_passes_every_step() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let diagnosis = doctor(&working_env(&setup), None).await;
    assert_eq!(diagnosis.code, 0, "{:#}", diagnosis.json);
    assert_eq!(diagnosis.json["ok"], true);
    assert_eq!(diagnosis.json["model_host"], "api.anthropic.com:443");
    let expected: Vec<(String, String)> =
        STEPS.iter().map(|s| (s.to_string(), if *s == "proxy_tls" { "skip" } else { "pass" }.to_owned())).collect();
    assert_eq!(diagnosis.verdicts(), expected, "{:#}", diagnosis.json);
    let proxy = diagnosis.step("proxy")["detail"].as_str().unwrap();
    assert!(proxy.contains("alice%40corp.example:***@") && !proxy.contains("pa%3Ass"), "password hidden: {proxy}");
    assert!(diagnosis.step("credentials")["detail"].as_str().unwrap().contains("as alice@corp.example: 200"));
    assert!(diagnosis.step("model")["detail"].as_str().unwrap().contains("/v1/models: 200"));
    let requests = setup.stub.requests();
    assert!(requests.iter().any(|r| r.path_and_query.starts_with("/v1/models")), "the stub was reached: {requests:#?}");

    // The same from ~/.claude/settings.json's env block, and as text.
    let settings = serde_json::json!({"env": {
        "HTTPS_PROXY": alice_url(setup.gateway.proxy, "http"),
        "NODE_EXTRA_CA_CERTS": setup.ca_pem().display().to_string(),
    }});
    let diagnosis = doctor(&[], Some(&settings.to_string())).await;
    assert_eq!(diagnosis.code, 0, "{:#}", diagnosis.json);
    assert!(diagnosis.step("proxy")["detail"].as_str().unwrap().contains(".claude/settings.json (env)"));
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["doctor", "--model-host", "api.anthropic.com", "--managed-settings", "/nonexistent"])
        .env_clear()
        .env("HOME", "/nonexistent")
        .envs(working_env(&setup))
        .output()
        .expect("doctor");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{stdout}");
    assert!(stdout.contains("ok    request to the model host") && stdout.ends_with("Every step passed.\n"), "{stdout}");
}

/// No proxy variable (ALL_PROXY is not read by Claude Code); a broken settings file; a URL that does not parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unusable_proxy_variable_is_named() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let env = without(&working_env(&setup), "HTTPS_PROXY");
    let all_proxy = with(&env, "ALL_PROXY", alice_url(setup.gateway.proxy, "http"));
    let diagnosis = doctor(&all_proxy, None).await;
    diagnosis.assert_fails_at("proxy", "ALL_PROXY is set, but Claude Code does not read it", "set HTTPS_PROXY");
    for step in ["reach", "proxy_tls", "credentials", "model"] {
        assert_eq!(diagnosis.step(step)["verdict"], "skip", "{step}");
    }

    let socks = with(&env, "HTTPS_PROXY", format!("socks5://{}", setup.gateway.proxy));
    doctor(&socks, None).await.assert_fails_at(
        "proxy",
        "scheme socks5:// is not a proxy",
        "http://[USER:PASSWORD@]HOST:PORT",
    );

    let diagnosis = doctor(&working_env(&setup), Some("{\"env\": ")).await;
    diagnosis.assert_fails_at("settings", "not JSON", "repair or remove");
}

/// NO_PROXY covering the model host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_covering_the_model_host_fails() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let env = with(&working_env(&setup), "NO_PROXY", "localhost,.anthropic.com".to_owned());
    doctor(&env, None).await.assert_fails_at(
        "no_proxy",
        "\".anthropic.com\" covers api.anthropic.com",
        "remove \".anthropic.com\" from NO_PROXY",
    );
}

/// The proxy's port closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_proxy_fails() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let env = with(&working_env(&setup), "HTTPS_PROXY", alice_url(closed, "http"));
    let diagnosis = doctor(&env, None).await;
    diagnosis.assert_fails_at("reach", &format!("cannot connect to {closed}"), "that tollgate is running there");
    assert_eq!(diagnosis.step("credentials")["verdict"], "skip");
}

/// Wrong or missing credentials: the proxy's 407.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_with_the_407() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let wrong = format!("http://alice%40corp.example:wrong@{}", setup.gateway.proxy);
    let env = with(&working_env(&setup), "HTTPS_PROXY", wrong);
    doctor(&env, None).await.assert_fails_at(
        "credentials",
        "407, the proxy refused the credentials of alice@corp.example",
        "percent-encode",
    );
    let none = with(&working_env(&setup), "HTTPS_PROXY", format!("http://{}", setup.gateway.proxy));
    doctor(&none, None).await.assert_fails_at("credentials", "the URL has none", "http://USER:PASSWORD@HOST:PORT");
}

/// NODE_EXTRA_CA_CERTS unset, naming no file, naming a file without a certificate, or naming another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_interception_ca_fails() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let env = working_env(&setup);
    doctor(&without(&env, "NODE_EXTRA_CA_CERTS"), None).await.assert_fails_at(
        "ca",
        "tollgate intercepts api.anthropic.com, and NODE_EXTRA_CA_CERTS is not set",
        "http://tollgate.internal/ca.pem",
    );
    let missing = setup.ca_dir.path().join("nope.pem");
    let diagnosis = doctor(&with(&env, "NODE_EXTRA_CA_CERTS", missing.display().to_string()), None).await;
    diagnosis.assert_fails_at("ca", "the file does not exist", "curl -fsS -x \"$HTTPS_PROXY\"");
    let not_pem = setup.ca_dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    doctor(&with(&env, "NODE_EXTRA_CA_CERTS", not_pem.display().to_string()), None).await.assert_fails_at(
        "ca",
        "holds no PEM certificate",
        "tollgate.internal/ca.pem",
    );
    let pki = Pki::new();
    doctor(&with(&env, "NODE_EXTRA_CA_CERTS", pki.ca.pem.display().to_string()), None).await.assert_fails_at(
        "ca",
        &format!("is not signed by a CA in {}", pki.ca.pem.display()),
        "download tollgate's CA",
    );
}

/// The upstream refuses connections: tollgate's 502 inside the tunnel, named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_fails_the_model_step() {
    let stub = MessagesStub::start().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let auth = alice_auth();
    let config =
        intercept::config(&stub, ca_dir.path(), &parts(&auth)).replace(&stub.url(), &format!("http://{closed}"));
    let gateway = TestGateway::start(&config).await;
    let env = vec![
        ("HTTPS_PROXY", alice_url(gateway.proxy, "http")),
        ("NODE_EXTRA_CA_CERTS", ca_dir.path().join("ca.pem").display().to_string()),
    ];
    doctor(&env, None).await.assert_fails_at("model", "502 from tollgate", "tollgate cannot reach the model API");
}

/// An https:// proxy: its certificate must verify with NODE_EXTRA_CA_CERTS (here the listener's CA is another
/// than the interception CA: a bundle of both passes, the interception CA alone fails at the proxy's TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_proxy_needs_its_ca_trusted() {
    let pki = Pki::new();
    let stub = MessagesStub::start().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let listener = format!(
        "listeners:\n  - name: proxy-tls\n    bind: \"127.0.0.1:0\"\n    tls: {{cert: \"{}\", key: \"{}\"}}\n",
        pki.server.pem.display(),
        pki.server.key.display()
    );
    let auth = alice_auth();
    let yaml = format!("{listener}{}", intercept::config(&stub, ca_dir.path(), &parts(&auth)));
    let gateway = start_full_with(&yaml, Default::default()).await;
    let interception_ca = ca_dir.path().join("ca.pem");
    let env = vec![
        ("HTTPS_PROXY", alice_url(gateway.proxy, "https")),
        ("NODE_EXTRA_CA_CERTS", interception_ca.display().to_string()),
    ];
    doctor(&env, None).await.assert_fails_at(
        "proxy_tls",
        "certificate not trusted",
        "add the CA that signed tollgate's listener certificate",
    );

    let bundle = ca_dir.path().join("bundle.pem");
    std::fs::write(&bundle, [read(&interception_ca), read(&pki.ca.pem)].concat()).unwrap();
    let diagnosis = doctor(&with(&env, "NODE_EXTRA_CA_CERTS", bundle.display().to_string()), None).await;
    assert_eq!(diagnosis.code, 0, "{:#}", diagnosis.json);
    assert_eq!(diagnosis.step("proxy_tls")["verdict"], "pass");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
