//! `auth.enroll`, compiled: the listener that serves `POST /enroll` (`crate::enroll`), the clients CA that signs, and
//! how long certificates are valid; checked against the listeners and `auth.mtls` so the certificates issued are
//! accepted by the listener and name the token's user.

use std::sync::Arc;
use std::time::Duration;

use super::file;
use crate::certs::Ca;
use crate::tls::{CertIdentity, ClientAuth};

/// The shortest and longest `validity` allowed.
pub const MIN_VALIDITY: Duration = Duration::from_secs(5 * 60);
pub const MAX_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3_600);

/// `auth.enroll`, compiled: where enrollment is served, the CA that signs, and for how long.
#[derive(Debug)]
pub struct Enrollment {
    /// The TLS proxy listener that serves `POST /enroll`.
    pub listener: Arc<str>,
    /// The clients CA.
    pub ca: Ca,
    /// How long issued certificates are valid.
    pub validity: Duration,
}

impl Enrollment {
    /// Checks `auth.enroll` against the rest of `parsed`: `auth.oidc` is configured, the listener is a TLS proxy
    /// listener that asks for client certificates from a `client_ca` holding this CA (else the certificates issued
    /// would be refused at its handshake), and `validity` is within bounds. Errors are `(key path, message)`.
    pub fn compile(enroll: &file::Enroll, parsed: &file::File) -> Result<Enrollment, (String, String)> {
        let error = |key: &str, message: String| (format!("auth.enroll.{key}"), message);
        if parsed.auth.oidc.is_none() {
            return Err((
                "auth.enroll".to_owned(),
                "issues certificates to auth.oidc users: configure auth.oidc".into(),
            ));
        }
        if parsed.auth.mtls.identity == CertIdentity::SanUri {
            return Err((
                "auth.enroll".to_owned(),
                "enrolled certificates name the user by SAN e-mail and CN: with auth.mtls.identity: san_uri the \
                 principal would be their SAN URI (spiffe://tollgate/user/NAME), not the token's user; use san_email \
                 or cn"
                    .into(),
            ));
        }
        let validity = enroll.validity.0;
        if !(MIN_VALIDITY..=MAX_VALIDITY).contains(&validity) {
            return Err(error("validity", "must be from 5m to 7d: enrolled certificates are short-lived".into()));
        }
        let ca = Ca::load(enroll.client_ca.cert.as_ref(), enroll.client_ca.key.as_ref())
            .map_err(|e| error("client_ca", e.to_string()))?;
        let Some(listener) = parsed.listeners.iter().find(|l| l.name == enroll.listener) else {
            return Err(error("listener", format!("no listener is named {:?}", enroll.listener)));
        };
        let Some(tls) = listener.tls.as_ref().filter(|_| listener.mode == file::ListenerMode::Proxy) else {
            return Err(error("listener", format!("{:?} must be a TLS proxy listener (with tls:)", enroll.listener)));
        };
        let client_ca = match (tls.client_auth, tls.client_ca.as_deref()) {
            (ClientAuth::None, _) | (_, None) => {
                return Err(error(
                    "listener",
                    format!(
                        "{:?} must ask for client certificates (tls.client_auth: optional, tls.client_ca) to accept \
                         the certificates it issues",
                        enroll.listener
                    ),
                ))
            }
            (_, Some(client_ca)) => client_ca,
        };
        let trusted = crate::tls::load_certs(client_ca.as_ref()).map_err(|e| error("listener", e))?;
        if !trusted.iter().any(|cert| cert == ca.cert_der()) {
            return Err(error(
                "client_ca",
                format!(
                    "{} is not in the tls.client_ca ({client_ca}) of listener {:?}: it would refuse the certificates \
                     issued",
                    enroll.client_ca.cert, enroll.listener
                ),
            ));
        }
        Ok(Enrollment { listener: listener.name.as_str().into(), ca, validity })
    }
}
