//! The tcp probe's metric families: names, help, units and labels.

use std::time::SystemTime;

use super::policy::Peer;
use super::{Stats, FAILURE_REASONS};
use crate::model::{ClassicHistogram, Family, Labels, MetricKind, Value};

/// The OpenTelemetry names of the probe's labels that have a semantic convention; the
/// others (`direction`, `peer_address`, `peer_port`, `reason`) keep their own.
const OTEL_ATTRIBUTES: &[(&str, &str)] = &[("server_port", "server.port")];

pub struct TcpFamilies {
    opened: Family,
    failures: Family,
    duration: Family,
    active: Family,
    sent: Family,
    received: Family,
    retransmits: Family,
    rtt: Family,
}

impl TcpFamilies {
    /// Empty families; `sampled`: open connections are sampled between closes, which
    /// the help of the byte, retransmit and RTT families says.
    pub fn new(sampled: bool) -> Self {
        let help = |while_open: &'static str, at_close: &'static str| {
            if sampled {
                while_open
            } else {
                at_close
            }
        };
        TcpFamilies {
            opened: Family::new(
                "tcp_connections_opened",
                "TCP connections established, by direction: outbound (connected by the process) or inbound (accepted on its listening port).",
                MetricKind::Counter,
            )
            .with_attributes(OTEL_ATTRIBUTES),
            failures: Family::new(
                "tcp_connect_failures",
                "Outbound TCP connects that failed, by reason: refused, timeout, unreachable, aborted (closed by the process before an answer), other.",
                MetricKind::Counter,
            )
            .with_attributes(OTEL_ATTRIBUTES),
            duration: Family::new(
                "tcp_connect_duration_seconds",
                "Time from SYN sent to connection established, outbound connections.",
                MetricKind::Histogram,
            )
            .with_attributes(OTEL_ATTRIBUTES)
            .with_unit("seconds"),
            active: Family::new(
                "tcp_active_connections",
                "TCP connections established since the agent started and not yet closed.",
                MetricKind::Gauge,
            )
            .with_attributes(OTEL_ATTRIBUTES),
            sent: Family::new(
                "tcp_sent_bytes",
                help(
                    "Data bytes sent on TCP connections (retransmitted data once), added while they are open (every sample interval) and at their close.",
                    "Data bytes sent on TCP connections (retransmitted data once), added when they close: open connections are not sampled here.",
                ),
                MetricKind::Counter,
            )
            .with_attributes(OTEL_ATTRIBUTES),
            received: Family::new(
                "tcp_received_bytes",
                help(
                    "Data bytes received on TCP connections, added while they are open (every sample interval) and at their close.",
                    "Data bytes received on TCP connections, added when they close: open connections are not sampled here.",
                ),
                MetricKind::Counter,
            )
            .with_attributes(OTEL_ATTRIBUTES),
            retransmits: Family::new(
                "tcp_retransmits",
                help(
                    "Segments retransmitted on TCP connections, added while they are open (every sample interval) and at their close.",
                    "Segments retransmitted on TCP connections, added when they close: open connections are not sampled here.",
                ),
                MetricKind::Counter,
            )
            .with_attributes(OTEL_ATTRIBUTES),
            rtt: Family::new(
                "tcp_rtt_seconds",
                help(
                    "Smoothed round-trip time of TCP connections: one sample per open connection and sample interval, and one at its close.",
                    "Smoothed round-trip time of TCP connections: one sample at each close; open connections are not sampled here.",
                ),
                MetricKind::Histogram,
            )
            .with_attributes(OTEL_ATTRIBUTES)
            .with_unit("seconds"),
        }
    }

    /// One series' values; `duration` for outbound series, which also report failures.
    pub fn push(
        &mut self,
        labels: Labels,
        stats: &Stats,
        rtt: ClassicHistogram,
        duration: Option<ClassicHistogram>,
        created: SystemTime,
    ) {
        let counter = |n: u64| Value::Counter(n as f64);
        self.opened
            .push_created(labels.clone(), counter(stats.opened), created);
        self.active
            .push(labels.clone(), Value::Gauge(stats.active.max(0) as f64));
        self.sent
            .push_created(labels.clone(), counter(stats.sent), created);
        self.received
            .push_created(labels.clone(), counter(stats.received), created);
        self.retransmits
            .push_created(labels.clone(), counter(stats.retransmits), created);
        self.rtt
            .push_created(labels.clone(), Value::Histogram(rtt), created);
        if let Some(duration) = duration {
            for (reason, count) in FAILURE_REASONS.iter().zip(stats.failures) {
                let mut labels = labels.clone();
                labels.push(("reason", reason.to_string()));
                self.failures.push_created(labels, counter(count), created);
            }
            self.duration
                .push_created(labels, Value::Histogram(duration), created);
        }
    }

    pub fn into_array(self) -> [Family; 8] {
        [
            self.opened,
            self.failures,
            self.duration,
            self.active,
            self.sent,
            self.received,
            self.retransmits,
            self.rtt,
        ]
    }
}

/// Direction, peer address and port. Outbound: the peer's port; inbound: the local
/// listening port. Never the ephemeral side.
pub fn push_peer_labels(labels: &mut Labels, peer: &Peer) {
    let direction = if peer.inbound { "inbound" } else { "outbound" };
    labels.push(("direction", direction.to_string()));
    labels.push(("peer_address", peer.address.clone()));
    if peer.port != 0 {
        let name = if peer.inbound {
            "server_port"
        } else {
            "peer_port"
        };
        labels.push((name, peer.port.to_string()));
    }
}
