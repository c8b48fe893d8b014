//! End-to-end: the http probe against real servers and clients, with exact counts.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, have_root, kernel_lock, Agent, Metrics, Prometheus};

const HTTP_CONFIG: &str = "probes:\n  http:\n    enabled: true\n";

/// A Python HTTP/1.1 server: `/status/<code>` answers that status with a 5-byte body,
/// `/chunked` answers 11 bytes in two chunks, `/sleep/<ms>` answers after that long,
/// `/bigchunks/<count>/<size>` answers `count` chunks of `size` bytes in one write,
/// `/bighead/<size>` answers with a header of `size` bytes more in its head.
const PY_SERVER: &str = r#"
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def answer(self, body=True):
        parts = self.path.split("?")[0].split("/")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if parts[1] == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            return
        if parts[1] == "bigchunks":
            count, size = int(parts[2]), int(parts[3])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"%x\r\n" % size + b"c" * size + b"\r\n"
            self.wfile.write(chunk * count + b"0\r\n\r\n")
            return
        if parts[1] == "bighead":
            self.send_response(200)
            self.send_header("X-Pad", "p" * int(parts[2]))
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")
            return
        if parts[1] == "sleep":
            time.sleep(int(parts[2]) / 1000)
            code = 200
        else:
            code = int(parts[2]) if parts[1] == "status" else 200
        self.send_response(code)
        self.send_header("Content-Length", "5")
        self.end_headers()
        if body:
            self.wfile.write(b"hello")
    def do_GET(self): self.answer()
    def do_POST(self): self.answer()
    def do_HEAD(self): self.answer(body=False)
ThreadingHTTPServer.request_queue_size = 4096
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
server.serve_forever()
"#;

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn python() -> Server {
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-c", PY_SERVER, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server starts");
        assert_eq!(line.trim(), "ready");
        Server { child, port }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one response (status line, headers, Content-Length or chunked body).
fn read_response(reader: &mut BufReader<&TcpStream>) -> u16 {
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .expect("code");
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().expect("length");
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            if n == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
    }
    code
}

/// A client connection. Reads and writes go through the one descriptor that connected
/// (a dup'd descriptor, as `try_clone` makes, is not a connection the probe knows).
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Every server exchange of process `pid`, whatever its labels.
fn server_total(m: &Metrics, pid: &str) -> f64 {
    m.sum(
        "http_server_request_duration_seconds_count",
        &[("process_pid", pid)],
    )
}

/// This test process's own client exchanges answered with `status`.
fn my_client_count(m: &Metrics, status: &str) -> f64 {
    let me = std::process::id().to_string();
    m.sum(
        "http_client_request_duration_seconds_count",
        &[
            ("process_pid", me.as_str()),
            ("http_response_status_code", status),
        ],
    )
}

fn server_count(m: &Metrics, pid: &str, method: &str, status: &str, route: &str) -> f64 {
    m.sum(
        "http_server_request_duration_seconds_count",
        &[
            ("process_pid", pid),
            ("http_request_method", method),
            ("http_response_status_code", status),
            ("http_route", route),
        ],
    )
}

/// Reads the answer to a HEAD request: status line and headers, and no body whatever
/// its Content-Length says.
fn read_head_response(reader: &mut BufReader<&TcpStream>) {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("head response");
        if line.trim_end().is_empty() {
            break;
        }
    }
}

/// One GET by curl, which must succeed: a client in a process of its own, with its own
/// HTTP and TLS code. `flags` holds curl's short options ("-s", or "-sk" for a server
/// with a self-signed certificate).
fn curl(flags: &str, url: &str) {
    let status = Command::new("curl")
        .args([flags, "-o", "/dev/null", url])
        .status()
        .expect("curl runs");
    assert!(status.success());
}

/// On one keep-alive connection: 5 x 200, 3 x 404 (with a query string that must not be
/// exported), 2 POSTs with 7-byte bodies answered 201, 2 HEADs, one chunked response,
/// then three 503s pipelined in one write, so that each framing is counted on a
/// connection that carries the others.
fn keep_alive_workload(port: u16) {
    let stream = connect(port);
    let mut reader = BufReader::new(&stream);
    let send = |request: &str, reader: &mut BufReader<&TcpStream>| {
        (&stream).write_all(request.as_bytes()).expect("send");
        read_response(reader)
    };
    for _ in 0..5 {
        assert_eq!(
            send("GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n", &mut reader),
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            send(
                "GET /status/404?q=secret HTTP/1.1\r\nHost: t\r\n\r\n",
                &mut reader
            ),
            404
        );
    }
    for _ in 0..2 {
        assert_eq!(
            send(
                "POST /status/201 HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\npayload",
                &mut reader
            ),
            201
        );
    }
    for _ in 0..2 {
        (&stream)
            .write_all(b"HEAD /status/200 HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        read_head_response(&mut reader);
    }
    assert_eq!(
        send("GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n", &mut reader),
        200
    );
    (&stream)
        .write_all(b"GET /status/503 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/503 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/503 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    for _ in 0..3 {
        assert_eq!(read_response(&mut reader), 503);
    }
}

/// Four fresh connections of one request each (answered 500), so that requests on
/// connections the probe sees open and close are counted too.
fn fresh_connections_workload(port: u16) {
    for _ in 0..4 {
        let stream = connect(port);
        let mut reader = BufReader::new(&stream);
        (&stream)
            .write_all(b"GET /status/500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut reader), 500);
    }
}

/// The server's series after both workloads and curl's three 202s: each kind of request
/// counted exactly once, with the request and response body sizes they carried.
fn check_server_series(m: &Metrics, pid: &str) {
    assert_eq!(server_count(m, pid, "GET", "200", "/status/*"), 5.0);
    assert_eq!(server_count(m, pid, "GET", "404", "/status/*"), 3.0);
    assert_eq!(server_count(m, pid, "POST", "201", "/status/*"), 2.0);
    assert_eq!(server_count(m, pid, "HEAD", "200", "/status/*"), 2.0);
    assert_eq!(server_count(m, pid, "GET", "200", "/chunked"), 1.0);
    assert_eq!(server_count(m, pid, "GET", "503", "/status/*"), 3.0);
    assert_eq!(server_count(m, pid, "GET", "500", "/status/*"), 4.0);
    assert_eq!(server_count(m, pid, "GET", "202", "/status/*"), 3.0);
    let all: f64 = m.sum(
        "http_server_request_duration_seconds_count",
        &[("process_pid", pid)],
    );
    assert_eq!(all, 23.0, "no request counted twice or invented");

    // Body sizes: POST bodies of 7 bytes, chunked body of 11, HEAD and 5-byte bodies.
    let post = [("process_pid", pid), ("http_request_method", "POST")];
    assert_eq!(
        m.sum("http_server_request_body_size_bytes_sum", &post),
        14.0
    );
    let chunked = [("process_pid", pid), ("http_route", "/chunked")];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &chunked),
        11.0
    );
    let head = [("process_pid", pid), ("http_request_method", "HEAD")];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &head),
        0.0
    );
}

/// The client side of the same requests: this test process's own 20 to the server's
/// port, and curl's three.
fn check_client_series(m: &Metrics, port_label: &str) {
    let me = std::process::id().to_string();
    // (Its readiness polls of the agent may count too, depending on whether the last
    // one connected before the probe attached: only the server's port is exact.)
    let mine = m.sum(
        "http_client_request_duration_seconds_count",
        &[("process_pid", me.as_str()), ("server_port", port_label)],
    );
    assert_eq!(mine, 20.0, "this test's own requests, as a client");
    let curl = m.sum(
        "http_client_request_duration_seconds_count",
        &[
            ("process_executable_name", "curl"),
            ("http_response_status_code", "202"),
            ("server_address", "127.0.0.1"),
        ],
    );
    assert_eq!(curl, 3.0);
}

#[test]
fn exact_counts_for_keep_alive_fresh_pipelined_and_chunked_requests() {
    if !have_root("exact_counts_for_keep_alive_fresh_pipelined_and_chunked_requests") {
        return;
    }
    let m = exact_counts_with(HTTP_CONFIG);
    // The kernel framed what it could and handed over the connection that carries
    // chunked and pipelined exchanges, at the client's end and the server's (and this
    // test's own scrapes of the agent, whose answers are not all of a known length).
    assert!(kernel_framer(&m, "handed_off") >= 2.0);
    assert!(kernel_framer(&m, "counted") + kernel_framer(&m, "recorded") > 0.0);
}

/// The same byte streams framed by user space alone give the same exact counts.
#[test]
fn the_user_space_framer_alone_counts_the_same_streams_alike() {
    if !have_root("the_user_space_framer_alone_counts_the_same_streams_alike") {
        return;
    }
    let m = exact_counts_with("probes:\n  http:\n    enabled: true\n    kernel_framing: false\n");
    let framed = ["counted", "recorded", "handed_off", "abandoned"]
        .iter()
        .map(|outcome| kernel_framer(&m, outcome))
        .sum::<f64>();
    assert_eq!(framed, 0.0, "the kernel framed nothing");
}

/// Where the kernel refuses the program that sees io_uring reads, the same streams,
/// read by syscalls, give the same exact counts, and the probe says what it lacks.
#[test]
fn without_the_io_uring_program_syscall_reads_count_alike() {
    if !have_root("without_the_io_uring_program_syscall_reads_count_alike") {
        return;
    }
    let m = exact_counts_refusing(HTTP_CONFIG, &["psc_http_copy"]);
    assert_eq!(
        m.one(
            "periscope_probe_degraded",
            &[("probe", "http"), ("feature", "io_uring reads")]
        ),
        1.0
    );
}

/// The keep-alive, fresh-connection and curl workloads under `config`, checked exactly on
/// both ends; returns the final scrape.
fn exact_counts_with(config: &str) -> Metrics {
    exact_counts_refusing(config, &[])
}

/// `exact_counts_with`, the kernel made to refuse `programs`.
fn exact_counts_refusing(config: &str, programs: &[&str]) -> Metrics {
    let _kernel = kernel_lock();
    let agent = Agent::start_refusing(config, programs);
    let server = Server::python();
    let port = server.port;
    keep_alive_workload(port);
    fresh_connections_workload(port);
    for _ in 0..3 {
        curl("-s", &format!("http://127.0.0.1:{port}/status/202"));
    }

    let pid = server.pid();
    let m = common::eventually(&agent, |m| {
        server_count(m, &pid, "GET", "202", "/status/*") == 3.0
    });
    check_server_series(&m, &pid);

    // The query string is never exported; the server port is.
    let text = agent.scrape();
    assert!(!text.contains("secret"));
    let port_label = port.to_string();
    assert!(m
        .find(
            "http_server_request_duration_seconds_count",
            &[("process_pid", pid.as_str())]
        )
        .all(|(_, labels, _)| labels.get("server_port") == Some(&port_label)));

    check_client_series(&m, &port_label);
    m
}

#[test]
fn garbage_counts_nothing_oversized_heads_count_once_and_the_agent_stays_healthy() {
    if !have_root("garbage_counts_nothing_oversized_heads_count_once_and_the_agent_stays_healthy") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let port = server.port;
    let send_raw = |bytes: &[u8]| {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(bytes);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
    };
    send_raw(&(0..=255u8).cycle().take(64 * 1024).collect::<Vec<_>>());
    send_raw(b"GET /half HTTP/1.1\r\nHost: t\r\n");
    // Not a token (RFC 9110): no method at all. (`NOTAMETHOD` is one, counted as _OTHER.)
    send_raw(b"BAD(METHOD) / HTTP/1.1\r\n\r\n");
    let mut long_line = b"GET /".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 64 * 1024));
    long_line.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
    send_raw(&long_line);
    let mut big_header = b"GET /status/200 HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'b', 1024 * 1024));
    big_header.extend_from_slice(b"\r\n\r\n");
    send_raw(&big_header);

    // A well-formed request afterwards is still counted, exactly once.
    let stream = connect(port);
    let mut reader = BufReader::new(&stream);
    (&stream)
        .write_all(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut reader), 200);
    let pid = server.pid();
    let count = |m: &Metrics, status: &str| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("process_pid", pid.as_str()),
                ("http_response_status_code", status),
            ],
        )
    };
    let m = common::eventually(&agent, |m| count(m, "200") >= 1.0);
    // The oversized heads are requests too, which the server refused (Python allows
    // 64 KiB per line): counted from their request lines. Nothing else is a request.
    assert_eq!(count(&m, "200"), 1.0, "the well-formed request, once");
    assert_eq!(count(&m, "414"), 1.0, "the 64 KiB request line");
    assert_eq!(count(&m, "431"), 1.0, "the 1 MiB header");
    let counted = server_total(&m, &pid);
    assert_eq!(counted, 3.0);
    assert_eq!(
        common::http_get(agent.port, "/healthz", None).map(|r| r.0),
        Some(200)
    );
}

/// 200 connections at once, each sending 64 KiB of binary junk laced with the bytes
/// that start and end HTTP messages, neither stall nor crash the agent and make no
/// series; a well-formed request after them is counted exactly once.
#[test]
fn a_flood_of_binary_junk_makes_no_series_and_leaves_the_agent_serving() {
    if !have_root("a_flood_of_binary_junk_makes_no_series_and_leaves_the_agent_serving") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let port = server.port;
    let senders: Vec<_> = (0..200u32)
        .map(|n| {
            std::thread::spawn(move || {
                // A small linear congruential generator: junk that differs per connection.
                let mut state = n.wrapping_mul(2_654_435_761).wrapping_add(1);
                // It starts with a byte no method starts with: binary, not a request.
                let mut junk = vec![0u8];
                while junk.len() < 64 * 1024 {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    match state >> 28 {
                        0 => junk.extend_from_slice(b"\r\n\r\n"),
                        1 => junk.extend_from_slice(b" HTTP/1.1 200 "),
                        2 => junk.extend_from_slice(b"\x00\xff\x16\x03\x01"),
                        _ => junk.push((state >> 20) as u8),
                    }
                }
                if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = stream.write_all(&junk);
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a sender thread");
    }
    let stream = connect(port);
    let mut reader = BufReader::new(&stream);
    (&stream)
        .write_all(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut reader), 200);
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= 1.0);
    assert_eq!(server_total(&m, &pid), 1.0, "the junk made no exchange");
    assert_eq!(
        m.find(
            "http_server_request_duration_seconds_count",
            &[("process_pid", pid.as_str())]
        )
        .count(),
        1,
        "and no series"
    );
    assert_eq!(
        common::http_get(agent.port, "/healthz", None).map(|r| r.0),
        Some(200)
    );
}

#[test]
fn latency_lands_in_the_bucket_of_the_client_measured_time() {
    if !have_root("latency_lands_in_the_bucket_of_the_client_measured_time") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    let mut measured = Vec::new();
    for _ in 0..5 {
        let began = std::time::Instant::now();
        (&stream)
            .write_all(b"GET /sleep/300 HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
        measured.push(began.elapsed().as_secs_f64());
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) == 5.0);
    let this = [("process_pid", pid.as_str()), ("http_route", "/sleep/*")];
    // Every client-measured time lies in (0.25, 0.5]: all five requests must be counted
    // under le=0.5 and none under le=0.25. The server's own view is shorter than the
    // client's by the loopback round trip only, far less than these bucket widths.
    assert!(
        measured.iter().all(|t| *t > 0.3 && *t <= 0.5),
        "{measured:?}"
    );
    let le = |bound: &str| {
        let mut labels = this.to_vec();
        labels.push(("le", bound));
        m.sum("http_server_request_duration_seconds_bucket", &labels)
    };
    assert_eq!(le("0.25"), 0.0);
    assert_eq!(le("0.5"), 5.0);
    let sum = m.sum("http_server_request_duration_seconds_sum", &this);
    let client_sum: f64 = measured.iter().sum();
    // Tolerance: 10 ms per request for the loopback round trip and scheduling.
    assert!(
        sum <= client_sum && sum > client_sum - 0.05,
        "server {sum} vs client {client_sum}"
    );
}

/// Prometheus with native histograms on gets request durations and body sizes as native
/// histograms: the first request of the series counted in user space, the others by the
/// kernel framer, every duration in a bucket next to the time the client measured and
/// every size in the bucket that holds it.
#[test]
fn native_histograms_hold_durations_by_the_client_measured_times_and_exact_sizes() {
    if !have_root("native_histograms_hold_durations_by_the_client_measured_times_and_exact_sizes") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let prometheus = Prometheus::start_native(agent.port);
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    let mut measured = Vec::new();
    for i in 0..20 {
        let ms = if i % 2 == 0 { 20 } else { 80 };
        let began = std::time::Instant::now();
        (&stream)
            .write_all(format!("GET /sleep/{ms} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
        measured.push(began.elapsed().as_secs_f64());
    }
    let pid = server.pid();
    let this = format!(
        "http_server_request_duration_seconds{{process_pid=\"{pid}\",http_route=\"/sleep/*\"}}"
    );
    assert_eq!(
        prometheus.wait_for(&format!("histogram_count({this})"), &[20.0]),
        vec![20.0]
    );
    let native_of = |name: &str| {
        prometheus.native_histogram(&format!(
            "{name}{{process_pid=\"{pid}\",http_route=\"/sleep/*\"}}"
        ))
    };
    // Each (lower, upper, count) bucket must hold as many requests as the client timed
    // within it, give or take the loopback round trip the server does not see: a
    // request is matched to the bucket of its client time or the one below.
    let (buckets, sum) = native_of("http_server_request_duration_seconds");
    let counted: u64 = buckets.iter().map(|b| b.2).sum();
    assert_eq!(counted, 20, "{buckets:?}");
    for (lower, upper, count) in &buckets {
        let near = measured
            .iter()
            .filter(|t| **t > *lower && **t <= upper * 2f64.powf(0.125))
            .count() as u64;
        assert!(
            *count <= near,
            "{count} in ({lower}, {upper}] but the client timed {measured:?}"
        );
    }
    // The halves at 20 ms and 80 ms stay apart.
    let below_40ms: u64 = buckets.iter().filter(|b| b.1 < 0.04).map(|b| b.2).sum();
    assert_eq!(below_40ms, 10, "{buckets:?}");
    let client_sum: f64 = measured.iter().sum();
    assert!(
        sum <= client_sum && sum > client_sum - 0.2,
        "server {sum} vs client {client_sum}"
    );
    // Body sizes are native too: every response has 5 bytes, in (2^(18/8), 2^(19/8)]
    // (4.76, 5.19]; no request has a body, so all 20 are in the zero bucket.
    let (response, response_sum) = native_of("http_server_response_body_size_bytes");
    assert_eq!(response_sum, 100.0);
    assert_eq!(response.len(), 1, "{response:?}");
    let (lower, upper, count) = response[0];
    assert!(lower < 5.0 && (5.0..5.2).contains(&upper), "{response:?}");
    assert_eq!(count, 20);
    let (request, _) = native_of("http_server_request_body_size_bytes");
    assert_eq!(request.len(), 1, "the zero bucket alone: {request:?}");
    assert_eq!(request[0].2, 20, "{request:?}");
    assert!(request[0].0 <= 0.0 && request[0].1 >= 0.0, "{request:?}");
}

#[test]
fn ten_thousand_ids_make_one_route_series() {
    if !have_root("ten_thousand_ids_make_one_route_series") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    for id in 0..10_000 {
        (&stream)
            .write_all(format!("GET /users/{id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send");
        let _ = read_response(&mut reader);
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) == 10_000.0);
    let routes: std::collections::BTreeSet<_> = m
        .find(
            "http_server_request_duration_seconds_count",
            &[("process_pid", pid.as_str())],
        )
        .filter_map(|(_, labels, _)| labels.get("http_route").cloned())
        .collect();
    assert_eq!(
        routes.into_iter().collect::<Vec<_>>(),
        vec!["/users/*".to_string()]
    );
    assert_eq!(server_total(&m, &pid), 10_000.0);
}

/// nginx (Debian) serving a static file: headers by writev, bodies by sendfile.
struct Nginx {
    child: Child,
    port: u16,
    dir: common::TempDir,
}

impl Nginx {
    fn start(extra_server: &str) -> Nginx {
        let dir = common::TempDir::new("nginx");
        let port = free_port();
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root).expect("www");
        std::fs::write(root.join("index.html"), vec![b'x'; 1000]).expect("index");
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n{extra_server}\n}}\n"
        );
        let config = config.replace("NGINX_DIR", &d.to_string());
        let path = dir.write("nginx.conf", &config);
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .spawn()
            .expect("nginx runs (scripts/setup.sh --test installs it)");
        common::listening_soon(port);
        Nginx { child, port, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGQUIT);
        }
        let _ = self.child.wait();
    }
}

fn nginx_count(m: &Metrics, port: u16, status: &str, route: &str) -> f64 {
    let port = port.to_string();
    m.sum(
        "http_server_request_duration_seconds_count",
        &[
            ("process_executable_name", "nginx"),
            ("server_port", port.as_str()),
            ("http_response_status_code", status),
            ("http_route", route),
        ],
    )
}

#[test]
fn nginx_static_files_are_counted_exactly() {
    if !have_root("nginx_static_files_are_counted_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let nginx = Nginx::start("");
    let stream = connect(nginx.port);
    let mut reader = BufReader::new(&stream);
    for _ in 0..7 {
        (&stream)
            .write_all(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
    }
    for _ in 0..4 {
        (&stream)
            .write_all(b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut reader), 404);
    }
    for _ in 0..2 {
        (&stream)
            .write_all(b"HEAD /index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        read_head_response(&mut reader);
    }
    let m = common::eventually(&agent, |m| {
        nginx_count(m, nginx.port, "404", "/missing") == 4.0
    });
    assert_eq!(nginx_count(&m, nginx.port, "200", "/index.html"), 9.0);
    assert_eq!(nginx_count(&m, nginx.port, "404", "/missing"), 4.0);
    let port = nginx.port.to_string();
    let get = [
        ("process_executable_name", "nginx"),
        ("server_port", port.as_str()),
        ("http_request_method", "GET"),
        ("http_route", "/index.html"),
    ];
    // The 1000-byte file went out by sendfile, uncaptured, and is counted by length.
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &get),
        7000.0
    );
    let _ = &nginx.dir;
}

#[test]
fn https_through_nginx_and_curl_is_measured_like_plain_http() {
    if !have_root("https_through_nginx_and_curl_is_measured_like_plain_http") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let (_nginx, tls_port, _certs) = nginx_with_tls();
    for path in [
        "index.html",
        "index.html",
        "index.html",
        "index.html",
        "gone",
    ] {
        curl("-sk", &format!("https://127.0.0.1:{tls_port}/{path}"));
    }
    let m = common::eventually(&agent, |m| nginx_count(m, tls_port, "404", "/gone") == 1.0);
    assert_eq!(nginx_count(&m, tls_port, "200", "/index.html"), 4.0);
    assert_eq!(nginx_count(&m, tls_port, "404", "/gone"), 1.0);
    let port = tls_port.to_string();
    let https = [("server_port", port.as_str()), ("url_scheme", "https")];
    assert_eq!(
        m.sum("http_server_request_duration_seconds_count", &https),
        5.0
    );
    let curl = [
        ("process_executable_name", "curl"),
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
        ("url_scheme", "https"),
    ];
    assert_eq!(
        m.sum("http_client_request_duration_seconds_count", &curl),
        5.0
    );
    // The 1000-byte file, encrypted by nginx, is measured as plaintext.
    let get = [
        ("server_port", port.as_str()),
        ("http_route", "/index.html"),
    ];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &get),
        4000.0
    );
}

/// Caps: routes per service and series fold into explicit overflow series with exact
/// totals; a ring buffer too small for a burst counts what it lost.
#[test]
fn http_caps_fold_into_overflow_and_lost_events_are_counted() {
    if !have_root("http_caps_fold_into_overflow_and_lost_events_are_counted") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  http:\n    enabled: true\n    clients: false\n    max_routes_per_service: 2\n    ring_buffer_bytes: 4096\n",
    );
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    for path in ["/a", "/b", "/c", "/d", "/a"] {
        (&stream)
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
        // One request at a time, drained before the next: nothing lost here.
        std::thread::sleep(Duration::from_millis(30));
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) == 5.0);
    let route = |r: &str| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("process_pid", pid.as_str()), ("http_route", r)],
        )
    };
    assert_eq!((route("/a"), route("/b")), (2.0, 1.0));
    assert_eq!(route("__overflow__"), 2.0, "/c and /d beyond the cap of 2");
    // The server's two (clients are left untraced here: this test's readiness polls of
    // the agent may or may not take a client route slot).
    assert_eq!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "http"), ("map", "routes")]
        ),
        2.0
    );

    // A burst of 100 pipelined requests (one read of 2.8 KiB, which fits) whose 100
    // responses overflow a 4 KiB ring buffer.
    let mut burst = Vec::new();
    for _ in 0..100 {
        burst.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    (&stream).write_all(&burst).expect("send");
    for _ in 0..100 {
        assert_eq!(read_response(&mut reader), 200);
    }
    let m = agent.metrics();
    assert!(
        m.one("periscope_events_lost_total", &[("probe", "http")]) > 0.0,
        "a full ring buffer is counted, not silent"
    );

    // After the loss, the connection's framing restarts: requests whose responses were
    // lost do not pair with later responses, so three requests for /b count as /b.
    let settled = |m: &Metrics| (route_in(m, "/a"), route_in(m, "/b"));
    // Every response of the burst was read above; the agent drains every 10 ms.
    std::thread::sleep(Duration::from_millis(300));
    let before = settled(&agent.metrics());
    for _ in 0..3 {
        (&stream)
            .write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
        std::thread::sleep(Duration::from_millis(30));
    }
    let after = common::eventually(&agent, |m| route_in(m, "/b") == before.1 + 3.0);
    assert_eq!(settled(&after), (before.0, before.1 + 3.0));
}

/// Heads split over reads are held until complete, within one budget for all
/// connections: a head beyond it is given up and counted, and the connection's next
/// request is counted as usual.
#[test]
fn partial_heads_beyond_the_budget_are_given_up_and_counted() {
    if !have_root("partial_heads_beyond_the_budget_are_given_up_and_counted") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  http:\n    enabled: true\n    clients: false\n    max_buffered_head_bytes: 1024\n",
    );
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    let mut head = String::from("GET /big HTTP/1.1\r\nHost: t\r\n");
    for i in 0..20 {
        head.push_str(&format!("X-Filler-{i}: {}\r\n", "f".repeat(90)));
    }
    (&stream).write_all(head.as_bytes()).expect("send");
    std::thread::sleep(Duration::from_millis(100));
    (&stream).write_all(b"\r\n").expect("send");
    assert_eq!(read_response(&mut reader), 200);
    (&stream)
        .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut reader), 200);

    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) == 1.0);
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("process_pid", pid.as_str()), ("http_route", "/ok")],
        ),
        1.0
    );
    assert_eq!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "http"), ("map", "head_buffers")]
        ),
        1.0
    );
}

/// 2,600 hostile connections each holding an 8 KB partial head open overfill the
/// default 16 MiB head budget by a quarter, and 1,000 more take what is left with a
/// request line each; the heads held longest are given up first, so 100
/// requests whose heads arrive split over two reads, on other connections meanwhile, are
/// all counted. Once the hostile heads took the whole budget and all 100 went uncounted.
#[test]
fn heads_held_open_by_many_connections_cannot_take_the_share_of_quick_ones() {
    if !have_root("heads_held_open_by_many_connections_cannot_take_the_share_of_quick_ones") {
        return;
    }
    let _kernel = kernel_lock();
    raise_open_files_limit(10_000);
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let filler = "f".repeat(3_980);
    let mut hostile = Vec::new();
    for _ in 0..2_600 {
        let stream = connect(server.port);
        (&stream)
            .write_all(format!("GET /held HTTP/1.1\r\nX-Fill: {filler}").as_bytes())
            .expect("send a partial head");
        hostile.push(stream);
    }
    // In batches, so that a busy machine's agent keeps up with its ring buffer: a head
    // whose bytes were lost there is dropped, not held, and the budget would not fill.
    for batch in hostile.chunks(100) {
        for stream in batch {
            (&*stream)
                .write_all(filler.as_bytes())
                .expect("send more of it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the budget has left is taken in small pieces: a request line each.
    for _ in 0..1_000 {
        let stream = connect(server.port);
        (&stream)
            .write_all(b"GET /held HTTP/1.1\r\n")
            .expect("send a request line");
        hostile.push(stream);
    }
    let pid = server.pid();
    // Every hostile head is held, or was given up, before the quick requests start.
    common::eventually(&agent, |m| {
        m.one(
            "periscope_series_folded_total",
            &[("probe", "http"), ("map", "head_buffers")],
        ) > 0.0
    });
    for _ in 0..100 {
        let stream = connect(server.port);
        let mut reader = BufReader::new(&stream);
        (&stream)
            .write_all(b"GET /status/200 HTTP/1.1\r\n")
            .expect("send the request line");
        std::thread::sleep(Duration::from_millis(10));
        (&stream)
            .write_all(b"Host: t\r\n\r\n")
            .expect("send the rest");
        assert_eq!(read_response(&mut reader), 200);
    }
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= 100.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 100.0);
    assert_eq!(server_total(&m, &pid), 100.0, "the held heads made nothing");
    assert!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "http"), ("map", "head_buffers")],
        ) > 0.0,
        "the budget was spent"
    );
    drop(hostile);
}

/// Raises this process's soft limit of open files to `want` (its children inherit it),
/// within the hard limit.
fn raise_open_files_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// Receives from `stream` through io_uring (IORING_OP_RECV) until `buf` holds a whole
/// response of the Python server: a head and its 5-byte body. No read syscall is made.
fn recv_response_by_io_uring(ring: &mut io_uring::IoUring, stream: &TcpStream) -> u16 {
    use std::os::fd::AsRawFd;
    let mut response = Vec::new();
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            if response.len() >= end + 4 + 5 {
                break;
            }
        }
        let mut buf = vec![0u8; 4096];
        let recv = io_uring::opcode::Recv::new(
            io_uring::types::Fd(stream.as_raw_fd()),
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
        .build();
        // SAFETY: `buf` outlives the operation, which completes before the wait returns.
        unsafe { ring.submission().push(&recv).expect("queue a recv") };
        ring.submit_and_wait(1).expect("io_uring_enter");
        let done = ring.completion().next().expect("a completion");
        let n = usize::try_from(done.result()).expect("recv succeeds");
        assert!(n > 0, "the server closed");
        response.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&response[9..12]).to_string();
    status.parse().expect("status code")
}

/// A client that reads its responses through io_uring, which makes no read syscall, is
/// counted exactly where the kernel lets the probe read those bytes from the skb; where
/// it does not, the probe says so and counts none of them.
#[test]
fn io_uring_reads_are_counted_exactly() {
    if !have_root("io_uring_reads_are_counted_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let mut ring = match io_uring::IoUring::new(8) {
        Ok(ring) => ring,
        Err(error) => {
            eprintln!("skipping io_uring_reads_are_counted_exactly: no io_uring here ({error})");
            return;
        }
    };
    let stream = connect(server.port);
    for i in 0..60 {
        let status = if i < 40 { 200 } else { 404 };
        (&stream)
            .write_all(format!("GET /status/{status} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(recv_response_by_io_uring(&mut ring, &stream), status);
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| {
        server_total(m, &pid) >= 60.0 && my_client_count(m, "404") >= 20.0
    });
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 40.0);
    assert_eq!(server_count(&m, &pid, "GET", "404", "/status/*"), 20.0);
    let from_skb = m
        .find("periscope_probe_degraded", &[("probe", "http")])
        .all(|(_, labels, _)| labels.get("feature").map(String::as_str) != Some("io_uring reads"));
    if from_skb {
        assert_eq!(
            (my_client_count(&m, "200"), my_client_count(&m, "404")),
            (40.0, 20.0)
        );
    } else {
        assert_eq!(
            (my_client_count(&m, "200"), my_client_count(&m, "404")),
            (0.0, 0.0)
        );
    }
}

/// A keep-alive connection opened before the agent started is adopted on its first
/// request after it: both its server and its client side count from then on.
#[test]
fn connections_older_than_the_agent_are_adopted() {
    if !have_root("connections_older_than_the_agent_are_adopted") {
        return;
    }
    let _kernel = kernel_lock();
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    let request = b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n";
    (&stream).write_all(request).expect("send");
    assert_eq!(read_response(&mut reader), 200);

    let agent = Agent::start("probes:\n  http:\n    enabled: true\n");
    for _ in 0..3 {
        (&stream).write_all(request).expect("send");
        assert_eq!(read_response(&mut reader), 200);
    }
    let pid = server.pid();
    let me = std::process::id().to_string();
    let port = server.port.to_string();
    let counts = |m: &Metrics| {
        (
            server_total(m, &pid),
            m.sum(
                "http_client_request_duration_seconds_count",
                &[("process_pid", me.as_str()), ("server_port", port.as_str())],
            ),
        )
    };
    let m = common::eventually(&agent, |m| counts(m) == (3.0, 3.0));
    assert_eq!(counts(&m), (3.0, 3.0));
}

fn route_in(m: &Metrics, route: &str) -> f64 {
    m.sum(
        "http_server_request_duration_seconds_count",
        &[("http_route", route)],
    )
}

/// A process started after the agent, with a libssl of its own (here a copy reached by
/// LD_LIBRARY_PATH, as a container's would be): its HTTPS requests are measured too.
#[test]
fn tls_of_a_new_process_with_its_own_libssl_is_traced() {
    if !have_root("tls_of_a_new_process_with_its_own_libssl_is_traced") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let libraries = |m: &Metrics| m.one("periscope_tls_libraries", &[]);
    let before = libraries(&agent.metrics());

    let (_nginx, tls_port, certs) = nginx_with_tls();
    let libdir = certs.path().join("lib");
    std::fs::create_dir_all(&libdir).expect("lib dir");
    let system = tls_library();
    std::fs::copy(&system, libdir.join(system.file_name().expect("name"))).expect("copy libssl");

    let script = format!(
        "import http.client, ssl, sys\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         c = http.client.HTTPSConnection('127.0.0.1', {tls_port}, context=ssl._create_unverified_context())\n\
         for _ in range(6):\n    c.request('GET', '/index.html'); c.getresponse().read()\n\
         print('done', flush=True)\n\
         sys.stdin.readline()\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .env("LD_LIBRARY_PATH", &libdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready");
    // The agent notices the new process and its libssl.
    let m = common::eventually(&agent, |m| libraries(m) > before);
    assert_eq!(libraries(&m), before + 1.0, "the copy is traced");
    writeln!(stdin).expect("go");
    line.clear();
    stdout.read_line(&mut line).expect("done");
    let pid = child.id().to_string();
    let this = [("process_pid", pid.as_str()), ("url_scheme", "https")];
    let m = common::eventually(&agent, |m| {
        m.sum("http_client_request_duration_seconds_count", &this) == 6.0
    });
    assert_eq!(
        m.sum("http_client_request_duration_seconds_count", &this),
        6.0
    );
    writeln!(stdin).expect("finish");
    let _ = child.wait();
}

/// The system's libssl, as the dynamic loader finds it.
fn tls_library() -> std::path::PathBuf {
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        for name in ["libssl.so.3", "libssl.so.1.1"] {
            let path = std::path::Path::new(dir).join(name);
            if path.exists() {
                return path;
            }
        }
    }
    panic!("no libssl on this machine (scripts/setup.sh --test installs openssl)");
}

/// nginx serving its files over HTTPS too, with a self-signed certificate made here:
/// the server, its TLS port, and the folder holding the certificate.
fn nginx_with_tls() -> (Nginx, u16, common::TempDir) {
    let certs = common::TempDir::new("certs");
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs (scripts/setup.sh --test installs it)");
    assert!(made.success(), "a self-signed certificate");
    let tls_port = free_port();
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {}; ssl_certificate_key {}; root NGINX_DIR/www; }}",
        cert.display(),
        key.display(),
    ));
    (nginx, tls_port, certs)
}

#[test]
fn clients_can_be_left_untraced() {
    if !have_root("clients_can_be_left_untraced") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("probes:\n  http:\n    enabled: true\n    clients: false\n");
    let server = Server::python();
    for _ in 0..3 {
        curl(
            "-s",
            &format!("http://127.0.0.1:{}/status/200", server.port),
        );
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| {
        server_count(m, &pid, "GET", "200", "/status/*") == 3.0
    });
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 3.0);
    assert_eq!(
        m.sum("http_client_request_duration_seconds_count", &[]),
        0.0
    );
}

/// What one TLS workload counted: HTTPS requests nginx served, curl's and Python's
/// client requests, and plaintext requests the Python server served.
#[derive(Debug, PartialEq)]
struct TlsCounts {
    nginx_served: f64,
    curl_sent: f64,
    python_sent: f64,
    plain_served: f64,
}

/// Under an agent refused `programs`: 3 plaintext requests to a Python server, 4 curl
/// HTTPS requests to nginx (OpenSSL's SSL_read/SSL_write on both ends), then 5 HTTPS
/// requests from Python (SSL_read_ex/SSL_write_ex) to nginx. Gives what was counted,
/// once the plaintext ones show (they are unaffected by any TLS refusal), and the
/// features the probe reports lost.
fn tls_workload_with_refused(programs: &[&str]) -> (TlsCounts, Vec<String>) {
    let agent = Agent::start_refusing(HTTP_CONFIG, programs);
    let server = Server::python();
    let (nginx, tls_port, _certs) = nginx_with_tls();
    let mut conn = connect(server.port);
    for _ in 0..3 {
        conn.write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut BufReader::new(&conn)), 200);
    }
    drop(conn);
    for _ in 0..4 {
        curl("-sk", &format!("https://127.0.0.1:{tls_port}/index.html"));
    }
    let script = format!(
        "import http.client, ssl\n\
         c = http.client.HTTPSConnection('127.0.0.1', {tls_port}, context=ssl._create_unverified_context())\n\
         for _ in range(5):\n    c.request('GET', '/index.html'); c.getresponse().read()\n"
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .status()
        .expect("python3 runs");
    assert!(status.success());
    let port = tls_port.to_string();
    let counts = |m: &Metrics| TlsCounts {
        nginx_served: nginx_count(m, tls_port, "200", "/index.html"),
        curl_sent: m.sum(
            "http_client_request_duration_seconds_count",
            &[
                ("process_executable_name", "curl"),
                ("server_port", port.as_str()),
            ],
        ),
        python_sent: m.sum(
            "http_client_request_duration_seconds_count",
            &[
                ("process_executable_name", "python3"),
                ("server_port", port.as_str()),
            ],
        ),
        plain_served: server_count(m, &server.pid(), "GET", "200", "/status/*"),
    };
    // Every client has finished: what the agent counts settles within a drain or two.
    common::eventually(&agent, |m| counts(m).plain_served == 3.0);
    std::thread::sleep(Duration::from_millis(500));
    let m = agent.metrics();
    drop(nginx);
    (counts(&m), m.degraded("http"))
}

/// Everything a TLS workload sends, counted exactly.
const ALL_TLS: TlsCounts = TlsCounts {
    nginx_served: 9.0,
    curl_sent: 4.0,
    python_sent: 5.0,
    plain_served: 3.0,
};

/// Nothing over TLS is seen; plaintext stays exact.
const PLAINTEXT_ONLY: TlsCounts = TlsCounts {
    nginx_served: 0.0,
    curl_sent: 0.0,
    python_sent: 0.0,
    plain_served: 3.0,
};

/// nginx and curl use SSL_read and SSL_write: only Python's _ex calls are seen.
const EX_ONLY: TlsCounts = TlsCounts {
    nginx_served: 0.0,
    curl_sent: 0.0,
    python_sent: 5.0,
    plain_served: 3.0,
};

/// Python's client uses SSL_read_ex and SSL_write_ex: all but its side is seen (nginx
/// serves it with SSL_read and SSL_write).
const NOT_EX: TlsCounts = TlsCounts {
    nginx_served: 9.0,
    curl_sent: 4.0,
    python_sent: 0.0,
    plain_served: 3.0,
};

/// With `program` refused, the probe reports `feature` lost and counts `want`.
fn tls_refusal(test: &str, program: &str, feature: &str, want: TlsCounts) {
    if !have_root(test) {
        return;
    }
    let _kernel = kernel_lock();
    let (counts, degraded) = tls_workload_with_refused(&[program]);
    assert_eq!(degraded, vec![feature]);
    assert_eq!(counts, want);
}

#[test]
fn without_ssl_set_fd_tls_sockets_are_learned_at_their_first_io() {
    tls_refusal(
        "without_ssl_set_fd_tls_sockets_are_learned_at_their_first_io",
        "psc_ssl_set_fd",
        "SSL_set_fd",
        ALL_TLS,
    );
}

#[test]
fn without_the_exec_hook_libraries_found_at_start_are_still_traced() {
    tls_refusal(
        "without_the_exec_hook_libraries_found_at_start_are_still_traced",
        "psc_http_exec",
        "libssl of programs started after the agent",
        ALL_TLS,
    );
}

#[test]
fn without_the_ssl_return_probe_no_tls_is_seen_and_plaintext_stays_exact() {
    tls_refusal(
        "without_the_ssl_return_probe_no_tls_is_seen_and_plaintext_stays_exact",
        "psc_ssl_ret",
        "TLS plaintext (OpenSSL)",
        PLAINTEXT_ONLY,
    );
}

#[test]
fn without_ssl_read_programs_using_ssl_read_ex_keep_exact_tls_counts() {
    tls_refusal(
        "without_ssl_read_programs_using_ssl_read_ex_keep_exact_tls_counts",
        "psc_ssl_read",
        "TLS reads by SSL_read",
        EX_ONLY,
    );
}

#[test]
fn without_ssl_write_programs_using_ssl_write_ex_keep_exact_tls_counts() {
    tls_refusal(
        "without_ssl_write_programs_using_ssl_write_ex_keep_exact_tls_counts",
        "psc_ssl_write",
        "TLS writes by SSL_write",
        EX_ONLY,
    );
}

#[test]
fn without_ssl_read_ex_programs_using_ssl_read_keep_exact_tls_counts() {
    tls_refusal(
        "without_ssl_read_ex_programs_using_ssl_read_keep_exact_tls_counts",
        "psc_ssl_read_ex",
        "TLS reads by SSL_read_ex",
        NOT_EX,
    );
}

#[test]
fn without_ssl_write_ex_programs_using_ssl_write_keep_exact_tls_counts() {
    tls_refusal(
        "without_ssl_write_ex_programs_using_ssl_write_keep_exact_tls_counts",
        "psc_ssl_write_ex",
        "TLS writes by SSL_write_ex",
        NOT_EX,
    );
}

/// Uprobes run preemptible from Linux 6.13 on: a TLS event assembled in per-CPU scratch
/// could be overwritten by another task on the same CPU midway. Many TLS clients at once,
/// far more threads than CPUs, and every request counted exactly on both ends.
#[test]
fn concurrent_tls_clients_on_few_cpus_are_counted_exactly() {
    if !have_root("concurrent_tls_clients_on_few_cpus_are_counted_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let (_nginx, tls_port, _certs) = nginx_with_tls();
    const PROCESSES: usize = 8;
    const THREADS: usize = 4;
    const REQUESTS: usize = 30;
    let script = format!(
        "import http.client, ssl, threading, multiprocessing\n\
         def thread():\n    \
             c = http.client.HTTPSConnection('127.0.0.1', {tls_port}, context=ssl._create_unverified_context())\n    \
             for _ in range({REQUESTS}):\n        \
                 c.request('GET', '/index.html'); r = c.getresponse(); assert r.status == 200; r.read()\n\
         def process():\n    \
             ts = [threading.Thread(target=thread) for _ in range({THREADS})]\n    \
             [t.start() for t in ts]; [t.join() for t in ts]\n\
         if __name__ == '__main__':\n    \
             ps = [multiprocessing.Process(target=process) for _ in range({PROCESSES})]\n    \
             [p.start() for p in ps]; [p.join() for p in ps]\n    \
             assert all(p.exitcode == 0 for p in ps)\n"
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .status()
        .expect("python3 runs");
    assert!(status.success(), "every client got its answers");
    let total = (PROCESSES * THREADS * REQUESTS) as f64;
    let port = tls_port.to_string();
    let clients = |m: &Metrics| {
        m.sum(
            "http_client_request_duration_seconds_count",
            &[
                ("process_executable_name", "python3"),
                ("server_port", port.as_str()),
                ("http_response_status_code", "200"),
            ],
        )
    };
    let m = common::eventually(&agent, |m| {
        nginx_count(m, tls_port, "200", "/index.html") >= total && clients(m) >= total
    });
    assert_eq!(
        m.sum("periscope_events_lost_total", &[("probe", "http")]),
        0.0
    );
    assert_eq!(nginx_count(&m, tls_port, "200", "/index.html"), total);
    assert_eq!(clients(&m), total);
    let get = [
        ("server_port", port.as_str()),
        ("http_route", "/index.html"),
    ];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &get),
        total * 1000.0,
        "every response's plaintext body, once"
    );
}

/// A TLS flood against a ring buffer too small for its events: what was lost is counted,
/// the agent stays healthy, and requests once the ring has drained are counted exactly.
#[test]
fn a_tls_flood_that_overflows_the_ring_buffer_is_counted_and_later_requests_are_exact() {
    if !have_root(
        "a_tls_flood_that_overflows_the_ring_buffer_is_counted_and_later_requests_are_exact",
    ) {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("probes:\n  http:\n    enabled: true\n    ring_buffer_bytes: 4096\n");
    let (_nginx, tls_port, _certs) = nginx_with_tls();
    // 200 pipelined requests in one write; nginx answers with TLS writes whose 4 KiB
    // captures can never fit in a 4 KiB ring.
    let flood = format!(
        "import socket, ssl\n\
         s = ssl._create_unverified_context().wrap_socket(socket.create_connection(('127.0.0.1', {tls_port})))\n\
         s.sendall(b'GET /index.html HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n' * 199 + b'GET /index.html HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n')\n\
         data = b''\n\
         while chunk := s.recv(65536):\n    \
             data += chunk\n\
         assert data.count(b'HTTP/1.1 200 OK') == 200, data.count(b'HTTP/1.1 200 OK')\n"
    );
    let later = format!(
        "import http.client, ssl\n\
         c = http.client.HTTPSConnection('127.0.0.1', {tls_port}, context=ssl._create_unverified_context())\n\
         for _ in range(3):\n    \
             c.request('GET', '/after'); r = c.getresponse(); assert r.status == 404; r.read()\n"
    );
    let python = |script: &str| {
        let status = Command::new("python3")
            .args(["-c", script])
            .status()
            .expect("python3 runs");
        assert!(status.success(), "the client got every answer");
    };
    python(&flood);
    let m = agent.metrics();
    assert!(
        m.one("periscope_events_lost_total", &[("probe", "http")]) > 0.0,
        "a full ring buffer is counted, not silent"
    );
    assert!(
        nginx_count(&m, tls_port, "200", "/index.html") <= 200.0,
        "nothing is counted twice"
    );
    // The agent drains every 10 ms: the ring is empty again well before this.
    std::thread::sleep(Duration::from_millis(300));
    python(&later);
    let m = common::eventually(&agent, |m| nginx_count(m, tls_port, "404", "/after") == 3.0);
    assert_eq!(nginx_count(&m, tls_port, "404", "/after"), 3.0);
    let port = tls_port.to_string();
    assert_eq!(
        m.sum(
            "http_client_request_duration_seconds_count",
            &[("server_port", port.as_str()), ("http_route", "/after")]
        ),
        3.0
    );
}

/// Secrets in paths are not published on the unauthenticated endpoint: a password
/// after a credential word, or a token mixing letters and digits, collapses to `*`.
#[test]
fn secret_like_path_segments_never_reach_the_exposition() {
    if !have_root("secret_like_path_segments_never_reach_the_exposition") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let mut conn = connect(server.port);
    for path in ["/login/hunter2path", "/reset/letmein", "/t/s3cr3ttok3n9"] {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(read_response(&mut BufReader::new(&conn)), 200);
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| {
        server_count(m, &pid, "GET", "200", "/login/*") == 1.0
    });
    assert_eq!(server_count(&m, &pid, "GET", "200", "/login/*"), 1.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/reset/*"), 1.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/t/*"), 1.0);
    let text = agent.scrape();
    for secret in ["hunter2path", "letmein", "s3cr3ttok3n9"] {
        assert!(!text.contains(secret), "{secret} is exported");
    }
    // Every series has a creation time of this era, never the epoch.
    let openmetrics = agent.scrape_as(Some("application/openmetrics-text; version=1.0.0"));
    let created: Vec<f64> = openmetrics
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_created"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!created.is_empty());
    assert!(created.iter().all(|t| *t > 1.6e9), "{created:?}");
}

/// Methods outside the standard set, in any case, are counted as `_OTHER`; a client that
/// writes its requests a byte at a time is counted too. Both once went uncounted.
#[test]
fn other_methods_and_requests_written_a_byte_at_a_time_are_counted() {
    if !have_root("other_methods_and_requests_written_a_byte_at_a_time_are_counted") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    // The Python server answers methods it has no handler for with 501.
    for method in ["PURGE", "PROPFIND", "get", "NOTAMETHOD"] {
        for _ in 0..50 {
            let stream = connect(server.port);
            (&stream)
                .write_all(format!("{method} /other HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .expect("send");
            assert_eq!(read_response(&mut BufReader::new(&stream)), 501);
        }
    }
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    for _ in 0..20 {
        for byte in b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n" {
            (&stream).write_all(&[*byte]).expect("send a byte");
        }
        assert_eq!(read_response(&mut reader), 200);
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= 220.0);
    assert_eq!(server_count(&m, &pid, "_OTHER", "501", "/other"), 200.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 20.0);
    assert_eq!(server_total(&m, &pid), 220.0, "nothing else");
}

/// Chunked responses larger than what the kernel copies of one write (4 KiB) are counted
/// on both ends, each ending where the next request begins or at close. They once went
/// uncounted (0/200).
#[test]
fn chunked_responses_beyond_one_writes_capture_are_counted() {
    if !have_root("chunked_responses_beyond_one_writes_capture_are_counted") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    for path in ["/bigchunks/100/100", "/bigchunks/3/5000"] {
        let stream = connect(server.port);
        let mut reader = BufReader::new(&stream);
        for _ in 0..100 {
            (&stream)
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .expect("send");
            assert_eq!(read_response(&mut reader), 200);
        }
    }
    let (pid, me) = (server.pid(), std::process::id().to_string());
    let client = |m: &Metrics| {
        m.sum(
            "http_client_request_duration_seconds_count",
            &[
                ("process_pid", me.as_str()),
                ("http_route", "/bigchunks/*/*"),
            ],
        )
    };
    let m = common::eventually(&agent, |m| {
        server_count(m, &pid, "GET", "200", "/bigchunks/*/*") >= 200.0 && client(m) >= 200.0
    });
    assert_eq!(
        server_count(&m, &pid, "GET", "200", "/bigchunks/*/*"),
        200.0
    );
    assert_eq!(client(&m), 200.0);
}

/// 100 and then 1,000 requests pipelined in one write each, answered in order, are
/// counted exactly on both ends, and no framing is reported lost. They once went
/// undercounted (640/1,000 and 128/1,000) with no loss counter moving.
#[test]
fn requests_pipelined_a_thousand_to_a_write_are_counted_exactly() {
    if !have_root("requests_pipelined_a_thousand_to_a_write_are_counted_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    for (times, status) in [(100, 200), (1000, 201)] {
        let burst = format!("GET /status/{status} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(times);
        (&stream).write_all(burst.as_bytes()).expect("send");
        for _ in 0..times {
            assert_eq!(read_response(&mut reader), status);
        }
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| {
        server_count(m, &pid, "GET", "201", "/status/*") >= 1000.0
            && my_client_count(m, "201") >= 1000.0
    });
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 100.0);
    assert_eq!(server_count(&m, &pid, "GET", "201", "/status/*"), 1000.0);
    assert_eq!(
        (my_client_count(&m, "200"), my_client_count(&m, "201")),
        (100.0, 1000.0)
    );
    assert_eq!(
        m.sum("periscope_http_framing_lost_total", &[]),
        0.0,
        "no framing lost"
    );
    assert_eq!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "http"), ("map", "pending_requests")]
        ),
        0.0
    );
}

/// Request heads longer than the kernel copies of one read (4 KiB) or than the framer
/// holds (16 KiB), and request lines of 64 KiB, are counted from their request lines
/// on both ends. They once went uncounted (0/50 and 0/100).
#[test]
fn heads_over_the_capture_and_the_head_limit_are_counted() {
    if !have_root("heads_over_the_capture_and_the_head_limit_are_counted") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(HTTP_CONFIG);
    let server = Server::python();
    // Ten 2 KiB headers: a 20 KiB head, under Python's 64 KiB per line.
    let mut big_head = String::from("GET /status/200 HTTP/1.1\r\nHost: t\r\n");
    for i in 0..10 {
        big_head.push_str(&format!("X-Big-{i}: {}\r\n", "b".repeat(2048)));
    }
    big_head.push_str("\r\n");
    let long_line = format!(
        "GET /status/201?q={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(65_000)
    );
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    for (request, times, status) in [(&big_head, 50, 200), (&long_line, 100, 201)] {
        for _ in 0..times {
            (&stream).write_all(request.as_bytes()).expect("send");
            assert_eq!(read_response(&mut reader), status);
        }
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| {
        server_count(m, &pid, "GET", "201", "/status/*") >= 100.0
            && my_client_count(m, "201") >= 100.0
    });
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 50.0);
    assert_eq!(server_count(&m, &pid, "GET", "201", "/status/*"), 100.0);
    assert_eq!(
        (my_client_count(&m, "200"), my_client_count(&m, "201")),
        (50.0, 100.0)
    );
}

/// The kernel framer's share of a Python server's exchanges, as the agent reports it.
fn kernel_framer(m: &Metrics, outcome: &str) -> f64 {
    m.sum(
        "periscope_http_kernel_framer_exchanges_total",
        &[("outcome", outcome)],
    )
}

/// Requests written and their responses read on one connection, as a test shapes them.
type Exchanges<'a> = &'a dyn Fn(&TcpStream, &mut BufReader<&TcpStream>);

/// Each shape the kernel framer does not frame itself hands its connection to user
/// space, once, and is counted exactly there, as is a plain exchange after it on the
/// same connection: two requests pipelined in one write, a method split over writes,
/// a head split after its request line, and a POST that waits for 100 Continue.
#[test]
fn each_shape_the_kernel_does_not_frame_is_handed_over_and_counted_exactly() {
    if !have_root("each_shape_the_kernel_does_not_frame_is_handed_over_and_counted_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("probes:\n  http:\n    enabled: true\n    clients: false\n");
    let server = Server::python();
    let pause = || std::thread::sleep(Duration::from_millis(50));
    let shapes: [(&str, Exchanges); 4] = [
        ("pipelined", &|stream, reader| {
            (&*stream)
                .write_all(b"GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            assert_eq!(read_response(reader), 201);
            assert_eq!(read_response(reader), 201);
        }),
        ("method split", &|stream, reader| {
            (&*stream).write_all(b"GE").expect("send");
            pause();
            (&*stream)
                .write_all(b"T /status/202 HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            assert_eq!(read_response(reader), 202);
        }),
        ("head split", &|stream, reader| {
            (&*stream)
                .write_all(b"GET /status/203 HTTP/1.1\r\n")
                .expect("send");
            pause();
            (&*stream).write_all(b"Host: t\r\n\r\n").expect("send");
            assert_eq!(read_response(reader), 203);
        }),
        ("100-continue", &|stream, reader| {
            (&*stream)
                .write_all(b"POST /status/205 HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n")
                .expect("send");
            let mut interim = String::new();
            reader.read_line(&mut interim).expect("interim status");
            assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
            let mut blank = String::new();
            reader
                .read_line(&mut blank)
                .expect("end of the interim head");
            (&*stream).write_all(b"payload").expect("send the body");
            assert_eq!(read_response(reader), 205);
        }),
    ];
    for (_, shape) in &shapes {
        let stream = connect(server.port);
        let mut reader = BufReader::new(&stream);
        shape(&stream, &mut reader);
        (&stream)
            .write_all(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= 9.0);
    for (status, want, shape) in [
        ("201", 2.0, "pipelined"),
        ("202", 1.0, "method split"),
        ("203", 1.0, "head split"),
        ("205", 1.0, "100-continue"),
        ("200", 4.0, "the plain exchanges after them"),
    ] {
        let method = if status == "205" { "POST" } else { "GET" };
        assert_eq!(
            server_count(&m, &pid, method, status, "/status/*"),
            want,
            "{shape}"
        );
    }
    assert_eq!(server_total(&m, &pid), 9.0, "nothing else");
    assert_eq!(
        kernel_framer(&m, "handed_off"),
        4.0,
        "one handoff per shape"
    );
}

/// Plain keep-alive exchanges with Content-Length bodies, HEADs and POSTs are framed and
/// counted in the kernel: none is handed to user space, and the counts and body sizes
/// are exact. A chunked response on another connection hands that connection over with
/// its request, and it is counted exactly too, as is what follows on it.
#[test]
fn plain_exchanges_are_framed_in_the_kernel_and_the_rest_handed_over_exactly() {
    if !have_root("plain_exchanges_are_framed_in_the_kernel_and_the_rest_handed_over_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    // Clients untraced: the agent's counters then see the server's exchanges alone.
    let agent = Agent::start("probes:\n  http:\n    enabled: true\n    clients: false\n");
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    let mut exchange = |request: &[u8], head_only: bool| {
        (&stream).write_all(request).expect("send");
        if head_only {
            read_head_response(&mut reader);
        } else {
            assert!(read_response(&mut reader) < 300);
        }
    };
    for _ in 0..300 {
        exchange(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n", false);
    }
    for _ in 0..50 {
        exchange(
            b"POST /status/201 HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\npayload",
            false,
        );
    }
    for _ in 0..20 {
        exchange(b"HEAD /status/204 HTTP/1.1\r\nHost: t\r\n\r\n", true);
    }
    let other = connect(server.port);
    let mut other_reader = BufReader::new(&other);
    for path in ["/chunked", "/status/202"] {
        (&other)
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(
            read_response(&mut other_reader),
            200 + u16::from(path != "/chunked") * 2
        );
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= 372.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 300.0);
    assert_eq!(server_count(&m, &pid, "POST", "201", "/status/*"), 50.0);
    assert_eq!(server_count(&m, &pid, "HEAD", "204", "/status/*"), 20.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/chunked"), 1.0);
    assert_eq!(server_count(&m, &pid, "GET", "202", "/status/*"), 1.0);
    assert_eq!(server_total(&m, &pid), 372.0, "nothing else");
    let post = [
        ("process_pid", pid.as_str()),
        ("http_request_method", "POST"),
    ];
    assert_eq!(
        m.sum("http_server_request_body_size_bytes_sum", &post),
        350.0
    );
    let get = [
        ("process_pid", pid.as_str()),
        ("http_route", "/status/*"),
        ("http_request_method", "GET"),
    ];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &get),
        1505.0
    );
    let head = [
        ("process_pid", pid.as_str()),
        ("http_request_method", "HEAD"),
    ];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &head),
        0.0
    );
    let chunked = [("process_pid", pid.as_str()), ("http_route", "/chunked")];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &chunked),
        11.0
    );

    // The 370 plain exchanges and the chunked one's request went through the kernel
    // framer; only the chunked response's connection was handed over.
    let framed = kernel_framer(&m, "counted") + kernel_framer(&m, "recorded");
    assert_eq!(framed, 370.0, "every plain exchange framed in the kernel");
    assert_eq!(kernel_framer(&m, "handed_off"), 1.0);
    assert_eq!(kernel_framer(&m, "abandoned"), 0.0);
    // Once its slot is installed, a series' exchanges no longer reach user space.
    assert!(kernel_framer(&m, "counted") > 0.0, "slots count");
}

/// A head that runs past the first kilobyte the kernel copies (a large token or cookie)
/// is copied again and framed in the kernel, up to 4 KiB, requests and responses alike.
/// A longer one hands its connection over, and every exchange is counted exactly.
#[test]
fn heads_up_to_4_kib_are_framed_in_the_kernel() {
    if !have_root("heads_up_to_4_kib_are_framed_in_the_kernel") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("probes:\n  http:\n    enabled: true\n    clients: false\n");
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    let request = |path: &str, token_bytes: usize| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
            "t".repeat(token_bytes)
        )
    };
    for _ in 0..40 {
        (&stream)
            .write_all(request("/status/200", 3000).as_bytes())
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
    }
    for _ in 0..10 {
        (&stream)
            .write_all(request("/bighead/2500", 0).as_bytes())
            .expect("send");
        assert_eq!(read_response(&mut reader), 200);
    }
    // Past 4 KiB: this connection goes to user space, with the exchange in flight.
    let other = connect(server.port);
    let mut other_reader = BufReader::new(&other);
    (&other)
        .write_all(request("/status/202", 5000).as_bytes())
        .expect("send");
    assert_eq!(read_response(&mut other_reader), 202);
    (&other)
        .write_all(request("/status/203", 0).as_bytes())
        .expect("send");
    assert_eq!(read_response(&mut other_reader), 203);

    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= 52.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/status/*"), 40.0);
    assert_eq!(server_count(&m, &pid, "GET", "200", "/bighead/*"), 10.0);
    assert_eq!(server_count(&m, &pid, "GET", "202", "/status/*"), 1.0);
    assert_eq!(server_count(&m, &pid, "GET", "203", "/status/*"), 1.0);
    assert_eq!(server_total(&m, &pid), 52.0, "nothing else");
    let bodies = [("process_pid", pid.as_str())];
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &bodies),
        52.0 * 5.0
    );
    let framed = kernel_framer(&m, "counted") + kernel_framer(&m, "recorded");
    assert_eq!(framed, 50.0, "the long heads framed in the kernel");
    assert_eq!(kernel_framer(&m, "handed_off"), 1.0, "the head past 4 KiB");
    assert_eq!(kernel_framer(&m, "abandoned"), 0.0);
}

/// Heads of every length across the first capture's end (1 KiB) and across the most the
/// kernel copies again (4 KiB), each with a body after it in the same write, each on a
/// connection of its own: every exchange is counted exactly, and every body byte but
/// those behind a head longer than one event carries; the first sweep without a
/// hand-over, the second handing over exactly the heads that run past what the kernel
/// scans.
#[test]
fn heads_across_both_capture_limits_are_counted_exactly() {
    if !have_root("heads_across_both_capture_limits_are_counted_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("probes:\n  http:\n    enabled: true\n    clients: false\n");
    let server = Server::python();
    let pid = server.pid();
    // A POST whose head is exactly `head_bytes` long, then a 7-byte body.
    let post = |head_bytes: usize| {
        let open = "POST /status/201 HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nX-Pad: ";
        let pad = head_bytes - open.len() - 4;
        let request = format!("{open}{}\r\n\r\npayload", "p".repeat(pad));
        assert_eq!(request.len(), head_bytes + 7);
        let stream = connect(server.port);
        let mut reader = BufReader::new(&stream);
        (&stream).write_all(request.as_bytes()).expect("send");
        assert_eq!(read_response(&mut reader), 201);
    };
    let first_sweep = 1000..1050;
    for head_bytes in first_sweep.clone() {
        post(head_bytes);
    }
    let sent = first_sweep.len() as f64;
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= sent);
    assert_eq!(server_count(&m, &pid, "POST", "201", "/status/*"), sent);
    assert_eq!(kernel_framer(&m, "handed_off"), 0.0, "all within 4 KiB");

    let second_sweep = 4060..4110;
    for head_bytes in second_sweep.clone() {
        post(head_bytes);
    }
    let sent = sent + second_sweep.len() as f64;
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= sent);
    assert_eq!(server_count(&m, &pid, "POST", "201", "/status/*"), sent);
    assert_eq!(server_total(&m, &pid), sent, "nothing else");
    // A head cut by the 4 KiB that one read's event carries hides where its body starts:
    // user space counts such a request with no body (parser.rs), and every other one
    // with its 7 bytes.
    let past_capture = second_sweep.clone().filter(|&bytes| bytes > 4096).count() as f64;
    let bodies = [("process_pid", pid.as_str())];
    assert_eq!(
        m.sum("http_server_request_body_size_bytes_sum", &bodies),
        7.0 * (sent - past_capture)
    );
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &bodies),
        5.0 * sent
    );
    // The kernel scans a head to 16 bytes short of the 4 KiB it copies: longer ones go
    // to user space, each with its connection.
    let past_scan = second_sweep.filter(|&bytes| bytes > 4080).count() as f64;
    assert_eq!(kernel_framer(&m, "handed_off"), past_scan);
    assert_eq!(kernel_framer(&m, "abandoned"), 0.0);
}

/// With room in the kernel for two series, the other three are counted exactly all the
/// same, each exchange sent on its own, and every refused slot is counted.
#[test]
fn series_beyond_the_kernel_slots_are_counted_exactly_in_user_space() {
    if !have_root("series_beyond_the_kernel_slots_are_counted_exactly_in_user_space") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  http:\n    enabled: true\n    clients: false\n    kernel_series: 2\n",
    );
    let server = Server::python();
    let stream = connect(server.port);
    let mut reader = BufReader::new(&stream);
    for route in ["a", "b", "c", "d", "e"] {
        for _ in 0..20 {
            (&stream)
                .write_all(format!("GET /{route} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .expect("send");
            assert_eq!(read_response(&mut reader), 200);
        }
    }
    let pid = server.pid();
    let m = common::eventually(&agent, |m| server_total(m, &pid) >= 100.0);
    for route in ["/a", "/b", "/c", "/d", "/e"] {
        assert_eq!(server_count(&m, &pid, "GET", "200", route), 20.0, "{route}");
    }
    assert_eq!(server_total(&m, &pid), 100.0);
    // Two series took the slots; each exchange of the other three asked for one.
    assert_eq!(
        m.sum("periscope_series_folded_total", &[("map", "kernel_series")]),
        60.0
    );
    assert_eq!(kernel_framer(&m, "handed_off"), 0.0);
}
