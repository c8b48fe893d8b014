//! The Prometheus pull endpoint: `/metrics` (text 0.0.4 or OpenMetrics by content
//! negotiation), `/healthz` and `/readyz`.

pub mod encode;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use encode::Format;

use crate::model::Family;

/// Where the endpoint gets its data: a fresh snapshot per scrape.
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> impl Future<Output = Option<Vec<Family>>> + Send;
}

struct Shared<S> {
    source: S,
    ready: Arc<AtomicBool>,
}

pub async fn serve<S: Source>(
    listener: tokio::net::TcpListener,
    source: S,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared { source, ready });
    let app = Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

async fn metrics<S: Source>(State(shared): State<Arc<Shared<S>>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::negotiate(accept);
    match shared.source.snapshot().await {
        Some(families) => (
            [(header::CONTENT_TYPE, format.content_type())],
            encode::encode(&families, format),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down\n",
        )
            .into_response(),
    }
}

async fn readyz<S: Source>(State(shared): State<Arc<Shared<S>>>) -> Response {
    if shared.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "probes are still attaching\n",
        )
            .into_response()
    }
}
