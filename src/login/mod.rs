//! `tollgate login` and `tollgate token`: single sign-on on the developer's machine, outside the gateway.
//!
//! `login` signs in with the OAuth 2.0 device authorization grant (RFC 8628) against the organisation's identity
//! provider and stores the refresh token and the last access token in the user config directory (`store`);
//! `token` prints a current access token for Claude Code's `apiKeyHelper` and `proxyAuthHelper`, refreshing it
//! when it is close to expiry. `login --cert` then has the TLS proxy listener issue a short-lived client
//! certificate (`POST /enroll`, see `crate::enroll`) for a key made here, which never leaves the machine.

pub mod error;
pub mod oauth;
pub mod store;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use serde_json::Value;

use crate::config::{file, yaml};
pub use error::LoginError;
use oauth::{Client, Tokens};
use store::{seconds, ConfigDirectory, Credentials};

/// The scopes asked for when none are configured: the user's identity, and a refresh token.
pub const DEFAULT_SCOPE: &str = "openid profile email offline_access";
/// A cached access token is refreshed once it has less than this left (or half its lifetime, when shorter): a
/// token printed by `tollgate token` stays valid at least this long, so helper caches up to it never hold a dead one.
pub const REFRESH_MARGIN: u64 = 5 * 60;

/// What `tollgate login` was given; what is missing comes from `--config`, `config.yaml`, then the last sign-in.
#[derive(Debug, Default)]
pub struct LoginOptions {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    /// CA files to trust besides the system roots.
    pub ca: Vec<PathBuf>,
    /// A gateway config whose `auth.oidc` names the issuer and `device_client_id`.
    pub config: Option<PathBuf>,
    /// Also enroll a client certificate (`--cert`).
    pub certificate: bool,
    /// The TLS proxy listener that enrolls (`https://HOST:PORT`).
    pub proxy: Option<String>,
}

/// `tollgate login`: signs in (or, with `--cert`, reuses a token it can get without the user), stores the
/// credentials, and with `--cert` enrolls a client certificate. Tells the user what to do on `out`.
pub async fn login(options: LoginOptions, out: &mut dyn Write) -> Result<(), LoginError> {
    let directory = ConfigDirectory::locate()?;
    let settings = directory.settings()?;
    let previous = directory.credentials().ok().flatten();
    let gateway = match &options.config {
        Some(path) => Some(gateway_oidc(path)?),
        None => None,
    };
    let issuer = options
        .issuer
        .or_else(|| gateway.as_ref().map(|oidc| oidc.issuer.clone()))
        .or(settings.issuer)
        .or_else(|| previous.as_ref().map(|p| p.issuer.clone()))
        .ok_or_else(|| {
            LoginError::Usage(format!(
                "no identity provider: pass --issuer URL (or --config, or issuer: in {}/config.yaml)",
                directory.path().display()
            ))
        })?;
    let client_id = options
        .client_id
        .or_else(|| gateway.as_ref().and_then(|oidc| oidc.device_client_id.clone()))
        .or(settings.client_id)
        .or_else(|| previous.as_ref().filter(|p| p.issuer == issuer).map(|p| p.client_id.clone()))
        .ok_or_else(|| {
            LoginError::Usage(
                "no client ID: pass --client-id ID (or --config with auth.oidc.device_client_id, or client_id: in \
                 config.yaml)"
                    .into(),
            )
        })?;
    let scope = options
        .scope
        .or(settings.scope)
        .or_else(|| previous.as_ref().map(|p| p.scope.clone()))
        .unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
    let ca = if !options.ca.is_empty() {
        absolute(&options.ca)?
    } else if !settings.ca.is_empty() {
        absolute(&settings.ca.iter().map(PathBuf::from).collect::<Vec<_>>())?
    } else {
        previous.as_ref().map(|p| p.ca.clone()).unwrap_or_default()
    };
    let proxy = options.proxy.or(settings.proxy).or_else(|| previous.as_ref().and_then(|p| p.proxy.clone()));
    if options.certificate && proxy.is_none() {
        return Err(LoginError::Usage(
            "--cert needs --proxy https://HOST:PORT (the TLS proxy listener that enrolls certificates)".into(),
        ));
    }
    let client = Client::new(&ca)?;

    // With --cert, a token the stored credentials still give (without the user) is enough.
    let reusable = previous.filter(|p| options.certificate && p.issuer == issuer && p.client_id == client_id);
    let stored = match reusable {
        Some(credentials) => fresh_token(&directory, &client, credentials).await.ok(),
        None => None,
    };
    let mut credentials = match stored {
        Some(credentials) => credentials,
        None => {
            let credentials = sign_in(&client, &issuer, &client_id, &scope, ca.clone(), out).await?;
            writeln!(out, "Signed in as {}.", token_user(&credentials.access_token)).map_err(output)?;
            credentials
        }
    };
    credentials.proxy = proxy.clone();
    directory.save(&credentials)?;
    writeln!(out, "Credentials saved in {}.", directory.credentials_path().display()).map_err(output)?;
    if let Some(proxy) = proxy.filter(|_| options.certificate) {
        enroll(&directory, &client, &proxy, &credentials.access_token, out).await?;
    }
    Ok(())
}

/// `tollgate token`: a current access token, refreshed (and the refresh token rotation stored) when it has less
/// than the margin left.
pub async fn token() -> Result<String, LoginError> {
    let directory = ConfigDirectory::locate()?;
    let credentials = directory.credentials()?.ok_or_else(|| LoginError::LoginNeeded("not signed in".into()))?;
    let client = Client::new(&credentials.ca)?;
    Ok(fresh_token(&directory, &client, credentials).await?.access_token)
}

/// The device authorization grant, from discovery to tokens; prints where to approve.
async fn sign_in(
    client: &Client,
    issuer: &str,
    client_id: &str,
    scope: &str,
    ca: Vec<PathBuf>,
    out: &mut dyn Write,
) -> Result<Credentials, LoginError> {
    let endpoints = client.discover(issuer).await?;
    let device_endpoint = endpoints
        .device_authorization_endpoint
        .as_deref()
        .ok_or_else(|| LoginError::Provider(format!("{issuer} offers no device authorization endpoint (RFC 8628)")))?;
    let device = client.authorize_device(device_endpoint, client_id, scope).await?;
    match &device.verification_uri_complete {
        Some(complete) => writeln!(
            out,
            "To sign in, open this page in a browser and check that it shows the code:\n  {complete}\n  code: {}",
            device.user_code
        ),
        None => writeln!(
            out,
            "To sign in, open this page in a browser and enter the code:\n  {}\n  code: {}",
            device.verification_uri, device.user_code
        ),
    }
    .and_then(|()| writeln!(out, "Waiting for the sign-in (the code expires in {} s)…", device.expires_in))
    .and_then(|()| out.flush())
    .map_err(output)?;
    let tokens = client.poll_device(&endpoints.token_endpoint, client_id, &device).await?;
    let signed_in = Credentials {
        issuer: issuer.to_owned(),
        client_id: client_id.to_owned(),
        token_endpoint: endpoints.token_endpoint,
        scope: scope.to_owned(),
        ca,
        proxy: None,
        refresh_token: None,
        access_token: String::new(),
        expires_at: 0,
        lifetime: 0,
    };
    Ok(with_tokens(signed_in, tokens))
}

/// The stored access token while it has more than the margin left; else refreshed, stored and returned. A
/// refresh token refused by the IdP is removed (the next call says to sign in at once); when the IdP cannot be
/// reached, a token that has not expired yet is still returned, with a warning.
async fn fresh_token(
    directory: &ConfigDirectory,
    client: &Client,
    stored: Credentials,
) -> Result<Credentials, LoginError> {
    let now = SystemTime::now();
    let margin = REFRESH_MARGIN.min(stored.lifetime / 2);
    if stored.remaining(now) > margin {
        return Ok(stored);
    }
    let Some(refresh_token) = stored.refresh_token.clone() else {
        return Err(LoginError::LoginNeeded(
            "the access token has expired and there is no refresh token (ask for the offline_access scope)".into(),
        ));
    };
    match client.refresh(&stored.token_endpoint, &stored.client_id, &refresh_token, &stored.scope).await {
        Ok(tokens) => {
            let refreshed = with_tokens(stored, tokens);
            directory.save(&refreshed)?;
            Ok(refreshed)
        }
        Err(LoginError::LoginNeeded(reason)) => {
            // Another `tollgate token` may have used the refresh token first (rotation): take what it stored.
            if let Some(current) = directory.credentials()?.filter(|c| c.refresh_token.as_ref() != Some(&refresh_token))
            {
                if current.remaining(now) > margin {
                    return Ok(current);
                }
            }
            let forgotten = Credentials { refresh_token: None, expires_at: 0, ..stored };
            directory.save(&forgotten)?;
            Err(LoginError::LoginNeeded(reason))
        }
        Err(error) if stored.remaining(now) > 0 => {
            eprintln!(
                "tollgate: warning: could not refresh the token ({error}); it expires in {} s",
                stored.remaining(now)
            );
            Ok(stored)
        }
        Err(error) => Err(error),
    }
}

/// `credentials` with the tokens of a token answer; a refresh token the IdP did not rotate (none in the answer) is
/// kept.
fn with_tokens(credentials: Credentials, tokens: Tokens) -> Credentials {
    let lifetime = tokens.expires_in.unwrap_or(3_600);
    Credentials {
        refresh_token: tokens.refresh_token.or(credentials.refresh_token),
        access_token: tokens.access_token,
        expires_at: seconds(SystemTime::now()) + lifetime,
        lifetime,
        ..credentials
    }
}

/// `--cert`: a fresh P-256 key made here, its CSR sent to `POST {proxy}/enroll`, the certificate and key written
/// (0600), and the settings that use them printed.
async fn enroll(
    directory: &ConfigDirectory,
    client: &Client,
    proxy: &str,
    access_token: &str,
    out: &mut dyn Write,
) -> Result<(), LoginError> {
    let failed = |what: &str, error: rcgen::Error| LoginError::Usage(format!("{what}: {error}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| failed("key", e))?;
    // The proxy names the certificate after the token's user; the CSR only proves the key.
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&key))
        .and_then(|request| request.pem())
        .map_err(|e| failed("certificate request", e))?;
    let answer = client.enroll(proxy, access_token, &csr).await?;
    let field = |name: &str| answer.get(name).and_then(Value::as_str).map(str::to_owned);
    let certificate = field("certificate")
        .filter(|pem| pem.contains("BEGIN CERTIFICATE"))
        .ok_or_else(|| LoginError::Provider(format!("{proxy}: the enrollment answer holds no certificate")))?;
    let (cert_path, key_path) = directory.certificate_paths();
    directory.write(&key_path, key.serialize_pem().as_bytes())?;
    directory.write(&cert_path, certificate.as_bytes())?;
    let (cert, key) = (cert_path.display(), key_path.display());
    writeln!(
        out,
        "Certificate for {} valid until {}: {cert} (key {key})\n\n\
         Claude Code (settings.json \"env\", or the shell):\n  \
         HTTPS_PROXY={proxy}\n  CLAUDE_CODE_CLIENT_CERT={cert}\n  CLAUDE_CODE_CLIENT_KEY={key}\n\
         curl:\n  curl --proxy {proxy} --proxy-cert {cert} --proxy-key {key} https://api.anthropic.com/\n\
         git:\n  git config --global http.proxy {proxy}\n  git config --global http.proxySSLCert {cert}\n  \
         git config --global http.proxySSLKey {key}",
        field("user").unwrap_or_default(),
        field("not_after").unwrap_or_default(),
    )
    .map_err(output)
}

/// The `auth.oidc` section of a gateway config, read without compiling the rest (its files need not exist here).
fn gateway_oidc(path: &Path) -> Result<file::Oidc, LoginError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| LoginError::Usage(format!("{shown}: {e}")))?;
    let located = |e: yaml::Error| {
        LoginError::Usage(format!("{shown}:{}:{}: {}: {}", e.mark.line, e.mark.col, e.path, e.message))
    };
    let root = yaml::parse(&text).map_err(located)?;
    let child = |node: &yaml::Node, key: &str| match &node.value {
        yaml::Value::Map(entries) => entries
            .iter()
            .find(|(name, _)| matches!(&name.value, yaml::Value::Scalar { text, .. } if text == key))
            .map(|(_, value)| value.clone()),
        _ => None,
    };
    let oidc = child(&root, "auth")
        .and_then(|auth| child(&auth, "oidc"))
        .ok_or_else(|| LoginError::Usage(format!("{shown}: has no auth.oidc")))?;
    yaml::deserialize(&oidc, &|name| std::env::var(name).ok()).map_err(|e| {
        LoginError::Usage(format!("{shown}:{}:{}: auth.oidc.{}: {}", e.mark.line, e.mark.col, e.path, e.message))
    })
}

/// Paths made absolute, so the stored credentials work from any directory.
fn absolute(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoginError> {
    paths
        .iter()
        .map(|path| std::fs::canonicalize(path).map_err(|e| LoginError::Usage(format!("--ca {}: {e}", path.display()))))
        .collect()
}

/// Who a token names, for the user to read (not verified: the gateway verifies).
fn token_user(token: &str) -> String {
    let claims: Option<Value> = token
        .split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice(&json).ok());
    ["email", "preferred_username", "upn", "sub"]
        .iter()
        .find_map(|claim| claims.as_ref()?.get(claim)?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "(a token without a user claim)".to_owned())
}

fn output(error: std::io::Error) -> LoginError {
    LoginError::Usage(format!("writing the output: {error}"))
}
