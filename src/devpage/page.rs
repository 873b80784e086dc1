//! The developer page rendered: a static HTML page (no script; every value HTML-escaped) and its JSON twin, from
//! one `View`. The setup lines are built here so the page and the JSON give the same ones.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use super::denials::Denial;
use crate::identity::{AuthMethod, Principal};
use crate::limits::budget::Budget;
use crate::limits::Plan;

/// The model host Claude Code talks to: `NO_PROXY` must not cover it.
pub const MODEL_HOST: &str = "api.anthropic.com:443";

/// Where the setup lines keep the CA certificate.
const CA_FILE: &str = "~/.config/tollgate/tollgate-ca.pem";

/// What the page shows.
#[derive(Debug)]
pub struct View {
    /// The reserved host name the page is served at.
    pub host: String,
    pub principal: Principal,
    pub plan: Arc<Plan>,
    pub budgets: Vec<BudgetLeft>,
    /// Newest first.
    pub denials: Vec<Denial>,
    /// Whether `api.anthropic.com` is intercepted (the client must then trust the CA).
    pub intercepts_model_host: bool,
    /// Whether there is an interception CA to download.
    pub ca_available: bool,
    /// The listener the request came through: TLS or not, the address the client reached, and whether the
    /// listener binds every address (the host is then a placeholder).
    pub proxy_tls: bool,
    pub proxy_address: Option<SocketAddr>,
    pub proxy_binds_every_address: bool,
}

/// A budget and what is spent of it this period (`None` when the state backend could not say).
#[derive(Debug)]
pub struct BudgetLeft {
    pub budget: Budget,
    pub spent_micro_usd: Option<i64>,
}

/// The setup lines for the client's shell and Claude Code's settings.
#[derive(Debug)]
struct Setup {
    proxy_url: String,
    /// True when the proxy host is a placeholder (the listener binds every address).
    placeholder_host: bool,
    shell: Vec<String>,
    settings: Value,
}

/// The HTML page.
pub fn html(view: &View) -> String {
    let principal = &view.principal;
    let setup = setup(view);
    let mut out = String::with_capacity(8192);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>tollgate: who am I</title>\n<style>\n\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2330}\n\
         table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccd;padding:.3rem .6rem;\
         text-align:left;vertical-align:top}th{background:#eef}\n\
         pre{background:#f4f5f8;padding:.8rem;overflow-x:auto}code{font-size:.95em}.muted{color:#667}\n\
         </style>\n</head>\n<body>\n<h1>tollgate: who am I</h1>\n",
    );
    let _ = writeln!(out, "<h2>Identity</h2>\n<table>");
    row(&mut out, "user", &escape(&principal.name));
    let teams: Vec<String> = principal.teams.iter().map(|t| escape(t)).collect();
    row(&mut out, "teams", &if teams.is_empty() { "none".to_owned() } else { teams.join(", ") });
    row(&mut out, "identified by", &escape(method_phrase(principal.method)));
    if let Some(region) = &principal.region {
        row(&mut out, "region", &escape(region));
    }
    if let Some(expires) = principal.expires {
        row(&mut out, "credential expires", &escape(&humantime::format_rfc3339_seconds(expires).to_string()));
    }
    out.push_str("</table>\n<h2>Limits</h2>\n");
    if view.plan.is_empty() {
        out.push_str("<p>No rate or concurrency limit applies to you.</p>\n");
    } else {
        out.push_str("<table>\n<tr><th>scope</th><th>limit</th><th>counter</th></tr>\n");
        for bucket in &view.plan.buckets {
            let limit = format!("{} requests per minute", bucket.rate.per_minute);
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                bucket.scope.label(),
                limit,
                escape(&bucket.key)
            );
        }
        for slot in &view.plan.slots {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{} at once</td><td><code>{}</code></td></tr>",
                slot.scope.label(),
                slot.max,
                escape(&slot.key)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Budgets</h2>\n");
    if view.budgets.is_empty() {
        out.push_str("<p>No spend budget applies to you.</p>\n");
    } else {
        out.push_str("<table>\n<tr><th>budget</th><th>limit</th><th>spent</th><th>left</th></tr>\n");
        for left in &view.budgets {
            let (spent, remaining) = match left.spent_micro_usd {
                Some(spent) => (usd(spent), usd((left.budget.limit_micro_usd - spent).max(0))),
                None => ("unknown (state backend unreachable)".to_owned(), "unknown".to_owned()),
            };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{spent}</td><td>{remaining}</td></tr>",
                escape(&budget_name(&left.budget)),
                usd(left.budget.limit_micro_usd)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Your latest refusals</h2>\n");
    if view.denials.is_empty() {
        out.push_str("<p>None since this tollgate started.</p>\n");
    } else {
        out.push_str(
            "<table>\n<tr><th>time (UTC)</th><th>request</th><th>status</th><th>rule</th><th>why</th>\
             <th>request id</th></tr>\n",
        );
        for denial in &view.denials {
            let request = format!(
                "{} {}{}",
                denial.method,
                denial.target.as_deref().unwrap_or(""),
                denial.path.as_deref().unwrap_or("")
            );
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td>\
                 <td><code>{}</code></td></tr>",
                escape(&denial.ts),
                escape(&request),
                denial.status,
                escape(denial.rule.as_deref().unwrap_or("-")),
                escape(denial.message.as_deref().unwrap_or(denial.reason)),
                escape(&denial.id)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Set up your machine</h2>\n");
    if view.ca_available {
        let _ = writeln!(
            out,
            "<p>tollgate {} the model API: Claude Code must trust its interception CA. \
             <a href=\"/ca.pem\" download=\"tollgate-ca.pem\">Download the CA certificate</a> \
             (<code>http://{}/ca.pem</code>).</p>",
            if view.intercepts_model_host { "intercepts" } else { "can intercept" },
            escape(&view.host)
        );
    } else {
        out.push_str("<p>tollgate intercepts nothing: there is no CA to trust.</p>\n");
    }
    if setup.placeholder_host {
        out.push_str(
            "<p class=\"muted\">Replace <code>PROXY_HOST</code> with the name you reach tollgate by \
             (this listener accepts on every address).</p>\n",
        );
    }
    out.push_str("<p>For your shell (<code>~/.bashrc</code>, <code>~/.zshrc</code>):</p>\n<pre><code>");
    out.push_str(&escape(&setup.shell.join("\n")));
    out.push_str(
        "</code></pre>\n<p>Or in Claude Code's <code>~/.claude/settings.json</code> \
                  (absolute paths: no <code>~</code> there):</p>\n<pre><code>",
    );
    out.push_str(&escape(&serde_json::to_string_pretty(&setup.settings).expect("JSON")));
    out.push_str("</code></pre>\n");
    let _ = writeln!(
        out,
        "<p class=\"muted\">The same as JSON: <a href=\"/whoami.json\">/whoami.json</a>. \
         Check a machine with <code>tollgate doctor</code>.</p>\n</body>\n</html>"
    );
    out
}

/// The JSON twin of the page.
pub fn json(view: &View) -> String {
    let principal = &view.principal;
    let setup = setup(view);
    let limits: Vec<Value> = view
        .plan
        .buckets
        .iter()
        .map(|b| json!({"scope": b.scope.label(), "requests_per_minute": b.rate.per_minute, "key": b.key}))
        .chain(view.plan.slots.iter().map(|s| json!({"scope": s.scope.label(), "concurrent": s.max, "key": s.key})))
        .collect();
    let budgets: Vec<Value> = view
        .budgets
        .iter()
        .map(|left| {
            let limit = left.budget.limit_micro_usd;
            json!({
                "scope": left.budget.scope.label(),
                "team": left.budget.team,
                "limit_usd": limit as f64 / 1e6,
                "spent_usd": left.spent_micro_usd.map(|spent| spent as f64 / 1e6),
                "left_usd": left.spent_micro_usd.map(|spent| (limit - spent).max(0) as f64 / 1e6),
            })
        })
        .collect();
    let value = json!({
        "user": principal.name,
        "teams": principal.teams,
        "identified_by": principal.method.label(),
        "region": principal.region,
        "expires": principal.expires.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
        "limits": limits,
        "budgets": budgets,
        "denials": view.denials,
        "ca": {
            "available": view.ca_available,
            "url": view.ca_available.then(|| format!("http://{}/ca.pem", view.host)),
            "model_host_intercepted": view.intercepts_model_host,
        },
        "setup": {
            "proxy_url": setup.proxy_url,
            "shell": setup.shell,
            "claude_settings": setup.settings,
        },
    });
    serde_json::to_string_pretty(&value).expect("JSON")
}

/// The proxy URL and the lines for the shell and `~/.claude/settings.json`. Passwords are never shown: a Basic
/// user's URL carries `PASSWORD` to replace.
fn setup(view: &View) -> Setup {
    let principal = &view.principal;
    let scheme = if view.proxy_tls { "https" } else { "http" };
    let (host, placeholder_host) = match view.proxy_address {
        Some(address) if !view.proxy_binds_every_address => (address.ip().to_string(), false),
        _ => ("PROXY_HOST".to_owned(), true),
    };
    let port = view.proxy_address.map_or(3128, |a| a.port());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let mut url = url::Url::parse(&format!("{scheme}://{host}:{port}")).expect("a URL from a host and a port");
    if principal.method == AuthMethod::Basic {
        // Percent-encodes the user name (`alice@corp.example` is `alice%40corp.example`).
        let _ = url.set_username(&principal.name);
        let _ = url.set_password(Some("PASSWORD"));
    }
    // `'` is legal in a URL's user name but would end the shell's quoting.
    let proxy_url = url.as_str().trim_end_matches('/').replace('\'', "%27");
    let no_proxy = "localhost,127.0.0.1";
    let mut shell = vec![format!("export HTTPS_PROXY='{proxy_url}'"), format!("export NO_PROXY='{no_proxy}'")];
    let mut env = serde_json::Map::new();
    env.insert("HTTPS_PROXY".into(), proxy_url.clone().into());
    env.insert("NO_PROXY".into(), no_proxy.into());
    if view.ca_available {
        shell.push("mkdir -p ~/.config/tollgate".to_owned());
        shell.push(format!("curl -fsS -x \"$HTTPS_PROXY\" -o {CA_FILE} http://{}/ca.pem", view.host));
        shell.push(format!("export NODE_EXTRA_CA_CERTS={}", CA_FILE.replacen('~', "\"$HOME\"", 1)));
        env.insert("NODE_EXTRA_CA_CERTS".into(), "/home/YOU/.config/tollgate/tollgate-ca.pem".into());
    }
    if principal.method == AuthMethod::Mtls {
        shell.push("export CLAUDE_CODE_CLIENT_CERT=/path/to/your-certificate.pem".to_owned());
        shell.push("export CLAUDE_CODE_CLIENT_KEY=/path/to/your-certificate.key".to_owned());
        env.insert("CLAUDE_CODE_CLIENT_CERT".into(), "/path/to/your-certificate.pem".into());
        env.insert("CLAUDE_CODE_CLIENT_KEY".into(), "/path/to/your-certificate.key".into());
    }
    let mut settings = serde_json::Map::new();
    settings.insert("env".into(), Value::Object(env));
    if matches!(principal.method, AuthMethod::Jwt | AuthMethod::Oidc) {
        settings.insert("proxyAuthHelper".into(), "tollgate token --bearer".into());
    }
    Setup { proxy_url, placeholder_host, shell, settings: Value::Object(settings) }
}

fn method_phrase(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::Anonymous => "anonymous access (auth.anonymous): no credential was needed",
        AuthMethod::Basic => "a password (Basic proxy credentials)",
        AuthMethod::Mtls => "a client certificate",
        AuthMethod::Jwt => "a bearer token (auth.jwt)",
        AuthMethod::Oidc => "a bearer token from your identity provider (auth.oidc)",
    }
}

fn budget_name(budget: &Budget) -> String {
    match &budget.team {
        Some(team) => format!("{} (team {team})", budget.scope.label()),
        None => budget.scope.label().to_owned(),
    }
}

fn usd(micro_usd: i64) -> String {
    format!("${:.2}", micro_usd as f64 / 1e6)
}

fn row(out: &mut String, name: &str, escaped_value: &str) {
    let _ = writeln!(out, "<tr><th>{name}</th><td>{escaped_value}</td></tr>");
}

/// Text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn a_basic_user_gets_a_percent_encoded_proxy_url_without_its_password() {
        let view = View {
            host: "tollgate.internal".into(),
            principal: Principal::named("alice@corp.example", &["backend"], AuthMethod::Basic),
            plan: Arc::default(),
            budgets: Vec::new(),
            denials: Vec::new(),
            intercepts_model_host: true,
            ca_available: true,
            proxy_tls: false,
            proxy_address: Some("127.0.0.1:3128".parse().unwrap()),
            proxy_binds_every_address: false,
        };
        let setup = setup(&view);
        assert_eq!(setup.proxy_url, "http://alice%40corp.example:PASSWORD@127.0.0.1:3128");
        assert_eq!(setup.settings["env"]["HTTPS_PROXY"], setup.proxy_url);
        assert!(setup
            .shell
            .iter()
            .any(|l| l == "export NODE_EXTRA_CA_CERTS=\"$HOME\"/.config/tollgate/tollgate-ca.pem"));
    }
}
