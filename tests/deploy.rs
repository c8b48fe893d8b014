//! The shipped Prometheus config, rules and Grafana dashboards: valid for promtool, and
//! every PromQL expression in them returns data from a real Prometheus scraping a real
//! agent under HTTP load. The Kubernetes manifests against the Kubernetes schemas, the
//! configurations they carry, and the systemd unit.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

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
        3,
        "the HTTP, service graph and TCP dashboards: {dashboards:?}"
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
    assert_eq!(exprs.len(), 8, "{exprs:?}");
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
    // process probe off, so that the probe-down alert does; and one of the http probe's
    // optional programs refused, so that the probe-degraded alert does.
    let agent = Agent::start_refusing(
        "probes:\n  process:\n    enabled: false\n  http:\n    enabled: true\n    ring_buffer_bytes: 4096\n",
        &["psc_ssl_set_fd"],
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

    // Every expression must work whether Prometheus stores the classic buckets or, with
    // native histograms on, the native histograms.
    let rules = Path::new("deploy/prometheus/rules.yml");
    let classic = Prometheus::start(agent.port, Some(rules));
    let native = Prometheus::start_flagged(
        agent.port,
        Some(rules),
        "",
        &["--enable-feature=native-histograms"],
    );

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
    let mut missing: Vec<(&str, String)> = exprs
        .iter()
        .flat_map(|expr| [("classic", expr.clone()), ("native", expr.clone())])
        .collect();
    for _ in 0..90 {
        missing.retain(|(which, expr)| {
            let prometheus = if *which == "native" {
                &native
            } else {
                &classic
            };
            prometheus.query(expr).is_empty()
        });
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
    drop((classic, native));
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

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).expect("a manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("YAML"))
        .collect()
}

fn kind_named<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("a {kind}"))
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let manifests: Vec<String> = ["rbac", "daemonset", "service", "otel-collector"]
        .iter()
        .map(|name| format!("deploy/kubernetes/{name}.yaml"))
        .collect();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate runs (scripts/setup.sh --test installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        !report.contains("WARN") && !report.contains("ERROR"),
        "{report}"
    );
    // Every object validated: namespace, service account, role, binding, config, daemon
    // set, service, and the collector's config, deployment and service.
    assert_eq!(
        report.matches(" passed for resource ").count(),
        10,
        "{report}"
    );
}

#[test]
fn the_daemonset_grants_capabilities_not_privilege_and_mounts_read_only() {
    let docs = yaml_documents("deploy/kubernetes/daemonset.yaml");
    let pod = &kind_named(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(
        added,
        [
            "BPF",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "DAC_READ_SEARCH"
        ]
    );
    assert!(container["resources"]["limits"]["memory"]
        .as_str()
        .is_some());
    for mount in container["volumeMounts"].as_sequence().expect("mounts") {
        let path = mount["mountPath"].as_str().expect("path");
        // tracefs is mounted by the agent when a probe needs it and is absent.
        if path != "/sys/kernel/tracing" {
            assert_eq!(mount["readOnly"].as_bool(), Some(true), "{path}");
        }
    }
    // The systemd unit grants the same capabilities.
    let unit = std::fs::read_to_string("deploy/systemd/periscope.service").expect("unit");
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a bounding set");
    let unit_caps: Vec<String> = bounding
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(unit_caps, added);
}

#[test]
fn the_shipped_agent_config_is_valid_and_sends_to_the_shipped_collector() {
    let docs = yaml_documents("deploy/kubernetes/daemonset.yaml");
    let config = kind_named(&docs, "ConfigMap")["data"]["periscope.yaml"]
        .as_str()
        .expect("the agent's config");
    let dir = common::TempDir::new("deploy-config");
    let path = dir.write("periscope.yaml", config);
    let out = Command::new(common::periscope_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("periscope runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent: serde_yaml::Value = serde_yaml::from_str(config).expect("YAML");
    let endpoint = agent["exporters"]["otlp"]["endpoint"]
        .as_str()
        .expect("endpoint");
    assert_eq!(endpoint, "http://otel-collector.periscope.svc:4318");

    // The collector listens where the agents send, and each pipeline uses only what the
    // configuration defines.
    let collector_docs = yaml_documents("deploy/kubernetes/otel-collector.yaml");
    let collector: serde_yaml::Value = serde_yaml::from_str(
        kind_named(&collector_docs, "ConfigMap")["data"]["config.yaml"]
            .as_str()
            .expect("the collector's config"),
    )
    .expect("YAML");
    assert_eq!(
        collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].as_str(),
        Some("0.0.0.0:4318")
    );
    let pipelines = collector["service"]["pipelines"]
        .as_mapping()
        .expect("pipelines");
    assert!(pipelines.contains_key("traces") && pipelines.contains_key("metrics"));
    for (name, pipeline) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            for component in pipeline[section].as_sequence().into_iter().flatten() {
                let component = component.as_str().expect("a name");
                assert!(
                    collector[section].get(component).is_some(),
                    "{name:?} uses {section}.{component}, which is not defined"
                );
            }
        }
    }
    let service = kind_named(&collector_docs, "Service");
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert!(ports.contains(&4318) && ports.contains(&4317));
}

#[test]
fn prometheus_finds_the_agents_through_the_headless_service() {
    let (ok, report) = promtool(&["check", "config", "deploy/prometheus/kubernetes.yml"]);
    assert!(ok, "{report}");
    let service = yaml_documents("deploy/kubernetes/service.yaml");
    let spec = &kind_named(&service, "Service")["spec"];
    assert_eq!(spec["clusterIP"].as_str(), Some("None"), "headless");
    assert_eq!(spec["ports"][0]["port"].as_i64(), Some(9101));
    let monitor = yaml_documents("deploy/kubernetes/servicemonitor.yaml");
    let monitor = kind_named(&monitor, "ServiceMonitor");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    assert!(
        selector
            .as_mapping()
            .is_some_and(|labels| !labels.is_empty()),
        "the monitor selects by labels: {selector:?}"
    );
    assert_eq!(
        selector,
        &kind_named(&service, "Service")["metadata"]["labels"]
    );
    let port = spec["ports"][0]["name"].as_str().expect("a named port");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some(port));
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string("deploy/systemd/periscope.service").expect("unit");
    // systemd-analyze checks that ExecStart exists: point it at the built binary.
    let dir = common::TempDir::new("deploy-unit");
    let path = dir.write(
        "periscope.service",
        &unit.replace("/usr/local/bin/periscope", common::periscope_bin()),
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (scripts/setup.sh --test installs systemd)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && report.trim().is_empty(), "{report}");
}

/// (kind, name) -> object, for comparing sets of objects.
fn by_kind_and_name(
    docs: impl IntoIterator<Item = serde_yaml::Value>,
) -> std::collections::BTreeMap<(String, String), serde_yaml::Value> {
    docs.into_iter()
        .filter(|doc| !doc.is_null())
        .map(|doc| {
            let kind = doc["kind"].as_str().expect("kind").to_string();
            let name = doc["metadata"]["name"].as_str().expect("name").to_string();
            ((kind, name), doc)
        })
        .collect()
}

#[test]
fn the_helm_chart_renders_the_same_objects_as_the_manifests() {
    let out = Command::new("python3")
        .args(["scripts/helm-template.py", "deploy/helm/periscope"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "rendering the chart (scripts/setup.sh --test installs helm-python-sdk): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rendered = by_kind_and_name(
        serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML")),
    );
    // The chart leaves the namespace to `helm install --create-namespace`.
    let plain = by_kind_and_name(
        [
            "rbac",
            "daemonset",
            "service",
            "servicemonitor",
            "otel-collector",
        ]
        .iter()
        .flat_map(|name| yaml_documents(&format!("deploy/kubernetes/{name}.yaml")))
        .filter(|doc| doc["kind"].as_str() != Some("Namespace")),
    );
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    for (key, object) in &plain {
        assert_eq!(&rendered[key], object, "{key:?} differs from the manifest");
    }
    // And what it renders validates too (the ServiceMonitor is the Prometheus
    // Operator's own kind, which the Kubernetes schemas do not hold).
    let dir = common::TempDir::new("helm");
    let core: Vec<String> = rendered
        .iter()
        .filter(|((kind, _), _)| kind != "ServiceMonitor")
        .map(|(_, doc)| serde_yaml::to_string(doc).expect("YAML"))
        .collect();
    let file = dir.write("rendered.yaml", &core.join("---\n"));
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("kubernetes-validate");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        9,
        "{report}"
    );
}

/// With webConfig.secretName the chart mounts the Secret, hands the agent its web
/// configuration, checks the port only in its probes (they have no credentials), and
/// passes the ServiceMonitor's endpoint settings through; what it renders validates.
#[test]
fn the_helm_chart_turns_on_tls_and_basic_auth_from_a_secret() {
    let out = Command::new("python3")
        .args([
            "scripts/helm-template.py",
            "deploy/helm/periscope",
            "--values-json",
            r#"{"webConfig": {"secretName": "periscope-web"}, "serviceMonitor": {"endpointConfig": {"scheme": "https"}}}"#,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rendered = by_kind_and_name(
        serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML")),
    );
    let daemonset = &rendered[&("DaemonSet".to_string(), "periscope".to_string())];
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--web.config.file", "/etc/periscope/web/web.yml"]),
        "{args:?}"
    );
    assert!(container["readinessProbe"]["tcpSocket"].is_mapping());
    assert!(container["livenessProbe"]["tcpSocket"].is_mapping());
    let mounted = container["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .any(|m| m["name"] == "web" && m["mountPath"] == "/etc/periscope/web");
    assert!(mounted);
    let secret = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .any(|v| v["secret"]["secretName"] == "periscope-web");
    assert!(secret);
    let monitor = &rendered[&("ServiceMonitor".to_string(), "periscope".to_string())];
    assert_eq!(monitor["spec"]["endpoints"][0]["scheme"], "https");
    let dir = common::TempDir::new("helm-web");
    let file = dir.write(
        "daemonset.yaml",
        &serde_yaml::to_string(daemonset).expect("YAML"),
    );
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("kubernetes-validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
