//! OTLP push: spans and metrics to an OpenTelemetry Collector, Jaeger or any OTLP
//! receiver, over HTTP with protobuf bodies (`/v1/traces`, `/v1/metrics`).
//!
//! Spans come from the bounded span queue in batches; metrics are a snapshot of every
//! family each interval. A failed export is retried with exponential backoff and jitter
//! when the OTLP specification calls it retryable (429, 502, 503, 504, or no answer),
//! after the server's `Retry-After` when it sends one, and given up after
//! `max_retry`; meanwhile the queue keeps taking spans and drops its oldest when full,
//! so a dead backend costs bounded memory and every lost span is counted.

mod config;
pub mod encode;
pub mod proto;

pub use config::{HistogramKind, OtlpConfig};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use tracing::{debug, warn};

use super::queue::SpanQueue;
use super::{ExportStats, Shutdown};
use crate::model::connections::AgentConnections;
use crate::model::span::IdGenerator;
use crate::model::Family;
use proto::KeyValue;

/// Answers larger than this are not read: an OTLP response is a few bytes.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

pub use super::endpoint::Endpoint;

/// Where one signal goes, and for an `https://` endpoint how the receiver's certificate
/// is checked and which client certificate is shown.
#[derive(Clone)]
pub struct Destination {
    pub endpoint: Endpoint,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// How OTLP is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// POST of a protobuf body to `/v1/traces`, `/v1/metrics` (port 4318).
    HttpProtobuf,
    /// The gRPC `Export` methods over HTTP/2 (port 4317), TLS for `https://`.
    Grpc,
}

pub const GRPC_TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const GRPC_METRICS_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

pub struct OtlpSettings {
    pub protocol: Protocol,
    pub traces: Option<Destination>,
    pub metrics: Option<Destination>,
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    pub timeout: Duration,
    pub metrics_interval: Option<Duration>,
    pub batch_spans: usize,
    pub max_retry: Duration,
    /// The scale histograms with native buckets are sent at, as exponential
    /// histograms; None: every histogram with explicit bounds.
    pub exponential_scale: Option<i8>,
    /// The agent's own resource: metrics carry it, and spans carry it besides their
    /// process's attributes.
    pub resource: Vec<KeyValue>,
    pub started: SystemTime,
}

enum Wait {
    Backoff(Duration),
    /// The receiver's Retry-After.
    Throttled(Duration),
}

enum Outcome {
    Delivered { rejected: i64 },
    Failed,
}

struct Sender {
    settings: OtlpSettings,
    stats: Arc<ExportStats>,
    jitter: IdGenerator,
    /// Where each connection is recorded, so that the agent's probes make no span of
    /// a receiver on this host answering it.
    connections: AgentConnections,
}

/// Of the time the agent gives the exporter to stop, what is kept for the last metrics
/// export after the span queue is drained.
const LAST_METRICS_SHARE: Duration = Duration::from_millis(1500);

/// Runs the exporter until a stop is requested, then drains its queue and sends one
/// last metrics export, all before the stop's deadline. Every connection it opens is
/// recorded in `connections`.
pub fn run(
    settings: OtlpSettings,
    spans: Arc<SpanQueue>,
    snapshot: impl Fn() -> Option<Vec<Family>>,
    stats: Arc<ExportStats>,
    stop: Arc<Shutdown>,
    connections: AgentConnections,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut next_metrics = settings.metrics_interval.map(|i| Instant::now() + i);
    let mut sender = Sender {
        settings,
        stats,
        jitter: IdGenerator::new(),
        connections,
    };
    loop {
        // Spans drain until the last metrics' share of the stop's time is left.
        let deadline = stop
            .deadline()
            .map(|d| d.checked_sub(LAST_METRICS_SHARE).unwrap_or(d));
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let left = spans.pop(usize::MAX, Duration::ZERO).len() as u64;
            sender.stats.spans_failed.fetch_add(left, Ordering::Relaxed);
            if left > 0 {
                warn!(spans = left, "OTLP export stopped with spans still queued");
            }
            break;
        }
        if let Some(traces) = sender.settings.traces.clone() {
            let batch = spans.pop(sender.settings.batch_spans, Duration::from_millis(200));
            if !batch.is_empty() {
                sender.send_spans(&runtime, &traces, &batch, &stop);
            }
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
        if let (Some(destination), Some(due)) = (sender.settings.metrics.clone(), next_metrics) {
            if deadline.is_none() && Instant::now() >= due {
                if let Some(families) = snapshot() {
                    sender.send_metrics(&runtime, &destination, &families, &stop);
                }
                next_metrics = sender.settings.metrics_interval.map(|i| Instant::now() + i);
            }
        }
        if deadline.is_some() && (sender.settings.traces.is_none() || spans.is_empty()) {
            break;
        }
    }
    if let Some(destination) = sender.settings.metrics.clone() {
        if let Some(families) = snapshot() {
            sender.send_metrics(&runtime, &destination, &families, &stop);
        }
    }
    Ok(())
}

/// What one attempt at an export came to.
enum Attempt {
    /// Accepted; the response message (for its partial success).
    Delivered(Bytes),
    /// Worth retrying, after the receiver's delay when it gave one.
    Retry { hint: Option<Duration>, why: String },
    /// Refused for good.
    Refused(String),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Sender {
    fn send_spans(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        destination: &Destination,
        batch: &[crate::model::span::Span],
        stop: &Shutdown,
    ) {
        let request = encode::traces_request(batch, &self.settings.resource);
        let count = batch.len() as u64;
        match runtime.block_on(self.export(destination, request.encode_to_vec(), stop)) {
            Outcome::Delivered { rejected } => {
                self.stats.spans_sent.fetch_add(count, Ordering::Relaxed);
                self.stats
                    .rejected_spans
                    .fetch_add(rejected.max(0) as u64, Ordering::Relaxed);
            }
            Outcome::Failed => {
                self.stats.spans_failed.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    fn send_metrics(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        destination: &Destination,
        families: &[Family],
        stop: &Shutdown,
    ) {
        let request = encode::metrics_request(
            families,
            SystemTime::now(),
            self.settings.started,
            &self.settings.resource,
            self.settings.exponential_scale,
        );
        let points: u64 = families.iter().map(|f| f.series.len() as u64).sum();
        if let Outcome::Delivered { rejected } =
            runtime.block_on(self.export(destination, request.encode_to_vec(), stop))
        {
            self.stats
                .metric_points_sent
                .fetch_add(points, Ordering::Relaxed);
            self.stats
                .rejected_points
                .fetch_add(rejected.max(0) as u64, Ordering::Relaxed);
        }
    }

    /// Sends one request message, retrying what the specification says to retry.
    /// Exports `message`, retrying as the specification says; abandoned when the
    /// agent's stop deadline passes.
    async fn export(
        &mut self,
        destination: &Destination,
        message: Vec<u8>,
        stop: &Shutdown,
    ) -> Outcome {
        tokio::select! {
            outcome = self.export_retrying(destination, message, stop) => outcome,
            _ = stop.passed() => {
                warn!(path = %destination.endpoint.path, "OTLP export abandoned at the stop deadline");
                Outcome::Failed
            }
        }
    }

    async fn export_retrying(
        &mut self,
        destination: &Destination,
        message: Vec<u8>,
        stop: &Shutdown,
    ) -> Outcome {
        let endpoint = &destination.endpoint;
        let body = match self.settings.protocol {
            Protocol::HttpProtobuf => {
                if self.settings.gzip {
                    gzip(&message).unwrap_or(message)
                } else {
                    message
                }
            }
            Protocol::Grpc => grpc_frame(&message, self.settings.gzip),
        };
        let body = Bytes::from(body);
        let began = Instant::now();
        let mut backoff = Duration::from_millis(500);
        let mut last_why;
        loop {
            let attempt = match tokio::time::timeout(
                self.settings.timeout,
                self.attempt(destination, body.clone()),
            )
            .await
            {
                Ok(Ok(attempt)) => attempt,
                Ok(Err(err)) => Attempt::Retry {
                    hint: None,
                    why: super::tls::explain(&*err),
                },
                Err(_) => Attempt::Retry {
                    hint: None,
                    why: "timed out".into(),
                },
            };
            let wait = match attempt {
                Attempt::Delivered(answer) => {
                    let rejected = decode_partial_success(&answer);
                    if let Some((rejected, message)) = &rejected {
                        warn!(
                            path = %endpoint.path,
                            rejected, message = %message,
                            "the OTLP receiver rejected part of an export"
                        );
                    }
                    return Outcome::Delivered {
                        rejected: rejected.map_or(0, |(n, _)| n),
                    };
                }
                Attempt::Retry { hint, why } => {
                    if destination.tls.is_some() && super::tls::refused_certificate(&why) {
                        warn!(path = %endpoint.path, %why, "OTLP export: TLS with the receiver failed; will retry");
                    } else {
                        debug!(?hint, %why, "OTLP export will be retried");
                    }
                    last_why = why;
                    hint.map_or(Wait::Backoff(backoff), Wait::Throttled)
                }
                Attempt::Refused(why) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(path = %endpoint.path, %why, "the OTLP receiver refused an export; not retried");
                    return Outcome::Failed;
                }
            };
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            // Jitter, so that agents that failed together do not retry together: a
            // backoff is taken between half and one and a half times; a receiver's
            // delay is a minimum, so up to half of it is added. Capped first: a
            // receiver may name any delay.
            let random = self.jitter.span_id()[0] as f64 / 255.0;
            let cap = self.settings.max_retry;
            let (delay, throttled) = match wait {
                Wait::Backoff(d) => (d.min(cap).mul_f64(0.5 + random), false),
                Wait::Throttled(d) => (d.min(cap).mul_f64(1.0 + random / 2.0), true),
            };
            if began.elapsed() + delay > cap || stop.requested() {
                warn!(path = %endpoint.path, last_error = %last_why, "OTLP export given up after retries");
                return Outcome::Failed;
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            if throttled {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            }
            // In steps, so that a stop does not wait for a long delay.
            let wake = Instant::now() + delay;
            while Instant::now() < wake && !stop.requested() {
                tokio::time::sleep((wake - Instant::now()).min(Duration::from_millis(100))).await;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn attempt(&self, destination: &Destination, body: Bytes) -> Result<Attempt, BoxError> {
        let endpoint = &destination.endpoint;
        let stream =
            tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        let _ = stream.set_nodelay(true);
        // The receiver's span of this request is not made (see AgentConnections);
        // registered again once answered, so that it is remembered from then on.
        let ports = (stream.local_addr()?.port(), endpoint.port);
        self.connections.register(ports.0, ports.1);
        let result = match &destination.tls {
            None => self.request(endpoint, body, stream).await,
            Some(config) => {
                let name = super::tls::server_name(&endpoint.host)?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|err| {
                        format!(
                            "TLS handshake with {}: {}",
                            endpoint.authority(),
                            super::tls::chain(&err)
                        )
                    })?;
                self.request(endpoint, body, stream).await
            }
        };
        self.connections.register(ports.0, ports.1);
        result
    }

    async fn request<S>(
        &self,
        endpoint: &Endpoint,
        body: Bytes,
        stream: S,
    ) -> Result<Attempt, BoxError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = hyper_util::rt::TokioIo::new(stream);
        let mut request = hyper::Request::post(endpoint.path.as_str()).header(
            hyper::header::USER_AGENT,
            concat!("periscope/", env!("CARGO_PKG_VERSION")),
        );
        for (name, value) in &self.settings.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match self.settings.protocol {
            Protocol::HttpProtobuf => {
                let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(connection);
                request = request
                    .header(hyper::header::HOST, endpoint.authority())
                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf");
                if self.settings.gzip {
                    request = request.header(hyper::header::CONTENT_ENCODING, "gzip");
                }
                let response = sender.send_request(request.body(Full::new(body))?).await?;
                let status = response.status().as_u16();
                let retry_after =
                    header_secs(response.headers(), hyper::header::RETRY_AFTER.as_str());
                let answer = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Ok(match status {
                    200..=299 => Attempt::Delivered(answer),
                    429 | 502 | 503 | 504 => Attempt::Retry {
                        hint: retry_after,
                        why: format!("HTTP {status}"),
                    },
                    _ => Attempt::Refused(format!("HTTP {status}")),
                })
            }
            Protocol::Grpc => {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await?;
                tokio::spawn(connection);
                let uri = format!(
                    "{}://{}{}",
                    endpoint.scheme(),
                    endpoint.authority(),
                    endpoint.path
                );
                request = request
                    .uri(uri)
                    .header(hyper::header::CONTENT_TYPE, "application/grpc")
                    .header(hyper::header::TE, "trailers");
                if self.settings.gzip {
                    request = request.header("grpc-encoding", "gzip");
                }
                let response = sender.send_request(request.body(Full::new(body))?).await?;
                if !response.status().is_success() {
                    let status = response.status().as_u16();
                    // A proxy's answer, not the receiver's: HTTP's rules apply.
                    return Ok(match status {
                        429 | 502 | 503 | 504 => Attempt::Retry {
                            hint: None,
                            why: format!("HTTP {status}"),
                        },
                        _ => Attempt::Refused(format!("HTTP {status}")),
                    });
                }
                let headers = response.headers().clone();
                let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await?;
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let answer = collected.to_bytes();
                // A trailers-only response carries the status in its headers.
                let status_of = |map: &hyper::HeaderMap| {
                    map.get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u32>().ok())
                };
                let Some(code) = status_of(&trailers).or_else(|| status_of(&headers)) else {
                    return Ok(Attempt::Retry {
                        hint: None,
                        why: "no grpc-status".into(),
                    });
                };
                let details = trailers
                    .get("grpc-status-details-bin")
                    .or_else(|| headers.get("grpc-status-details-bin"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_delay);
                Ok(grpc_attempt(code, details, answer))
            }
        }
    }
}

/// The OTLP/gRPC rules: which status codes are retried (RESOURCE_EXHAUSTED only when
/// the server says when), and the message of an OK answer.
fn grpc_attempt(code: u32, retry_delay: Option<Duration>, answer: Bytes) -> Attempt {
    const OK: u32 = 0;
    const RESOURCE_EXHAUSTED: u32 = 8;
    let why = format!("gRPC status {code}");
    match code {
        OK => Attempt::Delivered(grpc_message(&answer).unwrap_or_default()),
        // CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS
        1 | 4 | 10 | 11 | 14 | 15 => Attempt::Retry {
            hint: retry_delay,
            why,
        },
        RESOURCE_EXHAUSTED if retry_delay.is_some() => Attempt::Retry {
            hint: retry_delay,
            why,
        },
        _ => Attempt::Refused(why),
    }
}

/// A gRPC message frame: compressed flag, big-endian length, message.
fn grpc_frame(message: &[u8], gzip_it: bool) -> Vec<u8> {
    let compressed = if gzip_it { gzip(message).ok() } else { None };
    let (flag, payload) = match &compressed {
        Some(c) => (1u8, c.as_slice()),
        None => (0u8, message),
    };
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(flag);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The message of a gRPC response body, gunzipped when its flag says it is compressed
/// (receivers answer in the encoding of the request).
fn grpc_message(body: &[u8]) -> Option<Bytes> {
    let length = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    let payload = body.get(5..5usize.checked_add(length)?)?;
    match body.first()? {
        0 => Some(Bytes::copy_from_slice(payload)),
        1 => {
            use std::io::Read;
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(payload)
                .take(MAX_RESPONSE_BYTES as u64)
                .read_to_end(&mut plain)
                .ok()?;
            Some(Bytes::from(plain))
        }
        _ => None,
    }
}

fn header_secs(headers: &hyper::HeaderMap, name: &str) -> Option<Duration> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The `google.rpc.RetryInfo` delay in a `grpc-status-details-bin` trailer (a base64
/// `google.rpc.Status` whose details hold it).
fn retry_delay(details: &str) -> Option<Duration> {
    let status = proto::RpcStatus::decode(super::base64_decode(details)?.as_slice()).ok()?;
    status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.RetryInfo"))
        .and_then(|any| proto::RetryInfo::decode(any.value.as_slice()).ok())
        .and_then(|info| info.retry_delay)
        .map(|d| {
            Duration::new(
                d.seconds.max(0) as u64,
                d.nanos.clamp(0, 999_999_999) as u32,
            )
        })
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

/// The partial success of an export response, if it reports rejected items.
fn decode_partial_success(answer: &[u8]) -> Option<(i64, String)> {
    let response = proto::ExportTraceServiceResponse::decode(answer).ok()?;
    let partial = response.partial_success?;
    (partial.rejected > 0 || !partial.error_message.is_empty())
        .then_some((partial.rejected, partial.error_message))
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values
/// percent-encoded. Malformed pairs are skipped, as the specification asks.
pub fn parse_resource_attributes(text: &str) -> Vec<KeyValue> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            if key.is_empty() {
                return None;
            }
            Some(KeyValue::string(key, percent_decode(value.trim())?))
        })
        .collect()
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: the same format, for request headers.
pub fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| Some((key.to_string(), percent_decode(value.trim())?)))?
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_retry_info_is_read_from_the_status_details() {
        use prost::Message as _;
        let info = proto::RetryInfo {
            retry_delay: Some(proto::ProtoDuration {
                seconds: 3,
                nanos: 500_000_000,
            }),
        };
        let status = proto::RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![proto::ProtoAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        };
        let bytes = status.encode_to_vec();
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::new();
        for chunk in bytes.chunks(3) {
            let mut acc = 0u32;
            for (i, b) in chunk.iter().enumerate() {
                acc |= u32::from(*b) << (16 - 8 * i);
            }
            for i in 0..=chunk.len() {
                text.push(ALPHABET[((acc >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        assert_eq!(retry_delay(&text), Some(Duration::from_millis(3500)));
        assert!(matches!(
            grpc_attempt(8, None, Bytes::new()),
            Attempt::Refused(_)
        ));
        assert!(matches!(
            grpc_attempt(8, Some(Duration::from_secs(1)), Bytes::new()),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            grpc_attempt(14, None, Bytes::new()),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            grpc_attempt(3, None, Bytes::new()),
            Attempt::Refused(_)
        ));
    }

    #[test]
    fn resource_attributes_and_headers_are_percent_decoded() {
        let attrs = parse_resource_attributes("deployment.environment=prod, team=a%2Cb,bad,=x");
        let keys: Vec<_> = attrs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["deployment.environment", "team"]);
        assert_eq!(attrs[1], KeyValue::string("team", "a,b"));
        assert_eq!(
            parse_headers("api-key=secret%3D1,x=y"),
            vec![
                ("api-key".into(), "secret=1".into()),
                ("x".into(), "y".into())
            ]
        );
    }
}
