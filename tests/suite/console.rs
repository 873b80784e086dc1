//! The web console at `/ui` on the admin listener: sign-in with the admin token (a cookie session, CSRF on state
//! changes), the JSON endpoints it reads (`/admin/overview`, `/admin/budgets`, `/admin/denials`) after real traffic
//! through a gateway listener and the forward proxy, and every page in a real headless Chromium
//! (`tests/clients/browser.py`): no console errors, charts drawn with data. With `TOLLGATE_SCREENSHOTS=DIR` the
//! browser test saves its screenshots there (`scripts/screenshots` does, into `docs/images/`).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use common::messages::{self, MessagesStub};
use common::{exchange, exchange_until_closed, hash, Response, TestGateway};

const TOKEN: &str = "console-admin-token-7f3a";
/// Claude Code's session ids of the three users.
const SESSIONS: [&str; 3] = [
    "0d6f5a5e-3c1b-4f0e-9b7a-2a1c9e4d7b11",
    "7c2e9b40-5a1d-4c3e-8f2b-6d9a0e1f2c33",
    "b81f03c2-9e4a-4d7b-a1c5-3f6e8d2b0a47",
];

/// Users of the traffic: name, team, password.
const USERS: [(&str, &str, &str); 3] = [
    ("alice@corp.example", "red", "alice-key"),
    ("bob@corp.example", "blue", "bob-key"),
    ("carol@corp.example", "red", "carol-key"),
];

/// A proxy and a gateway listener (routed to `stub`), three users in two teams with budgets, a policy that denies
/// one destination, DLP blocking private keys, an actions policy that denies `curl`, pricing, the admin token and
/// the audit file `DIR/audit.jsonl`.
fn console_config(dir: &Path, stub: &MessagesStub) -> PathBuf {
    let users: String = USERS
        .iter()
        .map(|(name, team, password)| {
            format!("    - {{name: \"{name}\", password_hash: \"{}\", teams: [{team}]}}\n", hash(password))
        })
        .collect();
    let yaml = format!(
        r#"listeners:
  - {{name: proxy, bind: "127.0.0.1:0"}}
  - {{name: gateway, bind: "127.0.0.1:0", mode: gateway}}
admin: {{bind: "127.0.0.1:0", token: "{TOKEN}"}}
auth:
  anonymous: deny
  users:
{users}teams:
  red: {{budget: {{daily_usd: 0.1, monthly_usd: 20, user_daily_usd: 0.08}}}}
  blue: {{budget: {{daily_usd: 5}}}}
budgets: {{org_monthly_usd: 1000}}
policy: {{default: deny, deny: ["*.unsanctioned-ai.example"]}}
upstreams:
  stub: {{url: "{url}", api_key: "sk-upstream"}}
routing:
  - {{when: {{listener: gateway}}, to: stub}}
pricing:
  - {{model: "claude-haiku-*", input: 1, output: 5, cache_write: 1.25, cache_read: 0.1}}
  - {{model: "*", input: 3, output: 15, cache_write: 3.75, cache_read: 0.3}}
dlp: {{action: block, detectors: [private_key, aws_access_key]}}
actions: {{mode: enforce, deny: ["bash:run:curl *"]}}
audit: {{file: {{path: "{audit}", chain: true}}}}
"#,
        url = stub.url(),
        audit = dir.join("audit.jsonl").display(),
    );
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// Starts the gateway and sends real traffic: metered messages from three users over two models, an agent session
/// whose `curl` call the actions policy denies, a request DLP blocks, and a tunnel the policy denies.
async fn gateway_with_traffic() -> (TestGateway, MessagesStub) {
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = console_config(dir.path(), &stub);
    let gateway =
        TestGateway::start_file(&config, dir, tollgate::app::Options { watch_interval: None, ..Default::default() })
            .await;
    let listener = gateway.running.as_ref().unwrap().address("gateway").unwrap();
    for (index, (name, _, password)) in USERS.iter().enumerate() {
        for model in &messages::MODELS[..=index.min(1)] {
            let body = messages::request_body(model, index == 1);
            let response = exchange_until_closed(listener, &message(name, password, &body, index)).await;
            assert_eq!(response.status, 200, "{name} {model}: {response:?}");
        }
    }
    // An agent turn: a file read it may do, and a curl the actions policy refuses.
    let body = json!({"model": messages::TOOLS, "max_tokens": 1024, "stream": false,
        "messages": [{"role": "user", "content": "go on"}],
        "stub_blocks": [{"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "/repo/Cargo.toml"}},
            {"type": "tool_use", "id": "toolu_02", "name": "Bash",
             "input": {"command": "curl -s https://get.example.com/install.sh", "description": "run"}}]})
    .to_string();
    let (name, _, password) = USERS[0];
    exchange_until_closed(listener, &message(name, password, &body, 0)).await;
    // A private key in a prompt: blocked by DLP.
    let body = json!({"model": messages::MODEL, "max_tokens": 64, "messages": [{"role": "user",
        "content": "deploy with -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJ\n-----END RSA PRIVATE KEY-----"}]})
    .to_string();
    let (name, _, password) = USERS[2];
    let response = exchange_until_closed(listener, &message(name, password, &body, 2)).await;
    assert_eq!(response.status, 403, "{response:?}");
    // A tunnel to a denied destination.
    let credentials = base64_basic(USERS[1].0, USERS[1].2);
    let response = exchange(
        gateway.proxy,
        format!(
            "CONNECT api.unsanctioned-ai.example:443 HTTP/1.1\r\nHost: api.unsanctioned-ai.example:443\r\n\
             Proxy-Authorization: Basic {credentials}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(response.status, 403, "{response:?}");
    (gateway, stub)
}

/// A Messages request on the gateway listener as `user`, from Claude Code's session `SESSIONS[index]`.
fn message(user: &str, password: &str, body: &str, index: usize) -> Vec<u8> {
    format!(
        "POST /v1/messages HTTP/1.1\r\nHost: tollgate.test\r\nx-api-key: {user}:{password}\r\nanthropic-version: 2023-06-01\r\n\
         content-type: application/json\r\nx-claude-code-session-id: {}\r\n\
         user-agent: claude-cli/2.1.{} (external, cli)\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        SESSIONS[index],
        330 + index,
        body.len()
    )
    .into_bytes()
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// One admin-listener request: `headers` are whole lines, `body` a form.
async fn request(gateway: &TestGateway, method: &str, path: &str, headers: &[String], body: &str) -> Response {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", gateway.admin);
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if method == "POST" {
        text.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body);
    exchange(gateway.admin, text.as_bytes()).await
}

/// Signs in with `token`; the session cookie's `NAME=VALUE` and the whole Set-Cookie header.
async fn sign_in(gateway: &TestGateway, token: &str) -> (Response, Option<(String, String)>) {
    let response = request(gateway, "POST", "/ui/login", &[], &format!("token={token}")).await;
    let cookie = response.header("set-cookie").map(|header| {
        let pair = header.split(';').next().unwrap_or("").to_owned();
        (pair, header)
    });
    (response, cookie)
}

fn json_of(response: &Response) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("JSON: {e}: {response:?}"))
}

/// The CSRF token a signed-in page carries.
fn csrf_of(page: &Response) -> String {
    let marker = "<meta name=\"tollgate-csrf\" content=\"";
    let start = page.body.find(marker).unwrap_or_else(|| panic!("a CSRF meta element: {page:?}")) + marker.len();
    page.body[start..].split('"').next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_the_admin_token_and_csrf_for_reload() {
    let (mut gateway, _stub) = gateway_with_traffic().await;

    // Without a session: pages redirect to the sign-in form, the JSON is refused.
    let page = request(&gateway, "GET", "/ui", &[], "").await;
    assert_eq!((page.status, page.header("location").as_deref()), (303, Some("/ui/login")), "{page:?}");
    for path in ["/admin/overview", "/admin/budgets", "/admin/denials", "/admin/usage", "/admin/config"] {
        let response = request(&gateway, "GET", path, &[], "").await;
        assert_eq!(response.status, 401, "{path}: {response:?}");
    }
    let form = request(&gateway, "GET", "/ui/login", &[], "").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("<form method=\"post\" action=\"/ui/login\">"), "{form:?}");
    let policy = form.header("content-security-policy").expect("a CSP");
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");

    // A wrong token: 401, no cookie; a forged cookie opens nothing.
    let (refused, cookie) = sign_in(&gateway, "console-admin-token-7f3b").await;
    assert_eq!((refused.status, cookie), (401, None), "{refused:?}");
    let wrong_token = "tollgate_console_sign_ins_total{method=\"token\",result=\"wrong_token\"}";
    assert_eq!(gateway.metric(wrong_token).await, 1.0);
    let forged = ["Cookie: tollgate_console=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()];
    assert_eq!(request(&gateway, "GET", "/admin/overview", &forged, "").await.status, 401);
    assert_eq!(request(&gateway, "GET", "/ui", &forged, "").await.status, 303);

    // A sign-in posted from another site is refused before the token is looked at.
    let foreign = ["Origin: https://evil.example".to_owned()];
    let response = request(&gateway, "POST", "/ui/login", &foreign, &format!("token={TOKEN}")).await;
    assert_eq!((response.status, response.header("set-cookie")), (403, None), "{response:?}");

    // The right token: a session cookie, HttpOnly and SameSite=Strict (not Secure: the page is plain http).
    let (signed_in, cookie) = sign_in(&gateway, TOKEN).await;
    assert_eq!((signed_in.status, signed_in.header("location").as_deref()), (303, Some("/ui")), "{signed_in:?}");
    let (cookie, header) = cookie.expect("a session cookie");
    assert!(header.contains("HttpOnly") && header.contains("SameSite=Strict") && header.contains("Path=/"), "{header}");
    assert!(!header.contains("Secure") && !header.contains(TOKEN), "{header}");
    let session = [format!("Cookie: {cookie}")];

    // Behind a TLS proxy the browser says https: the cookie is Secure.
    let https = [format!("Origin: https://{}", gateway.admin)];
    let response = request(&gateway, "POST", "/ui/login", &https, &format!("token={TOKEN}")).await;
    assert!(response.header("set-cookie").is_some_and(|header| header.contains("; Secure")), "{response:?}");

    // Every page renders its shell with the CSRF token; the JSON opens with the cookie.
    for (path, name, _) in tollgate::console::PAGES {
        let page = request(&gateway, "GET", path, &session, "").await;
        assert_eq!(page.status, 200, "{path}: {page:?}");
        assert!(page.body.contains(&format!("data-page=\"{name}\"")), "{path}: {page:?}");
        assert!(!page.body.contains(TOKEN));
        assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    }
    let page = request(&gateway, "GET", "/ui/config", &session, "").await;
    let csrf = csrf_of(&page);
    assert_eq!(csrf.len(), 43, "{csrf}");
    let overview = request(&gateway, "GET", "/admin/overview", &session, "").await;
    assert_eq!(overview.status, 200, "{overview:?}");

    // Reload: a session without the CSRF header (or with a wrong one) is refused; with it, the reload runs.
    let before = json_of(&request(&gateway, "GET", "/admin/config", &session, "").await)["version"].clone();
    let response = request(&gateway, "POST", "/admin/reload", &session, "").await;
    assert_eq!(response.status, 403, "{response:?}");
    assert!(response.body.contains("x-tollgate-csrf"), "{response:?}");
    let wrong = [session[0].clone(), "x-tollgate-csrf: not-the-token".to_owned()];
    assert_eq!(request(&gateway, "POST", "/admin/reload", &wrong, "").await.status, 403);
    assert_eq!(json_of(&request(&gateway, "GET", "/admin/config", &session, "").await)["version"], before);
    let with_csrf = [session[0].clone(), format!("x-tollgate-csrf: {csrf}")];
    let response = request(&gateway, "POST", "/admin/reload", &with_csrf, "").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(json_of(&response)["version"], before.as_u64().unwrap() + 1);
    // The bearer token needs no CSRF header (it is no ambient credential).
    let bearer = [format!("Authorization: Bearer {TOKEN}")];
    assert_eq!(request(&gateway, "POST", "/admin/reload", &bearer, "").await.status, 200);

    // Assets: versioned, cached for long, with the same CSP.
    let asset = request(&gateway, "GET", "/ui/assets/chart.umd.min.js", &[], "").await;
    assert_eq!(asset.status, 200);
    assert_eq!(asset.header("cache-control").as_deref(), Some("public, max-age=31536000, immutable"));
    assert!(asset.body.starts_with("/*!\n * Chart.js v4.6.2"), "{}", &asset.body[..40]);
    assert_eq!(request(&gateway, "GET", "/ui/assets/../Cargo.toml", &[], "").await.status, 404);

    // Sign-out needs the CSRF token too, and ends the session.
    let response = request(&gateway, "POST", "/ui/logout", &session, "csrf=wrong").await;
    assert_eq!(response.status, 403, "{response:?}");
    let response = request(&gateway, "POST", "/ui/logout", &session, &format!("csrf={csrf}")).await;
    assert_eq!((response.status, response.header("location").as_deref()), (303, Some("/ui/login")));
    assert!(response.header("set-cookie").is_some_and(|header| header.contains("Max-Age=0")));
    assert_eq!(request(&gateway, "GET", "/admin/overview", &session, "").await.status, 401);
    assert_eq!(request(&gateway, "GET", "/ui", &session, "").await.status, 303);

    // Every token tried and the sign-out are audit records (the cross-site post is only counted): from where, what
    // came of it, why a refusal was one; never the token.
    let records = gateway.shutdown_and_audit().await;
    let console: Vec<_> = records.iter().filter(|record| record["kind"] == "console").collect();
    let seen: Vec<_> = console
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
                r["error"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("console:sign_in:token", "/ui/login", "deny", 401, Some("wrong_token")),
            ("console:sign_in:token", "/ui/login", "allow", 303, None),
            ("console:sign_in:token", "/ui/login", "allow", 303, None),
            ("console:sign_out", "/ui/logout", "allow", 303, None),
        ],
        "{console:?}"
    );
    assert!(console.iter().all(|r| r["listener"] == "admin" && r["client"] == "127.0.0.1" && r["user"].is_null()));
    assert!(!console.iter().any(|r| r.to_string().contains(TOKEN)), "{console:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_endpoints_report_the_traffic_sent() {
    let (gateway, _stub) = gateway_with_traffic().await;
    let bearer = [format!("Authorization: Bearer {TOKEN}")];
    let get = |path: &'static str| request(&gateway, "GET", path, &bearer, "");

    // Overview: 7 gateway requests (5 metered, the agent turn whose curl the actions policy refused, 1 DLP block)
    // and 1 denied tunnel, in this minute or the one before it.
    let overview = json_of(&get("/admin/overview?minutes=5").await);
    assert_eq!(overview["totals"], json!({"requests": 7, "tunnels": 1, "denials": 3, "errors": 0}), "{overview}");
    let minutes = overview["minutes"].as_array().expect("minutes");
    assert!(!minutes.is_empty() && minutes.len() <= 5, "{overview}");
    let recent: u64 = minutes.iter().map(|minute| minute["requests"].as_u64().unwrap()).sum();
    assert_eq!(recent, 7, "{overview}");
    assert_eq!(overview["last_hour"]["tunnels"], 1);
    assert_eq!(overview["config_version"], 1);
    assert_eq!(get("/admin/overview?minutes=0").await.status, 400);
    assert_eq!(get("/admin/overview?minutes=1441").await.status, 400);
    assert_eq!(get("/admin/overview?hours=1").await.status, 400);

    // Budgets: red's daily and monthly, blue's daily, the organisation's monthly, and the user budgets of red's
    // users who spent today; spend from the state backend, today's rate from the audit log.
    let budgets = json_of(&get("/admin/budgets").await);
    assert_eq!(budgets["rate_from"], "audit_log");
    let rows = budgets["budgets"].as_array().expect("budgets");
    let mut scopes: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            let who = row["user"].as_str().or(row["team"].as_str()).unwrap_or("org");
            (row["scope"].as_str().unwrap().to_owned(), who.to_owned())
        })
        .collect();
    // The user budgets come by today's spend, which differs by the models' prices: compared in name order.
    scopes[4..].sort();
    let expected = [
        ("team_daily", "blue"),
        ("team_daily", "red"),
        ("team_monthly", "red"),
        ("org_monthly", "org"),
        ("user_daily", "alice@corp.example"),
        ("user_daily", "carol@corp.example"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
    assert_eq!(scopes, expected, "{budgets}");
    let red_daily = &rows[1];
    let spent = red_daily["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0, "{red_daily}");
    assert!((red_daily["left_usd"].as_f64().unwrap() - (0.1 - spent).max(0.0)).abs() < 1e-6, "{red_daily}");
    assert!(red_daily["today_usd"].as_f64().unwrap() > 0.0 && red_daily["rate_usd_per_hour"].as_f64().unwrap() > 0.0);
    assert!(["spent", "runs_out", "lasts"].contains(&red_daily["outlook"].as_str().unwrap()), "{red_daily}");
    // The month's budget of 20 USD at today's rate (a few cents over the hours since midnight: just after midnight
    // that is a high rate) runs out when what is left lasts fewer hours than the month has left, and lasts otherwise.
    let month = &rows[2];
    let time = |field: &Value| humantime::parse_rfc3339(field.as_str().unwrap()).unwrap();
    let (now, ends) = (time(&budgets["now"]), time(&month["period_ends_at"]));
    let hours = month["left_usd"].as_f64().unwrap() / month["rate_usd_per_hour"].as_f64().unwrap();
    let runs_out = now + std::time::Duration::from_secs_f64(hours * 3600.0) < ends;
    assert_eq!(month["outlook"], if runs_out { "runs_out" } else { "lasts" }, "{month}");

    // Denials, the audit log's last records first: the tunnel, the DLP block, the agent turn refused for its curl
    // call, and that call's action record (written before its request's), each with its rule.
    let denials = json_of(&get("/admin/denials").await);
    let rows = denials["rows"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> =
        rows.iter().map(|row| (row["kind"].as_str().unwrap(), row["rule"].as_str().unwrap_or("-"))).collect();
    let curl = "actions.deny[0] bash:run:curl *";
    assert_eq!(
        kinds,
        [("connect", "policy.deny[0]"), ("gateway", "dlp.private_key"), ("gateway", curl), ("action", curl)],
        "{denials}"
    );
    assert_eq!(
        (rows[0]["user"].as_str(), rows[0]["host"].as_str()),
        (Some(USERS[1].0), Some("api.unsanctioned-ai.example"))
    );
    assert_eq!(rows[1]["dlp"], json!(["private_key"]));
    assert_eq!(rows[3]["target"], "curl -s https://get.example.com/install.sh", "{denials}");
    assert_eq!(denials["by_detector"], json!({"private_key": 1}), "{denials}");
    assert_eq!(denials["by_rule"], json!({curl: 2, "dlp.private_key": 1, "policy.deny[0]": 1}), "{denials}");
    let limited = json_of(&get("/admin/denials?limit=1").await);
    assert_eq!((limited["rows"].as_array().unwrap().len(), limited["denials_not_shown"].as_u64()), (1, Some(3)));
    assert_eq!(get("/admin/denials?limit=100000").await.status, 400);
}

/// Every console page in headless Chromium with a signed-in session: each loads without a console error, and every
/// page but the config's draws charts with data from the traffic sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_renders_in_a_browser() {
    let (gateway, _stub) = gateway_with_traffic().await;
    let (_, cookie) = sign_in(&gateway, TOKEN).await;
    let (cookie, _) = cookie.expect("a session cookie");
    let screenshots = std::env::var_os("TOLLGATE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| gateway.dir.path().join("screenshots"));
    let mut command = Command::new(common::python());
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/browser.py"));
    for (path, name, _) in tollgate::console::PAGES {
        command.args(["--url", &format!("http://{}{path}", gateway.admin), "--name", &format!("console-{name}")]);
    }
    // On the config page the reload button is pressed: the page's script must send the session's CSRF token.
    command.args(["--cookie", &cookie, "--wait-gone", ".loading", "--click", "#reload"]);
    command.args(["--wait-after-click", "#reload-result .reloaded, #reload-result .error", "--screenshot-dir"]);
    command.arg(&screenshots);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("run browser.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let pages = result["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), tollgate::console::PAGES.len(), "{result}");
    for page in pages {
        let url = page["url"].as_str().unwrap();
        assert_eq!(page["ready"], true, "{url}: {page}\n{stderr}");
        assert_eq!(page["console_errors"], json!([]), "{url}: {page}");
        assert!(page["screenshot"].as_str().is_some_and(|path| Path::new(path).exists()), "{page}");
        if url.ends_with("/ui/config") {
            assert_eq!(page["clicked"], "#reload", "{page}");
            assert!(page["text"].as_str().unwrap().contains("Reloaded: version 2"), "{page}");
            continue;
        }
        assert_eq!(page["clicked"], Value::Null, "{page}");
        assert!(page["charts_with_data"].as_u64().unwrap() >= 1, "{url}: {page}");
        assert!(page["painted_canvases"].as_u64().unwrap() >= 1, "{url}: {page}");
    }
    let text =
        |name: &str| pages.iter().find(|page| page["url"].as_str().unwrap().ends_with(name)).unwrap()["text"].clone();
    assert!(text("/ui/spend").as_str().unwrap().contains("alice@corp.example"), "{}", text("/ui/spend"));
    assert!(text("/ui/denials").as_str().unwrap().contains("private_key"), "{}", text("/ui/denials"));
    assert!(text("/ui/fleet").as_str().unwrap().contains("claude-cli"), "{}", text("/ui/fleet"));
    assert!(text("/ui/sessions").as_str().unwrap().contains("curl -s"), "{}", text("/ui/sessions"));
    assert!(output.status.success(), "{result}");
}
