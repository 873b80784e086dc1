//! Claude Code's managed-settings calls answered inside an intercepted tunnel: `GET /api/claude_code/settings`
//! and `GET /api/claude_code/policy_limits`, from `managed_settings` merged for the principal. Runs after `admit`
//! and the path check, before the upstream; where the config says nothing for the principal the call is
//! forwarded unchanged (Anthropic's signed answer stays intact).
//!
//! Only 200 and 304 are ever answered here: a 204 or 404 makes the client wipe its cached settings.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::Value;

use super::checksum;
use crate::config::settings::Kind;
use crate::config::Config;
use crate::identity::Principal;

/// The path of Claude Code's server-managed settings.
pub const SETTINGS_PATH: &str = "/api/claude_code/settings";
/// The path of Claude Code's policy limits.
pub const POLICY_LIMITS_PATH: &str = "/api/claude_code/policy_limits";

/// A local answer: 200 with the body, or 304 when the client already holds this checksum.
#[derive(Debug)]
pub struct Answer {
    pub kind: Kind,
    pub checksum: String,
    pub response: Response<Bytes>,
}

/// What the principal's client receives for `path`, as the body and its checksum; `None` = not one of the two
/// calls, or nothing configured for the principal.
pub fn body_for(config: &Config, teams: &[std::sync::Arc<str>], kind: Kind) -> Option<(String, String)> {
    let managed = config.managed_settings.as_ref()?;
    match kind {
        Kind::Settings => {
            let settings = managed.settings_for(teams)?;
            let checksum = checksum::checksum(&settings);
            // Anthropic's service answers with `uuid` = the checksum; the text of `settings` is the canonical one.
            let quoted = serde_json::to_string(&checksum).expect("a string always serializes");
            let body =
                format!("{{\"uuid\":{quoted},\"checksum\":{quoted},\"settings\":{}}}", checksum::canonical(&settings));
            Some((body, checksum))
        }
        Kind::PolicyLimits => {
            let limits: Value = managed.policy_limits_for(teams)?;
            // The client's `If-None-Match` is the checksum of the last body: the canonical text is that body.
            let body = checksum::canonical(&limits);
            let checksum = checksum::checksum_of_text(&body);
            Some((body, checksum))
        }
    }
}

/// Answers a managed-settings call locally when `managed_settings` covers it for `principal`.
pub fn answer(
    config: &Config,
    principal: &Principal,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    request_id: &str,
) -> Option<Answer> {
    if method != Method::GET {
        return None;
    }
    let kind = match path {
        SETTINGS_PATH => Kind::Settings,
        POLICY_LIMITS_PATH => Kind::PolicyLimits,
        _ => return None,
    };
    let (body, checksum) = body_for(config, &principal.teams, kind)?;
    let etag = HeaderValue::from_str(&format!("\"{checksum}\"")).expect("a checksum is a valid header value");
    let unchanged = headers.get_all(IF_NONE_MATCH).iter().any(|value| matches_etag(value.as_bytes(), &checksum));
    let mut response = if unchanged {
        Response::new(Bytes::new())
    } else {
        let mut response = Response::new(Bytes::from(body));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    };
    *response.status_mut() = if unchanged { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    let headers = response.headers_mut();
    headers.insert(ETAG, etag);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    headers.insert("request-id", request_id_header(request_id));
    Some(Answer { kind, checksum, response })
}

/// `If-None-Match` lists the checksum (quoted or not, weak or not), or is `*`.
fn matches_etag(value: &[u8], checksum: &str) -> bool {
    let Ok(text) = std::str::from_utf8(value) else { return false };
    text.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*" || tag.trim_matches('"') == checksum
    })
}

/// `request-id: req_tollgate_<id>`: the shape the client expects of an answer (`^req_[A-Za-z0-9_-]{1,36}$`).
fn request_id_header(request_id: &str) -> HeaderValue {
    let id: String =
        request_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').take(23).collect();
    HeaderValue::from_str(&format!("req_tollgate_{id}")).expect("ASCII letters, digits, _ and -")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms_are_understood() {
        let checksum = "sha256:ab";
        for value in ["\"sha256:ab\"", "sha256:ab", "W/\"sha256:ab\"", "\"x\", \"sha256:ab\"", "*"] {
            assert!(matches_etag(value.as_bytes(), checksum), "{value}");
        }
        for value in ["\"sha256:abc\"", "", "\"sha256:a\""] {
            assert!(!matches_etag(value.as_bytes(), checksum), "{value}");
        }
    }

    #[test]
    fn the_request_id_has_the_shape_the_client_expects() {
        let header = request_id_header("0123456789abcdef01234567-extra/");
        let text = header.to_str().unwrap();
        assert!(text.starts_with("req_tollgate_") && text.len() <= 40, "{text}");
        assert!(text[4..].chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }
}
