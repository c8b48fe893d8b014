//! The service graph: an edge per client -> server pair of HTTP, the databases and DNS,
//! derived at each collection from the client series. Nothing is counted per request for
//! it, so it costs nothing on the hot path.
//!
//! The client is the calling process's workload: its pod's container, its container, or
//! its `service_name` (its systemd service, else its executable). The server is the `service_name` of the process
//! on this node that serves the port called, when the address is a loopback one; else
//! the address and port called.

use std::collections::{BTreeMap, HashMap};

use super::conn::{Protocol, Role};
use super::Exchanges;
use crate::enrich::Workloads;
use crate::model::agent_labels::SERVICE_NAME;
use crate::model::native::{KernelHistogram, Unit};
use crate::model::histogram::DurationBounds;
use crate::model::{Family, Labels, MetricKind, Value, OVERFLOW};
use crate::probes::kit::lifecycle::Owner;

/// One edge's requests, failures and durations.
struct Edge {
    requests: u64,
    failed: u64,
    duration: KernelHistogram,
}

/// The edges of `rows` (series and their duration histograms), at most `max_edges`; the
/// rest count under the `__overflow__` edge. Returns the families and the edges folded.
pub fn families<'a>(
    rows: impl Iterator<Item = (&'a Owner, &'a Exchanges, &'a KernelHistogram)> + Clone,
    workloads: &Workloads,
    bounds: &DurationBounds,
    max_edges: usize,
) -> (Vec<Family>, u64) {
    let service = |owner: &Owner| workload_name(&workloads.process_labels(None, &owner.name, &owner.workload), &owner.name);
    // Who serves each port on this node, as its server series say.
    let mut local: HashMap<u16, String> = HashMap::new();
    for (owner, key, _) in rows.clone() {
        if key.role == Role::Server && !owner.is_overflow() {
            local.entry(key.server_port).or_insert_with(|| service(owner));
        }
    }
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    let mut folded = 0;
    for (owner, key, duration) in rows {
        if key.role != Role::Client {
            continue;
        }
        let client = if owner.is_overflow() {
            OVERFLOW.to_string()
        } else {
            service(owner)
        };
        let server = match local.get(&key.server_port) {
            Some(name) if is_loopback(&key.server_address) => name.clone(),
            _ if key.server_address == OVERFLOW => OVERFLOW.to_string(),
            _ => format!("{}:{}", key.server_address, key.server_port),
        };
        let mut edge_key = (client, server);
        if !edges.contains_key(&edge_key) && edges.len() >= max_edges {
            folded += duration.count();
            edge_key = (OVERFLOW.to_string(), OVERFLOW.to_string());
        }
        let edge = edges.entry(edge_key).or_insert_with(|| Edge {
            requests: 0,
            failed: 0,
            duration: KernelHistogram::new(Unit::Nanoseconds),
        });
        let count = duration.count();
        edge.requests += count;
        if failed(key) {
            edge.failed += count;
        }
        edge.duration.merge(duration);
    }
    let mut requests = Family::new(
        "service_graph_requests",
        "Requests from a client service to a server, of HTTP, the databases and DNS.",
        MetricKind::Counter,
    );
    let mut failures = Family::new(
        "service_graph_request_failed",
        "Requests from a client service to a server that failed: an HTTP 5xx or no response, a database error, a DNS error or timeout.",
        MetricKind::Counter,
    );
    let mut durations = Family::new(
        "service_graph_request_duration_seconds",
        "Duration of requests from a client service to a server, as the client measured them.",
        MetricKind::Histogram,
    )
    .with_unit("seconds");
    for ((client, server), edge) in edges {
        let labels = vec![("client", client), ("server", server)];
        requests.push(labels.clone(), Value::Counter(edge.requests as f64));
        failures.push(labels.clone(), Value::Counter(edge.failed as f64));
        durations.push(labels, Value::Histogram(bounds.classic_and_native(&edge.duration)));
    }
    (vec![requests, failures, durations], folded)
}

/// What the graph calls a process: its pod's container (`namespace/container`), else
/// its container's name, else its `service_name` (systemd service or executable).
fn workload_name(labels: &Labels, executable: &str) -> String {
    let label = |name: &str| {
        labels
            .iter()
            .find(|(key, value)| *key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    };
    match (label("k8s_namespace_name"), label("k8s_container_name")) {
        (Some(namespace), Some(container)) => format!("{namespace}/{container}"),
        _ => label("container_name")
            .or_else(|| label(SERVICE_NAME))
            .unwrap_or(executable)
            .to_string(),
    }
}

/// A series of failed requests: for HTTP the server's fault (5xx) or no response at all;
/// for the others, any error.
fn failed(key: &Exchanges) -> bool {
    match key.protocol {
        Protocol::Http => key.status >= 500 || key.status == 0,
        Protocol::Redis | Protocol::Postgres | Protocol::Mysql | Protocol::Dns => {
            !key.error_type.is_empty()
        }
    }
}

fn is_loopback(address: &str) -> bool {
    address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Workload;

    fn series(role: Role, name: &str, address: &str, port: u16, status: u16) -> (Owner, Exchanges) {
        let owner = Owner::new(Some(1), name, Workload::default());
        let key = Exchanges {
            protocol: Protocol::Http,
            role,
            method: "GET".into(),
            status,
            route: "/".into(),
            server_address: address.into(),
            server_port: port,
            tls: false,
            error_type: String::new(),
        };
        (owner, key)
    }

    fn histogram(count: u64) -> KernelHistogram {
        let mut slots = vec![0; 8];
        slots[3] = count;
        KernelHistogram::from_parts(&slots, count * 1000)
    }

    fn value(families: &[Family], name: &str, client: &str, server: &str) -> f64 {
        families
            .iter()
            .filter(|f| f.name == name)
            .flat_map(|f| f.series.iter())
            .filter(|s| s.labels.contains(&("client", client.to_string())))
            .filter(|s| s.labels.contains(&("server", server.to_string())))
            .map(|s| match &s.value {
                Value::Counter(v) => *v,
                _ => 0.0,
            })
            .sum()
    }

    #[test]
    fn edges_name_local_servers_and_fold_past_the_cap_with_totals_kept() {
        let rows = [
            (series(Role::Server, "api", "", 8080, 200), histogram(9)),
            (series(Role::Client, "curl", "127.0.0.1", 8080, 200), histogram(6)),
            (series(Role::Client, "curl", "127.0.0.1", 8080, 503), histogram(3)),
            (series(Role::Client, "api", "10.1.2.3", 5432, 200), histogram(4)),
            (series(Role::Client, "api", "10.1.2.4", 6379, 200), histogram(5)),
        ];
        let bounds = DurationBounds::new(&[0.001, 1.0]);
        let rows_iter = rows.iter().map(|((o, k), h)| (o, k, h));
        let (graph, folded) = families(rows_iter.clone(), &Workloads::default(), &bounds, 10);
        assert_eq!(folded, 0);
        // Counter families are named without `_total`, which the exposition adds.
        let requests = "service_graph_requests";
        assert_eq!(value(&graph, requests, "curl", "api"), 9.0);
        assert_eq!(value(&graph, "service_graph_request_failed", "curl", "api"), 3.0);
        assert_eq!(value(&graph, requests, "api", "10.1.2.3:5432"), 4.0);
        // Two edges at most: the third (in key order) folds, its requests kept.
        let (graph, folded) = families(rows_iter, &Workloads::default(), &bounds, 2);
        assert_eq!(folded, 5);
        assert_eq!(value(&graph, requests, OVERFLOW, OVERFLOW), 5.0);
        let total: f64 = graph
            .iter()
            .filter(|f| f.name == requests)
            .flat_map(|f| f.series.iter())
            .map(|s| match &s.value {
                Value::Counter(v) => *v,
                _ => 0.0,
            })
            .sum();
        assert_eq!(total, 18.0);
    }
}
