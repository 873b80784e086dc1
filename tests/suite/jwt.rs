//! Bearer JWT identity on the forward proxy: RS256 and ES256 tokens against a JWKS file and HS256 against a secret
//! identify the user and map groups to teams; every kind of bad token gets a 407 that names what failed; the token
//! never reaches the audit file, the logs or an upstream; the JWKS file is read with each config load.
//!
//! Keys are made per run (RSA with `openssl genpkey`, P-256 with rcgen) and tokens are signed with the
//! `jsonwebtoken` crate, an implementation independent of tollgate's verifier.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use common::*;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "tollgate";
const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// Keys for one test: an RSA and a P-256 key pair, the RSA public key as PEM, and the JWKS file naming both.
struct Keys {
    dir: tempfile::TempDir,
    rsa: EncodingKey,
    rsa_public_pem: Vec<u8>,
    ec: EncodingKey,
    jwks: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let output = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// A fresh 2048-bit RSA key: its PKCS#8 PEM, its public PEM and its modulus.
fn rsa_key(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", name], dir);
    let private = std::fs::read(dir.join(name)).expect("key file");
    let public = openssl(&["pkey", "-in", name, "-pubout"], dir);
    let modulus = String::from_utf8(openssl(&["rsa", "-in", name, "-noout", "-modulus"], dir)).expect("text");
    let modulus = hex::decode(modulus.trim().strip_prefix("Modulus=").expect("Modulus=")).expect("hex modulus");
    (private, public, modulus)
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rsa_private, rsa_public_pem, modulus) = rsa_key(dir.path(), "rsa.pem");
        let ec = rcgen::KeyPair::generate().expect("P-256 key");
        let point = ec.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": b64(&modulus), "e": "AQAB"},
            {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])},
        ]});
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).expect("write JWKS");
        Self {
            rsa: EncodingKey::from_rsa_pem(&rsa_private).expect("RSA key"),
            rsa_public_pem,
            ec: EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("EC key"),
            jwks: path,
            dir,
        }
    }

    fn rs256(&self, claims: &Value) -> String {
        sign(Algorithm::RS256, Some("rsa-1"), claims, &self.rsa)
    }

    fn es256(&self, claims: &Value) -> String {
        sign(Algorithm::ES256, Some("ec-1"), claims, &self.ec)
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("sign")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Valid claims for `user` in groups `grp-data` and `grp-backend` (and one no team is mapped from).
fn claims(user: &str) -> Value {
    json!({"iss": ISSUER, "aud": [AUDIENCE, "other"], "exp": now() + 600, "iat": now(), "email": user,
           "groups": ["grp-unmapped", "grp-data", "grp-backend"]})
}

/// `claims(user)` with some claims replaced (a null value removes the claim).
fn claims_with(user: &str, changes: Value) -> Value {
    let mut claims = claims(user);
    for (name, value) in changes.as_object().expect("object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// A gateway that verifies tokens with `key` (`jwks_file: …` or `hs256_secret: …`).
fn config(key: &str) -> String {
    format!(
        "auth:\n  anonymous: deny\n  jwt: {{issuer: \"{ISSUER}\", audience: {AUDIENCE}, {key}, user_claim: email}}\n  group_teams: {{grp-backend: backend, grp-data: data}}\nteams:\n  backend: {{}}\n  data: {{}}\n{LOOPBACK_POLICY}"
    )
}

fn jwks_config(keys: &Keys) -> String {
    config(&format!("jwks_file: \"{}\"", keys.jwks.display()))
}

fn get(url: &str, authorization: &str) -> String {
    format!("GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {authorization}\r\nConnection: close\r\n\r\n")
}

fn record_of<'a>(audit: &'a [Value], user: &str) -> &'a Value {
    audit.iter().find(|r| r["user"] == user).unwrap_or_else(|| panic!("no audit record for {user}: {audit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_identify_user_and_team() {
    let keys = Keys::new();
    let origin = Origin::start().await;
    let echo = Echo::start().await;
    let mut gateway = TestGateway::start(&jwks_config(&keys)).await;

    let rs = keys.rs256(&claims("rs.user"));
    let response =
        exchange_until_closed(gateway.proxy, get(&origin.url("/rs"), &format!("Bearer {rs}")).as_bytes()).await;
    assert_eq!(response.status, 200, "RS256: {response:?}");
    assert_eq!(response.body, "origin saw /rs");

    // CONNECT, the way Claude Code uses the proxy; the scheme is case-insensitive.
    let es = keys.es256(&claims("es.user"));
    let authorization = format!("Proxy-Authorization: bEaReR {es}");
    let request = connect_request(&echo.address.to_string(), &[&authorization]);
    let (mut tunnel, response) = exchange_keep(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "ES256 CONNECT: {response:?}");
    tunnel.write_all(b"ping").await.expect("write through the tunnel");
    assert_eq!(read_exact_bytes(&mut tunnel, 4).await, b"ping");
    drop(tunnel);

    // Expired 30 seconds ago, within the default leeway of 60 seconds.
    let late = keys.rs256(&claims_with("late.user", json!({"exp": now() - 30, "nbf": now() + 30})));
    let response =
        exchange_until_closed(gateway.proxy, get(&origin.url("/late"), &format!("Bearer {late}")).as_bytes()).await;
    assert_eq!(response.status, 200, "within leeway: {response:?}");

    let audit = gateway.shutdown_and_audit().await;
    for (user, kind) in [("rs.user", "http"), ("es.user", "connect"), ("late.user", "http")] {
        let record = record_of(&audit, user);
        assert_eq!(record["kind"], kind, "{record}");
        assert_eq!(record["decision"], "allow", "{record}");
        // The first group that maps to a team: grp-unmapped is ignored, grp-data comes before grp-backend.
        assert_eq!(record["team"], "data", "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_identify_user_and_team() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&config(&format!("hs256_secret: \"{SECRET}\""))).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(Algorithm::HS256, None, &claims_with("hs.user", json!({"groups": ["grp-backend"]})), &key);
    let response =
        exchange_until_closed(gateway.proxy, get(&origin.url("/hs"), &format!("Bearer {token}")).as_bytes()).await;
    assert_eq!(response.status, 200, "HS256: {response:?}");

    let wrong = sign(Algorithm::HS256, None, &claims("wrong.user"), &EncodingKey::from_secret(b"not the secret"));
    let response =
        exchange_until_closed(gateway.proxy, get(&origin.url("/hs"), &format!("Bearer {wrong}")).as_bytes()).await;
    assert_eq!(response.status, 407, "{response:?}");
    assert!(response.json()["error"]["message"].as_str().unwrap().contains("bad signature"), "{response:?}");

    let audit = gateway.audit().await;
    let record = record_of(&audit, "hs.user");
    assert_eq!((&record["team"], &record["status"]), (&json!("backend"), &json!(200)), "{record}");
    assert_eq!(audit.iter().filter(|r| r["status"] == 407).count(), 1, "{audit:?}");
}

/// The refused tokens, each with the words its 407 message must contain.
fn bad_tokens(keys: &Keys) -> Vec<(String, &'static str, &'static str)> {
    let user = "bad.user";
    let good = keys.rs256(&claims(user));
    let (other_private, _, _) = rsa_key(keys.dir.path(), "other.pem");
    let other = EncodingKey::from_rsa_pem(&other_private).expect("RSA key");
    let (signed, _) = good.rsplit_once('.').unwrap();
    let (header, _) = good.split_once('.').unwrap();
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims(user).to_string().as_bytes());
    let public_der = {
        let text = String::from_utf8(keys.rsa_public_pem.clone()).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    };
    let hs = |secret: &[u8], kid| sign(Algorithm::HS256, kid, &claims(user), &EncodingKey::from_secret(secret));
    vec![
        (sign(Algorithm::RS256, Some("rsa-1"), &claims(user), &other), "bad signature", "signed by another key"),
        (format!("{signed}.{}", b64(&[7u8; 256])), "bad signature", "signature replaced"),
        (
            format!(
                "{header}.{}.{}",
                b64(claims_with("root", json!({})).to_string().as_bytes()),
                good.rsplit_once('.').unwrap().1
            ),
            "bad signature",
            "payload swapped",
        ),
        (format!("{none_header}.{payload}."), "alg none", "alg none, empty signature"),
        (
            format!("{none_header}.{payload}.{}", good.rsplit_once('.').unwrap().1),
            "alg none",
            "alg none, old signature",
        ),
        (hs(&keys.rsa_public_pem, Some("rsa-1")), "algorithm", "HS256 keyed with the RSA public key PEM"),
        (hs(&public_der, Some("rsa-1")), "algorithm", "HS256 keyed with the RSA public key DER"),
        (sign(Algorithm::ES256, Some("rsa-1"), &claims(user), &keys.ec), "algorithm", "ES256 naming the RSA key"),
        (keys.rs256(&claims_with(user, json!({"exp": now() - 120}))), "expired", "expired beyond the leeway"),
        (keys.rs256(&claims_with(user, json!({"exp": null}))), "\"exp\"", "no exp"),
        (keys.es256(&claims_with(user, json!({"nbf": now() + 600}))), "not valid yet", "nbf in the future"),
        (keys.rs256(&claims_with(user, json!({"iss": "https://evil.test"}))), "issuer", "wrong iss"),
        (keys.rs256(&claims_with(user, json!({"aud": "someone-else"}))), "audience", "wrong aud"),
        (keys.rs256(&claims_with(user, json!({"aud": ["a", "b"]}))), "audience", "aud array without us"),
        (keys.rs256(&claims_with(user, json!({"email": null}))), "\"email\"", "no user claim"),
        (keys.rs256(&claims_with(user, json!({"email": ""}))), "\"email\"", "empty user claim"),
        (sign(Algorithm::RS256, Some("rsa-2"), &claims(user), &keys.rsa), "key id", "unknown kid"),
        (sign(Algorithm::RS256, None, &claims(user), &keys.rsa), "key id", "no kid with two keys"),
        ("not-a-jwt".to_owned(), "malformed", "garbage"),
        ("a.b.c".to_owned(), "malformed", "three garbage parts"),
        ("e30.e30.e30".to_owned(), "malformed", "empty objects"),
        (format!("{good}.{good}"), "malformed", "too many parts"),
        (String::new(), "malformed", "no token"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_407_naming_the_failure() {
    let keys = Keys::new();
    let tripwire = Tripwire::new();
    let gateway = TestGateway::start(&jwks_config(&keys)).await;
    let url = format!("http://{}/secret", tripwire.address);
    for (token, reason, context) in bad_tokens(&keys) {
        let authorization = format!("Bearer {token}");
        for request in [get(&url, &authorization), {
            let header = format!("Proxy-Authorization: {authorization}");
            connect_request(&tripwire.address.to_string(), &[&header, "Connection: close"])
        }] {
            let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
            assert_refused(&response, 407, "proxy_auth_required", None, context);
            assert!(response.header("proxy-authenticate").is_some(), "{context}: {response:?}");
            let message = response.json()["error"]["message"].as_str().expect("message").to_owned();
            assert!(message.starts_with("invalid bearer token: "), "{context}: {message}");
            assert!(message.contains(reason), "{context}: {message:?} should name {reason:?}");
        }
    }
    tripwire.assert_untouched();
    let audit = gateway.audit().await;
    assert!(!audit.is_empty() && audit.iter().all(|r| r["status"] == 407 && r["decision"] == "deny"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_audit_file_the_logs_or_the_upstream() {
    let logs = logs();
    let keys = Keys::new();
    let origin = Origin::start().await;
    let mut gateway = TestGateway::start(&jwks_config(&keys)).await;
    let mut tokens = vec![keys.rs256(&claims("ok.rs")), keys.es256(&claims("ok.es"))];
    tokens.extend(bad_tokens(&keys).into_iter().map(|(token, _, _)| token).filter(|t| t.len() > 20));
    for token in &tokens {
        exchange_until_closed(gateway.proxy, get(&origin.url("/t"), &format!("Bearer {token}")).as_bytes()).await;
    }
    let audit_path = gateway.audit_path();
    let audit = gateway.shutdown_and_audit().await;
    assert_eq!(audit.iter().filter(|r| r["status"] == 200).count(), 2, "{audit:?}");
    let audit_text = std::fs::read_to_string(audit_path).expect("audit file");
    let log_text = String::from_utf8(logs.lock().unwrap().clone()).expect("UTF-8 logs");
    assert!(log_text.contains("invalid bearer token"), "the capture should see the refusals: {log_text}");
    let upstream = origin.request_heads().join("\n");
    assert_eq!(origin.request_heads().len(), 2);
    for token in &tokens {
        // The whole token, and its signature on its own (the part no two tokens share).
        let signature = token.rsplit_once('.').map(|(_, s)| s).filter(|s| s.len() > 20).unwrap_or(token);
        for (place, text) in [("audit file", &audit_text), ("logs", &log_text), ("upstream request", &upstream)] {
            assert!(!text.contains(token.as_str()) && !text.contains(signature), "a token reached the {place}");
        }
    }
    assert!(!upstream.to_ascii_lowercase().contains("proxy-authorization"), "{upstream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_without_auth_jwt_is_an_unsupported_scheme() {
    let keys = Keys::new();
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&format!("auth:\n  anonymous: deny\n{LOOPBACK_POLICY}")).await;
    let token = keys.rs256(&claims("bearer.user"));
    let response =
        exchange_until_closed(gateway.proxy, get(&origin.url("/"), &format!("Bearer {token}")).as_bytes()).await;
    assert_refused(&response, 407, "proxy_auth_required", None, "no auth.jwt");
    assert!(response.json()["error"]["message"].as_str().unwrap().contains("unsupported"), "{response:?}");
    assert_eq!(origin.request_heads().len(), 0);
}

#[tokio::test]
async fn the_jwks_file_is_read_with_each_config_load() {
    let keys = Keys::new();
    let yaml = format!("listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\n{}", jwks_config(&keys));
    let load = || tollgate::config::Config::from_text(&yaml, Path::new("test.yaml"), &|_| None).expect("config loads");
    let token = keys.rs256(&claims("rs.user"));
    let before = load();
    let principal = before.identity.bearer_principal(&token, SystemTime::now()).await.expect("valid token");
    assert_eq!((&*principal.name, principal.team(), principal.method.label()), ("rs.user", Some("data"), "jwt"));

    // The IdP rotates its RSA key: the next load verifies with the new key only; the loaded snapshot keeps the old.
    let (rotated_private, _, modulus) = rsa_key(keys.dir.path(), "rotated.pem");
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "rsa-2", "n": b64(&modulus), "e": "AQAB"}]});
    std::fs::write(&keys.jwks, jwks.to_string()).expect("rewrite JWKS");
    let after = load();
    let rotated = sign(
        Algorithm::RS256,
        Some("rsa-2"),
        &claims("rotated.user"),
        &EncodingKey::from_rsa_pem(&rotated_private).unwrap(),
    );
    assert!(after.identity.bearer_principal(&rotated, SystemTime::now()).await.is_ok());
    assert!(after.identity.bearer_principal(&token, SystemTime::now()).await.is_err(), "the old key is gone");
    assert!(
        before.identity.bearer_principal(&token, SystemTime::now()).await.is_ok(),
        "a loaded snapshot does not change"
    );
    assert!(before.identity.bearer_principal(&rotated, SystemTime::now()).await.is_err());
    // Time is the caller's: the same token is expired an hour from now.
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert!(after.identity.bearer_principal(&rotated, later).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tokens_count_toward_the_failed_auth_limit() {
    let keys = Keys::new();
    let origin = Origin::start().await;
    let minute = || now() / 60;
    let yaml = jwks_config(&keys).replace("auth:\n", "auth:\n  failed_auth_limit: {per_minute: 2}\n");
    let good = keys.rs256(&claims("rs.user"));
    let forged = format!("{}.{}", good.rsplit_once('.').unwrap().0, b64(&[7u8; 256]));
    // The limit counts per wall-clock minute: a run that straddles a minute boundary is repeated once.
    for attempt in 0..2 {
        let started = minute();
        let gateway = TestGateway::start(&yaml).await;
        let mut statuses = Vec::new();
        for token in [&forged, &forged, &forged, &good] {
            let request = get(&origin.url("/"), &format!("Bearer {token}"));
            statuses.push(exchange_until_closed(gateway.proxy, request.as_bytes()).await.status);
        }
        if minute() != started && attempt == 0 {
            continue;
        }
        assert_eq!(statuses, [407, 407, 429, 429], "a valid token too waits out the throttle");
        assert_eq!(origin.request_heads().len(), 0);
        return;
    }
}
