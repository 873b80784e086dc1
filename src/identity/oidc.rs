//! OpenID Connect (`auth.oidc`): bearer tokens from the organisation's identity provider (IdP), verified with the
//! keys its discovery document names.
//!
//! The keys are fetched over HTTPS with the `upstream.trust` roots: discovery at
//! `{issuer}/.well-known/openid-configuration` (whose `issuer` must be the configured one), then its `jwks_uri`.
//! They are fetched when first needed, again in the background once `refresh` has passed, and at once when a token
//! names a key id the set lacks (a key rotation) — at most once per `UNKNOWN_KEY_INTERVAL`, so tokens with made-up
//! key ids cannot make tollgate hammer the IdP. A failed fetch keeps the keys already known: tokens signed with them
//! still verify while the IdP is down. Only when no key has ever been fetched is a token refused for that reason.
//! Fetches are counted (`tollgate_oidc_refresh_total{result}`) and an outage is logged once, when it starts, and
//! once more when it ends.
//!
//! The known keys belong to the issuer, not to one config snapshot: a reload that keeps the issuer keeps them. Time
//! is the gateway's clock, the `now` each request is checked at.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;

use super::jwt::{ClaimRules, Claims, JwtConfigError, JwtError, KeySet, SignedToken};
use crate::config::file;
use crate::tls;

/// Refreshes caused by unknown key ids happen at most this often.
pub const UNKNOWN_KEY_INTERVAL: Duration = Duration::from_secs(30);
/// A whole fetch (discovery and keys: connect, TLS, request, body) gives up after this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest discovery or JWKS document read.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// The identity provider of `auth.oidc`, and the keys known for it.
pub struct Provider {
    rules: ClaimRules,
    source: Arc<Source>,
}

/// Where the keys come from, and what is known: shared with the background refreshes.
struct Source {
    issuer: String,
    refresh: Duration,
    /// Trusts the `upstream.trust` roots; no client certificate, HTTP/1.1.
    tls: Arc<rustls::ClientConfig>,
    cache: Arc<KeyCache>,
}

/// The keys known for one issuer, kept across config snapshots.
#[derive(Default)]
struct KeyCache {
    known: RwLock<Known>,
    /// One fetch at a time; requests that wait for it use its result.
    fetching: Arc<tokio::sync::Mutex<()>>,
    fetched: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct Known {
    keys: Option<Arc<KeySet>>,
    /// The last successful fetch.
    fetched_at: Option<SystemTime>,
    /// The last fetch attempted, successful or not.
    attempted_at: Option<SystemTime>,
    /// The last fetch an unknown key id caused.
    unknown_key_at: Option<SystemTime>,
    /// Fetches finished (successful or not), to tell whether one finished while a request waited.
    generation: u64,
    /// Why the last fetch failed, while the IdP is unreachable (`None` while it answers).
    outage: Option<String>,
    /// The authorization code grant's endpoints from the last successful discovery that named both.
    code_endpoints: Option<CodeEndpoints>,
}

/// Fetch counts since the process started, for `tollgate_oidc_refresh_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshCounts {
    pub ok: u64,
    pub error: u64,
}

/// What one fetch found, for `tollgate check --online`.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub jwks_uri: String,
    /// Each key's id and algorithm.
    pub keys: Vec<String>,
    /// The discovery document's device authorization and token endpoints, when it names them.
    pub device_authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    /// The authorization endpoint (the browser sign-in of the authorization code grant), when discovery names it.
    pub authorization_endpoint: Option<String>,
}

/// The endpoints of the authorization code grant, as the last successful discovery named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeEndpoints {
    pub authorization: String,
    pub token: String,
}

/// The issuer's key caches, so a reload finds the keys the previous snapshot fetched.
static CACHES: Mutex<BTreeMap<String, Weak<KeyCache>>> = Mutex::new(BTreeMap::new());

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.source.issuer)
            .field("audience", &self.rules.audience)
            .field("refresh", &self.source.refresh)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Builds the provider from `auth.oidc`; its keys are fetched trusting the roots of `trust` (`upstream.trust`).
    /// Nothing is fetched yet.
    pub fn compile(config: &file::Oidc, trust: &file::Trust) -> Result<Provider, JwtConfigError> {
        let rules = ClaimRules::compile(
            &config.issuer,
            &config.audience,
            &config.user_claim,
            &config.groups_claim,
            config.leeway.0,
        )?;
        https_url(&config.issuer).map_err(|message| JwtConfigError { field: "issuer", message })?;
        if config.refresh.0 < UNKNOWN_KEY_INTERVAL {
            return Err(JwtConfigError {
                field: "refresh",
                message: format!("must be at least {}s", UNKNOWN_KEY_INTERVAL.as_secs()),
            });
        }
        let files = tls::UpstreamFiles {
            system_roots: trust.system_roots,
            extra_ca: trust.extra_ca.iter().map(std::path::PathBuf::from).collect(),
            client_cert: None,
        };
        let tls = tls::client_config(&files)
            .map_err(|message| JwtConfigError { field: "", message: format!("upstream.trust: {message}") })?;
        let cache = {
            let mut caches = CACHES.lock().unwrap_or_else(|p| p.into_inner());
            caches.retain(|_, cache| cache.strong_count() > 0);
            match caches.get(&config.issuer).and_then(Weak::upgrade) {
                Some(cache) => cache,
                None => {
                    let cache = Arc::new(KeyCache::default());
                    caches.insert(config.issuer.clone(), Arc::downgrade(&cache));
                    cache
                }
            }
        };
        let source = Source { issuer: config.issuer.clone(), refresh: config.refresh.0, tls, cache };
        Ok(Provider { rules, source: Arc::new(source) })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.source.issuer
    }

    /// How often the keys are fetched again.
    pub fn refresh_interval(&self) -> Duration {
        self.source.refresh
    }

    /// The configured audience.
    pub fn audience(&self) -> &str {
        &self.rules.audience
    }

    /// Checks `token` at `now`, fetching the keys first when none are known or the token names an unknown key.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, JwtError> {
        let signed = SignedToken::decode(token)?;
        let keys = self.source.keys_for(signed.kid()?, now).await?;
        signed.verify_with(&keys)?;
        self.rules.check(signed.payload()?, now)
    }

    /// Checks an ID token at `now` like `verify`, but with `audience` (a client ID) as the required `aud`.
    pub async fn verify_for(&self, token: &str, audience: &str, now: SystemTime) -> Result<Claims, JwtError> {
        let signed = SignedToken::decode(token)?;
        let keys = self.source.keys_for(signed.kid()?, now).await?;
        signed.verify_with(&keys)?;
        let rules = ClaimRules { audience: audience.to_owned(), ..self.rules.clone() };
        rules.check(signed.payload()?, now)
    }

    /// Fetches discovery and the keys now (whatever the schedule), keeps them, and says what was found.
    pub async fn probe(&self) -> Result<Discovered, String> {
        let _fetching = self.source.cache.fetching.lock().await;
        let result = self.source.fetch().await;
        let keys = result.as_ref().ok().map(|(_, keys)| keys.clone());
        self.source.settle(keys, result.as_ref().err().cloned(), false, SystemTime::now());
        result.map(|(discovered, _)| discovered)
    }

    /// The authorization and token endpoints discovery names (fetched now when no discovery has named them yet).
    pub async fn code_endpoints(&self) -> Result<CodeEndpoints, String> {
        if let Some(endpoints) = self.source.known().code_endpoints.clone() {
            return Ok(endpoints);
        }
        self.probe().await?;
        self.source.known().code_endpoints.clone().ok_or_else(|| {
            format!("discovery at {} names no authorization_endpoint and token_endpoint", self.source.issuer)
        })
    }

    /// `POST url` (an `https://` endpoint of this provider, e.g. the token endpoint) with a form body, trusting the
    /// `upstream.trust` roots: the status and the body (at most 1 MiB).
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<(http::StatusCode, Bytes), String> {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        match tokio::time::timeout(FETCH_TIMEOUT, self.source.send(http::Method::POST, url, body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
        }
    }

    /// Fetches counted since the process started (by every snapshot with this issuer).
    pub fn refresh_counts(&self) -> RefreshCounts {
        let cache = &self.source.cache;
        RefreshCounts { ok: cache.fetched.load(Ordering::Relaxed), error: cache.failed.load(Ordering::Relaxed) }
    }
}

impl Source {
    fn known(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.cache.known.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys to verify a token with key id `kid` against, at `now`.
    async fn keys_for(self: &Arc<Self>, kid: Option<&str>, now: SystemTime) -> Result<Arc<KeySet>, JwtError> {
        let since = |at: SystemTime| now.duration_since(at).unwrap_or_default();
        let (keys, generation) = {
            let known = self.known();
            if let Some(keys) = known.keys.as_ref().filter(|keys| keys.has(kid)) {
                let stale = known.fetched_at.is_none_or(|at| since(at) >= self.refresh);
                let resting = known.attempted_at.is_some_and(|at| since(at) < UNKNOWN_KEY_INTERVAL);
                let keys = keys.clone();
                drop(known);
                if stale && !resting {
                    self.refresh_in_background(now);
                }
                return Ok(keys);
            }
            (known.keys.clone(), known.generation)
        };
        // No keys yet, or a key id the set lacks: fetch now, once, and use what that fetch found.
        let _fetching = self.cache.fetching.lock().await;
        let known_now = {
            let known = self.known();
            let finished_meanwhile = known.generation != generation;
            let unknown_key = keys.is_some();
            let allowed = match (unknown_key, known.unknown_key_at, known.attempted_at) {
                // A rotation: at most one fetch per interval for unknown key ids.
                (true, Some(at), _) => since(at) >= UNKNOWN_KEY_INTERVAL,
                (true, None, _) => true,
                // Nothing known: try again once the last failure is an interval old.
                (false, _, Some(at)) => since(at) >= UNKNOWN_KEY_INTERVAL,
                (false, _, None) => true,
            };
            if finished_meanwhile || !allowed {
                Some((known.keys.clone(), known.outage.clone()))
            } else {
                None
            }
        };
        let (keys, outage) = match known_now {
            Some(known) => known,
            None => {
                let unknown_key = keys.is_some();
                let result = self.fetch().await;
                let (fetched, error) = match result {
                    Ok((_, keys)) => (Some(keys), None),
                    Err(error) => (None, Some(error)),
                };
                self.settle(fetched, error, unknown_key, now);
                let known = self.known();
                (known.keys.clone(), known.outage.clone())
            }
        };
        keys.ok_or_else(|| JwtError::KeysUnavailable(outage.unwrap_or_else(|| "not fetched yet".to_owned())))
    }

    /// A scheduled refresh on its own task, unless a fetch is under way; requests go on with the keys they have.
    fn refresh_in_background(self: &Arc<Self>, now: SystemTime) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        // Taken before the task is spawned: requests arriving while one fetch runs spawn nothing.
        let Ok(fetching) = self.cache.fetching.clone().try_lock_owned() else { return };
        let source = self.clone();
        runtime.spawn(async move {
            let _fetching = fetching;
            let since = |at: SystemTime| now.duration_since(at).unwrap_or_default();
            let due = source.known().attempted_at.is_none_or(|at| since(at) >= UNKNOWN_KEY_INTERVAL);
            if due {
                let (keys, error) = match source.fetch().await {
                    Ok((_, keys)) => (Some(keys), None),
                    Err(error) => (None, Some(error)),
                };
                source.settle(keys, error, false, now);
            }
        });
    }

    /// Records one fetch, begun at `now`: new keys replace the old, a failure keeps them; counted, and logged when
    /// an outage starts or ends.
    fn settle(&self, keys: Option<Arc<KeySet>>, error: Option<String>, unknown_key: bool, now: SystemTime) {
        let mut known = self.cache.known.write().unwrap_or_else(|p| p.into_inner());
        known.attempted_at = Some(now);
        known.generation += 1;
        if unknown_key {
            known.unknown_key_at = Some(now);
        }
        match (keys, error) {
            (Some(keys), _) => {
                self.cache.fetched.fetch_add(1, Ordering::Relaxed);
                if known.outage.take().is_some() {
                    tracing::info!(issuer = %self.issuer, keys = keys.len(), "identity provider reachable again");
                }
                known.keys = Some(keys);
                known.fetched_at = Some(now);
            }
            (None, error) => {
                self.cache.failed.fetch_add(1, Ordering::Relaxed);
                let error = error.unwrap_or_else(|| "no keys".to_owned());
                if known.outage.is_none() {
                    let cached = known.keys.as_ref().map_or(0, |keys| keys.len());
                    tracing::warn!(issuer = %self.issuer, error = %error, cached_keys = cached,
                        "identity provider unreachable: tokens are verified with the keys fetched before \
                         (none: tokens are refused) until it answers again");
                }
                known.outage = Some(error);
            }
        }
    }

    /// Keeps the authorization code grant's endpoints of a discovery document that names both (as https URLs).
    fn remember_endpoints(&self, discovered: &Discovered) {
        let endpoints = match (&discovered.authorization_endpoint, &discovered.token_endpoint) {
            (Some(authorization), Some(token)) if https_url(authorization).is_ok() && https_url(token).is_ok() => {
                CodeEndpoints { authorization: authorization.clone(), token: token.clone() }
            }
            _ => return,
        };
        self.cache.known.write().unwrap_or_else(|p| p.into_inner()).code_endpoints = Some(endpoints);
    }

    /// Discovery, then the keys it names.
    async fn fetch(&self) -> Result<(Discovered, Arc<KeySet>), String> {
        let work = async {
            let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
            let discovery = self.get(&url).await.map_err(|e| format!("discovery {url}: {e}"))?;
            let document: Value =
                serde_json::from_slice(&discovery).map_err(|e| format!("discovery {url}: not JSON: {e}"))?;
            let field = |name: &str| document.get(name).and_then(Value::as_str).map(str::to_owned);
            match field("issuer") {
                Some(issuer) if issuer == self.issuer => {}
                Some(issuer) => {
                    return Err(format!(
                        "discovery {url} names issuer {issuer:?}, not the configured {:?}",
                        self.issuer
                    ))
                }
                None => return Err(format!("discovery {url} has no issuer")),
            }
            let jwks_uri = field("jwks_uri").ok_or_else(|| format!("discovery {url} has no jwks_uri"))?;
            https_url(&jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
            let body = self.get(&jwks_uri).await.map_err(|e| format!("keys {jwks_uri}: {e}"))?;
            let text = std::str::from_utf8(&body).map_err(|_| format!("keys {jwks_uri}: not UTF-8"))?;
            let keys = KeySet::parse(text).map_err(|e| format!("keys {jwks_uri}: {e}"))?;
            let discovered = Discovered {
                jwks_uri,
                keys: keys.describe(),
                device_authorization_endpoint: field("device_authorization_endpoint"),
                token_endpoint: field("token_endpoint"),
                authorization_endpoint: field("authorization_endpoint"),
            };
            self.remember_endpoints(&discovered);
            Ok((discovered, Arc::new(keys)))
        };
        match tokio::time::timeout(FETCH_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
        }
    }

    /// `GET url` over HTTPS; the body of a 200.
    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let (status, body) = self.send(http::Method::GET, url, String::new()).await?;
        if status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", status.as_u16()));
        }
        Ok(body)
    }

    /// `method url` over HTTPS, with `form` as an `application/x-www-form-urlencoded` body unless it is empty: the
    /// status and the body.
    async fn send(&self, method: http::Method, url: &str, form: String) -> Result<(http::StatusCode, Bytes), String> {
        let uri = https_url(url)?;
        let host = uri.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(host.clone()).map_err(|_| format!("{host:?} is not a server name"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(connection);
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")));
        if !form.is_empty() {
            request = request.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = request.body(Full::new(Bytes::from(form))).map_err(|e| format!("request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok((status, body.to_bytes()))
    }
}

/// `url` parsed, when it is an absolute `https://` URL with a host.
fn https_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must be an https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_with_a_host_are_fetched() {
        assert!(https_url("https://login.corp.example/tenant/v2.0").is_ok());
        assert!(https_url("http://login.corp.example").unwrap_err().contains("https://"));
        assert!(https_url("login.corp.example").is_err());
        assert!(https_url("https:///path").is_err());
    }
}
