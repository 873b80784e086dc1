//! The SNI reader (`proxy::sni`): a generated ClientHello, split over any number of records and followed by any
//! bytes, gives back the name put in; every strict prefix asks for more; damaged or arbitrary bytes never panic.
//! Real ClientHellos from rustls give back the name rustls was asked to reach.

use proptest::prelude::*;
use tollgate::proxy::sni::{parse, ClientHello};

use super::{config, corpus, cuts, split_at};

/// A TLS extension other than server_name.
fn other_extension() -> impl Strategy<Value = (u16, Vec<u8>)> {
    (1u16.., prop::collection::vec(any::<u8>(), 0..40))
}

/// What a generated hello carries in its server_name extension.
#[derive(Debug, Clone)]
enum Names {
    /// No server_name extension at all.
    Absent,
    /// Entries of other name types, then a host name (bytes, which may not be UTF-8).
    Host { others: Vec<(u8, Vec<u8>)>, name: Vec<u8> },
}

fn names() -> impl Strategy<Value = Names> {
    let name = prop_oneof![
        4 => "[a-zA-Z0-9-]{1,20}(\\.[a-zA-Z0-9_-]{1,20}){0,3}\\.{0,2}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..30),
    ];
    let others = prop::collection::vec((1u8.., prop::collection::vec(any::<u8>(), 0..10)), 0..2);
    prop_oneof![1 => Just(Names::Absent), 6 => (others, name).prop_map(|(others, name)| Names::Host { others, name })]
}

fn u16_prefixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// The handshake message of a ClientHello.
fn handshake(
    session: &[u8],
    suites: &[u8],
    before: &[(u16, Vec<u8>)],
    names: &Names,
    after: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(session.len() as u8);
    body.extend_from_slice(session);
    body.extend(u16_prefixed(suites));
    body.extend_from_slice(&[1, 0]);
    let mut extensions = Vec::new();
    let mut push = |kind: u16, data: &[u8]| {
        extensions.extend_from_slice(&kind.to_be_bytes());
        extensions.extend(u16_prefixed(data));
    };
    for (kind, data) in before {
        push(*kind, data);
    }
    if let Names::Host { others, name } = names {
        let mut list = Vec::new();
        for (kind, other) in others {
            list.push(*kind);
            list.extend(u16_prefixed(other));
        }
        list.push(0);
        list.extend(u16_prefixed(name));
        push(0, &u16_prefixed(&list));
    }
    for (kind, data) in after {
        push(*kind, data);
    }
    body.extend(u16_prefixed(&extensions));
    let mut message = vec![1];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend(body);
    message
}

/// `message` in handshake records cut at `cuts`.
fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in split_at(message, cuts) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend(u16_prefixed(piece));
    }
    out
}

/// What the reader must make of `names`.
fn expected(names: &Names) -> ClientHello {
    match names {
        Names::Absent => ClientHello::NoSni,
        Names::Host { name, .. } => match std::str::from_utf8(name) {
            Ok(name) => ClientHello::Sni(name.trim_end_matches('.').to_ascii_lowercase()),
            Err(_) => ClientHello::NotTls,
        },
    }
}

/// Never a panic; a strict prefix of what parses to an answer asks for more.
fn check_any(bytes: &[u8]) -> Result<(), TestCaseError> {
    let whole = parse(bytes);
    if whole != ClientHello::Incomplete && whole != ClientHello::NotTls {
        for length in [0, 1, 4, 5, bytes.len() / 2] {
            if length < bytes.len() {
                let _ = parse(&bytes[..length]);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// The name put in comes back, wherever the hello is cut into records and whatever follows it.
    #[test]
    fn generated_hellos_give_back_their_name(
        session in prop::collection::vec(any::<u8>(), 0..33),
        suites in prop::collection::vec(any::<u8>(), 2..40),
        before in prop::collection::vec(other_extension(), 0..3),
        names in names(),
        after in prop::collection::vec(other_extension(), 0..3),
        record_cuts in prop::collection::vec(any::<usize>(), 0..5),
        trailing in prop::collection::vec(any::<u8>(), 0..20),
        prefix_at in any::<prop::sample::Index>(),
    ) {
        let message = handshake(&session, &suites, &before, &names, &after);
        // A record carries at most 16 KiB; the generated hellos are smaller.
        // Empty records may come first or between, not after the end: a prefix without them would be whole.
        let record_cuts: Vec<usize> = cuts(message.len(), &record_cuts).into_iter().filter(|&cut| cut < message.len()).collect();
        let hello = records(&message, &record_cuts);
        let want = expected(&names);
        let mut stream = hello.clone();
        stream.extend_from_slice(&trailing);
        prop_assert_eq!(parse(&stream), want.clone());
        prop_assert_eq!(parse(&hello), want);
        let prefix = prefix_at.index(hello.len());
        prop_assert_eq!(parse(&hello[..prefix]), ClientHello::Incomplete);
    }

    /// A damaged hello, or any bytes: an answer, never a panic.
    #[test]
    fn damaged_hellos_never_panic(
        names in names(),
        record_cuts in prop::collection::vec(any::<usize>(), 0..5),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        noise in prop::collection::vec(any::<u8>(), 0..200),
        use_noise in any::<bool>(),
    ) {
        let bytes = if use_noise {
            noise
        } else {
            let message = handshake(&[1; 32], &[0x13, 0x01], &[], &names, &[(10, vec![0, 2, 0, 29])]);
            let mut hello = records(&message, &cuts(message.len(), &record_cuts));
            for (at, byte) in edits {
                let at = at.index(hello.len());
                hello[at] = byte;
            }
            hello
        };
        check_any(&bytes)?;
    }

    /// A real ClientHello from rustls names the host it was asked to reach, lowercase.
    #[test]
    fn real_hellos_give_back_their_name(name in "[a-zA-Z][a-zA-Z0-9-]{0,20}(\\.[a-zA-Z][a-zA-Z0-9-]{0,20}){1,3}") {
        let config = rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let Ok(server_name) = rustls_pki_types::ServerName::try_from(name.clone()) else {
            return Ok(());
        };
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).expect("client");
        let mut hello = Vec::new();
        connection.write_tls(&mut hello).expect("write");
        prop_assert_eq!(parse(&hello), ClientHello::Sni(name.to_ascii_lowercase()));
    }
}

/// The hand-picked hostile hellos, through the same checks.
#[test]
fn corpus_replays() {
    for (name, bytes) in corpus("sni") {
        check_any(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
