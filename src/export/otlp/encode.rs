//! The model in OTLP messages: spans grouped by process, metric families with
//! cumulative temporality, semantic-convention names and units.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::proto::{self, KeyValue};
use crate::model::span::{AttributeValue, Span, SpanKind};
use crate::model::{Family, MetricKind, Value};

pub fn scope() -> proto::InstrumentationScope {
    proto::InstrumentationScope {
        name: "periscope".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Spans grouped into one `ResourceSpans` per process; `extra` are resource attributes
/// every process carries (`host.name`, `OTEL_RESOURCE_ATTRIBUTES`).
pub fn traces_request(spans: &[Span], extra: &[KeyValue]) -> proto::ExportTraceServiceRequest {
    type ProcessKey<'a> = (u32, &'a str, &'a str, &'a crate::model::Labels);
    let mut by_process: BTreeMap<ProcessKey, Vec<proto::Span>> = BTreeMap::new();
    for span in spans {
        let resource = &span.resource;
        by_process
            .entry((
                resource.pid,
                resource.service_name.as_str(),
                resource.executable_name.as_str(),
                &resource.workload,
            ))
            .or_default()
            .push(span_message(span));
    }
    let resource_spans = by_process
        .into_iter()
        .map(|((pid, service, executable, workload), spans)| {
            let mut attributes = vec![
                KeyValue::string("service.name", service),
                KeyValue::int("process.pid", i64::from(pid)),
                KeyValue::string("process.executable.name", executable),
            ];
            attributes.extend(
                workload
                    .iter()
                    .map(|(label, value)| KeyValue::string(&attribute_name(label), value)),
            );
            attributes.extend(extra.iter().filter(|kv| kv.key != "service.name").cloned());
            proto::ResourceSpans {
                resource: Some(proto::Resource { attributes }),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    proto::ExportTraceServiceRequest { resource_spans }
}

fn span_message(span: &Span) -> proto::Span {
    let mut flags = proto::SPAN_FLAGS_SAMPLED | proto::SPAN_FLAGS_HAS_IS_REMOTE;
    // A server span's parent came over the network; a client span's is local.
    if span.kind == SpanKind::Server && span.parent_span_id.is_some() {
        flags |= proto::SPAN_FLAGS_IS_REMOTE;
    }
    proto::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: span.trace_state.clone(),
        parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: span.name.clone(),
        kind: match span.kind {
            SpanKind::Server => proto::SPAN_KIND_SERVER,
            SpanKind::Client => proto::SPAN_KIND_CLIENT,
        },
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns,
        attributes: span
            .attributes
            .iter()
            .map(|(key, value)| match value {
                AttributeValue::Str(s) => KeyValue::string(key, s.as_str()),
                AttributeValue::Int(i) => KeyValue::int(key, *i),
            })
            .collect(),
        status: span.error.then(|| proto::Status {
            message: String::new(),
            code: proto::STATUS_CODE_ERROR,
        }),
        flags,
    }
}

/// The OpenTelemetry name and unit of a family: the semantic-convention name where one
/// exists, the Prometheus base name otherwise; units in UCUM (`s`, `By`).
pub fn metric_name(family: &Family) -> (String, String) {
    let semconv = match family.name {
        "http_server_request_duration_seconds" => Some("http.server.request.duration"),
        "http_client_request_duration_seconds" => Some("http.client.request.duration"),
        "http_server_request_body_size_bytes" => Some("http.server.request.body.size"),
        "http_server_response_body_size_bytes" => Some("http.server.response.body.size"),
        "http_client_request_body_size_bytes" => Some("http.client.request.body.size"),
        "http_client_response_body_size_bytes" => Some("http.client.response.body.size"),
        _ => None,
    };
    let unit = match family.unit {
        Some("seconds") => "s",
        Some("bytes") => "By",
        Some(other) => other,
        None => "",
    };
    (
        semconv.map_or_else(|| family.name.to_string(), str::to_string),
        unit.to_string(),
    )
}

/// The OpenTelemetry attribute name of a Prometheus label.
pub fn attribute_name(label: &str) -> String {
    match label {
        "http_request_method" => "http.request.method".into(),
        "http_response_status_code" => "http.response.status_code".into(),
        "http_route" => "http.route".into(),
        "server_address" => "server.address".into(),
        "server_port" => "server.port".into(),
        "url_scheme" => "url.scheme".into(),
        "process_pid" => "process.pid".into(),
        "process_executable_name" => "process.executable.name".into(),
        "service_name" => "service.name".into(),
        "container_id" => "container.id".into(),
        "container_name" => "container.name".into(),
        "k8s_namespace_name" => "k8s.namespace.name".into(),
        "k8s_pod_name" => "k8s.pod.name".into(),
        "k8s_pod_uid" => "k8s.pod.uid".into(),
        "k8s_container_name" => "k8s.container.name".into(),
        other => other.to_string(),
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Every family as OTLP metrics, all cumulative: a series' start time is when it
/// started counting, or else `default_start` (the agent's start), so it stays the same
/// from one export to the next.
pub fn metrics_request(
    families: &[Family],
    now: SystemTime,
    default_start: SystemTime,
    resource: &[KeyValue],
) -> proto::ExportMetricsServiceRequest {
    let time = unix_nanos(now);
    let default_start = unix_nanos(default_start);
    let metrics = families
        .iter()
        .filter(|f| !f.series.is_empty())
        .map(|family| {
            let (name, unit) = metric_name(family);
            let points = family.series.iter().map(|series| {
                let attributes: Vec<KeyValue> = series
                    .labels
                    .iter()
                    .map(|(k, v)| KeyValue::string(&attribute_name(k), v.as_str()))
                    .collect();
                let start = series.created.map_or(default_start, unix_nanos);
                (attributes, start, &series.value)
            });
            let number = |(attributes, start, value): (Vec<KeyValue>, u64, &Value)| {
                let v = match value {
                    Value::Counter(v) | Value::Gauge(v) => *v,
                    Value::Histogram(h) => h.count as f64,
                };
                proto::NumberDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    value: Some(proto::number_data_point::Value::AsDouble(v)),
                }
            };
            let data = match family.kind {
                MetricKind::Counter => proto::metric::Data::Sum(proto::Sum {
                    data_points: points.map(number).collect(),
                    aggregation_temporality: proto::TEMPORALITY_CUMULATIVE,
                    is_monotonic: true,
                }),
                MetricKind::Gauge => proto::metric::Data::Gauge(proto::Gauge {
                    data_points: points
                        .map(|(a, _, v)| number((a, 0, v)))
                        .map(|mut p| {
                            p.start_time_unix_nano = 0;
                            p
                        })
                        .collect(),
                }),
                MetricKind::Histogram => proto::metric::Data::Histogram(proto::Histogram {
                    data_points: points
                        .filter_map(|(attributes, start, value)| match value {
                            Value::Histogram(h) => {
                                // Prometheus buckets are cumulative; OTLP's are not, and
                                // have one more: above the last bound.
                                let mut counts = Vec::with_capacity(h.cumulative.len() + 1);
                                let mut below = 0;
                                for c in h.cumulative.iter().chain(std::iter::once(&h.count)) {
                                    counts.push(c.saturating_sub(below));
                                    below = *c;
                                }
                                Some(proto::HistogramDataPoint {
                                    attributes,
                                    start_time_unix_nano: start,
                                    time_unix_nano: time,
                                    count: h.count,
                                    sum: Some(h.sum),
                                    bucket_counts: counts,
                                    explicit_bounds: h.bounds.clone(),
                                })
                            }
                            _ => None,
                        })
                        .collect(),
                    aggregation_temporality: proto::TEMPORALITY_CUMULATIVE,
                }),
            };
            proto::Metric {
                name,
                description: family.help.to_string(),
                unit,
                data: Some(data),
            }
        })
        .collect();
    proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            resource: Some(proto::Resource {
                attributes: resource.to_vec(),
            }),
            scope_metrics: vec![proto::ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}
