//! Who a request comes from: a `Principal`, from Basic proxy credentials, a bearer JWT (`auth.jwt` with static keys,
//! `auth.oidc` with the identity provider's discovered keys), a client certificate or the anonymous setting.
//!
//! Checked per request (keep-alive connections may change credentials between requests). Verifying an argon2id
//! hash costs milliseconds, so it runs on the blocking pool and a verified password is remembered as a keyed
//! digest that later requests compare in constant time.

mod basic;
pub mod claims;
mod error;
mod jwt;
pub mod oidc;
pub mod verify;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub use basic::{hash_password, BasicCredentials};
pub use claims::ClaimMapping;
pub use error::AuthError;
pub use jwt::{Claims, JwtConfigError, JwtError, JwtVerifier, KeySet, SignedToken};
pub use oidc::{Provider, RefreshCounts};
pub use verify::Verifiers;

use rustls_pki_types::CertificateDer;

use crate::config::file;
use crate::tls::{self, CertIdentity};

/// An identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub teams: Arc<[Arc<str>]>,
    pub method: AuthMethod,
    /// When the credential stops being valid (a JWT's `exp`, a client certificate's `notAfter`); a principal
    /// kept by a keep-alive connection or a tunnel is refused from then on.
    pub expires: Option<SystemTime>,
    /// Which password a Basic principal was verified against (a digest of its hash): a reload that changes the
    /// password ends what was identified with the old one. 0 for other methods.
    pub credential: u64,
    /// The region its token names (`auth.oidc.region`); otherwise its teams' `region` applies.
    pub region: Option<Arc<str>>,
}

impl Principal {
    /// A principal named by configuration (anonymous access, tests, `explain`): no credential, no expiry.
    pub fn named(name: &str, teams: &[&str], method: AuthMethod) -> Principal {
        Principal {
            name: name.into(),
            teams: teams.iter().map(|team| Arc::from(*team)).collect(),
            method,
            expires: None,
            credential: 0,
            region: None,
        }
    }
}

impl Principal {
    /// The first team, as recorded in audit records.
    pub fn team(&self) -> Option<&str> {
        self.teams.first().map(|t| &**t)
    }
}

/// How the principal was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Anonymous,
    Basic,
    /// A verified client certificate on a TLS listener.
    Mtls,
    /// A verified bearer JWT (`auth.jwt`).
    Jwt,
    /// A verified bearer token from the OpenID Connect identity provider (`auth.oidc`).
    Oidc,
}

impl AuthMethod {
    pub fn label(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Basic => "basic",
            AuthMethod::Mtls => "mtls",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Oidc => "oidc",
        }
    }
}

/// The users and anonymous setting of one config, with the verified-password cache.
#[derive(Debug)]
pub struct Directory {
    anonymous: Option<Principal>,
    users: HashMap<Box<str>, User>,
    failed_auth_limit: Option<u32>,
    verified: Mutex<HashMap<Arc<str>, [u8; 32]>>,
    failures: Mutex<HashMap<IpAddr, (u64, u32)>>,
    cache_key: [u8; 32],
    certificate_identity: CertIdentity,
    team_from_ou: bool,
    jwt: Option<Bearer<JwtVerifier>>,
    oidc: Option<Bearer<Provider>>,
    /// Users provisioned over SCIM (`admin.scim`), attached once the snapshot is running.
    provisioned: OnceLock<Arc<dyn Provisioned>>,
}

/// Users provisioned over SCIM as the identity checks see them: whether a user is active, and the teams its groups
/// map to. Implemented by `scim::Attached`.
pub trait Provisioned: Send + Sync + std::fmt::Debug {
    /// Where `user` stands now.
    fn standing(&self, user: &str) -> Standing;
    /// Whether a token or certificate of a user that is not provisioned and active is refused
    /// (`admin.scim.require_provisioned`).
    fn required(&self) -> bool;
}

/// Where a user stands in the provisioned directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Never provisioned: handled as without SCIM.
    Unknown,
    /// Provisioned and active, with the teams its groups map to.
    Active(Vec<Arc<str>>),
    /// Deactivated or deleted: every credential is refused.
    Deprovisioned,
}

/// A source of bearer tokens compiled (`auth.jwt` with `auth.group_teams`, or `auth.oidc`), with how its claims map
/// to a principal.
#[derive(Debug)]
struct Bearer<V> {
    verifier: V,
    mapping: ClaimMapping,
}

#[derive(Debug)]
struct User {
    principal: Principal,
    password_hash: Arc<str>,
}

/// A user entry (`index` into the users) or, with no index, a key under `auth` that does not compile: its key path
/// (`field`, e.g. `password_hash` or `jwt.jwks_file`) and the problem.
#[derive(Debug)]
pub struct UserError {
    pub index: Option<usize>,
    pub field: &'static str,
    pub message: String,
}

impl Directory {
    /// Builds the directory from `auth` and the users of `auth.users_file` (already read); the identity provider's
    /// keys (`auth.oidc`) are fetched trusting the roots of `trust` (`upstream.trust`).
    pub fn compile(auth: &file::Auth, users: &[file::User], trust: &file::Trust) -> Result<Self, UserError> {
        let mut by_name = HashMap::new();
        for (index, user) in users.iter().enumerate() {
            basic::check_hash(&user.password_hash).map_err(|message| UserError {
                index: Some(index),
                field: "password_hash",
                message,
            })?;
            if user.name.is_empty() || user.name.contains(':') {
                return Err(UserError {
                    index: Some(index),
                    field: "name",
                    message: "a user name must be non-empty and hold no ':'".into(),
                });
            }
            let principal = Principal {
                name: user.name.as_str().into(),
                teams: user.teams.iter().map(|t| Arc::from(t.as_str())).collect(),
                method: AuthMethod::Basic,
                expires: None,
                credential: fingerprint(&user.password_hash),
                region: None,
            };
            let entry = User { principal, password_hash: user.password_hash.as_str().into() };
            if by_name.insert(user.name.as_str().into(), entry).is_some() {
                return Err(UserError {
                    index: Some(index),
                    field: "name",
                    message: format!("user {:?} is defined twice", user.name),
                });
            }
        }
        let jwt = match &auth.jwt {
            Some(config) => Some(Bearer {
                verifier: JwtVerifier::compile(config).map_err(|e| UserError {
                    index: None,
                    field: jwt_field(e.field),
                    message: e.message,
                })?,
                mapping: ClaimMapping::exact(&auth.group_teams),
            }),
            None => None,
        };
        let oidc = match &auth.oidc {
            Some(config) => Some(Bearer {
                verifier: Provider::compile(config, trust).map_err(|e| UserError {
                    index: None,
                    field: oidc_field(e.field),
                    message: e.message,
                })?,
                mapping: ClaimMapping::compile(config).map_err(|e| UserError {
                    index: None,
                    field: if e.section == "teams" { "oidc.teams" } else { "oidc.region" },
                    message: e.message,
                })?,
            }),
            None => None,
        };
        let anonymous = match auth.anonymous.as_str() {
            "deny" => None,
            name => Some(Principal::named(name, &[], AuthMethod::Anonymous)),
        };
        Ok(Self {
            anonymous,
            users: by_name,
            failed_auth_limit: auth.failed_auth_limit.as_ref().map(|l| l.per_minute),
            verified: Mutex::default(),
            failures: Mutex::default(),
            cache_key: rand::random(),
            certificate_identity: auth.mtls.identity,
            team_from_ou: auth.mtls.team_from == Some(file::TeamFrom::Ou),
            jwt,
            oidc,
            provisioned: OnceLock::new(),
        })
    }

    /// Joins the users provisioned over SCIM to this directory (once; later calls are ignored).
    pub fn attach_provisioned(&self, provisioned: Arc<dyn Provisioned>) {
        let _ = self.provisioned.set(provisioned);
    }

    /// `principal` as the provisioned directory sees it: a deactivated or deleted user is refused, an active one
    /// gets the teams of its groups too; a user never provisioned passes as it is, unless a token or certificate
    /// must name a provisioned user (`admin.scim.require_provisioned`; Basic users come from the config).
    pub fn provision(&self, principal: Principal) -> Result<Principal, AuthError> {
        let Some(provisioned) = self.provisioned.get() else { return Ok(principal) };
        if principal.method == AuthMethod::Anonymous {
            return Ok(principal);
        }
        match provisioned.standing(&principal.name) {
            Standing::Active(teams) => {
                let missing: Vec<Arc<str>> = teams.into_iter().filter(|t| !principal.teams.contains(t)).collect();
                if missing.is_empty() {
                    return Ok(principal);
                }
                let teams = principal.teams.iter().cloned().chain(missing).collect();
                Ok(Principal { teams, ..principal })
            }
            Standing::Deprovisioned => Err(AuthError::Deprovisioned),
            Standing::Unknown if provisioned.required() && principal.method != AuthMethod::Basic => {
                Err(AuthError::Deprovisioned)
            }
            Standing::Unknown => Ok(principal),
        }
    }

    /// Identifies the caller from the raw `Proxy-Authorization` value, if any, at `now`; then `provision`.
    pub async fn identify(
        &self,
        proxy_authorization: Option<&[u8]>,
        client: IpAddr,
        now: SystemTime,
        verifiers: &Arc<Verifiers>,
    ) -> Result<Principal, AuthError> {
        self.provision(self.identify_credential(proxy_authorization, client, now, verifiers).await?)
    }

    async fn identify_credential(
        &self,
        proxy_authorization: Option<&[u8]>,
        client: IpAddr,
        now: SystemTime,
        verifiers: &Arc<Verifiers>,
    ) -> Result<Principal, AuthError> {
        let Some(header) = proxy_authorization else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        if let Some(token) = bearer_token(header) {
            if !self.accepts_bearer() {
                return Err(AuthError::UnsupportedScheme);
            }
            let token = token?;
            return self.attempt(client, || self.bearer_principal(token, now)).await;
        }
        let credentials = BasicCredentials::parse(header)?;
        self.verify_password(&credentials.user, credentials.password, client, verifiers).await
    }

    /// Identifies a gateway-listener caller: a bearer JWT in `Authorization` (with `auth.jwt`), or a user's
    /// password as the API key — `x-api-key` or a bearer value that is not a JWT — written `USER:PASSWORD`; else
    /// the anonymous principal.
    ///
    /// The key must name its user: a password alone could only be found by trying it against every user's
    /// argon2id hash, so one request with a wrong key would cost a hash per configured user. Then `provision`.
    pub async fn identify_api(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
        client: IpAddr,
        now: SystemTime,
        verifiers: &Arc<Verifiers>,
    ) -> Result<Principal, AuthError> {
        self.provision(self.identify_api_credential(authorization, api_key, client, now, verifiers).await?)
    }

    async fn identify_api_credential(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
        client: IpAddr,
        now: SystemTime,
        verifiers: &Arc<Verifiers>,
    ) -> Result<Principal, AuthError> {
        // SDKs send an API key as `Authorization: Bearer KEY` (the Python SDK) or as both headers (Claude
        // Code's apiKeyHelper): a bearer value that is not a JWT is taken as the API key.
        let bearer = match authorization {
            Some(header) => Some(bearer_token(header).ok_or(AuthError::UnsupportedScheme)??),
            None => None,
        };
        // A token in `x-api-key` (an SDK given the token as its API key) is a token too.
        let api_key_token = api_key.and_then(|key| std::str::from_utf8(key).ok()).map(str::trim);
        let token = bearer.filter(|token| looks_like_jwt(token)).or(api_key_token.filter(|key| looks_like_jwt(key)));
        if let Some(token) = token.filter(|_| self.accepts_bearer()) {
            return self.attempt(client, || self.bearer_principal(token, now)).await;
        }
        let Some(key) = bearer.map(str::as_bytes).or(api_key) else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        let parsed = std::str::from_utf8(key)
            .map_err(|_| AuthError::MalformedKey("not UTF-8"))
            .and_then(|key| key.split_once(':').ok_or(AuthError::MalformedKey("write it USER:PASSWORD")));
        match parsed {
            Ok((user, password)) => self.verify_password(user, password.to_owned(), client, verifiers).await,
            Err(error) => self.attempt(client, || async { Err(error) }).await,
        }
    }

    /// Checks `password` for `user`: through the verified cache when it can, else on the bounded verifiers, one
    /// check for concurrent requests with the same credential.
    async fn verify_password(
        &self,
        user: &str,
        password: String,
        client: IpAddr,
        verifiers: &Arc<Verifiers>,
    ) -> Result<Principal, AuthError> {
        let digest = self.digest(password.as_bytes());
        let known = self.users.get(user);
        if let Some(user) = known.filter(|user| self.is_verified(&user.principal.name, &digest)) {
            // A throttled address is refused even a credential it proved before.
            self.check_throttle(client)?;
            return Ok(user.principal.clone());
        }
        // An unknown user costs the same check as a known one, so names cannot be probed by timing.
        let (name, hash): (Arc<str>, Arc<str>) = match known {
            Some(user) => (user.principal.name.clone(), user.password_hash.clone()),
            None => (Arc::from(user), Arc::from(basic::DUMMY_HASH)),
        };
        // Counted as an attempt only by the request that starts the check: a burst of requests with one
        // credential shares its check and is one attempt.
        let checked = verifiers.verify((name, digest), hash, password, || self.begin_attempt(client)).await;
        if checked.started && matches!(checked.verdict, Ok(true) | Err(AuthError::Busy)) {
            self.end_attempt(client);
        }
        match (known, checked.verdict?) {
            (Some(user), true) => {
                self.lock_verified().insert(user.principal.name.clone(), digest);
                Ok(user.principal.clone())
            }
            _ => Err(AuthError::Rejected),
        }
    }

    /// One authentication attempt from `client`, counted toward `auth.failed_auth_limit` before it is checked (so
    /// concurrent guesses cannot all slip under the limit) and given back when it succeeds or could not be checked.
    pub async fn attempt<F, Fut>(&self, client: IpAddr, check: F) -> Result<Principal, AuthError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Principal, AuthError>>,
    {
        self.begin_attempt(client)?;
        let result = check().await;
        if matches!(result, Ok(_) | Err(AuthError::Busy)) {
            self.end_attempt(client);
        }
        result
    }

    /// The principal a verified client certificate names (`auth.mtls`): its name from the SAN e-mail, SAN URI
    /// or CN, its teams from the OU (with `team_from: ou`) and from a configured user of the same name.
    /// `None` when the certificate lacks the configured field.
    pub fn certificate_principal(&self, certificate: &CertificateDer<'_>) -> Option<Principal> {
        let identity = tls::certificate_identity(certificate, self.certificate_identity)?;
        let mut teams: Vec<Arc<str>> = Vec::new();
        if let Some(team) = identity.organizational_unit.filter(|_| self.team_from_ou) {
            teams.push(team.into());
        }
        if let Some(user) = self.users.get(identity.name.as_str()) {
            teams.extend(user.principal.teams.iter().filter(|t| !teams.contains(t)).cloned().collect::<Vec<_>>());
        }
        Some(Principal {
            name: identity.name.into(),
            teams: teams.into(),
            method: AuthMethod::Mtls,
            expires: Some(identity.not_after),
            credential: 0,
            region: None,
        })
    }

    /// The principal as this directory sees it at `now`, for one established earlier (a tunnel, a keep-alive
    /// connection, possibly under an older config): its credential must not have expired, a Basic user must still
    /// exist with the same password (and gets its current teams), an anonymous principal must still be the
    /// anonymous name. Certificate and token principals were proven by their credential and stay as they are
    /// until it expires, unless SCIM deprovisioned their user (`provision`).
    pub fn refresh(&self, principal: &Principal, now: SystemTime) -> Result<Principal, AuthError> {
        if principal.expires.is_some_and(|expires| now >= expires) {
            return Err(AuthError::Expired);
        }
        let refreshed = match principal.method {
            AuthMethod::Basic => match self.users.get(&*principal.name) {
                Some(user) if user.principal.credential == principal.credential => Ok(user.principal.clone()),
                _ => Err(AuthError::Revoked),
            },
            AuthMethod::Anonymous => {
                self.anonymous.clone().filter(|anonymous| anonymous.name == principal.name).ok_or(AuthError::Revoked)
            }
            AuthMethod::Mtls | AuthMethod::Jwt | AuthMethod::Oidc => Ok(principal.clone()),
        };
        self.provision(refreshed?)
    }

    /// Which part of a client certificate names the principal (`auth.mtls.identity`).
    pub fn certificate_identity(&self) -> tls::CertIdentity {
        self.certificate_identity
    }

    /// Whether bearer tokens are configured (`auth.jwt` or `auth.oidc`).
    pub fn accepts_bearer(&self) -> bool {
        self.jwt.is_some() || self.oidc.is_some()
    }

    /// The principal a bearer token names: verified by `auth.oidc` when its `iss` is the OIDC issuer (or no
    /// `auth.jwt` is configured), else by `auth.jwt`; then the user claim, and the groups and region mapped
    /// (unknown groups are ignored). For `Proxy-Authorization` and for `Authorization: Bearer` on gateway
    /// listeners alike.
    pub async fn bearer_principal(&self, token: &str, now: SystemTime) -> Result<Principal, AuthError> {
        let issuer = SignedToken::decode(token).ok().and_then(|signed| signed.unverified_issuer());
        let oidc =
            self.oidc.as_ref().filter(|oidc| self.jwt.is_none() || issuer.as_deref() == Some(oidc.verifier.issuer()));
        if let Some(oidc) = oidc {
            let claims = oidc.verifier.verify(token, now).await.map_err(AuthError::InvalidOidcToken)?;
            return Ok(token_principal(&oidc.mapping, &claims, AuthMethod::Oidc));
        }
        let jwt = self.jwt.as_ref().ok_or(AuthError::UnsupportedScheme)?;
        let claims = jwt.verifier.verify(token, now).map_err(AuthError::InvalidToken)?;
        Ok(token_principal(&jwt.mapping, &claims, AuthMethod::Jwt))
    }

    /// The OpenID Connect provider, when `auth.oidc` is configured.
    pub fn oidc(&self) -> Option<&Provider> {
        self.oidc.as_ref().map(|bearer| &bearer.verifier)
    }

    /// The challenge realm sent with 407.
    pub const REALM: &'static str = "tollgate";

    fn digest(&self, password: &[u8]) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.cache_key);
        hasher.update(password);
        hasher.finalize().into()
    }

    fn is_verified(&self, user: &str, digest: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        self.lock_verified().get(user).is_some_and(|known| bool::from(known.ct_eq(digest)))
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, [u8; 32]>> {
        self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_throttle(&self, client: IpAddr) -> Result<(), AuthError> {
        let Some(limit) = self.failed_auth_limit else { return Ok(()) };
        let (minute, seconds_left) = current_minute();
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&client) {
            Some(&(at, count)) if at == minute && count >= limit => {
                Err(AuthError::Throttled { retry_after_secs: seconds_left })
            }
            _ => Ok(()),
        }
    }

    /// Counts an attempt from `client` before it is checked, or refuses when the minute's failures are used up.
    fn begin_attempt(&self, client: IpAddr) -> Result<(), AuthError> {
        let Some(limit) = self.failed_auth_limit else { return Ok(()) };
        let (minute, seconds_left) = current_minute();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > 100_000 {
            failures.retain(|_, (at, _)| *at == minute);
        }
        let entry = failures.entry(client).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= limit {
            return Err(AuthError::Throttled { retry_after_secs: seconds_left });
        }
        entry.1 += 1;
        Ok(())
    }

    /// Gives back an attempt that succeeded (only failures count).
    fn end_attempt(&self, client: IpAddr) {
        if self.failed_auth_limit.is_none() {
            return;
        }
        let (minute, _) = current_minute();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = failures.get_mut(&client).filter(|entry| entry.0 == minute) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }

    /// Whether `name` is a configured user or the anonymous principal (`tollgate explain`).
    pub fn knows(&self, name: &str) -> bool {
        self.users.contains_key(name) || self.anonymous.as_ref().is_some_and(|anonymous| &*anonymous.name == name)
    }

    /// The teams of the configured user `name` (`tollgate explain`).
    pub fn teams_of(&self, name: &str) -> Option<Arc<[Arc<str>]>> {
        self.users.get(name).map(|user| user.principal.teams.clone())
    }

    /// Number of configured users, for `tollgate check`'s summary.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// Three base64url parts separated by dots: a compact JWT, not an API key.
/// (An API key `USER:PASSWORD` holds a ':', which base64url never does.)
fn looks_like_jwt(token: &str) -> bool {
    let base64url =
        |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    token.split('.').count() == 3 && token.split('.').all(base64url)
}

/// The token of a `Bearer` credential (scheme case-insensitive), `None` for other schemes.
fn bearer_token(header: &[u8]) -> Option<Result<&str, AuthError>> {
    let header = header.trim_ascii();
    let (scheme, token) = match header.iter().position(|b| *b == b' ') {
        Some(space) => (&header[..space], &header[space + 1..]),
        None => (header, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(match std::str::from_utf8(token.trim_ascii()) {
        Ok("") => Err(AuthError::InvalidToken(JwtError::Malformed("empty token"))),
        Ok(token) => Ok(token),
        Err(_) => Err(AuthError::InvalidToken(JwtError::Malformed("not UTF-8"))),
    })
}

/// `auth.jwt`'s key for a verifier config error.
fn jwt_field(field: &'static str) -> &'static str {
    match field {
        "" => "jwt",
        "issuer" => "jwt.issuer",
        "audience" => "jwt.audience",
        "user_claim" => "jwt.user_claim",
        "groups_claim" => "jwt.groups_claim",
        "hs256_secret" => "jwt.hs256_secret",
        _ => "jwt.jwks_file",
    }
}

/// The principal a verified token's `claims` name, established by `method`: its teams and region as `mapping` says,
/// and its token's expiry.
fn token_principal(mapping: &ClaimMapping, claims: &Claims, method: AuthMethod) -> Principal {
    Principal {
        name: claims.user.as_str().into(),
        teams: mapping.teams(claims).into(),
        method,
        expires: Some(claims.expires),
        credential: 0,
        region: mapping.region(claims),
    }
}

/// `auth.oidc`'s key for a provider config error.
fn oidc_field(field: &'static str) -> &'static str {
    match field {
        "issuer" => "oidc.issuer",
        "audience" => "oidc.audience",
        "user_claim" => "oidc.user_claim",
        "groups_claim" => "oidc.groups_claim",
        "refresh" => "oidc.refresh",
        _ => "oidc",
    }
}

/// A digest of a password hash, to tell whether a reload changed a user's password.
fn fingerprint(password_hash: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(password_hash.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
}

/// The current minute since the epoch and the seconds left in it.
fn current_minute() -> (u64, u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (now / 60, 60 - now % 60)
}
