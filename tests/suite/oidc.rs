//! OpenID Connect identity (`auth.oidc`) against the test identity provider (`tests/support/idp.rs`, HTTPS with the
//! test CA): tokens through the forward proxy (curl, `Proxy-Authorization: Bearer`) and the gateway listener (the
//! Python SDK, `Authorization: Bearer` and `x-api-key`); groups → teams and the region; expired, wrong-audience and
//! wrong-issuer tokens; a key rotation fetched once, without a failed request; an unreachable provider with and
//! without keys known; RS256, ES256 and EdDSA; `tollgate check --online` and `tollgate explain --token`.

use crate::common;

use std::sync::Arc;

use serde_json::{json, Value};

use common::gateway::{start_full_with, upstreams_yaml};
use common::idp::{Idp, SigningKey, CLIENT_ID};
use common::messages::{anthropic_client, MessagesStub};
use common::pki::Pki;
use common::*;

const AUDIENCE: &str = "api://tollgate";
const MODEL: &str = "claude-sonnet-4-5";
const REFRESHED_OK: &str = "tollgate_oidc_refresh_total{result=\"ok\"}";
const REFRESHED_ERROR: &str = "tollgate_oidc_refresh_total{result=\"error\"}";

/// A proxy listener and a gateway listener; `auth.oidc` trusting the test CA; groups `grp-backend` and `eng-*` map
/// to teams, the region comes from a `region` claim, the e-mail domain `eu.corp.example` or the group `region-us`;
/// gateway requests go to `stub-eu` for region eu and to `stub` otherwise.
fn config(pki: &Pki, issuer: &str, stub: &MessagesStub, stub_eu: &MessagesStub) -> String {
    format!(
        "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n  - {{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}}\n\
         auth:\n  anonymous: deny\n  oidc:\n    issuer: \"{issuer}\"\n    audience: \"{AUDIENCE}\"\n    user_claim: email\n\
         \x20   teams: {{grp-backend: backend, \"eng-*\": engineering}}\n\
         \x20   region: {{claim: region, email_domains: {{eu.corp.example: eu}}, groups: {{region-us: us}}}}\n\
         teams: {{backend: {{}}, engineering: {{}}}}\n\
         upstream:\n  trust: {{system_roots: false, extra_ca: [\"{ca}\"]}}\n{upstreams}\
         routing:\n  - {{when: {{region: eu}}, to: stub-eu}}\n  - {{when: {{listener: gateway}}, to: stub}}\n{LOOPBACK_POLICY}",
        ca = pki.ca.pem.display(),
        upstreams = upstreams_yaml(&[("stub", stub, "sk-upstream"), ("stub-eu", stub_eu, "sk-upstream-eu")]),
    )
}

/// The parts of one test: the certificates, the provider, two Messages stubs and the gateway.
struct Setup {
    pki: Pki,
    idp: Idp,
    stub: MessagesStub,
    stub_eu: MessagesStub,
    gateway: TestGateway,
}

impl Setup {
    /// The provider publishes `keys` (none given: one ES256 key `es-1`).
    async fn start(keys: &[Arc<SigningKey>]) -> Setup {
        Setup::start_with(keys, Default::default()).await
    }

    /// Like `start`, with the gateway's `options` (its clock).
    async fn start_with(keys: &[Arc<SigningKey>], options: tollgate::app::Options) -> Setup {
        let pki = Pki::new();
        let keys = if keys.is_empty() { vec![SigningKey::es256("es-1")] } else { keys.to_vec() };
        let idp = Idp::start(&pki.server, AUDIENCE, &keys).await;
        let (stub, stub_eu) = (MessagesStub::start().await, MessagesStub::start().await);
        let gateway = start_full_with(&config(&pki, &idp.issuer, &stub, &stub_eu), options).await;
        Setup { pki, idp, stub, stub_eu, gateway }
    }

    /// A token for `email` in `groups`, signed with `key`, valid for ten minutes, with `extra` claims on top.
    fn token(&self, key: &SigningKey, email: &str, groups: &[&str], extra: Value) -> String {
        let mut claims = self.idp.claims(600, json!({"email": email, "groups": groups}));
        for (name, value) in extra.as_object().expect("an object") {
            claims[name] = value.clone();
        }
        key.sign(&claims)
    }

    async fn metric(&self, sample: &str) -> f64 {
        self.gateway.metric(sample).await
    }
}

/// `GET url` through the forward proxy with `Proxy-Authorization: Bearer TOKEN`.
fn proxied_get(url: &str, token: &str) -> String {
    format!("GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {token}\r\nConnection: close\r\n\r\n")
}

/// The message of a forward-proxy 407 for `token`, checked to be a refused bearer token.
async fn refused_by_proxy(setup: &Setup, origin: &Origin, token: &str) -> String {
    let response = exchange_until_closed(setup.gateway.proxy, proxied_get(&origin.url("/"), token).as_bytes()).await;
    assert_refused(&response, 407, "proxy_auth_required", None, "a refused token");
    let message = response.json()["error"]["message"].as_str().expect("a message").to_owned();
    assert!(message.starts_with("invalid bearer token: "), "{message}");
    message
}

/// The Python SDK's call to the gateway listener with `token` as its API key: `Authorization: Bearer`, or
/// `x-api-key` alone as `x_api_key` says.
async fn sdk_call(setup: &Setup, token: &str, x_api_key: bool) -> Value {
    let base_url = format!("http://{}", setup.gateway.listener("gateway"));
    let mut env = vec![("ANTHROPIC_BASE_URL", base_url.as_str()), ("ANTHROPIC_API_KEY", token)];
    if x_api_key {
        env.push(("TOLLGATE_CLIENT_AUTH", "x-api-key"));
    }
    anthropic_client("create", MODEL, &env).await
}

/// A valid token identifies its user through both doors: curl through the forward proxy, and the Python SDK on the
/// gateway listener with the token as `Authorization: Bearer` and as `x-api-key`. Groups map to teams (exact names
/// and patterns, in the token's group order); the region comes from the claim, the e-mail domain or the group, and
/// routes the request; the token reaches no upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_identifies_user_teams_and_region_through_both_doors() {
    let mut setup = Setup::start(&[]).await;
    let signer = setup_signer(&setup);
    let origin = Origin::start().await;

    let token = setup.token(&signer, "jane@corp.example", &["eng-platform", "unmapped", "grp-backend"], json!({}));
    let proxy = format!("http://{}", setup.gateway.proxy);
    let header = format!("Proxy-Authorization: Bearer {token}");
    let (code, body, stderr) = curl(&["-x", &proxy, "--proxy-header", &header, &origin.url("/curl")]).await;
    assert_eq!((code, body.as_str()), (0, "origin saw /curl"), "{stderr}");
    assert!(!origin.request_heads()[0].contains(&token), "the token went to the origin");
    // CONNECT, as Claude Code's proxyAuthHelper credential arrives: a tunnel to an HTTPS origin.
    let tls_origin = common::tls::TlsOrigin::start(&setup.pki.server, None).await;
    let url = format!("https://127.0.0.1:{}/tunnel", tls_origin.address.port());
    let ca = setup.pki.ca.pem.display().to_string();
    let (code, body, stderr) = curl(&["-x", &proxy, "--proxy-header", &header, "--cacert", &ca, &url]).await;
    assert_eq!((code, body.as_str()), (0, "tls origin saw /tunnel"), "{stderr}");

    // Region eu from the e-mail domain: routed to stub-eu.
    let eu = setup.token(&signer, "max@eu.corp.example", &["grp-backend"], json!({}));
    let answer = sdk_call(&setup, &eu, false).await;
    assert_eq!(answer["ok"], true, "{answer}");
    // Region us from the group, the token as x-api-key (an SDK given it as its API key): routed to stub.
    let us = setup.token(&signer, "sam@corp.example", &["region-us"], json!({}));
    let answer = sdk_call(&setup, &us, true).await;
    assert_eq!(answer["ok"], true, "{answer}");
    // The claim wins over the e-mail domain.
    let claimed = setup.token(&signer, "ann@eu.corp.example", &[], json!({"region": "ch"}));
    let answer = sdk_call(&setup, &claimed, false).await;
    assert_eq!(answer["ok"], true, "{answer}");

    assert_eq!(setup.stub_eu.requests().len(), 1, "region eu goes to stub-eu");
    assert_eq!(setup.stub.requests().len(), 2, "the others go to stub");
    for seen in setup.stub.requests().iter().chain(setup.stub_eu.requests().iter()) {
        for secret in [&eu, &us, &claimed] {
            common::gateway::assert_not_forwarded(seen, secret);
        }
    }

    assert_eq!(setup.idp.jwks_fetches(), 1, "the keys were fetched once for every request");
    assert_eq!(setup.metric(REFRESHED_OK).await, 1.0);
    // Shut down first: a tunnel's record is written once both of its halves have closed.
    let audit = setup.gateway.shutdown_and_audit().await;
    let record = audit.iter().find(|r| r["user"] == "jane@corp.example").expect("jane's record");
    let kinds: Vec<&str> =
        audit.iter().filter(|r| r["user"] == "jane@corp.example").filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["http", "connect"], "{audit:?}");
    assert_eq!(record["team"], "engineering", "{record}");
    let regions: Vec<(String, String, String)> = audit
        .iter()
        .filter(|r| r["kind"] == "gateway")
        .map(|r| (r["user"].to_string(), r["region"].to_string(), r["upstream"].to_string()))
        .collect();
    assert_eq!(
        regions,
        [
            ("\"max@eu.corp.example\"".into(), "\"eu\"".into(), "\"stub-eu\"".into()),
            ("\"sam@corp.example\"".into(), "\"us\"".into(), "\"stub\"".into()),
            ("\"ann@eu.corp.example\"".into(), "\"ch\"".into(), "\"stub\"".into()),
        ]
    );
}

/// The key the provider of `setup` signs with (the first it publishes).
fn setup_signer(setup: &Setup) -> Arc<SigningKey> {
    setup.idp.signing_keys().into_iter().next().expect("a published key")
}

/// The principal a token names ends at the token's `exp` (plus the leeway) by the gateway's clock, on a keep-alive
/// forward-proxy connection opened with it: requests pass until then, and the next one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_principal_ends_at_its_exp_on_a_keep_alive_connection() {
    use tokio::io::AsyncWriteExt;
    let clock = TestClock::at("2026-01-01T00:00:00Z");
    clock.set(std::time::SystemTime::now());
    let setup = Setup::start_with(&[], common::gateway::with_clock(clock.clone())).await;
    let signer = setup_signer(&setup);
    let origin = Origin::start().await;
    // Valid for 600 s, with the default leeway of 60 s.
    let token = setup.token(&signer, "kept@corp.example", &[], json!({}));
    let get = format!("GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {token}\r\n\r\n", origin.url("/kept"));
    let mut connection = tokio::net::TcpStream::connect(setup.gateway.proxy).await.expect("connect");
    for (step, status) in [(0, 200), (600, 200), (61, 407)] {
        clock.advance(std::time::Duration::from_secs(step));
        connection.write_all(get.as_bytes()).await.expect("write");
        let response = read_response(&mut connection).await;
        assert_eq!(response.status, status, "after {step} s more: {response:?}");
        if status == 407 {
            assert!(response.body.contains("the token has expired"), "{response:?}");
        }
    }
    assert_eq!(origin.request_heads().len(), 2);
}

/// Seconds since the epoch of `clock`'s time.
fn epoch_seconds(clock: &TestClock) -> u64 {
    clock.time().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Waits (bounded) until the gateway's `sample` reaches `value`: a background fetch has settled.
async fn wait_for_metric(setup: &Setup, sample: &str, value: f64) {
    let reached = async {
        while setup.metric(sample).await != value {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), reached)
        .await
        .unwrap_or_else(|_| panic!("{sample} did not reach {value}"));
}

/// Once `refresh` has passed by the gateway's clock, a request is served with the keys known and makes a fetch in
/// the background, which brings a key the provider published meanwhile. While the provider fails, each scheduled
/// attempt is counted but the outage is logged once; when it answers again, that is logged once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_again_on_schedule_and_an_outage_is_logged_once() {
    let logs = logs();
    let clock = TestClock::at("2026-01-01T00:00:00Z");
    clock.set(std::time::SystemTime::now());
    let setup = Setup::start_with(&[], common::gateway::with_clock(clock.clone())).await;
    let signer = setup_signer(&setup);
    let origin = Origin::start().await;
    let get = |key: &SigningKey, user: &str| {
        let token = setup.token(key, user, &[], json!({"exp": epoch_seconds(&clock) + 600}));
        let (proxy, url) = (setup.gateway.proxy, origin.url("/"));
        async move { exchange_until_closed(proxy, proxied_get(&url, &token).as_bytes()).await.status }
    };
    assert_eq!(get(&signer, "a@corp.example").await, 200);
    let published = SigningKey::ed25519("ed-2");
    setup.idp.add_key(published.clone());

    clock.advance(std::time::Duration::from_secs(3_600));
    assert_eq!(get(&signer, "b@corp.example").await, 200, "served with the known keys");
    wait_for_metric(&setup, REFRESHED_OK, 2.0).await;
    assert_eq!(get(&published, "c@corp.example").await, 200, "the scheduled fetch brought the new key");
    assert_eq!(setup.idp.jwks_fetches(), 2, "no fetch for a kid the schedule already brought");

    setup.idp.set_failing(true);
    for (step, failures) in [(3_600, 1.0), (31, 2.0)] {
        clock.advance(std::time::Duration::from_secs(step));
        assert_eq!(get(&signer, "d@corp.example").await, 200, "the provider fails: the cached keys serve");
        wait_for_metric(&setup, REFRESHED_ERROR, failures).await;
    }
    setup.idp.set_failing(false);
    clock.advance(std::time::Duration::from_secs(31));
    assert_eq!(get(&signer, "e@corp.example").await, 200);
    wait_for_metric(&setup, REFRESHED_OK, 3.0).await;

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let ours = |what: &str| text.lines().filter(|l| l.contains(what) && l.contains(&setup.idp.issuer)).count();
    assert_eq!(ours("identity provider unreachable"), 1, "two failed fetches, one outage logged");
    assert!(text.contains("HTTP status 503"), "the log names the cause");
    assert_eq!(ours("identity provider reachable again"), 1);
}

/// Expired, wrong-audience and wrong-issuer tokens are refused on both doors with the reason; nothing reaches an
/// upstream; each failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrong_audience_and_wrong_issuer_tokens_are_refused_with_the_reason() {
    let setup = Setup::start(&[]).await;
    let signer = setup_signer(&setup);
    let origin = Origin::start().await;
    let cases = [
        (setup.token(&signer, "a@corp.example", &[], json!({"exp": 1_000_000_000})), "the token has expired"),
        (setup.token(&signer, "a@corp.example", &[], json!({"aud": "another-app"})), "wrong audience (aud)"),
        (setup.token(&signer, "a@corp.example", &[], json!({"iss": "https://evil.example"})), "wrong issuer (iss)"),
        (setup.token(&signer, "a@corp.example", &[], json!({"email": null})), "missing or unusable claim \"email\""),
    ];
    for (token, reason) in &cases {
        let message = refused_by_proxy(&setup, &origin, token).await;
        assert!(message.contains(reason), "{message:?} should name {reason:?}");
        let answer = sdk_call(&setup, token, false).await;
        assert_eq!(answer["error"]["status"], 401, "{answer}");
        assert_eq!(answer["error"]["type"], "authentication_error", "{answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains(reason)), "{answer}");
    }
    assert_eq!(origin.connection_count(), 0);
    assert!(setup.stub.requests().is_empty() && setup.stub_eu.requests().is_empty());
    assert_eq!(setup.metric("tollgate_auth_failures_total{method=\"oidc\"}").await, 8.0);
}

/// A key rotation: the provider publishes a second key and signs with it. The first tokens with the new `kid` (a
/// concurrent burst) fetch the keys once and are admitted; later ones use the fetched set; tokens with the old key keep working
/// during the overlap. A made-up `kid` right after does not fetch again (at most one unknown-key fetch per 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_once_and_no_request_fails() {
    let setup = Setup::start(&[]).await;
    let old = setup_signer(&setup);
    let origin = Origin::start().await;
    let get = |token: String| {
        let (proxy, url) = (setup.gateway.proxy, origin.url("/"));
        async move { exchange_until_closed(proxy, proxied_get(&url, &token).as_bytes()).await }
    };
    // A burst of first requests waits for one fetch.
    let burst = |key: &Arc<SigningKey>| {
        let requests: Vec<_> = (0..8)
            .map(|n| tokio::spawn(get(setup.token(key, &format!("user{n}@corp.example"), &[], json!({})))))
            .collect();
        async move {
            for request in requests {
                assert_eq!(request.await.expect("the request task").status, 200);
            }
        }
    };
    burst(&old).await;
    assert_eq!((setup.idp.discovery_fetches(), setup.idp.jwks_fetches()), (1, 1));

    let new = SigningKey::ed25519("ed-2");
    setup.idp.add_key(new.clone());
    burst(&new).await;
    for user in ["b@corp.example", "c@corp.example"] {
        assert_eq!(get(setup.token(&new, user, &[], json!({}))).await.status, 200, "{user} with the new key");
    }
    assert_eq!(get(setup.token(&old, "d@corp.example", &[], json!({}))).await.status, 200, "the overlap");
    assert_eq!(setup.idp.jwks_fetches(), 2, "one fetch for the new kid");

    setup.idp.remove_key(&old.kid);
    let made_up = SigningKey::es256("made-up");
    let message = refused_by_proxy(&setup, &origin, &setup.token(&made_up, "e@corp.example", &[], json!({}))).await;
    assert!(message.contains("no configured key matches"), "{message}");
    assert_eq!(setup.idp.jwks_fetches(), 2, "an unknown kid fetches at most once per 30 s");
    assert_eq!((setup.metric(REFRESHED_OK).await, setup.metric(REFRESHED_ERROR).await), (2.0, 0.0));
}

/// The provider goes down after its keys were fetched: tokens signed with them still verify, the failed fetch (an
/// unknown kid tried one) is counted and logged, and readiness does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_keeps_the_cached_keys_and_counts_failures() {
    let logs = logs();
    let setup = Setup::start(&[]).await;
    let signer = setup_signer(&setup);
    let origin = Origin::start().await;
    let get = |token: String| {
        let (proxy, url) = (setup.gateway.proxy, origin.url("/"));
        async move { exchange_until_closed(proxy, proxied_get(&url, &token).as_bytes()).await }
    };
    assert_eq!(get(setup.token(&signer, "a@corp.example", &[], json!({}))).await.status, 200);
    assert_eq!(setup.metric(REFRESHED_OK).await, 1.0);

    setup.idp.stop().await;
    let rotated = SigningKey::es256("es-2");
    let message = refused_by_proxy(&setup, &origin, &setup.token(&rotated, "b@corp.example", &[], json!({}))).await;
    assert!(message.contains("no configured key matches"), "{message}");
    assert_eq!(setup.metric(REFRESHED_ERROR).await, 1.0, "the failed fetch is counted");
    for user in ["c@corp.example", "d@corp.example"] {
        assert_eq!(get(setup.token(&signer, user, &[], json!({}))).await.status, 200, "{user}: the cached key");
    }
    let answer = sdk_call(&setup, &setup.token(&signer, "e@corp.example", &[], json!({})), false).await;
    assert_eq!(answer["ok"], true, "{answer}");

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let outage = text.lines().filter(|l| l.contains("identity provider unreachable") && l.contains(&setup.idp.issuer));
    assert_eq!(outage.count(), 1, "the outage is logged once");
    let ready = admin(&setup.gateway, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "an IdP outage does not take the gateway out of service: {ready:?}");
}

/// With no key ever fetched and the provider unreachable, a token is refused with a reason that says so, on both
/// doors; the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_with_no_keys_known_refuses_with_a_clear_error() {
    let setup = Setup::start(&[]).await;
    let metrics = setup.gateway.metrics().await;
    for result in ["ok", "error"] {
        let sample = format!("tollgate_oidc_refresh_total{{result=\"{result}\"}} 0");
        assert!(metrics.lines().any(|line| line == sample), "{sample} is exported from the start:\n{metrics}");
    }
    let signer = setup_signer(&setup);
    setup.idp.stop().await;
    let origin = Origin::start().await;
    let token = setup.token(&signer, "a@corp.example", &[], json!({}));
    let message = refused_by_proxy(&setup, &origin, &token).await;
    assert!(message.contains("signing keys are unavailable"), "{message}");
    assert!(message.contains("connect"), "the cause is named: {message}");
    let answer = sdk_call(&setup, &token, false).await;
    assert_eq!(
        (answer["error"]["status"].as_u64(), answer["error"]["type"].as_str()),
        (Some(401), Some("authentication_error")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"].as_str().is_some_and(|m| m.contains("signing keys are unavailable")),
        "{answer}"
    );
    // The second refusal did not try again within 30 s: one failed fetch.
    assert_eq!(setup.metric(REFRESHED_ERROR).await, 1.0);
    assert_eq!(setup.metric(REFRESHED_OK).await, 0.0);
}

/// A discovery document that names another issuer is not trusted: no keys, tokens refused with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_naming_another_issuer_is_refused() {
    let setup = Setup::start(&[]).await;
    let signer = setup_signer(&setup);
    setup.idp.name_issuer("https://login.evil.example");
    let origin = Origin::start().await;
    let message = refused_by_proxy(&setup, &origin, &setup.token(&signer, "a@corp.example", &[], json!({}))).await;
    assert!(message.contains("signing keys are unavailable"), "{message}");
    assert!(message.contains("names issuer") && message.contains("login.evil.example"), "{message}");
    assert_eq!(setup.idp.jwks_fetches(), 0, "the keys of an untrusted document are not fetched");
}

/// RS256, ES256 and EdDSA keys each verify their tokens; a token whose `alg` is not its key's is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_eddsa_tokens_each_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = [SigningKey::rs256("rs-1", dir.path()), SigningKey::es256("es-1"), SigningKey::ed25519("ed-1")];
    let setup = Setup::start(&keys).await;
    let origin = Origin::start().await;
    for key in &keys {
        let token = setup.token(key, &format!("{}@corp.example", key.kid), &["grp-backend"], json!({}));
        let response =
            exchange_until_closed(setup.gateway.proxy, proxied_get(&origin.url("/"), &token).as_bytes()).await;
        assert_eq!(response.status, 200, "{}: {response:?}", key.kid);
    }
    // The RSA key's kid on an ES256 signature.
    let confused = SigningKey::es256("rs-1");
    let message = refused_by_proxy(&setup, &origin, &setup.token(&confused, "x@corp.example", &[], json!({}))).await;
    assert!(message.contains("algorithm refused"), "{message}");
    let audit = setup.gateway.audit().await;
    for key in &keys {
        let user = format!("{}@corp.example", key.kid);
        let record = audit.iter().find(|r| r["user"] == user.as_str()).unwrap_or_else(|| panic!("{user}: {audit:?}"));
        assert_eq!((record["decision"].as_str(), record["team"].as_str()), (Some("allow"), Some("backend")));
    }
    assert_eq!(setup.idp.jwks_fetches(), 1);
}

/// `tollgate check --online` fetches discovery and the keys and lists them; `tollgate explain --token` prints the
/// user, teams and region of a token, and the reason a token is refused (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_and_explain_token() {
    let setup = Setup::start(&[]).await;
    let signer = setup_signer(&setup);
    let path = setup.gateway.dir.path().join("oidc.yaml");
    std::fs::write(&path, config(&setup.pki, &setup.idp.issuer, &setup.stub, &setup.stub_eu)).expect("config");

    let check = |online: bool| {
        let path = path.clone();
        async move {
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
            command.arg("check").arg("-c").arg(&path).env_remove("TOLLGATE_CONFIG");
            if online {
                command.arg("--online");
            }
            let output = command.output().await.expect("run tollgate check");
            (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
        }
    };
    let (code, stdout) = check(false).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains(&format!("oidc: issuer {}, audience {AUDIENCE}", setup.idp.issuer)), "{stdout}");
    assert_eq!(setup.idp.discovery_fetches(), 0, "check without --online stays offline");
    let (code, stdout) = check(true).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains(&format!("oidc discovery: ok, jwks_uri {}/jwks", setup.idp.issuer)), "{stdout}");
    assert!(stdout.contains("oidc keys: es-1 (ES256)"), "{stdout}");
    assert!(stdout.contains(&format!("oidc device authorization: {}/device", setup.idp.issuer)), "{stdout}");

    let token = setup.token(&signer, "max@eu.corp.example", &["eng-data", "grp-backend"], json!({}));
    let explained = common::binary::explain(&path, &["--token", &token]).await;
    assert_eq!(explained.code, 0, "{explained:?}");
    for line in ["user:      max@eu.corp.example", "teams:     engineering, backend", "region:    eu (from the token)"]
    {
        assert!(explained.stdout.contains(line), "{line:?} in {explained:?}");
    }
    let expired = setup.token(&signer, "max@eu.corp.example", &[], json!({"exp": 1_000_000_000}));
    let explained = common::binary::explain(&path, &["--token", &expired]).await;
    assert_eq!(explained.code, 1, "{explained:?}");
    assert!(
        explained.stdout.contains("token:     refused") && explained.stdout.contains("the token has expired"),
        "{explained:?}"
    );
    assert!(!explained.stdout.contains(&expired) && !explained.stderr.contains(&expired), "the token is not echoed");

    // With a target: the request is explained for the token's user and teams (LOOPBACK_POLICY allows 127.0.0.1).
    let explained = common::binary::explain(&path, &["--token", &token, "127.0.0.1:9"]).await;
    assert_eq!(explained.code, 0, "{explained:?}");
    assert!(explained.stdout.contains("principal: max@eu.corp.example (teams: engineering, backend)"), "{explained:?}");

    setup.idp.stop().await;
    let (code, stdout) = check(true).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("oidc discovery: failed: discovery"), "{stdout}");
}

/// A config loaded again (a reload) with the same issuer keeps the keys the previous one fetched: with the provider
/// down, its tokens still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_keys_of_its_issuer() {
    let pki = Pki::new();
    let idp = Idp::start(&pki.server, AUDIENCE, &[SigningKey::es256("es-1")]).await;
    let (stub, stub_eu) = (MessagesStub::start().await, MessagesStub::start().await);
    let text = config(&pki, &idp.issuer, &stub, &stub_eu);
    let load =
        || tollgate::config::Config::from_text(&text, std::path::Path::new("test.yaml"), &|_| None).expect("loads");
    let signer = idp.signing_keys().remove(0);
    let token = signer.sign(&idp.claims(600, json!({"email": "a@corp.example", "groups": ["grp-backend"]})));
    let now = std::time::SystemTime::now();
    let before = load();
    let principal = before.identity.bearer_principal(&token, now).await.expect("verifies");
    assert_eq!(
        (&*principal.name, principal.team(), principal.method.label()),
        ("a@corp.example", Some("backend"), "oidc")
    );

    idp.stop().await;
    let after = load();
    assert!(after.identity.bearer_principal(&token, now).await.is_ok(), "the reloaded config knows the keys");
    assert_eq!(after.identity.oidc().expect("auth.oidc").refresh_counts().error, 0, "and did not fetch them");
}

/// The provider's device authorization grant (RFC 8628) and refresh tokens, driven with curl as a login command
/// would: the access token it issues, and the one a refresh issues, are admitted by the gateway; a used refresh
/// token is not good again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_device_grant_and_a_refresh_are_admitted() {
    let setup = Setup::start(&[]).await;
    let ca = setup.pki.ca.pem.display().to_string();
    let post = |path: &str, form: Vec<String>| {
        let (url, ca) = (format!("{}{path}", setup.idp.issuer), ca.clone());
        async move {
            let mut args: Vec<String> = vec!["--cacert".into(), ca, url];
            for field in form {
                args.extend(["--data-urlencode".to_owned(), field]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, body, stderr) = curl(&args).await;
            assert_eq!(code, 0, "{stderr}");
            serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
        }
    };
    let client = format!("client_id={CLIENT_ID}");
    let device = post("/device", vec![client.clone(), "scope=openid email".into()]).await;
    let device_code = format!("device_code={}", device["device_code"].as_str().expect("a device code"));
    let grant = "grant_type=urn:ietf:params:oauth:grant-type:device_code".to_owned();
    let pending = post("/token", vec![client.clone(), grant.clone(), device_code.clone()]).await;
    assert_eq!(pending["error"], "authorization_pending", "{pending}");

    let user = json!({"email": "dev@corp.example", "groups": ["grp-backend"]});
    setup.idp.decide(device["user_code"].as_str().expect("a user code"), Some(user));
    let tokens = post("/token", vec![client.clone(), grant, device_code]).await;
    let refresh = format!("refresh_token={}", tokens["refresh_token"].as_str().expect("a refresh token"));
    let refreshed = post("/token", vec![client.clone(), "grant_type=refresh_token".into(), refresh.clone()]).await;
    let reused = post("/token", vec![client, "grant_type=refresh_token".into(), refresh]).await;
    assert_eq!(reused["error"], "invalid_grant", "a refresh token is good once: {reused}");

    for tokens in [&tokens, &refreshed] {
        let answer = sdk_call(&setup, tokens["access_token"].as_str().expect("an access token"), false).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let audit = setup.gateway.audit().await;
    let users: Vec<(&str, &str)> = audit
        .iter()
        .filter(|r| r["kind"] == "gateway")
        .map(|r| (r["user"].as_str().unwrap_or_default(), r["team"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(users, [("dev@corp.example", "backend"), ("dev@corp.example", "backend")]);
}

/// `auth.jwt` keeps working beside `auth.oidc`: a token is verified by the source its `iss` names, each mapping its
/// groups its own way; a token whose issuer is neither is refused by `auth.jwt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_jwt_and_auth_oidc_verify_side_by_side() {
    let pki = Pki::new();
    let idp = Idp::start(&pki.server, AUDIENCE, &[SigningKey::es256("es-1")]).await;
    let (stub, stub_eu) = (MessagesStub::start().await, MessagesStub::start().await);
    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let jwt = format!(
        "auth:\n  jwt: {{issuer: \"https://static.test\", audience: tollgate, hs256_secret: \"{secret}\", user_claim: email}}\n  group_teams: {{static-backend: backend}}\n"
    );
    let text = config(&pki, &idp.issuer, &stub, &stub_eu).replace("auth:\n", &jwt);
    let config =
        tollgate::config::Config::from_text(&text, std::path::Path::new("test.yaml"), &|_| None).expect("loads");
    let now = std::time::SystemTime::now();

    let oidc_token =
        idp.signing_keys()[0].sign(&idp.claims(600, json!({"email": "o@corp.example", "groups": ["grp-backend"]})));
    let principal = config.identity.bearer_principal(&oidc_token, now).await.expect("the OIDC token verifies");
    assert_eq!(
        (&*principal.name, principal.team(), principal.method.label()),
        ("o@corp.example", Some("backend"), "oidc")
    );

    let static_claims = common::idp::claims(
        "https://static.test",
        "tollgate",
        600,
        json!({"email": "s@corp.example", "groups": ["static-backend", "grp-backend"]}),
    );
    let hs256 = |claims: &Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    let principal =
        config.identity.bearer_principal(&hs256(&static_claims), now).await.expect("the static token verifies");
    let teams: Vec<&str> = principal.teams.iter().map(|t| &**t).collect();
    assert_eq!(
        (&*principal.name, teams, principal.method.label()),
        ("s@corp.example", vec!["backend"], "jwt"),
        "group_teams, not auth.oidc.teams"
    );

    let elsewhere = common::idp::claims("https://elsewhere.test", "tollgate", 600, json!({"email": "x@corp.example"}));
    let refused = config.identity.bearer_principal(&hs256(&elsewhere), now).await.expect_err("an unknown issuer");
    assert_eq!(refused.to_string(), "invalid bearer token: wrong issuer (iss)");
    assert_eq!(refused.method(), "jwt");
}
