//! The tcp probe, end to end: real connections on loopback, exact counts.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{eventually, free_port, have_root, kernel_lock, Agent, Metrics};

const TCP_CONFIG: &str = "probes:\n  syscalls:\n    enabled: false\n  process:\n    enabled: false\n  tcp:\n    enabled: true\n";

fn ours<'a>(
    pid: &'a str,
    direction: &'a str,
    port_label: &'a str,
    port: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("process_pid", pid),
        ("direction", direction),
        ("peer_address", "127.0.0.1"),
        (port_label, port),
    ]
}

fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.sum(name, labels)
}

#[test]
fn connections_refusals_and_bytes_are_counted_exactly() {
    if !have_root("connections_refusals_and_bytes_are_counted_exactly") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(TCP_CONFIG);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port().to_string();
    let closed_port = free_port();
    let pid = std::process::id().to_string();

    const N: usize = 25;
    const M: usize = 7;
    const SENT: usize = 300_000;
    const ANSWERED: usize = 70_000;
    // N connections; the first carries SENT bytes out and ANSWERED bytes back.
    let server = std::thread::spawn(move || {
        for i in 0..N {
            let (mut conn, _) = listener.accept().expect("accept");
            if i == 0 {
                let mut got = vec![0u8; SENT];
                conn.read_exact(&mut got).expect("read");
                conn.write_all(&vec![7u8; ANSWERED]).expect("answer");
            }
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
        }
    });
    for i in 0..N {
        let mut conn =
            TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).expect("connect");
        if i == 0 {
            conn.write_all(&vec![1u8; SENT]).expect("send");
            let mut answer = vec![0u8; ANSWERED];
            conn.read_exact(&mut answer).expect("answer");
        }
        drop(conn);
    }
    server.join().expect("server");
    for _ in 0..M {
        let refused = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], closed_port)),
            Duration::from_secs(2),
        );
        assert!(refused.is_err());
    }

    let closed = closed_port.to_string();
    let out = ours(&pid, "outbound", "peer_port", &port);
    let inb = ours(&pid, "inbound", "server_port", &port);
    let m = eventually(&agent, |m| {
        value(m, "tcp_connections_opened_total", &out) == N as f64
            && value(m, "tcp_received_bytes_total", &inb) == SENT as f64
            && value(
                m,
                "tcp_connect_failures_total",
                &[("peer_port", closed.as_str()), ("reason", "refused")],
            ) == M as f64
    });
    assert_eq!(value(&m, "tcp_connections_opened_total", &out), N as f64);
    assert_eq!(value(&m, "tcp_connections_opened_total", &inb), N as f64);
    assert_eq!(
        value(
            &m,
            "tcp_connect_failures_total",
            &[
                ("process_pid", pid.as_str()),
                ("peer_port", closed.as_str()),
                ("reason", "refused")
            ]
        ),
        M as f64
    );
    assert_eq!(
        value(
            &m,
            "tcp_connect_failures_total",
            &[("process_pid", pid.as_str()), ("peer_port", port.as_str())]
        ),
        0.0
    );
    // Bytes in each direction, seen from both ends.
    assert_eq!(value(&m, "tcp_sent_bytes_total", &out), SENT as f64);
    assert_eq!(value(&m, "tcp_received_bytes_total", &out), ANSWERED as f64);
    assert_eq!(value(&m, "tcp_sent_bytes_total", &inb), ANSWERED as f64);
    assert_eq!(value(&m, "tcp_received_bytes_total", &inb), SENT as f64);
    // All closed; every connect timed; every close sampled an RTT.
    assert_eq!(value(&m, "tcp_active_connections", &out), 0.0);
    assert_eq!(value(&m, "tcp_active_connections", &inb), 0.0);
    assert_eq!(
        value(&m, "tcp_connect_duration_seconds_count", &out),
        N as f64
    );
    assert_eq!(value(&m, "tcp_rtt_seconds_count", &out), N as f64);
    assert_eq!(value(&m, "tcp_rtt_seconds_count", &inb), N as f64);
    assert_eq!(value(&m, "tcp_retransmits_total", &out), 0.0);
}

/// Connects `counts[i]` times to `127.0.0.1:ports[i]`, says "ready", holds the
/// connections until its stdin closes.
const PY_CLIENT: &str = r#"
import socket, sys
ports = [int(p) for p in sys.argv[1].split(",")]
counts = [int(c) for c in sys.argv[2].split(",")]
held = [socket.create_connection(("127.0.0.1", p)) for p, n in zip(ports, counts) for _ in range(n)]
print("ready", flush=True)
sys.stdin.read()
"#;

#[test]
fn open_connections_are_active_and_peers_beyond_the_cap_fold_with_exact_totals() {
    if !have_root("open_connections_are_active_and_peers_beyond_the_cap_fold_with_exact_totals") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(&format!("{TCP_CONFIG}    max_peers_per_process: 3\n"));
    // Eight listeners: eight peers (by port) for the client's outbound connections.
    let listeners: Vec<TcpListener> = (0..8)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("listen"))
        .collect();
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port().to_string())
        .collect();
    let counts: Vec<String> = (1..=8).map(|n: usize| n.to_string()).collect();
    let total: usize = (1..=8).sum();
    let mut client = std::process::Command::new("python3")
        .args(["-c", PY_CLIENT, &ports.join(","), &counts.join(",")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("ready");
    let pid = client.id().to_string();
    let outbound = [("process_pid", pid.as_str()), ("direction", "outbound")];
    let m = eventually(&agent, |m| {
        value(m, "tcp_active_connections", &outbound) == total as f64
    });
    assert_eq!(value(&m, "tcp_active_connections", &outbound), total as f64);
    assert_eq!(
        value(&m, "tcp_connections_opened_total", &outbound),
        total as f64,
        "totals stay exact"
    );
    let series = m.find("tcp_connections_opened_total", &outbound).count();
    assert_eq!(series, 4, "3 peers and the overflow peer");
    let folded = value(
        &m,
        "tcp_connections_opened_total",
        &[
            ("process_pid", pid.as_str()),
            ("direction", "outbound"),
            ("peer_address", "__overflow__"),
        ],
    );
    // Peers are kept in port order: the three lowest ports stay, the rest fold.
    let mut by_port: Vec<(u16, usize)> = ports
        .iter()
        .map(|p| p.parse().expect("port"))
        .zip(1..=8)
        .collect();
    by_port.sort();
    let kept: usize = by_port[..3].iter().map(|(_, n)| n).sum();
    assert_eq!(folded, (total - kept) as f64);
    drop(client.stdin.take());
    let _ = client.wait();
    let m = eventually(&agent, |m| {
        value(m, "tcp_active_connections", &outbound) == 0.0
    });
    assert_eq!(value(&m, "tcp_active_connections", &outbound), 0.0);
    drop(listeners);
}
