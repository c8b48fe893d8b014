//! OTLP export, end to end: a receiver in this test decodes what the agent pushes with
//! the official OpenTelemetry protobuf definitions (opentelemetry-proto).

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::apps::{connect, get, hex_id, App};
use common::{free_port, have_root, kernel_lock, Agent, Helper, Metrics, Prometheus, KILL_HELPER};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, ScopeMetrics};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// What the receiver got: decoded requests, with when they arrived.
#[derive(Default)]
struct Received {
    traces: Vec<(Instant, ExportTraceServiceRequest)>,
    metrics: Vec<(Instant, ExportMetricsServiceRequest)>,
    /// Every traces request, answered or not, with its status.
    trace_attempts: Vec<(Instant, u16)>,
}

/// An OTLP/HTTP receiver on loopback. `throttle` holds (status, Retry-After seconds) to
/// answer the next traces requests with, before it answers 200.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    fn start(throttle: Vec<(u16, Option<u64>)>) -> Receiver {
        Receiver::start_on(0, throttle)
    }

    fn start_on(port: u16, throttle: Vec<(u16, Option<u64>)>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Received::default()));
        let throttle = Arc::new(Mutex::new(VecDeque::from(throttle)));
        let shared = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (received, throttle) = (shared.clone(), throttle.clone());
                std::thread::spawn(move || serve(stream, &received, &throttle));
            }
        });
        Receiver { port, received }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(
    stream: TcpStream,
    received: &Mutex<Received>,
    throttle: &Mutex<VecDeque<(u16, Option<u64>)>>,
) {
    let mut reader = BufReader::new(&stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let (mut length, mut gzip) = (0usize, false);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if gzip {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .expect("gzip body");
            body = plain;
        }
        let now = Instant::now();
        let mut status = 200;
        let mut retry_after = None;
        let mut answer_body = Vec::new();
        {
            let mut got = received.lock().expect("lock");
            if path == "/v1/traces" {
                let planned = throttle.lock().expect("lock").pop_front();
                if let Some((s, after)) = planned.filter(|(s, _)| *s != 200) {
                    status = s;
                    retry_after = after;
                } else {
                    let request = ExportTraceServiceRequest::decode(&body[..])
                        .expect("an ExportTraceServiceRequest");
                    got.traces.push((now, request));
                    // (200, Some(n)): accepted, with n spans reported rejected.
                    if let Some((_, Some(rejected))) = planned {
                        answer_body = ExportTraceServiceResponse {
                            partial_success: Some(ExportTracePartialSuccess {
                                rejected_spans: rejected as i64,
                                error_message: "spans too old".into(),
                            }),
                        }
                        .encode_to_vec();
                    }
                }
                got.trace_attempts.push((now, status));
            } else if path == "/v1/metrics" {
                let request = ExportMetricsServiceRequest::decode(&body[..])
                    .expect("an ExportMetricsServiceRequest");
                got.metrics.push((now, request));
            } else {
                status = 404;
            }
        }
        let extra = retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
        let mut answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{extra}\r\n",
            answer_body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&answer_body);
        if (&stream).write_all(&answer).is_err() {
            return;
        }
    }
}

fn otlp_config(endpoint: &str, traces: bool, metrics_secs: u64) -> String {
    format!(
        "probes:\n  syscalls:\n    enabled: false\n  http:\n    enabled: true\ntraces:\n  enabled: {traces}\nexporters:\n  otlp:\n    enabled: true\n    endpoint: \"{endpoint}\"\n    metrics_interval_secs: {metrics_secs}\n"
    )
}

fn string_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    })
}

/// Server spans of process `pid` received so far: (trace id, parent span id, name).
fn server_spans(received: &Mutex<Received>, pid: u32) -> Vec<(String, String, String)> {
    let got = received.lock().expect("lock");
    let mut spans = Vec::new();
    for (_, request) in &got.traces {
        for resource_spans in &request.resource_spans {
            let attributes = &resource_spans
                .resource
                .as_ref()
                .expect("resource")
                .attributes;
            if int_attr(attributes, "process.pid") != Some(i64::from(pid)) {
                continue;
            }
            for scope_spans in &resource_spans.scope_spans {
                assert_eq!(
                    scope_spans.scope.as_ref().map(|s| s.name.as_str()),
                    Some("periscope")
                );
                for span in &scope_spans.spans {
                    if span.kind == SpanKind::Server as i32 {
                        spans.push((
                            hex(&span.trace_id),
                            hex(&span.parent_span_id),
                            span.name.clone(),
                        ));
                    }
                }
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `n` requests with known traceparents; returns trace id -> parent span id.
fn traced_requests(app: &App, n: u64, tag: u64) -> HashMap<String, String> {
    let mut expected = HashMap::new();
    let mut conn = connect(app.port);
    for i in 0..n {
        let trace = format!("{}{}", hex_id(tag, 16), hex_id(i + 1, 16));
        let parent = hex_id(0x2000 + i, 16);
        let (status, _) = get(
            &mut conn,
            "/hello",
            &format!("traceparent: 00-{trace}-{parent}-01\r\n"),
        );
        assert_eq!(status, 200);
        expected.insert(trace, parent);
    }
    expected
}

#[test]
fn spans_arrive_over_otlp_exactly_once_with_their_trace_context() {
    if !have_root("spans_arrive_over_otlp_exactly_once_with_their_trace_context") {
        return;
    }
    let _lock = kernel_lock();
    let receiver = Receiver::start(Vec::new());
    let agent = Agent::start(&otlp_config(&receiver.endpoint(), true, 0));
    let app = App::start();
    const N: u64 = 40;
    let expected = traced_requests(&app, N, 0x0714);
    let pid = app.child.id();
    wait_until("the spans", || {
        server_spans(&receiver.received, pid).len() as u64 >= N
    });
    std::thread::sleep(Duration::from_millis(500));
    let spans = server_spans(&receiver.received, pid);
    assert_eq!(spans.len() as u64, N, "exactly one span per request");
    for (trace, parent, name) in &spans {
        assert_eq!(expected.get(trace), Some(parent), "trace {trace}");
        assert_eq!(name, "GET /hello");
    }
    // The resource says which process; attributes follow the HTTP conventions.
    let got = receiver.received.lock().expect("lock");
    let resource_spans = got
        .traces
        .iter()
        .flat_map(|(_, request)| &request.resource_spans)
        .find(|r| {
            int_attr(
                &r.resource.as_ref().expect("resource").attributes,
                "process.pid",
            ) == Some(i64::from(pid))
        })
        .expect("the app's resource");
    let resource = &resource_spans
        .resource
        .as_ref()
        .expect("resource")
        .attributes;
    assert_eq!(
        string_attr(resource, "process.executable.name"),
        Some("python3")
    );
    assert!(string_attr(resource, "host.name").is_some());
    let span = &resource_spans.scope_spans[0].spans[0];
    assert_eq!(
        string_attr(&span.attributes, "http.request.method"),
        Some("GET")
    );
    assert_eq!(string_attr(&span.attributes, "http.route"), Some("/hello"));
    assert_eq!(
        int_attr(&span.attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        int_attr(&span.attributes, "server.port"),
        Some(i64::from(app.port))
    );
    assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
    drop(got);
    let metrics = agent.metrics();
    assert!(
        metrics.one(
            "periscope_exporter_spans_sent_total",
            &[("exporter", "otlp")]
        ) >= N as f64
    );
}

#[test]
fn a_throttling_receiver_is_retried_after_its_delay_and_loses_nothing() {
    if !have_root("a_throttling_receiver_is_retried_after_its_delay_and_loses_nothing") {
        return;
    }
    let _lock = kernel_lock();
    let receiver = Receiver::start(vec![(429, Some(2)), (503, None), (200, Some(3))]);
    let agent = Agent::start(&otlp_config(&receiver.endpoint(), true, 0));
    let app = App::start();
    const N: u64 = 20;
    let expected = traced_requests(&app, N, 0x7407);
    let pid = app.child.id();
    wait_until("the spans", || {
        server_spans(&receiver.received, pid).len() as u64 >= N
    });
    std::thread::sleep(Duration::from_millis(500));
    let spans = server_spans(&receiver.received, pid);
    assert_eq!(spans.len() as u64, N, "every span once, after the retries");
    for (trace, parent, _) in &spans {
        assert_eq!(expected.get(trace), Some(parent));
    }
    let got = receiver.received.lock().expect("lock");
    let attempts: Vec<_> = got.trace_attempts.iter().take(3).collect();
    assert_eq!(
        attempts.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![429, 503, 200]
    );
    // The retry after the 429 waited for its Retry-After of 2 s.
    let waited = attempts[1].0.duration_since(attempts[0].0);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    drop(got);
    let metrics = agent.metrics();
    assert_eq!(
        metrics.one(
            "periscope_exporter_retries_total",
            &[("exporter", "otlp"), ("wait", "throttled")]
        ),
        1.0
    );
    assert_eq!(
        metrics.one(
            "periscope_exporter_retries_total",
            &[("exporter", "otlp"), ("wait", "backoff")]
        ),
        1.0
    );
    assert_eq!(
        metrics.one(
            "periscope_exporter_spans_failed_total",
            &[("exporter", "otlp")]
        ),
        0.0
    );
    // The partial success of the accepted request is counted as the receiver said.
    assert_eq!(
        metrics.one(
            "periscope_exporter_rejected_total",
            &[("exporter", "otlp"), ("signal", "spans")]
        ),
        3.0
    );
}

/// The agent's resource on an export: OTEL_SERVICE_NAME wins over the service.name of
/// OTEL_RESOURCE_ATTRIBUTES, whose other attributes are kept, percent-decoded.
fn check_agent_resource(request: &ExportMetricsServiceRequest) {
    let resource = &request.resource_metrics[0]
        .resource
        .as_ref()
        .expect("resource")
        .attributes;
    assert_eq!(string_attr(resource, "service.name"), Some("node-agent"));
    assert_eq!(
        string_attr(resource, "deployment.environment"),
        Some("test lab")
    );
    assert!(string_attr(resource, "host.name").is_some());
}

/// The exported request-duration histogram of process `pid` says what the Prometheus
/// scrape says, point by point and bucket by bucket: both are views of one state.
fn check_duration_points_match_scrape(scope: &ScopeMetrics, pid: &str, scraped: &Metrics) {
    let duration = scope
        .metrics
        .iter()
        .find(|m| m.name == "http.server.request.duration")
        .expect("the semantic-convention name");
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(histogram)) = &duration.data else {
        panic!("a histogram");
    };
    assert_eq!(histogram.aggregation_temporality, 2, "cumulative");
    let mut compared = 0;
    for point in &histogram.data_points {
        if string_attr(&point.attributes, "process.pid") != Some(pid) {
            continue;
        }
        let status = string_attr(&point.attributes, "http.response.status_code").expect("status");
        let route = string_attr(&point.attributes, "http.route").expect("route");
        let want = [
            ("process_pid", pid),
            ("http_response_status_code", status),
            ("http_route", route),
        ];
        assert_eq!(
            point.count as f64,
            scraped.one("http_server_request_duration_seconds_count", &want)
        );
        assert_eq!(
            point.count,
            if status == "503" { 10 } else { 20 },
            "{status} {route}"
        );
        // Same buckets as Prometheus: OTLP counts per bucket, Prometheus cumulatively.
        let mut cumulative = 0;
        for (bound, count) in point.explicit_bounds.iter().zip(&point.bucket_counts) {
            cumulative += count;
            // Prometheus writes bounds canonically: 1 as "1.0".
            let le = format!("{bound:?}");
            let mut labels = want.to_vec();
            labels.push(("le", le.as_str()));
            assert_eq!(
                cumulative as f64,
                scraped.one("http_server_request_duration_seconds_bucket", &labels),
                "bucket le={le}"
            );
        }
        assert!(
            point.start_time_unix_nano > 0 && point.start_time_unix_nano <= point.time_unix_nano
        );
        compared += 1;
    }
    assert_eq!(compared, 2, "one point per status");
}

#[test]
fn otlp_metrics_equal_the_prometheus_scrape() {
    if !have_root("otlp_metrics_equal_the_prometheus_scrape") {
        return;
    }
    let _lock = kernel_lock();
    let receiver = Receiver::start(Vec::new());
    let agent = Agent::start_with_env(
        &otlp_config(&receiver.endpoint(), false, 1),
        &[
            ("OTEL_SERVICE_NAME", "node-agent"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test%20lab,service.name=x",
            ),
        ],
    );
    let app = App::start();
    let mut conn = connect(app.port);
    for i in 0..30 {
        let path = if i % 3 == 0 { "/fail" } else { "/hello" };
        get(&mut conn, path, "");
    }
    let pid = app.child.id().to_string();
    // Quiet now: wait for an export made after the scrape shows every request.
    let scraped = common::eventually(&agent, |m| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("process_pid", &pid)],
        ) == 30.0
    });
    let scraped_at = Instant::now();
    wait_until("a metrics export after the scrape", || {
        receiver
            .received
            .lock()
            .expect("lock")
            .metrics
            .iter()
            .any(|(at, _)| *at > scraped_at)
    });
    let got = receiver.received.lock().expect("lock");
    let (_, request) = got.metrics.last().expect("an export");
    check_agent_resource(request);
    let scope = &request.resource_metrics[0].scope_metrics[0];
    check_duration_points_match_scrape(scope, &pid, &scraped);
    // Counters are cumulative, monotonic sums.
    let runs = scope
        .metrics
        .iter()
        .find(|m| m.name == "periscope_probe_up")
        .expect("self-metrics are exported too");
    assert!(matches!(runs.data, Some(metric::Data::Gauge(_))));
}

#[test]
fn a_dead_backend_costs_bounded_memory_counted_drops_and_delivery_resumes() {
    if !have_root("a_dead_backend_costs_bounded_memory_counted_drops_and_delivery_resumes") {
        return;
    }
    let _lock = kernel_lock();
    // Nothing listens here until the backend "comes back".
    let port = free_port();
    let agent = Agent::start(&format!(
        "probes:\n  syscalls:\n    enabled: false\n  http:\n    enabled: true\n    clients: false\ntraces:\n  enabled: true\n  queue_spans: 20\nexporters:\n  otlp:\n    enabled: true\n    endpoint: \"http://127.0.0.1:{port}\"\n    metrics_interval_secs: 0\n    batch_spans: 10\n    max_retry_secs: 2\n    timeout_secs: 1\n"
    ));
    let app = App::start();
    const DOWN: u64 = 400;
    traced_requests(&app, DOWN, 0xdead);
    let otlp = [("exporter", "otlp")];
    let dropped_labels = [("exporter", "otlp"), ("reason", "queue_full")];
    // Every span is accounted for: delivered (none), failed after retries, or dropped
    // from the full queue; the queue never holds more than its cap.
    let accounted = |m: &common::Metrics| {
        m.one("periscope_exporter_spans_sent_total", &otlp)
            + m.one("periscope_exporter_spans_failed_total", &otlp)
            + m.one("periscope_spans_dropped_total", &dropped_labels)
    };
    let metrics = common::eventually(&agent, |m| {
        assert!(m.one("periscope_span_queue_spans", &otlp) <= 20.0);
        m.one("periscope_spans_queued_total", &otlp) == DOWN as f64 && accounted(m) == DOWN as f64
    });
    assert_eq!(
        metrics.one("periscope_spans_queued_total", &otlp),
        DOWN as f64
    );
    assert_eq!(accounted(&metrics), DOWN as f64, "every span accounted for");
    assert_eq!(
        metrics.one("periscope_exporter_spans_sent_total", &otlp),
        0.0
    );
    assert!(metrics.one("periscope_spans_dropped_total", &dropped_labels) > 0.0);
    assert!(metrics.one("periscope_exporter_spans_failed_total", &otlp) > 0.0);

    let receiver = Receiver::start_on(port, Vec::new());
    // In groups the queue holds: the kernel frames these requests as fast as the app
    // answers, and a burst larger than the queue would drop its own oldest spans.
    const UP: u64 = 30;
    const GROUP: u64 = 10;
    let pid = app.child.id();
    let mut expected = HashMap::new();
    for group in 0..UP / GROUP {
        expected.extend(traced_requests(&app, GROUP, 0xa11e + group));
        wait_until("delivery to resume", || {
            server_spans(&receiver.received, pid).len() as u64 >= (group + 1) * GROUP
        });
    }
    let metrics = common::eventually(&agent, |m| accounted(m) == (DOWN + UP) as f64);
    assert_eq!(
        accounted(&metrics),
        (DOWN + UP) as f64,
        "every span accounted for"
    );
    let spans = server_spans(&receiver.received, pid);
    assert_eq!(
        spans.len() as u64,
        UP,
        "only spans made after the backend came back"
    );
    for (trace, parent, _) in &spans {
        assert_eq!(expected.get(trace), Some(parent));
    }
    assert_eq!(
        metrics.one("periscope_exporter_spans_sent_total", &otlp),
        UP as f64
    );
}

/// An OTLP/gRPC receiver (HTTP/2 without TLS) on loopback. The first traces calls are
/// answered RESOURCE_EXHAUSTED with a RetryInfo delay of `throttle_secs`, `throttles`
/// times.
struct GrpcReceiver {
    port: u16,
    received: Arc<Mutex<Received>>,
}

/// A body of one data frame and then trailers: how gRPC answers.
struct GrpcBody {
    data: Option<bytes::Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl http_body::Body for GrpcBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        std::task::Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<RpcDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn base64(bytes: &[u8]) -> String {
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
    text
}

/// The message of a gRPC request body, decompressed when its flag says so.
fn grpc_payload(body: &[u8]) -> Vec<u8> {
    let length = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
    let payload = &body[5..5 + length];
    if body[0] == 1 {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut plain)
            .expect("gzip message");
        plain
    } else {
        payload.to_vec()
    }
}

/// The grpc-status-details-bin trailer of a throttled call: a google.rpc.Status whose
/// RetryInfo asks for a delay of `secs`, base64 without padding as gRPC sends binary
/// metadata.
fn retry_info_trailer(secs: i64) -> hyper::header::HeaderValue {
    let info = RetryInfo {
        retry_delay: Some(RpcDuration {
            seconds: secs,
            nanos: 0,
        }),
    };
    let status = RpcStatus {
        code: 8,
        message: "slow down".into(),
        details: vec![RpcAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    base64(&status.encode_to_vec())
        .trim_end_matches('=')
        .parse()
        .expect("header")
}

/// Records one Export call to `path` as the HTTP receiver does, and answers it: the
/// first `throttles` traces calls UNAVAILABLE with a RetryInfo of `throttle_secs`
/// (counted as 429 among the attempts), then an empty Export...ServiceResponse.
fn grpc_answer(
    path: &str,
    message: &[u8],
    received: &Mutex<Received>,
    throttles: &Mutex<usize>,
    throttle_secs: i64,
) -> hyper::Response<GrpcBody> {
    let now = Instant::now();
    let mut trailers = hyper::HeaderMap::new();
    let mut code = 0;
    {
        let mut got = received.lock().expect("lock");
        if path.ends_with("TraceService/Export") {
            let mut left = throttles.lock().expect("lock");
            if *left > 0 {
                *left -= 1;
                code = 14; // UNAVAILABLE
                trailers.insert("grpc-status-details-bin", retry_info_trailer(throttle_secs));
            } else {
                got.traces.push((
                    now,
                    ExportTraceServiceRequest::decode(message).expect("traces"),
                ));
            }
            got.trace_attempts
                .push((now, if code == 0 { 200 } else { 429 }));
        } else if path.ends_with("MetricsService/Export") {
            got.metrics.push((
                now,
                ExportMetricsServiceRequest::decode(message).expect("metrics"),
            ));
        } else {
            code = 12; // UNIMPLEMENTED
        }
    }
    trailers.insert("grpc-status", code.to_string().parse().expect("header"));
    // An empty Export...ServiceResponse in one uncompressed frame.
    let data = (code == 0).then(|| bytes::Bytes::from_static(&[0, 0, 0, 0, 0]));
    hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(GrpcBody {
            data,
            trailers: Some(trailers),
        })
        .expect("response")
}

impl GrpcReceiver {
    fn start(throttles: usize, throttle_secs: i64) -> GrpcReceiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        let throttles = Arc::new(Mutex::new(throttles));
        let port = common::spawn_tokio_server(move |stream| {
            let (received, throttles) = (shared.clone(), throttles.clone());
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (received, throttles) = (received.clone(), throttles.clone());
                    async move {
                        use http_body_util::BodyExt;
                        let path = request.uri().path().to_string();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .expect("body")
                            .to_bytes();
                        let message = grpc_payload(&body);
                        Ok::<_, std::convert::Infallible>(grpc_answer(
                            &path,
                            &message,
                            &received,
                            &throttles,
                            throttle_secs,
                        ))
                    }
                },
            );
            async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            }
        });
        GrpcReceiver { port, received }
    }
}

#[test]
fn spans_and_metrics_arrive_over_grpc_and_a_retry_delay_is_honoured() {
    if !have_root("spans_and_metrics_arrive_over_grpc_and_a_retry_delay_is_honoured") {
        return;
    }
    let _lock = kernel_lock();
    let receiver = GrpcReceiver::start(1, 2);
    let agent = Agent::start(&format!(
        "probes:\n  syscalls:\n    enabled: false\n  http:\n    enabled: true\ntraces:\n  enabled: true\nexporters:\n  otlp:\n    enabled: true\n    protocol: grpc\n    endpoint: \"http://127.0.0.1:{}\"\n    metrics_interval_secs: 1\n",
        receiver.port
    ));
    let app = App::start();
    const N: u64 = 25;
    let expected = traced_requests(&app, N, 0x6e9c);
    let pid = app.child.id();
    wait_until("the spans over gRPC", || {
        server_spans(&receiver.received, pid).len() as u64 >= N
    });
    wait_until("metrics over gRPC", || {
        !receiver.received.lock().expect("lock").metrics.is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let spans = server_spans(&receiver.received, pid);
    assert_eq!(spans.len() as u64, N, "every span once");
    for (trace, parent, _) in &spans {
        assert_eq!(expected.get(trace), Some(parent));
    }
    let got = receiver.received.lock().expect("lock");
    let (first, second) = (got.trace_attempts[0], got.trace_attempts[1]);
    assert_eq!(
        (first.1, second.1),
        (429, 200),
        "throttled once, then accepted"
    );
    let waited = second.0.duration_since(first.0);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    let (_, metrics) = got.metrics.last().expect("metrics");
    assert!(metrics.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .any(|m| m.name == "http.server.request.duration"));
    drop(got);
    let scraped = agent.metrics();
    assert_eq!(
        scraped.one(
            "periscope_exporter_retries_total",
            &[("exporter", "otlp"), ("wait", "throttled")]
        ),
        1.0
    );
}

/// A receiver that takes connections and then never answers (`drip: false`), or
/// answers one byte of its status line a second (`drip: true`): the agent's exports to
/// it can only end by its own deadline.
fn stuck_receiver(drip: bool) -> (u16, Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    std::thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        let mut held = Vec::new();
        let mut at = 0;
        while !done.load(Ordering::Relaxed) {
            if let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
            if drip {
                let byte = [b"HTTP/1.1 200 OK\r\n"[at % 17]];
                held.retain_mut(|s| s.write_all(&byte).is_ok());
                at += 1;
            }
            std::thread::sleep(Duration::from_millis(if drip { 1000 } else { 50 }));
        }
    });
    (port, stop)
}

/// SIGTERM stops the agent within its 5 s promise however the receiver behaves: every
/// thread honours one deadline, and what was not delivered is counted.
#[test]
fn shutdown_keeps_its_deadline_with_a_hanging_or_dripping_receiver() {
    if !have_root("shutdown_keeps_its_deadline_with_a_hanging_or_dripping_receiver") {
        return;
    }
    let _kernel = kernel_lock();
    for drip in [false, true] {
        let (port, stop) = stuck_receiver(drip);
        let config = otlp_config(&format!("http://127.0.0.1:{port}"), true, 1)
            + "    max_retry_secs: 3600\n    timeout_secs: 300\n";
        let mut agent = Agent::start(&config);
        // An export is in flight (metrics every second) when the signal comes.
        std::thread::sleep(Duration::from_millis(2500));
        agent.signal(libc::SIGTERM);
        let signalled = Instant::now();
        let mut exited = None;
        while signalled.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = agent.child.try_wait() {
                exited = Some((status, signalled.elapsed()));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        let (status, took) = exited.expect("the agent exits after SIGTERM");
        eprintln!("drip={drip}: stopped {took:?} after SIGTERM");
        assert!(status.success(), "a clean exit: {status}");
        // The budget is 5 s, and 0.5 s of grace for a stuck thread; 1 s more for the
        // machine.
        assert!(
            took <= Duration::from_millis(6500),
            "drip={drip}: stopped {took:?} after SIGTERM"
        );
    }
}

/// As with an OpenTelemetry SDK, setting `OTEL_EXPORTER_OTLP_ENDPOINT` alone turns the
/// OTLP exporter and traces on: a configuration that names neither sends every span of
/// a traced request there, exactly once.
#[test]
fn the_otlp_endpoint_variable_alone_turns_traces_on() {
    if !have_root("the_otlp_endpoint_variable_alone_turns_traces_on") {
        return;
    }
    let _lock = kernel_lock();
    let receiver = Receiver::start(Vec::new());
    let agent = Agent::start_with_env(
        "probes:\n  syscalls:\n    enabled: false\n  http:\n    enabled: true\n",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint().as_str())],
    );
    let app = App::start();
    const N: u64 = 10;
    let expected = traced_requests(&app, N, 0x0e17);
    let pid = app.child.id();
    wait_until("the spans", || {
        server_spans(&receiver.received, pid).len() as u64 >= N
    });
    std::thread::sleep(Duration::from_millis(500));
    let spans = server_spans(&receiver.received, pid);
    assert_eq!(spans.len() as u64, N, "exactly one span per request");
    for (trace, parent, _) in &spans {
        assert_eq!(expected.get(trace), Some(parent), "trace {trace}");
    }
    drop(agent);
}

/// With `histograms: exponential`, the syscall latency arrives as an OTLP exponential
/// histogram that says what Prometheus's native histogram of the same series says,
/// bucket by bucket: both come from the kernel's one set of native buckets.
#[test]
fn exponential_histograms_agree_with_prometheus_native_buckets() {
    if !have_root("exponential_histograms_agree_with_prometheus_native_buckets") {
        return;
    }
    let _lock = kernel_lock();
    let receiver = Receiver::start(Vec::new());
    let agent = Agent::start(&format!(
        "probes:\n  syscalls:\n    latency_syscalls: [kill]\n    latency_sampling: always\n    latency_per_process: true\nexporters:\n  otlp:\n    enabled: true\n    endpoint: \"{}\"\n    metrics_interval_secs: 1\n    histograms: exponential\n    exponential_scale: 3\n",
        receiver.endpoint()
    ));
    let prometheus = Prometheus::start_native(agent.port);
    let mut helper = Helper::spawn(KILL_HELPER, &["300".into(), "0".into()]);
    let pid = helper.pid().to_string();
    helper.run();
    let this = format!("syscall_duration_seconds{{process_pid=\"{pid}\",syscall=\"kill\"}}");
    assert_eq!(
        prometheus.wait_for(&format!("histogram_count({this})"), &[300.0]),
        vec![300.0]
    );
    let scraped_at = Instant::now();
    let native = prometheus.query(&this);
    assert_eq!(native.len(), 1, "{native:?}");
    let histogram = &native[0]["histogram"][1];
    let number = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    // (upper bound, count) of every bucket Prometheus holds.
    let prometheus_buckets: Vec<(f64, u64)> = histogram["buckets"]
        .as_array()
        .expect("native buckets")
        .iter()
        .map(|b| {
            (
                number(&b[2]).expect("an upper bound"),
                number(&b[3]).expect("a count") as u64,
            )
        })
        .collect();
    assert!(prometheus_buckets.len() > 1, "{histogram}");

    wait_until("a metrics export after the scrape", || {
        let got = receiver.received.lock().expect("lock");
        got.metrics.iter().any(|(at, _)| *at > scraped_at)
    });
    let got = receiver.received.lock().expect("lock");
    let (_, request) = got.metrics.last().expect("an export");
    let metric = request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "syscall_duration_seconds")
        .expect("the syscall latency");
    let Some(metric::Data::ExponentialHistogram(exponential)) = &metric.data else {
        panic!("an exponential histogram: {:?}", metric.data);
    };
    assert_eq!(exponential.aggregation_temporality, 2, "cumulative");
    let point = exponential
        .data_points
        .iter()
        .find(|p| {
            string_attr(&p.attributes, "process.pid") == Some(pid.as_str())
                && string_attr(&p.attributes, "syscall") == Some("kill")
        })
        .expect("the helper's point");
    assert_eq!((point.count, point.scale, point.zero_count), (300, 3, 0));
    assert_eq!(point.sum, number(&histogram["sum"]));
    let positive = point.positive.as_ref().expect("positive buckets");
    // OTLP bucket i holds (2^(i/8), 2^((i+1)/8)]; empty ones are not Prometheus's.
    let otlp_buckets: Vec<(f64, u64)> = positive
        .bucket_counts
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(k, count)| {
            let index = positive.offset + k as i32;
            ((f64::from(index + 1) / 8.0).exp2(), *count)
        })
        .collect();
    assert_eq!(otlp_buckets.len(), prometheus_buckets.len());
    for ((otlp_upper, otlp_count), (prom_upper, prom_count)) in
        otlp_buckets.iter().zip(&prometheus_buckets)
    {
        assert!(
            ((otlp_upper - prom_upper) / prom_upper).abs() < 1e-12,
            "{otlp_upper} against {prom_upper}"
        );
        assert_eq!(otlp_count, prom_count, "bucket up to {prom_upper} s");
    }
    drop(got);
    helper.finish();
}
