//! The Prometheus protobuf exposition: length-delimited `io.prometheus.client.MetricFamily`
//! messages, as scrapers with native histograms on ask for first. The messages follow the
//! field numbers of client_model's `metrics.proto` (proto2).

use prost::Message;

use crate::model::native::{self, NativeBuckets};
use crate::model::{ClassicHistogram, Family, MetricKind, Series, Value};

pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Counter {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    /// Inclusive.
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    /// Gap to the previous span, or the first span's starting index.
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Classic buckets, by increasing upper bound; +Inf is left out.
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Each bucket's count as the difference from the previous bucket's.
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// Every family, each a length-delimited message; histograms with native buckets are
/// native histograms at `native_schema` too (None: classic only).
pub fn encode(families: &[Family], native_schema: Option<i8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    for family in families {
        // Writing into a Vec cannot run out of room.
        let _ = message(family, native_schema).encode_length_delimited(&mut out);
    }
    out
}

fn message(family: &Family, native_schema: Option<i8>) -> MetricFamily {
    let (kind, name) = match family.kind {
        // Named as its samples are in the text format: the scraper adds nothing.
        MetricKind::Counter => (MetricType::Counter, format!("{}_total", family.name)),
        MetricKind::Gauge => (MetricType::Gauge, family.name.to_string()),
        MetricKind::Histogram => (MetricType::Histogram, family.name.to_string()),
    };
    MetricFamily {
        name: Some(name),
        help: Some(family.help.to_string()),
        r#type: Some(kind as i32),
        metric: family
            .series
            .iter()
            .map(|series| metric(series, native_schema))
            .collect(),
    }
}

fn metric(series: &Series, native_schema: Option<i8>) -> Metric {
    let mut metric = Metric {
        label: series
            .labels
            .iter()
            .map(|(name, value)| LabelPair {
                name: Some(name.to_string()),
                value: Some(value.clone()),
            })
            .collect(),
        ..Metric::default()
    };
    match &series.value {
        Value::Counter(v) => metric.counter = Some(Counter { value: Some(*v) }),
        Value::Gauge(v) => metric.gauge = Some(Gauge { value: Some(*v) }),
        Value::Histogram(h) => metric.histogram = Some(histogram(h, native_schema)),
    }
    metric
}

/// Empty buckets between non-empty ones are sent as zero deltas up to this many in a
/// row, which costs less than starting a new span.
const MAX_FILLED_GAP: i32 = 2;

fn histogram(h: &ClassicHistogram, native_schema: Option<i8>) -> Histogram {
    let mut histogram = Histogram {
        sample_count: Some(h.count),
        sample_sum: Some(h.sum),
        bucket: h
            .bounds
            .iter()
            .zip(&h.cumulative)
            .map(|(bound, count)| Bucket {
                cumulative_count: Some(*count),
                upper_bound: Some(*bound),
            })
            .collect(),
        ..Histogram::default()
    };
    if let (Some(schema), Some(native)) = (native_schema, &h.native) {
        add_native(&mut histogram, &native.at_schema(schema));
    }
    histogram
}

fn add_native(histogram: &mut Histogram, native: &NativeBuckets) {
    histogram.schema = Some(i32::from(native.schema));
    histogram.zero_threshold = Some(native::ZERO_THRESHOLD);
    histogram.zero_count = Some(native.zero_count);
    histogram.positive_delta.reserve(native.buckets.len());
    // Where the last span ends (one past its last bucket), and its last count.
    let mut end: Option<i32> = None;
    let mut previous = 0i64;
    for &(index, count) in &native.buckets {
        match (end, histogram.positive_span.last_mut()) {
            (Some(at), Some(span)) if index - at <= MAX_FILLED_GAP => {
                for _ in at..index {
                    histogram.positive_delta.push(-previous);
                    previous = 0;
                }
                span.length = Some(span.length.unwrap_or(0) + (index - at) as u32 + 1);
            }
            _ => histogram.positive_span.push(BucketSpan {
                offset: Some(index - end.unwrap_or(0)),
                length: Some(1),
            }),
        }
        let count = count as i64;
        histogram.positive_delta.push(count - previous);
        previous = count;
        end = Some(index + 1);
    }
    if histogram.positive_span.is_empty() {
        // No observation above zero yet: an empty span still marks the histogram native.
        histogram.positive_span.push(BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
}

/// The families of an exposition, for tests and tools.
pub fn decode(mut bytes: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut families = Vec::new();
    while !bytes.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut bytes)?);
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    #[test]
    fn families_round_trip_with_counters_named_as_their_samples() {
        let mut counter = Family::new(
            "periscope_things",
            "Things \"seen\"\n.",
            MetricKind::Counter,
        );
        counter.push(vec![("comm", "a\"b\\c\nd".into())], Value::Counter(3.0));
        let mut histogram = Family::new("latency_seconds", "Latency.", MetricKind::Histogram);
        histogram.push(
            Vec::new(),
            Value::Histogram(ClassicHistogram {
                bounds: vec![0.001, 0.01],
                cumulative: vec![2, 5],
                count: 7,
                sum: 0.5,
                native: None,
            }),
        );
        let decoded = decode(&encode(&[counter, histogram], Some(3))).expect("decodes");
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].name.as_deref(), Some("periscope_things_total"));
        assert_eq!(decoded[0].r#type, Some(MetricType::Counter as i32));
        let label = &decoded[0].metric[0].label[0];
        assert_eq!(label.value.as_deref(), Some("a\"b\\c\nd"));
        assert_eq!(
            decoded[0].metric[0].counter.as_ref().and_then(|c| c.value),
            Some(3.0)
        );
        let h = decoded[1].metric[0]
            .histogram
            .as_ref()
            .expect("a histogram");
        assert_eq!((h.sample_count, h.sample_sum), (Some(7), Some(0.5)));
        assert_eq!(h.bucket.len(), 2, "+Inf is left out");
        assert_eq!(h.bucket[1].cumulative_count, Some(5));
        assert_eq!(h.bucket[1].upper_bound, Some(0.01));
    }

    /// The (index, count) pairs a scraper reads back from spans and deltas.
    fn native_buckets_of(h: &Histogram) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let mut deltas = h.positive_delta.iter();
        let (mut index, mut count) = (0i32, 0i64);
        for span in &h.positive_span {
            index += span.offset.unwrap_or(0);
            for _ in 0..span.length.unwrap_or(0) {
                count += deltas.next().expect("a delta per bucket");
                if count > 0 {
                    out.push((index, count as u64));
                }
                index += 1;
            }
        }
        assert!(deltas.next().is_none(), "no delta beyond the spans");
        out
    }

    fn duration_family(hist: &crate::model::native::KernelHistogram) -> Family {
        let mut family = Family::new("d_seconds", "D.", MetricKind::Histogram);
        family.push(
            Vec::new(),
            Value::Histogram(hist.to_classic(&[1_000_000, 1_000_000_000], &[0.001, 1.0])),
        );
        family
    }

    #[test]
    fn native_buckets_round_trip_through_spans_and_deltas_at_every_schema() {
        let mut hist = crate::model::native::KernelHistogram::default();
        hist.record(0);
        // Far apart and side by side: gaps filled with zeros and gaps that start spans.
        for nanos in [
            1,
            2,
            3,
            1_000,
            1_001,
            1_100,
            999_999,
            1_000_000_000,
            5 << 40,
        ] {
            hist.record(nanos);
        }
        for _ in 0..1_000 {
            hist.record(1_234_567);
        }
        let family = duration_family(&hist);
        for schema in -4..=3i8 {
            let decoded =
                decode(&encode(std::slice::from_ref(&family), Some(schema))).expect("decodes");
            let h = decoded[0].metric[0]
                .histogram
                .as_ref()
                .expect("a histogram");
            let expected = hist.native().at_schema(schema).into_owned();
            assert_eq!(h.schema, Some(i32::from(schema)));
            assert_eq!(h.zero_count, Some(1));
            assert_eq!(native_buckets_of(h), expected.buckets, "schema {schema}");
            assert_eq!(h.sample_count, Some(1_010));
            assert_eq!(h.bucket.len(), 2, "classic buckets stay beside native ones");
            assert_eq!(h.bucket[0].cumulative_count, Some(7));
        }
        let classic_only = decode(&encode(&[family], None)).expect("decodes");
        let h = classic_only[0].metric[0]
            .histogram
            .as_ref()
            .expect("a histogram");
        assert!(h.schema.is_none() && h.positive_span.is_empty());
    }

    #[test]
    fn an_empty_native_histogram_is_still_native() {
        let family = duration_family(&crate::model::native::KernelHistogram::default());
        let decoded = decode(&encode(&[family], Some(3))).expect("decodes");
        let h = decoded[0].metric[0]
            .histogram
            .as_ref()
            .expect("a histogram");
        assert!(h.zero_threshold.is_some_and(|t| t > 0.0 && t < 1e-9));
        assert_eq!(h.positive_span.len(), 1);
        assert!(h.positive_delta.is_empty());
    }
}
