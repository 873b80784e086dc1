//! An OpenID Connect identity provider for tests, over HTTPS with the test CA on 127.0.0.1:0, speaking the real
//! protocols: discovery (`/.well-known/openid-configuration`), the JWKS (`/jwks`) with keys added and removed as a
//! rotation does, the device authorization grant (RFC 8628: `/device`, then `/token` with the device code), the
//! authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636: `/authorize` redirects back with a code for the
//! user `sign_in_as` named, `/token` checks the code verifier against the S256 challenge) and refresh tokens
//! (`/token` with `grant_type=refresh_token`).
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
/// The client ID of the web console, which the authorization endpoint accepts (the `aud` of its ID tokens).
pub const CONSOLE_CLIENT_ID: &str = "tollgate-console";
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
    /// The claims of the user signed in at the authorization endpoint (`None`: the user declines).
    browser_user: Option<Value>,
    /// Authorization codes issued and not yet redeemed.
    codes: HashMap<String, Code>,
    /// Codes redeemed (a second use is refused).
    codes_redeemed: u64,
    /// The `nonce` put into ID tokens instead of the one the authorization request sent.
    nonce_override: Option<String>,
}

/// An authorization code: for whom, and what its redemption must match.
struct Code {
    claims: Value,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
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

    /// The user signing in at the authorization endpoint from now on (`None`: they decline, `access_denied`).
    pub fn sign_in_as(&self, claims: Option<Value>) {
        self.state.inner.lock().unwrap().browser_user = claims;
    }

    /// Puts `nonce` into the ID tokens of codes redeemed from now on, whatever the authorization request sent.
    pub fn override_nonce(&self, nonce: &str) {
        self.state.inner.lock().unwrap().nonce_override = Some(nonce.to_owned());
    }

    /// Authorization codes redeemed for tokens.
    pub fn codes_redeemed(&self) -> u64 {
        self.state.inner.lock().unwrap().codes_redeemed
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
                    "authorization_endpoint": format!("{issuer}/authorize"),
                    "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token",
                        "authorization_code"],
                    "code_challenge_methods_supported": ["S256"],
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
        ("GET", "/authorize") => return Ok(authorize(&state, parts.uri.query().unwrap_or(""))),
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

/// RFC 6749 §4.1.1–4.1.2 with RFC 7636 §4.3: the user `sign_in_as` named signs in at once; a redirect back to the
/// client with a code (or `error=access_denied`), or 400 for a request that names no valid client or redirect.
fn authorize(state: &State, query: &str) -> Response<Full<Bytes>> {
    let query: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let field = |name: &str| query.get(name).cloned().unwrap_or_default();
    let bad = |reason: &str| {
        Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(format!("bad authorization request: {reason}\n"))))
            .expect("response")
    };
    let redirect_uri = field("redirect_uri");
    if field("client_id") != CONSOLE_CLIENT_ID {
        return bad("unknown client_id");
    }
    if !redirect_uri.starts_with("http://") && !redirect_uri.starts_with("https://") {
        return bad("redirect_uri");
    }
    let mut back = url::Url::parse(&redirect_uri).expect("redirect_uri");
    let mut inner = state.inner.lock().unwrap();
    let scopes = field("scope");
    let valid = field("response_type") == "code"
        && scopes.split(' ').any(|scope| scope == "openid")
        && field("code_challenge_method") == "S256"
        && field("code_challenge").len() == 43;
    match (valid, inner.browser_user.clone()) {
        (false, _) => {
            back.query_pairs_mut().append_pair("error", "invalid_request");
        }
        (true, None) => {
            back.query_pairs_mut().append_pair("error", "access_denied");
        }
        (true, Some(claims)) => {
            inner.issued += 1;
            let code = format!("code-{}-{:016x}", inner.issued, rand::random::<u64>());
            let granted = Code {
                claims,
                client_id: CONSOLE_CLIENT_ID.to_owned(),
                redirect_uri: redirect_uri.clone(),
                challenge: field("code_challenge"),
                nonce: query.get("nonce").cloned(),
            };
            inner.codes.insert(code.clone(), granted);
            back.query_pairs_mut().append_pair("code", &code);
        }
    }
    if let Some(client_state) = query.get("state") {
        back.query_pairs_mut().append_pair("state", client_state);
    }
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", back.as_str())
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::new()))
        .expect("response")
}

/// RFC 6749 §4.1.3 with RFC 7636 §4.6: a code is good once, for its client and redirect URI, with the verifier whose
/// S256 digest is its challenge. An ID token for the client (with the request's nonce) and an access token.
fn redeem(state: &State, inner: &mut Inner, form: &HashMap<String, String>) -> (StatusCode, Value) {
    let error = |code: &str| (StatusCode::BAD_REQUEST, json!({"error": code}));
    let Some(code) = form.get("code").and_then(|code| inner.codes.remove(code)) else {
        return error("invalid_grant");
    };
    if form.get("redirect_uri") != Some(&code.redirect_uri) {
        return error("invalid_grant");
    }
    let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
    let digest = b64(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    if verifier.len() < 43 || digest != code.challenge {
        return error("invalid_grant");
    }
    inner.codes_redeemed += 1;
    let Some(key) = inner.keys.last().cloned() else { return error("server_error") };
    let mut extra = code.claims.clone();
    if let Some(nonce) = inner.nonce_override.clone().or(code.nonce) {
        extra["nonce"] = Value::String(nonce);
    }
    let id_token = key.sign(&claims(&state.issuer, &code.client_id, TOKEN_LIFETIME as i64, extra));
    let access_token = key.sign(&claims(&state.issuer, &state.audience, TOKEN_LIFETIME as i64, code.claims));
    (
        StatusCode::OK,
        json!({"access_token": access_token, "id_token": id_token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME}),
    )
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
    if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
        if form.get("client_id").map(String::as_str) != Some(CONSOLE_CLIENT_ID) {
            return (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
        }
        return redeem(state, &mut state.inner.lock().unwrap(), form);
    }
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
