//! Certificate enrollment (`auth.enroll`): `POST /enroll`, sent in origin-form to a TLS proxy listener, turns a
//! valid `auth.oidc` token and a CSR into a short-lived client certificate from the clients CA, so the forward proxy
//! can be used with mTLS and no password (`tollgate login --cert`).
//!
//! The proxy door hands origin-form requests on the enrollment listener here; the answer is JSON, and the exchange
//! is recorded like every other (`request::finish`: the audit record names the user) and counted in
//! `tollgate_enrollments_total{result}`. The certificate names the user as `auth.mtls` reads it (CN, SAN e-mail when
//! the name is an address, SAN URI `spiffe://tollgate/user/NAME`) and carries the token's first team as its OU:
//! teams are taken from the token when the certificate is issued and bound to it until it expires.

use std::net::IpAddr;
use std::time::SystemTime;

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::certs::{CertError, Leaf};
use crate::config::enroll::Enrollment;
use crate::config::Config;
use crate::http1::body::Framing;
use crate::http1::head::RequestHead;
use crate::identity::{AuthError, AuthMethod, Principal};
use crate::metrics::Enrollment as Outcome;
use crate::request::door::Door;
use crate::request::finish::{Exchange, Held};
use crate::shared::Shared;
use crate::stream::Stream;
use crate::tls::CertIdentity;

/// The path of the enrollment endpoint.
pub const PATH: &str = "/enroll";
/// Largest request body read (a CSR with an RSA-4096 key is under 2 KiB).
pub const MAX_BODY: u64 = 16 * 1024;
/// A larger body is refused without being read (the connection closes); up to this much is read and dropped.
const MAX_DISCARDED: u64 = 1024 * 1024;

/// Why an enrollment was refused: the status, the error code in the JSON body, and a message for the user.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("too many failed authentications from this address: try again in {0} s")]
    Throttled(u64),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("send the body with a Content-Length")]
    LengthRequired,
    #[error("only POST {PATH} is served here; proxy requests are absolute-form or CONNECT")]
    NotFound,
    #[error("{PATH} takes POST")]
    MethodNotAllowed,
    #[error("the client closed the connection before the request body arrived")]
    ClientClosed,
    #[error("signing the certificate failed: {0}")]
    Internal(String),
}

impl Refusal {
    fn status(&self) -> u16 {
        match self {
            Refusal::Unauthenticated(_) => 401,
            Refusal::Throttled(_) => 429,
            Refusal::Forbidden(_) => 403,
            Refusal::BadRequest(_) | Refusal::ClientClosed => 400,
            Refusal::TooLarge => 413,
            Refusal::LengthRequired => 411,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed => 405,
            Refusal::Internal(_) => 500,
        }
    }

    /// The `error` code of the JSON body, and the audit reason.
    fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "invalid_token",
            Refusal::Throttled(_) => "too_many_attempts",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::BadRequest(_) | Refusal::ClientClosed => "invalid_request",
            Refusal::TooLarge => "body_too_large",
            Refusal::LengthRequired => "length_required",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::Internal(_) => "server_error",
        }
    }
}

/// What the client asked for in the body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    /// A PEM `CERTIFICATE REQUEST` (PKCS#10) whose key the client keeps.
    csr: Option<String>,
    /// `true`: tollgate makes the key and returns it (prefer a CSR: the key then never leaves the client).
    #[serde(default)]
    generate: bool,
}

/// Serves one origin-form request on the enrollment listener; returns the exchange to record (its answer held)
/// and whether the connection may serve another request.
pub async fn serve(
    shared: &Shared,
    config: &Config,
    enrollment: &Enrollment,
    client: &mut Stream,
    buf: &mut BytesMut,
    head: RequestHead,
    client_address: IpAddr,
) -> (Exchange, bool) {
    let mut exchange = Exchange::new(shared.next_request_id(), Door::Forward);
    exchange.method = head.method().to_owned();
    exchange.set_path(head.target());
    let mut keep_alive = head.keep_alive();
    let answered = async {
        let body = read_body(config, client, buf, &head, &mut keep_alive).await?;
        if exchange.path.as_deref() != Some(PATH) {
            return Err(Refusal::NotFound);
        }
        if head.method() != "POST" {
            return Err(Refusal::MethodNotAllowed);
        }
        let principal = authenticate(config, &head, client_address).await?;
        exchange.principal = Some(principal.clone());
        exchange.region = principal.region.clone();
        issue(config, enrollment, &principal, &body)
    }
    .await;
    let mut retry_after = None;
    let (status, document, result) = match answered {
        Ok(issued) => {
            tracing::info!(
                id = %exchange.id,
                user = %issued.user,
                serial = %issued.serial,
                not_after = %issued.not_after,
                "client certificate issued"
            );
            (200, issued.document, Outcome::Issued)
        }
        Err(refusal) => {
            exchange.decision = "deny";
            exchange.reason = refusal.code();
            exchange.error = Some(refusal.to_string());
            match refusal {
                Refusal::ClientClosed => keep_alive = false,
                Refusal::Throttled(seconds) => retry_after = Some(seconds),
                _ => {}
            }
            let result = match refusal {
                Refusal::Unauthenticated(_) | Refusal::Throttled(_) => Outcome::Unauthenticated,
                _ => Outcome::Invalid,
            };
            let document = json!({"error": refusal.code(), "message": refusal.to_string()});
            (refusal.status(), document, result)
        }
    };
    shared.metrics.enrollment(result);
    exchange.status = status;
    let body = document.to_string();
    exchange.bytes_down = body.len() as u64;
    exchange.held = Held::Answer(response(status, &body, &exchange.id, keep_alive, retry_after));
    (exchange, keep_alive)
}

/// What an issuance wrote into the answer.
struct Issued {
    user: String,
    serial: String,
    not_after: String,
    document: Value,
}

/// Reads the body, bounded: a `Content-Length` up to [`MAX_BODY`]. A body left unread closes the connection.
async fn read_body(
    config: &Config,
    client: &mut Stream,
    buf: &mut BytesMut,
    head: &RequestHead,
    keep_alive: &mut bool,
) -> Result<Vec<u8>, Refusal> {
    let length = match head.framing {
        Framing::Empty => return Ok(Vec::new()),
        Framing::Length(length) if length <= MAX_BODY => length as usize,
        Framing::Length(length) if length <= MAX_DISCARDED => {
            // Read and dropped, so the client (still sending) gets the answer rather than a reset connection.
            discard(config, client, buf, length as usize).await.inspect_err(|_| *keep_alive = false)?;
            return Err(Refusal::TooLarge);
        }
        Framing::Length(_) => {
            *keep_alive = false;
            return Err(Refusal::TooLarge);
        }
        Framing::Chunked | Framing::UntilClose => {
            *keep_alive = false;
            return Err(Refusal::LengthRequired);
        }
    };
    let timeout = config.server.header_read_timeout;
    while buf.len() < length {
        match tokio::time::timeout(timeout, client.read_buf(buf)).await {
            Ok(Ok(1..)) => {}
            _ => {
                *keep_alive = false;
                return Err(Refusal::ClientClosed);
            }
        }
    }
    Ok(buf.split_to(length).to_vec())
}

/// Reads `length` body bytes and drops them, a buffer at a time.
async fn discard(config: &Config, client: &mut Stream, buf: &mut BytesMut, length: usize) -> Result<(), Refusal> {
    let mut left = length;
    loop {
        let taken = left.min(buf.len());
        let _ = buf.split_to(taken);
        left -= taken;
        if left == 0 {
            return Ok(());
        }
        match tokio::time::timeout(config.server.header_read_timeout, client.read_buf(buf)).await {
            Ok(Ok(1..)) => {}
            _ => return Err(Refusal::ClientClosed),
        }
    }
}

/// The user of the request's `Authorization: Bearer` token, verified by `auth.oidc`; a failure counts toward
/// `auth.failed_auth_limit` for `client_address`, as on the proxy.
async fn authenticate(config: &Config, head: &RequestHead, client_address: IpAddr) -> Result<Principal, Refusal> {
    let header = head.header("authorization").ok_or_else(|| {
        Refusal::Unauthenticated(
            "send Authorization: Bearer <token from the identity provider> (tollgate login)".into(),
        )
    })?;
    let token = std::str::from_utf8(header)
        .ok()
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Refusal::Unauthenticated("the Authorization header must be Bearer <token>".into()))?;
    let identity = &config.identity;
    let verified = identity.attempt(client_address, || identity.bearer_principal(token, SystemTime::now())).await;
    let principal = verified.map_err(|error| match error {
        AuthError::Throttled { retry_after_secs } => Refusal::Throttled(retry_after_secs),
        error => Refusal::Unauthenticated(format!("token refused: {error}")),
    })?;
    if principal.method != AuthMethod::Oidc {
        return Err(Refusal::Unauthenticated("enrollment takes a token from the auth.oidc issuer".into()));
    }
    Ok(principal)
}

/// Signs a certificate for `principal` from the body's CSR (or a key made here), as the JSON answer.
fn issue(config: &Config, enrollment: &Enrollment, principal: &Principal, body: &[u8]) -> Result<Issued, Refusal> {
    let request: Request = serde_json::from_slice(body).map_err(|error| {
        Refusal::BadRequest(format!(
            "the body must be JSON {{\"csr\": \"<PEM CSR>\"}} or {{\"generate\": true}}: {error}"
        ))
    })?;
    let user = principal.name.to_string();
    if config.identity.certificate_identity() == CertIdentity::SanEmail && !user.contains('@') {
        return Err(Refusal::Forbidden(format!(
            "the user name {user:?} is not an e-mail address, so a certificate could not name it as auth.mtls \
             (identity: san_email) reads it: use an e-mail user_claim (auth.oidc.user_claim), or auth.mtls.identity: cn"
        )));
    }
    let team = principal.teams.first().map(|team| team.to_string());
    let mut leaf = Leaf::client(&user, team.as_deref()).map_err(|error| match error {
        CertError::InvalidName { what, value, reason } => {
            let what = if what == "--team" { "team" } else { "user name" };
            Refusal::Forbidden(format!("a certificate cannot carry the {what} {value:?}: {reason}"))
        }
        error => Refusal::Internal(error.to_string()),
    })?;
    leaf.validity = enrollment.validity;
    let (certificate, key) = match (request.csr, request.generate) {
        (Some(_), true) => return Err(Refusal::BadRequest("send either csr or generate, not both".into())),
        (None, false) => {
            return Err(Refusal::BadRequest("send csr (a PEM CERTIFICATE REQUEST) or generate: true".into()))
        }
        (Some(csr), false) => {
            let (public_key, subject_public_key_info) = check_csr(&csr)?;
            let certificate = enrollment
                .ca
                .issue_for_key(&leaf, &public_key, &subject_public_key_info)
                .map_err(|error| Refusal::Internal(error.to_string()))?;
            (certificate, None)
        }
        (None, true) => {
            let (certificate, key) =
                enrollment.ca.issue(&leaf).map_err(|error| Refusal::Internal(error.to_string()))?;
            (certificate, Some(key))
        }
    };
    let (serial, not_after) = describe(&certificate).ok_or_else(|| Refusal::Internal("unreadable".into()))?;
    let mut document = json!({
        "certificate": format!("{certificate}{}", enrollment.ca.cert_pem()),
        "ca": enrollment.ca.cert_pem(),
        "user": user,
        "teams": principal.teams.iter().map(|team| team.to_string()).collect::<Vec<_>>(),
        "serial": serial,
        "not_after": not_after,
    });
    if let Some(key) = key {
        document["key"] = Value::String(key);
    }
    Ok(Issued { user, serial, not_after, document })
}

/// Parses a PEM CSR, checks its key type and verifies its signature (the client holds the key): ECDSA P-256 or
/// P-384, Ed25519, or RSA of 2048 bits or more. Returns the key and its DER SubjectPublicKeyInfo; the CSR's subject
/// and extensions are ignored (the token names the user).
fn check_csr(pem: &str) -> Result<(rcgen::PublicKey, Vec<u8>), Refusal> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;

    let bad = |message: String| Refusal::BadRequest(format!("csr: {message}"));
    let der = match rustls_pemfile::read_one_from_slice(pem.as_bytes()) {
        Ok(Some((rustls_pemfile::Item::Csr(der), _))) => der,
        Ok(_) => return Err(bad("not a PEM CERTIFICATE REQUEST".into())),
        Err(error) => return Err(bad(format!("invalid PEM: {error:?}"))),
    };
    let (_, parsed) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|error| bad(format!("not a PKCS#10 certificate request: {error}")))?;
    let key_info = &parsed.certification_request_info.subject_pki;
    let algorithm = key_info.algorithm.algorithm.to_id_string();
    let curve = key_info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|oid| oid.to_id_string());
    match (algorithm.as_str(), curve.as_deref(), key_info.parsed()) {
        // id-ecPublicKey on P-256 or P-384.
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7" | "1.3.132.0.34"), _) => {}
        // Ed25519.
        ("1.3.101.112", _, _) => {}
        ("1.2.840.113549.1.1.1", _, Ok(PublicKey::RSA(rsa))) if rsa_bits(rsa.modulus) >= 2048 => {}
        ("1.2.840.113549.1.1.1", _, _) => return Err(bad("an RSA key must have at least 2048 bits".into())),
        _ => return Err(bad("the key must be ECDSA P-256 or P-384, Ed25519, or RSA (2048 bits or more)".into())),
    }
    // After the key type: a key too weak to verify with would otherwise read as a bad signature.
    parsed.verify_signature().map_err(|_| bad("its signature does not verify with its own key".into()))?;
    let subject_public_key_info = key_info.raw.to_vec();
    let params =
        rcgen::CertificateSigningRequestParams::from_der(&der).map_err(|error| bad(format!("unusable: {error}")))?;
    Ok((params.public_key, subject_public_key_info))
}

/// The bit length of an RSA modulus (big-endian, possibly with leading zero bytes).
fn rsa_bits(modulus: &[u8]) -> usize {
    let modulus = &modulus[modulus.iter().take_while(|b| **b == 0).count()..];
    modulus.first().map_or(0, |first| modulus.len() * 8 - first.leading_zeros() as usize)
}

/// The serial (hex) and notAfter (RFC 3339) of a PEM certificate.
fn describe(pem: &str) -> Option<(String, String)> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let not_after = chrono::DateTime::from_timestamp(parsed.validity().not_after.timestamp(), 0)?;
    Some((parsed.raw_serial_as_string().replace(':', ""), not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
}

/// An HTTP/1.1 answer with a JSON body.
fn response(status: u16, body: &str, request_id: &str, keep_alive: bool, retry_after: Option<u64>) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         x-request-id: {request_id}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("www-authenticate: Bearer realm=\"tollgate\"\r\n");
    }
    if let Some(seconds) = retry_after {
        head.push_str(&format!("retry-after: {seconds}\r\n"));
    }
    if status == 405 {
        head.push_str("allow: POST\r\n");
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_moduli_are_measured_in_bits_without_leading_zeros() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(rsa_bits(&[0x01, 0x00]), 9);
        assert_eq!(rsa_bits(&[0x00]), 0);
    }

    #[test]
    fn a_csr_is_refused_unless_pem_signed_and_of_a_usable_key_type() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(vec![]).unwrap().serialize_request(&key).unwrap().pem().unwrap();
        assert!(check_csr(&csr).is_ok());
        assert!(check_csr("not pem").unwrap_err().to_string().contains("CERTIFICATE REQUEST"));
        // One flipped byte in the signature.
        let der = rustls_pemfile::read_one_from_slice(csr.as_bytes()).unwrap().unwrap().0;
        let rustls_pemfile::Item::Csr(der) = der else { panic!("a CSR") };
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        let tampered = pem_csr(&bytes);
        assert!(check_csr(&tampered).unwrap_err().to_string().contains("signature"), "{tampered}");
    }

    fn pem_csr(der: &[u8]) -> String {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"))
    }
}
