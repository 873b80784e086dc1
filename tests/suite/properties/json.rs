//! Request bodies: the facts read from a Messages API request (`llm::request`) against a naive reading of the
//! same JSON (duplicate keys refused, wrong types give nothing), and DLP (`llm::dlp`): a secret is found in a JSON
//! body, however its characters are escaped and wherever it falls against the decoder's 16-byte words, exactly
//! when a scan of the plain text finds it.

use std::sync::LazyLock;

use proptest::prelude::*;
use tollgate::config::file;
use tollgate::llm::dlp::{Dlp, BUILTIN_DETECTORS};
use tollgate::llm::request::RequestFacts;

use super::{config, corpus};

/// One top-level member of a generated request: its key, its JSON text, and what it means.
#[derive(Debug, Clone)]
struct Member {
    key: &'static str,
    text: String,
    meaning: Meaning,
}

#[derive(Debug, Clone, PartialEq)]
enum Meaning {
    /// A value the field cannot hold: the whole body gives nothing.
    Wrong,
    /// `null`: as if absent.
    Null,
    Model(String),
    Stream(bool),
    MaxTokens(u64),
    Batch(Vec<String>),
    /// A key tollgate does not read.
    Ignored,
}

fn json_string() -> impl Strategy<Value = (String, String)> {
    "[ -~\u{e9}\u{1f600}\n\t]{0,12}".prop_map(|text| (serde_json::to_string(&text).expect("a string"), text))
}

fn member() -> impl Strategy<Value = Member> {
    let wrong = prop::sample::select(vec!["1.5", "-1", "\"x\"", "[]", "{}", "true", "18446744073709551616"]);
    prop_oneof![
        json_string().prop_map(|(text, model)| Member { key: "model", text, meaning: Meaning::Model(model) }),
        any::<bool>().prop_map(|b| Member { key: "stream", text: b.to_string(), meaning: Meaning::Stream(b) }),
        any::<u64>().prop_map(|n| Member { key: "max_tokens", text: n.to_string(), meaning: Meaning::MaxTokens(n) }),
        prop::collection::vec(json_string(), 0..3).prop_map(|models| Member {
            key: "requests",
            text: format!(
                "[{}]",
                models
                    .iter()
                    .enumerate()
                    .map(|(i, (text, _))| format!(
                        r#"{{"custom_id":"r{i}","params":{{"model":{text},"max_tokens":1}}}}"#
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            meaning: Meaning::Batch(models.into_iter().map(|(_, model)| model).collect()),
        }),
        (prop::sample::select(vec!["model", "stream", "max_tokens", "requests"]), wrong.clone()).prop_filter_map(
            "a right value",
            |(key, text)| {
                let right = matches!((key, text), ("model", "\"x\"") | ("stream", "true") | ("requests", "[]"));
                (!right).then(|| Member { key, text: text.to_owned(), meaning: Meaning::Wrong })
            }
        ),
        prop::sample::select(vec!["model", "stream", "max_tokens", "requests"]).prop_map(|key| Member {
            key,
            text: "null".to_owned(),
            meaning: Meaning::Null
        }),
        Just(Member { key: "requests", text: r#"[{"custom_id":"r"}]"#.to_owned(), meaning: Meaning::Wrong }),
        Just(Member { key: "requests", text: r#"[{"params":{"model":1}}]"#.to_owned(), meaning: Meaning::Wrong }),
        (prop::sample::select(vec!["messages", "system", "metadata", "Model", "tools"]), wrong)
            .prop_map(|(key, text)| Member { key, text: text.to_owned(), meaning: Meaning::Ignored }),
    ]
}

/// The facts a naive reading of the members gives.
fn naive_facts(members: &[Member], length: usize) -> RequestFacts {
    let nothing = RequestFacts { estimated_input_tokens: length as u64 / 4, ..RequestFacts::default() };
    let mut facts = nothing.clone();
    let known = ["model", "stream", "max_tokens", "requests"];
    for key in known {
        if members.iter().filter(|member| member.key == key).count() > 1 {
            return nothing;
        }
    }
    for member in members {
        match &member.meaning {
            Meaning::Wrong => return nothing,
            Meaning::Model(model) => facts.model = Some(model.clone()),
            Meaning::Stream(stream) => facts.stream = *stream,
            Meaning::MaxTokens(n) => facts.max_tokens = Some(*n),
            Meaning::Batch(models) => facts.batch_models = models.clone(),
            Meaning::Null | Meaning::Ignored => {}
        }
    }
    facts
}

/// The built-in detectors and three custom ones, compiled once.
fn dlp() -> &'static Dlp {
    static DLP: LazyLock<Dlp> = LazyLock::new(compile_dlp);
    &DLP
}

fn compile_dlp() -> Dlp {
    Dlp::compile(&file::Dlp {
        action: file::DlpAction::Block,
        detectors: BUILTIN_DETECTORS.iter().map(|name| name.to_string()).collect(),
        custom: vec![
            file::CustomDetector { name: "falcon".to_owned(), regex: "FALCON-[0-9]{4}".to_owned() },
            file::CustomDetector { name: "emoji".to_owned(), regex: "😀".to_owned() },
            file::CustomDetector { name: "line-start".to_owned(), regex: "(?m)^internal:".to_owned() },
        ],
    })
    .expect("the detectors compile")
}

/// Pieces of text a request may hold: secrets, near misses and noise.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----", "-----BEGIN PUBLIC KEY-----",
            "AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPL", "xAKIAIOSFODNN7EXAMPLE",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "github_pat_11ABCDEFG0123456789_abcd",
            "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "378282246310005", "3782-822463-10005",
            "4111 1111 1111 1112", "0000 0000 0000 0000", "1700000000000", "123-45-6789", "000-45-6789", "123-45-678",
            "FALCON-1234", "FALCON-12", "😀", "internal:", "\\n", "\\", "\"", "\n", "\t", "\r", "\u{1}", "\u{7f}", "/",
            "é", "\u{2028}", "\u{fffd}",
        ])
        .prop_map(str::to_owned),
        2 => "[ -~]{0,8}",
        1 => "[0-9 -]{0,10}",
        1 => "[a-zA-Z0-9]{0,6}",
    ]
}

/// `text` as the inside of a JSON string, each character escaped one of the ways JSON allows, chosen by `choices`.
fn escape(text: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (index, c) in text.chars().enumerate() {
        let choice = choices.get(index % choices.len().max(1)).copied().unwrap_or(0);
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '\r' => Some("\\r"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '/' if choice % 2 == 0 => Some("\\/"),
            _ => None,
        };
        let must_escape = c == '"' || c == '\\' || (c as u32) < 0x20;
        if let Some(short) = short.filter(|_| must_escape || choice % 3 == 0) {
            out.push_str(short);
        } else if must_escape || choice % 3 == 1 {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let escaped = format!("\\u{unit:04x}");
                out.push_str(&if choice % 5 == 0 {
                    escaped.to_ascii_uppercase().replacen("\\U", "\\u", 1)
                } else {
                    escaped
                });
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn scan(dlp: &Dlp, body: &[u8]) -> Vec<String> {
    dlp.scan(body).iter().map(|name| name.to_string()).collect()
}

/// The escaped body and the plain text agree.
fn check_dlp(dlp: &Dlp, text: &str, choices: &[u8], padding: usize) -> Result<(), TestCaseError> {
    // The plain text between two bytes that are not JSON: scanned as it is.
    let plain = scan(dlp, format!("#{text}#").as_bytes());
    let body = format!(r#"{{"pad":"{}","text":"{}"}}"#, "p".repeat(padding), escape(text, choices));
    prop_assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "not JSON: {}", body);
    // The decoded body holds the text between two quotes, as the plain body holds it between two `#`.
    let escaped = scan(dlp, body.as_bytes());
    let (plain_text, escaped_text) = (plain.join(","), escaped.join(","));
    prop_assert_eq!(escaped, plain, "{:?} escaped as {:?}: {} vs {}", text, body, escaped_text, plain_text);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// The facts of a request body are what a naive reading of its members says, or nothing.
    #[test]
    fn request_facts_agree_with_a_naive_reading(
        members in prop::collection::vec(member(), 0..6),
        spaced in any::<bool>(),
        garbage in prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 0..40)),
    ) {
        let separator = if spaced { ", " } else { "," };
        let body = format!(
            "{}{{{}}}",
            if spaced { " \n" } else { "" },
            members.iter().map(|m| format!("\"{}\":{}", m.key, m.text)).collect::<Vec<_>>().join(separator)
        );
        let facts = RequestFacts::read(body.as_bytes());
        prop_assert_eq!(&facts, &naive_facts(&members, body.len()), "{}", body);
        if let Some(garbage) = garbage {
            let mut bytes = body.into_bytes();
            bytes.extend(garbage);
            let _ = RequestFacts::read(&bytes);
        }
    }

    /// A JSON body finds the secrets, and only the secrets, a plain scan of its text finds, however escaped and
    /// wherever the text falls against the decoder's words.
    #[test]
    fn escaped_secrets_are_found_exactly_when_plain_ones_are(
        pieces in prop::collection::vec(piece(), 0..8),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        padding in 0usize..40,
    ) {
        check_dlp(dlp(), &pieces.concat(), &choices, padding)?;
    }

    /// Any bytes are scanned without a panic, JSON-looking or not.
    #[test]
    fn any_body_is_scanned(bytes in prop::collection::vec(any::<u8>(), 0..300), start in prop::sample::select(vec!["", "{", "[\"", " \"", "\u{feff}{"])) {
        let mut body = start.as_bytes().to_vec();
        body.extend(bytes);
        let _ = dlp().scan(&body);
        let _ = RequestFacts::read(&body);
    }
}

/// The hand-picked texts, through the same DLP check with several escape spellings, and as request bodies.
#[test]
fn corpus_replays() {
    let dlp = dlp();
    for (name, bytes) in corpus("dlp") {
        let text = String::from_utf8(bytes).expect("UTF-8");
        for choices in [&[0u8][..], &[1], &[2], &[0, 1, 2, 3, 4, 5]] {
            for padding in [0, 7, 15] {
                check_dlp(dlp, &text, choices, padding).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
    for (_, bytes) in corpus("requests") {
        let _ = RequestFacts::read(&bytes);
        let _ = dlp.scan(&bytes);
    }
}
