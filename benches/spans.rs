//! The span pipeline on one core: a keep-alive request and its
//! response framed (`Connection::feed`), its span decided and made (`SpanMaker`), and
//! spans encoded into OTLP `ExportTraceServiceRequest`s of 512 (protobuf, then gzip as
//! sent by default), against a baseline of framing alone in the same run.
//!
//! `cargo bench --bench spans`

use std::hint::black_box;
use std::time::Instant;

use periscope::export::otlp::encode::traces_request;
use periscope::export::otlp::proto::KeyValue;
use periscope::model::connections::AgentConnections;
use periscope::model::span::{Span, SpanResource};
use periscope::probes::http::conn::{Connection, Direction, Role};
use periscope::probes::http::spans::{Finished, SpanMaker};
use periscope::probes::kit::spans::Sampler;
use prost::Message;

/// Without a traceparent: every span gets random trace and span ids, as roots do, so
/// compression sees what it would on the wire.
const REQUEST: &[u8] = b"GET /users/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n";

const BATCH: usize = 512;

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
    println!("{name:<44} {per_second:>12.0} per second");
    per_second
}

fn main() {
    let response = response();
    let rounds = 1_000_000;
    let mut conn = Connection::new(Role::Server);
    let framing = measure("baseline: framing alone (exchanges)", rounds, |i| {
        let at = i * 10;
        black_box(conn.feed_by(Direction::Ingress, REQUEST, REQUEST.len() as u64, at, 7));
        black_box(conn.feed_by(
            Direction::Egress,
            &response,
            response.len() as u64,
            at + 5,
            7,
        ));
    });

    let resource = [KeyValue::string("host.name", "bench")];
    for gzip in [false, true] {
        let mut conn = Connection::new(Role::Server);
        let mut maker = SpanMaker::new(Sampler::AlwaysOn, AgentConnections::default());
        let mut spans: Vec<Span> = Vec::with_capacity(BATCH);
        let mut bytes = 0usize;
        let name = if gzip {
            "pipeline: frame + span + OTLP + gzip (spans)"
        } else {
            "pipeline: frame + span + OTLP (spans)"
        };
        let rate = measure(name, rounds, |i| {
            let at = i * 10;
            conn.feed_by(Direction::Ingress, REQUEST, REQUEST.len() as u64, at, 7);
            for request in conn.new_requests() {
                maker.decide(Role::Server, request);
            }
            for exchange in conn.feed_by(
                Direction::Egress,
                &response,
                response.len() as u64,
                at + 5,
                7,
            ) {
                let Some(context) = exchange.context else {
                    continue;
                };
                maker.finish(Finished {
                    role: Role::Server,
                    tid: exchange.tid,
                    context,
                    db: None,
                    dns: None,
                    method: &exchange.method,
                    route: "/users/*",
                    path: &exchange.path,
                    status: exchange.status,
                    tls: false,
                    start_ns: exchange.start_ns,
                    end_ns: exchange.end_ns,
                    server_address: String::new(),
                    server_port: 8080,
                    client_address: "127.0.0.1".into(),
                    client_port: 50000,
                    resource: SpanResource {
                        pid: 1234,
                        executable_name: "nginx".into(),
                        service_name: "nginx".into(),
                        workload: Vec::new(),
                    },
                });
            }
            maker.take(&mut spans);
            if spans.len() >= BATCH {
                let encoded = traces_request(&spans, &resource).encode_to_vec();
                bytes += if gzip {
                    let mut encoder =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut encoder, &encoded).expect("gzip");
                    encoder.finish().expect("gzip").len()
                } else {
                    encoded.len()
                };
                spans.clear();
            }
        });
        println!(
            "  {:.1}x the framing baseline's time per exchange; {:.0} bytes per span on the wire",
            framing / rate,
            bytes as f64 / rounds as f64
        );
    }
}
