//! OTLP push: spans and metrics to an OpenTelemetry Collector, Jaeger or any OTLP
//! receiver, over HTTP with protobuf bodies (`/v1/traces`, `/v1/metrics`).
//!
//! Spans come from the bounded span queue in batches; metrics are a snapshot of every
//! family each interval. A failed export is retried with exponential backoff and jitter
//! when the OTLP specification calls it retryable (429, 502, 503, 504, or no answer),
//! after the server's `Retry-After` when it sends one, and given up after
//! `max_retry`; meanwhile the queue keeps taking spans and drops its oldest when full,
//! so a dead backend costs bounded memory and every lost span is counted.

pub mod encode;
pub mod proto;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use tracing::{debug, warn};

use super::ExportStats;
use crate::model::span::{IdGenerator, SpanQueue};
use crate::model::Family;
use proto::KeyValue;

/// Answers larger than this are not read: an OTLP response is a few bytes.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// An `http://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    /// Parses an http URL; https is refused with the reason.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        if url.starts_with("https://") {
            return Err(format!(
                "{url}: TLS to the OTLP endpoint is not supported; send to a collector over http (a node-local one, or a sidecar)"
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse()
                    .map_err(|_| format!("{url}: bad port {port:?}"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The base endpoint plus a signal path (`v1/traces`), as `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is combined.
    pub fn join(&self, signal: &str) -> Endpoint {
        let mut path = self.path.trim_end_matches('/').to_string();
        path.push('/');
        path.push_str(signal);
        Endpoint {
            path,
            ..self.clone()
        }
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

pub struct OtlpSettings {
    pub traces: Option<Endpoint>,
    pub metrics: Option<Endpoint>,
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    pub timeout: Duration,
    pub metrics_interval: Option<Duration>,
    pub batch_spans: usize,
    pub max_retry: Duration,
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
}

/// Runs the exporter until `stop` is set.
pub fn run(
    settings: OtlpSettings,
    spans: Arc<SpanQueue>,
    snapshot: impl Fn() -> Option<Vec<Family>>,
    stats: Arc<ExportStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut next_metrics = settings.metrics_interval.map(|i| Instant::now() + i);
    let mut sender = Sender {
        settings,
        stats,
        jitter: IdGenerator::new(),
    };
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if let Some(traces) = sender.settings.traces.clone() {
            let batch = spans.pop(sender.settings.batch_spans, Duration::from_millis(200));
            if !batch.is_empty() {
                let request = encode::traces_request(&batch, &sender.settings.resource);
                let count = batch.len() as u64;
                match runtime.block_on(sender.export(&traces, request.encode_to_vec(), &stop)) {
                    Outcome::Delivered { rejected } => {
                        sender.stats.spans_sent.fetch_add(count, Ordering::Relaxed);
                        if rejected > 0 {
                            sender
                                .stats
                                .rejected_spans
                                .fetch_add(rejected as u64, Ordering::Relaxed);
                        }
                    }
                    Outcome::Failed => {
                        sender
                            .stats
                            .spans_failed
                            .fetch_add(count, Ordering::Relaxed);
                    }
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
        if let (Some(endpoint), Some(due)) = (sender.settings.metrics.clone(), next_metrics) {
            if Instant::now() >= due || stopping {
                if let Some(families) = snapshot() {
                    let request = encode::metrics_request(
                        &families,
                        SystemTime::now(),
                        sender.settings.started,
                        &sender.settings.resource,
                    );
                    let points: u64 = families.iter().map(|f| f.series.len() as u64).sum();
                    if let Outcome::Delivered { rejected } =
                        runtime.block_on(sender.export(&endpoint, request.encode_to_vec(), &stop))
                    {
                        sender
                            .stats
                            .metric_points_sent
                            .fetch_add(points, Ordering::Relaxed);
                        if rejected > 0 {
                            sender
                                .stats
                                .rejected_points
                                .fetch_add(rejected as u64, Ordering::Relaxed);
                        }
                    }
                }
                next_metrics = sender.settings.metrics_interval.map(|i| Instant::now() + i);
            }
        }
        if stopping && (sender.settings.traces.is_none() || spans.is_empty()) {
            return Ok(());
        }
    }
}

impl Sender {
    /// Posts one request body, retrying what the specification says to retry.
    async fn export(&mut self, endpoint: &Endpoint, body: Vec<u8>, stop: &AtomicBool) -> Outcome {
        let body = if self.settings.gzip {
            match gzip(&body) {
                Ok(compressed) => compressed,
                Err(_) => body,
            }
        } else {
            body
        };
        let body = Bytes::from(body);
        let began = Instant::now();
        let mut backoff = Duration::from_millis(500);
        loop {
            let delay = match self.post(endpoint, body.clone()).await {
                Ok((status, _, answer)) if (200..300).contains(&status) => {
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
                Ok((status, retry_after, _)) if matches!(status, 429 | 502 | 503 | 504) => {
                    if retry_after.is_some() {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    debug!(status, ?retry_after, "OTLP export will be retried");
                    retry_after.map_or(Wait::Backoff(backoff), Wait::Throttled)
                }
                Ok((status, _, _)) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(status, path = %endpoint.path, "the OTLP receiver refused an export; not retried");
                    return Outcome::Failed;
                }
                Err(err) => {
                    debug!(error = %err, "OTLP export failed; will be retried");
                    Wait::Backoff(backoff)
                }
            };
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            // Jitter, so that agents that failed together do not retry together: a
            // backoff is taken between half and one and a half times; a receiver's
            // Retry-After is a minimum, so up to half of it is added.
            let random = self.jitter.span_id()[0] as f64 / 255.0;
            let delay = match delay {
                Wait::Backoff(d) => d.mul_f64(0.5 + random),
                Wait::Throttled(d) => d.mul_f64(1.0 + random / 2.0),
            }
            .min(self.settings.max_retry);
            if began.elapsed() + delay > self.settings.max_retry || stop.load(Ordering::Acquire) {
                warn!(path = %endpoint.path, "OTLP export given up after retries");
                return Outcome::Failed;
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One POST: (status, Retry-After, body).
    async fn post(
        &self,
        endpoint: &Endpoint,
        body: Bytes,
    ) -> Result<(u16, Option<Duration>, Bytes), Box<dyn std::error::Error + Send + Sync>> {
        let attempt = async {
            let stream =
                tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut request = hyper::Request::post(endpoint.path.as_str())
                .header(hyper::header::HOST, endpoint.authority())
                .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("periscope/", env!("CARGO_PKG_VERSION")),
                );
            if self.settings.gzip {
                request = request.header(hyper::header::CONTENT_ENCODING, "gzip");
            }
            for (name, value) in &self.settings.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let response = sender.send_request(request.body(Full::new(body))?).await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let answer = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, retry_after, answer))
        };
        tokio::time::timeout(self.settings.timeout, attempt)
            .await
            .map_err(|_| "timed out")?
    }
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
    fn endpoints_parse_and_join_like_the_sdks() {
        let base = Endpoint::parse("http://collector:4318").expect("valid");
        assert_eq!(
            base.join("v1/traces"),
            Endpoint {
                host: "collector".into(),
                port: 4318,
                path: "/v1/traces".into()
            }
        );
        let prefixed = Endpoint::parse("http://[::1]:4318/otlp/").expect("valid");
        assert_eq!(prefixed.host, "::1");
        assert_eq!(prefixed.join("v1/metrics").path, "/otlp/v1/metrics");
        assert_eq!(prefixed.authority(), "[::1]:4318");
        assert!(Endpoint::parse("https://collector:4318").is_err());
        assert!(Endpoint::parse("collector:4318").is_err());
        assert!(Endpoint::parse("http://collector:port").is_err());
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
