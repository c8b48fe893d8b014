//! User-space cost of the http probe's framing: exchanges per second through
//! `Connection::feed` for a keep-alive GET and its 612-byte response, against a baseline
//! that only scans the same bytes for the end of the head (the least any framing must do).
//!
//! `cargo bench --bench framing`

use std::hint::black_box;
use std::time::Instant;

use periscope::probes::http::conn::{Connection, Direction, Role};

const REQUEST: &[u8] =
    b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n";

fn response() -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\nContent-Length: 612\r\nConnection: keep-alive\r\n\r\n".to_vec();
    r.extend(std::iter::repeat_n(b'x', 612));
    r
}

fn measure(name: &str, rounds: u64, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..rounds {
        f(i);
    }
    let per_second = rounds as f64 / start.elapsed().as_secs_f64();
    println!("{name:<32} {per_second:>14.0} exchanges/s");
    per_second
}

fn main() {
    let response = response();
    let rounds = 2_000_000;
    let mut conn = Connection::new(Role::Server);
    let framed = measure("framing (Connection::feed)", rounds, |i| {
        let at = i * 10;
        black_box(conn.feed(Direction::Ingress, REQUEST, REQUEST.len() as u64, at));
        black_box(conn.feed(Direction::Egress, &response, response.len() as u64, at + 5));
    });
    let scanned = measure("baseline (scan for head end)", rounds, |_| {
        black_box(REQUEST.windows(4).position(|w| w == b"\r\n\r\n"));
        black_box(response.windows(4).position(|w| w == b"\r\n\r\n"));
    });
    println!("framing costs {:.1}x the baseline scan", scanned / framed);
}
