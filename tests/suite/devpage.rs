//! The developer page at the reserved host `tollgate.internal`: answered by tollgate itself through the forward
//! proxy, after the same identification as every request (407 without credentials), never forwarded; it shows who
//! the client is, its limits, budgets and latest refusals (escaped), and offers the interception CA.
//!
//! Real parts: the gateway on 127.0.0.1:0 intercepting `api.anthropic.com` toward the Messages stub, curl and raw
//! sockets.

use crate::common;

use serde_json::Value;

use common::gateway::{users_yaml, User};
use common::intercept::{Intercepting, Parts};
use common::{basic, connect_request, curl, exchange, TestGateway, LOOPBACK_POLICY};

/// A user name with markup characters: the page must show them as text.
const ALICE: User = User { name: "o'neil<b>@corp.example", password: "s3cret", teams: &["backend"] };
const ESCAPED_ALICE: &str = "o&#39;neil&lt;b&gt;@corp.example";

fn parts(auth: &str) -> Parts<'_> {
    Parts {
        auth,
        extra: "teams:\n  backend:\n    limits: {user_rpm: 100}\n    budget: {user_daily_usd: 5}\n",
        ..Parts::default()
    }
}

fn alice_auth() -> String {
    format!("auth:\n{}", users_yaml(&[&ALICE]))
}

/// `GET http://tollgate.internal{path}` through the proxy with `headers`, on a new connection that then closes.
async fn page(gateway: &TestGateway, path: &str, headers: &[&str]) -> common::Response {
    let mut request = format!("GET http://tollgate.internal{path} HTTP/1.1\r\nHost: tollgate.internal\r\n");
    for header in headers {
        request.push_str(&format!("{header}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    exchange(gateway.proxy, request.as_bytes()).await
}

fn alice_credentials() -> String {
    format!("Proxy-Authorization: {}", basic(ALICE.name, ALICE.password))
}

async fn whoami(gateway: &TestGateway) -> Value {
    let response = page(gateway, "/whoami.json", &[&alice_credentials()]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    response.json()
}

/// curl through the proxy with the user's credentials gets the page: who it is (escaped), its team, how it was
/// identified, its limit and budget left, the CA link and the setup lines; no script, a strict CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_who_the_client_is_escaped() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let proxy = format!("http://{}", setup.gateway.proxy);
    let user = format!("{}:{}", ALICE.name, ALICE.password);
    let (code, html, stderr) =
        curl(&["--fail", "-x", &proxy, "--proxy-user", &user, "-D", "/dev/stderr", "http://tollgate.internal/"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.to_ascii_lowercase().contains("content-type: text/html; charset=utf-8"), "{stderr}");
    assert!(stderr.contains("Content-Security-Policy: default-src 'none'"), "{stderr}");
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"), "{html}");
    assert!(html.trim_end().ends_with("</html>"), "{html}");
    assert!(html.contains(&format!("<tr><th>user</th><td>{ESCAPED_ALICE}</td></tr>")), "{html}");
    assert!(!html.contains("<b>@"), "the name's markup is escaped: {html}");
    assert!(!html.to_ascii_lowercase().contains("<script"), "no script: {html}");
    assert!(html.contains("<tr><th>teams</th><td>backend</td></tr>"), "{html}");
    assert!(html.contains("a password (Basic proxy credentials)"), "{html}");
    assert!(html.contains("<td>100 requests per minute</td>"), "{html}");
    assert!(
        html.contains("<tr><td>user_daily (team backend)</td><td>$5.00</td><td>$0.00</td><td>$5.00</td></tr>"),
        "{html}"
    );
    assert!(html.contains("<a href=\"/ca.pem\" download=\"tollgate-ca.pem\">"), "{html}");
    // The proxy URL names the user percent-encoded, never its password.
    let url = format!("http://o%27neil%3Cb%3E%40corp.example:PASSWORD@{}", setup.gateway.proxy);
    assert!(html.contains(&format!("export HTTPS_PROXY=&#39;{url}&#39;")), "{html}");
    assert!(html.contains("export NODE_EXTRA_CA_CERTS=&quot;$HOME&quot;/.config/tollgate/tollgate-ca.pem"), "{html}");
    assert!(!html.contains(ALICE.password), "the password is never shown");
}

/// The page in headless Chromium sent through the proxy (tests/clients/browser.py): it loads without a console
/// error and shows the user (its markup as text), the CA link and the setup lines. Chromium cannot send Basic proxy
/// credentials without a prompt (an extra `Proxy-Authorization` header is refused), so the user here is the
/// anonymous principal; the other tests cover the identified user. With `TOLLGATE_SCREENSHOTS=DIR` its screenshot is saved
/// there (`scripts/screenshots` does, into `docs/images/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_in_a_browser_through_the_proxy() {
    let auth = format!("auth: {{anonymous: \"{}\"}}", ALICE.name);
    let setup = Intercepting::start(parts(&auth)).await;
    let screenshots = std::env::var_os("TOLLGATE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| setup.gateway.dir.path().join("screenshots"));
    let mut command = std::process::Command::new(common::python());
    command.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/browser.py"));
    command.args(["--url", "http://tollgate.internal/", "--name", "developer-page", "--wait-for", "body"]);
    command.args(["--proxy", &format!("http://{}", setup.gateway.proxy)]);
    command.arg("--screenshot-dir").arg(&screenshots);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("run browser.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let page = &result["pages"][0];
    assert_eq!(page["ready"], true, "{page}\n{stderr}");
    assert_eq!(page["console_errors"], serde_json::json!([]), "{page}");
    let text = page["text"].as_str().unwrap_or_default();
    assert!(text.contains(ALICE.name), "the name shown as text, unescaped once: {text}");
    assert!(text.contains("NODE_EXTRA_CA_CERTS"), "{text}");
    assert!(page["screenshot"].as_str().is_some_and(|path| std::path::Path::new(path).exists()), "{page}");
    assert!(output.status.success(), "{result}");
}

/// The JSON variant, by path or by `Accept`: the same facts as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_variant_has_the_same_facts() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let json = whoami(&setup.gateway).await;
    assert_eq!(json["user"], ALICE.name);
    assert_eq!(json["teams"], serde_json::json!(["backend"]));
    assert_eq!(json["identified_by"], "basic");
    let limits = json["limits"].as_array().expect("limits");
    assert!(limits.iter().any(|l| l["scope"] == "team_member" && l["requests_per_minute"] == 100), "{limits:?}");
    assert_eq!(json["budgets"][0]["scope"], "user_daily");
    assert_eq!(json["budgets"][0]["team"], "backend");
    assert_eq!(
        (json["budgets"][0]["limit_usd"].as_f64(), json["budgets"][0]["left_usd"].as_f64()),
        (Some(5.0), Some(5.0))
    );
    assert_eq!(json["denials"], serde_json::json!([]));
    assert_eq!(json["ca"]["available"], true);
    assert_eq!(json["ca"]["url"], "http://tollgate.internal/ca.pem");
    assert_eq!(json["ca"]["model_host_intercepted"], true);
    let proxy_url = format!("http://o%27neil%3Cb%3E%40corp.example:PASSWORD@{}", setup.gateway.proxy);
    assert_eq!(json["setup"]["proxy_url"], proxy_url);
    assert_eq!(json["setup"]["claude_settings"]["env"]["HTTPS_PROXY"], proxy_url);
    assert_eq!(json["setup"]["claude_settings"]["env"]["NO_PROXY"], "localhost,127.0.0.1");
    let shell: Vec<&str> = json["setup"]["shell"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(shell[0], format!("export HTTPS_PROXY='{proxy_url}'"));
    assert!(
        shell.contains(
            &"curl -fsS -x \"$HTTPS_PROXY\" -o ~/.config/tollgate/tollgate-ca.pem http://tollgate.internal/ca.pem"
        ),
        "{shell:?}"
    );

    let by_accept = page(&setup.gateway, "/", &[&alice_credentials(), "Accept: application/json"]).await;
    assert_eq!(by_accept.status, 200);
    assert_eq!(by_accept.json()["user"], ALICE.name);
}

/// `/ca.pem` is the interception CA file, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_download_is_the_interception_ca() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let proxy = format!("http://{}", setup.gateway.proxy);
    let user = format!("{}:{}", ALICE.name, ALICE.password);
    let (code, pem, stderr) =
        curl(&["--fail", "-x", &proxy, "--proxy-user", &user, "http://tollgate.internal/ca.pem"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(pem, std::fs::read_to_string(setup.ca_pem()).expect("CA file"));
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
}

/// Without credentials: the proxy's 407 with its challenge, for the page, its JSON, the CA and a CONNECT; nothing
/// about anyone is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unidentified_client_gets_407() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    for path in ["/", "/whoami.json", "/ca.pem"] {
        let response = page(&setup.gateway, path, &[]).await;
        assert_eq!(response.status, 407, "{path}: {response:?}");
        assert_eq!(response.header("proxy-authenticate").as_deref(), Some("Basic realm=\"tollgate\""));
        assert!(!response.body.contains("BEGIN CERTIFICATE"), "{response:?}");
    }
    let wrong = format!("Proxy-Authorization: {}", basic(ALICE.name, "wrong"));
    assert_eq!(page(&setup.gateway, "/", &[&wrong]).await.status, 407);
    let connect = exchange(setup.gateway.proxy, connect_request("tollgate.internal:443", &[]).as_bytes()).await;
    assert_eq!(connect.status, 407, "{connect:?}");
}

/// A refused request shows on the page afterwards: what was asked, the rule, why; escaped like the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_shows_up_on_the_page() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let refused =
        exchange(setup.gateway.proxy, connect_request("blocked.example:443", &[&alice_credentials()]).as_bytes()).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let id = refused.header("x-tollgate-request-id").expect("request id");

    let json = whoami(&setup.gateway).await;
    let denial = &json["denials"][0];
    assert_eq!(denial["id"], id.as_str());
    assert_eq!((denial["kind"].as_str(), denial["method"].as_str()), (Some("connect"), Some("CONNECT")));
    assert_eq!(denial["target"], "blocked.example:443");
    assert_eq!((denial["status"].as_u64(), denial["rule"].as_str()), (Some(403), Some("policy.default")));
    assert!(
        denial["message"].as_str().unwrap().contains("blocked.example:443 is denied by policy.default"),
        "{denial}"
    );

    let html = page(&setup.gateway, "/", &[&alice_credentials()]).await.body;
    assert!(html.contains("<code>CONNECT blocked.example:443</code>"), "{html}");
    assert!(html.contains(&format!("<code>{id}</code>")), "{html}");
    // Another user sees none of it.
    let other = exchange(
        setup.gateway.proxy,
        b"GET http://tollgate.internal/whoami.json HTTP/1.1\r\nHost: tollgate.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(other.status, 407);
}

/// The host is answered, never forwarded: the record has no upstream and the page's rule; a CONNECT to it is
/// refused with a 400 saying to use http://; `developer_page.host` renames it and `enabled: false` turns it off
/// (the name is then an ordinary destination: here denied by the policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserved_host_is_never_forwarded() {
    let auth = alice_auth();
    let setup = Intercepting::start(parts(&auth)).await;
    let response = page(&setup.gateway, "/", &[&alice_credentials()]).await;
    assert_eq!(response.status, 200);
    let id = response.header("x-tollgate-request-id").expect("request id");
    let connect =
        exchange(setup.gateway.proxy, connect_request("tollgate.internal:443", &[&alice_credentials()]).as_bytes())
            .await;
    assert_eq!(connect.status, 400, "{connect:?}");
    assert!(
        connect.body.contains("over http:// only: open http://tollgate.internal/ through this proxy"),
        "{connect:?}"
    );
    let records = common::intercept::audit_until(&setup.gateway, |r| r["kind"] == "connect").await;
    let record = records.iter().find(|r| r["id"] == id.as_str()).expect("the page request's record");
    assert_eq!(
        (record["kind"].as_str(), record["host"].as_str(), record["path"].as_str()),
        (Some("http"), Some("tollgate.internal"), Some("/"))
    );
    assert_eq!(
        (record["decision"].as_str(), record["rule"].as_str(), record["status"].as_u64()),
        (Some("allow"), Some("developer_page"), Some(200))
    );
    assert_eq!(record["user"], ALICE.name);
    assert!(record["upstream"].is_null(), "not forwarded: {record}");

    let renamed = TestGateway::start(&format!(
        "auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}developer_page: {{host: Whoami.Corp.Example}}\n"
    ))
    .await;
    let json = exchange(renamed.proxy, b"GET http://whoami.corp.example/whoami.json HTTP/1.1\r\nHost: whoami.corp.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        (json.status, json.json()["user"].as_str(), json.json()["identified_by"].as_str()),
        (200, Some("dev"), Some("anonymous"))
    );
    assert_eq!(json.json()["ca"]["available"], false);
    let old = page(&renamed, "/", &[]).await;
    assert_eq!(old.status, 403, "tollgate.internal is an ordinary name now: {old:?}");

    let disabled =
        TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}developer_page: {{enabled: false}}\n"))
            .await;
    let off = page(&disabled, "/", &[]).await;
    assert_eq!(off.status, 403, "{off:?}");
    assert_eq!(off.header("x-tollgate-rule").as_deref(), Some("policy.default"));
}

/// `developer_page.host` must be a host name.
#[tokio::test]
async fn an_address_or_a_port_is_not_a_reserved_host() {
    for (host, expected) in [("10.0.0.1", "must be a host name"), ("tollgate.internal:80", "must be a host name")] {
        let yaml = format!("{LOOPBACK_POLICY}developer_page: {{host: \"{host}\"}}\n");
        let error = TestGateway::try_start(&yaml).await.err().expect("refused");
        assert!(error.contains("developer_page.host") && error.contains(expected), "{host}: {error}");
    }
}
