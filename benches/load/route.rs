//! Where the client's requests go (straight to the origin or the stub, or through a proxy, with TLS, credentials or
//! a tunnel) and the request bytes it sends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::ServerName;

use crate::client::Connection;
use crate::parameters::API_HOST;

/// How the client reaches a TLS listener: full handshakes only (resumption off), TLS 1.3, ALPN http/1.1.
#[derive(Clone)]
pub struct TlsDial {
    pub connector: tokio_rustls::TlsConnector,
    pub name: ServerName<'static>,
}

#[derive(Clone)]
pub struct Route {
    /// Where the client connects: the origin (direct) or the proxy.
    pub addr: SocketAddr,
    pub proxy: bool,
    pub origin: SocketAddr,
    /// The proxy listener speaks TLS.
    pub tls: Option<TlsDial>,
    /// A `Proxy-Authorization` value sent with every request to the proxy.
    pub auth: Option<Arc<str>>,
    /// The destination as `host:port`, named in the CONNECT and (its host) in `Host`; `None`: the origin.
    pub authority: Option<Arc<str>>,
    /// TLS with the destination: inside the CONNECT tunnel (interception), or straight to it (direct TLS).
    pub inner: Option<TlsDial>,
}

impl Route {
    /// A plain-TCP target without credentials.
    pub fn plain(addr: SocketAddr, proxy: bool, origin: SocketAddr) -> Route {
        Route { addr, proxy, origin, tls: None, auth: None, authority: None, inner: None }
    }

    /// The Messages API at `authority` (`host:port`) through `addr`: with `inner`, TLS to it (through a proxy:
    /// inside the tunnel).
    pub fn api(addr: SocketAddr, proxy: bool, origin: SocketAddr, authority: &str, inner: Option<TlsDial>) -> Route {
        Route { authority: Some(authority.into()), inner, ..Route::plain(addr, proxy, origin) }
    }

    /// The same proxy and trust, for another intercepted `host` on port 443.
    pub fn for_host(&self, host: &str) -> Result<Route, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let inner = self.inner.as_ref().map(|d| TlsDial { connector: d.connector.clone(), name });
        Ok(Route { authority: Some(format!("{host}:443").into()), inner, ..self.clone() })
    }

    pub fn with_tls(&self, addr: SocketAddr, tls: TlsDial) -> Route {
        Route { addr, tls: Some(tls), ..self.clone() }
    }

    pub fn with_auth(&self, auth: &str) -> Route {
        Route { auth: Some(auth.into()), ..self.clone() }
    }

    pub fn auth_line(&self) -> String {
        match &self.auth {
            Some(a) if self.proxy => format!("Proxy-Authorization: {a}\r\n"),
            _ => String::new(),
        }
    }

    pub fn get_ka(&self) -> Vec<u8> {
        let o = self.origin;
        if self.proxy {
            let auth = self.auth_line();
            format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n{auth}\r\n").into_bytes()
        } else {
            format!("GET / HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n\r\n").into_bytes()
        }
    }

    pub fn get_origin_form(&self, path: &str) -> Vec<u8> {
        let o = self.origin;
        format!("GET {path} HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n\r\n").into_bytes()
    }

    pub fn connect_req(&self) -> Vec<u8> {
        let o = self.authority.as_deref().map_or_else(|| self.origin.to_string(), str::to_string);
        let auth = self.auth_line();
        format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nUser-Agent: tollgate-load\r\n{auth}\r\n").into_bytes()
    }

    /// `POST /v1/messages` (origin-form, as a client speaks inside the tunnel), small; `stream` asks for SSE.
    pub fn messages_req(&self, stream: bool) -> Vec<u8> {
        let authority = self.authority.as_deref().unwrap_or(API_HOST);
        let host = authority.strip_suffix(":443").unwrap_or(authority);
        let body = format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":16,{}"messages":[{{"role":"user","content":"hi"}}]}}"#,
            if stream { r#""stream":true,"# } else { "" }
        );
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate-load\r\nx-api-key: sk-ant-bench\r\n\
             anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A connection to the proxy (or, direct, to the origin): TCP, plus the TLS handshake for a TLS listener.
    pub async fn open(&self, buf: usize) -> io::Result<Connection> {
        Connection::open(self.addr, self.tls.as_ref(), buf).await
    }

    /// A connection to the destination: direct, or through a CONNECT tunnel of the proxy; then the TLS
    /// handshake with it when `inner` is set.
    pub async fn tunnel(&self, buf: usize) -> io::Result<Connection> {
        let mut c = self.open(buf).await?;
        if self.proxy {
            c.send(&self.connect_req()).await?;
            let r = c.response(true).await?;
            if r.status != 200 {
                return Err(io::Error::other(format!("CONNECT answered {}", r.status)));
            }
        }
        match &self.inner {
            Some(d) => c.start_tls(d).await,
            None => Ok(c),
        }
    }
}
