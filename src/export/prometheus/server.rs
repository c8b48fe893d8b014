//! The HTTP/1 server behind :9101, kept out of reach of local processes that would take it
//! away: a cap on open connections, a deadline for each request head (which also closes
//! keep-alive connections left idle that long), and, when the cap is reached, the
//! connection idle longest closed to make room, so idle or trickling connections can
//! never lock out a scraper.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::oneshot;

use super::web::{Security, WebConfig};

/// Limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time a client has to send a complete request head, counted from when the server
    /// waits for one: from the connection's start, or its last response on keep-alive.
    pub header_read_timeout: Duration,
}

/// What the server refused and closed, for the agent's own metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub open: AtomicU64,
    /// Connections closed to make room for a new one (the cap was reached).
    pub evicted: AtomicU64,
    /// New connections closed at once: the cap was reached and every open one was busy.
    pub refused: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    pub tls_failed: AtomicU64,
    /// Scrapes answered, by format: text 0.0.4, OpenMetrics, protobuf.
    pub scrapes: [AtomicU64; 3],
}

struct Tracked {
    /// Set while a request is being answered: such a connection is not closed for room.
    busy: Arc<AtomicBool>,
    /// When it last started or finished a request.
    last_active: Arc<Mutex<Instant>>,
    close: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    open: HashMap<u64, Tracked>,
}

impl Connections {
    /// Closes the connection that has waited longest without a request in flight.
    /// False when every one is busy.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .open
            .iter()
            .filter(|(_, t)| !t.busy.load(Ordering::Acquire) && t.close.is_some())
            .min_by_key(|(_, t)| *t.last_active.lock().unwrap_or_else(|e| e.into_inner()))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.open.get_mut(&id)) {
            Some(tracked) => {
                if let Some(close) = tracked.close.take() {
                    let _ = close.send(());
                }
                true
            }
            None => false,
        }
    }

    /// Open connections not already told to close.
    fn live(&self) -> usize {
        self.open.values().filter(|t| t.close.is_some()).count()
    }
}

/// The endpoint's service, marking its connection busy while a request is answered,
/// and asking for credentials when the web configuration has users.
#[derive(Clone)]
struct MarkBusy {
    inner: Router,
    busy: Arc<AtomicBool>,
    last_active: Arc<Mutex<Instant>>,
    security: Arc<Security>,
    /// Password checks running at once, at most: bcrypt is slow by design, and a flood
    /// of wrong passwords must not take the CPU (checked ones are remembered).
    checks: Arc<tokio::sync::Semaphore>,
}

impl tower::Service<hyper::Request<hyper::body::Incoming>> for MarkBusy {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        let busy = self.busy.clone();
        let last_active = self.last_active.clone();
        let security = self.security.clone();
        let checks = self.checks.clone();
        Box::pin(async move {
            busy.store(true, Ordering::Release);
            let header = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let allowed = if !security.needs_auth() {
                true
            } else {
                match security.remembered(header.as_deref()) {
                    Some(verdict) => verdict,
                    None => match checks.try_acquire_owned() {
                        Ok(permit) => {
                            let security = security.clone();
                            tokio::task::spawn_blocking(move || {
                                let _permit = permit;
                                security.authorized(header.as_deref())
                            })
                            .await
                            .unwrap_or(false)
                        }
                        // Every check slot busy: refused now, not queued.
                        Err(_) => false,
                    },
                }
            };
            let mut response = if allowed {
                match tower::ServiceExt::oneshot(inner, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            } else {
                unauthorized()
            };
            for (name, value) in &security.headers {
                if let (Ok(name), Ok(value)) = (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    hyper::header::HeaderValue::from_str(value),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            *last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            busy.store(false, Ordering::Release);
            Ok(response)
        })
    }
}

fn unauthorized() -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from("Unauthorized\n"));
    *response.status_mut() = hyper::StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Basic realm=\"periscope\""),
    );
    response
}

/// Serves one connection's requests over `io`.
async fn serve_io<I>(io: I, service: MarkBusy, limits: Limits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let _ = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .await;
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ServerStats>,
    web: Arc<WebConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Mutex::new(Connections::default()));
    let checks = Arc::new(tokio::sync::Semaphore::new(2));
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of fds, say: wait a moment rather than spin.
                    tracing::warn!(error = %err, "accepting a connection on the metrics endpoint failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let busy = Arc::new(AtomicBool::new(false));
        let last_active = Arc::new(Mutex::new(Instant::now()));
        let (close, closed) = oneshot::channel::<()>();
        let id = {
            let mut table = connections.lock().unwrap_or_else(|e| e.into_inner());
            if table.live() >= limits.max_connections {
                if table.evict_one() {
                    stats.evicted.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
            }
            let id = table.next_id;
            table.next_id += 1;
            table.open.insert(
                id,
                Tracked {
                    busy: busy.clone(),
                    last_active: last_active.clone(),
                    close: Some(close),
                },
            );
            id
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let security = web.current();
        let service = MarkBusy {
            inner: app.clone(),
            busy,
            last_active,
            security: security.clone(),
            checks: checks.clone(),
        };
        let connections = connections.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let serving = async {
                match &security.tls {
                    None => serve_io(TokioIo::new(stream), service, limits).await,
                    Some(config) => {
                        // The handshake gets the time a request head gets.
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                        match tokio::time::timeout(
                            limits.header_read_timeout,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(tls)) => serve_io(TokioIo::new(tls), service, limits).await,
                            _ => {
                                stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = serving => {}
                // Dropping the connection closes its socket.
                _ = closed => {}
            }
            connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}
