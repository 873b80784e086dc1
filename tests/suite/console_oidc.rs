//! Console sign-in with the identity provider (`admin.console.oidc`): the authorization code grant with PKCE against
//! the test provider (`tests/support/idp.rs`, HTTPS with the test CA). Its authorization endpoint is fetched with curl
//! and every redirect followed by hand onto the admin listener. A member of the admin group reaches `/admin/overview`
//! with the session cookie; a non-member, a declined sign-in, a tampered or foreign state, a replayed code, a code
//! redeemed with another sign-in's PKCE verifier and an ID token with the wrong nonce are refused. A console sign-in
//! with SSO but without `auth.oidc` is a config error.

use crate::common;

use std::path::Path;

use serde_json::{json, Value};

use common::idp::{Idp, SigningKey, CONSOLE_CLIENT_ID};
use common::pki::Pki;
use common::{curl, exchange, Response, TestGateway, LOOPBACK_POLICY};

const TOKEN: &str = "console-oidc-admin-token-91c2";
const AUDIENCE: &str = "api://tollgate";
const ADMIN_GROUP: &str = "tollgate-admins";
/// The configured redirect URI: the provider sends the browser there; the test takes its query to the admin listener.
const REDIRECT_URI: &str = "http://tollgate-admin.test/ui/login/callback";

/// The provider and a gateway whose console signs in with it.
struct Setup {
    pki: Pki,
    idp: Idp,
    gateway: TestGateway,
}

fn config(dir: &Path, pki: &Pki, issuer: &str) -> String {
    format!(
        "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n\
         admin:\n  bind: \"127.0.0.1:0\"\n  token: \"{TOKEN}\"\n  console:\n    oidc:\n\
         \x20     client_id: {CONSOLE_CLIENT_ID}\n      redirect_uri: \"{REDIRECT_URI}\"\n      groups: [other-admins, {ADMIN_GROUP}]\n\
         auth:\n  anonymous: deny\n  oidc: {{issuer: \"{issuer}\", audience: \"{AUDIENCE}\", user_claim: email}}\n\
         upstream:\n  trust: {{system_roots: false, extra_ca: [\"{ca}\"]}}\n\
         audit: {{file: {{path: \"{audit}\"}}}}\n{LOOPBACK_POLICY}",
        ca = pki.ca.pem.display(),
        audit = dir.join("audit.jsonl").display(),
    )
}

impl Setup {
    async fn start() -> Setup {
        let pki = Pki::new();
        let idp = Idp::start(&pki.server, AUDIENCE, &[SigningKey::es256("es-1")]).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, config(dir.path(), &pki, &idp.issuer)).expect("write the config");
        let options = tollgate::app::Options { watch_interval: None, ..Default::default() };
        let gateway = TestGateway::start_file(&path, dir, options).await;
        Setup { pki, idp, gateway }
    }

    /// `GET path` on the admin listener with `cookies` (`NAME=VALUE`).
    async fn get(&self, path: &str, cookies: &[&str]) -> Response {
        let mut text = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.gateway.admin);
        if !cookies.is_empty() {
            text.push_str(&format!("Cookie: {}\r\n", cookies.join("; ")));
        }
        text.push_str("\r\n");
        exchange(self.gateway.admin, text.as_bytes()).await
    }

    /// `/ui/login/oidc`: the authorization request's URL and the state cookie (`NAME=VALUE`).
    async fn begin(&self) -> (url::Url, String) {
        let response = self.get("/ui/login/oidc", &[]).await;
        assert_eq!(response.status, 303, "{response:?}");
        let location = url::Url::parse(&response.header("location").expect("a location")).expect("a URL");
        let cookie = set_cookie(&response, "tollgate_console_oidc").expect("the state cookie");
        (location, cookie)
    }

    /// The browser at the provider's authorization endpoint (fetched with curl): where it is sent back to.
    async fn authorize(&self, location: &url::Url) -> url::Url {
        let ca = self.pki.ca.pem.display().to_string();
        let (code, out, err) =
            curl(&["--cacert", &ca, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", location.as_str()]).await;
        assert_eq!(code, 0, "{err}");
        let (status, back) = out.split_once(' ').expect("status and location");
        assert_eq!(status, "302", "{out}");
        assert!(back.starts_with(REDIRECT_URI), "{back}");
        url::Url::parse(back).expect("a URL")
    }

    /// Begins a sign-in and signs in at the provider: the callback's path and query, and the state cookie.
    async fn through_provider(&self) -> (String, String) {
        let (location, cookie) = self.begin().await;
        let back = self.authorize(&location).await;
        (format!("/ui/login/callback?{}", back.query().unwrap_or("")), cookie)
    }
}

/// The `NAME=VALUE` of the Set-Cookie header for `name` (with a value).
fn set_cookie(response: &Response, name: &str) -> Option<String> {
    response.head.lines().skip(1).find_map(|line| {
        let (header, value) = line.split_once(':')?;
        let pair = value.trim().split(';').next()?.to_owned();
        (header.eq_ignore_ascii_case("set-cookie")
            && pair.starts_with(&format!("{name}="))
            && pair.len() > name.len() + 1)
            .then_some(pair)
    })
}

fn query_field(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// `path` with the query field `name` set to `value`.
fn with_field(path: &str, name: &str, value: &str) -> String {
    let mut url = url::Url::parse(&format!("http://x{path}")).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(key, old)| (key.to_string(), if key == name { value.to_owned() } else { old.to_string() }))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    format!("{}?{}", url.path(), url.query().unwrap())
}

/// The sample of `tollgate_console_sign_ins_total` for SSO sign-ins with `result`.
fn sign_ins(result: &str) -> String {
    format!("tollgate_console_sign_ins_total{{method=\"oidc\",result=\"{result}\"}}")
}

fn member() -> Value {
    json!({"sub": "u-1", "email": "ada@corp.example", "groups": ["eng", ADMIN_GROUP]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_the_admin_group_signs_in_with_the_provider_and_a_code_is_good_once() {
    let mut setup = Setup::start().await;
    setup.idp.sign_in_as(Some(member()));

    // The sign-in page offers SSO next to the token form.
    let form = setup.get("/ui/login", &[]).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("href=\"/ui/login/oidc\"") && form.body.contains("name=\"token\""), "{form:?}");

    // The authorization request: the console's client, the configured redirect URI, a nonce, PKCE S256.
    let (location, state_cookie) = setup.begin().await;
    assert!(location.as_str().starts_with(&format!("{}/authorize?", setup.idp.issuer)), "{location}");
    assert_eq!(query_field(&location, "client_id").as_deref(), Some(CONSOLE_CLIENT_ID));
    assert_eq!(query_field(&location, "redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert_eq!(query_field(&location, "response_type").as_deref(), Some("code"));
    assert_eq!(query_field(&location, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_field(&location, "code_challenge").map(|c| c.len()), Some(43));
    assert!(query_field(&location, "nonce").is_some_and(|nonce| nonce.len() == 43));
    let state = query_field(&location, "state").expect("a state");
    assert_eq!(state_cookie, format!("tollgate_console_oidc={state}"));

    let back = setup.authorize(&location).await;
    assert_eq!(query_field(&back, "state").as_deref(), Some(state.as_str()));
    let callback = format!("/ui/login/callback?{}", back.query().unwrap());
    let signed_in = setup.get(&callback, &[&state_cookie]).await;
    assert_eq!(signed_in.status, 200, "{signed_in:?}");
    assert!(signed_in.body.contains("Signed in as ada@corp.example"), "{signed_in:?}");
    let session = set_cookie(&signed_in, "tollgate_console").expect("a session cookie");
    let header = signed_in.head.lines().find(|line| line.contains(&session)).unwrap();
    assert!(header.contains("HttpOnly") && header.contains("SameSite=Strict"), "{header}");
    assert_eq!(setup.idp.codes_redeemed(), 1);
    assert_eq!(setup.gateway.metric(&sign_ins("ok")).await, 1.0);

    // The same session as the token's: the JSON and the pages open with the cookie.
    let overview = setup.get("/admin/overview", &[&session]).await;
    assert_eq!(overview.status, 200, "{overview:?}");
    assert!(overview.body.contains("\"totals\""), "{overview:?}");
    assert_eq!(setup.get("/ui", &[&session]).await.status, 200);
    assert_eq!(setup.get("/admin/overview", &[]).await.status, 401);

    // The callback again: its state was used up.
    let replayed = setup.get(&callback, &[&state_cookie]).await;
    assert_eq!(replayed.status, 400, "{replayed:?}");
    assert!(set_cookie(&replayed, "tollgate_console").is_none());

    // The code under a fresh sign-in's state: the provider refuses a code used before.
    let (location, fresh_cookie) = setup.begin().await;
    let fresh_state = query_field(&location, "state").unwrap();
    let replayed_code = with_field(&callback, "state", &fresh_state);
    let refused = setup.get(&replayed_code, &[&fresh_cookie]).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("invalid_grant"), "{refused:?}");
    assert!(set_cookie(&refused, "tollgate_console").is_none());
    assert_eq!(setup.idp.codes_redeemed(), 1);
    assert_eq!(setup.gateway.metric(&sign_ins("state_unknown")).await, 1.0);
    assert_eq!(setup.gateway.metric(&sign_ins("code_refused")).await, 1.0);

    // Each callback is an audit record: the member who signed in, then the two refusals and why.
    let records = setup.gateway.shutdown_and_audit().await;
    let seen: Vec<_> = records
        .iter()
        .filter(|record| record["kind"] == "console")
        .map(|r| (r["rule"].clone(), r["user"].clone(), r["decision"].clone(), r["status"].clone(), r["error"].clone()))
        .collect();
    let oidc = json!("console:sign_in:oidc");
    assert_eq!(
        seen,
        [
            (oidc.clone(), json!("ada@corp.example"), json!("allow"), json!(200), Value::Null),
            (oidc.clone(), Value::Null, json!("deny"), json!(400), json!("state_unknown")),
            (oidc, Value::Null, json!("deny"), json!(403), json!("code_refused")),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_tampered_states_foreign_verifiers_and_wrong_nonces_are_refused() {
    let setup = Setup::start().await;
    let refused = |response: &Response, status: u16, says: &str| {
        assert_eq!(response.status, status, "{response:?}");
        assert!(response.body.contains(says), "{says}: {response:?}");
        assert!(set_cookie(response, "tollgate_console").is_none(), "{response:?}");
    };

    // Not in an admin group.
    setup.idp.sign_in_as(Some(json!({"sub": "u-2", "email": "bob@corp.example", "groups": ["eng"]})));
    let (callback, cookie) = setup.through_provider().await;
    refused(&setup.get(&callback, &[&cookie]).await, 403, "bob@corp.example is not in a group allowed");

    // The user declines at the provider.
    setup.idp.sign_in_as(None);
    let (callback, cookie) = setup.through_provider().await;
    refused(&setup.get(&callback, &[&cookie]).await, 403, "access_denied");

    setup.idp.sign_in_as(Some(member()));
    // A tampered state, and a callback without the state cookie of the browser that began the sign-in.
    let (callback, cookie) = setup.through_provider().await;
    let tampered = with_field(&callback, "state", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    refused(&setup.get(&tampered, &[&cookie]).await, 400, "not begun in this browser");
    refused(&setup.get(&callback, &[]).await, 400, "not begun in this browser");

    // A code obtained for one sign-in, injected into another (its own state and cookie): redeemed with the other's
    // PKCE verifier, which the provider refuses.
    let (stolen, _) = setup.through_provider().await;
    let (location, other_cookie) = setup.begin().await;
    let other_state = query_field(&location, "state").unwrap();
    let injected = with_field(&stolen, "state", &other_state);
    refused(&setup.get(&injected, &[&other_cookie]).await, 403, "invalid_grant");
    assert_eq!(setup.idp.codes_redeemed(), 1, "only the non-member's code was redeemed");

    // An ID token whose nonce is not the sign-in's.
    setup.idp.override_nonce("a-nonce-from-another-sign-in");
    let (callback, cookie) = setup.through_provider().await;
    refused(&setup.get(&callback, &[&cookie]).await, 403, "nonce");
    assert_eq!(setup.idp.codes_redeemed(), 2);

    // None of them opened anything, and each was counted by its reason.
    assert_eq!(setup.get("/admin/overview", &[]).await.status, 401);
    let counted = [
        ("not_a_member", 1.0),
        ("provider_error", 1.0),
        ("state_mismatch", 2.0),
        ("code_refused", 1.0),
        ("nonce_mismatch", 1.0),
        ("ok", 0.0),
    ];
    for (result, count) in counted {
        assert_eq!(setup.gateway.metric(&sign_ins(result)).await, count, "{result}");
    }
}

#[test]
fn sso_for_the_console_needs_auth_oidc_and_a_callback_redirect_uri() {
    let load = |yaml: &str| {
        tollgate::config::Config::from_text(yaml, Path::new("test.yaml"), &|_| None).err().map(|e| e.to_string())
    };
    let console = "listeners: [{name: proxy, bind: \"127.0.0.1:0\"}]\npolicy: {default: deny}\nadmin:\n  bind: \"127.0.0.1:0\"\n  token: \"t\"\n  console:\n    oidc: {client_id: c, \
                   redirect_uri: \"https://admin.corp.example/ui/login/callback\", groups: [admins]}\n";
    let error = load(console).expect("refused without auth.oidc");
    assert!(error.contains("admin.console.oidc") && error.contains("configure auth.oidc"), "{error}");
    let oidc = "auth:\n  oidc: {issuer: \"https://idp.corp.example\", audience: api}\n";
    assert_eq!(load(&format!("{console}{oidc}")), None);
    let elsewhere = console.replace("/ui/login/callback", "/callback");
    let error = load(&format!("{elsewhere}{oidc}")).expect("refused");
    assert!(error.contains("admin.console.oidc.redirect_uri"), "{error}");
    let no_groups = console.replace("groups: [admins]", "groups: []");
    let error = load(&format!("{no_groups}{oidc}")).expect("refused");
    assert!(error.contains("admin.console.oidc.groups"), "{error}");
}
