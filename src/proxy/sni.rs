//! Reading the SNI of a TLS ClientHello from the first bytes of a tunnel, without consuming them.
//!
//! Used by `policy.require_sni_match`: a pass-through tunnel to an allowed host must not carry a TLS session
//! for another (domain fronting). Handles a ClientHello split over several records; never panics on input.

/// What the first bytes of a tunnel say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS handshake at all.
    NotTls,
    /// A ClientHello without a server name.
    NoSni,
    /// The server name, lowercase.
    Sni(String),
}

/// Largest ClientHello accepted (they are a few KiB; post-quantum key shares make them larger).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Parses the ClientHello at the start of `data`.
pub fn parse(data: &[u8]) -> ClientHello {
    // Reassemble the handshake message from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut rest = data;
    loop {
        if rest.len() < 5 {
            return if handshake.is_empty() && !rest.is_empty() && rest[0] != 22 {
                ClientHello::NotTls
            } else {
                ClientHello::Incomplete
            };
        }
        if rest[0] != 22 || rest[1] != 3 {
            return ClientHello::NotTls;
        }
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < 5 + length {
            return ClientHello::Incomplete;
        }
        handshake.extend_from_slice(&rest[5..5 + length]);
        rest = &rest[5 + length..];
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return ClientHello::NotTls;
            }
            let message_length =
                (usize::from(handshake[1]) << 16) | (usize::from(handshake[2]) << 8) | usize::from(handshake[3]);
            if message_length > MAX_CLIENT_HELLO {
                return ClientHello::NotTls;
            }
            if handshake.len() >= 4 + message_length {
                return server_name(&handshake[4..4 + message_length]).unwrap_or(ClientHello::NotTls);
            }
        }
    }
}

/// Walks the ClientHello body to the server_name extension; `None` when the structure is broken.
fn server_name(body: &[u8]) -> Option<ClientHello> {
    let mut reader = Reader(body);
    reader.skip(2 + 32)?; // version, random
    let session = reader.u8()?;
    reader.skip(usize::from(session))?;
    let suites = reader.u16()?;
    reader.skip(usize::from(suites))?;
    let compression = reader.u8()?;
    reader.skip(usize::from(compression))?;
    if reader.0.is_empty() {
        return Some(ClientHello::NoSni);
    }
    let extensions_length = reader.u16()?;
    let mut extensions = Reader(reader.take(usize::from(extensions_length))?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let data = extensions.take(usize::from(length))?;
        if kind == 0 {
            let mut list = Reader(data);
            let list_length = list.u16()?;
            let mut names = Reader(list.take(usize::from(list_length))?);
            while !names.0.is_empty() {
                let name_type = names.u8()?;
                let name_length = names.u16()?;
                let name = names.take(usize::from(name_length))?;
                if name_type == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    return Some(ClientHello::Sni(name.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
            return Some(ClientHello::NoSni);
        }
    }
    Some(ClientHello::NoSni)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls for `name` (or without SNI when `name` is an IP).
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).unwrap();
        let mut out = Vec::new();
        connection.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_server_name_of_a_real_client_hello() {
        let hello = client_hello("API.example.com");
        assert_eq!(parse(&hello), ClientHello::Sni("api.example.com".into()));
        assert_eq!(parse(&hello[..hello.len() - 1]), ClientHello::Incomplete);
        assert_eq!(parse(&client_hello("127.0.0.1")), ClientHello::NoSni);
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let hello = client_hello("split.example.com");
        let body = &hello[5..];
        let (first, second) = body.split_at(40);
        let mut split = vec![22, 3, 1];
        split.extend_from_slice(&(first.len() as u16).to_be_bytes());
        split.extend_from_slice(first);
        split.extend_from_slice(&[22, 3, 1]);
        split.extend_from_slice(&(second.len() as u16).to_be_bytes());
        split.extend_from_slice(second);
        assert_eq!(parse(&split), ClientHello::Sni("split.example.com".into()));
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), ClientHello::NotTls);
        let hello = client_hello("x.example.com");
        for cut in 0..hello.len() {
            let mut mangled = hello.clone();
            mangled[cut] ^= 0xff;
            let _ = parse(&mangled);
            let _ = parse(&hello[..cut]);
        }
    }
}
