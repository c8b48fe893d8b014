//! The shipped Prometheus config, rules and Grafana dashboard: valid for promtool, and
//! every PromQL expression in them returns data from a real Prometheus scraping a real
//! agent under HTTP load.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, have_root, kernel_lock, Agent, Prometheus};

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (scripts/setup.sh --test installs prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_shipped_config_and_rules() {
    let (ok, report) = promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    assert!(ok, "{report}");
    let (ok, report) = promtool(&["check", "rules", "deploy/prometheus/rules.yml"]);
    assert!(ok, "{report}");
}

/// Every expression of the dashboard, with Grafana's variables replaced as Grafana would.
fn dashboard_expressions() -> Vec<String> {
    let mut exprs = Vec::new();
    let mut dashboards: Vec<_> = std::fs::read_dir("deploy/grafana/dashboards")
        .expect("the dashboards")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    dashboards.sort();
    assert_eq!(
        dashboards.len(),
        2,
        "the HTTP and TCP dashboards: {dashboards:?}"
    );
    for path in dashboards {
        let text = std::fs::read_to_string(&path).expect("a dashboard");
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        let before = exprs.len();
        for panel in json["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("expr");
                exprs.push(
                    expr.replace("$service", ".+")
                        .replace("$__rate_interval", "1m"),
                );
            }
        }
        assert!(exprs.len() - before >= 10, "{path:?} has its panels");
    }
    exprs
}

/// Every expression of the rules file: recording rules and alert conditions.
fn rule_expressions() -> Vec<String> {
    let text = std::fs::read_to_string("deploy/prometheus/rules.yml").expect("rules");
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == ">-" || rest == "|" {
                let mut expr = String::new();
                while let Some(next) = lines.peek() {
                    if next.trim_start().contains(':') && !next.contains('(') {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push(' ');
                    lines.next();
                }
                exprs.push(expr.trim().to_string());
            } else {
                exprs.push(rest.to_string());
            }
        }
    }
    assert_eq!(exprs.len(), 7, "{exprs:?}");
    exprs
}

const SERVER: &str = r#"
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.7)
        code = 500 if self.path.startswith("/fail") else 200
        self.send_response(code)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")
class Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address): pass  # clients hang up mid-burst
server = Quiet(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
server.serve_forever()
"#;

#[test]
fn every_dashboard_and_rule_expression_returns_data() {
    if !have_root("every_dashboard_and_rule_expression_returns_data") {
        return;
    }
    let _kernel = kernel_lock();
    // A tiny ring buffer, so that the events-lost alert has something to say; the
    // process probe off, so that the probe-down alert does.
    let agent = Agent::start(
        "probes:\n  process:\n    enabled: false\n  http:\n    enabled: true\n    ring_buffer_bytes: 4096\n",
    );
    let server_port = free_port();
    let closed_port = free_port();
    let mut server = Command::new("python3")
        .args(["-c", SERVER, &server_port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server starts");

    let prometheus = Prometheus::start(agent.port, Some(Path::new("deploy/prometheus/rules.yml")));

    // Load for the whole test: pipelined bursts of fast requests and 5xx that overflow
    // the tiny ring buffer, with pauses so that the ring drains; and, on connections of
    // their own, slow requests (a connection that lost events drops what it had in
    // flight, so slow requests in a burst would rarely be counted).
    let running = Arc::new(AtomicBool::new(true));
    let bursts = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut burst = Vec::new();
            for _ in 0..5 {
                // Each group opens with its 5xx: when the ring overflows, the first
                // responses of a burst are the ones counted, so the error ratio stays
                // above the alert's 5 %.
                for path in ["/fail", "/ok", "/ok", "/ok", "/ok", "/ok"] {
                    burst.extend_from_slice(
                        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
                    );
                }
            }
            while running.load(Ordering::Relaxed) {
                if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", server_port)) {
                    let _ = stream.set_nodelay(true);
                    let _ = stream.write_all(&burst);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    read_at_least(&mut stream, 30 * 40);
                }
                // A refused connect, for the TCP dashboard's failures panel.
                let _ = TcpStream::connect(("127.0.0.1", closed_port));
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let running = running.clone();
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", server_port)) {
                        let _ = stream.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        read_at_least(&mut stream, 40);
                    }
                }
            })
        })
        .collect();

    let mut exprs = dashboard_expressions();
    exprs.extend(rule_expressions());
    let mut missing = exprs.clone();
    for _ in 0..90 {
        missing.retain(|expr| prometheus.query(expr).is_empty());
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    running.store(false, Ordering::Relaxed);
    let _ = bursts.join();
    for thread in slow {
        let _ = thread.join();
    }
    drop(prometheus);
    let _ = server.kill();
    let _ = server.wait();
    assert!(Path::new("deploy/grafana/provisioning/dashboards/periscope.yaml").exists());
    assert!(missing.is_empty(), "expressions without data: {missing:#?}");
}

/// Reads until `want` bytes came, the peer closed, or the read timed out.
fn read_at_least(stream: &mut TcpStream, want: usize) {
    let mut sink = [0u8; 4096];
    let mut got = 0;
    while got < want {
        match std::io::Read::read(stream, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
}
