//! OTLP export, end to end: a receiver in this test decodes what the agent pushes with
//! the official OpenTelemetry protobuf definitions (opentelemetry-proto).

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::apps::{connect, get, hex_id, App};
use common::{have_root, kernel_lock, Agent};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
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
        {
            let mut got = received.lock().expect("lock");
            if path == "/v1/traces" {
                if let Some((s, after)) = throttle.lock().expect("lock").pop_front() {
                    status = s;
                    retry_after = after;
                } else {
                    let request = ExportTraceServiceRequest::decode(&body[..])
                        .expect("an ExportTraceServiceRequest");
                    got.traces.push((now, request));
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
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n{extra}\r\n"
        );
        if (&stream).write_all(answer.as_bytes()).is_err() {
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
    let receiver = Receiver::start(vec![(429, Some(2)), (503, None)]);
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
}

#[test]
fn otlp_metrics_equal_the_prometheus_scrape() {
    if !have_root("otlp_metrics_equal_the_prometheus_scrape") {
        return;
    }
    let _lock = kernel_lock();
    let receiver = Receiver::start(Vec::new());
    let agent = Agent::start(&otlp_config(&receiver.endpoint(), false, 1));
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
    let scope = &request.resource_metrics[0].scope_metrics[0];
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
        if string_attr(&point.attributes, "process.pid") != Some(pid.as_str()) {
            continue;
        }
        let status = string_attr(&point.attributes, "http.response.status_code").expect("status");
        let route = string_attr(&point.attributes, "http.route").expect("route");
        let want = [
            ("process_pid", pid.as_str()),
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
    // Counters are cumulative, monotonic sums.
    let runs = scope
        .metrics
        .iter()
        .find(|m| m.name == "periscope_probe_up")
        .expect("self-metrics are exported too");
    assert!(matches!(runs.data, Some(metric::Data::Gauge(_))));
}
