//! The Prometheus pull endpoint: `/metrics` (text 0.0.4, OpenMetrics or protobuf by
//! content negotiation), `/healthz` and `/readyz`.

mod config;
pub mod encode;
pub mod protobuf;
mod rounds;
mod server;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use config::PrometheusConfig;
pub use encode::Format;
pub use server::{Limits, ServerStats};

/// Collections start at most this often, however many scrapes arrive: a storm of
/// scrapes costs one collection per interval.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(100);

use crate::model::Family;

/// Where the endpoint gets its data: a fresh snapshot per scrape.
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> impl Future<Output = Option<Vec<Family>>> + Send;
}

/// How the endpoint is served: its limits, its web configuration, and the schema of the
/// native histograms in the protobuf exposition.
pub struct Serving {
    pub limits: Limits,
    pub web: Arc<web::WebConfig>,
    pub native_schema: i8,
}

struct Shared {
    rounds: Arc<rounds::Rounds>,
    ready: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
}

pub async fn serve<S: Source>(
    listener: tokio::net::TcpListener,
    source: S,
    ready: Arc<AtomicBool>,
    serving: Serving,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        rounds: rounds::Rounds::start(source, MIN_ROUND_INTERVAL, serving.native_schema),
        ready,
        stats: stats.clone(),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared);
    server::serve(listener, app, serving.limits, stats, serving.web, shutdown).await
}

pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::negotiate(accept);
    match shared.rounds.next().await {
        Some(round) => {
            shared.stats.scrapes[format as usize].fetch_add(1, Ordering::Relaxed);
            (
                [(header::CONTENT_TYPE, format.content_type())],
                round.encoded(format),
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down\n",
        )
            .into_response(),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
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
