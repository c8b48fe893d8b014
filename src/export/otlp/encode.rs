//! The model in OTLP messages: spans grouped by process, metric families with
//! cumulative temporality, semantic-convention names and units.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::proto::{self, KeyValue};
use crate::model::native::NativeBuckets;
use crate::model::span::{AttributeValue, Span, SpanKind};
use crate::model::{agent_labels, ClassicHistogram, Family, MetricKind, Value};

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
            let name = agent_labels::resource_attribute;
            let mut attributes = vec![
                KeyValue::string(name(agent_labels::SERVICE_NAME), service),
                KeyValue::int(name(agent_labels::PROCESS_PID), i64::from(pid)),
                KeyValue::string(name(agent_labels::PROCESS_EXECUTABLE_NAME), executable),
            ];
            attributes.extend(
                workload
                    .iter()
                    .map(|(label, value)| KeyValue::string(name(label), value)),
            );
            // The process's service name, not the agent's.
            let service_name = name(agent_labels::SERVICE_NAME);
            attributes.extend(extra.iter().filter(|kv| kv.key != service_name).cloned());
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

/// The OpenTelemetry name and unit of a family: the name the family declares (a
/// semantic convention's), else its Prometheus base name; units in UCUM (`s`, `By`).
pub fn metric_name(family: &Family) -> (String, String) {
    let unit = match family.unit {
        Some("seconds") => "s",
        Some("bytes") => "By",
        Some(other) => other,
        None => "",
    };
    (family.otel_metric_name().to_string(), unit.to_string())
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Every family as OTLP metrics, all cumulative: a series' start time is when it
/// started counting, or else `default_start` (the agent's start), so it stays the same
/// from one export to the next. With an `exponential_scale`, a histogram family whose
/// every series has native buckets is an exponential histogram at that scale.
pub fn metrics_request(
    families: &[Family],
    now: SystemTime,
    default_start: SystemTime,
    resource: &[KeyValue],
    exponential_scale: Option<i8>,
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
                    .map(|(k, v)| KeyValue::string(family.otel_attribute(k), v.as_str()))
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
                MetricKind::Histogram if exponential_scale.is_some() && all_native(family) => {
                    let scale = exponential_scale.unwrap_or_default();
                    proto::metric::Data::ExponentialHistogram(proto::ExponentialHistogram {
                        data_points: points
                            .filter_map(|(attributes, start, value)| match value {
                                Value::Histogram(ClassicHistogram {
                                    count,
                                    sum,
                                    native: Some(native),
                                    ..
                                }) => Some(exponential_point(
                                    attributes,
                                    (start, time),
                                    (*count, *sum),
                                    &native.at_schema(scale),
                                )),
                                _ => None,
                            })
                            .collect(),
                        aggregation_temporality: proto::TEMPORALITY_CUMULATIVE,
                    })
                }
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

fn all_native(family: &Family) -> bool {
    family
        .series
        .iter()
        .all(|s| matches!(&s.value, Value::Histogram(h) if h.native.is_some()))
}

/// A point of native buckets: OTLP has no spans, so its buckets are one dense run from
/// the first non-empty bucket to the last.
fn exponential_point(
    attributes: Vec<KeyValue>,
    (start, time): (u64, u64),
    (count, sum): (u64, f64),
    native: &NativeBuckets,
) -> proto::ExponentialHistogramDataPoint {
    let positive = native.dense().map(|(first, counts)| {
        proto::ExponentialBuckets {
            // OTLP's bucket i is (base^i, base^(i+1)]; Prometheus's is one up.
            offset: first - 1,
            bucket_counts: counts,
        }
    });
    proto::ExponentialHistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: time,
        count,
        sum: Some(sum),
        scale: i32::from(native.schema),
        zero_count: native.zero_count,
        positive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClassicHistogram;

    fn keys(attributes: &[KeyValue]) -> Vec<&str> {
        attributes.iter().map(|kv| kv.key.as_str()).collect()
    }

    #[test]
    fn metrics_take_the_names_their_families_give() {
        let mut family = Family::new("x_request_duration_seconds", "X.", MetricKind::Histogram)
            .with_unit("seconds")
            .with_otel_name("x.request.duration")
            .with_attributes(&[("x_route", "x.route")]);
        family.push(
            vec![
                ("process_pid", "7".into()),
                ("k8s_pod_uid", "u".into()),
                ("x_route", "/a".into()),
                ("reason", "r".into()),
            ],
            Value::Histogram(ClassicHistogram {
                bounds: vec![1.0],
                cumulative: vec![1],
                count: 2,
                sum: 3.0,
                native: None,
            }),
        );
        let mut plain = Family::new("x_bytes", "Y.", MetricKind::Counter).with_unit("bytes");
        plain.push(vec![("x_route", "/b".into())], Value::Counter(1.0));
        let request = metrics_request(
            &[family, plain],
            SystemTime::now(),
            SystemTime::UNIX_EPOCH,
            &[],
            None,
        );
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics[0].name, "x.request.duration");
        assert_eq!(metrics[0].unit, "s");
        let Some(proto::metric::Data::Histogram(histogram)) = &metrics[0].data else {
            panic!("a histogram: {:?}", metrics[0].data);
        };
        assert_eq!(
            keys(&histogram.data_points[0].attributes),
            ["process.pid", "k8s.pod.uid", "x.route", "reason"]
        );
        assert_eq!(histogram.data_points[0].bucket_counts, [1, 1]);
        // Without names of its own, a family keeps its Prometheus names.
        assert_eq!(metrics[1].name, "x_bytes");
        assert_eq!(metrics[1].unit, "By");
        let Some(proto::metric::Data::Sum(sum)) = &metrics[1].data else {
            panic!("a sum: {:?}", metrics[1].data);
        };
        assert_eq!(keys(&sum.data_points[0].attributes), ["x_route"]);
    }

    #[test]
    fn span_resources_name_the_workload_as_the_resource_conventions_do() {
        let span = Span::example(
            SpanKind::Server,
            "nginx",
            vec![
                ("container_id", "c".into()),
                ("k8s_namespace_name", "shop".into()),
                ("tenant", "t".into()),
            ],
        );
        let request = traces_request(&[span], &[KeyValue::string("host.name", "h")]);
        let resource = request.resource_spans[0]
            .resource
            .as_ref()
            .expect("a resource");
        assert_eq!(
            keys(&resource.attributes),
            [
                "service.name",
                "process.pid",
                "process.executable.name",
                "container.id",
                "k8s.namespace.name",
                "tenant",
                "host.name"
            ]
        );
    }

    #[test]
    fn native_buckets_become_exponential_histograms_one_index_down() {
        let mut hist = crate::model::native::KernelHistogram::default();
        for nanos in [0, 1_000_000_000, 1_000_000_001, 3_000_000_000] {
            hist.record(nanos);
        }
        let mut family = Family::new("d_seconds", "D.", MetricKind::Histogram).with_unit("seconds");
        family.push(
            vec![("x_route", "/a".into())],
            Value::Histogram(hist.to_classic(&[1_000_000_000], &[1.0])),
        );
        let mut classic_only = Family::new("c_seconds", "C.", MetricKind::Histogram);
        classic_only.push(
            Vec::new(),
            Value::Histogram(ClassicHistogram {
                bounds: vec![1.0],
                cumulative: vec![1],
                count: 1,
                sum: 0.5,
                native: None,
            }),
        );
        let request = metrics_request(
            &[family, classic_only],
            SystemTime::now(),
            SystemTime::UNIX_EPOCH,
            &[],
            Some(0),
        );
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let Some(proto::metric::Data::ExponentialHistogram(exponential)) = &metrics[0].data else {
            panic!("an exponential histogram: {:?}", metrics[0].data);
        };
        let point = &exponential.data_points[0];
        assert_eq!((point.count, point.scale, point.zero_count), (4, 0, 1));
        assert_eq!(point.sum, Some(5.000000001));
        // Prometheus buckets 0 (1 s), 1 (1 s + 1 ns) and 2 (3 s) at schema 0 are OTLP's
        // (base^i, base^(i+1)] buckets -1, 0 and 1.
        let positive = point.positive.as_ref().expect("positive buckets");
        assert_eq!(positive.offset, -1);
        assert_eq!(positive.bucket_counts, vec![1, 1, 1]);
        assert!(matches!(
            metrics[1].data,
            Some(proto::metric::Data::Histogram(_))
        ));
    }
}
