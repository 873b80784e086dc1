//! A webhook receiver for alert tests: an HTTP/1.1 server on 127.0.0.1:0 (hyper), plain or behind TLS
//! (tokio-rustls), that keeps every `POST` it gets (path, content type, body) and answers with the status the test
//! chose (200, or 500 for a failing hook).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::TlsAcceptor;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: serde_json::Value,
}

/// A running receiver; stops when dropped (its accept task ends with the runtime).
pub struct WebhookReceiver {
    pub address: SocketAddr,
    received: Mutex<mpsc::UnboundedReceiver<Hook>>,
}

impl WebhookReceiver {
    /// Starts a plain-HTTP receiver answering `status` (e.g. 200, or 500 to fail every delivery).
    pub async fn start(status: u16) -> Self {
        Self::start_with(status, None).await
    }

    /// Starts an HTTPS receiver serving `tls` (a certificate for `localhost`).
    pub async fn start_tls(status: u16, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(status, Some(TlsAcceptor::from(tls))).await
    }

    async fn start_with(status: u16, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind webhook receiver");
        let address = listener.local_addr().expect("address");
        let answer = Arc::new(AtomicU16::new(status));
        let (sender, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (sender, answer, tls) = (sender.clone(), answer.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(TokioIo::new(stream), sender, answer).await;
                            }
                        }
                        None => serve(TokioIo::new(stream), sender, answer).await,
                    }
                });
            }
        });
        Self { address, received: Mutex::new(received) }
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.address)
    }

    /// `https://localhost:PORT/PATH`, for a receiver started with `start_tls`.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.address.port())
    }

    /// The next request; panics when none comes within `within` (a missing alert fails the test).
    pub async fn next(&self, within: Duration) -> Hook {
        let mut received = self.received.lock().await;
        tokio::time::timeout(within, received.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook request within {within:?}"))
            .expect("receiver running")
    }

    /// Every request received so far, without waiting.
    pub async fn drain(&self) -> Vec<Hook> {
        let mut received = self.received.lock().await;
        let mut hooks = Vec::new();
        while let Ok(hook) = received.try_recv() {
            hooks.push(hook);
        }
        hooks
    }
}

/// Serves one connection: each request is kept and answered with the current status.
async fn serve<I>(io: I, sender: mpsc::UnboundedSender<Hook>, answer: Arc<AtomicU16>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (sender, answer) = (sender.clone(), answer.clone());
        async move {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let content_type =
                request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let _ = sender.send(Hook { method, path, content_type, body });
            let response = hyper::Response::builder()
                .status(answer.load(Ordering::Relaxed))
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("response");
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}
