//! An OpenID Connect identity provider for tests, over HTTPS with the test CA on 127.0.0.1:0, speaking the real
//! protocols: discovery (`/.well-known/openid-configuration`), the JWKS (`/jwks`) with keys added and removed as a
//! rotation does, the device authorization grant (RFC 8628: `/device`, then `/token` with the device code) and
//! refresh tokens (`/token` with `grant_type=refresh_token`).
//!
//! Tokens are signed with the `jsonwebtoken` crate (RS256, ES256, EdDSA), an implementation independent of
//! tollgate's verifier. The provider counts the discovery and key fetches it answers, and can be stopped (its port
//! then refuses connections) to play an outage.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::pki::Leaf;
use super::tls::server_config;

/// The client ID the device and token endpoints accept.
pub const CLIENT_ID: &str = "tollgate-cli";
/// How long tokens from the token endpoint live, in seconds.
pub const TOKEN_LIFETIME: u64 = 600;

/// One signing key: its private half for signing, its public half as a JWK.
pub struct SigningKey {
    pub kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// A fresh 2048-bit RSA key (RS256), made with `openssl genpkey` in `dir`.
    pub fn rs256(kid: &str, dir: &Path) -> Arc<SigningKey> {
        let file = format!("{kid}.pem");
        openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &file], dir);
        let private = std::fs::read(dir.join(&file)).expect("RSA key file");
        let modulus = String::from_utf8(openssl(&["rsa", "-in", &file, "-noout", "-modulus"], dir)).expect("text");
        let modulus = hex::decode(modulus.trim().strip_prefix("Modulus=").expect("Modulus=")).expect("hex modulus");
        Arc::new(SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&private).expect("RSA key"),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&modulus), "e": "AQAB"}),
        })
    }

    /// A fresh P-256 key (ES256).
    pub fn es256(kid: &str) -> Arc<SigningKey> {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let point = pair.public_key_raw();
        Arc::new(SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                        "x": b64(&point[1..33]), "y": b64(&point[33..])}),
        })
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> Arc<SigningKey> {
        use ring::signature::KeyPair;
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
        Arc::new(SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "kid": kid, "use": "sig", "alg": "EdDSA", "crv": "Ed25519",
                        "x": b64(pair.public_key().as_ref())}),
        })
    }

    /// `claims` signed with this key, its `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

/// A running identity provider.
pub struct Idp {
    /// `https://127.0.0.1:PORT`, the `iss` of its tokens.
    pub issuer: String,
    /// The `aud` of the tokens its token endpoint issues.
    pub audience: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

struct State {
    issuer: String,
    audience: String,
    inner: Mutex<Inner>,
    discovery_fetches: AtomicUsize,
    jwks_fetches: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// Served in the JWKS, in order; the last one signs what the token endpoint issues.
    keys: Vec<Arc<SigningKey>>,
    /// The `issuer` discovery names, when it is not the real one (a misconfigured or spoofed provider).
    named_issuer: Option<String>,
    /// Discovery and the JWKS answer 503 (an outage that can end).
    failing: bool,
    /// Pending device authorizations by device code.
    devices: HashMap<String, Device>,
    /// Refresh tokens → the claims of the user they were issued to.
    refresh_tokens: HashMap<String, Value>,
    issued: u64,
    /// Device-code polls still to answer `slow_down` (RFC 8628 §3.5), whatever the user decided.
    slow_downs: u32,
    /// Device-code polls answered.
    device_polls: u64,
}

struct Device {
    user_code: String,
    /// The user's claims once they approved at the verification URI; `Err` when they denied.
    approval: Option<Result<Value, ()>>,
}

impl Idp {
    /// Serves on 127.0.0.1:0 with the TLS certificate `leaf` (for `127.0.0.1`), publishing `keys`.
    pub async fn start(leaf: &Leaf, audience: &str, keys: &[Arc<SigningKey>]) -> Idp {
        let config = server_config(leaf.chain(), leaf.private_key(), None).expect("IdP TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind IdP");
        let address = listener.local_addr().expect("IdP address");
        let issuer = format!("https://127.0.0.1:{}", address.port());
        let state = Arc::new(State {
            issuer: issuer.clone(),
            audience: audience.to_owned(),
            inner: Mutex::new(Inner { keys: keys.to_vec(), ..Inner::default() }),
            discovery_fetches: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
        });
        let serving = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |request| answer(request, state.clone()));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        Idp { issuer, audience: audience.to_owned(), state, server }
    }

    /// Stops answering: the listener closes, so connections are refused (an outage). Not undone.
    pub async fn stop(&self) {
        self.server.abort();
        while !self.server.is_finished() {
            tokio::task::yield_now().await;
        }
    }

    /// Publishes `key` too (the overlap of a rotation); the token endpoint signs with it from now on.
    pub fn add_key(&self, key: Arc<SigningKey>) {
        self.state.inner.lock().unwrap().keys.push(key);
    }

    /// The keys published now, in order.
    pub fn signing_keys(&self) -> Vec<Arc<SigningKey>> {
        self.state.inner.lock().unwrap().keys.clone()
    }

    /// Stops publishing the key `kid` (the end of a rotation).
    pub fn remove_key(&self, kid: &str) {
        self.state.inner.lock().unwrap().keys.retain(|key| key.kid != kid);
    }

    /// Discovery and the JWKS answer 503 while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.state.inner.lock().unwrap().failing = failing;
    }

    /// Makes discovery name `issuer` instead of the real one.
    pub fn name_issuer(&self, issuer: &str) {
        self.state.inner.lock().unwrap().named_issuer = Some(issuer.to_owned());
    }

    /// Discovery documents served.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// JWKS documents served.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The user behind `user_code` signs in at the verification URI and approves (with `claims`), or denies.
    pub fn decide(&self, user_code: &str, claims: Option<Value>) {
        let mut inner = self.state.inner.lock().unwrap();
        let device = inner.devices.values_mut().find(|d| d.user_code == user_code).expect("a pending user code");
        device.approval = Some(claims.ok_or(()));
    }

    /// Answers the next `count` device-code polls with `slow_down`.
    pub fn slow_down(&self, count: u32) {
        self.state.inner.lock().unwrap().slow_downs = count;
    }

    /// Device-code polls the token endpoint answered.
    pub fn device_polls(&self) -> u64 {
        self.state.inner.lock().unwrap().device_polls
    }

    /// Revokes every refresh token issued so far (an administrator signs the user out everywhere).
    pub fn revoke_refresh_tokens(&self) {
        self.state.inner.lock().unwrap().refresh_tokens.clear();
    }

    /// Claims for a token from this provider: `iss`, `aud`, `iat`, `exp` (`lifetime` seconds from now) and `extra`.
    pub fn claims(&self, lifetime: i64, extra: Value) -> Value {
        claims(&self.issuer, &self.audience, lifetime, extra)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Token claims: `iss`, `aud`, `iat`, `exp` (`lifetime` seconds from now, negative for an expired token), and
/// `extra` on top.
pub fn claims(issuer: &str, audience: &str, lifetime: i64, mut extra: Value) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    let mut claims = json!({"iss": issuer, "aud": audience, "iat": now, "exp": now + lifetime});
    for (key, value) in extra.as_object_mut().expect("an object").iter_mut() {
        claims[key.as_str()] = value.take();
    }
    claims
}

async fn answer(request: Request<hyper::body::Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let failing = state.inner.lock().unwrap().failing;
    let (status, document) = match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/.well-known/openid-configuration" | "/jwks") if failing => {
            (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "temporarily_unavailable"}))
        }
        ("GET", "/.well-known/openid-configuration") => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let named = state.inner.lock().unwrap().named_issuer.clone();
            let issuer = &state.issuer;
            (
                StatusCode::OK,
                json!({
                    "issuer": named.as_deref().unwrap_or(issuer),
                    "jwks_uri": format!("{issuer}/jwks"),
                    "token_endpoint": format!("{issuer}/token"),
                    "device_authorization_endpoint": format!("{issuer}/device"),
                    "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                }),
            )
        }
        ("GET", "/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = state.inner.lock().unwrap().keys.iter().map(|key| key.jwk.clone()).collect();
            (StatusCode::OK, json!({"keys": keys}))
        }
        ("POST", "/device") => device_authorization(&state, &form),
        ("POST", "/token") => token(&state, &form),
        _ => (StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    };
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(document.to_string())))
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// RFC 8628 §3.1–3.2.
fn device_authorization(state: &State, form: &HashMap<String, String>) -> (StatusCode, Value) {
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let mut inner = state.inner.lock().unwrap();
    inner.issued += 1;
    let device_code = format!("device-{}-{:016x}", inner.issued, rand::random::<u64>());
    let user_code = format!("{:04X}-{:04X}", rand::random::<u16>(), inner.issued as u16);
    inner.devices.insert(device_code.clone(), Device { user_code: user_code.clone(), approval: None });
    let verification_uri = format!("{}/device/verify", state.issuer);
    (
        StatusCode::OK,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?user_code={user_code}"),
            "expires_in": 600,
            "interval": 1,
        }),
    )
}

/// RFC 8628 §3.4–3.5 and RFC 6749 §6: the device code grant and refresh tokens.
fn token(state: &State, form: &HashMap<String, String>) -> (StatusCode, Value) {
    let error = |code: &str| (StatusCode::BAD_REQUEST, json!({"error": code}));
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let mut inner = state.inner.lock().unwrap();
    let user = match form.get("grant_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            let Some(code) = form.get("device_code") else { return error("invalid_request") };
            inner.device_polls += 1;
            if inner.slow_downs > 0 {
                inner.slow_downs -= 1;
                return error("slow_down");
            }
            match inner.devices.get(code).map(|device| device.approval.clone()) {
                None => return error("invalid_grant"),
                Some(None) => return error("authorization_pending"),
                Some(Some(Err(()))) => {
                    inner.devices.remove(code);
                    return error("access_denied");
                }
                Some(Some(Ok(user))) => {
                    inner.devices.remove(code);
                    user
                }
            }
        }
        Some("refresh_token") => {
            let Some(refresh) = form.get("refresh_token") else { return error("invalid_request") };
            // Rotated: a refresh token is good for one use.
            match inner.refresh_tokens.remove(refresh) {
                Some(user) => user,
                None => return error("invalid_grant"),
            }
        }
        _ => return error("unsupported_grant_type"),
    };
    let Some(key) = inner.keys.last().cloned() else { return error("server_error") };
    let token = key.sign(&claims(&state.issuer, &state.audience, TOKEN_LIFETIME as i64, user.clone()));
    inner.issued += 1;
    let refresh_token = format!("refresh-{}-{:016x}", inner.issued, rand::random::<u64>());
    inner.refresh_tokens.insert(refresh_token.clone(), user);
    (
        StatusCode::OK,
        json!({
            "access_token": token,
            "id_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "refresh_token": refresh_token,
        }),
    )
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let output = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
