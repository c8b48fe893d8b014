//! The tcp probe's settings, under `probes.tcp` (documented in config.yaml).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::probes::ProbeSettings;
use crate::settings::{nonzero, Buckets, Range, DAY};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    pub enabled: bool,
    /// (process, direction, peer) series in the kernel, at most; beyond, the overflow
    /// series per direction.
    pub max_series: NonZeroU32,
    /// Peers a process reports, at most; beyond, `peer_address="__overflow__"`.
    pub max_peers_per_process: NonZeroU32,
    /// Connections followed at once, at most (a preallocated kernel table); beyond,
    /// new connections are not followed and `periscope_series_folded_total{map="tcp_socks"}`
    /// counts them.
    pub max_connections: NonZeroU32,
    /// How often open connections add their bytes and retransmits so far to their series
    /// and give one RTT sample; 0 leaves it all to their close.
    pub sample_interval_secs: u64,
    /// `le` bounds of `tcp_connect_duration_seconds`.
    pub connect_duration_buckets_seconds: Buckets,
    /// `le` bounds of `tcp_rtt_seconds`.
    pub rtt_buckets_seconds: Buckets,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            enabled: true,
            max_series: nonzero(16384),
            max_peers_per_process: nonzero(100),
            max_connections: nonzero(65536),
            sample_interval_secs: 10,
            connect_duration_buckets_seconds: Buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            rtt_buckets_seconds: Buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        }
    }
}

impl ProbeSettings for TcpConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::entries("max_series", self.max_series),
            Range::entries("max_peers_per_process", self.max_peers_per_process),
            Range::entries("max_connections", self.max_connections),
            Range::new("sample_interval_secs", self.sample_interval_secs, 0, DAY),
        ]
    }
}
