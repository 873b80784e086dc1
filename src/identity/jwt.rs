//! Bearer JWTs from the company's identity provider: RS256, ES256 and EdDSA (Ed25519) against a JWKS — a file
//! (`auth.jwt.jwks_file`) or the keys OIDC discovery finds (`auth.oidc`, in `oidc.rs`) — or HS256 against a shared
//! secret.
//!
//! Implemented on `ring` with nothing left to a library's defaults: the header's `alg` must be the algorithm of the
//! one key it selects (so `none`, and HS256 "signed" with an RSA public key, never verify), the signature is
//! checked before any claim is read, and `exp` is required. Errors say what failed and never echo the token.
//! The verifier is built once per config snapshot (the JWKS file is read then) and is usable on its own, e.g. for
//! `Authorization: Bearer` on gateway listeners.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{hmac, signature};
use serde_json::{Map, Value};

use crate::config::file;

/// Longest token accepted, in bytes.
const MAX_TOKEN: usize = 16 * 1024;
/// Shortest HS256 secret (RFC 7518 §3.2: a key of at least the hash size).
const MIN_SECRET: usize = 32;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS: usize = 256;

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The value of the configured user claim.
    pub user: String,
    /// The values of the configured groups claim, in token order (empty when the claim is absent).
    pub groups: Vec<String>,
    /// When the token stops verifying: its `exp` plus the leeway.
    pub expires: SystemTime,
    /// Every claim of the verified payload, for mappings that read more than the user and groups (the region).
    pub payload: Map<String, Value>,
}

/// Why a token was refused. The messages name the check, never the token's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a compact JWS with JSON header and payload, or a header this verifier does not handle.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is `none`, unsupported, or not the algorithm of the selected key.
    #[error("algorithm refused: {0}")]
    Algorithm(&'static str),
    /// No JWKS key has the token's `kid` (or the token has none and the JWKS holds several keys).
    #[error("no configured key matches the token's key id")]
    UnknownKey,
    /// The identity provider's keys could not be fetched and none are known: no token can be verified.
    #[error(
        "the identity provider's signing keys are unavailable ({0}); no token can be verified until it is reachable"
    )]
    KeysUnavailable(String),
    /// The signature does not verify with the selected key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` (plus the leeway) has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` (minus the leeway) is still ahead.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer (iss)")]
    Issuer,
    /// `aud` does not name the configured audience.
    #[error("wrong audience (aud)")]
    Audience,
    /// A required claim (`iss`, `aud`, `exp`, the user claim) is absent, or a claim has the wrong type.
    #[error("missing or unusable claim {0:?}")]
    MissingClaim(String),
}

/// A problem with `auth.jwt`: the key under `auth.jwt` it concerns, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfigError {
    /// `jwks_file`, `hs256_secret`, `issuer`, … or empty for `auth.jwt` itself.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Verifies bearer tokens for one config.
pub struct JwtVerifier {
    keys: Keys,
    rules: ClaimRules,
}

/// The checks on a verified payload, and which claims name the user and the groups: the same for `auth.jwt` and
/// `auth.oidc`.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub issuer: String,
    pub audience: String,
    pub user_claim: String,
    pub groups_claim: String,
    pub leeway: Duration,
}

enum Keys {
    Hs256(hmac::Key),
    Jwks(KeySet),
}

/// The public signing keys of a JWKS document (RS256, ES256 on P-256, EdDSA on Ed25519).
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

enum PublicKey {
    Rs256(signature::RsaPublicKeyComponents<Vec<u8>>),
    /// The uncompressed P-256 point, `04 || x || y`.
    Es256(Vec<u8>),
    /// The 32-byte Ed25519 public key.
    EdDsa(Vec<u8>),
}

impl PublicKey {
    fn alg(&self) -> &'static str {
        match self {
            PublicKey::Rs256(_) => "RS256",
            PublicKey::Es256(_) => "ES256",
            PublicKey::EdDsa(_) => "EdDSA",
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rs256(key) => key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok(),
            PublicKey::Es256(point) => signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
            PublicKey::EdDsa(key) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, key).verify(message, signature).is_ok()
            }
        }
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            Keys::Hs256(_) => "hs256 secret".to_owned(),
            Keys::Jwks(keys) => format!("{} JWKS keys", keys.len()),
        };
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.rules.issuer)
            .field("audience", &self.rules.audience)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.key.alg()))).finish()
    }
}

impl JwtVerifier {
    /// Builds the verifier from `auth.jwt`, reading the JWKS file if one is named.
    pub fn compile(config: &file::Jwt) -> Result<Self, JwtConfigError> {
        let fail = |field, message: String| Err(JwtConfigError { field, message });
        let rules = ClaimRules::compile(
            &config.issuer,
            &config.audience,
            &config.user_claim,
            &config.groups_claim,
            config.leeway.0,
        )?;
        let keys = match (&config.jwks_file, &config.hs256_secret) {
            (Some(_), Some(_)) => return fail("hs256_secret", "set jwks_file or hs256_secret, not both".into()),
            (None, None) => {
                return fail("", "set jwks_file (the identity provider's public keys) or hs256_secret".into())
            }
            (None, Some(secret)) => {
                if secret.len() < MIN_SECRET {
                    return fail("hs256_secret", format!("must be at least {MIN_SECRET} bytes long"));
                }
                Keys::Hs256(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|error| JwtConfigError {
                    field: "jwks_file",
                    message: format!("cannot read {path}: {error}"),
                })?;
                let keys = KeySet::parse(&text)
                    .map_err(|problem| JwtConfigError { field: "jwks_file", message: format!("{path}: {problem}") })?;
                Keys::Jwks(keys)
            }
        };
        Ok(Self { keys, rules })
    }

    /// Checks `token` (the compact serialization, without `Bearer `) at time `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, JwtError> {
        let signed = SignedToken::decode(token)?;
        match &self.keys {
            Keys::Hs256(key) => {
                if signed.alg() != "HS256" {
                    return Err(JwtError::Algorithm("only HS256 is configured"));
                }
                hmac::verify(key, signed.message, &signed.signature).map_err(|_| JwtError::BadSignature)?;
            }
            Keys::Jwks(keys) => signed.verify_with(keys)?,
        }
        self.rules.check(signed.payload()?, now)
    }

    /// The issuer this verifier expects.
    pub fn issuer(&self) -> &str {
        &self.rules.issuer
    }

    /// Number of keys (1 for an HS256 secret), for `tollgate check`'s summary.
    pub fn key_count(&self) -> usize {
        match &self.keys {
            Keys::Hs256(_) => 1,
            Keys::Jwks(keys) => keys.len(),
        }
    }
}

impl ClaimRules {
    /// The rules, each name checked non-empty; an error names the key (`issuer`, `audience`, …).
    pub fn compile(
        issuer: &str,
        audience: &str,
        user_claim: &str,
        groups_claim: &str,
        leeway: Duration,
    ) -> Result<ClaimRules, JwtConfigError> {
        for (field, value) in
            [("issuer", issuer), ("audience", audience), ("user_claim", user_claim), ("groups_claim", groups_claim)]
        {
            if value.is_empty() {
                return Err(JwtConfigError { field, message: "must not be empty".into() });
            }
        }
        Ok(ClaimRules {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            user_claim: user_claim.to_owned(),
            groups_claim: groups_claim.to_owned(),
            leeway,
        })
    }

    /// Checks a verified payload at `now`: `iss`, `aud`, `exp` and `nbf` (with the leeway), the user claim and the
    /// groups claim.
    pub fn check(&self, claims: Map<String, Value>, now: SystemTime) -> Result<Claims, JwtError> {
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(_) => return Err(JwtError::Issuer),
            None => return Err(JwtError::MissingClaim("iss".into())),
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(self.audience.as_str())),
            Some(_) => false,
            None => return Err(JwtError::MissingClaim("aud".into())),
        };
        if !audience_ok {
            return Err(JwtError::Audience);
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        let exp = numeric_date(&claims, "exp")?.ok_or_else(|| JwtError::MissingClaim("exp".into()))?;
        if now >= exp + leeway {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")? {
            if now + leeway < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(user)) if !user.is_empty() && !user.chars().any(char::is_control) => user.clone(),
            _ => return Err(JwtError::MissingClaim(self.user_claim.clone())),
        };
        let groups = match claims.get(&self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| JwtError::MissingClaim(self.groups_claim.clone()))?,
            Some(_) => return Err(JwtError::MissingClaim(self.groups_claim.clone())),
        };
        let expires = UNIX_EPOCH + Duration::from_secs_f64((exp + leeway).clamp(0.0, 1e11));
        Ok(Claims { user, groups, expires, payload: claims })
    }
}

/// A compact JWS taken apart, its signature not yet checked.
pub struct SignedToken<'a> {
    header: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    message: &'a [u8],
    payload: &'a str,
    signature: Vec<u8>,
}

impl<'a> SignedToken<'a> {
    /// Splits and decodes `token`; refuses unsigned tokens, critical extensions and headers without `alg`.
    pub fn decode(token: &'a str) -> Result<SignedToken<'a>, JwtError> {
        if token.len() > MAX_TOKEN {
            return Err(JwtError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        let header = decode_object(header_b64, "header")?;
        let signature =
            URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
        if header.contains_key("crit") {
            return Err(JwtError::Malformed("critical header extensions are not supported"));
        }
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg.as_str(),
            _ => return Err(JwtError::Malformed("header has no alg")),
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(JwtError::Algorithm("unsigned tokens (alg none) are not accepted"));
        }
        let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        Ok(SignedToken { header, message, payload: payload_b64, signature })
    }

    /// The header's `alg`.
    pub fn alg(&self) -> &str {
        self.header.get("alg").and_then(Value::as_str).unwrap_or_default()
    }

    /// The header's `kid`, if any.
    pub fn kid(&self) -> Result<Option<&str>, JwtError> {
        match self.header.get("kid") {
            None => Ok(None),
            Some(Value::String(kid)) => Ok(Some(kid.as_str())),
            Some(_) => Err(JwtError::Malformed("kid is not a string")),
        }
    }

    /// The payload's `iss`, read before any check: only to choose which configured issuer verifies the token.
    pub fn unverified_issuer(&self) -> Option<String> {
        let payload = decode_object(self.payload, "payload").ok()?;
        payload.get("iss").and_then(Value::as_str).map(str::to_owned)
    }

    /// Checks the signature with the key of `keys` the `kid` selects, whose algorithm must be the header's `alg`.
    pub fn verify_with(&self, keys: &KeySet) -> Result<(), JwtError> {
        let key = keys.select(self.kid()?).ok_or(JwtError::UnknownKey)?;
        if self.alg() != key.key.alg() {
            return Err(JwtError::Algorithm("the token's alg does not match its key"));
        }
        if !key.key.verify(self.message, &self.signature) {
            return Err(JwtError::BadSignature);
        }
        Ok(())
    }

    /// The payload (call only after the signature verified).
    pub fn payload(&self) -> Result<Map<String, Value>, JwtError> {
        decode_object(self.payload, "payload")
    }
}

impl KeySet {
    /// Parses a JWKS document: RSA, EC P-256 and Ed25519 signing keys are kept, keys for other uses or algorithms
    /// skipped; a set without one usable key is an error.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let document: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Some(entries) = document.get("keys").and_then(Value::as_array) else {
            return Err("a JWKS needs a \"keys\" array".into());
        };
        let mut keys = Vec::new();
        let mut kids = HashSet::new();
        for (index, entry) in entries.iter().enumerate() {
            let field = |name: &str| entry.get(name).and_then(Value::as_str);
            if field("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let bytes = |name: &str| -> Result<Vec<u8>, String> {
                let text = field(name).ok_or_else(|| format!("keys[{index}]: no {name:?}"))?;
                URL_SAFE_NO_PAD.decode(text).map_err(|_| format!("keys[{index}].{name} is not base64url"))
            };
            let key = match (field("kty"), field("alg")) {
                (Some("RSA"), None | Some("RS256")) => {
                    let n = strip_leading_zeros(bytes("n")?);
                    let e = strip_leading_zeros(bytes("e")?);
                    if n.len() < MIN_RSA_MODULUS {
                        return Err(format!("keys[{index}]: RSA keys need at least 2048 bits"));
                    }
                    if e.is_empty() || e.len() > 4 {
                        return Err(format!("keys[{index}].e is not a usable RSA exponent"));
                    }
                    PublicKey::Rs256(signature::RsaPublicKeyComponents { n, e })
                }
                (Some("EC"), None | Some("ES256")) if field("crv") == Some("P-256") => {
                    let (x, y) = (bytes("x")?, bytes("y")?);
                    if x.len() != 32 || y.len() != 32 {
                        return Err(format!("keys[{index}]: P-256 coordinates are 32 bytes each"));
                    }
                    let mut point = Vec::with_capacity(65);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    PublicKey::Es256(point)
                }
                (Some("OKP"), None | Some("EdDSA")) if field("crv") == Some("Ed25519") => {
                    let x = bytes("x")?;
                    if x.len() != 32 {
                        return Err(format!("keys[{index}]: an Ed25519 key is 32 bytes"));
                    }
                    PublicKey::EdDsa(x)
                }
                _ => continue,
            };
            let kid = field("kid").map(str::to_owned);
            if let Some(kid) = &kid {
                if !kids.insert(kid.clone()) {
                    return Err(format!("keys[{index}]: kid {kid:?} is used twice"));
                }
            }
            keys.push(Jwk { kid, key });
        }
        if keys.is_empty() {
            return Err("no RS256, ES256 (P-256) or EdDSA (Ed25519) signing key in \"keys\"".into());
        }
        Ok(KeySet { keys })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Each key's id and algorithm, for `tollgate check --online`.
    pub fn describe(&self) -> Vec<String> {
        self.keys.iter().map(|k| format!("{} ({})", k.kid.as_deref().unwrap_or("no kid"), k.key.alg())).collect()
    }

    /// Whether a token with this `kid` finds a key here.
    pub fn has(&self, kid: Option<&str>) -> bool {
        self.select(kid).is_some()
    }

    /// The key a token's `kid` selects; without a `kid`, the only key there is.
    fn select(&self, kid: Option<&str>) -> Option<&Jwk> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

fn decode_object(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let malformed = || {
        JwtError::Malformed(if what == "header" {
            "header is not base64url JSON"
        } else {
            "payload is not base64url JSON"
        })
    };
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed())?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed()),
    }
}

/// A NumericDate claim (seconds since the epoch, possibly fractional), if present.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => match value.as_f64() {
            Some(seconds) if seconds.is_finite() => Ok(Some(seconds)),
            _ => Err(JwtError::MissingClaim(name.to_owned())),
        },
    }
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn config(jwks_file: Option<String>, secret: Option<&str>) -> file::Jwt {
        let value = json!({"issuer": "https://idp.test", "audience": "tollgate", "jwks_file": jwks_file,
                           "hs256_secret": secret, "user_claim": "email", "leeway": "60s"});
        serde_json::from_value(value).expect("a valid auth.jwt")
    }

    fn claims() -> Value {
        json!({"iss": "https://idp.test", "aud": "tollgate", "exp": NOW + 300, "email": "jane.doe",
               "groups": ["g1", "g2"]})
    }

    fn hs256(header: Value, claims: &Value, secret: &[u8]) -> String {
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), signed.as_bytes());
        format!("{signed}.{}", b64(tag.as_ref()))
    }

    fn hs_verifier() -> JwtVerifier {
        JwtVerifier::compile(&config(None, Some(SECRET))).expect("compiles")
    }

    fn with(changes: Value) -> Value {
        let mut claims = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    }

    fn check(claims: Value) -> Result<Claims, JwtError> {
        hs_verifier().verify(&hs256(json!({"alg": "HS256", "typ": "JWT"}), &claims, SECRET.as_bytes()), now())
    }

    #[test]
    fn hs256_valid_token_yields_user_and_groups() {
        let claims = check(claims()).expect("valid");
        let expires = UNIX_EPOCH + Duration::from_secs(NOW + 300 + 60);
        assert_eq!(
            (claims.user.as_str(), claims.groups.clone(), claims.expires),
            ("jane.doe", vec!["g1".into(), "g2".into()], expires)
        );
        assert_eq!(claims.payload.get("iss"), Some(&json!("https://idp.test")));
    }

    #[test]
    fn every_claim_check_names_its_failure() {
        let cases = [
            (json!({"iss": "https://evil.test"}), JwtError::Issuer),
            (json!({"iss": null}), JwtError::MissingClaim("iss".into())),
            (json!({"aud": "other"}), JwtError::Audience),
            (json!({"aud": ["a", "b"]}), JwtError::Audience),
            (json!({"aud": 7}), JwtError::Audience),
            (json!({"aud": null}), JwtError::MissingClaim("aud".into())),
            (json!({"exp": null}), JwtError::MissingClaim("exp".into())),
            (json!({"exp": "tomorrow"}), JwtError::MissingClaim("exp".into())),
            (json!({"exp": NOW - 60}), JwtError::Expired),
            (json!({"nbf": NOW + 61}), JwtError::NotYetValid),
            (json!({"email": null}), JwtError::MissingClaim("email".into())),
            (json!({"email": ""}), JwtError::MissingClaim("email".into())),
            (json!({"email": 42}), JwtError::MissingClaim("email".into())),
            (json!({"email": "a\nb"}), JwtError::MissingClaim("email".into())),
            (json!({"groups": "g1"}), JwtError::MissingClaim("groups".into())),
            (json!({"groups": ["g1", 2]}), JwtError::MissingClaim("groups".into())),
        ];
        for (changes, want) in cases {
            assert_eq!(check(with(changes.clone())), Err(want), "{changes}");
        }
    }

    #[test]
    fn leeway_and_optional_claims() {
        assert!(check(with(json!({"exp": NOW - 59}))).is_ok(), "within leeway");
        assert!(check(with(json!({"exp": NOW as f64 - 59.5}))).is_ok(), "fractional NumericDate");
        assert!(check(with(json!({"nbf": NOW + 59}))).is_ok(), "nbf within leeway");
        assert!(check(with(json!({"aud": ["x", "tollgate"]}))).is_ok(), "aud array");
        assert_eq!(check(with(json!({"groups": null}))).unwrap().groups, Vec::<String>::new());
    }

    #[test]
    fn signature_algorithm_and_shape_are_checked() {
        let verifier = hs_verifier();
        let good = hs256(json!({"alg": "HS256"}), &claims(), SECRET.as_bytes());
        let wrong_secret = hs256(json!({"alg": "HS256"}), &claims(), b"another secret of thirty-two bytes");
        assert_eq!(verifier.verify(&wrong_secret, now()), Err(JwtError::BadSignature));
        // The payload swapped under a valid signature.
        let (head, _) = good.split_once('.').unwrap();
        let (_, sig) = good.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}.{sig}", b64(with(json!({"email": "root"})).to_string().as_bytes()));
        assert_eq!(verifier.verify(&forged, now()), Err(JwtError::BadSignature));
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims().to_string().as_bytes()));
        assert!(matches!(verifier.verify(&none, now()), Err(JwtError::Algorithm(_))));
        let none_upper = format!("{}.{}.", b64(br#"{"alg":"NONE"}"#), b64(claims().to_string().as_bytes()));
        assert!(matches!(verifier.verify(&none_upper, now()), Err(JwtError::Algorithm(_))));
        let hs512 = hs256(json!({"alg": "HS512"}), &claims(), SECRET.as_bytes());
        assert!(matches!(verifier.verify(&hs512, now()), Err(JwtError::Algorithm(_))));
        let crit = hs256(json!({"alg": "HS256", "crit": ["exp"]}), &claims(), SECRET.as_bytes());
        assert!(matches!(verifier.verify(&crit, now()), Err(JwtError::Malformed(_))));
        for garbage in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.", "W10.e30.AA", &format!("{good}=")] {
            assert!(matches!(verifier.verify(garbage, now()), Err(JwtError::Malformed(_))), "{garbage:?}");
        }
        assert_eq!(verifier.verify(&"a".repeat(MAX_TOKEN + 1), now()), Err(JwtError::Malformed("too long")));
    }

    fn jwks_verifier(jwks: &Value) -> Result<JwtVerifier, JwtConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        JwtVerifier::compile(&config(Some(path.display().to_string()), None))
    }

    fn es256_token(pair: &EcdsaKeyPair, header: Value, claims: &Value) -> String {
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64(sig.as_ref()))
    }

    #[test]
    fn es256_keys_are_selected_by_kid_and_their_alg_enforced() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = |kid: &str| json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])});
        let verifier = jwks_verifier(&json!({"keys": [jwk("k1"), {"kty": "OKP", "crv": "X448", "x": "AA"}]})).unwrap();
        assert_eq!(verifier.key_count(), 1);
        let token = es256_token(&pair, json!({"alg": "ES256", "kid": "k1"}), &claims());
        assert_eq!(verifier.verify(&token, now()).unwrap().user, "jane.doe");
        let no_kid = es256_token(&pair, json!({"alg": "ES256"}), &claims());
        assert!(verifier.verify(&no_kid, now()).is_ok(), "a single key needs no kid");
        let unknown = es256_token(&pair, json!({"alg": "ES256", "kid": "k2"}), &claims());
        assert_eq!(verifier.verify(&unknown, now()), Err(JwtError::UnknownKey));
        let mismatched = es256_token(&pair, json!({"alg": "RS256", "kid": "k1"}), &claims());
        assert!(matches!(verifier.verify(&mismatched, now()), Err(JwtError::Algorithm(_))));
        // HS256 with the public key's bytes as the "secret".
        for secret in [point, jwk("k1").to_string().as_bytes()] {
            let confused = hs256(json!({"alg": "HS256", "kid": "k1"}), &claims(), secret);
            assert!(matches!(verifier.verify(&confused, now()), Err(JwtError::Algorithm(_))));
        }
        let two = jwks_verifier(&json!({"keys": [jwk("k1"), jwk("k2")]})).unwrap();
        assert_eq!(two.verify(&no_kid, now()), Err(JwtError::UnknownKey), "several keys need a kid");
    }

    #[test]
    fn eddsa_keys_verify_and_a_short_key_is_refused() {
        use ring::signature::Ed25519KeyPair;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(pair.public_key().as_ref())});
        let verifier = jwks_verifier(&json!({"keys": [jwk]})).unwrap();
        let sign = |header: Value| {
            let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims().to_string().as_bytes()));
            format!("{signed}.{}", b64(pair.sign(signed.as_bytes()).as_ref()))
        };
        assert_eq!(verifier.verify(&sign(json!({"alg": "EdDSA", "kid": "ed"})), now()).unwrap().user, "jane.doe");
        let mismatched = sign(json!({"alg": "ES256", "kid": "ed"}));
        assert!(matches!(verifier.verify(&mismatched, now()), Err(JwtError::Algorithm(_))));
        let short = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]});
        assert!(jwks_verifier(&short).unwrap_err().message.contains("32 bytes"));
    }

    #[test]
    fn config_errors_name_their_field() {
        let both = JwtVerifier::compile(&config(Some("x".into()), Some(SECRET))).unwrap_err();
        assert_eq!(both.field, "hs256_secret");
        let neither = JwtVerifier::compile(&config(None, None)).unwrap_err();
        assert_eq!(neither.field, "");
        let short = JwtVerifier::compile(&config(None, Some("short"))).unwrap_err();
        assert_eq!(short.field, "hs256_secret");
        let missing = JwtVerifier::compile(&config(Some("/nonexistent/jwks.json".into()), None)).unwrap_err();
        assert_eq!(missing.field, "jwks_file");
        for bad in [
            json!({}),
            json!({"keys": []}),
            json!({"keys": [{"kty": "RSA", "n": b64(&[1; 128]), "e": "AQAB"}]}),
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}),
            json!({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}),
        ] {
            let error = jwks_verifier(&bad).err().unwrap_or_else(|| panic!("{bad} should not compile"));
            assert_eq!(error.field, "jwks_file", "{bad}");
        }
        let rsa = |kid: &str| json!({"kty": "RSA", "kid": kid, "n": b64(&[0xc5; 256]), "e": "AQAB"});
        assert!(jwks_verifier(&json!({"keys": [rsa("a"), rsa("a")]})).unwrap_err().message.contains("twice"));
        assert_eq!(jwks_verifier(&json!({"keys": [rsa("a"), rsa("b")]})).unwrap().key_count(), 2);
    }

    #[test]
    fn errors_never_echo_the_token() {
        let verifier = hs_verifier();
        let marker = "SECRETMARKER";
        let tokens = [
            format!("{marker}.{marker}.{marker}"),
            hs256(
                json!({"alg": "HS256", "kid": marker}),
                &with(json!({"email": marker})),
                b"wrong wrong wrong wrong wrong ww",
            ),
            hs256(json!({"alg": marker}), &claims(), SECRET.as_bytes()),
        ];
        for token in tokens {
            let message = verifier.verify(&token, now()).unwrap_err().to_string();
            assert!(!message.contains(marker) && !message.contains(&token), "{message}");
        }
    }
}
