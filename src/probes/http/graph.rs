//! The service graph: an edge per client -> server pair of HTTP, the databases and DNS,
//! derived at each collection from the client series. Nothing is counted per request for
//! it, so it costs nothing on the hot path.
//!
//! The client is the calling process's workload: its pod's container, its container, or
//! its `service_name` (its systemd service, else its executable). The server is named
//! the same way when it is on this node: called at a loopback address, the process that
//! serves the port; called at another, the process that serves the port in the network
//! namespace holding the address (endpoints.rs). Else it is the address and port called.
//!
//! A caller from elsewhere (neither loopback nor a client this node traces) has no client
//! series here: the kernel marks its connections, and the server's exchanges count
//! under the caller's address ([`RemoteCallers`]).

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

impl Edge {
    fn new() -> Edge {
        Edge {
            requests: 0,
            failed: 0,
            duration: KernelHistogram::new(Unit::Nanoseconds),
        }
    }

    fn add(&mut self, key: &Exchanges, duration: &KernelHistogram) {
        let count = duration.count();
        self.requests += count;
        if failed(key) {
            self.failed += count;
        }
        self.duration.merge(duration);
    }

    fn merge(&mut self, other: &Edge) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.duration.merge(&other.duration);
    }
}

/// What servers on this node were asked by callers from elsewhere: per serving process
/// (without its pid, so that nothing is lost when it exits) and caller address, at most
/// `max` pairs; further pairs count under the overflow process and caller.
pub struct RemoteCallers {
    edges: BTreeMap<(Owner, String), Edge>,
    max: usize,
    folded: u64,
}

impl RemoteCallers {
    pub fn new(max: usize) -> Self {
        RemoteCallers {
            edges: BTreeMap::new(),
            max,
            folded: 0,
        }
    }

    /// Counts `duration`'s exchanges of server series `key` of `owner` from `caller`.
    pub fn count(&mut self, owner: &Owner, key: &Exchanges, caller: &str, duration: &KernelHistogram) {
        let server = Owner::new(None, owner.name.clone(), owner.workload.clone());
        let mut pair = (server, caller.to_string());
        if !self.edges.contains_key(&pair) && self.edges.len() >= self.max {
            self.folded += duration.count();
            pair = (Owner::overflow(None), OVERFLOW.to_string());
        }
        self.edges.entry(pair).or_insert_with(Edge::new).add(key, duration);
    }

    /// Counts one exchange of `took` ns.
    pub fn count_one(&mut self, owner: &Owner, key: &Exchanges, caller: &str, took: u64) {
        let mut duration = KernelHistogram::new(Unit::Nanoseconds);
        duration.record(took);
        self.count(owner, key, caller, &duration);
    }

    /// Exchanges counted under the overflow pair because the table was full.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }
}

/// What the graph is drawn from besides the series.
pub struct Graph<'a> {
    pub callers: &'a RemoteCallers,
    /// The servers of this node by the non-loopback (address, port) they are called at.
    pub local: &'a HashMap<(String, u16), Owner>,
    pub workloads: &'a Workloads,
    pub bounds: &'a DurationBounds,
    /// Edges at most; the rest count under the `__overflow__` edge.
    pub max_edges: usize,
}

impl Graph<'_> {
    /// The edges of `rows` (series and their duration histograms) and of the callers
    /// from elsewhere. Returns the families and the requests of the edges folded.
    pub fn families<'r>(
        &self,
        rows: impl Iterator<Item = (&'r Owner, &'r Exchanges, &'r KernelHistogram)> + Clone,
    ) -> (Vec<Family>, u64) {
        let (callers, workloads, bounds, max_edges) =
            (self.callers, self.workloads, self.bounds, self.max_edges);
        let service = |owner: &Owner| {
            let labels = workloads.process_labels(None, &owner.name, &owner.workload);
            workload_name(&labels, &owner.name)
        };
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
            let called = (key.server_address.clone(), key.server_port);
            let server = match (self.local.get(&called), local.get(&key.server_port)) {
                (Some(owner), _) => service(owner),
                (None, Some(name)) if is_loopback(&key.server_address) => name.clone(),
                _ if key.server_address == OVERFLOW => OVERFLOW.to_string(),
                _ => format!("{}:{}", key.server_address, key.server_port),
            };
            edge_at(&mut edges, (client, server), max_edges, &mut folded, duration.count())
                .add(key, duration);
        }
        for ((owner, caller), calls) in &callers.edges {
            let server = if owner.is_overflow() {
                OVERFLOW.to_string()
            } else {
                service(owner)
            };
            edge_at(&mut edges, (caller.clone(), server), max_edges, &mut folded, calls.requests)
                .merge(calls);
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
            "Duration of requests from a client service to a server, as the client measured them (the server, for callers from elsewhere).",
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
}

/// The edge `key` in `edges`, or the overflow edge once `max_edges` are taken, its
/// `requests` then counted in `folded`.
fn edge_at<'e>(
    edges: &'e mut BTreeMap<(String, String), Edge>,
    key: (String, String),
    max_edges: usize,
    folded: &mut u64,
    requests: u64,
) -> &'e mut Edge {
    let mut key = key;
    if !edges.contains_key(&key) && edges.len() >= max_edges {
        *folded += requests;
        key = (OVERFLOW.to_string(), OVERFLOW.to_string());
    }
    edges.entry(key).or_insert_with(Edge::new)
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

    /// The graph of `rows`, `callers` and the `local` servers, at most `max_edges` edges.
    fn draw(
        rows: &[((Owner, Exchanges), KernelHistogram)],
        callers: &RemoteCallers,
        local: &HashMap<(String, u16), Owner>,
        max_edges: usize,
    ) -> (Vec<Family>, u64) {
        let graph = Graph {
            callers,
            local,
            workloads: &Workloads::default(),
            bounds: &DurationBounds::new(&[0.001, 1.0]),
            max_edges,
        };
        graph.families(rows.iter().map(|((o, k), h)| (o, k, h)))
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
        let none = RemoteCallers::new(10);
        let (graph, folded) = draw(&rows, &none, &HashMap::new(), 10);
        assert_eq!(folded, 0);
        // Counter families are named without `_total`, which the exposition adds.
        let requests = "service_graph_requests";
        assert_eq!(value(&graph, requests, "curl", "api"), 9.0);
        assert_eq!(value(&graph, "service_graph_request_failed", "curl", "api"), 3.0);
        assert_eq!(value(&graph, requests, "api", "10.1.2.3:5432"), 4.0);
        // Two edges at most: the third (in key order) folds, its requests kept.
        let (graph, folded) = draw(&rows, &none, &HashMap::new(), 2);
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

    #[test]
    fn callers_from_elsewhere_are_clients_by_address_within_their_cap() {
        let (api, ok) = series(Role::Server, "api", "", 8080, 200);
        let (_, failing) = series(Role::Server, "api", "", 8080, 503);
        let mut callers = RemoteCallers::new(2);
        // Pids differ, the server's edge is one: callers outlive the processes served.
        let other_pid = Owner::new(Some(2), "api", Workload::default());
        callers.count(&api, &ok, "10.0.0.7", &histogram(4));
        callers.count(&other_pid, &failing, "10.0.0.7", &histogram(1));
        callers.count(&api, &ok, "10.0.0.8", &histogram(2));
        // A third pair: folded into the overflow pair, its requests kept.
        callers.count_one(&api, &ok, "10.0.0.9", 5_000);
        assert_eq!((callers.len(), callers.folded()), (3, 1));
        let (graph, folded) = draw(&[], &callers, &HashMap::new(), 10);
        assert_eq!(folded, 0);
        assert_eq!(value(&graph, "service_graph_requests", "10.0.0.7", "api"), 5.0);
        assert_eq!(value(&graph, "service_graph_request_failed", "10.0.0.7", "api"), 1.0);
        assert_eq!(value(&graph, "service_graph_requests", "10.0.0.8", "api"), 2.0);
        assert_eq!(value(&graph, "service_graph_requests", OVERFLOW, OVERFLOW), 1.0);
    }

    #[test]
    fn a_server_of_this_node_called_at_its_namespace_address_is_named() {
        let rows = [
            (series(Role::Client, "curl", "10.251.0.1", 8080, 200), histogram(3)),
            (series(Role::Client, "curl", "10.251.0.1", 9090, 200), histogram(2)),
        ];
        let web = Owner::new(None, "web", Workload::default());
        let local = HashMap::from([(("10.251.0.1".to_string(), 8080), web)]);
        let (graph, _) = draw(&rows, &RemoteCallers::new(1), &local, 10);
        assert_eq!(value(&graph, "service_graph_requests", "curl", "web"), 3.0);
        // Nobody here serves the other port at that address: the address it stays.
        assert_eq!(value(&graph, "service_graph_requests", "curl", "10.251.0.1:9090"), 2.0);
    }
}
