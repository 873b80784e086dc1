//! `audit.siem` and `audit.pseudonymize` compiled: each sink's endpoint parsed, its spool directory its own, its
//! name unique, the HEC token present, and the pseudonym key read. Errors name the key:
//! `("audit.siem[1].spool.dir", "is also the spool of audit.siem[0]")`.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::file::{self, PseudonymField, SiemKind, SpoolFull};

/// One SIEM sink, checked.
#[derive(Debug, Clone)]
pub struct SiemSink {
    /// In metrics (`sink` label) and logs.
    pub name: Arc<str>,
    pub kind: SiemKind,
    pub endpoint: Endpoint,
    pub token: Option<String>,
    /// Splunk HEC only.
    pub index: Option<String>,
    pub spool: Spool,
    pub batch: Batch,
    pub gzip: bool,
    pub retry_max: Duration,
    pub timeout: Duration,
    /// The upstream trust (`upstream.trust`, `upstream.client_cert`) for `https://` and `tls://` endpoints.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where a sink delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The HTTP request target (path and query); empty for syslog.
    pub path: String,
    /// The URL without user information, for logs.
    pub display: String,
}

/// A sink's spool, checked.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    /// Bytes.
    pub max: u64,
    pub on_full: SpoolFull,
}

/// A sink's batch, checked.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub records: usize,
    pub bytes: u64,
    pub wait: Duration,
}

/// `audit.pseudonymize`, with its key loaded.
#[derive(Debug, Clone)]
pub struct Pseudonymize {
    pub fields: Vec<PseudonymField>,
    pub key: ring::hmac::Key,
    /// SHA-256 of the key, to tell whether a reload changed it.
    pub key_fingerprint: [u8; 32],
}

impl SiemSink {
    /// The settings a restart would change (everything but the TLS trust), for reload to compare.
    pub fn settings(&self) -> impl PartialEq + '_ {
        let spool = (&self.spool.dir, self.spool.max, self.spool.on_full);
        let batch = (self.batch.records, self.batch.bytes, self.batch.wait);
        (
            &self.name,
            self.kind,
            &self.endpoint,
            &self.token,
            &self.index,
            spool,
            batch,
            self.gzip,
            self.retry_max,
            self.timeout,
        )
    }
}

/// The smallest spool: one batch of ordinary records must fit with room to spare.
const SPOOL_MIN: u64 = 64 * 1024;
/// The shortest pseudonym key.
const KEY_MIN: usize = 16;

/// Compiles `audit.siem`; `tls` is the upstream trust.
pub fn compile_sinks(audit: &file::Audit, tls: &Arc<rustls::ClientConfig>) -> Result<Vec<SiemSink>, (String, String)> {
    if !audit.siem.is_empty() && audit.file.is_none() {
        let message = "needs audit.file: records reach the SIEM spools from the audit file's writer, after the file";
        return Err(("audit.siem".to_owned(), message.to_owned()));
    }
    let mut sinks: Vec<SiemSink> = Vec::with_capacity(audit.siem.len());
    for (index, sink) in audit.siem.iter().enumerate() {
        let key = |field: &str| format!("audit.siem[{index}].{field}");
        let (endpoint, secure) = parse_url(sink.kind, &sink.url).map_err(|message| (key("url"), message))?;
        let token = sink.token.clone().filter(|token| !token.trim().is_empty());
        if sink.kind == SiemKind::SplunkHec && token.is_none() {
            return Err((
                key("token"),
                "a Splunk HEC sink needs its token (e.g. token: \"${SPLUNK_HEC_TOKEN}\")".into(),
            ));
        }
        if sink.kind == SiemKind::Syslog && token.is_some() {
            return Err((key("token"), "syslog has no token".into()));
        }
        if sink.kind != SiemKind::SplunkHec && sink.index.is_some() {
            return Err((key("index"), "only a splunk_hec sink has an index".into()));
        }
        let name: Arc<str> = match &sink.name {
            Some(name) if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                return Err((key("name"), format!("invalid name \"{name}\": letters, digits, - _ . only")));
            }
            Some(name) => name.as_str().into(),
            None => {
                let base = sink.kind.as_str();
                let mut name = base.to_owned();
                let mut number = 2;
                while sinks.iter().any(|other| *other.name == *name) {
                    name = format!("{base}-{number}");
                    number += 1;
                }
                name.into()
            }
        };
        if let Some(other) = sinks.iter().position(|other| other.name == name) {
            return Err((key("name"), format!("\"{name}\" is also the name of audit.siem[{other}]")));
        }
        if sink.spool.dir.is_empty() {
            return Err((key("spool.dir"), "must not be empty".into()));
        }
        let dir = normalize(Path::new(&sink.spool.dir));
        if let Some(other) = sinks.iter().position(|other| other.spool.dir == dir) {
            return Err((
                key("spool.dir"),
                format!("is also the spool of audit.siem[{other}]: each sink needs its own"),
            ));
        }
        if sink.spool.max.0 < SPOOL_MIN {
            return Err((key("spool.max"), format!("must be at least {}KiB", SPOOL_MIN / 1024)));
        }
        let batch = Batch { records: sink.batch.records, bytes: sink.batch.bytes.0, wait: sink.batch.wait.0 };
        if !(1..=100_000).contains(&batch.records) {
            return Err((key("batch.records"), "must be from 1 to 100000".into()));
        }
        if !(1024..=64 << 20).contains(&batch.bytes) {
            return Err((key("batch.bytes"), "must be from 1KiB to 64MiB".into()));
        }
        if batch.bytes > sink.spool.max.0 / 4 {
            return Err((key("batch.bytes"), "must be at most a quarter of spool.max".into()));
        }
        if sink.retry_max.0 < Duration::from_millis(100) {
            return Err((key("retry_max"), "must be at least 100ms".into()));
        }
        if sink.timeout.0.is_zero() {
            return Err((key("timeout"), "must be greater than zero".into()));
        }
        sinks.push(SiemSink {
            name,
            kind: sink.kind,
            endpoint,
            token,
            index: sink.index.clone(),
            spool: Spool { dir, max: sink.spool.max.0, on_full: sink.spool.on_full },
            batch,
            gzip: sink.gzip,
            retry_max: sink.retry_max.0,
            timeout: sink.timeout.0,
            tls: secure.then(|| tls.clone()),
        });
    }
    Ok(sinks)
}

/// Compiles `audit.pseudonymize`, reading its key file.
pub fn compile_pseudonymize(audit: &file::Audit) -> Result<Option<Pseudonymize>, (String, String)> {
    let Some(pseudonymize) = &audit.pseudonymize else { return Ok(None) };
    if audit.siem.is_empty() {
        return Err(("audit.pseudonymize".into(), "applies to the SIEM copies only: configure audit.siem".into()));
    }
    if pseudonymize.fields.is_empty() {
        return Err(("audit.pseudonymize.fields".into(), "name at least one of user, client, team, session".into()));
    }
    let key = std::fs::read(&pseudonymize.key)
        .map_err(|error| ("audit.pseudonymize.key".to_owned(), format!("cannot read {}: {error}", pseudonymize.key)))?;
    let key = key.trim_ascii();
    if key.len() < KEY_MIN {
        let message = format!("{} holds {} bytes: the key needs at least {KEY_MIN}", pseudonymize.key, key.len());
        return Err(("audit.pseudonymize.key".into(), message));
    }
    let mut fields = pseudonymize.fields.clone();
    fields.dedup();
    let key_fingerprint = ring::digest::digest(&ring::digest::SHA256, key).as_ref().try_into().expect("32 bytes");
    Ok(Some(Pseudonymize { fields, key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), key_fingerprint }))
}

/// The endpoint of `text` for a sink of `kind`, and whether it speaks TLS.
fn parse_url(kind: SiemKind, text: &str) -> Result<(Endpoint, bool), String> {
    let url = url::Url::parse(text).map_err(|error| format!("invalid URL \"{text}\": {error}"))?;
    let (secure, default_port) = match (kind, url.scheme()) {
        (SiemKind::SplunkHec | SiemKind::Https, "https") => (true, 443),
        (SiemKind::SplunkHec | SiemKind::Https, "http") => (false, 80),
        (SiemKind::Syslog, "tls") => (true, 6514),
        (SiemKind::Syslog, "tcp") => (false, 514),
        (SiemKind::Syslog, scheme) => {
            return Err(format!(
                "unsupported scheme \"{scheme}\" for syslog: write tls://HOST:PORT or tcp://HOST:PORT"
            ));
        }
        (_, scheme) => return Err(format!("unsupported scheme \"{scheme}\": write https://HOST[:PORT][/PATH]")),
    };
    let host = match url.host() {
        Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(format!("\"{text}\" names no host")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("user information in the URL is not used: put a token in token".into());
    }
    if url.fragment().is_some() {
        return Err(format!("\"{text}\" has a fragment"));
    }
    let port = url.port().unwrap_or(default_port);
    let path = match kind {
        SiemKind::Syslog if url.path().trim_start_matches('/').is_empty() && url.query().is_none() => String::new(),
        SiemKind::Syslog => return Err(format!("\"{text}\": a syslog URL has no path")),
        SiemKind::SplunkHec => {
            // The collector's event endpoint, unless the URL names it already.
            let base = url.path().trim_end_matches('/');
            let path = if base.ends_with("/services/collector/event") || base.ends_with("/services/collector") {
                base.to_owned()
            } else {
                format!("{base}/services/collector/event")
            };
            match url.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            }
        }
        SiemKind::Https => match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        },
    };
    let display = format!("{}://{}:{port}{path}", url.scheme(), url.host_str().unwrap_or_default());
    Ok((Endpoint { host, port, path, display }, secure))
}

/// `path` without `.` components and trailing slashes, so `var/spool/` and `./var/spool` are one directory.
fn normalize(path: &Path) -> PathBuf {
    path.components().filter(|component| *component != Component::CurDir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_per_kind() {
        let (hec, secure) = parse_url(SiemKind::SplunkHec, "https://splunk.corp:8088").unwrap();
        assert!(secure);
        assert_eq!(
            (hec.host.as_str(), hec.port, hec.path.as_str()),
            ("splunk.corp", 8088, "/services/collector/event")
        );
        let (named, _) = parse_url(SiemKind::SplunkHec, "https://splunk.corp/services/collector/event").unwrap();
        assert_eq!((named.port, named.path.as_str()), (443, "/services/collector/event"));
        let (syslog, secure) = parse_url(SiemKind::Syslog, "tls://siem.corp").unwrap();
        assert!(secure);
        assert_eq!((syslog.port, syslog.path.as_str()), (6514, ""));
        let (ndjson, secure) = parse_url(SiemKind::Https, "http://127.0.0.1:9000/ingest?x=1").unwrap();
        assert!(!secure);
        assert_eq!(ndjson.path, "/ingest?x=1");
        assert!(parse_url(SiemKind::Syslog, "https://siem.corp").unwrap_err().contains("tls://HOST:PORT"));
        assert!(parse_url(SiemKind::SplunkHec, "tcp://siem.corp").unwrap_err().contains("unsupported scheme"));
        assert!(parse_url(SiemKind::Https, "https://user:pw@siem.corp").is_err());
    }
}
