//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz` (accepting),
//! and, with the bearer `admin.token`, `GET /admin/config` and `POST /admin/reload`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::app::Gateway;

/// Serves admin requests until shutdown.
pub async fn serve(gateway: Arc<Gateway>, socket: TcpListener) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            () = gateway.shutdown.cut_tunnels.cancelled() => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(gateway.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn respond(gateway: Arc<Gateway>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if path.starts_with("/admin/") {
        return Ok(admin(&gateway, &request));
    }
    let (status, content_type, body) = match (request.method(), path) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", gateway.metrics.render()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if gateway.shutdown.stop_accepting.is_cancelled() => {
            (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".to_owned())
        }
        (&Method::GET, "/readyz") => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    Ok(reply(status, content_type, body))
}

/// `/admin/*`: bearer token first, then the endpoint.
fn admin(gateway: &Gateway, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let config = gateway.config.load();
    let Some(token) = config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        return json_reply(
            StatusCode::FORBIDDEN,
            json!({"error": "admin.token is not configured: /admin endpoints are off"}),
        );
    };
    let presented =
        request.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let authorised =
        presented.is_some_and(|p| bool::from(subtle::ConstantTimeEq::ct_eq(p.as_bytes(), token.as_bytes())));
    if !authorised {
        return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "send Authorization: Bearer <admin.token>"}));
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/admin/config") => json_reply(
            StatusCode::OK,
            json!({
                "version": gateway.version.load(Ordering::Relaxed),
                "sha256": config.source.sha256,
                "loaded_at": crate::audit::timestamp(config.source.loaded_at),
                "path": config.source.path.display().to_string(),
                "state_backend": gateway.limiter.backend_name(),
            }),
        ),
        (&Method::POST, "/admin/reload") => match gateway.reload() {
            Ok(report) => json_reply(
                StatusCode::OK,
                json!({
                    "version": report.version,
                    "sha256": report.sha256,
                    "tunnels_revoked": report.tunnels_revoked,
                    "needs_restart": report.needs_restart,
                }),
            ),
            Err(error) => json_reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"error": error.to_string()})),
        },
        _ => json_reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", body.to_string())
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
