//! Real HTTP workloads for the tracing tests: a Python app that can call another one,
//! and a keep-alive client that sends chosen headers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

/// A server that answers /hello, and on /call/<port>/<mode> calls another server's
/// /leaf: with a traceparent of its own making (mode "propagate", the span id it chose
/// is the response body) or without one (mode "plain").
pub const PY_APP: &str = r#"
import http.client, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        parts = self.path.split("/")
        if parts[1] == "call":
            headers, body = {}, b"-"
            if parts[3] == "propagate":
                incoming = self.headers.get("traceparent", "")
                trace = incoming.split("-")[1] if incoming.count("-") == 3 else os.urandom(16).hex()
                span = os.urandom(8).hex()
                headers["traceparent"] = f"00-{trace}-{span}-01"
                body = span.encode()
            conn = http.client.HTTPConnection("127.0.0.1", int(parts[2]))
            conn.request("GET", "/leaf", headers=headers)
            conn.getresponse().read()
            conn.close()
            self.reply(200, body)
        elif parts[1] == "fail":
            self.reply(503, b"down!")
        else:
            self.reply(200, b"hello")
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
server.serve_forever()
"#;

pub struct App {
    pub child: Child,
    pub port: u16,
}

impl App {
    pub fn start() -> App {
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-c", PY_APP, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready");
        App { child, port }
    }

    pub fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of its own on a loopback port, gone with the test.
pub struct RedisServer {
    pub child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup.sh --test installs it)");
        let server = RedisServer { child, port };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen on {port}");
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive GET with extra header lines, written whole as real clients do (a
/// `write!` to the stream would write each piece on its own); returns (status, body).
pub fn get(stream: &mut TcpStream, path: &str, headers: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(&*stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

pub fn hex_id(n: u64, width: usize) -> String {
    format!("{n:0width$x}")
}
