//! Where the client's requests go (straight to the origin or the stub, or through a proxy, with TLS, credentials or
//! a tunnel) and the request bytes it sends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::ServerName;

use crate::client::Connection;
use crate::parameters::{API_HOST, MODEL};
use crate::support::messages;

/// How the client makes a TLS handshake: full handshakes only (resumption off), TLS 1.3, ALPN http/1.1.
#[derive(Clone)]
pub struct TlsDial {
    pub connector: tokio_rustls::TlsConnector,
    /// The name the client asks for (SNI) and checks the certificate against.
    pub name: ServerName<'static>,
}

/// How the client reaches the destination: straight, or through a proxy (with TLS to its listener, credentials),
/// and with TLS to the destination itself.
#[derive(Clone)]
pub struct Route {
    /// Where the client connects: the origin or the stub (direct), or the proxy.
    pub address: SocketAddr,
    pub through_proxy: bool,
    pub origin: SocketAddr,
    /// The proxy listener speaks TLS.
    pub listener_tls: Option<TlsDial>,
    /// A `Proxy-Authorization` value sent with every request to the proxy.
    pub authorization: Option<Arc<str>>,
    /// The destination as `host:port`, named in the CONNECT and (its host) in `Host`; `None`: the origin.
    pub authority: Option<Arc<str>>,
    /// TLS with the destination: inside the CONNECT tunnel (interception), or straight to it (direct TLS).
    pub destination_tls: Option<TlsDial>,
    /// The `x-api-key` of Messages API requests; `None`: `sk-ant-bench`.
    pub api_key: Option<Arc<str>>,
}

impl Route {
    /// Plain TCP to `address` (the proxy, or the origin itself), no credentials.
    pub fn plain(address: SocketAddr, through_proxy: bool, origin: SocketAddr) -> Route {
        Route {
            address,
            through_proxy,
            origin,
            listener_tls: None,
            authorization: None,
            authority: None,
            destination_tls: None,
            api_key: None,
        }
    }

    /// The Messages API at `authority` (`host:port`) through `address`: with `destination_tls`, TLS to it (through
    /// a proxy: inside the tunnel).
    pub fn messages_api(
        address: SocketAddr,
        through_proxy: bool,
        origin: SocketAddr,
        authority: &str,
        destination_tls: Option<TlsDial>,
    ) -> Route {
        Route { authority: Some(authority.into()), destination_tls, ..Route::plain(address, through_proxy, origin) }
    }

    /// The same proxy and trust, for another intercepted `host` on port 443.
    pub fn for_host(&self, host: &str) -> Result<Route, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|error| format!("{host}: {error}"))?;
        let destination_tls =
            self.destination_tls.as_ref().map(|dial| TlsDial { connector: dial.connector.clone(), name });
        Ok(Route { authority: Some(format!("{host}:443").into()), destination_tls, ..self.clone() })
    }

    /// The same, through the TLS listener at `address`.
    pub fn with_tls(&self, address: SocketAddr, tls: TlsDial) -> Route {
        Route { address, listener_tls: Some(tls), ..self.clone() }
    }

    /// The same, with `x-api-key: api_key` on Messages API requests.
    pub fn with_api_key(&self, api_key: &str) -> Route {
        Route { api_key: Some(api_key.into()), ..self.clone() }
    }

    /// The same, sending `Proxy-Authorization: authorization`.
    pub fn with_authorization(&self, authorization: &str) -> Route {
        Route { authorization: Some(authorization.into()), ..self.clone() }
    }

    fn authorization_line(&self) -> String {
        match &self.authorization {
            Some(authorization) if self.through_proxy => format!("Proxy-Authorization: {authorization}\r\n"),
            _ => String::new(),
        }
    }

    /// Scenario a's request: `GET /` in absolute-form through a proxy, origin-form direct.
    pub fn keep_alive_get(&self) -> Vec<u8> {
        let origin = self.origin;
        if self.through_proxy {
            let authorization = self.authorization_line();
            format!(
                "GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\nUser-Agent: tollgate-load\r\n{authorization}\r\n"
            )
            .into_bytes()
        } else {
            format!("GET / HTTP/1.1\r\nHost: {origin}\r\nUser-Agent: tollgate-load\r\n\r\n").into_bytes()
        }
    }

    /// `GET path` in origin-form, as a client speaks inside a tunnel.
    pub fn origin_form_get(&self, path: &str) -> Vec<u8> {
        let origin = self.origin;
        format!("GET {path} HTTP/1.1\r\nHost: {origin}\r\nUser-Agent: tollgate-load\r\n\r\n").into_bytes()
    }

    fn connect_request(&self) -> Vec<u8> {
        let authority = self.authority.as_deref().map_or_else(|| self.origin.to_string(), str::to_string);
        let authorization = self.authorization_line();
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tollgate-load\r\n{authorization}\r\n")
            .into_bytes()
    }

    /// `POST /v1/messages` (origin-form, as a client speaks inside the tunnel), small; `stream` asks for SSE.
    pub fn messages_request(&self, stream: bool) -> Vec<u8> {
        let authority = self.authority.as_deref().unwrap_or(API_HOST);
        let host = authority.strip_suffix(":443").unwrap_or(authority);
        let body = messages::request_body(MODEL, 16, "hi", stream);
        let api_key = self.api_key.as_deref().unwrap_or("sk-ant-bench");
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate-load\r\nx-api-key: {api_key}\r\n\
             anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A connection to the proxy (or, direct, to the origin): TCP, plus the TLS handshake for a TLS listener.
    pub async fn open(&self, read_buffer: usize) -> io::Result<Connection> {
        Connection::open(self.address, self.listener_tls.as_ref(), read_buffer).await
    }

    /// A connection to the destination: direct, or through a CONNECT tunnel of the proxy; then the TLS
    /// handshake with it when `destination_tls` is set.
    pub async fn tunnel(&self, read_buffer: usize) -> io::Result<Connection> {
        let mut connection = self.open(read_buffer).await?;
        if self.through_proxy {
            connection.send(&self.connect_request()).await?;
            let response = connection.response(true).await?;
            if response.status != 200 {
                return Err(io::Error::other(format!("CONNECT answered {}", response.status)));
            }
        }
        match &self.destination_tls {
            Some(dial) => connection.start_tls(dial).await,
            None => Ok(connection),
        }
    }
}
