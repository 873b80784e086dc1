//! The canonical form of a request path, which every path rule, meter path and model check decides on, and which
//! is what goes upstream: a spelling cannot make tollgate check one path while the upstream serves another.
//!
//! Canonical: percent-encoded unreserved characters decoded (`%76` is `v`), other escapes kept with upper-case
//! hex, dot segments resolved (`/a/./b/../c` is `/a/c`), empty segments removed (`//`), no trailing slash but
//! for `/` itself. Refused with 400: an encoded `/` or `\` (servers disagree on what they mean), a raw `\`,
//! control characters (encoded or not), a malformed escape, and `..` above the root.

use std::borrow::Cow;

/// Why a path cannot be made canonical.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("an encoded / or \\ in the path is refused: servers disagree on what it means")]
    EncodedSeparator,
    #[error("a backslash in the path is refused")]
    Backslash,
    #[error("control characters in the path are refused")]
    Control,
    #[error("the path climbs above the root (..)")]
    AboveRoot,
}

/// The canonical form of `path` (without its query); borrowed when it already is canonical.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/').skip(1) {
        let segment = decode_unreserved(raw)?;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => segments.push(segment),
        }
    }
    let mut canonical = String::with_capacity(path.len());
    for segment in &segments {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    Ok(Cow::Owned(canonical))
}

/// The fast path: no escape, no empty or dot segment, no trailing slash. Refuses what no form may hold.
fn is_canonical(path: &[u8]) -> Result<bool, PathError> {
    let mut canonical = true;
    for (index, &byte) in path.iter().enumerate() {
        match byte {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b'%' => canonical = false,
            b'/' => {
                let next = &path[index + 1..];
                let segment_end = next.iter().position(|&b| b == b'/').unwrap_or(next.len());
                let segment = &next[..segment_end];
                if (segment.is_empty() && index + 1 != path.len() || segment.is_empty() && index != 0)
                    || segment == b"."
                    || segment == b".."
                {
                    canonical = false;
                }
            }
            _ => {}
        }
    }
    Ok(canonical)
}

/// Decodes the escapes of unreserved characters in one segment; other escapes stay, in upper-case hex.
fn decode_unreserved(segment: &str) -> Result<String, PathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'%' {
            out.push(bytes[at]);
            at += 1;
            continue;
        }
        let hex = bytes.get(at + 1..at + 3).ok_or(PathError::BadEscape)?;
        let decoded = match (hex_value(hex[0]), hex_value(hex[1])) {
            (Some(high), Some(low)) => high << 4 | low,
            _ => return Err(PathError::BadEscape),
        };
        match decoded {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => out.push(b),
            b => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
        }
        at += 3;
    }
    // Only ASCII escapes were replaced, by ASCII: the rest is the segment's own UTF-8, untouched.
    Ok(String::from_utf8(out).expect("ASCII replaced by ASCII in a str stays UTF-8"))
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for path in ["/", "/v1/messages", "/v1/messages/count_tokens", "/api/claude_code/settings", "/a.b/c~d_e-f"] {
            assert!(matches!(canonical(path), Ok(Cow::Borrowed(p)) if p == path), "{path}");
        }
    }

    #[test]
    fn every_spelling_of_a_path_has_one_canonical_form() {
        for spelling in [
            "/v1/messages/",
            "//v1/messages",
            "/v1//messages",
            "/v1/./messages",
            "/v1/x/../messages",
            "/v1/messages/.",
            "/%76%31/messages",
            "/v1/%6d%65ssages",
            "/v1/%6D%65ssages/",
            "/v1/%2e/messages",
            "/v1/x/%2E%2E/messages",
            "/./v1/messages",
        ] {
            assert_eq!(canonical(spelling).as_deref(), Ok("/v1/messages"), "{spelling}");
        }
        assert_eq!(canonical("//").as_deref(), Ok("/"));
        assert_eq!(canonical("/v1/..").as_deref(), Ok("/"));
        assert_eq!(canonical("/a%3fb").as_deref(), Ok("/a%3Fb"), "a reserved escape stays, in upper case");
        assert_eq!(canonical("/caf%C3%A9/").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canonical("/café/").as_deref(), Ok("/café"));
    }

    #[test]
    fn spellings_servers_disagree_on_are_refused() {
        for (path, error) in [
            ("/v1%2Fmessages", PathError::EncodedSeparator),
            ("/v1%2fmessages", PathError::EncodedSeparator),
            ("/v1%5Cmessages", PathError::EncodedSeparator),
            ("/v1\\messages", PathError::Backslash),
            ("/v1/%00", PathError::Control),
            ("/v1/\u{7f}", PathError::Control),
            ("/v1/%zz", PathError::BadEscape),
            ("/v1/%4", PathError::BadEscape),
            ("/..", PathError::AboveRoot),
            ("/v1/../../x", PathError::AboveRoot),
            ("v1/messages", PathError::NotAbsolute),
        ] {
            assert_eq!(canonical(path), Err(error), "{path}");
        }
    }
}
