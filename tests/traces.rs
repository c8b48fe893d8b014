//! Spans of HTTP requests, end to end: real Python servers, requests with and without
//! W3C trace context, spans read back from the JSON lines exporter and checked against
//! its schema.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::apps::{connect, get, hex_id, App, DnsServer, MysqlServer, PgServer, RedisServer};
use common::{have_root, kernel_lock, Agent, TempDir};
use serde_json::Value;

fn traces_config(jsonl: &Path) -> String {
    traces_config_with(jsonl, "", "")
}

/// `traces_config` with more keys for the http probe and for traces, each a YAML line
/// indented as its section's keys.
fn traces_config_with(jsonl: &Path, http: &str, traces: &str) -> String {
    format!(
        "probes:\n  syscalls:\n    enabled: false\n  http:\n    enabled: true\n{http}traces:\n  enabled: true\n{traces}exporters:\n  jsonl:\n    enabled: true\n    path: \"{}\"\n    metrics_interval_secs: 1\n",
        jsonl.display()
    )
}

/// Servers only (the tests' own requests would be client spans of their own), under
/// `sampler`, a YAML line or two of the traces section.
fn server_traces_config(jsonl: &Path, sampler: &str) -> String {
    traces_config_with(jsonl, "    clients: false\n", sampler)
}

/// Waits until the agent counted `total` requests of the server `pid`, then reads the
/// kernel's span decisions: (sampled, unsampled).
fn span_decisions_once_counted(agent: &Agent, pid: u64, total: u64) -> (u64, u64) {
    let pid = pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = agent.metrics();
        let counted = metrics.sum(
            "http_server_request_duration_seconds_count",
            &[("process_pid", pid.as_str())],
        );
        if counted == total as f64 {
            let decisions = |decision: &str| {
                metrics.one(
                    "periscope_http_kernel_span_decisions_total",
                    &[("decision", decision)],
                ) as u64
            };
            return (decisions("sampled"), decisions("unsampled"));
        }
        assert!(
            Instant::now() < deadline,
            "{counted} of {total} requests counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

/// Spans of `pid` of `kind` ("server", "client").
fn spans_of<'a>(lines: &'a [Value], pid: u64, kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "span" && l["kind"] == kind && l["resource"]["process.pid"] == pid)
        .collect()
}

/// The server spans of `pid`, once at least `at_least` of them reached the file.
fn server_spans(path: &Path, pid: u64, at_least: usize) -> Vec<Value> {
    let lines = wait_for(path, |lines| {
        spans_of(lines, pid, "server").len() >= at_least
    });
    spans_of(&lines, pid, "server")
        .into_iter()
        .cloned()
        .collect()
}

/// Waits until `want` holds for the file's lines (spans reach it within a drain and a
/// write), then a little longer so that nothing extra slips in unseen.
fn wait_for(path: &Path, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = read_lines(path);
        if want(&lines) {
            std::thread::sleep(Duration::from_millis(500));
            return read_lines(path);
        }
        assert!(
            Instant::now() < deadline,
            "spans did not arrive; {} lines so far",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn validate_against_schema(path: &Path) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/jsonl-schema.json");
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        v = jsonschema.Draft202012Validator(schema)\n\
        n = 0\n\
        for line in open(sys.argv[2]):\n    v.validate(json.loads(line)); n += 1\n\
        print(n)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(schema)
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "a line does not follow docs/jsonl-schema.json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many requests `traced_workload` sends with a sampled traceparent (every fifth
/// answered 503), with none, and with sampled=0; the checks count spans against them.
const TRACED: u64 = 25;
const PLAIN: u64 = 15;
const UNSAMPLED: u64 = 10;

/// What `traced_workload` sent.
struct TracedWorkload {
    /// Trace id -> the caller's span id, for requests whose span must join the trace.
    expected: HashMap<String, String>,
    /// Trace ids of sampled=0 requests, which must make no span.
    unsampled: HashSet<String>,
    /// The client's last connection, left open until the test ends: the spans are
    /// checked while the client is still connected.
    _conn: TcpStream,
}

/// Sends the mixed workload of the trace-context test to `port`: TRACED requests with
/// a sampled traceparent (two of them with a tracestate, one invalid), PLAIN without
/// one, UNSAMPLED with sampled=0, and 3 with malformed headers.
fn traced_workload(port: u16) -> TracedWorkload {
    let mut expected = HashMap::new();
    let mut conn = connect(port);
    for i in 0..TRACED {
        // A fresh connection every fifth request, keep-alive otherwise.
        if i % 5 == 0 {
            conn = connect(port);
        }
        let trace = format!("{}{}", hex_id(0xabc, 16), hex_id(i + 1, 16));
        let parent = hex_id(0x1000 + i, 16);
        let state = match i {
            0 => "tracestate: vendor=abc, Bad Key=1\r\n",
            1 => "tracestate: vendor=abc,, t@sys=x\r\n",
            _ => "",
        };
        let header = format!("traceparent: 00-{trace}-{parent}-01\r\n{state}");
        let path = if i % 5 == 4 { "/fail" } else { "/hello" };
        let (status, _) = get(&mut conn, path, &header);
        assert_eq!(status, if path == "/fail" { 503 } else { 200 });
        expected.insert(trace, parent);
    }
    for _ in 0..PLAIN {
        get(&mut conn, "/hello", "");
    }
    let mut unsampled = HashSet::new();
    for i in 0..UNSAMPLED {
        let trace = format!("{}{}", hex_id(0xdef, 16), hex_id(i + 1, 16));
        get(
            &mut conn,
            "/hello",
            &format!("traceparent: 00-{trace}-{}-00\r\n", hex_id(7, 16)),
        );
        unsampled.insert(trace);
    }
    // Malformed headers are ignored: each of these starts a new trace of its own.
    for bad in [
        "traceparent: 00-ABC-123-01\r\n",
        "traceparent: 00-00000000000000000000000000000000-0000000000000001-01\r\n",
        "traceparent: zz\r\ntraceparent: zz\r\n",
    ] {
        get(&mut conn, "/hello", bad);
    }
    TracedWorkload {
        expected,
        unsampled,
        _conn: conn,
    }
}

/// Each server span of `traced_workload` either joins its caller's trace under the
/// caller's span (with the status, name and tracestate of its request) or, without
/// valid context, is the root of a trace of its own; none comes from a sampled=0 request.
fn check_server_spans(
    server: &[&Value],
    expected: &HashMap<String, String>,
    unsampled: &HashSet<String>,
    port: u16,
) {
    let mut joined = 0;
    let mut roots = HashSet::new();
    for span in server {
        let trace = span["trace_id"].as_str().expect("trace id");
        let span_id = span["span_id"].as_str().expect("span id");
        assert!(
            !unsampled.contains(trace),
            "a sampled=0 request made a span"
        );
        if let Some(parent) = expected.get(trace) {
            joined += 1;
            assert_eq!(span["parent_span_id"], parent.as_str());
            assert_ne!(span_id, parent);
            let failed = span["attributes"]["url.path"] == "/fail";
            assert_eq!(span["status"], if failed { "error" } else { "unset" });
            assert_eq!(
                span["attributes"]["http.response.status_code"],
                if failed { 503 } else { 200 }
            );
            assert_eq!(
                span["name"],
                if failed { "GET /fail" } else { "GET /hello" }
            );
            // A tracestate with an invalid member is dropped whole; a valid one is kept.
            let state = match trace.strip_prefix(&hex_id(0xabc, 16)) {
                Some(n) if n == hex_id(1, 16) => "",
                Some(n) if n == hex_id(2, 16) => "vendor=abc,t@sys=x",
                _ => "",
            };
            assert_eq!(span["trace_state"], state);
        } else {
            assert_eq!(span["parent_span_id"], Value::Null);
            assert!(roots.insert(trace.to_string()), "root trace ids are unique");
        }
        assert_eq!(span["attributes"]["server.port"], u64::from(port));
        assert_eq!(span["attributes"]["client.address"], "127.0.0.1");
        assert_eq!(span["attributes"]["http.request.method"], "GET");
        let start = span["start_time_unix_nano"].as_u64().expect("start");
        let end = span["end_time_unix_nano"].as_u64().expect("end");
        assert!(start <= end);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64;
        assert!(now - start < 120_000_000_000, "start is wall time");
    }
    assert_eq!(joined, TRACED);
    assert_eq!(roots.len() as u64, PLAIN + 3);
}

#[test]
fn server_spans_join_the_callers_trace_and_honour_its_sampled_flag() {
    if !have_root("server_spans_join_the_callers_trace_and_honour_its_sampled_flag") {
        return;
    }
    let _lock = kernel_lock();
    let dir = TempDir::new("traces");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(&traces_config(&jsonl));
    let app = App::start();
    let TracedWorkload {
        expected,
        unsampled,
        _conn,
    } = traced_workload(app.port);

    let want = TRACED + PLAIN + 3;
    let lines = wait_for(&jsonl, |lines| {
        spans_of(lines, app.pid(), "server").len() as u64 >= want
    });
    let server = spans_of(&lines, app.pid(), "server");
    assert_eq!(
        server.len() as u64,
        want,
        "exactly one span per sampled request"
    );
    check_server_spans(&server, &expected, &unsampled, app.port);

    // Metric snapshots share the file: the server's request count is among them.
    let pid_text = app.pid().to_string();
    let lines = wait_for(&jsonl, |lines| {
        lines.iter().any(|l| {
            l["type"] == "metric"
                && l["name"] == "http_server_request_duration_seconds"
                && l["labels"]["process_pid"].as_str() == Some(pid_text.as_str())
                && l["labels"]["http_route"] == "/hello"
                && l["count"] == (TRACED - TRACED / 5) + PLAIN + UNSAMPLED + 3
        })
    });
    assert!(lines
        .iter()
        .any(|l| l["type"] == "metric" && l["kind"] == "counter"));
    validate_against_schema(&jsonl);

    let metrics = agent.metrics();
    let sent = metrics.one(
        "periscope_exporter_spans_sent_total",
        &[("exporter", "jsonl")],
    );
    assert!(sent >= want as f64, "exported spans are counted: {sent}");
    // Stopping writes a last snapshot, after the last span.
    drop(agent);
    let lines = read_lines(&jsonl);
    assert_eq!(
        lines.last().map(|l| l["type"].clone()),
        Some(Value::from("metric"))
    );
}

#[test]
fn a_call_made_while_serving_is_a_child_span_and_the_called_server_joins_the_trace() {
    if !have_root("a_call_made_while_serving_is_a_child_span_and_the_called_server_joins_the_trace")
    {
        return;
    }
    let _lock = kernel_lock();
    let dir = TempDir::new("traces-nested");
    let jsonl = dir.path().join("spans.jsonl");
    let _agent = Agent::start(&traces_config(&jsonl));
    let front = App::start();
    let back = App::start();

    let trace = format!("{}{}", hex_id(0x5eed, 16), hex_id(1, 16));
    let caller = hex_id(0xca11, 16);
    let mut conn = connect(front.port);
    let (status, app_span) = get(
        &mut conn,
        &format!("/call/{}/propagate", back.port),
        &format!("traceparent: 00-{trace}-{caller}-01\r\n"),
    );
    assert_eq!(status, 200);
    let (status, _) = get(&mut conn, &format!("/call/{}/plain", back.port), "");
    assert_eq!(status, 200);

    let lines = wait_for(&jsonl, |lines| {
        spans_of(lines, front.pid(), "server").len() >= 2
            && spans_of(lines, front.pid(), "client").len() >= 2
            && spans_of(lines, back.pid(), "server").len() >= 2
    });
    let front_server = spans_of(&lines, front.pid(), "server");
    let front_client = spans_of(&lines, front.pid(), "client");
    let back_server = spans_of(&lines, back.pid(), "server");
    assert_eq!(
        (front_server.len(), front_client.len(), back_server.len()),
        (2, 2, 2)
    );
    let by_path = |spans: &[&Value], path: &str| -> Value {
        spans
            .iter()
            .find(|s| {
                s["attributes"]["url.path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(path))
            })
            .map(|s| (*s).clone())
            .unwrap_or_else(|| panic!("no span for {path}"))
    };

    // Propagated by the application: one trace across both servers.
    let serving = by_path(&front_server, "/propagate");
    assert_eq!(serving["trace_id"], trace.as_str());
    assert_eq!(serving["parent_span_id"], caller.as_str());
    let call = front_client
        .iter()
        .find(|s| s["span_id"] == app_span.as_str())
        .expect("the client span takes the span id the application sent");
    assert_eq!(call["trace_id"], trace.as_str());
    assert_eq!(call["parent_span_id"], serving["span_id"]);
    assert_eq!(call["attributes"]["server.port"], u64::from(back.port));
    assert_eq!(call["attributes"]["server.address"], "127.0.0.1");
    let called = back_server
        .iter()
        .find(|s| s["trace_id"] == trace.as_str())
        .expect("the called server joins the trace");
    assert_eq!(called["parent_span_id"], app_span.as_str());

    // Not propagated: the call is still the serving span's child; the called server,
    // which saw no header, starts a trace of its own.
    let serving = by_path(&front_server, "/plain");
    let call = front_client
        .iter()
        .find(|s| s["span_id"] != app_span.as_str())
        .expect("second client span");
    assert_eq!(call["trace_id"], serving["trace_id"]);
    assert_eq!(call["parent_span_id"], serving["span_id"]);
    let other = back_server
        .iter()
        .find(|s| s["trace_id"] != trace.as_str())
        .expect("second leaf span");
    assert_eq!(other["parent_span_id"], Value::Null);
    assert_ne!(other["trace_id"], serving["trace_id"]);
    validate_against_schema(&jsonl);
}

/// A server that on /<system>/get and /<system>/fail runs `get` or `fail` (Python
/// statements using what `setup` made) in the thread serving the request.
/// argv: port db_port
fn py_db_app(setup: &str, get: &str, fail: &str) -> String {
    let indent = |code: &str| code.replace('\n', "\n            ");
    format!(
        r#"
import sys
{setup}
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.endswith("/get"):
            {get}
        else:
            {fail}
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
server.serve_forever()
"#,
        get = indent(get),
        fail = indent(fail),
    )
}

/// A call the app makes to a database while serving a request: its span's name,
/// operation, summary and error type.
struct DbCall {
    name: &'static str,
    operation: &'static str,
    summary: &'static str,
    error: Option<&'static str>,
}

/// Serves /<system>/get and /<system>/fail through `app` (argv: port db_port) and checks
/// that each database call made while serving is a client span under its request's.
fn database_calls_are_child_spans(
    tag: &str,
    app: &str,
    system: &str,
    db_port: u16,
    calls: [DbCall; 2],
) {
    let dir = TempDir::new(tag);
    let jsonl = dir.path().join("spans.jsonl");
    let _agent = Agent::start(&traces_config(&jsonl));
    let port = common::free_port();
    let mut app = common::Helper::spawn(app, &[port.to_string(), db_port.to_string()]);
    let pid = u64::from(app.pid());
    let mut conn = connect(port);
    assert_eq!(get(&mut conn, &format!("/{system}/get"), "").0, 200);
    assert_eq!(get(&mut conn, &format!("/{system}/fail"), "").0, 200);

    let lines = wait_for(&jsonl, |lines| {
        spans_of(lines, pid, "server").len() >= 2
            && spans_of(lines, pid, "client")
                .iter()
                .filter(|s| s["parent_span_id"] != Value::Null)
                .count()
                >= 2
    });
    let served = spans_of(&lines, pid, "server");
    assert_eq!(served.len(), 2);
    // The calls made while serving, each under its own request's span; the app's
    // calls at start-up are roots of their own.
    let made: Vec<&Value> = spans_of(&lines, pid, "client")
        .into_iter()
        .filter(|s| s["parent_span_id"] != Value::Null)
        .collect();
    assert_eq!(made.len(), 2);
    for (call, want) in made.iter().zip(calls) {
        let parent = served
            .iter()
            .find(|s| s["span_id"] == call["parent_span_id"])
            .expect("the call's parent is a served request");
        assert_eq!(call["trace_id"], parent["trace_id"]);
        assert_eq!(call["name"], want.name);
        let attributes = &call["attributes"];
        assert_eq!(attributes["db.system.name"], system);
        assert_eq!(attributes["db.operation.name"], want.operation);
        assert_eq!(attributes["db.query.summary"], want.summary);
        assert_eq!(attributes["server.address"], "127.0.0.1");
        assert_eq!(attributes["server.port"], u64::from(db_port));
        assert_eq!(attributes["error.type"].as_str(), want.error);
        // Within the request that made it.
        let time = |span: &Value, key: &str| span[key].as_u64().expect("a time in ns");
        assert!(time(call, "start_time_unix_nano") >= time(parent, "start_time_unix_nano"));
        assert!(time(call, "end_time_unix_nano") <= time(parent, "end_time_unix_nano"));
    }
    validate_against_schema(&jsonl);
    app.child.kill().ok();
}

#[test]
fn a_redis_command_made_while_serving_is_a_database_child_span() {
    if !have_root("a_redis_command_made_while_serving_is_a_database_child_span") {
        return;
    }
    let _lock = kernel_lock();
    let redis = RedisServer::start();
    let calls = [
        DbCall {
            name: "GET",
            operation: "GET",
            summary: "GET",
            error: None,
        },
        DbCall {
            name: "LPUSH",
            operation: "LPUSH",
            summary: "LPUSH",
            error: Some("WRONGTYPE"),
        },
    ];
    // A GET, and an LPUSH on a string, which fails with WRONGTYPE.
    let app = py_db_app(
        "import redis\nr = redis.Redis(host=\"127.0.0.1\", port=int(sys.argv[2]))\nr.set(\"string\", \"v\")",
        "r.get(\"string\")",
        "try:\n    r.lpush(\"string\", \"x\")\nexcept redis.ResponseError:\n    pass",
    );
    database_calls_are_child_spans("traces-redis", &app, "redis", redis.port, calls);
}

#[test]
fn a_postgresql_statement_made_while_serving_is_a_database_child_span() {
    if !have_root("a_postgresql_statement_made_while_serving_is_a_database_child_span") {
        return;
    }
    let _lock = kernel_lock();
    let postgres = PgServer::start(false);
    let calls = [
        DbCall {
            name: "SELECT accounts",
            operation: "SELECT",
            summary: "SELECT accounts",
            error: None,
        },
        DbCall {
            name: "INSERT accounts",
            operation: "INSERT",
            summary: "INSERT accounts",
            error: Some("23"),
        },
    ];
    // A SELECT, and an INSERT that breaks the primary key, through the extended
    // protocol: framed in the kernel, whose span decisions they follow.
    let app = py_db_app(
        "import psycopg\nc = psycopg.connect(\"host=127.0.0.1 user=postgres port=\" + sys.argv[2], autocommit=True)\nc.execute(\"CREATE TABLE accounts (id int PRIMARY KEY)\")\nc.execute(\"INSERT INTO accounts VALUES (1)\")",
        "c.execute(\"SELECT id FROM accounts WHERE id = %s\", (1,)).fetchall()",
        "try:\n    c.execute(\"INSERT INTO accounts VALUES (%s)\", (1,))\nexcept psycopg.errors.UniqueViolation:\n    pass",
    );
    database_calls_are_child_spans("traces-pg", &app, "postgresql", postgres.port, calls);
}

#[test]
fn a_mysql_statement_made_while_serving_is_a_database_child_span() {
    if !have_root("a_mysql_statement_made_while_serving_is_a_database_child_span") {
        return;
    }
    let _lock = kernel_lock();
    let mysql = MysqlServer::start();
    let calls = [
        DbCall {
            name: "SELECT accounts",
            operation: "SELECT",
            summary: "SELECT accounts",
            error: None,
        },
        DbCall {
            name: "INSERT accounts",
            operation: "INSERT",
            summary: "INSERT accounts",
            error: Some("1062"),
        },
    ];
    // A SELECT, and an INSERT that breaks the primary key.
    let app = py_db_app(
        "import pymysql\nc = pymysql.connect(host=\"127.0.0.1\", port=int(sys.argv[2]), user=\"root\", autocommit=True).cursor()\nc.execute(\"CREATE DATABASE bank\")\nc.execute(\"USE bank\")\nc.execute(\"CREATE TABLE accounts (id int PRIMARY KEY)\")\nc.execute(\"INSERT INTO accounts VALUES (1)\")",
        "c.execute(\"SELECT id FROM accounts WHERE id = %s\", (1,))",
        "try:\n    c.execute(\"INSERT INTO accounts VALUES (%s)\", (1,))\nexcept pymysql.err.IntegrityError:\n    pass",
    );
    database_calls_are_child_spans("traces-mysql", &app, "mysql", mysql.port, calls);
}

#[test]
fn a_dns_lookup_made_while_serving_is_a_child_span() {
    if !have_root("a_dns_lookup_made_while_serving_is_a_child_span") {
        return;
    }
    let _lock = kernel_lock();
    let dns = DnsServer::start();
    // A lookup of a known name, and one of a missing name (NXDOMAIN), over UDP.
    let app = py_db_app(
        "import socket, struct\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ndef lookup(name):\n    q = struct.pack(\">HHHHHH\", 7, 0x0100, 1, 0, 0, 0) + b\"\".join(bytes([len(l)]) + l for l in name.split(b\".\")) + b\"\\0\\0\\1\\0\\1\"\n    s.sendto(q, (\"127.0.0.1\", int(sys.argv[2])))\n    s.recvfrom(4096)",
        "lookup(b\"known.test\")",
        "lookup(b\"nope.test\")",
    );
    let dir = TempDir::new("traces-dns");
    let jsonl = dir.path().join("spans.jsonl");
    let _agent = Agent::start(&traces_config(&jsonl));
    let port = common::free_port();
    let mut app = common::Helper::spawn(&app, &[port.to_string(), dns.port.to_string()]);
    let pid = u64::from(app.pid());
    let mut conn = connect(port);
    assert_eq!(get(&mut conn, "/dns/get", "").0, 200);
    assert_eq!(get(&mut conn, "/dns/fail", "").0, 200);
    let lines = wait_for(&jsonl, |lines| {
        spans_of(lines, pid, "server").len() >= 2 && spans_of(lines, pid, "client").len() >= 2
    });
    let served = spans_of(&lines, pid, "server");
    let lookups = spans_of(&lines, pid, "client");
    assert_eq!(lookups.len(), 2);
    for (lookup, (name, error)) in lookups
        .iter()
        .zip([("known.test", None), ("nope.test", Some("NXDOMAIN"))])
    {
        let parent = served
            .iter()
            .find(|s| s["span_id"] == lookup["parent_span_id"])
            .expect("the lookup's parent is a served request");
        assert_eq!(lookup["trace_id"], parent["trace_id"]);
        assert_eq!(lookup["name"], "DNS A");
        let attributes = &lookup["attributes"];
        assert_eq!(attributes["dns.question.name"], name);
        assert_eq!(attributes["server.port"], u64::from(dns.port));
        assert_eq!(attributes["error.type"].as_str(), error);
        let time = |span: &Value, key: &str| span[key].as_u64().expect("a time in ns");
        assert!(time(lookup, "start_time_unix_nano") >= time(parent, "start_time_unix_nano"));
        assert!(time(lookup, "end_time_unix_nano") <= time(parent, "end_time_unix_nano"));
    }
    validate_against_schema(&jsonl);
    app.child.kill().ok();
}

#[test]
fn a_containers_server_spans_and_series_carry_its_container() {
    if !have_root("a_containers_server_spans_and_series_carry_its_container") {
        return;
    }
    let _lock = kernel_lock();
    let dir = TempDir::new("traces-container");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(&traces_config(&jsonl));
    let id = format!("{:064x}", 0x5e7e_u64 << 40 | u64::from(std::process::id()));
    let uid = "3c6e9a1f-2b4d-4e8a-9f1c-7d5b3a2e1f0a";
    let cgroup = common::HandMadeCgroup::create(&format!("/kubepods/besteffort/pod{uid}/{id}"));
    let app = App::start();
    // Into the pod's container before its first request: the agent reads it from /proc.
    std::fs::write(cgroup.leaf().join("cgroup.procs"), app.pid().to_string())
        .expect("move the server");
    let mut conn = connect(app.port);
    for i in 0..6 {
        let trace = format!("{}{}", hex_id(0xc0de, 16), hex_id(i + 1, 16));
        let header = format!("traceparent: 00-{trace}-{}-01\r\n", hex_id(9, 16));
        assert_eq!(get(&mut conn, "/hello", &header).0, 200);
    }
    let spans = server_spans(&jsonl, app.pid(), 6);
    assert_eq!(spans.len(), 6);
    for span in &spans {
        assert_eq!(span["resource"]["container.id"], id.as_str(), "{span}");
        assert_eq!(span["resource"]["k8s.pod.uid"], uid, "{span}");
    }
    validate_against_schema(&jsonl);
    let pid = app.pid().to_string();
    let want = [
        ("process_pid", pid.as_str()),
        ("container_id", id.as_str()),
        ("k8s_pod_uid", uid),
    ];
    let metrics = common::eventually(&agent, |m| {
        m.sum("http_server_request_duration_seconds_count", &want) == 6.0
    });
    assert_eq!(
        metrics.sum("http_server_request_duration_seconds_count", &want),
        6.0
    );
    drop(conn);
    drop(app);
}

/// A Python server like `App`, started under pid `pid`.
fn app_with_pid(pid: u32) -> App {
    let port = common::free_port();
    let mut child = common::spawn_as_pid(pid, || {
        let mut command = Command::new("python3");
        command
            .args(["-c", common::apps::PY_APP, &port.to_string()])
            .stdout(std::process::Stdio::piped());
        command
    });
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("ready line");
    assert_eq!(line.trim(), "ready");
    App { child, port }
}

#[test]
fn a_reused_pids_requests_keep_their_own_labels() {
    if !have_root("a_reused_pids_requests_keep_their_own_labels") {
        return;
    }
    let _lock = kernel_lock();
    let dir = TempDir::new("traces-reuse");
    let agent = Agent::start(&traces_config(&dir.path().join("spans.jsonl")));
    let id = format!("{:064x}", 0x7e05e_u64 << 40 | u64::from(std::process::id()));
    let cgroup = common::HandMadeCgroup::create(&format!("/docker/{id}"));
    // The old server, in a container, answers three requests and exits.
    let old = App::start();
    std::fs::write(cgroup.leaf().join("cgroup.procs"), old.pid().to_string())
        .expect("move the server");
    let pid = old.pid() as u32;
    {
        let mut conn = connect(old.port);
        for _ in 0..3 {
            assert_eq!(get(&mut conn, "/hello", "").0, 200);
        }
    }
    // Seen while it lives: the agent reads a process's container from /proc, and the
    // kernel framer's records may reach it only after the process is gone.
    let pid_text = pid.to_string();
    common::eventually(&agent, |m| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("process_pid", pid_text.as_str()),
                ("container_id", id.as_str()),
            ],
        ) == 3.0
    });
    drop(old);
    std::thread::sleep(Duration::from_millis(50));
    // A new server on the host under the same pid answers two.
    let new = app_with_pid(pid);
    {
        let mut conn = connect(new.port);
        for _ in 0..2 {
            assert_eq!(get(&mut conn, "/hello", "").0, 200);
        }
    }
    let ours = [("process_pid", pid_text.as_str())];
    let count = "http_server_request_duration_seconds_count";
    // Once the new process is seen, the old one's series fold into its executable's
    // aggregate (no pid), which keeps its container.
    let theirs = [("container_id", id.as_str())];
    let metrics = common::eventually(&agent, |m| {
        m.sum(count, &ours) == 2.0 && m.sum(count, &theirs) == 3.0
    });
    let in_container = metrics.sum(count, &theirs);
    let on_host: f64 = metrics
        .find(count, &ours)
        .filter(|(_, labels, _)| !labels.contains_key("container_id"))
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!((in_container, on_host), (3.0, 2.0));
    drop(new);
}

/// With a ratio sampler the kernel framer decides which requests make spans: every one
/// with a sampled traceparent, none with an unsampled one, and of the rest those its
/// random draw keeps. Only those reach user space; every request is still counted.
#[test]
fn the_kernel_samples_spans_and_unsampled_requests_make_no_record() {
    if !have_root("the_kernel_samples_spans_and_unsampled_requests_make_no_record") {
        return;
    }
    let _lock = kernel_lock();
    let dir = TempDir::new("traces");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(&server_traces_config(
        &jsonl,
        "  sampler: parentbased_traceidratio\n  sampler_arg: 0.25\n",
    ));
    let app = App::start();
    const PARENTED: u64 = 40;
    const ROOTS: u64 = 400;
    let mut conn = connect(app.port);
    let mut sampled_traces = HashSet::new();
    let mut unsampled_traces = HashSet::new();
    for i in 0..PARENTED {
        for (flag, traces) in [("01", &mut sampled_traces), ("00", &mut unsampled_traces)] {
            let trace = format!("{}{}{}", hex_id(0x5a, 8), flag, hex_id(i + 1, 22));
            let header = format!("traceparent: 00-{trace}-{}-{flag}\r\n", hex_id(0x77, 16));
            assert_eq!(get(&mut conn, "/hello", &header).0, 200);
            traces.insert(trace);
        }
    }
    for _ in 0..ROOTS {
        assert_eq!(get(&mut conn, "/hello", "").0, 200);
    }
    let total = 2 * PARENTED + ROOTS;

    // Every request is counted, each decided once in the kernel.
    let (sampled, unsampled) = span_decisions_once_counted(&agent, app.pid(), total);
    assert_eq!(sampled + unsampled, total);
    // 400 draws at 1 in 4: 100 expected, 8.7 the standard deviation.
    let roots = sampled - PARENTED;
    assert!((50..=150).contains(&roots), "{roots} of {ROOTS} roots kept");

    let server = server_spans(&jsonl, app.pid(), sampled as usize);
    assert_eq!(
        server.len() as u64,
        sampled,
        "one span per request the kernel kept"
    );
    let mut joined = 0;
    for span in &server {
        let trace = span["trace_id"].as_str().expect("trace id");
        assert!(
            !unsampled_traces.contains(trace),
            "a sampled=0 request made a span"
        );
        if sampled_traces.contains(trace) {
            joined += 1;
            assert_eq!(span["parent_span_id"], hex_id(0x77, 16).as_str());
        } else {
            assert_eq!(span["parent_span_id"], Value::Null);
        }
    }
    assert_eq!(joined, PARENTED);
    assert_eq!(
        agent.metrics().one(
            "periscope_spans_dropped_total",
            &[("reason", "probe_buffer")]
        ),
        0.0
    );
}

/// A traceparent the kernel takes for one (its dashes in place, its flag sampled) but
/// user space finds invalid makes no span where the sampler keeps no new roots: the
/// kernel's pick is not a root's random draw, so user space's sampler decides.
#[test]
fn malformed_traceparents_the_kernel_passes_on_make_no_spans_under_always_off_roots() {
    if !have_root(
        "malformed_traceparents_the_kernel_passes_on_make_no_spans_under_always_off_roots",
    ) {
        return;
    }
    let _lock = kernel_lock();
    let dir = TempDir::new("traces");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(&server_traces_config(
        &jsonl,
        "  sampler: parentbased_always_off\n",
    ));
    let app = App::start();
    const EACH: u64 = 20;
    let mut conn = connect(app.port);
    let mut valid = HashSet::new();
    for i in 0..EACH {
        let trace = format!("{}{}", hex_id(0xa1, 16), hex_id(i + 1, 16));
        let header = format!("traceparent: 00-{trace}-{}-01\r\n", hex_id(0x55, 16));
        assert_eq!(get(&mut conn, "/hello", &header).0, 200);
        valid.insert(trace.clone());
        // Upper-case hex, which W3C forbids; then the same twice.
        let upper = format!(
            "traceparent: 00-{}-{}-01\r\n",
            trace.to_uppercase(),
            hex_id(0x55, 16)
        );
        let twice = format!("traceparent: 00-{trace}-{}-01\r\n", hex_id(0x56, 16)).repeat(2);
        for bad in [upper, twice] {
            assert_eq!(get(&mut conn, "/hello", &bad).0, 200);
        }
        assert_eq!(get(&mut conn, "/hello", "").0, 200);
    }
    // The kernel passes on every sampled-looking traceparent, and draws no roots.
    assert_eq!(
        span_decisions_once_counted(&agent, app.pid(), 4 * EACH),
        (3 * EACH, EACH)
    );
    let server = server_spans(&jsonl, app.pid(), EACH as usize);
    assert_eq!(
        server.len() as u64,
        EACH,
        "only the valid parents make spans"
    );
    for span in server {
        assert!(valid.contains(span["trace_id"].as_str().expect("trace id")));
    }
}
