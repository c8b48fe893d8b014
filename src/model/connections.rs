//! The connections the agent's own exporters open, which its probes must not trace.
//!
//! One table, written by the exporter that opens a connection and read by the probes
//! that would otherwise make a span of it. It lives in the model because both sides
//! read only the model: the agent makes one and hands it to each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connection stays known after its request: well beyond the probes' drain
/// interval.
const MEMORY: Duration = Duration::from_secs(5);

/// Connections remembered before the forgotten ones are swept out.
const SWEEP_AT: usize = 1024;

/// The agent's connections as (local port, receiver's port), each remembered for a
/// while after its request. A server on this host that answers one of them (a
/// node-local collector) makes no span: exporting it would make the next one, without
/// end. Both ports must match: the kernel reuses ephemeral port numbers for other
/// destinations, and a port alone would hide other clients' requests.
///
/// Clones share one table.
#[derive(Debug, Clone, Default)]
pub struct AgentConnections {
    known: Arc<Mutex<HashMap<(u16, u16), Instant>>>,
}

impl AgentConnections {
    /// Records (or refreshes) one of the agent's connections.
    pub fn register(&self, local_port: u16, remote_port: u16) {
        self.register_at(local_port, remote_port, Instant::now());
    }

    /// Whether an exchange from `client_port` to `server_port` is one of the agent's.
    pub fn contains(&self, client_port: u16, server_port: u16) -> bool {
        self.contains_at(client_port, server_port, Instant::now())
    }

    fn register_at(&self, local_port: u16, remote_port: u16, now: Instant) {
        // A panic elsewhere while holding the lock leaves a table still worth using.
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= SWEEP_AT {
            known.retain(|_, at| now.saturating_duration_since(*at) < MEMORY);
        }
        known.insert((local_port, remote_port), now);
    }

    fn contains_at(&self, client_port: u16, server_port: u16, now: Instant) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(&(client_port, server_port))
            .is_some_and(|at| now.saturating_duration_since(*at) < MEMORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_known_by_both_ports_for_a_while_and_to_every_clone() {
        let connections = AgentConnections::default();
        let seen_by_probe = connections.clone();
        let now = Instant::now();
        connections.register_at(40000, 4318, now);
        assert!(seen_by_probe.contains_at(40000, 4318, now + Duration::from_secs(1)));
        assert!(!seen_by_probe.contains_at(40000, 8080, now));
        assert!(!seen_by_probe.contains_at(40001, 4318, now));
        assert!(!seen_by_probe.contains_at(40000, 4318, now + MEMORY));
        // Another agent's table (a test's, say) knows nothing of this one.
        assert!(!AgentConnections::default().contains_at(40000, 4318, now));
    }

    #[test]
    fn forgotten_connections_are_swept_and_a_refresh_keeps_one() {
        let connections = AgentConnections::default();
        let start = Instant::now();
        for port in 0..SWEEP_AT as u16 {
            connections.register_at(port, 4318, start);
        }
        let later = start + MEMORY;
        connections.register_at(0, 4318, later);
        connections.register_at(50000, 4318, later);
        let known = connections.known.lock().expect("lock");
        assert_eq!(
            known.len(),
            2,
            "swept down to the refreshed and the new one"
        );
    }
}
