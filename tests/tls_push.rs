//! TLS to the push endpoints, end to end: a receiver in this test, with certificates
//! from a CA made by openssl, takes OTLP over http/protobuf and gRPC, and Pyroscope
//! pushes; what it gets is decoded with the official OpenTelemetry protobufs.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{have_root, kernel_lock, make_ca, make_certificates, Agent, Metrics};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One request the receiver took: its path, the protocol agreed by ALPN, its body
/// (unwrapped from gzip and from gRPC's framing).
#[derive(Debug, Clone)]
struct Taken {
    path: String,
    alpn: String,
    body: Vec<u8>,
}

struct TlsReceiver {
    port: u16,
    taken: Arc<Mutex<Vec<Taken>>>,
    /// Connections whose TLS handshake failed.
    refused: Arc<AtomicU64>,
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut plain)
        .expect("gzip body");
    plain
}

impl TlsReceiver {
    /// Serves with `server.pem` of `dir`; with `client_ca`, asks every client for a
    /// certificate signed by `ca.pem`.
    fn start(dir: &Path, client_ca: bool) -> TlsReceiver {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).expect("key");
        let builder = rustls::ServerConfig::builder();
        let builder = if client_ca {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca.pem") {
                roots.add(ca.expect("ca")).expect("root");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let taken = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let (shared, failed) = (taken.clone(), refused.clone());
        let port = common::spawn_tokio_server(move |stream| {
            let (acceptor, taken, failed) = (acceptor.clone(), shared.clone(), failed.clone());
            async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let alpn = stream
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                serve(stream, alpn, taken).await;
            }
        });
        TlsReceiver {
            port,
            taken,
            refused,
        }
    }

    fn taken(&self) -> Vec<Taken> {
        self.taken.lock().expect("lock").clone()
    }

    /// The OTLP metrics requests taken, decoded.
    fn metrics(&self) -> Vec<(String, ExportMetricsServiceRequest)> {
        self.taken()
            .into_iter()
            .filter(|t| t.path.ends_with("/v1/metrics") || t.path.contains("MetricsService"))
            .map(|t| {
                let request = ExportMetricsServiceRequest::decode(&t.body[..])
                    .expect("an ExportMetricsServiceRequest");
                (t.alpn, request)
            })
            .collect()
    }
}

async fn serve(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    alpn: String,
    taken: Arc<Mutex<Vec<Taken>>>,
) {
    let grpc = alpn == "h2";
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (taken, alpn) = (taken.clone(), alpn.clone());
            async move {
                let path = request.uri().path().to_string();
                let gzip = request
                    .headers()
                    .get("content-encoding")
                    .is_some_and(|v| v.as_bytes() == b"gzip");
                let raw = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                let body = if grpc {
                    // One length-prefixed message; flag 1: compressed.
                    let message = raw.get(5..).unwrap_or_default();
                    if raw.first() == Some(&1) {
                        gunzip(message)
                    } else {
                        message.to_vec()
                    }
                } else if gzip {
                    gunzip(&raw)
                } else {
                    raw
                };
                taken.lock().expect("lock").push(Taken { path, alpn, body });
                let response = if grpc {
                    // Trailers-only: the status in the headers.
                    hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Full::new(bytes::Bytes::new()))
                } else {
                    hyper::Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(Full::new(bytes::Bytes::new()))
                };
                Ok::<_, std::convert::Infallible>(response.expect("response"))
            }
        });
    let io = hyper_util::rt::TokioIo::new(stream);
    if grpc {
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent with no kernel probes, pushing its metrics every second to `endpoint`.
fn otlp_config(endpoint: &str, protocol: &str, tls: &str) -> String {
    format!(
        "probes:\n  syscalls: {{enabled: false}}\n  process: {{enabled: false}}\n  tcp: {{enabled: false}}\nexporters:\n  otlp:\n    enabled: true\n    protocol: {protocol}\n    endpoint: \"{endpoint}\"\n    metrics_interval_secs: 1\n    max_retry_secs: 1\n{tls}"
    )
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn otlp_metrics_arrive_over_tls_by_http_and_by_grpc_with_the_ca_from_config_or_environment() {
    if !have_root("otlp_metrics_arrive_over_tls_by_http_and_by_grpc") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = common::TempDir::new("tls-push");
    make_certificates(dir.path());
    let receiver = TlsReceiver::start(dir.path(), false);
    let endpoint = format!("https://127.0.0.1:{}", receiver.port);

    // http/protobuf, the CA from the configuration.
    let tls = format!(
        "    tls:\n      ca_file: \"{}\"\n",
        path(dir.path(), "ca.pem")
    );
    let agent = Agent::start(&otlp_config(&endpoint, "http/protobuf", &tls));
    wait_until("metrics over https", || !receiver.metrics().is_empty());
    drop(agent);
    let (alpn, request) = receiver.metrics().remove(0);
    assert_eq!(alpn, "http/1.1");
    assert!(request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .any(|m| m.name.starts_with("periscope")));

    // gRPC, the CA from the standard variable.
    let before = receiver.metrics().len();
    let ca = path(dir.path(), "ca.pem");
    let agent = Agent::start_with_env(
        &otlp_config(&endpoint, "grpc", ""),
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str())],
    );
    wait_until("metrics over gRPC with TLS", || {
        receiver.metrics().len() > before
    });
    let metrics = agent.metrics();
    drop(agent);
    let (alpn, request) = receiver.metrics().remove(before);
    assert_eq!(alpn, "h2");
    assert!(!request.resource_metrics.is_empty());
    assert!(
        receiver.taken()[before]
            .path
            .ends_with("MetricsService/Export"),
        "{:?}",
        receiver.taken()[before].path
    );
    assert_eq!(
        metrics.one("periscope_exporter_failures_total", &[("exporter", "otlp")]),
        0.0
    );
    assert_eq!(receiver.refused.load(Ordering::Relaxed), 0);
}

#[test]
fn a_receiver_that_asks_for_a_client_certificate_gets_it_and_refuses_an_agent_without() {
    if !have_root("a_receiver_that_asks_for_a_client_certificate_gets_it") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = common::TempDir::new("tls-client");
    make_certificates(dir.path());
    let receiver = TlsReceiver::start(dir.path(), true);
    let endpoint = format!("https://127.0.0.1:{}", receiver.port);
    let tls = format!(
        "    tls:\n      ca_file: \"{}\"\n",
        path(dir.path(), "ca.pem")
    );

    // The client certificate from the per-signal variables.
    let (cert, key) = (
        path(dir.path(), "client.pem"),
        path(dir.path(), "client-key.pem"),
    );
    let agent = Agent::start_with_env(
        &otlp_config(&endpoint, "http/protobuf", &tls),
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                cert.as_str(),
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", key.as_str()),
        ],
    );
    wait_until("metrics with a client certificate", || {
        !receiver.metrics().is_empty()
    });
    drop(agent);

    // Without it: refused, logged, counted; nothing arrives.
    let before = receiver.metrics().len();
    let agent = Agent::start_logged(&otlp_config(&endpoint, "http/protobuf", &tls), &[]);
    let mut metrics = Metrics::parse("");
    wait_until("a failure without a client certificate", || {
        metrics = agent.metrics();
        metrics.sum("periscope_exporter_failures_total", &[("exporter", "otlp")]) >= 1.0
    });
    assert_eq!(receiver.metrics().len(), before);
    let log = agent.log();
    assert!(
        log.contains("client certificate") || log.contains("CertificateRequired"),
        "{log}"
    );
}

#[test]
fn a_wrong_ca_fails_with_a_clear_log_line_and_a_counted_failure() {
    if !have_root("a_wrong_ca_fails_with_a_clear_log_line_and_a_counted_failure") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = common::TempDir::new("tls-wrong-ca");
    make_certificates(dir.path());
    make_ca(dir.path(), "other-ca");
    let receiver = TlsReceiver::start(dir.path(), false);
    let endpoint = format!("https://127.0.0.1:{}", receiver.port);
    let tls = format!(
        "    tls:\n      ca_file: \"{}\"\n",
        path(dir.path(), "other-ca.pem")
    );
    let agent = Agent::start_logged(&otlp_config(&endpoint, "http/protobuf", &tls), &[]);
    wait_until("a counted failure", || {
        agent
            .metrics()
            .sum("periscope_exporter_failures_total", &[("exporter", "otlp")])
            >= 2.0
    });
    assert!(receiver.metrics().is_empty(), "nothing passes a wrong CA");
    assert!(receiver.refused.load(Ordering::Relaxed) >= 1);
    let log = agent.log();
    assert!(
        log.contains("not signed by a trusted authority: check tls.ca_file"),
        "{log}"
    );

    // A CA file that is not one is refused at start, naming the key.
    let junk = dir.write("junk.pem", "not a certificate\n");
    let out = std::process::Command::new(common::periscope_bin())
        .args(["run", "--config"])
        .arg(dir.write(
            "bad.yaml",
            &otlp_config(
                &endpoint,
                "http/protobuf",
                &format!("    tls:\n      ca_file: \"{}\"\n", junk.display()),
            ),
        ))
        .output()
        .expect("periscope runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exporters.otlp.metrics_tls") && stderr.contains("ca_file"),
        "{stderr}"
    );
}

#[test]
fn profiles_are_pushed_to_pyroscope_over_tls() {
    if !have_root("profiles_are_pushed_to_pyroscope_over_tls") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = common::TempDir::new("tls-profiles");
    make_certificates(dir.path());
    let receiver = TlsReceiver::start(dir.path(), false);
    let agent = Agent::start(&format!(
        "probes:\n  syscalls: {{enabled: false}}\n  process: {{enabled: false}}\n  tcp: {{enabled: false}}\n  profile:\n    frequency_hz: 99\nexporters:\n  profiles:\n    interval_secs: 1\n    pyroscope:\n      enabled: true\n      endpoint: \"https://localhost:{}\"\n      tls:\n        ca_file: \"{}\"\n",
        receiver.port,
        path(dir.path(), "ca.pem")
    ));
    wait_until("a profile over https", || {
        receiver.taken().iter().any(|t| t.path == "/ingest")
    });
    let metrics = agent.metrics();
    let push = receiver
        .taken()
        .into_iter()
        .find(|t| t.path == "/ingest")
        .expect("a push");
    assert_eq!(push.alpn, "http/1.1");
    assert_eq!(&push.body[..2], &[0x1f, 0x8b], "gzip-compressed pprof");
    assert!(!gunzip(&push.body).is_empty());
    assert!(
        metrics.sum(
            "periscope_profile_pushes_total",
            &[("exporter", "pyroscope"), ("outcome", "sent")]
        ) >= 1.0
    );
}

/// A receiver that takes connections and then stalls the handshake (`junk: false`), or
/// answers it with bytes that are not TLS (`junk: true`).
fn hostile_receiver(junk: bool) -> (u16, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::Relaxed);
            if junk {
                use std::io::Write;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01\xff\xff junk");
            }
            held.push(stream);
        }
    });
    (port, accepted)
}

#[test]
fn a_stalled_or_junk_handshake_is_bounded_counted_and_never_holds_the_agents_stop() {
    if !have_root("a_stalled_or_junk_handshake_is_bounded_counted") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = common::TempDir::new("tls-hostile");
    make_certificates(dir.path());
    let tls = format!(
        "    tls:\n      ca_file: \"{}\"\n",
        path(dir.path(), "ca.pem")
    );
    for junk in [false, true] {
        let (port, accepted) = hostile_receiver(junk);
        let config = otlp_config(&format!("https://127.0.0.1:{port}"), "http/protobuf", &tls)
            .replace(
                "max_retry_secs: 1\n",
                "max_retry_secs: 1\n    timeout_secs: 1\n",
            );
        let mut agent = Agent::start(&config);
        wait_until("failed exports", || {
            agent
                .metrics()
                .sum("periscope_exporter_failures_total", &[("exporter", "otlp")])
                >= 2.0
        });
        assert!(accepted.load(Ordering::Relaxed) >= 1, "junk: {junk}");
        agent.signal(libc::SIGTERM);
        let asked = Instant::now();
        let status = loop {
            if let Some(status) = agent.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "the agent stops by its deadline (junk: {junk})"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "junk: {junk}: {status}");
    }
}
