//! The http probe's metric families: names, OpenTelemetry names, units and labels.

use std::time::SystemTime;

use super::conn::Role;
use super::Exchanges;
use crate::enrich::Workloads;
use crate::model::{ClassicHistogram, Family, Labels, MetricKind, Value};
use crate::probes::kit::lifecycle::Owner;

/// The HTTP semantic conventions' names of the labels `series_labels` adds, for the
/// OpenTelemetry exporters.
const OTEL_ATTRIBUTES: &[(&str, &str)] = &[
    ("http_request_method", "http.request.method"),
    ("http_response_status_code", "http.response.status_code"),
    ("http_route", "http.route"),
    ("server_address", "server.address"),
    ("server_port", "server.port"),
    ("url_scheme", "url.scheme"),
];

pub fn series_labels(workloads: &Workloads, owner: &Owner, key: &Exchanges) -> Labels {
    let mut labels = owner.labels(workloads);
    labels.push(("http_request_method", key.method.clone()));
    labels.push(("http_response_status_code", key.status.to_string()));
    labels.push(("http_route", key.route.clone()));
    if key.role == Role::Client {
        labels.push(("server_address", key.server_address.clone()));
    }
    labels.push(("server_port", key.server_port.to_string()));
    // The semantic conventions' url.scheme: TLS traffic keeps the same metric names.
    labels.push((
        "url_scheme",
        if key.tls { "https" } else { "http" }.to_string(),
    ));
    labels
}

/// The database semantic conventions' names of the labels `db_series_labels` adds.
const DB_OTEL_ATTRIBUTES: &[(&str, &str)] = &[
    ("db_system_name", "db.system.name"),
    ("db_operation_name", "db.operation.name"),
    ("server_address", "server.address"),
    ("server_port", "server.port"),
    ("error_type", "error.type"),
];

/// The labels of a database series: `role` tells the client's measure from the
/// server's, and `error_type` is there on failures only.
pub fn db_series_labels(workloads: &Workloads, owner: &Owner, key: &Exchanges) -> Labels {
    let mut labels = owner.labels(workloads);
    labels.push(("db_system_name", key.protocol.name().to_string()));
    labels.push(("db_operation_name", key.method.clone()));
    let role = match key.role {
        Role::Client => "client",
        Role::Server => "server",
    };
    labels.push(("role", role.to_string()));
    if key.role == Role::Client {
        labels.push(("server_address", key.server_address.clone()));
    }
    labels.push(("server_port", key.server_port.to_string()));
    if !key.error_type.is_empty() {
        labels.push(("error_type", key.error_type.clone()));
    }
    labels
}

/// The duration family of database operations, of clients and servers alike.
pub fn db_duration_family() -> Family {
    Family::new(
        "db_client_operation_duration_seconds",
        "Duration of database operations, from the command written (read, on the server's side) to the last byte of its reply read (written).",
        MetricKind::Histogram,
    )
    .with_unit("seconds")
    .with_otel_name("db.client.operation.duration")
    .with_attributes(DB_OTEL_ATTRIBUTES)
}

/// The semantic conventions' names of the labels `dns_series_labels` adds.
const DNS_OTEL_ATTRIBUTES: &[(&str, &str)] = &[
    ("dns_question_type", "dns.question.type"),
    ("dns_question_name", "dns.question.name"),
    ("server_address", "server.address"),
    ("server_port", "server.port"),
    ("error_type", "error.type"),
];

/// The labels of a DNS lookup series (a client's): `error_type` on failures only.
pub fn dns_series_labels(workloads: &Workloads, owner: &Owner, key: &Exchanges) -> Labels {
    let mut labels = owner.labels(workloads);
    labels.push(("dns_question_type", key.method.clone()));
    labels.push(("dns_question_name", key.route.clone()));
    labels.push(("server_address", key.server_address.clone()));
    labels.push(("server_port", key.server_port.to_string()));
    if !key.error_type.is_empty() {
        labels.push(("error_type", key.error_type.clone()));
    }
    labels
}

/// The duration family of DNS lookups.
pub fn dns_duration_family() -> Family {
    Family::new(
        "dns_lookup_duration_seconds",
        "Duration of DNS lookups, from the query sent to its answer read, or to the timeout.",
        MetricKind::Histogram,
    )
    .with_unit("seconds")
    .with_otel_name("dns.lookup.duration")
    .with_attributes(DNS_OTEL_ATTRIBUTES)
}

/// One series' histograms.
pub struct ExchangeValues {
    pub duration: ClassicHistogram,
    pub request_body: ClassicHistogram,
    pub response_body: ClassicHistogram,
}

/// The duration and body-size families of servers and clients.
pub struct HttpFamilies {
    durations: [(Role, Family); 2],
    /// Role, request (else response) body, family.
    bodies: [(Role, bool, Family); 4],
}

impl HttpFamilies {
    pub fn new() -> Self {
        let histogram = |name, otel_name, help, unit| {
            Family::new(name, help, MetricKind::Histogram)
                .with_unit(unit)
                .with_otel_name(otel_name)
                .with_attributes(OTEL_ATTRIBUTES)
        };
        HttpFamilies {
            durations: [
                (Role::Server, histogram(
                    "http_server_request_duration_seconds",
                    "http.server.request.duration",
                    "Duration of HTTP server requests, from the first byte read to the last byte of the response written.",
                    "seconds",
                )),
                (Role::Client, histogram(
                    "http_client_request_duration_seconds",
                    "http.client.request.duration",
                    "Duration of HTTP client requests, from the request written to the last byte of the response read.",
                    "seconds",
                )),
            ],
            bodies: [
                (Role::Server, true, histogram(
                    "http_server_request_body_size_bytes",
                    "http.server.request.body.size",
                    "Body sizes of HTTP server requests.",
                    "bytes",
                )),
                (Role::Server, false, histogram(
                    "http_server_response_body_size_bytes",
                    "http.server.response.body.size",
                    "Body sizes of HTTP server responses.",
                    "bytes",
                )),
                (Role::Client, true, histogram(
                    "http_client_request_body_size_bytes",
                    "http.client.request.body.size",
                    "Body sizes of HTTP client requests.",
                    "bytes",
                )),
                (Role::Client, false, histogram(
                    "http_client_response_body_size_bytes",
                    "http.client.response.body.size",
                    "Body sizes of HTTP client responses.",
                    "bytes",
                )),
            ],
        }
    }

    /// One series of `role`'s families.
    pub fn push(&mut self, role: Role, labels: &Labels, values: ExchangeValues, created: SystemTime) {
        let ExchangeValues {
            duration,
            request_body,
            response_body,
        } = values;
        for (of, family) in &mut self.durations {
            if *of == role {
                family.push_created(labels.clone(), Value::Histogram(duration.clone()), created);
            }
        }
        for (of, request, family) in &mut self.bodies {
            if *of == role {
                let hist = if *request { &request_body } else { &response_body };
                family.push_created(labels.clone(), Value::Histogram(hist.clone()), created);
            }
        }
    }

    /// The families in their exposition order, `between` after the durations.
    pub fn into_families(self, between: Family) -> Vec<Family> {
        let mut families: Vec<Family> = self.durations.into_iter().map(|(_, f)| f).collect();
        families.push(between);
        families.extend(self.bodies.into_iter().map(|(_, _, f)| f));
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_durations_take_their_semantic_convention_names_over_otlp() {
        let family = db_duration_family();
        assert_eq!(family.otel_metric_name(), "db.client.operation.duration");
        for (label, attribute) in [
            ("db_system_name", "db.system.name"),
            ("db_operation_name", "db.operation.name"),
            ("server_address", "server.address"),
            ("server_port", "server.port"),
            ("error_type", "error.type"),
        ] {
            assert_eq!(family.otel_attribute(label), attribute);
        }
    }
}
