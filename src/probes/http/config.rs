//! The http probe's settings, under `probes.http` (documented in config.yaml).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::probes::ProbeSettings;
use crate::settings::{nonzero, Buckets, Invalid, Range};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Off by default until its overhead meets its target (BENCHMARKS.md).
    pub enabled: bool,
    /// Trace the requests processes make as clients, besides those they serve.
    pub clients: bool,
    /// Connections traced at once, at most (kernel map and user-space state).
    pub max_connections: NonZeroU32,
    /// Ring buffer carrying reads and writes to user space; a power of two.
    pub ring_buffer_bytes: u32,
    /// Bytes of heads not yet complete (split over reads) held for all connections
    /// together, at most; beyond, the connection that grew is resynchronised and
    /// `periscope_series_folded_total{map="head_buffers"}` counts it.
    pub max_buffered_head_bytes: NonZeroU32,
    /// (process, method, status, route, port) series, at most; beyond, the overflow series.
    pub max_series: NonZeroU32,
    /// Routes per service, at most; beyond, `http_route="__overflow__"`.
    pub max_routes_per_service: NonZeroU32,
    /// Server addresses a client service reports, at most; beyond,
    /// `server_address="__overflow__"`.
    pub max_server_addresses_per_service: NonZeroU32,
    /// Client -> server edges of the service graph, at most; beyond, the
    /// `__overflow__` edge.
    pub max_service_graph_edges: NonZeroU32,
    /// Addresses of callers from elsewhere the service graph names, at most; beyond,
    /// their calls count under the `__overflow__` client.
    pub max_remote_callers: NonZeroU32,
    /// Addresses this node's traced clients call non-loopback servers from, at most.
    pub max_local_client_addresses: NonZeroU32,
    /// Route patterns such as `/users/{id}`; other paths go through the id heuristic.
    pub routes: Vec<String>,
    /// `le` bounds of the request duration histograms.
    pub duration_buckets_seconds: Buckets,
    /// `le` bounds of the body size histograms.
    pub body_size_buckets_bytes: Buckets,
    /// Frame plain HTTP in the kernel and count it there, in series slots; connections
    /// the kernel cannot frame exactly go to user space. With traces on, the kernel
    /// also decides which of its requests make spans.
    pub kernel_framing: bool,
    /// Series the kernel counts in slots of its own, at most; the exchanges of further
    /// series reach user space one by one, still counted exactly. Each slot takes
    /// 9 KiB shared by the CPUs and 24 bytes per CPU.
    pub kernel_series: NonZeroU32,
    /// The protocols looked for in each connection's first bytes.
    pub protocols: Protocols,
    /// `le` bounds of the database operation duration histograms.
    pub db_duration_buckets_seconds: Buckets,
    /// DNS lookups (with `protocols.dns`).
    pub dns: DnsSettings,
}

/// How DNS lookups are measured.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// A query unanswered this long is a lookup that failed with `error_type="timeout"`.
    pub timeout_ms: NonZeroU32,
    /// Question names each process reports, at most; beyond, `dns_question_name="__overflow__"`.
    pub max_question_names_per_process: NonZeroU32,
    /// `le` bounds of the lookup duration histograms.
    pub duration_buckets_seconds: Buckets,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            // glibc's resolver gives a server 5 s before it tries again.
            timeout_ms: nonzero(5000),
            max_question_names_per_process: nonzero(100),
            duration_buckets_seconds: Buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        }
    }
}

/// Which protocols the probe looks for; a connection of none of them costs one storage
/// lookup per read or write after its first bytes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Protocols {
    /// HTTP/1.x, plain and through OpenSSL.
    pub http: bool,
    /// Redis (RESP2 and RESP3).
    pub redis: bool,
    /// PostgreSQL (protocol 3.0: simple and extended queries).
    pub postgresql: bool,
    /// MySQL and MariaDB (text and prepared statements).
    pub mysql: bool,
    /// DNS lookups over UDP and TCP.
    pub dns: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            http: true,
            redis: true,
            postgresql: true,
            mysql: true,
            dns: true,
        }
    }
}

impl Protocols {
    /// The `protocols` setting of http.bpf.c: a bit per protocol looked for.
    pub fn kernel_bits(&self) -> u32 {
        use super::skel::types::psc_l7_protocol as P;
        let bit = |on: bool, protocol: P| u32::from(on) << protocol.0;
        bit(self.http, P::PSC_PROTO_HTTP)
            | bit(self.redis, P::PSC_PROTO_REDIS)
            | bit(self.postgresql, P::PSC_PROTO_POSTGRES)
            | bit(self.mysql, P::PSC_PROTO_MYSQL)
            | bit(self.dns, P::PSC_PROTO_DNS)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: false,
            clients: true,
            max_connections: nonzero(65536),
            ring_buffer_bytes: 8 << 20,
            max_buffered_head_bytes: nonzero(16 << 20),
            max_series: nonzero(10000),
            max_routes_per_service: nonzero(200),
            max_server_addresses_per_service: nonzero(50),
            max_service_graph_edges: nonzero(1000),
            max_remote_callers: nonzero(1024),
            max_local_client_addresses: nonzero(4096),
            routes: Vec::new(),
            // The OpenTelemetry semantic conventions' advice for HTTP durations.
            duration_buckets_seconds: Buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            ]),
            body_size_buckets_bytes: Buckets(vec![
                64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
                16777216.0,
            ]),
            kernel_framing: true,
            kernel_series: nonzero(1024),
            protocols: Protocols::default(),
            // The OpenTelemetry semantic conventions' advice for database durations.
            db_duration_buckets_seconds: Buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
            ]),
            dns: DnsSettings::default(),
        }
    }
}

impl ProbeSettings for HttpConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::entries("max_connections", self.max_connections),
            Range::new(
                "ring_buffer_bytes",
                u64::from(self.ring_buffer_bytes),
                4096,
                256 << 20,
            ),
            Range::new(
                "max_buffered_head_bytes",
                u64::from(self.max_buffered_head_bytes.get()),
                1,
                256 << 20,
            ),
            Range::entries("max_series", self.max_series),
            Range::new("kernel_series", u64::from(self.kernel_series.get()), 1, 65536),
            Range::entries("max_routes_per_service", self.max_routes_per_service),
            Range::entries(
                "max_server_addresses_per_service",
                self.max_server_addresses_per_service,
            ),
            Range::entries("max_service_graph_edges", self.max_service_graph_edges),
            Range::entries("max_remote_callers", self.max_remote_callers),
            Range::entries("max_local_client_addresses", self.max_local_client_addresses),
            Range::new("dns.timeout_ms", u64::from(self.dns.timeout_ms.get()), 10, 600_000),
            Range::entries(
                "dns.max_question_names_per_process",
                self.dns.max_question_names_per_process,
            ),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        if !self.ring_buffer_bytes.is_power_of_two() || self.ring_buffer_bytes < 4096 {
            return Err((
                "ring_buffer_bytes",
                format!(
                    "must be a power of two of at least 4096, not {}",
                    self.ring_buffer_bytes
                ),
            ));
        }
        if let Some(bad) = self.routes.iter().find(|r| !r.starts_with('/')) {
            return Err(("routes", format!("route `{bad}` must start with /")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_framer_takes_any_classic_bounds_as_it_counts_native_buckets() {
        let config = HttpConfig {
            duration_buckets_seconds: Buckets((1..=64).map(f64::from).collect()),
            body_size_buckets_bytes: Buckets((1..=64).map(|b| f64::from(b * 100)).collect()),
            ..HttpConfig::default()
        };
        assert!(config.kernel_framing);
        assert_eq!(config.check(), Ok(()));
    }
}
