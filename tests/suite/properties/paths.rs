//! Paths: the canonical request path (`request::path`) is idempotent, holds no dot or empty segment and no
//! escape of an unreserved character, and means what a naive full decoding of the original means — or the path is
//! refused exactly when that reading finds an encoded separator, a control character, a bad escape or a climb
//! above the root. Tool paths (`actions::paths`) resolve like `std::path` and no spelling of a denied file slips
//! past a `file:` deny rule (`actions::rules`).

use std::collections::BTreeMap;
use std::path::{Component, Path};

use proptest::prelude::*;
use tollgate::actions::paths::{normalise_path, Anchor};
use tollgate::actions::rules::{ActionPolicy, GlobalActions, Lists, Mode, Verdict};
use tollgate::actions::tools::{Action, Kind};
use tollgate::request::path::canonical;

use super::{config, corpus};

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

/// Every escape decoded, segment by segment; `None` where tollgate must refuse.
fn naive_decoded_segments(path: &str) -> Option<Vec<Vec<u8>>> {
    if !path.starts_with('/') || path.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f) {
        return None;
    }
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    for segment in path.split('/').skip(1) {
        let bytes = segment.as_bytes();
        let mut decoded = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == b'%' {
                let high = hex(*bytes.get(at + 1)?)?;
                let low = hex(*bytes.get(at + 2)?)?;
                let byte = high << 4 | low;
                if byte == b'/' || byte == b'\\' || byte < 0x20 || byte == 0x7f {
                    return None;
                }
                decoded.push(byte);
                at += 3;
            } else {
                decoded.push(bytes[at]);
                at += 1;
            }
        }
        match &decoded[..] {
            b"" | b"." => {}
            b".." => {
                resolved.pop()?;
            }
            _ => resolved.push(decoded),
        }
    }
    Some(resolved)
}

fn check_request_path(path: &str) -> Result<(), TestCaseError> {
    let ours = canonical(path);
    let reference = naive_decoded_segments(path);
    let canonical = match (ours, reference) {
        (Err(_), None) => return Ok(()),
        (Ok(canonical), Some(reference)) => {
            let decoded = naive_decoded_segments(&canonical);
            prop_assert_eq!(decoded, Some(reference), "{:?} became {:?}", path, canonical);
            canonical.into_owned()
        }
        (ours, reference) => {
            return Err(TestCaseError::fail(format!("{path:?}: tollgate {ours:?}, the naive decoding {reference:?}")))
        }
    };
    // Idempotent.
    let again = tollgate::request::path::canonical(&canonical).map(|again| again.into_owned());
    prop_assert_eq!(again, Ok(canonical.clone()));
    if canonical != "/" {
        prop_assert!(!canonical.ends_with('/'));
        for segment in canonical.split('/').skip(1) {
            prop_assert!(!matches!(segment, "" | "." | ".."), "{:?}", canonical);
        }
    }
    let bytes = canonical.as_bytes();
    for (at, _) in canonical.match_indices('%') {
        let escape = &bytes[at + 1..at + 3];
        prop_assert!(escape.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)), "{:?}", canonical);
        let byte = hex(escape[0]).unwrap_or(0) << 4 | hex(escape[1]).unwrap_or(0);
        prop_assert!(
            !(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)),
            "{:?} kept an unreserved escape",
            canonical
        );
    }
    Ok(())
}

fn request_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        3 => "[a-zA-Z0-9._~-]{0,6}",
        3 => prop::sample::select(vec![
            "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F", "%5c", "%5C", "%41", "%7e", "%7E", "%zz",
            "%4", "%", "%00", "%7f", "%1f", "%c3%a4", "ä", "\\", "\t", "a%20b", "%3b", ";", "~", "%25", "%2e%2e%2f",
            "%252e", "%u002e", "%e2%80%ae", "..;", "%3F", "?", "#", "%23", "%ff", "%FF",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,4}",
    ];
    (any::<bool>(), prop::collection::vec(segment, 0..8)).prop_map(|(rooted, segments)| {
        let joined = segments.join("/");
        if rooted {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

/// A POSIX path resolved with `std::path` components: the reading `normalise_path` must give.
fn std_reading(input: &str) -> String {
    let mut names: Vec<String> = Vec::new();
    for component in Path::new(input).components() {
        match component {
            Component::Normal(name) => names.push(name.to_string_lossy().into_owned()),
            Component::ParentDir => {
                names.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    format!("/{}", names.join("/"))
}

fn tool_path() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        3 => "[a-zA-Z0-9_-]{1,6}",
        2 => prop::sample::select(vec![
            "", ".", "..", "...", "a.", "a ", "a::$DATA", "a:b", "~", "~user", "\\", "..\\..", "C:", "etc", "passwd",
            ".env", "secrets",
        ])
        .prop_map(str::to_owned),
    ];
    (
        prop::sample::select(vec!["", "/", "//", "~/", "./", "../", "C:\\", "c:/", "\\\\server\\share\\"]),
        prop::collection::vec(name, 0..7),
    )
        .prop_map(|(start, names)| format!("{start}{}", names.join(if start.contains('\\') { "\\" } else { "/" })))
}

fn check_tool_path(input: &str) -> Result<(), TestCaseError> {
    let normal = normalise_path(input);
    for reading in normal.readings() {
        // Resolved: below its root, no `.` or `..` name and no empty one.
        let bytes = reading.as_bytes();
        let rest = if let Some(rest) = reading.strip_prefix("//") {
            rest
        } else if bytes.len() >= 3 && bytes[1] == b':' && bytes[2] == b'/' {
            &reading[3..]
        } else if let Some(rest) = reading.strip_prefix('/') {
            rest
        } else if reading.starts_with('~') {
            reading.split_once('/').map_or("", |(_, rest)| rest)
        } else if reading == "." {
            ""
        } else {
            reading
        };
        if !rest.is_empty() {
            for name in rest.split('/') {
                prop_assert!(!matches!(name, "" | "." | ".."), "{:?} reads as {:?}", input, reading);
            }
        }
        // Each reading is its own normal form. (A UNC root is one only when written with backslashes, and a
        // relative POSIX path such as `./C:/x` reads as `C:/x`, which read again is a Windows path.)
        let looks_windows = bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'/';
        if !reading.starts_with("//") && (!looks_windows || normal.anchor == Anchor::Absolute) {
            prop_assert_eq!(&normalise_path(reading).path, reading, "{:?}", input);
        }
    }
    if input.starts_with('/') && !input.starts_with("//") && !input.contains(['\\', ':']) {
        prop_assert_eq!(normal.anchor, Anchor::Absolute);
        prop_assert_eq!(&normal.path, &std_reading(input), "{:?}", input);
    }
    if normal.anchor == Anchor::Absolute {
        prop_assert!(normal.readings().all(|r| r.starts_with('/') || r.as_bytes().get(1) == Some(&b':')));
    }
    Ok(())
}

/// Spellings of `/etc/<name>` a client might write to read the file past a rule.
fn spelling(name: &str, style: u8, noise: &str) -> String {
    match style {
        0 => format!("/etc/{name}"),
        1 => format!("//etc//./{name}"),
        2 => format!("/{noise}/../etc/{name}"),
        3 => format!("/etc/{noise}/../{name}"),
        4 => format!("/etc/{name}."),
        5 => format!("/etc/{name}::$DATA"),
        6 => format!("\\etc\\{name}"),
        7 => format!("/etc\\{noise}\\..\\{name}"),
        8 => format!("/etc/{name} "),
        _ => format!("/../../etc/./{name}"),
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// The canonical request path agrees with a naive full decoding, and is refused exactly when it must be.
    #[test]
    fn request_paths_agree_with_a_naive_decoding(path in request_path()) {
        check_request_path(&path)?;
    }

    /// Tool paths resolve to their own normal form, like `std::path` does for a plain POSIX path.
    #[test]
    fn tool_paths_resolve_like_std_path(path in tool_path()) {
        check_tool_path(&path)?;
    }

    /// Whatever spelling names `/etc/<file>`, a `file:read:/etc/**` deny denies it, whatever allows sit beside it.
    #[test]
    fn no_spelling_slips_past_a_file_deny(
        name in "[a-z][a-z0-9_]{0,8}",
        style in 0u8..10,
        noise in "[a-z]{1,5}",
        allow in prop::sample::subsequence(vec!["file:read:/etc/**", "file:*", "*", "file:read:**"], 0..3),
        default_deny in any::<bool>(),
    ) {
        let allow: Vec<String> = allow.into_iter().map(str::to_owned).collect();
        let lists = Lists::compile("actions", &["file:read:/etc/**".to_owned()], &allow, &[]).expect("compiles");
        let default = if default_deny { Verdict::Deny } else { Verdict::Allow };
        let policy = ActionPolicy::new(GlobalActions { mode: Mode::Enforce, default, lists }, BTreeMap::new());
        let path = spelling(&name, style, &noise);
        let action = Action { kind: Kind::FileRead, tool: "Read".to_owned(), target: Some(path.clone()) };
        let decision = policy.decide(&action, &[]);
        prop_assert_eq!(decision.verdict, Verdict::Deny, "{:?}: {:?}", path, decision);
        prop_assert!(decision.rule.starts_with("actions.deny[0]"), "{:?}: {:?}", path, decision);
    }
}

/// The hand-picked request and tool paths, through the same checks.
#[test]
fn corpus_replays() {
    for (name, bytes) in corpus("paths") {
        let text = String::from_utf8(bytes).expect("UTF-8");
        check_request_path(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_tool_path(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
