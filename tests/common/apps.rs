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
        assert!(
            super::listening_soon(port),
            "redis-server did not listen on {port}"
        );
        server
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

/// A MariaDB server of its own, its data directory made by `mariadb-install-db`, on a
/// loopback port, without grant tables: any user connects without a password.
pub struct MysqlServer {
    pub child: Child,
    pub port: u16,
    _dir: super::TempDir,
}

impl MysqlServer {
    pub fn start() -> MysqlServer {
        let dir = super::TempDir::new("mariadb");
        let data = dir.path().join("data");
        let install = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db runs (scripts/setup.sh --test installs mariadb-server)");
        assert!(install.status.success(), "mariadb-install-db: {install:?}");
        let port = free_port();
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("socket").display()))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--innodb-buffer-pool-size=16M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd runs");
        let server = MysqlServer {
            child,
            port,
            _dir: dir,
        };
        assert!(
            super::listening_soon(port) || super::listening_soon(port),
            "mariadbd did not listen on {port}"
        );
        server
    }

    /// Runs each of `statements` with the `mariadb` client, one invocation each: a
    /// failing one makes it exit 1, which the test counts.
    pub fn mariadb(&self, statements: &[&str]) {
        for statement in statements {
            Command::new("mariadb")
                .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
                .arg(format!("-P{}", self.port))
                .args(["-e", statement])
                .output()
                .expect("mariadb runs");
        }
    }
}

impl MysqlServer {
    /// Runs one statement whose body holds `;` (a procedure's), with `//` as the
    /// client's delimiter.
    pub fn mariadb_delimited(&self, statement: &str) {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h",
                "127.0.0.1",
                "-u",
                "root",
                "--delimiter=//",
            ])
            .arg(format!("-P{}", self.port))
            .args(["-e", statement])
            .output()
            .expect("mariadb runs");
        assert!(out.status.success(), "{statement}: {out:?}");
    }
}

impl Drop for MysqlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq on a loopback port, answering from its own configuration only: `known.test`
/// and every name under `cap.test` are 127.0.0.7; every other name under `test` is
/// NXDOMAIN.
pub struct DnsServer {
    pub child: Child,
    pub port: u16,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let port = free_port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--cache-size=0",
            ])
            .arg(format!("--port={port}"))
            .args(["--local=/test/", "--address=/known.test/127.0.0.7"])
            .args(["--address=/cap.test/127.0.0.7", "--conf-file=/dev/null"])
            .arg("--pid-file=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (scripts/setup.sh --test installs it)");
        let server = DnsServer { child, port };
        // It listens on TCP as well as UDP.
        assert!(
            super::listening_soon(port),
            "dnsmasq did not listen on {port}"
        );
        server
    }

    /// One `dig` lookup, no retries, over TCP with `tcp`; what it printed.
    pub fn dig(port: u16, name: &str, qtype: &str, tcp: bool) -> String {
        let mut command = Command::new("dig");
        command
            .arg("@127.0.0.1")
            .args(["-p", &port.to_string(), name, qtype])
            .args(["+tries=1", "+timeout=1", "+noall", "+comments"]);
        if tcp {
            command.arg("+tcp");
        }
        let out = command
            .output()
            .expect("dig runs (scripts/setup.sh --test installs dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL cluster of its own, made by `initdb` (trust authentication, as the
/// `postgres` user, since the server refuses to run as root) on a loopback port; with
/// `tls`, a certificate of its own and SSL on.
pub struct PgServer {
    pub child: Child,
    pub port: u16,
    tls: bool,
    _dir: super::TempDir,
}

impl PgServer {
    pub fn start(tls: bool) -> PgServer {
        let dir = super::TempDir::new("postgres");
        let bin = postgres_bin();
        let data = dir.path().join("data");
        let chown = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status();
        assert!(chown.is_ok_and(|s| s.success()), "chown to postgres");
        let initdb = as_postgres(&bin.join("initdb"))
            .args(["--auth=trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs (scripts/setup.sh --test installs postgresql)");
        assert!(initdb.status.success(), "initdb: {initdb:?}");
        let port = free_port();
        let mut postgres = as_postgres(&bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "fsync=off"]);
        if tls {
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            let made = as_postgres(std::path::Path::new("openssl"))
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .expect("openssl runs");
            assert!(made.status.success(), "openssl: {made:?}");
            // The server refuses a key others may read.
            let private = Command::new("chmod").arg("600").arg(&key).status();
            assert!(private.is_ok_and(|s| s.success()), "chmod the key");
            postgres.args(["-c", "ssl=on"]);
            postgres
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert.display()));
            postgres
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
        }
        let child = postgres
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres runs");
        let server = PgServer {
            child,
            port,
            tls,
            _dir: dir,
        };
        for _ in 0..200 {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not listen on {port}");
    }

    pub fn psql(&self, statements: &[&str]) {
        let mut command = Command::new("psql");
        let ssl = if self.tls { "require" } else { "disable" };
        command.args(["-X", "-q"]);
        command.arg(format!(
            "host=127.0.0.1 port={} user=postgres sslmode={ssl}",
            self.port
        ));
        for statement in statements {
            command.args(["-c", statement]);
        }
        // A failing statement makes psql exit 1; the test counts it.
        command.output().expect("psql runs");
    }

    /// Runs pgbench against the cluster's `postgres` database with libpq's default
    /// `sslmode` (an SSL request the server refuses, then plaintext).
    pub fn pgbench(&self, args: &[&str]) -> String {
        let out = Command::new(postgres_bin().join("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .expect("pgbench runs");
        assert!(out.status.success(), "pgbench {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A fast shutdown: the server stops its backends.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `program` run as the `postgres` user, exec'd in place (setpriv does not fork), so
/// that the child is the program itself.
fn as_postgres(program: &std::path::Path) -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ]);
    command.arg(program);
    command
}

/// The newest PostgreSQL's programs (Debian keeps them out of PATH).
fn postgres_bin() -> std::path::PathBuf {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("postgresql is installed")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions.pop().expect("a postgresql version").join("bin")
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
