//! Who a request comes from: a `Principal`, from Basic proxy credentials, a bearer JWT (`auth.jwt`), a client
//! certificate or the anonymous setting.
//!
//! Checked per request (keep-alive connections may change credentials between requests). Verifying an argon2id
//! hash costs milliseconds, so it runs on the blocking pool and a verified password is remembered as a keyed
//! digest that later requests compare in constant time.

mod basic;
mod error;
mod jwt;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use basic::{hash_password, BasicCredentials};
pub use error::AuthError;
pub use jwt::{Claims, JwtConfigError, JwtError, JwtVerifier};

use rustls_pki_types::CertificateDer;

use crate::config::file;
use crate::tls::{self, CertIdentity};

/// An identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub teams: Arc<[Arc<str>]>,
    pub method: AuthMethod,
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
}

impl AuthMethod {
    pub fn label(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Basic => "basic",
            AuthMethod::Mtls => "mtls",
            AuthMethod::Jwt => "jwt",
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
    jwt: Option<Bearer>,
}

/// `auth.jwt` compiled, with `auth.group_teams`.
#[derive(Debug)]
struct Bearer {
    verifier: JwtVerifier,
    group_teams: BTreeMap<String, Arc<str>>,
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
    /// Builds the directory from `auth` and the users of `auth.users_file` (already read).
    pub fn compile(auth: &file::Auth, users: &[file::User]) -> Result<Self, UserError> {
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
                group_teams: auth.group_teams.iter().map(|(g, t)| (g.clone(), Arc::from(t.as_str()))).collect(),
            }),
            None => None,
        };
        let anonymous = match auth.anonymous.as_str() {
            "deny" => None,
            name => Some(Principal { name: name.into(), teams: Arc::new([]), method: AuthMethod::Anonymous }),
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
        })
    }

    /// Identifies the caller from the raw `Proxy-Authorization` value, if any.
    pub async fn identify(&self, proxy_authorization: Option<&[u8]>, client: IpAddr) -> Result<Principal, AuthError> {
        let Some(header) = proxy_authorization else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        if let Some(token) = bearer_token(header) {
            if self.jwt.is_none() {
                return Err(AuthError::UnsupportedScheme);
            }
            self.check_throttle(client)?;
            return self.bearer_principal(token?, SystemTime::now()).inspect_err(|_| self.count_failure(client));
        }
        let credentials = BasicCredentials::parse(header)?;
        self.check_throttle(client)?;
        self.verify_password(&credentials.user, credentials.password, client).await
    }

    /// Identifies a gateway-listener caller: a bearer JWT in `Authorization` (with `auth.jwt`), or a user's
    /// password as the API key — `x-api-key` or a bearer value that is not a JWT — written `USER:PASSWORD`; else
    /// the anonymous principal.
    ///
    /// The key must name its user: a password alone could only be found by trying it against every user's
    /// argon2id hash, so one request with a wrong key would cost a hash per configured user.
    pub async fn identify_api(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
        client: IpAddr,
        now: SystemTime,
    ) -> Result<Principal, AuthError> {
        // SDKs send an API key as `Authorization: Bearer KEY` (the Python SDK) or as both headers (Claude
        // Code's apiKeyHelper): a bearer value that is not a JWT is taken as the API key.
        let bearer = match authorization {
            Some(header) => Some(bearer_token(header).ok_or(AuthError::UnsupportedScheme)??),
            None => None,
        };
        if let Some(token) = bearer.filter(|token| self.jwt.is_some() && looks_like_jwt(token)) {
            self.check_throttle(client)?;
            return self.bearer_principal(token, now).inspect_err(|_| self.count_failure(client));
        }
        let Some(key) = bearer.map(str::as_bytes).or(api_key) else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        self.check_throttle(client)?;
        let (user, password) = std::str::from_utf8(key)
            .map_err(|_| AuthError::MalformedKey("not UTF-8"))
            .and_then(|key| key.split_once(':').ok_or(AuthError::MalformedKey("write it USER:PASSWORD")))
            .inspect_err(|_| self.count_failure(client))?;
        self.verify_password(user, password.to_owned(), client).await
    }

    /// Checks `password` for `user`, through the verified cache when it can.
    async fn verify_password(&self, user: &str, password: String, client: IpAddr) -> Result<Principal, AuthError> {
        let Some(user) = self.users.get(user) else {
            // Spend the same work as a real check so that user names cannot be probed by timing.
            basic::verify_blocking(basic::DUMMY_HASH.into(), password).await;
            return Err(self.record_failure(client));
        };
        let digest = self.digest(password.as_bytes());
        if self.is_verified(&user.principal.name, &digest) {
            return Ok(user.principal.clone());
        }
        if basic::verify_blocking(user.password_hash.clone(), password).await {
            self.lock_verified().insert(user.principal.name.clone(), digest);
            Ok(user.principal.clone())
        } else {
            Err(self.record_failure(client))
        }
    }

    /// The principal a verified client certificate names (`auth.mtls`): its name from the SAN e-mail, SAN URI
    /// or CN, its teams from the OU (with `team_from: ou`) and from a configured user of the same name.
    /// `None` when the certificate lacks the configured field.
    pub fn certificate_principal(&self, certificate: &CertificateDer<'_>) -> Option<Principal> {
        let (name, organizational_unit) = tls::certificate_identity(certificate, self.certificate_identity)?;
        let mut teams: Vec<Arc<str>> = Vec::new();
        if let Some(team) = organizational_unit.filter(|_| self.team_from_ou) {
            teams.push(team.into());
        }
        if let Some(user) = self.users.get(name.as_str()) {
            teams.extend(user.principal.teams.iter().filter(|t| !teams.contains(t)).cloned().collect::<Vec<_>>());
        }
        Some(Principal { name: name.into(), teams: teams.into(), method: AuthMethod::Mtls })
    }

    /// The principal as this directory sees it now (for tunnels opened under an older config): a Basic user
    /// must still exist (with its current teams), an anonymous principal must still be the anonymous name.
    /// Certificate and token principals were proven by their credential and stay as they are.
    pub fn refresh(&self, principal: &Principal) -> Option<Principal> {
        match principal.method {
            AuthMethod::Basic => self.users.get(&*principal.name).map(|user| user.principal.clone()),
            AuthMethod::Anonymous => self.anonymous.clone().filter(|anonymous| anonymous.name == principal.name),
            _ => Some(principal.clone()),
        }
    }

    /// The principal a bearer JWT names (`auth.jwt`): the user claim, and the groups claim mapped through
    /// `auth.group_teams` (unknown groups are ignored). Also for `Authorization: Bearer` on gateway listeners.
    pub fn bearer_principal(&self, token: &str, now: SystemTime) -> Result<Principal, AuthError> {
        let bearer = self.jwt.as_ref().ok_or(AuthError::UnsupportedScheme)?;
        let claims = bearer.verifier.verify(token, now).map_err(AuthError::InvalidToken)?;
        let mut teams: Vec<Arc<str>> = Vec::new();
        for team in claims.groups.iter().filter_map(|g| bearer.group_teams.get(g)) {
            if !teams.contains(team) {
                teams.push(team.clone());
            }
        }
        Ok(Principal { name: claims.user.into(), teams: teams.into(), method: AuthMethod::Jwt })
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

    fn record_failure(&self, client: IpAddr) -> AuthError {
        self.count_failure(client);
        AuthError::Rejected
    }

    fn count_failure(&self, client: IpAddr) {
        if self.failed_auth_limit.is_some() {
            let (minute, _) = current_minute();
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if failures.len() > 100_000 {
                failures.retain(|_, (at, _)| *at == minute);
            }
            let entry = failures.entry(client).or_insert((minute, 0));
            if entry.0 != minute {
                *entry = (minute, 0);
            }
            entry.1 += 1;
        }
    }

    /// Number of configured users, for `tollgate check`'s summary.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive), `None` for other schemes.
/// Three base64url parts separated by dots: a compact JWT, not an API key.
fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.split('.').all(|part| !part.is_empty())
}

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

/// The current minute since the epoch and the seconds left in it.
fn current_minute() -> (u64, u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (now / 60, 60 - now % 60)
}
