//! The tcp probe, end to end: real connections on loopback, exact counts.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{eventually, free_port, have_root, kernel_lock, Agent, Metrics};

/// The periodic sample of open connections is off: these tests count RTT samples, one
/// per connection at its close. The sampler's own test turns it on.
const TCP_CONFIG: &str = "probes:\n  syscalls:\n    enabled: false\n  process:\n    enabled: false\n  tcp:\n    enabled: true\n    sample_interval_secs: 0\n";

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

/// Starts `python3 -c script args`, inside network namespace `netns` when given, with
/// stdin and stdout piped; returns it and the first line it prints (trimmed), which the
/// scripts here print once they are ready.
fn spawn_python(netns: Option<&str>, script: &str, args: &[&str]) -> (std::process::Child, String) {
    let mut command = match netns {
        Some(ns) => {
            let mut command = std::process::Command::new("ip");
            command.args(["netns", "exec", ns, "python3"]);
            command
        }
        None => std::process::Command::new("python3"),
    };
    let mut child = command
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the script's first line");
    (child, line.trim().to_string())
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
    // A client socket reaches CLOSE only when the server's FIN has been processed,
    // which a busy machine may defer to ksoftirqd after the server thread has ended.
    let m = eventually(&agent, |m| {
        value(m, "tcp_connections_opened_total", &out) == N as f64
            && value(m, "tcp_received_bytes_total", &inb) == SENT as f64
            && value(m, "tcp_rtt_seconds_count", &out) == N as f64
            && value(m, "tcp_rtt_seconds_count", &inb) == N as f64
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

/// Eight listeners of this test, and a client process holding i connections to the
/// i-th (1 to 8): eight peers, by port. Returns once every connection is open.
fn eight_peers() -> (Vec<TcpListener>, Vec<String>, std::process::Child) {
    let listeners: Vec<TcpListener> = (0..8)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("listen"))
        .collect();
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port().to_string())
        .collect();
    let counts: Vec<String> = (1..=8).map(|n: usize| n.to_string()).collect();
    let (client, _) = spawn_python(None, PY_CLIENT, &[&ports.join(","), &counts.join(",")]);
    (listeners, ports, client)
}

#[test]
fn open_connections_are_active_and_peers_beyond_the_cap_fold_with_exact_totals() {
    if !have_root("open_connections_are_active_and_peers_beyond_the_cap_fold_with_exact_totals") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(&format!("{TCP_CONFIG}    max_peers_per_process: 3\n"));
    let (listeners, ports, mut client) = eight_peers();
    let total: usize = (1..=8).sum();
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

/// A network namespace of the test's own, with only its loopback up; removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str, nft_rules: &str) -> Netns {
        let name = format!("psc-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let run = |args: &[&str]| {
            let status = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .expect("run");
            assert!(status.success(), "{args:?}");
        };
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        let mut nft = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(nft_rules.as_bytes())
            .expect("rules");
        assert!(nft.wait().expect("nft").success(), "nft rules load");
        ns
    }

    /// Runs a Python script in the namespace; returns (pid, its output lines).
    fn python(&self, script: &str, args: &[&str]) -> (u32, Vec<String>) {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0, "python3", "-c", script])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let out = child.wait_with_output().expect("python3 runs");
        assert!(out.status.success(), "the script failed");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let pid = lines
            .iter()
            .find_map(|l| l.strip_prefix("pid "))
            .and_then(|p| p.parse().ok())
            .expect("the script prints its pid");
        (pid, lines)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Two network namespaces of the test's own joined by a veth pair, with loopback
/// addresses routed over it: the client side has 127.1.0.1, the server side 127.1.0.2.
struct VethPair {
    client: Netns,
    server: Netns,
}

const CLIENT_ADDRESS: &str = "127.1.0.1";
const SERVER_ADDRESS: &str = "127.1.0.2";

impl VethPair {
    fn new(tag: &str, client_rules: &str, server_rules: &str) -> VethPair {
        let pair = VethPair {
            client: Netns::new(&format!("{tag}c"), client_rules),
            server: Netns::new(&format!("{tag}s"), server_rules),
        };
        let run = |args: &[&str]| {
            let status = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .expect("run");
            assert!(status.success(), "{args:?}");
        };
        let (a, b) = (pair.client.0.as_str(), pair.server.0.as_str());
        run(&[
            "ip", "link", "add", "psc-c", "netns", a, "type", "veth", "peer", "name", "psc-s",
            "netns", b,
        ]);
        for (ns, dev, address) in [(a, "psc-c", CLIENT_ADDRESS), (b, "psc-s", SERVER_ADDRESS)] {
            // 127/8 on a real link is dropped as martian unless route_localnet allows it.
            for scope in ["all", dev] {
                let key = format!("net.ipv4.conf.{scope}.route_localnet=1");
                run(&["ip", "netns", "exec", ns, "sysctl", "-qw", &key]);
            }
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{address}/30"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// Starts PY_SERVE in the server namespace: (its pid, the process).
    fn serve(&self, port: &str, size: usize) -> (u32, std::process::Child) {
        let size = size.to_string();
        let (child, line) = spawn_python(
            Some(&self.server.0),
            PY_SERVE,
            &[SERVER_ADDRESS, port, &size],
        );
        let pid = line
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .expect("the server prints its pid once listening");
        (pid, child)
    }
}

/// Listens on argv[1]:argv[2], prints "listening PID", sends argv[3] bytes to one client
/// and closes.
const PY_SERVE: &str = r#"
import os, socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.bind((host, port)); srv.listen(1)
print("listening", os.getpid(), flush=True)
conn, _ = srv.accept()
conn.sendall(b"x" * size)
conn.close()
"#;

/// Connects to argv[1]:argv[2] and reads until the server closes; prints its pid, how
/// long the connect took and how many bytes came.
const PY_FETCH: &str = r#"
import os, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
print("pid", os.getpid(), flush=True)
start = time.monotonic()
cli = socket.create_connection((host, port), timeout=30)
print("connect", time.monotonic() - start, flush=True)
got = 0
while True:
    chunk = cli.recv(1 << 20)
    if not chunk:
        break
    got += len(chunk)
cli.close()
print("received", got, flush=True)
"#;

#[test]
fn retransmits_rise_under_loss_while_a_transfer_completes_exactly() {
    if !have_root("retransmits_rise_under_loss_while_a_transfer_completes_exactly") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(TCP_CONFIG);
    const PORT: &str = "7001";
    const SIZE: usize = 4 << 20;
    // One packet in five the server sends is lost on the way into the client's
    // namespace (dropped at input, so the server sent it and must retransmit it; a drop
    // at output would only make it try again).
    let pair = VethPair::new(
        "loss",
        &format!("table inet psc {{\n chain in {{\n  type filter hook input priority 0; policy accept;\n  tcp sport {PORT} numgen random mod 5 == 0 drop\n }}\n}}\n"),
        "",
    );
    let (server_pid, mut server_process) = pair.serve(PORT, SIZE);
    let (client_pid, lines) = pair.client.python(PY_FETCH, &[SERVER_ADDRESS, PORT]);
    assert!(lines.contains(&format!("received {SIZE}")), "{lines:?}");
    let _ = server_process.wait();
    let (server_pid, client_pid) = (server_pid.to_string(), client_pid.to_string());
    let server = [
        ("process_pid", server_pid.as_str()),
        ("direction", "inbound"),
        ("peer_address", CLIENT_ADDRESS),
        ("server_port", PORT),
    ];
    let client = [
        ("process_pid", client_pid.as_str()),
        ("direction", "outbound"),
        ("peer_address", SERVER_ADDRESS),
        ("peer_port", PORT),
    ];
    // Each side counts at its close, which loss may delay by a retransmitted FIN.
    let m = eventually(&agent, |m| {
        value(m, "tcp_sent_bytes_total", &server) == SIZE as f64
            && value(m, "tcp_received_bytes_total", &client) == SIZE as f64
    });
    let retransmits = value(&m, "tcp_retransmits_total", &server);
    assert!(retransmits > 0.0, "loss made no retransmit");
    // Retransmitted data is counted once: bytes stay exact under loss.
    assert_eq!(value(&m, "tcp_sent_bytes_total", &server), SIZE as f64);
    assert_eq!(value(&m, "tcp_received_bytes_total", &client), SIZE as f64);
    assert_eq!(value(&m, "tcp_connections_opened_total", &client), 1.0);
    assert_eq!(value(&m, "tcp_connections_opened_total", &server), 1.0);
}

/// A connect whose first SYN is lost takes the kernel's one-second SYN retransmission.
/// The kernel's time (SYN_SENT to ESTABLISHED) is at most what the client measured
/// around its connect(), and at most a timer tick (10 ms at HZ=100) short of one second:
/// the retransmission timer fires on a tick. So it is in (0.99 s, client], which the
/// classic bounds here keep away from: none between 0.5 and 2 s, and both of those are
/// native boundaries, where classic buckets are exact.
#[test]
fn connect_duration_lands_in_the_bucket_of_the_client_measured_time() {
    if !have_root("connect_duration_lands_in_the_bucket_of_the_client_measured_time") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(&format!(
        "{TCP_CONFIG}    connect_duration_buckets_seconds: [0.25, 0.5, 2, 4]\n"
    ));
    let prometheus = common::Prometheus::start_native(agent.port);
    const PORT: &str = "7002";
    // The client's first SYN is dropped on its way out: the connect across the veth
    // pair waits for the kernel's SYN retransmission (one second).
    let pair = VethPair::new(
        "delay",
        &format!("table inet psc {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  tcp dport {PORT} tcp flags syn numgen inc mod 2 == 0 drop\n }}\n}}\n"),
        "",
    );
    let (_, mut server_process) = pair.serve(PORT, 1000);
    let (pid, lines) = pair.client.python(PY_FETCH, &[SERVER_ADDRESS, PORT]);
    let _ = server_process.wait();
    let measured: f64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("connect "))
        .and_then(|s| s.parse().ok())
        .expect("connect time");
    assert!(
        measured > 0.99 && measured < 2.0,
        "the first SYN was not dropped, or the connect took long: {measured} s"
    );
    let pid = pid.to_string();
    let client = [
        ("process_pid", pid.as_str()),
        ("direction", "outbound"),
        ("peer_address", SERVER_ADDRESS),
        ("peer_port", PORT),
    ];
    let m = eventually(&agent, |m| {
        value(m, "tcp_connect_duration_seconds_count", &client) == 1.0
    });
    let bucket = |le: &str| {
        let mut labels = client.to_vec();
        labels.push(("le", le));
        value(&m, "tcp_connect_duration_seconds_bucket", &labels)
    };
    assert_eq!(bucket("0.5"), 0.0, "client measured {measured} s");
    assert_eq!(bucket("2.0"), 1.0, "client measured {measured} s");
    let sum = value(&m, "tcp_connect_duration_seconds_sum", &client);
    assert!(
        sum > 0.99 && sum <= measured,
        "kernel {sum} s, client {measured} s"
    );

    // The native histogram has the connect in the one bucket that holds the kernel's
    // time: the (lower, upper] of schema 3 next to what the client measured.
    let selector =
        format!("tcp_connect_duration_seconds{{process_pid=\"{pid}\",peer_port=\"{PORT}\"}}");
    assert_eq!(
        prometheus.wait_for(&format!("histogram_count({selector})"), &[1.0]),
        vec![1.0]
    );
    let (buckets, native_sum) = prometheus.native_histogram(&selector);
    assert_eq!(native_sum, sum);
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let (lower, upper, count) = buckets[0];
    assert_eq!(count, 1);
    assert!(
        lower < sum && sum <= upper,
        "{sum} s outside ({lower}, {upper}]"
    );
    assert!(
        (upper / lower - 2f64.powf(0.125)).abs() < 1e-9,
        "a bucket of schema 3: ({lower}, {upper}]"
    );
}

/// Connects to itself on loopback, exchanges data, waits for the last ACKs, then prints
/// "PID PORT CLIENT_RTT SERVER_RTT", each RTT the kernel's smoothed one in us (TCP_INFO's
/// tcpi_rtt, at offset 68), and stays idle until stdin closes.
const PY_IDLE_PAIR: &str = r#"
import os, socket, struct, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname())
conn, _ = srv.accept()
def exchange(a, b, n):
    a.sendall(b"x" * n)
    got = 0
    while got < n:
        got += len(b.recv(n - got))
for _ in range(20):
    exchange(cli, conn, 1000)
    exchange(conn, cli, 1000)
time.sleep(0.5)
def rtt(s):
    return struct.unpack_from("I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 68)[0]
print(os.getpid(), srv.getsockname()[1], rtt(cli), rtt(conn), flush=True)
sys.stdin.read()
"#;

/// An idle connection's smoothed RTT stays as it is, so every sample the sampler takes
/// of it is the kernel's srtt, which TCP_INFO also tells the process. With Prometheus's
/// native histograms on, the samples of each side taken while it is idle (what its
/// histogram grows by after a scrape that followed the script's print; samples taken
/// during the exchanges hold other values) are all in the one native bucket that holds
/// its srtt, and add their count times it to the sum.
#[test]
fn rtt_samples_of_an_idle_connection_are_in_the_native_bucket_of_its_srtt() {
    if !have_root("rtt_samples_of_an_idle_connection_are_in_the_native_bucket_of_its_srtt") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(&SAMPLED_CONFIG);
    let prometheus = common::Prometheus::start_native(agent.port);
    let (mut pair, line) = spawn_python(None, PY_IDLE_PAIR, &[]);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{line}");
    let (pid, port) = (fields[0], fields[1]);
    // Samples taken before the print are in the kernel's maps by now: a scrape from here
    // on holds them.
    std::thread::sleep(Duration::from_millis(2500));
    for (side, srtt_us) in [
        (
            format!("direction=\"outbound\",peer_port=\"{port}\""),
            fields[2],
        ),
        (
            format!("direction=\"inbound\",server_port=\"{port}\""),
            fields[3],
        ),
    ] {
        let srtt = srtt_us.parse::<f64>().expect("an RTT in us") * 1e-6;
        assert!(srtt > 0.0, "no RTT measured: {line}");
        let selector = format!("tcp_rtt_seconds{{process_pid=\"{pid}\",{side}}}");
        for _ in 0..60 {
            if prometheus.query(&selector).len() == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let (before, sum_before) = prometheus.native_histogram(&selector);
        let count_of = |buckets: &[(f64, f64, u64)]| buckets.iter().map(|b| b.2).sum::<u64>();
        let mut after = (before.clone(), sum_before);
        for _ in 0..60 {
            if count_of(&after.0) >= count_of(&before) + 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            after = prometheus.native_histogram(&selector);
        }
        let (after, sum_after) = after;
        // What the idle samples added, bucket by bucket.
        let grown: Vec<(f64, f64, u64)> = after
            .iter()
            .map(|&(lower, upper, count)| {
                let had = before
                    .iter()
                    .find(|b| b.0 == lower && b.1 == upper)
                    .map_or(0, |b| b.2);
                (lower, upper, count - had)
            })
            .filter(|b| b.2 > 0)
            .collect();
        assert_eq!(
            grown.len(),
            1,
            "{selector}: {before:?} -> {after:?}, srtt {srtt} s"
        );
        let (lower, upper, count) = grown[0];
        assert!(count >= 3, "{selector}: {count} idle samples");
        assert!(
            lower < srtt && srtt <= upper,
            "{srtt} s outside ({lower}, {upper}]"
        );
        let expected = count as f64 * srtt;
        let added = sum_after - sum_before;
        assert!(
            (added - expected).abs() <= expected * 1e-6,
            "{added} s added by {count} samples of {srtt} s"
        );
    }
    drop(pair.stdin.take());
    let _ = pair.wait();
}

/// A flood of connections from every CPU at once into one series each way: the
/// histograms are shared by the CPUs, and each of their samples is counted once all the
/// same. A connect's count and its duration are one event, recorded in one run of the
/// program into two maps, and never apart; no close gives more than one RTT. (Under such
/// a flood the kernel skips some runs of the program, counted in
/// periscope_bpf_program_recursion_misses_total, and a skipped close loses its RTT: so
/// the RTT counts are bounded, not equal, here.)
#[test]
fn a_connection_flood_from_every_cpu_counts_each_connect_and_rtt_once() {
    if !have_root("a_connection_flood_from_every_cpu_counts_each_connect_and_rtt_once") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(TCP_CONFIG);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    const THREADS: usize = 4;
    const EACH: usize = 500;
    const TOTAL: usize = THREADS * EACH;
    let server = std::thread::spawn(move || {
        for _ in 0..TOTAL {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
        }
    });
    let clients: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    server.join().expect("server");
    let (pid, port) = (std::process::id().to_string(), port.to_string());
    let out = ours(&pid, "outbound", "peer_port", &port);
    let inbound = ours(&pid, "inbound", "server_port", &port);
    let total = TOTAL as f64;
    let opened =
        |m: &Metrics, labels: &[(&str, &str)]| value(m, "tcp_connections_opened_total", labels);
    let rtts = |m: &Metrics, labels: &[(&str, &str)]| value(m, "tcp_rtt_seconds_count", labels);
    let m = eventually(&agent, |m| {
        opened(m, &out) == total && rtts(m, &out) > 0.0 && rtts(m, &inbound) > 0.0
    });
    assert!(opened(&m, &out) <= total);
    assert_eq!(
        value(&m, "tcp_connect_duration_seconds_count", &out),
        opened(&m, &out)
    );
    for side in [&out, &inbound] {
        assert!(
            rtts(&m, side) <= opened(&m, side),
            "{} RTTs for {} connections",
            rtts(&m, side),
            opened(&m, side)
        );
    }
    // The classic buckets, derived from the native ones, end at the count.
    let mut top = out.to_vec();
    top.push(("le", "+Inf"));
    assert_eq!(
        value(&m, "tcp_connect_duration_seconds_bucket", &top),
        value(&m, "tcp_connect_duration_seconds_count", &out)
    );
    assert_eq!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "tcp"), ("map", "histograms")]
        ),
        0.0
    );
}

/// Accepts and closes connections on the port it prints, until killed.
const PY_LISTENER: &str = r#"
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    conn.close()
"#;

#[test]
fn connections_to_a_listener_older_than_the_agent_count_for_its_process() {
    if !have_root("connections_to_a_listener_older_than_the_agent_count_for_its_process") {
        return;
    }
    let _lock = kernel_lock();
    let (mut listener, port) = spawn_python(None, PY_LISTENER, &[]);
    // One more in a network namespace of the test's: seeding reads each namespace's own
    // table of sockets.
    let ns = Netns::new("seed", "");
    let (mut ns_listener, ns_port) = spawn_python(Some(&ns.0), PY_LISTENER, &[]);
    // The agent starts after both called listen().
    let agent = Agent::start(TCP_CONFIG);
    const N: usize = 9;
    for _ in 0..N {
        let mut conn =
            TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).expect("connect");
        let _ = conn.read(&mut [0u8; 1]);
    }
    const IN_NETNS: usize = 3;
    ns.python(PY_CONNECT, &[&ns_port, &IN_NETNS.to_string()]);
    let inbound = |pid: &str, port: &str| {
        [
            ("process_pid", pid.to_string()),
            ("direction", "inbound".to_string()),
            ("server_port", port.to_string()),
        ]
    };
    let count = |m: &Metrics, labels: &[(&str, String); 3]| {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        value(m, "tcp_connections_opened_total", &labels)
    };
    let here = inbound(&listener.id().to_string(), &port);
    let there = inbound(&ns_listener.id().to_string(), &ns_port);
    let m = eventually(&agent, |m| {
        count(m, &here) == N as f64 && count(m, &there) == IN_NETNS as f64
    });
    assert_eq!(count(&m, &here), N as f64);
    assert_eq!(count(&m, &there), IN_NETNS as f64);
    for child in [&mut listener, &mut ns_listener] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Connects argv[2] times to 127.0.0.1:argv[1] and closes; prints its pid.
const PY_CONNECT: &str = r#"
import os, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    socket.create_connection(("127.0.0.1", port)).close()
print("pid", os.getpid(), flush=True)
"#;

#[test]
fn a_full_series_map_folds_into_the_overflow_series_with_exact_totals() {
    if !have_root("a_full_series_map_folds_into_the_overflow_series_with_exact_totals") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(&format!("{TCP_CONFIG}    max_series: 5\n"));
    // The scrapes take series of their own (this test's outbound, the agent's inbound);
    // what is left of the five is what the client's peers can get.
    let warm = eventually(&agent, |m| {
        value(m, "tcp_connections_opened_total", &[]) > 0.0
    });
    let used = warm.one(
        "periscope_bpf_map_entries",
        &[("probe", "tcp"), ("map", "series")],
    ) as usize;
    assert!(used < 5, "the scrapes left no free series");
    let free = 5 - used;
    let (listeners, ports, mut client) = eight_peers();
    let total: usize = (1..=8).sum();
    let pid = client.id().to_string();
    let mine = [("process_pid", pid.as_str()), ("direction", "outbound")];
    let folded_out = [
        ("process_executable_name", "__overflow__"),
        ("direction", "outbound"),
    ];
    // The listeners are this test's: each connection is also an inbound series of ours.
    let me = std::process::id().to_string();
    let theirs = [("process_pid", me.as_str()), ("direction", "inbound")];
    let folded_in = [
        ("process_executable_name", "__overflow__"),
        ("direction", "inbound"),
    ];
    let inbound_of_listeners = |m: &Metrics| -> (f64, usize) {
        ports.iter().fold((0.0, 0), |(sum, series), port| {
            let labels = [theirs[0], theirs[1], ("server_port", port.as_str())];
            let n = m.find("tcp_connections_opened_total", &labels).count();
            (
                sum + value(m, "tcp_connections_opened_total", &labels),
                series + n,
            )
        })
    };
    let connects = |m: &Metrics| {
        value(m, "tcp_connect_duration_seconds_count", &mine)
            + value(m, "tcp_connect_duration_seconds_count", &folded_out)
    };
    let m = eventually(&agent, |m| {
        value(m, "tcp_connections_opened_total", &mine)
            + value(m, "tcp_connections_opened_total", &folded_out)
            == total as f64
            && connects(m) == total as f64
            && inbound_of_listeners(m).0 + value(m, "tcp_connections_opened_total", &folded_in)
                == total as f64
    });
    let kept_out = value(&m, "tcp_connections_opened_total", &mine);
    let (kept_in, series_in) = inbound_of_listeners(&m);
    // Totals stay exact in both directions, kept series plus the overflow series.
    assert_eq!(
        kept_out + value(&m, "tcp_connections_opened_total", &folded_out),
        total as f64
    );
    assert_eq!(
        kept_in + value(&m, "tcp_connections_opened_total", &folded_in),
        total as f64
    );
    // The free series went to the first connections' two ends; the rest folded.
    let series_out = m.find("tcp_connections_opened_total", &mine).count();
    assert_eq!(series_out + series_in, free);
    assert!(kept_out < total as f64 && kept_in < total as f64);
    assert!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "tcp"), ("map", "series")]
        ) >= 2.0 * total as f64 - kept_out - kept_in
    );
    assert_eq!(
        m.one(
            "periscope_bpf_map_entries",
            &[("probe", "tcp"), ("map", "series")]
        ),
        5.0
    );
    // Histograms fold with their series: each connect's duration is in the histogram of
    // the series that counted it, kept or overflow, and the histograms' map (same cap)
    // never refused one.
    assert_eq!(connects(&m), total as f64);
    assert_eq!(
        value(&m, "tcp_connect_duration_seconds_count", &mine),
        kept_out
    );
    assert_eq!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "tcp"), ("map", "histograms")]
        ),
        0.0
    );
    assert!(
        m.one(
            "periscope_bpf_map_entries",
            &[("probe", "tcp"), ("map", "histograms")]
        ) <= 5.0
    );
    drop(client.stdin.take());
    let _ = client.wait();
    drop(listeners);
}

#[test]
fn a_full_connection_table_refuses_new_connections_and_counts_them() {
    if !have_root("a_full_connection_table_refuses_new_connections_and_counts_them") {
        return;
    }
    let _lock = kernel_lock();
    let capacity = 20;
    let agent = Agent::start(&format!("{TCP_CONFIG}    max_connections: {capacity}\n"));
    let table = [("probe", "tcp"), ("map", "tcp_socks")];
    eventually(&agent, |m| {
        m.one("periscope_bpf_map_capacity", &table) == capacity as f64
    });
    let (listeners, _ports, mut client) = eight_peers();
    let total: usize = (1..=8).sum();
    let pid = client.id().to_string();
    let me = std::process::id().to_string();
    let outbound = [("process_pid", pid.as_str()), ("direction", "outbound")];
    let inbound = [("process_pid", me.as_str()), ("direction", "inbound")];
    // Both ends of every connection want an entry: more than the table holds.
    let m = eventually(&agent, |m| {
        m.one("periscope_bpf_map_entries", &table) == capacity as f64
            && m.one("periscope_series_folded_total", &table) >= (2 * total - capacity) as f64
    });
    let followed = value(&m, "tcp_connections_opened_total", &outbound)
        + value(&m, "tcp_connections_opened_total", &inbound);
    assert!(followed <= capacity as f64 && followed < (2 * total) as f64);
    // What is followed is consistent: an end left out is never half counted.
    assert_eq!(
        value(&m, "tcp_active_connections", &outbound),
        value(&m, "tcp_connections_opened_total", &outbound)
    );
    assert!(
        m.one("periscope_series_folded_total", &table) + followed >= (2 * total) as f64,
        "every end not followed is counted as refused"
    );
    drop(client.stdin.take());
    let _ = client.wait();
    drop(listeners);
    // Closed connections give their entries back.
    let m = eventually(&agent, |m| {
        value(m, "tcp_active_connections", &outbound) == 0.0
            && m.one("periscope_bpf_map_entries", &table) < capacity as f64
    });
    assert_eq!(value(&m, "tcp_active_connections", &outbound), 0.0);
    assert!(
        m.one("periscope_bpf_map_entries", &table) < capacity as f64,
        "closed connections gave their entries back"
    );
}

#[test]
fn open_connections_show_their_bytes_before_they_close_and_count_them_once() {
    if !have_root("open_connections_show_their_bytes_before_they_close_and_count_them_once") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(&SAMPLED_CONFIG);
    assert_eq!(agent.metrics().degraded("tcp"), Vec::<String>::new());
    one_open_connection(&agent, true);
}

#[test]
fn without_the_map_iterator_the_walk_samples_open_connections() {
    if !have_root("without_the_map_iterator_the_walk_samples_open_connections") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start_refusing(&SAMPLED_CONFIG, &["psc_tcp_iter"]);
    assert_eq!(agent.metrics().degraded("tcp"), Vec::<String>::new());
    one_open_connection(&agent, true);
}

#[test]
fn without_the_walk_open_connections_are_sampled_by_the_iterator_or_counted_at_close() {
    if !have_root(
        "without_the_walk_open_connections_are_sampled_by_the_iterator_or_counted_at_close",
    ) {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start_refusing(&SAMPLED_CONFIG, &["psc_tcp_walk"]);
    // Kernels differ in whether they run the iterator: either way the degradation is
    // reported as it is, and counts are exact.
    let degraded = agent.metrics().degraded("tcp");
    let sampled = degraded.is_empty();
    if !sampled {
        assert_eq!(degraded, vec![SAMPLING.to_string()]);
    }
    one_open_connection(&agent, sampled);
}

#[test]
fn without_any_sampler_open_connections_count_exactly_at_close() {
    if !have_root("without_any_sampler_open_connections_count_exactly_at_close") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start_refusing(&SAMPLED_CONFIG, &["psc_tcp_iter", "psc_tcp_walk"]);
    assert_eq!(agent.metrics().degraded("tcp"), vec![SAMPLING.to_string()]);
    let help = agent.scrape();
    assert!(
        help.contains("# HELP tcp_sent_bytes_total Data bytes sent on TCP connections (retransmitted data once), added when they close"),
        "the metric says open connections count at close"
    );
    one_open_connection(&agent, false);
}

/// The sampler's feature, as periscope_probe_degraded names it.
const SAMPLING: &str = "sampling of open connections";

/// TCP_CONFIG with the sampler of open connections every second.
static SAMPLED_CONFIG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    TCP_CONFIG.replace("sample_interval_secs: 0", "sample_interval_secs: 1")
});

/// One connection on loopback carries known bytes each way and stays open a while, then
/// closes. With a sampler its bytes show while it is open; without one they show at its
/// close. Either way each byte counts once.
fn one_open_connection(agent: &Agent, sampled: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port().to_string();
    let pid = std::process::id().to_string();
    const SENT: usize = 250_000;
    const ANSWERED: usize = 90_000;
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut got = vec![0u8; SENT];
        conn.read_exact(&mut got).expect("read");
        conn.write_all(&vec![7u8; ANSWERED]).expect("answer");
        let _ = close_rx.recv();
    });
    let mut conn =
        TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).expect("connect");
    conn.write_all(&vec![1u8; SENT]).expect("send");
    let mut answer = vec![0u8; ANSWERED];
    conn.read_exact(&mut answer).expect("answer");

    let out = ours(&pid, "outbound", "peer_port", &port);
    let inb = ours(&pid, "inbound", "server_port", &port);
    let exact = |m: &Metrics| {
        value(m, "tcp_sent_bytes_total", &out) == SENT as f64
            && value(m, "tcp_received_bytes_total", &out) == ANSWERED as f64
            && value(m, "tcp_sent_bytes_total", &inb) == ANSWERED as f64
            && value(m, "tcp_received_bytes_total", &inb) == SENT as f64
    };
    let sampled_rtts = if sampled {
        // Still open: the sampler has added its bytes and an RTT sample.
        let m = eventually(agent, |m| {
            exact(m) && value(m, "tcp_rtt_seconds_count", &out) >= 1.0
        });
        assert!(
            exact(&m),
            "bytes of an open connection, each way, from both ends"
        );
        assert!(value(&m, "tcp_rtt_seconds_count", &inb) >= 1.0);
        value(&m, "tcp_rtt_seconds_count", &out)
    } else {
        // Two sample intervals: nothing shows before the close.
        let m = eventually(agent, |m| value(m, "tcp_active_connections", &out) == 1.0);
        std::thread::sleep(Duration::from_millis(2500));
        let m2 = agent.metrics();
        for m in [&m, &m2] {
            assert_eq!(value(m, "tcp_sent_bytes_total", &out), 0.0);
            assert_eq!(value(m, "tcp_received_bytes_total", &inb), 0.0);
            assert_eq!(value(m, "tcp_rtt_seconds_count", &out), 0.0);
        }
        0.0
    };
    let m = agent.metrics();
    assert_eq!(value(&m, "tcp_active_connections", &out), 1.0);
    assert_eq!(value(&m, "tcp_active_connections", &inb), 1.0);

    // Closed: nothing is counted twice, and the close adds one more RTT sample.
    drop(conn);
    close_tx.send(()).expect("close");
    server.join().expect("server");
    let m = eventually(agent, |m| {
        value(m, "tcp_active_connections", &out) == 0.0
            && value(m, "tcp_active_connections", &inb) == 0.0
    });
    assert!(exact(&m), "a connection's bytes are counted once");
    assert!(value(&m, "tcp_rtt_seconds_count", &out) >= sampled_rtts + 1.0);
    assert_eq!(value(&m, "tcp_connections_opened_total", &out), 1.0);
    assert_eq!(value(&m, "tcp_connections_opened_total", &inb), 1.0);
    // Samples after the close add nothing.
    std::thread::sleep(Duration::from_millis(2500));
    let later = agent.metrics();
    assert!(exact(&later));
    assert_eq!(
        value(&later, "tcp_rtt_seconds_count", &out),
        value(&m, "tcp_rtt_seconds_count", &out)
    );
}

/// Listens on 127.0.0.1:argv[1] in a way that makes a second process's listen() on the
/// same port fail: both bind it with SO_REUSEADDR before either listens, then the
/// parent listens, then the child tries to. Prints "ready CHILD_PID", holds the
/// listener until stdin closes.
const PY_CONTENDED_LISTEN: &str = r#"
import os, socket, sys
port = int(sys.argv[1])
def bound():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s
mine = bound()
to_child_r, to_child_w = os.pipe()
to_parent_r, to_parent_w = os.pipe()
child = os.fork()
if child == 0:
    outcome = b"E"
    try:
        theirs = bound()
        os.write(to_parent_w, b"B")
        os.read(to_child_r, 1)
        try:
            theirs.listen(8)
            outcome = b"L"
        except OSError:
            outcome = b"F"
    finally:
        os.write(to_parent_w, outcome)
        os._exit(0)
assert os.read(to_parent_r, 1) == b"B", "the child could not bind"
mine.listen(64)
os.write(to_child_w, b"x")
assert os.read(to_parent_r, 1) == b"F", "the second listen() should fail"
os.waitpid(child, 0)
print("ready", child, flush=True)
sys.stdin.read()
"#;

/// Listens on 127.0.0.1:argv[1], connects to itself argv[2] times, prints its pid.
const PY_SELF_CONNECT: &str = r#"
import os, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket(); srv.bind(("127.0.0.1", port)); srv.listen(64)
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
print("pid", os.getpid(), flush=True)
"#;

#[test]
fn listeners_are_told_apart_by_namespace_and_a_failed_listen_takes_nothing() {
    if !have_root("listeners_are_told_apart_by_namespace_and_a_failed_listen_takes_nothing") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(TCP_CONFIG);
    let port = free_port();
    let port_text = port.to_string();
    let (mut owner, ready) = spawn_python(None, PY_CONTENDED_LISTEN, &[&port_text]);
    let loser = ready
        .strip_prefix("ready ")
        .expect("ready CHILD")
        .to_string();
    // The same port in a namespace of the test's, listened on meanwhile.
    const IN_NETNS: usize = 4;
    let ns = Netns::new("listen", "");
    let (other, _) = ns.python(PY_SELF_CONNECT, &[&port_text, &IN_NETNS.to_string()]);
    const HERE: usize = 6;
    let held: Vec<TcpStream> = (0..HERE)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();

    let owner_pid = owner.id().to_string();
    let other_pid = other.to_string();
    let inbound_of = |m: &Metrics, pid: &str| {
        value(
            m,
            "tcp_connections_opened_total",
            &[
                ("process_pid", pid),
                ("direction", "inbound"),
                ("server_port", &port_text),
            ],
        )
    };
    let m = eventually(&agent, |m| {
        inbound_of(m, &owner_pid) == HERE as f64 && inbound_of(m, &other_pid) == IN_NETNS as f64
    });
    assert_eq!(inbound_of(&m, &owner_pid), HERE as f64);
    assert_eq!(inbound_of(&m, &other_pid), IN_NETNS as f64);
    assert_eq!(
        inbound_of(&m, &loser),
        0.0,
        "a failed listen() owns nothing"
    );
    // And nothing went to a listener it could not name.
    assert_eq!(
        value(
            &m,
            "tcp_connections_opened_total",
            &[("direction", "inbound"), ("server_port", &port_text)],
        ),
        (HERE + IN_NETNS) as f64
    );
    drop(held);
    drop(owner.stdin.take());
    let _ = owner.wait();
}

/// In a namespace where every SYN to argv[1] is dropped and those to argv[3] are answered
/// with ICMP host unreachable: argv[2] non-blocking connects closed after 100 ms, one
/// blocking connect left to time out, one to the unreachable port; prints its pid.
const PY_UNANSWERED: &str = r#"
import os, socket, sys, time
port, n, unreachable = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    time.sleep(0.1)
    s.close()
try:
    socket.create_connection(("127.0.0.1", port), timeout=30)
except OSError as e:
    print("timed out", e, flush=True)
try:
    socket.create_connection(("127.0.0.1", unreachable), timeout=30)
except OSError as e:
    print("unreachable", e, flush=True)
print("pid", os.getpid(), flush=True)
"#;

#[test]
fn connects_without_an_answer_fail_as_aborted_timeout_or_unreachable() {
    if !have_root("connects_without_an_answer_fail_as_aborted_timeout_or_unreachable") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(TCP_CONFIG);
    const PORT: u16 = 7411;
    const UNREACHABLE: u16 = 7412;
    let ns = Netns::new(
        "unanswered",
        &format!("table inet psc {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  tcp dport {PORT} tcp flags syn drop\n  tcp dport {UNREACHABLE} reject with icmpx type host-unreachable\n }}\n}}\n"),
    );
    // One SYN retransmission, so a connect gives up after 1 + 2 s; an ICMP error is a
    // soft error to TCP, reported when it does.
    let status = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_syn_retries=1",
        ])
        .status()
        .expect("sysctl");
    assert!(status.success());
    const ABORTED: usize = 3;
    let (pid, lines) = ns.python(
        PY_UNANSWERED,
        &[
            &PORT.to_string(),
            &ABORTED.to_string(),
            &UNREACHABLE.to_string(),
        ],
    );
    assert!(
        lines.iter().any(|l| l.starts_with("timed out")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("unreachable")),
        "{lines:?}"
    );
    let pid = pid.to_string();
    let port = PORT.to_string();
    let failures = |m: &Metrics, reason: &str| {
        value(
            m,
            "tcp_connect_failures_total",
            &[
                ("process_pid", &pid),
                ("peer_port", &port),
                ("reason", reason),
            ],
        )
    };
    let m = eventually(&agent, |m| {
        failures(m, "aborted") == ABORTED as f64 && failures(m, "timeout") == 1.0
    });
    assert_eq!(failures(&m, "aborted"), ABORTED as f64);
    assert_eq!(failures(&m, "timeout"), 1.0);
    assert_eq!(failures(&m, "other") + failures(&m, "refused"), 0.0);
    let unreachable = UNREACHABLE.to_string();
    let m = eventually(&agent, |m| {
        value(
            m,
            "tcp_connect_failures_total",
            &[
                ("process_pid", &pid),
                ("peer_port", &unreachable),
                ("reason", "unreachable"),
            ],
        ) == 1.0
    });
    assert_eq!(
        value(
            &m,
            "tcp_connect_failures_total",
            &[("process_pid", &pid), ("peer_port", &unreachable)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "tcp_connections_opened_total",
            &[("process_pid", &pid), ("peer_port", &port)]
        ),
        0.0
    );
}

#[test]
fn ipv6_connections_and_bytes_are_counted_exactly_with_their_peer_address() {
    if !have_root("ipv6_connections_and_bytes_are_counted_exactly_with_their_peer_address") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(TCP_CONFIG);
    let listener = match TcpListener::bind("[::1]:0") {
        Ok(listener) => listener,
        Err(err) => panic!("IPv6 loopback is needed for this test: {err}"),
    };
    let port = listener.local_addr().expect("addr").port();
    const N: usize = 5;
    const SENT: usize = 123_456;
    let server = std::thread::spawn(move || {
        let mut total = 0;
        for _ in 0..N {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            total += conn.read_to_end(&mut got).expect("read");
        }
        total
    });
    for _ in 0..N {
        let mut conn = TcpStream::connect(("::1", port)).expect("connect");
        conn.write_all(&vec![5u8; SENT]).expect("send");
    }
    assert_eq!(server.join().expect("server"), N * SENT);
    let pid = std::process::id().to_string();
    let port = port.to_string();
    let out = [
        ("process_pid", pid.as_str()),
        ("direction", "outbound"),
        ("peer_address", "::1"),
        ("peer_port", port.as_str()),
    ];
    let inb = [
        ("process_pid", pid.as_str()),
        ("direction", "inbound"),
        ("peer_address", "::1"),
        ("server_port", port.as_str()),
    ];
    let m = eventually(&agent, |m| {
        value(m, "tcp_sent_bytes_total", &out) == (N * SENT) as f64
            && value(m, "tcp_received_bytes_total", &inb) == (N * SENT) as f64
    });
    assert_eq!(value(&m, "tcp_connections_opened_total", &out), N as f64);
    assert_eq!(value(&m, "tcp_connections_opened_total", &inb), N as f64);
    assert_eq!(value(&m, "tcp_sent_bytes_total", &out), (N * SENT) as f64);
    assert_eq!(
        value(&m, "tcp_received_bytes_total", &inb),
        (N * SENT) as f64
    );
}

#[test]
fn an_exited_process_folds_into_its_executable_within_the_peer_cap_with_exact_totals() {
    if !have_root(
        "an_exited_process_folds_into_its_executable_within_the_peer_cap_with_exact_totals",
    ) {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(&format!(
        "processes:\n  exited_ttl_secs: 0\n{TCP_CONFIG}    max_peers_per_process: 3\n"
    ));
    let (listeners, _ports, mut client) = eight_peers();
    let total: usize = (1..=8).sum();
    let pid = client.id().to_string();
    let live = [("process_pid", pid.as_str()), ("direction", "outbound")];
    let m = eventually(&agent, |m| {
        value(m, "tcp_connections_opened_total", &live) == total as f64
    });
    assert_eq!(m.find("tcp_connections_opened_total", &live).count(), 4);
    drop(client.stdin.take());
    let _ = client.wait();
    drop(listeners);
    // Exited, its connections closed: its series leave, and the executable's aggregate
    // (no pid) holds the same totals under the same peer cap.
    let aggregate = |m: &Metrics| -> Vec<(String, f64)> {
        m.find(
            "tcp_connections_opened_total",
            &[
                ("process_executable_name", "python3"),
                ("direction", "outbound"),
            ],
        )
        .filter(|(_, labels, _)| !labels.contains_key("process_pid"))
        .map(|(_, labels, v)| (labels["peer_address"].clone(), *v))
        .collect()
    };
    let python = [
        ("process_executable_name", "python3"),
        ("direction", "outbound"),
    ];
    let m = eventually(&agent, |m| {
        m.find("tcp_connections_opened_total", &live).count() == 0
            && aggregate(m).iter().map(|(_, v)| v).sum::<f64>() == total as f64
            && value(m, "tcp_rtt_seconds_count", &python) == total as f64
    });
    // Its histograms fold with its series: every connect's duration, and the RTT each
    // connection gave at its close.
    assert_eq!(
        value(&m, "tcp_connect_duration_seconds_count", &python),
        total as f64
    );
    assert_eq!(value(&m, "tcp_rtt_seconds_count", &python), total as f64);
    assert_eq!(m.find("tcp_rtt_seconds_count", &live).count(), 0);
    assert_eq!(m.find("tcp_connections_opened_total", &live).count(), 0);
    let series = aggregate(&m);
    assert_eq!(series.iter().map(|(_, v)| v).sum::<f64>(), total as f64);
    assert_eq!(
        series.len(),
        4,
        "three peers and the overflow peer: {series:?}"
    );
    assert_eq!(
        series
            .iter()
            .filter(|(peer, _)| peer == "__overflow__")
            .count(),
        1
    );
    assert_eq!(
        value(
            &m,
            "tcp_active_connections",
            &[
                ("process_executable_name", "python3"),
                ("direction", "outbound")
            ]
        ),
        0.0
    );
}

/// Listens on 127.0.0.1:argv[1] with SO_REUSEPORT, prints "ready", holds the listener
/// until stdin closes.
const PY_REUSEPORT_LISTENER: &str = r#"
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(64)
print("ready", flush=True)
sys.stdin.read()
"#;

#[test]
fn the_newest_listener_on_a_shared_port_owns_it_until_it_closes() {
    if !have_root("the_newest_listener_on_a_shared_port_owns_it_until_it_closes") {
        return;
    }
    let _lock = kernel_lock();
    let agent = Agent::start(TCP_CONFIG);
    let port = free_port();
    let port_text = port.to_string();
    let listen = || spawn_python(None, PY_REUSEPORT_LISTENER, &[&port_text]).0;
    let connect = |n: usize| {
        for _ in 0..n {
            drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        }
    };
    let inbound_of = |m: &Metrics, pid: &str| {
        value(
            m,
            "tcp_connections_opened_total",
            &[
                ("process_pid", pid),
                ("direction", "inbound"),
                ("server_port", &port_text),
            ],
        )
    };
    // The old version, then a new one beside it: the new one owns the port.
    let mut old = listen();
    let mut new = listen();
    let (old_pid, new_pid) = (old.id().to_string(), new.id().to_string());
    const WHILE_BOTH: usize = 5;
    connect(WHILE_BOTH);
    let m = eventually(&agent, |m| inbound_of(m, &new_pid) == WHILE_BOTH as f64);
    assert_eq!(inbound_of(&m, &new_pid), WHILE_BOTH as f64);
    assert_eq!(inbound_of(&m, &old_pid), 0.0);
    // The new one goes away: the port goes back to the one still listening.
    drop(new.stdin.take());
    let _ = new.wait();
    const AFTER: usize = 4;
    connect(AFTER);
    let m = eventually(&agent, |m| inbound_of(m, &old_pid) == AFTER as f64);
    assert_eq!(inbound_of(&m, &old_pid), AFTER as f64);
    assert_eq!(inbound_of(&m, &new_pid), WHILE_BOTH as f64);
    drop(old.stdin.take());
    let _ = old.wait();
}
