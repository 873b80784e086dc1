//! Console sign-in with the `auth.oidc` identity provider (`admin.console.oidc`): the authorization code grant with
//! PKCE (RFC 7636, S256). `/ui/login/oidc` keeps a pending sign-in (state, nonce, code verifier; bounded by
//! `PENDING_LIMIT`, each good for `PENDING_LIFETIME` and one callback) and sends the browser to the provider's
//! authorization endpoint with the state also in a cookie; `/ui/login/callback` takes the pending sign-in its state
//! names (which must be the cookie's too), exchanges the code with the verifier at the token endpoint, verifies the
//! ID token with the provider's keys (`identity::Provider::verify_for`: signature, `iss`, `aud` = the client ID,
//! `exp`), checks its nonce, and requires one of the configured groups in the `auth.oidc` groups claim.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::session;
use crate::config::file::ConsoleOidc;
use crate::identity::Provider;

/// Sign-ins under way at once; the one that ends soonest makes room.
pub const PENDING_LIMIT: usize = 256;

/// How long a sign-in at the provider may take.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(600);

/// The cookie that binds a pending sign-in to the browser that began it (its state).
pub const STATE_COOKIE: &str = "tollgate_console_oidc";

/// The sign-ins begun and not yet finished, keyed by their state.
#[derive(Debug, Default)]
pub struct Pending {
    entries: Mutex<HashMap<String, Begun>>,
}

#[derive(Debug)]
struct Begun {
    verifier: String,
    nonce: String,
    ends: Instant,
}

/// Why a callback was refused: the status, what the page says (plain text), and the reason logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
    pub reason: &'static str,
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: String,
    /// The configured group the user is in.
    pub group: String,
}

impl Pending {
    /// Begins a sign-in: its state, nonce and the S256 challenge of its code verifier.
    fn begin(&self) -> (String, String, String) {
        let (state, nonce, verifier) = (random(), random(), random());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|_, begun| begun.ends > now);
        if entries.len() >= PENDING_LIMIT {
            if let Some(soonest) = entries.iter().min_by_key(|(_, begun)| begun.ends).map(|(key, _)| key.clone()) {
                entries.remove(&soonest);
            }
        }
        entries.insert(state.clone(), Begun { verifier, nonce: nonce.clone(), ends: now + PENDING_LIFETIME });
        (state, nonce, challenge)
    }

    /// The sign-in `state` names, once: taken out whether or not it is still in time.
    fn take(&self, state: &str) -> Option<Begun> {
        let begun = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(state)?;
        (begun.ends > Instant::now()).then_some(begun)
    }
}

/// `/ui/login/oidc`: the authorization endpoint URL to send the browser to, and the state for `STATE_COOKIE`.
pub async fn begin(pending: &Pending, provider: &Provider, console: &ConsoleOidc) -> Result<(String, String), String> {
    let endpoints = provider.code_endpoints().await?;
    let (state, nonce, challenge) = pending.begin();
    let mut location = url::Url::parse(&endpoints.authorization)
        .map_err(|e| format!("authorization_endpoint {:?}: {e}", endpoints.authorization))?;
    location
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &console.client_id)
        .append_pair("redirect_uri", &console.redirect_uri)
        .append_pair("scope", "openid profile email")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Ok((location.into(), state))
}

/// `/ui/login/callback?code=&state=` (or `?error=`), with the `STATE_COOKIE` value the browser sent: who signed in.
pub async fn finish(
    pending: &Pending,
    provider: &Provider,
    console: &ConsoleOidc,
    query: &str,
    state_cookie: Option<&str>,
    now: SystemTime,
) -> Result<Member, Refused> {
    let refuse = |status, message: String, reason| Refused { status, message, reason };
    let field = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
    };
    if let Some(error) = field("error") {
        let error: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("The identity provider did not sign you in ({error})."),
            "provider_error",
        ));
    }
    let (Some(code), Some(state)) = (field("code"), field("state")) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "The callback lacks its code or state.".into(), "malformed"));
    };
    if !state_cookie.is_some_and(|cookie| session::same_secret(cookie, &state)) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "This sign-in was not begun in this browser: sign in again.".into(),
            "state_mismatch",
        ));
    }
    let Some(begun) = pending.take(&state) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, used or expired: sign in again.".into(),
            "state_unknown",
        ));
    };
    let unavailable = |message: String| refuse(StatusCode::BAD_GATEWAY, message, "provider_unreachable");
    let endpoints = provider.code_endpoints().await.map_err(|e| unavailable(format!("Discovery failed: {e}")))?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", console.redirect_uri.as_str()),
        ("client_id", console.client_id.as_str()),
        ("code_verifier", begun.verifier.as_str()),
    ];
    if let Some(secret) = &console.client_secret {
        form.push(("client_secret", secret));
    }
    let (status, body) = provider
        .post_form(&endpoints.token, &form)
        .await
        .map_err(|e| unavailable(format!("The token endpoint did not answer: {e}")))?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != StatusCode::OK {
        let error = answer.get("error").and_then(Value::as_str).unwrap_or("no error code");
        let error: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("The identity provider refused the code (HTTP {}, {error}).", status.as_u16()),
            "code_refused",
        ));
    }
    let Some(id_token) = answer.get("id_token").and_then(Value::as_str) else {
        return Err(refuse(StatusCode::FORBIDDEN, "The token response has no id_token.".into(), "no_id_token"));
    };
    let claims = provider
        .verify_for(id_token, &console.client_id, now)
        .await
        .map_err(|e| refuse(StatusCode::FORBIDDEN, format!("The ID token was refused: {e}."), "id_token_refused"))?;
    let nonce = claims.payload.get("nonce").and_then(Value::as_str);
    if !nonce.is_some_and(|nonce| session::same_secret(nonce, &begun.nonce)) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "The ID token's nonce is not this sign-in's.".into(),
            "nonce_mismatch",
        ));
    }
    match console.groups.iter().find(|group| claims.groups.contains(group)) {
        Some(group) => Ok(Member { user: claims.user, group: group.clone() }),
        None => Err(refuse(
            StatusCode::FORBIDDEN,
            format!("{} is not in a group allowed to use the console.", claims.user),
            "not_a_member",
        )),
    }
}

/// 32 random bytes, base64url without padding (43 characters: a valid PKCE code verifier).
fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_sign_in_is_taken_once_and_the_store_is_bounded() {
        let pending = Pending::default();
        let (state, nonce, challenge) = pending.begin();
        assert_ne!(state, nonce);
        assert_eq!(challenge.len(), 43);
        let begun = pending.take(&state).expect("pending");
        assert_eq!(begun.nonce, nonce);
        // RFC 7636 §4.2: the challenge is BASE64URL(SHA256(verifier)).
        assert_eq!(URL_SAFE_NO_PAD.encode(Sha256::digest(begun.verifier.as_bytes())), challenge);
        assert!(pending.take(&state).is_none(), "a state is good once");

        let (first, _, _) = pending.begin();
        for _ in 0..PENDING_LIMIT {
            pending.begin();
        }
        assert_eq!(pending.entries.lock().unwrap().len(), PENDING_LIMIT);
        assert!(pending.take(&first).is_none(), "the sign-in that ends soonest made room");
    }

    #[test]
    fn the_rfc_7636_example_challenge() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(URL_SAFE_NO_PAD.encode(Sha256::digest(verifier)), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
