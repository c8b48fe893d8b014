//! End-to-end: database operations through the http probe's framers, against Debian's
//! servers and with their own and PyPI's clients: Redis (`redis-server`, `redis-cli`,
//! redis-py), PostgreSQL (`postgres`, psql, psycopg) and MySQL (MariaDB's `mariadbd` and
//! `mariadb`, PyMySQL, MySQL Connector/Python), and DNS lookups (dnsmasq, dig, Python).
//! Every count is exact, for the client's process and for the server's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::apps::{DnsServer, MysqlServer, PgServer, RedisServer};
use crate::common::{eventually, free_port, have_root, kernel_lock, Agent, Helper, Metrics};

const DURATION_COUNT: &str = "db_client_operation_duration_seconds_count";
const DURATION_SUM: &str = "db_client_operation_duration_seconds_sum";

/// Only the http probe, so that the other probes' work does not slow the tests.
fn config(kernel_framing: bool) -> String {
    format!(
        "probes:\n  syscalls: {{enabled: false}}\n  process: {{enabled: false}}\n  tcp: {{enabled: false}}\n  http:\n    enabled: true\n    kernel_framing: {kernel_framing}\n"
    )
}

/// redis-py on one connection, after a go: GETs, SETs, failing commands, a pipeline,
/// and a BLPOP that times out, whose duration it measures itself.
/// argv: port gets sets wrongtypes pipelined_gets pipelined_sets
const REDIS_PY: &str = r#"
import sys, time, redis
port, gets, sets, wrong, pgets, psets = map(int, sys.argv[1:7])
r = redis.Redis(host="127.0.0.1", port=port)
r.ping()
print("ready", flush=True)
sys.stdin.readline()
for i in range(sets):
    r.set("k%d" % i, "v" * (i * 300))
for i in range(gets):
    r.get("k%d" % (i % max(sets, 1)))
for _ in range(wrong):
    try:
        r.lpush("k0", "x")
    except redis.ResponseError:
        pass
try:
    r.execute_command("NO-SUCH-COMMAND", "x")
except redis.ResponseError:
    pass
p = r.pipeline(transaction=False)
for i in range(pgets):
    p.get("k%d" % i)
for i in range(psets):
    p.set("p%d" % i, "v")
p.execute()
start = time.monotonic()
r.blpop(["empty"], timeout=0.3)
print(time.monotonic() - start, flush=True)
print("done", flush=True)
sys.stdin.readline()
"#;

fn redis_cli(port: u16, args: &[&str]) {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
}

/// The operations of database `system` counted for `who` (role and process labels), by
/// name and error type.
fn db_count(
    m: &Metrics,
    system: &str,
    who: &[(&str, &str)],
    operation: &str,
    error: Option<&str>,
) -> f64 {
    let mut want = who.to_vec();
    want.push(("db_system_name", system));
    want.push(("db_operation_name", operation));
    m.find(DURATION_COUNT, &want)
        .filter(|(_, labels, _)| labels.get("error_type").map(String::as_str) == error)
        .map(|(_, _, v)| v)
        .sum()
}

fn count(m: &Metrics, who: &[(&str, &str)], operation: &str, error: Option<&str>) -> f64 {
    db_count(m, "redis", who, operation, error)
}

fn redis_counts_exactly(kernel_framing: bool) {
    let _kernel = kernel_lock();
    if !have_root("redis_counts_exactly") {
        return;
    }
    let server = RedisServer::start();
    let port = server.port.to_string();
    let agent = Agent::start(&config(kernel_framing));
    let (gets, sets, wrong, pgets, psets) = (25, 15, 3, 20, 10);
    let args: Vec<String> = [&port, "25", "15", "3", "20", "10"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    // Connected before the go, so that its first commands are framed like the rest.
    let mut py = Helper::spawn(REDIS_PY, &args);
    py.go();
    let client_took: f64 = py.read_line().parse().expect("BLPOP's duration");
    py.expect_line("done");
    for _ in 0..3 {
        redis_cli(server.port, &["SET", "cli", "v"]);
    }
    for _ in 0..2 {
        redis_cli(server.port, &["GET", "cli"]);
    }

    let py_pid = py.pid().to_string();
    let client = [
        ("role", "client"),
        ("process_pid", py_pid.as_str()),
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
    ];
    let server_pid = server.pid();
    let served = [
        ("role", "server"),
        ("process_pid", server_pid.as_str()),
        ("server_port", port.as_str()),
    ];
    let cli = [("role", "client"), ("process_executable_name", "redis-cli")];
    let m = eventually(&agent, |m| {
        count(m, &served, "BLPOP", None) == 1.0 && count(m, &cli, "GET", None) == 2.0
    });
    let expect = |who: &[(&str, &str)], extra_sets: f64, extra_gets: f64| {
        assert_eq!(count(&m, who, "GET", None), (gets + pgets) as f64 + extra_gets, "{who:?}");
        assert_eq!(count(&m, who, "SET", None), (sets + psets) as f64 + extra_sets, "{who:?}");
        assert_eq!(count(&m, who, "LPUSH", Some("WRONGTYPE")), wrong as f64, "{who:?}");
        assert_eq!(count(&m, who, "_OTHER", Some("ERR")), 1.0, "{who:?}");
        assert_eq!(count(&m, who, "PING", None), 1.0, "{who:?}");
        assert_eq!(count(&m, who, "BLPOP", None), 1.0, "{who:?}");
        // Nothing else failed, and no command went unnamed.
        let failed: f64 = m
            .find(DURATION_COUNT, who)
            .filter(|(_, labels, _)| labels.contains_key("error_type"))
            .map(|(_, _, v)| v)
            .sum();
        let setinfo = count(&m, who, "CLIENT", Some("ERR")); // redis-py 5 on Redis 7.0
        assert_eq!(failed, wrong as f64 + 1.0 + setinfo, "{who:?}");
    };
    expect(&client, 0.0, 0.0);
    expect(&served, 3.0, 2.0);
    assert_eq!(count(&m, &cli, "SET", None), 3.0);

    // The BLPOP waited its 0.3 s timeout on the server, within what the client measured.
    for who in [&client[..], &served[..]] {
        let mut want = who.to_vec();
        want.push(("db_operation_name", "BLPOP"));
        let took = m.sum(DURATION_SUM, &want);
        assert!(
            (0.3..=client_took).contains(&took),
            "{who:?}: BLPOP took {took} s, the client measured {client_took} s"
        );
    }
    if kernel_framing {
        let counted = m.sum(
            "periscope_http_kernel_framer_exchanges_total",
            &[("outcome", "counted")],
        );
        assert!(counted > 0.0, "the kernel framed none of it");
    }
    py.finish();
}

#[test]
fn redis_commands_framed_in_the_kernel_count_exactly_for_client_and_server() {
    redis_counts_exactly(true);
}

#[test]
fn redis_commands_framed_in_user_space_count_exactly_for_client_and_server() {
    redis_counts_exactly(false);
}

/// Sends `bytes` on a fresh connection to `port` and reads whatever comes back for a
/// moment.
fn send_raw(port: u16, bytes: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(bytes);
    let mut sink = [0u8; 4096];
    let _ = stream.read(&mut sink);
}

/// A server that answers the first read of each connection with the next of its
/// hostile replies. argv: port
const HOSTILE_SERVER: &str = r#"
import socket, sys
replies = [
    b"-\x1b[31mEVIL\"\n{x=\"1\"} 1\r\n",
    b"-" + b"A" * 300 + b" long\r\n",
    b"$-7\r\n",
    b"*99999999999999999999999\r\n",
    b"\x00\xff\xfe garbage\r\n",
    b"+OK\r\n" * 50,
    b"$5\r\nabc",
]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
for reply in replies:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(reply)
    c.close()
sys.stdin.readline()
"#;

#[test]
fn hostile_redis_bytes_never_crash_the_agent_or_name_a_series() {
    let _kernel = kernel_lock();
    if !have_root("hostile_redis_bytes") {
        return;
    }
    let server = RedisServer::start();
    let agent = Agent::start(&config(true));
    let mut long_name = b"*1\r\n$255\r\n".to_vec();
    long_name.extend((0..255u8).map(|b| b.wrapping_mul(7) | 0x80));
    long_name.extend_from_slice(b"\r\n");
    let mut deep = b"*1\r\n".repeat(100);
    deep.extend_from_slice(b"$4\r\nPING\r\n");
    let junk: Vec<Vec<u8>> = vec![
        b"*1\r\n$5\r\nAB\x01CD\r\n".to_vec(),
        b"*1\r\n$12\r\n\"} 1\nevil 2\r\n".to_vec(),
        b"*99999999999\r\n$3\r\nGET\r\n".to_vec(),
        b"*2\r\n$3\r\nGET\r\n$-5\r\n".to_vec(),
        b"*1\r\n$3\r\nGE".to_vec(),
        b"*0\r\n".to_vec(),
        long_name,
        deep,
        vec![b'*'; 5000],
        (0..=255u8).cycle().take(100_000).collect(),
    ];
    for bytes in &junk {
        send_raw(server.port, bytes);
    }
    // A client whose server answers with hostile replies.
    let hostile_port = free_port();
    let hostile = Helper::spawn(HOSTILE_SERVER, &[hostile_port.to_string()]);
    for _ in 0..7 {
        send_raw(hostile_port, b"*1\r\n$4\r\nPING\r\n");
    }
    let m = eventually(&agent, |m| {
        m.sum(DURATION_COUNT, &[("server_port", &hostile_port.to_string())]) >= 2.0
    });
    // Every series is named from the closed sets, whatever was sent.
    for (_, labels, _) in m.find(DURATION_COUNT, &[]) {
        let operation = &labels["db_operation_name"];
        assert!(
            operation.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'.'),
            "{labels:?}"
        );
        if let Some(error) = labels.get("error_type") {
            assert!(error.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{labels:?}");
        }
    }
    // The junk errors were answered by the real server: counted, as _OTHER.
    let port = server.port.to_string();
    let served = [("role", "server"), ("server_port", port.as_str())];
    assert!(count(&m, &served, "_OTHER", Some("ERR")) >= 1.0);
    // The hostile server's error replies count as _OTHER errors of PING.
    let hostile_port = hostile_port.to_string();
    let called = [("role", "client"), ("server_port", hostile_port.as_str())];
    assert_eq!(count(&m, &called, "PING", Some("_OTHER")), 2.0);
    hostile.finish();
    // The agent still serves, and a real client still counts exactly.
    redis_cli(server.port, &["SET", "after", "v"]);
    let cli = [("role", "client"), ("process_executable_name", "redis-cli")];
    let m = eventually(&agent, |m| count(m, &cli, "SET", None) == 1.0);
    assert_eq!(count(&m, &cli, "SET", None), 1.0);
}

/// psycopg on one connection, after a go: prepared SELECTs (extended protocol, named
/// statements after the first executions), inserts, and a unique violation.
/// argv: port selects inserts
const PSYCOPG: &str = r#"
import sys, psycopg
port, selects, inserts = map(int, sys.argv[1:4])
c = psycopg.connect("host=127.0.0.1 user=postgres port=%d" % port, autocommit=True)
print("ready", flush=True)
sys.stdin.readline()
for i in range(selects):
    c.execute("SELECT a FROM t WHERE a = %s", (i,), prepare=True).fetchall()
for i in range(inserts):
    c.execute("INSERT INTO t VALUES (%s)", (1000 + i,))
try:
    c.execute("INSERT INTO t VALUES (%s)", (1000,))
except psycopg.errors.UniqueViolation:
    pass
print("done", flush=True)
sys.stdin.readline()
"#;

fn pg_count(m: &Metrics, who: &[(&str, &str)], operation: &str, error: Option<&str>) -> f64 {
    db_count(m, "postgresql", who, operation, error)
}

#[test]
fn postgresql_statements_count_exactly_by_verb_and_sqlstate_class() {
    let _kernel = kernel_lock();
    if !have_root("postgresql_statements_count_exactly") {
        return;
    }
    let server = PgServer::start(false);
    let agent = Agent::start(&config(true));
    // Simple queries: one statement per -c, and three in one query, counted one by one.
    server.psql(&["CREATE TABLE t (a int PRIMARY KEY)"]);
    server.psql(&[
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2); INSERT INTO t VALUES (3); SELECT count(*) FROM t",
    ]);
    server.psql(&["SELECT * FROM missing"]);
    server.psql(&["BEGIN; SELECT 1/0; SELECT 2; COMMIT"]);
    let port = server.port.to_string();
    let (selects, inserts) = (12, 5);
    let mut py = Helper::spawn(PSYCOPG, &[port.clone(), "12".into(), "5".into()]);
    py.run();

    let py_pid = py.pid().to_string();
    let client = [("role", "client"), ("process_pid", py_pid.as_str())];
    let psql = [("role", "client"), ("process_executable_name", "psql")];
    let served = [("role", "server"), ("server_port", port.as_str())];
    let m = eventually(&agent, |m| {
        pg_count(m, &served, "INSERT", Some("23")) == 1.0
            && pg_count(m, &psql, "SELECT", Some("22")) == 1.0
    });
    // psql: CREATE, three INSERTs, a count, a missing table (42), and a transaction
    // whose division by zero (22) aborts the rest of its query.
    assert_eq!(pg_count(&m, &psql, "CREATE", None), 1.0);
    assert_eq!(pg_count(&m, &psql, "INSERT", None), 3.0);
    assert_eq!(pg_count(&m, &psql, "SELECT", None), 1.0);
    assert_eq!(pg_count(&m, &psql, "SELECT", Some("42")), 1.0);
    assert_eq!(pg_count(&m, &psql, "BEGIN", None), 1.0);
    assert_eq!(pg_count(&m, &psql, "SELECT", Some("22")), 1.0);
    assert_eq!(pg_count(&m, &psql, "COMMIT", None), 0.0);
    // psycopg, through the extended protocol.
    assert_eq!(pg_count(&m, &client, "SELECT", None), selects as f64);
    assert_eq!(pg_count(&m, &client, "INSERT", None), inserts as f64);
    assert_eq!(pg_count(&m, &client, "INSERT", Some("23")), 1.0);
    let all_client: f64 = m
        .find(DURATION_COUNT, &client)
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(all_client, (selects + inserts + 1) as f64);
    // The server's backends count the same, for every client together.
    assert_eq!(pg_count(&m, &served, "SELECT", None), selects as f64 + 1.0);
    assert_eq!(pg_count(&m, &served, "INSERT", None), inserts as f64 + 3.0);
    assert_eq!(pg_count(&m, &served, "INSERT", Some("23")), 1.0);
    assert_eq!(pg_count(&m, &served, "SELECT", Some("42")), 1.0);
    assert_eq!(pg_count(&m, &served, "SELECT", Some("22")), 1.0);
    py.finish();

    // Junk after a startup message's shape, and a query of binary bytes: no names.
    let mut junk = vec![0, 0, 0, 9, 0, 3, 0, 0, 0];
    junk.extend_from_slice(b"Q\x00\x00\x00\x0a\x1b[31m\"\0");
    junk.extend_from_slice(&[0xff; 64]);
    send_raw(server.port, &junk);
    let m = agent.metrics();
    for (_, labels, _) in m.find(DURATION_COUNT, &[("db_system_name", "postgresql")]) {
        let operation = &labels["db_operation_name"];
        assert!(operation.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{labels:?}");
    }
}

/// psycopg's client-side cursor on one connection, after a go: simple queries of one
/// statement each (framed in the kernel), failures of two SQLSTATE classes, a result of
/// 20,000 rows (walked across reads), a COPY (whose answer the kernel does not frame: the
/// connection goes to user space mid-answer), and the same SELECTs again. Prints the
/// total time of the SELECTs that succeed, as it measured them. argv: port selects inserts
const PSYCOPG_SIMPLE: &str = r#"
import sys, time, psycopg
port, selects, inserts = map(int, sys.argv[1:4])
c = psycopg.connect("host=127.0.0.1 user=postgres port=%d" % port, autocommit=True,
                    cursor_factory=psycopg.ClientCursor)
print("ready", flush=True)
sys.stdin.readline()
took = 0.0
def select(query, *args):
    global took
    start = time.monotonic()
    c.execute(query, args).fetchall()
    took += time.monotonic() - start
for i in range(selects):
    select("SELECT a FROM t WHERE a = %s", i)
for i in range(inserts):
    c.execute("INSERT INTO t VALUES (%s);", (2000 + i,))
try:
    c.execute("INSERT INTO t VALUES (2000)")
except psycopg.errors.UniqueViolation:
    pass
try:
    c.execute("  select * from missing")
except psycopg.errors.UndefinedTable:
    pass
select("SELECT generate_series(1, 20000)")
with c.cursor().copy("COPY (SELECT generate_series(1, 5)) TO STDOUT") as copy:
    list(copy)
for i in range(selects):
    select("SELECT a FROM t WHERE a = %s", i)
print(took, flush=True)
print("done", flush=True)
sys.stdin.readline()
"#;

#[test]
fn postgresql_simple_queries_framed_in_the_kernel_count_exactly_and_hand_over_mid_answer() {
    let _kernel = kernel_lock();
    if !have_root("postgresql_simple_queries_framed_in_the_kernel") {
        return;
    }
    let server = PgServer::start(false);
    server.psql(&["CREATE TABLE t (a int PRIMARY KEY)"]);
    let agent = Agent::start(&config(true));
    let port = server.port.to_string();
    let (selects, inserts) = (30, 7);
    let mut py = Helper::spawn(PSYCOPG_SIMPLE, &[port.clone(), selects.to_string(), inserts.to_string()]);
    py.go();
    let client_took: f64 = py.read_line().parse().expect("the SELECTs' time");
    py.expect_line("done");

    let py_pid = py.pid().to_string();
    let client = [("role", "client"), ("process_pid", py_pid.as_str())];
    let served = [("role", "server"), ("server_port", port.as_str())];
    let m = eventually(&agent, |m| {
        pg_count(m, &client, "SELECT", None) == (2 * selects + 1) as f64
            && pg_count(m, &served, "SELECT", None) == (2 * selects + 1) as f64
    });
    for who in [&client[..], &served[..]] {
        assert_eq!(pg_count(&m, who, "SELECT", None), (2 * selects + 1) as f64, "{who:?}");
        assert_eq!(pg_count(&m, who, "INSERT", None), inserts as f64, "{who:?}");
        assert_eq!(pg_count(&m, who, "INSERT", Some("23")), 1.0, "{who:?}");
        assert_eq!(pg_count(&m, who, "SELECT", Some("42")), 1.0, "{who:?}");
        assert_eq!(pg_count(&m, who, "COPY", None), 1.0, "{who:?}");
        let all: f64 = m.find(DURATION_COUNT, who).map(|(_, _, v)| v).sum();
        assert_eq!(all, (2 * selects + inserts + 4) as f64, "{who:?}");
    }
    // The SELECTs' time lies within what the client measured around each.
    let mut selected = client.to_vec();
    selected.push(("db_operation_name", "SELECT"));
    let kernel_took: f64 = m
        .find(DURATION_SUM, &selected)
        .filter(|(_, labels, _)| !labels.contains_key("error_type"))
        .map(|(_, _, v)| v)
        .sum();
    assert!(kernel_took > 0.0 && kernel_took <= client_took, "{kernel_took} s vs {client_took} s");
    let framer = |outcome: &str| {
        m.sum("periscope_http_kernel_framer_exchanges_total", &[("outcome", outcome)])
    };
    // Every statement before the COPY was framed in the kernel, on both ends: counted in
    // its slot or, before the slot was installed, recorded one by one. Both ends went to
    // user space at the COPY. (The framer's counters count the test's scrapes too.)
    let framed = framer("counted") + framer("recorded");
    assert!(framed >= (2 * (selects + inserts + 3)) as f64, "{framed}");
    assert!(framer("handed_off") >= 2.0);
    py.finish();
}

#[test]
fn pgbench_prepared_and_extended_queries_are_framed_in_the_kernel_and_count_exactly() {
    let _kernel = kernel_lock();
    if !have_root("pgbench_prepared_and_extended_queries_are_framed_in_the_kernel") {
        return;
    }
    let server = PgServer::start(false);
    server.pgbench(&["-i", "-q", "-s", "1"]);
    let agent = Agent::start(&config(true));
    let port = server.port.to_string();
    let (prepared, extended) = (300, 200);
    // Named prepared statements (Parse once, then Bind, Execute, Sync), and unnamed ones
    // (Parse, Bind, Describe, Execute, Sync each time). Each run also makes a simple
    // `select count(*)` on a connection of its own, and pgbench's own look at the
    // tables' partitions.
    server.pgbench(&["-S", "-n", "-c", "1", "-M", "prepared", "-t", &prepared.to_string()]);
    server.pgbench(&["-S", "-n", "-c", "1", "-M", "extended", "-t", &extended.to_string()]);
    let client = [("role", "client"), ("process_executable_name", "pgbench")];
    let served = [("role", "server"), ("server_port", port.as_str())];
    let want = (prepared + extended + 2 * 2) as f64;
    let m = eventually(&agent, |m| {
        pg_count(m, &client, "SELECT", None) == want && pg_count(m, &served, "SELECT", None) == want
    });
    for who in [&client[..], &served[..]] {
        assert_eq!(pg_count(&m, who, "SELECT", None), want, "{who:?}");
        let all: f64 = m.find(DURATION_COUNT, who).map(|(_, _, v)| v).sum();
        assert_eq!(all, want, "{who:?}");
    }
    // Counted in the kernel, on both ends: in slots, or one by one before their slots
    // were installed. (The framer's counters count the test's scrapes too.)
    let framer = |outcome: &str| {
        m.sum("periscope_http_kernel_framer_exchanges_total", &[("outcome", outcome)])
    };
    let framed = framer("counted") + framer("recorded");
    assert!(framed >= 2.0 * want, "{framed}");
    assert!(framer("counted") > 0.0);
}

/// A PostgreSQL server that answers each connection's startup, then its one query with
/// the next of its hostile answers; and a client that sends `SELECT 1` on a connection
/// per answer. argv: none
const HOSTILE_PG: &str = r#"
import socket, struct, threading
def msg(kind, payload):
    return kind + struct.pack("!I", len(payload) + 4) + payload
ready = msg(b"Z", b"I")
answers = [
    msg(b"C", b"\x1b[31mSELECT 1\0") + ready,
    msg(b"C", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ 1\0") + ready,
    msg(b"E", b"SERROR\0C\xff\xfe\0Mx\0\0") + ready,
    msg(b"E", b"C\0") + ready,
    msg(b"C", b"SELECT 1\0") + ready + b"trailing junk",
    b"C\xff\xff\xff\xff" + b"x" * 64,
    msg(b"Z", b"II"),
]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
port = listener.getsockname()[1]
def serve():
    for answer in answers:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(msg(b"R", b"\0\0\0\0") + ready)
        conn.recv(4096)
        conn.sendall(answer)
        conn.recv(4096)
        conn.close()
threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
input()
startup = b"\0\3\0\0user\0x\0\0"
for _ in answers:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(struct.pack("!I", len(startup) + 4) + startup)
    s.recv(4096)
    s.sendall(msg(b"Q", b"SELECT 1\0"))
    s.settimeout(0.5)
    try:
        s.recv(4096)
    except OSError:
        pass
    s.close()
print(port, flush=True)
print("done", flush=True)
input()
"#;

#[test]
fn hostile_postgresql_answers_framed_in_the_kernel_make_no_names_and_break_nothing() {
    let _kernel = kernel_lock();
    if !have_root("hostile_postgresql_answers_framed_in_the_kernel") {
        return;
    }
    let agent = Agent::start(&config(true));
    let mut hostile = Helper::spawn(HOSTILE_PG, &[]);
    hostile.go();
    let port = hostile.read_line();
    hostile.expect_line("done");
    let client = [("role", "client"), ("server_port", port.as_str())];
    let served = [("role", "server"), ("server_port", port.as_str())];
    let m = eventually(&agent, |m| {
        pg_count(m, &client, "SELECT", Some("_OTHER")) == 2.0
            && pg_count(m, &served, "SELECT", Some("_OTHER")) == 2.0
    });
    for who in [&client[..], &served[..]] {
        // Tags of escapes or of no verb leave the query's; errors of no class are _OTHER;
        // trailing junk follows a counted answer; a huge length and a bad ReadyForQuery
        // count nothing.
        assert_eq!(pg_count(&m, who, "SELECT", None), 3.0, "{who:?}");
        assert_eq!(pg_count(&m, who, "SELECT", Some("_OTHER")), 2.0, "{who:?}");
        let all: f64 = m.find(DURATION_COUNT, who).map(|(_, _, v)| v).sum();
        assert_eq!(all, 5.0, "{who:?}");
    }
    hostile.finish();
    // The agent still counts a real client exactly.
    let server = PgServer::start(false);
    server.psql(&["SELECT 1"]);
    let psql = [("role", "client"), ("process_executable_name", "psql")];
    let m = eventually(&agent, |m| pg_count(m, &psql, "SELECT", None) == 1.0);
    assert_eq!(pg_count(&m, &psql, "SELECT", None), 1.0);
}

#[test]
fn postgresql_statements_over_tls_count_exactly_through_the_openssl_uprobes() {
    let _kernel = kernel_lock();
    if !have_root("postgresql_statements_over_tls") {
        return;
    }
    let server = PgServer::start(true);
    let agent = Agent::start(&config(true));
    server.psql(&["CREATE TABLE t (a int)"]);
    server.psql(&["INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)", "SELECT * FROM t"]);
    server.psql(&["SELECT * FROM missing"]);
    let port = server.port.to_string();
    let psql = [("role", "client"), ("process_executable_name", "psql")];
    let served = [("role", "server"), ("server_port", port.as_str())];
    let m = eventually(&agent, |m| {
        pg_count(m, &psql, "SELECT", Some("42")) == 1.0
            && pg_count(m, &served, "SELECT", Some("42")) == 1.0
    });
    for who in [&psql[..], &served[..]] {
        assert_eq!(pg_count(&m, who, "CREATE", None), 1.0, "{who:?}");
        assert_eq!(pg_count(&m, who, "INSERT", None), 2.0, "{who:?}");
        assert_eq!(pg_count(&m, who, "SELECT", None), 1.0, "{who:?}");
        assert_eq!(pg_count(&m, who, "SELECT", Some("42")), 1.0, "{who:?}");
    }
}

/// PyMySQL (the text protocol) and MySQL Connector/Python (prepared statements, the
/// binary protocol), each on one connection made before the go: selects, inserts, a
/// duplicate key (1062), a multi-statement query counted one by one, and one that stops
/// at its missing table (1146). argv: port selects inserts prepared
const MYSQL_PY: &str = r#"
import sys, pymysql, mysql.connector
from pymysql.constants import CLIENT
port, selects, inserts, prepared = map(int, sys.argv[1:5])
text = pymysql.connect(host="127.0.0.1", port=port, user="root", database="shop",
                       autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)
binary = mysql.connector.connect(host="127.0.0.1", port=port, user="root", database="shop",
                                 use_pure=True, autocommit=True)
print("ready", flush=True)
sys.stdin.readline()
t = text.cursor()
for i in range(selects):
    t.execute("SELECT v FROM items WHERE id = %s", (i,))
    t.fetchall()
for i in range(inserts):
    t.execute("INSERT INTO items VALUES (%s, 'x')", (100 + i,))
try:
    t.execute("INSERT INTO items VALUES (100, 'again')")
except pymysql.err.IntegrityError:
    pass
t.execute("UPDATE items SET v = 'y;z' WHERE id = 100; SELECT v FROM items; DELETE FROM items WHERE id = 101")
while t.nextset():
    pass
try:
    t.execute("SELECT v FROM missing; DELETE FROM items")
except pymysql.err.ProgrammingError:
    pass
b = binary.cursor(prepared=True)
for i in range(prepared):
    b.execute("SELECT v FROM items WHERE id = %s", (100 + i,))
    b.fetchall()
try:
    b.execute("INSERT INTO items VALUES (%s, %s)", (100, "dup"))
except mysql.connector.errors.IntegrityError:
    pass
print("done", flush=True)
sys.stdin.readline()
"#;

fn mysql_count(m: &Metrics, who: &[(&str, &str)], operation: &str, error: Option<&str>) -> f64 {
    db_count(m, "mysql", who, operation, error)
}

#[test]
fn mysql_statements_count_exactly_in_text_and_binary_protocols() {
    let _kernel = kernel_lock();
    if !have_root("mysql_statements_count_exactly") {
        return;
    }
    let server = MysqlServer::start();
    let agent = Agent::start(&config(true));
    server.mariadb(&[
        "CREATE DATABASE shop",
        "CREATE TABLE shop.items (id int PRIMARY KEY, v text)",
        "INSERT INTO shop.items VALUES (1, 'a'), (2, 'b')",
        "SELECT * FROM shop.missing",
    ]);
    let port = server.port.to_string();
    let (selects, inserts, prepared) = (12, 5, 7);
    let args = [port.clone(), "12".into(), "5".into(), "7".into()];
    let mut py = Helper::spawn(MYSQL_PY, &args);
    py.run();

    let py_pid = py.pid().to_string();
    let client = [("role", "client"), ("process_pid", py_pid.as_str())];
    let cli = [("role", "client"), ("process_executable_name", "mariadb")];
    let served = [("role", "server"), ("server_port", port.as_str())];
    let m = eventually(&agent, |m| {
        mysql_count(m, &client, "INSERT", Some("1062")) == 2.0
            && mysql_count(m, &served, "INSERT", Some("1062")) == 2.0
    });
    // The mariadb client: one statement per invocation.
    assert_eq!(mysql_count(&m, &cli, "CREATE", None), 2.0);
    assert_eq!(mysql_count(&m, &cli, "INSERT", None), 1.0);
    assert_eq!(mysql_count(&m, &cli, "SELECT", Some("1146")), 1.0);
    // Text and binary protocols together, for the Python client's pid: the three
    // statements of a multi-statement query counted one by one, and the one that
    // failed ending its query.
    assert_eq!(mysql_count(&m, &client, "SELECT", None), (selects + 1 + prepared) as f64);
    assert_eq!(mysql_count(&m, &client, "INSERT", None), inserts as f64);
    assert_eq!(mysql_count(&m, &client, "INSERT", Some("1062")), 2.0);
    assert_eq!(mysql_count(&m, &client, "UPDATE", None), 1.0);
    assert_eq!(mysql_count(&m, &client, "DELETE", None), 1.0);
    assert_eq!(mysql_count(&m, &client, "SELECT", Some("1146")), 1.0);
    // The server counts the same, for every client together.
    assert_eq!(mysql_count(&m, &served, "SELECT", None), (selects + 1 + prepared) as f64);
    assert_eq!(mysql_count(&m, &served, "INSERT", None), (inserts + 1) as f64);
    assert_eq!(mysql_count(&m, &served, "INSERT", Some("1062")), 2.0);
    assert_eq!(mysql_count(&m, &served, "SELECT", Some("1146")), 2.0);
    assert_eq!(mysql_count(&m, &served, "CREATE", None), 2.0);
    assert_eq!(mysql_count(&m, &served, "DELETE", None), 1.0);
    py.finish();
}

/// Statements framed in the kernel, from one Python process after a go: PyMySQL's text
/// protocol (SELECTs, each timed, their time printed at the end; a ping; a result of 20,000 rows read
/// across many reads; a CALL of two results; inserts and errors), MySQL Connector/Python's
/// prepared statements (the binary protocol, each packet's header read apart from its
/// payload; one result of 3,000 rows), then what the kernel hands over: a multi-statement
/// query on a connection of its own, and LOAD DATA LOCAL, whose answer asks for a file.
/// argv: port selects prepared
const MYSQL_KERNEL_PY: &str = r#"
import os, sys, tempfile, time, pymysql, mysql.connector
from pymysql.constants import CLIENT
port, selects, prepared = map(int, sys.argv[1:4])
def text_connection(flags=0):
    return pymysql.connect(host="127.0.0.1", port=port, user="root", database="shop",
                           autocommit=True, local_infile=True, client_flag=flags)
text = text_connection()
multi = text_connection(CLIENT.MULTI_STATEMENTS)
binary = mysql.connector.connect(host="127.0.0.1", port=port, user="root", database="shop",
                                 use_pure=True, autocommit=True)
data = tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False)
data.write("".join("%d\tloaded\n" % (500 + i) for i in range(50)))
data.close()
took = 0.0
def select(cursor, query, args=None, rows=None):
    # Every SELECT's time, from its write to its last row read.
    global took
    start = time.perf_counter()
    cursor.execute(query, args)
    got = cursor.fetchall()
    while cursor.nextset():
        pass
    took += time.perf_counter() - start
    assert rows is None or len(got) == rows
print("ready", flush=True)
sys.stdin.readline()
t = text.cursor()
for i in range(selects):
    select(t, "SELECT v FROM items WHERE id = %s", (i,))
text.ping(reconnect=False)
select(t, "SELECT seq, REPEAT('x', 40) FROM seq_1_to_20000", rows=20000)
t.execute("CALL two_results()")
while t.nextset():
    pass
for i in range(3):
    t.execute("INSERT INTO items VALUES (%s, 'k')", (200 + i,))
try:
    t.execute("INSERT INTO items VALUES (200, 'dup')")
except pymysql.err.IntegrityError:
    pass
try:
    t.execute("SELECT v FROM missing")
except pymysql.err.ProgrammingError:
    pass
b = binary.cursor(prepared=True)
for i in range(prepared):
    select(b, "SELECT v FROM items WHERE id = %s", (200 + i % 3,))
select(b, "SELECT seq FROM seq_1_to_3000 WHERE seq > %s", (0,), rows=3000)
select(multi.cursor(), "SELECT 1; SELECT 2")
select(multi.cursor(), "SELECT 3")
t.execute("LOAD DATA LOCAL INFILE '%s' INTO TABLE items" % data.name)
select(t, "SELECT 4")
os.unlink(data.name)
print(took, flush=True)
print("done", flush=True)
sys.stdin.readline()
"#;

#[test]
fn mysql_statements_framed_in_the_kernel_count_exactly_and_hand_over_mid_answer() {
    let _kernel = kernel_lock();
    if !have_root("mysql_statements_framed_in_the_kernel") {
        return;
    }
    let server = MysqlServer::start();
    server.mariadb(&[
        "CREATE DATABASE shop",
        "CREATE TABLE shop.items (id int PRIMARY KEY, v text)",
        "INSERT INTO shop.items SELECT seq, 'v' FROM shop.seq_0_to_99",
    ]);
    server.mariadb_delimited("CREATE PROCEDURE shop.two_results() BEGIN SELECT 1; SELECT 2; END");
    let agent = Agent::start(&config(true));
    let port = server.port.to_string();
    let (selects, prepared) = (40, 25);
    let args = [port.clone(), selects.to_string(), prepared.to_string()];
    let mut py = Helper::spawn(MYSQL_KERNEL_PY, &args);
    py.go();
    let client_took: f64 = py.read_line().parse().expect("the SELECTs' time");
    py.expect_line("done");

    let py_pid = py.pid().to_string();
    let client = [("role", "client"), ("process_pid", py_pid.as_str())];
    let served = [("role", "server"), ("server_port", port.as_str())];
    // SELECTs: the timed ones, 20,000 rows, the prepared ones, 3,000 rows, and four
    // counted in user space (two of a multi-statement query, one after it, one after
    // LOAD DATA).
    let all_selects = (selects + 1 + prepared + 1 + 4) as f64;
    let m = eventually(&agent, |m| {
        mysql_count(m, &client, "SELECT", None) == all_selects
            && mysql_count(m, &served, "SELECT", None) == all_selects
            && mysql_count(m, &client, "LOAD", None) == 1.0
            && mysql_count(m, &served, "LOAD", None) == 1.0
    });
    for who in [&client[..], &served[..]] {
        assert_eq!(mysql_count(&m, who, "SELECT", None), all_selects, "{who:?}");
        assert_eq!(mysql_count(&m, who, "CALL", None), 1.0, "{who:?}");
        assert_eq!(mysql_count(&m, who, "INSERT", None), 3.0, "{who:?}");
        assert_eq!(mysql_count(&m, who, "INSERT", Some("1062")), 1.0, "{who:?}");
        assert_eq!(mysql_count(&m, who, "SELECT", Some("1146")), 1.0, "{who:?}");
        assert_eq!(mysql_count(&m, who, "LOAD", None), 1.0, "{who:?}");
    }
    // The SELECTs' time lies within what the client measured around each.
    let mut selected = client.to_vec();
    selected.push(("db_operation_name", "SELECT"));
    let kernel_took: f64 = m
        .find(DURATION_SUM, &selected)
        .filter(|(_, labels, _)| !labels.contains_key("error_type"))
        .map(|(_, _, v)| v)
        .sum();
    assert!(kernel_took > 0.0 && kernel_took <= client_took, "{kernel_took} s vs {client_took} s");
    let framer = |outcome: &str| {
        m.sum("periscope_http_kernel_framer_exchanges_total", &[("outcome", outcome)])
    };
    // Every statement but the multi-statement query's and those after LOAD DATA was
    // framed in the kernel, on both ends: counted in its slot or, before the slot was
    // installed, recorded one by one. (The framer's counters count the test's scrapes
    // too.) Both connections went to user space on both ends.
    let framed = framer("counted") + framer("recorded");
    let in_kernel = selects + 1 + 1 + 3 + 1 + 1 + prepared + 1;
    assert!(framed >= (2 * in_kernel) as f64, "{framed}");
    assert!(framer("handed_off") >= 4.0, "{}", framer("handed_off"));
    py.finish();
}

/// A server that greets as MariaDB, accepts any login, and answers every command with
/// junk: an ERR whose message has escapes and quotes, a negative-looking column count,
/// an EOF-shaped packet, binary, a packet cut off by the close, a packet of 16 MiB
/// announced, 2^64 - 1 columns, and results that say more follow for ever.
const HOSTILE_MYSQL: &str = r#"
import socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
print("ready", flush=True)
def packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload
greeting = (b"\x0a10.11.19-MariaDB\x00" + b"\x01\x00\x00\x00" + b"abcdefgh\x00" +
            b"\xff\xf7\x08\x02\x00\xff\x81\x15" + b"\x00" * 10 + b"ijklmnopqrst\x00" +
            b"mysql_native_password\x00")
junk = [b"\xff\xff\xff#\x1b[31m\"\n{}", b"\xfb\xff\xff", b"\xfe", bytes(range(256)),
        b"\xff\x01\x00"]
answers = [packet(1, j) + b"\x40\x00" for j in junk] + [
    # Two columns, then a packet of 16 MiB announced; 2^64 - 1 columns; OKs saying that
    # more results follow, for ever.
    packet(1, b"\x02") + b"\xff\xff\xff\x02\x03",
    packet(1, b"\xfe" + b"\xff" * 8),
    packet(1, b"\x00\x00\x00\x08\x00\x00\x00") * 3,
]
sys.stdin.readline()
for answer in answers:
    c, _ = s.accept()
    c.sendall(packet(0, greeting))
    c.recv(65536)
    c.sendall(packet(2, b"\x00\x00\x00\x02\x00\x00\x00"))
    c.recv(65536)
    c.sendall(answer)
    c.close()
print("done", flush=True)
sys.stdin.readline()
"#;

/// PyMySQL sends `SELECT 1` to the hostile server once per connection, whatever it hears.
const MYSQL_VICTIM: &str = r#"
import sys, pymysql
for _ in range(8):
    try:
        c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="root", connect_timeout=5)
        c.cursor().execute("SELECT 1")
    except Exception:
        pass
"#;

#[test]
fn hostile_mysql_bytes_never_crash_the_agent_or_name_a_series() {
    let _kernel = kernel_lock();
    if !have_root("hostile_mysql_bytes") {
        return;
    }
    let server = MysqlServer::start();
    let agent = Agent::start(&config(true));
    // Junk to the real server: a greeting's answer of binary, a command of escapes.
    for junk in [
        &[0xffu8; 300][..],
        b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x0a\x00\x00\x00\x03\x1b[31m\"\n\x00",
    ] {
        send_raw(server.port, junk);
    }
    let hostile_port = free_port();
    let mut hostile = Helper::spawn(HOSTILE_MYSQL, &[hostile_port.to_string()]);
    hostile.go();
    let mut victim = Command::new("python3");
    victim.args(["-c", MYSQL_VICTIM, &hostile_port.to_string()]);
    let out = victim.output().expect("python3 runs");
    assert!(out.status.success(), "{out:?}");
    hostile.expect_line("done");
    let hostile_port = hostile_port.to_string();
    let called = [("role", "client"), ("server_port", hostile_port.as_str())];
    // The ERRs are failed SELECTs, named by their code; the rest answered nothing a
    // series could be named by, or SELECTs that succeeded by their shape.
    let m = eventually(&agent, |m| mysql_count(m, &called, "SELECT", Some("65535")) == 1.0);
    for (_, labels, _) in m.find(DURATION_COUNT, &[("db_system_name", "mysql")]) {
        assert!(
            labels["db_operation_name"].bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
            "{labels:?}"
        );
        if let Some(error) = labels.get("error_type") {
            assert!(error.bytes().all(|b| b.is_ascii_digit()), "{labels:?}");
        }
    }
    hostile.finish();
    // The agent still serves, and a real client still counts exactly.
    server.mariadb(&["SELECT 1", "SELECT 2"]);
    let cli = [("role", "client"), ("process_executable_name", "mariadb")];
    let m = eventually(&agent, |m| mysql_count(m, &cli, "SELECT", None) == 2.0);
    assert_eq!(mysql_count(&m, &cli, "SELECT", None), 2.0);
}

/// A DNS server that never answers, over UDP and TCP on one port.
const SILENT_DNS: &str = r#"
import socket, sys, threading
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", port)); t.listen(8)
held = []
def accept():
    while True:
        held.append(t.accept()[0])
threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
while True:
    u.recvfrom(4096)
"#;

/// Lookups from one Python process, after a go: over UDP by sendto, a 255-byte name of
/// binary labels first (its presentation form printed for the test to compare), known
/// and missing names, A and AAAA sent together by sendmmsg(2) as glibc's resolver does,
/// eight names under cap.test, an answer to no query, and two lookups over TCP.
/// argv: port
const DNS_PY: &str = r#"
import ctypes, socket, struct, sys
port = int(sys.argv[1])
server = ("127.0.0.1", port)
def query(qid, labels, qtype=1, flags=0x0100):
    m = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 0)
    for label in labels:
        m += bytes([len(label)]) + label
    return m + b"\x00" + struct.pack(">HH", qtype, 1)
def name(text):
    return text.split(b".")
binary = [bytes((i * 7 + j) % 256 for j in range(63)) for i in range(3)] + [b"\x00\"\n\\.{}=," + b"A" * 53]
def presentation(labels):
    out = []
    for label in labels:
        text = ""
        for b in label.lower():
            text += chr(b) if 0x21 <= b <= 0x7e and b not in (0x2e, 0x5c) else "\\%03d" % b
        out.append(text)
    return ".".join(out)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
def ask(qid, labels, qtype=1):
    s.sendto(query(qid, labels, qtype), server)
    s.recvfrom(4096)
print("ready", flush=True)
print(presentation(binary), flush=True)
sys.stdin.readline()
ask(1, binary)
for i in range(4):
    ask(10 + i, name(b"known.test"))
for i in range(2):
    ask(20 + i, name(b"nope.test"))
# sendmmsg: two messages from a zeroed array, as glibc sends A and AAAA.
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton("127.0.0.1") + b"\0" * 8
addr_buf = ctypes.create_string_buffer(addr, len(addr))
bufs = [ctypes.create_string_buffer(query(30, name(b"known.test"), 1)), ctypes.create_string_buffer(query(31, name(b"known.test"), 28))]
iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(b.raw) - 1) for b in bufs]
msgs = (mmsghdr * 2)()
for i in range(2):
    msgs[i].hdr.name = ctypes.cast(addr_buf, ctypes.c_void_p)
    msgs[i].hdr.namelen = 16
    msgs[i].hdr.iov = ctypes.pointer(iovs[i])
    msgs[i].hdr.iovlen = 1
assert libc.sendmmsg(s.fileno(), msgs, 2, 0) == 2, ctypes.get_errno()
s.recvfrom(4096); s.recvfrom(4096)
for i in range(8):
    ask(40 + i, name(b"c%d.cap.test" % i))
# An answer to a query never sent on this socket.
fake = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fake.sendto(query(999, name(b"known.test"), 1, 0x8180), s.getsockname())
s.recvfrom(4096)
t = socket.create_connection(server)
framed = lambda m: struct.pack(">H", len(m)) + m
t.sendall(framed(query(50, name(b"known.test"))) + framed(query(51, name(b"known.test"))))
got = b""
while got.count(b"known") < 2 or len(got) < 2:
    chunk = t.recv(4096)
    if not chunk:
        break
    got += chunk
print("done", flush=True)
sys.stdin.readline()
"#;

const DNS_COUNT: &str = "dns_lookup_duration_seconds_count";

fn lookups(m: &Metrics, who: &[(&str, &str)], name: &str, qtype: &str, error: Option<&str>) -> f64 {
    let mut want = who.to_vec();
    want.push(("dns_question_name", name));
    want.push(("dns_question_type", qtype));
    m.find(DNS_COUNT, &want)
        .filter(|(_, labels, _)| labels.get("error_type").map(String::as_str) == error)
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn dns_lookups_count_exactly_over_udp_and_tcp_with_timeouts_and_the_name_cap() {
    let _kernel = kernel_lock();
    if !have_root("dns_lookups_count_exactly") {
        return;
    }
    let server = DnsServer::start();
    let silent_port = free_port();
    let mut silent = Helper::spawn(SILENT_DNS, &[silent_port.to_string()]);
    let config = format!(
        "{}    dns: {{timeout_ms: 300, max_question_names_per_process: 5}}\n",
        config(true)
    );
    let agent = Agent::start(&config);
    let mut py = Helper::spawn(DNS_PY, &[server.port.to_string()]);
    let binary_name = py.read_line();
    py.run();
    for (name, tcp) in [
        ("known.test", false),
        ("known.test", false),
        ("known.test", false),
        ("nope.test", false),
        ("nope.test", false),
        ("known.test", true),
        ("known.test", true),
        ("nope.test", true),
    ] {
        let said = DnsServer::dig(server.port, name, "A", tcp);
        let status = if name == "known.test" { "NOERROR" } else { "NXDOMAIN" };
        assert!(said.contains(status), "dig {name}: {said}");
    }
    for tcp in [false, true] {
        DnsServer::dig(silent_port, "slow.test", "A", tcp);
    }
    let _ = silent.child.kill();
    let _ = silent.child.wait();

    let py_pid = py.pid().to_string();
    let python = [("process_pid", py_pid.as_str())];
    let dig = [("process_executable_name", "dig")];
    let m = eventually(&agent, |m| {
        lookups(m, &dig, "slow.test", "A", Some("timeout")) == 2.0
            && lookups(m, &python, "known.test", "A", None) == 7.0
    });
    // Python: by sendto, sendmmsg and TCP.
    assert_eq!(lookups(&m, &python, "known.test", "A", None), 7.0);
    // dnsmasq has no AAAA for the name: whatever it answers, one lookup.
    let aaaa: f64 = m
        .find(DNS_COUNT, &[("process_pid", py_pid.as_str()), ("dns_question_type", "AAAA")])
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(aaaa, 1.0);
    assert_eq!(lookups(&m, &python, "nope.test", "A", Some("NXDOMAIN")), 2.0);
    // Five names per executable: the binary one, known, nope, then two under cap.test;
    // the other six fold into __overflow__, their count kept.
    assert_eq!(lookups(&m, &python, "c0.cap.test", "A", None), 1.0);
    assert_eq!(lookups(&m, &python, "c1.cap.test", "A", None), 1.0);
    assert_eq!(lookups(&m, &python, "__overflow__", "A", None), 6.0);
    let folded = [("probe", "http"), ("map", "dns_question_names")];
    assert_eq!(m.sum("periscope_series_folded_total", &folded), 6.0);
    let binary: f64 = m
        .find(DNS_COUNT, &[("process_pid", py_pid.as_str()), ("dns_question_name", &binary_name)])
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(binary, 1.0, "the binary name as {binary_name}");
    let all_python: f64 = m.find(DNS_COUNT, &python).map(|(_, _, v)| v).sum();
    assert_eq!(all_python, 19.0, "the answer to no query made nothing");
    // dig, over UDP and TCP, and its two queries nobody answered: each a timeout of
    // exactly the configured 0.3 s.
    assert_eq!(lookups(&m, &dig, "known.test", "A", None), 5.0);
    assert_eq!(lookups(&m, &dig, "nope.test", "A", Some("NXDOMAIN")), 3.0);
    let timed_out: f64 = m
        .find("dns_lookup_duration_seconds_sum", &[("process_executable_name", "dig"), ("error_type", "timeout")])
        .map(|(_, _, v)| v)
        .sum();
    assert!((timed_out - 0.6).abs() < 1e-6, "timeouts took {timed_out} s");
    let served: f64 = m
        .find(DNS_COUNT, &[("server_port", &server.port.to_string())])
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(served, 19.0 + 8.0, "dnsmasq's own side is no lookup");
    // The reference parser reads the binary name back as the agent wrote it.
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        if s.name == 'dns_lookup_duration_seconds_count' and '\\\\000' in s.labels.get('dns_question_name', ''):\n            print(s.labels['dns_question_name'])\n",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(agent.scrape().as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 runs");
    assert_eq!(String::from_utf8_lossy(&parsed.stdout).trim(), binary_name);
    py.finish();
}

/// Queries no one answers, from one UDP socket, each with an id and name of its own, more
/// than the kernel's map of lookups in flight holds. argv: port count
const DNS_FLOOD_PY: &str = r#"
import socket, struct, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    labels = [b"q%d" % i, b"slow", b"test"]
    m = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0)
    m += b"".join(bytes([len(l)]) + l for l in labels) + b"\x00" + struct.pack(">HH", 1, 1)
    s.sendto(m, ("127.0.0.1", port))
print("done", flush=True)
sys.stdin.readline()
"#;

#[test]
fn a_full_map_of_lookups_in_flight_leaves_queries_to_user_space_and_loses_none() {
    let _kernel = kernel_lock();
    if !have_root("a_full_map_of_lookups_in_flight") {
        return;
    }
    let silent_port = free_port();
    let mut silent = Helper::spawn(SILENT_DNS, &[silent_port.to_string()]);
    let config = format!("{}    dns: {{timeout_ms: 300}}\n", config(true));
    let agent = Agent::start(&config);
    // The kernel holds 4,096 lookups in flight; user space 1,024 per socket.
    let count = 4096 + 900;
    let mut py = Helper::spawn(DNS_FLOOD_PY, &[silent_port.to_string(), count.to_string()]);
    py.run();
    let py_pid = py.pid().to_string();
    let timeouts = [("process_pid", py_pid.as_str()), ("error_type", "timeout")];
    let m = eventually(&agent, |m| m.sum(DNS_COUNT, &timeouts) == count as f64);
    // Every query timed out exactly once, after exactly the timeout, wherever it waited.
    assert_eq!(m.sum(DNS_COUNT, &timeouts), count as f64);
    let took = m.sum("dns_lookup_duration_seconds_sum", &timeouts);
    assert!((took - 0.3 * count as f64).abs() < 1e-3, "{took} s");
    let to_user_space = m.sum(
        "periscope_http_kernel_framer_exchanges_total",
        &[("outcome", "dns_to_user_space")],
    );
    assert!(to_user_space >= 900.0, "{to_user_space}");
    py.finish();
    let _ = silent.child.kill();
    let _ = silent.child.wait();
}

/// An HTTP service that, serving /work, GETs from Redis and SELECTs from PostgreSQL, and
/// serving /fail, LPUSHes to a string (WRONGTYPE) and divides by zero (SQLSTATE 22),
/// then answers 500. Its connections open at its first request.
/// argv: port redis_port pg_port
const GRAPH_APP: &str = r#"
import sys, redis, psycopg
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[2]), lib_name=None, lib_version=None)
c = None
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        global c
        if c is None:
            c = psycopg.connect("host=127.0.0.1 user=postgres port=" + sys.argv[3], autocommit=True)
        code = 200
        if self.path == "/work":
            r.get("string")
            c.execute("SELECT 1").fetchall()
        else:
            code = 500
            try:
                r.lpush("string", "x")
            except redis.ResponseError:
                pass
            try:
                c.execute("SELECT 1/0")
            except psycopg.errors.DivisionByZero:
                pass
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
server.serve_forever()
"#;

/// The `service_name` of the series of `family` matching `want`.
fn service_of(m: &Metrics, family: &str, want: &[(&str, &str)]) -> String {
    m.find(family, want)
        .map(|(_, labels, _)| labels["service_name"].clone())
        .next()
        .unwrap_or_else(|| panic!("no {family} series {want:?}"))
}

#[test]
fn the_service_graph_counts_each_edge_exactly() {
    let _kernel = kernel_lock();
    if !have_root("the_service_graph_counts_each_edge_exactly") {
        return;
    }
    let redis = RedisServer::start();
    redis_cli(redis.port, &["SET", "string", "v"]);
    let pg = PgServer::start(false);
    let agent = Agent::start(&config(true));
    let port = free_port();
    let args = [port.to_string(), redis.port.to_string(), pg.port.to_string()];
    let app = Helper::spawn(GRAPH_APP, &args);
    // Stopped however the test ends: it serves forever.
    struct Stop(Helper);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.child.kill();
            let _ = self.0.child.wait();
        }
    }
    let app = Stop(app);
    let (work, fail) = (6, 3);
    for path in std::iter::repeat_n("/work", work).chain(std::iter::repeat_n("/fail", fail)) {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", &format!("http://127.0.0.1:{port}{path}")])
            .status()
            .expect("curl runs");
    }
    let total = (work + fail) as f64;
    let app_pid = app.0.pid().to_string();
    let (redis_port, pg_port) = (redis.port.to_string(), pg.port.to_string());
    let redis_served = [("role", "server"), ("server_port", redis_port.as_str())];
    let pg_served = [("role", "server"), ("server_port", pg_port.as_str())];
    let m = eventually(&agent, |m| {
        m.sum(DURATION_COUNT, &redis_served) == total && m.sum(DURATION_COUNT, &pg_served) == total
    });
    // The names each end has in its own series.
    let app_name = service_of(&m, "http_server_request_duration_seconds_count", &[("process_pid", &app_pid)]);
    let curl = [("process_executable_name", "curl")];
    let curl_name = service_of(&m, "http_client_request_duration_seconds_count", &curl);
    let redis_name = service_of(&m, DURATION_COUNT, &redis_served);
    let pg_name = service_of(&m, DURATION_COUNT, &pg_served);
    let edge = |name: &str, client: &str, server: &str| {
        m.sum(name, &[("client", client), ("server", server)])
    };
    for (client, server) in [
        (&curl_name, &app_name),
        (&app_name, &redis_name),
        (&app_name, &pg_name),
    ] {
        assert_eq!(edge("service_graph_requests_total", client, server), total, "{client} -> {server}");
        assert_eq!(
            edge("service_graph_request_failed_total", client, server),
            fail as f64,
            "{client} -> {server}"
        );
        assert_eq!(
            edge("service_graph_request_duration_seconds_count", client, server),
            total,
            "{client} -> {server}"
        );
    }
    // The service's database calls are made while it serves: each edge's time lies
    // within the requests' time.
    let seconds = |client: &str, server: &str| edge("service_graph_request_duration_seconds_sum", client, server);
    assert!(seconds(&app_name, &redis_name) < seconds(&curl_name, &app_name));
    assert!(seconds(&app_name, &pg_name) < seconds(&curl_name, &app_name));
}

/// Two network namespaces of the test's own joined by a veth pair, standing for two
/// nodes: a server's at `SERVER_NODE` (and `SERVER_NODE_V6`), and a caller's with three
/// IPv4 addresses and `CALLER_V6`. Removed on drop.
struct TwoNodes {
    server: String,
    caller: String,
}

const SERVER_NODE: &str = "10.251.0.1";
const CALLER_ADDRESSES: [&str; 3] = ["10.251.0.2", "10.251.0.3", "10.251.0.4"];
const SERVER_NODE_V6: &str = "fd00:251::1";
const CALLER_V6: &str = "fd00:251::2";

impl TwoNodes {
    fn new() -> TwoNodes {
        let tag = std::process::id();
        let nodes = TwoNodes {
            server: format!("psc-gs-{tag}"),
            caller: format!("psc-gc-{tag}"),
        };
        let run = |args: &[&str]| {
            let status = Command::new(args[0]).args(&args[1..]).status().expect("ip runs");
            assert!(status.success(), "{args:?}");
        };
        for ns in [&nodes.server, &nodes.caller] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (server, caller) = (nodes.server.as_str(), nodes.caller.as_str());
        run(&[
            "ip", "link", "add", "psc-gc", "netns", caller, "type", "veth", "peer", "name",
            "psc-gs", "netns", server,
        ]);
        run(&["ip", "-n", server, "addr", "add", &format!("{SERVER_NODE}/24"), "dev", "psc-gs"]);
        for address in CALLER_ADDRESSES {
            run(&["ip", "-n", caller, "addr", "add", &format!("{address}/24"), "dev", "psc-gc"]);
        }
        // No duplicate address detection: the addresses serve at once.
        for (ns, dev, address) in [(server, "psc-gs", SERVER_NODE_V6), (caller, "psc-gc", CALLER_V6)] {
            run(&["ip", "-n", ns, "addr", "add", &format!("{address}/64"), "dev", dev, "nodad"]);
        }
        run(&["ip", "-n", server, "link", "set", "psc-gs", "up"]);
        run(&["ip", "-n", caller, "link", "set", "psc-gc", "up"]);
        nodes
    }

    /// One request with curl, on a connection of its own, from address `from` of the
    /// caller's node (to the server's address of the same family).
    fn curl(&self, from: &str, path: &str) {
        let url = match from.contains(':') {
            true => format!("http://[{SERVER_NODE_V6}]:8080{path}"),
            false => format!("http://{SERVER_NODE}:8080{path}"),
        };
        let status = Command::new("ip")
            .args(["netns", "exec", &self.caller, "curl", "-s", "-o", "/dev/null"])
            .args(["--interface", from, &url])
            .status()
            .expect("curl runs");
        assert!(status.success(), "curl {url} from {from}");
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        for ns in [&self.server, &self.caller] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// An HTTP server on port 8080 of network namespace argv[1], over IPv6 and IPv4 (as
/// IPv4-mapped addresses): 500 for /fail, else 200.
const SERVE_IN_NETNS: &str = r#"
import ctypes, os, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
libc = ctypes.CDLL(None, use_errno=True)
if libc.setns(os.open("/run/netns/" + sys.argv[1], os.O_RDONLY), 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), "setns")
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
class DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6
server = DualStack(("::", 8080), H)
print("ready", flush=True)
server.serve_forever()
"#;

/// An HTTP client in network namespace argv[1] that keeps one connection to argv[2]:8080
/// from address argv[3]: one request before it is ready, then argv[4] after a go.
const CALL_IN_NETNS: &str = r#"
import ctypes, http.client, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.setns(os.open("/run/netns/" + sys.argv[1], os.O_RDONLY), 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), "setns")
c = http.client.HTTPConnection(sys.argv[2], 8080, source_address=(sys.argv[3], 0))
def get():
    c.request("GET", "/ok")
    c.getresponse().read()
get()
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[4])):
    get()
print("done", flush=True)
sys.stdin.readline()
"#;

/// A client of the caller's node on a connection opened before the agent starts, from
/// address `from`; it makes `requests` more when `run`.
fn connected_before(nodes: &TwoNodes, from: &str, requests: u32) -> Helper {
    let args = [nodes.caller.clone(), SERVER_NODE.to_string(), from.to_string(), requests.to_string()];
    Helper::spawn(CALL_IN_NETNS, &args)
}

#[test]
fn callers_from_elsewhere_are_graph_clients_by_address() {
    let _kernel = kernel_lock();
    if !have_root("callers_from_elsewhere_are_graph_clients_by_address") {
        return;
    }
    let nodes = TwoNodes::new();
    struct Stop(Helper);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.child.kill();
            let _ = self.0.child.wait();
        }
    }
    let server = Stop(Helper::spawn(SERVE_IN_NETNS, std::slice::from_ref(&nodes.server)));
    let pid = server.0.pid().to_string();
    let served = [("process_pid", pid.as_str())];
    const SERVED: &str = "http_server_request_duration_seconds_count";
    let [first, second, third] = CALLER_ADDRESSES;

    // Clients untraced: whoever calls over the veth is a caller from elsewhere. Three
    // addresses fit; the fourth is past the cap. The server's socket is IPv6: IPv4
    // callers come as IPv4-mapped addresses, and are named as IPv4 ones.
    let untraced = format!("{}    clients: false\n    max_remote_callers: 3\n", config(true));
    let agent = Agent::start(&untraced);
    let calls = [
        (first, "/ok", 3),
        (first, "/fail", 2),
        (second, "/ok", 4),
        (CALLER_V6, "/ok", 1),
        (third, "/ok", 2),
    ];
    for (from, path, times) in calls {
        for _ in 0..times {
            nodes.curl(from, path);
        }
    }
    let m = eventually(&agent, |m| m.sum(SERVED, &served) == 12.0);
    let name = service_of(&m, SERVED, &served);
    let edge = |m: &Metrics, family: &str, client: &str| {
        m.sum(family, &[("client", client), ("server", name.as_str())])
    };
    assert_eq!(edge(&m, "service_graph_requests_total", first), 5.0);
    assert_eq!(edge(&m, "service_graph_request_failed_total", first), 2.0);
    assert_eq!(edge(&m, "service_graph_request_duration_seconds_count", first), 5.0);
    assert_eq!(edge(&m, "service_graph_requests_total", second), 4.0);
    assert_eq!(edge(&m, "service_graph_request_failed_total", second), 0.0);
    assert_eq!(edge(&m, "service_graph_requests_total", CALLER_V6), 1.0);
    assert_eq!(edge(&m, "service_graph_requests_total", third), 0.0);
    assert_eq!(edge(&m, "service_graph_requests_total", "__overflow__"), 2.0);
    // One refusal per connection of the third address.
    let refused = [("probe", "http"), ("map", "remote_callers")];
    assert_eq!(m.sum("periscope_series_folded_total", &refused), 2.0);
    drop(agent);

    // The same with every exchange framed in user space.
    let agent = Agent::start(&format!("{}    clients: false\n", config(false)));
    for _ in 0..2 {
        nodes.curl(second, "/fail");
    }
    let m = eventually(&agent, |m| m.sum(SERVED, &served) == 2.0);
    assert_eq!(edge(&m, "service_graph_requests_total", second), 2.0);
    assert_eq!(edge(&m, "service_graph_request_failed_total", second), 2.0);
    drop(agent);

    // Clients traced: a caller this node traces is the edge of its own client series,
    // never the server's as well; while the kernel has room for its address (two here).
    let agent = Agent::start(&format!("{}    max_local_client_addresses: 2\n", config(true)));
    for (from, times) in [(first, 3), (second, 1), (third, 2)] {
        for _ in 0..times {
            nodes.curl(from, "/ok");
        }
    }
    let curl = [("process_executable_name", "curl")];
    const CALLED: &str = "http_client_request_duration_seconds_count";
    let m = eventually(&agent, |m| m.sum(SERVED, &served) == 6.0 && m.sum(CALLED, &curl) == 6.0);
    // The server called at its namespace's address is named as a local one.
    let curl_name = service_of(&m, CALLED, &curl);
    assert_eq!(edge(&m, "service_graph_requests_total", &curl_name), 6.0);
    let server_address = format!("{SERVER_NODE}:8080");
    assert_eq!(m.sum("service_graph_requests_total", &[("server", server_address.as_str())]), 0.0);
    // The third address found no room: its calls count twice, and its refusals once per
    // connection.
    assert_eq!(m.sum("service_graph_requests_total", &[("server", name.as_str())]), 8.0);
    assert_eq!(edge(&m, "service_graph_requests_total", third), 2.0);
    let refused = [("probe", "http"), ("map", "local_clients")];
    assert_eq!(m.sum("periscope_series_folded_total", &refused), 2.0);
    let kept = [("probe", "http"), ("map", "local_clients")];
    assert_eq!(m.sum("periscope_bpf_map_entries", &kept), 2.0);
    drop(agent);

    // Connections older than the agent: the server adopts them at their first request
    // after it started. A client of this node connected then was noted as the agent
    // started, and stays its own series' edge.
    let mut client = connected_before(&nodes, second, 4);
    let agent = Agent::start(&config(true));
    client.run();
    let client_pid = client.pid().to_string();
    let calling = [("process_pid", client_pid.as_str())];
    let m = eventually(&agent, |m| m.sum(SERVED, &served) == 4.0 && m.sum(CALLED, &calling) == 4.0);
    let client_name = service_of(&m, CALLED, &calling);
    assert_eq!(edge(&m, "service_graph_requests_total", &client_name), 4.0);
    assert_eq!(m.sum("service_graph_requests_total", &[("server", name.as_str())]), 4.0);
    client.finish();
    drop(agent);

    // With clients untraced, such a connection's caller is one from elsewhere.
    let mut client = connected_before(&nodes, first, 3);
    let agent = Agent::start(&format!("{}    clients: false\n", config(true)));
    client.run();
    let m = eventually(&agent, |m| m.sum(SERVED, &served) == 3.0);
    assert_eq!(edge(&m, "service_graph_requests_total", first), 3.0);
    client.finish();
}
