//! The admin HTTP endpoint (axum): `/metrics`, `/healthz`, `/readyz`; and the client side of
//! `ectunnel health`, which asks `/readyz` (hyper), for container health checks without curl.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::listener::Listener;
use crate::ops::metrics::Metrics;

/// What the handlers read: the metrics and the current listeners (replaced on reload).
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub listeners: Arc<Mutex<Vec<Arc<Listener>>>>,
}

impl AdminState {
    fn listeners(&self) -> Vec<Arc<Listener>> {
        crate::lock(&self.listeners).clone()
    }
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    socket: TcpListener,
    state: AdminState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(socket, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    for l in state.listeners() {
        l.pool.refresh_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// 200 when every listener has reached its upstream and filled its pool once (and, in front of
/// a cluster, knows the topology); otherwise 503
/// with one line per listener that is not ready.
async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    let not_ready: Vec<String> = state
        .listeners()
        .iter()
        .filter_map(|l| {
            l.readiness()
                .err()
                .map(|why| format!("{}: {why}\n", l.config.name))
        })
        .collect();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, not_ready.concat())
    }
}

/// `GET /readyz` on `addr`: `Ok(body)` when ready, `Err(reason)` otherwise.
pub async fn check_ready(addr: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach the admin endpoint {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/readyz")
        .header(header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{addr}: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status == StatusCode::OK {
        Ok(text)
    } else {
        Err(format!("not ready ({status}):\n{text}"))
    }
}
