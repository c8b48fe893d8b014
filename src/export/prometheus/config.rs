//! The metrics endpoint's settings, under `prometheus` (documented in the default
//! configuration).

use std::net::SocketAddr;
use std::num::NonZeroU32;

use serde::Deserialize;

use crate::settings::{check_native_schema, nonzero, Invalid, Range};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Address and port `/metrics`, `/healthz` and `/readyz` are served on.
    pub listen_address: SocketAddr,
    /// Open connections at most; when a new one comes, the one idle longest is closed.
    pub max_connections: NonZeroU32,
    /// Time a client has to send a request head, counted from the connection's start or
    /// its last response: keep-alive connections idle longer are closed.
    pub header_read_timeout_secs: u64,
    /// The Prometheus exporter-toolkit web configuration (TLS, basic auth); empty:
    /// plain HTTP without authentication. `--web.config.file` overrides it.
    pub web_config_file: String,
    /// The schema of native histograms in the protobuf exposition: 2^schema buckets per
    /// power of two, from -4 to 3 (the kernel's own resolution).
    pub native_histogram_schema: i8,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            listen_address: SocketAddr::from(([0, 0, 0, 0], 9101)),
            max_connections: nonzero(256),
            header_read_timeout_secs: 10,
            web_config_file: String::new(),
            native_histogram_schema: 3,
        }
    }
}

impl PrometheusConfig {
    pub fn check(&self) -> Result<(), Invalid> {
        check_native_schema("native_histogram_schema", self.native_histogram_schema)
    }

    /// Every number with the range it must fall in, keyed below `prometheus`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new(
                "max_connections",
                u64::from(self.max_connections.get()),
                1,
                65_536,
            ),
            Range::new(
                "header_read_timeout_secs",
                self.header_read_timeout_secs,
                1,
                3600,
            ),
        ]
    }
}
