//! The Prometheus text format 0.0.4 and OpenMetrics 1.0 text format, and the choice
//! between them and the protobuf format by the scraper's Accept header.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{ClassicHistogram, Family, MetricKind, Series, Value};

/// The formats `/metrics` serves; the values index per-format counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text004 = 0,
    OpenMetrics = 1,
    /// Length-delimited `io.prometheus.client.MetricFamily` messages (`protobuf.rs`).
    Protobuf = 2,
}

impl Format {
    /// The format the client prefers of those it accepts, by `q` and then by order (as
    /// Prometheus lists them, most wanted first); the 0.0.4 text format when it names
    /// none of ours.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text004;
        };
        let mut best: Option<(f32, Format)> = None;
        for part in accept.split(',') {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            let params: Vec<&str> = params.collect();
            let param = |name: &str| {
                params.iter().find_map(|p| {
                    let (key, value) = p.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.trim().trim_matches('"'))
                })
            };
            let q = param("q")
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = if media.eq_ignore_ascii_case("application/openmetrics-text") {
                Format::OpenMetrics
            } else if media.eq_ignore_ascii_case("application/vnd.google.protobuf")
                && param("proto") == Some("io.prometheus.client.MetricFamily")
                && param("encoding") == Some("delimited")
            {
                Format::Protobuf
            } else if media.eq_ignore_ascii_case("text/plain") {
                Format::Text004
            } else {
                continue;
            };
            if q > 0.0 && best.is_none_or(|(best_q, _)| q > best_q) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Text004, |(_, format)| format)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Protobuf => super::protobuf::CONTENT_TYPE,
        }
    }
}

/// The exposition of `families` in `format`; in protobuf, histograms with native buckets
/// are native histograms at `native_schema` too, unless it is None.
pub fn encode_bytes(families: &[Family], format: Format, native_schema: Option<i8>) -> Vec<u8> {
    match format {
        Format::Protobuf => super::protobuf::encode(families, native_schema),
        text => encode(families, text).into_bytes(),
    }
}

/// A text exposition (the protobuf one is `encode_bytes`'s).
pub fn encode(families: &[Family], format: Format) -> String {
    let mut out = String::with_capacity(64 * 1024);
    for family in families {
        encode_family(&mut out, family, format);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn encode_family(out: &mut String, family: &Family, format: Format) {
    let kind = match family.kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    };
    // In 0.0.4 a counter's family is named like its sample (with _total); in OpenMetrics
    // the family has no suffix and its samples add _total and _created.
    let family_name = match (format, family.kind) {
        (Format::Text004, MetricKind::Counter) => format!("{}_total", family.name),
        _ => family.name.to_string(),
    };
    let _ = writeln!(out, "# HELP {family_name} {}", escape_help(family.help));
    let _ = writeln!(out, "# TYPE {family_name} {kind}");
    if format == Format::OpenMetrics {
        if let Some(unit) = family.unit {
            let _ = writeln!(out, "# UNIT {family_name} {unit}");
        }
    }
    for series in &family.series {
        encode_series(out, family.name, series, format);
    }
}

fn encode_series(out: &mut String, name: &str, series: &Series, format: Format) {
    let created = match (format, series.created) {
        (Format::OpenMetrics, Some(at)) => Some(unix_seconds(at)),
        _ => None,
    };
    match &series.value {
        Value::Counter(v) => {
            sample(out, name, "_total", series, None, *v);
            if let Some(at) = created {
                sample(out, name, "_created", series, None, at);
            }
        }
        Value::Gauge(v) => sample(out, name, "", series, None, *v),
        Value::Histogram(h) => {
            encode_histogram(out, name, series, h);
            if let Some(at) = created {
                sample(out, name, "_created", series, None, at);
            }
        }
    }
}

fn encode_histogram(out: &mut String, name: &str, series: &Series, h: &ClassicHistogram) {
    for (bound, count) in h.bounds.iter().zip(&h.cumulative) {
        sample(
            out,
            name,
            "_bucket",
            series,
            Some(&canonical_float(*bound)),
            *count as f64,
        );
    }
    sample(out, name, "_bucket", series, Some("+Inf"), h.count as f64);
    sample(out, name, "_sum", series, None, h.sum);
    sample(out, name, "_count", series, None, h.count as f64);
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    series: &Series,
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !series.labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let le_label = le.map(|v| ("le", v));
        for (label, value) in series
            .labels
            .iter()
            .map(|(l, v)| (*l, v.as_str()))
            .chain(le_label)
        {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

/// Escapes a label value so that no byte of it can end the value or the line.
pub fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Integers print without a fraction; other values in shortest round-trip form.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        return format!("{}", v as i64);
    }
    canonical_float(v)
}

/// The canonical float text OpenMetrics wants for `le` values: shortest round-trip digits,
/// always with a fraction or exponent, exponents for very small or large magnitudes
/// (`1e-06`, `0.0001`, `1.0`, `2.5`).
pub fn canonical_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v.is_nan() {
        return "NaN".into();
    }
    if v == 0.0 {
        return "0.0".into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..16).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let plain = format!("{v}");
    if plain.contains('.') {
        plain
    } else {
        format!("{plain}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, MetricKind, Value};

    fn counter_family() -> Family {
        let mut family = Family::new("syscalls", "Syscalls completed.", MetricKind::Counter);
        family.push_created(
            vec![("process_executable_name", "a\"b\\c{d}\ne".to_string())],
            Value::Counter(3.0),
            UNIX_EPOCH + std::time::Duration::from_millis(1_500),
        );
        family
    }

    #[test]
    fn text_format_names_counters_with_total() {
        let text = encode(&[counter_family()], Format::Text004);
        assert_eq!(
            text,
            "# HELP syscalls_total Syscalls completed.\n# TYPE syscalls_total counter\n\
             syscalls_total{process_executable_name=\"a\\\"b\\\\c{d}\\ne\"} 3\n"
        );
    }

    #[test]
    fn openmetrics_has_created_and_eof() {
        let text = encode(&[counter_family()], Format::OpenMetrics);
        assert!(text.starts_with("# HELP syscalls Syscalls completed.\n# TYPE syscalls counter\n"));
        assert!(
            text.contains("syscalls_created{process_executable_name=\"a\\\"b\\\\c{d}\\ne\"} 1.5\n")
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histogram_has_inf_bucket_sum_and_count() {
        let mut family = Family::new("d_seconds", "D.", MetricKind::Histogram).with_unit("seconds");
        family.push(
            vec![],
            Value::Histogram(ClassicHistogram {
                bounds: vec![0.000001, 1.0],
                cumulative: vec![1, 2],
                count: 3,
                sum: 2.5,
                native: None,
            }),
        );
        let text = encode(&[family], Format::OpenMetrics);
        assert!(text.contains("# UNIT d_seconds seconds\n"));
        assert!(text.contains("d_seconds_bucket{le=\"1e-06\"} 1\n"));
        assert!(text.contains("d_seconds_bucket{le=\"1.0\"} 2\n"));
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("d_seconds_sum 2.5\n"));
        assert!(text.contains("d_seconds_count 3\n"));
    }

    #[test]
    fn canonical_floats_match_openmetrics_parsers() {
        for (value, text) in [
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (0.00005, "5e-05"),
            (0.0000025, "2.5e-06"),
            (2.5, "2.5"),
            (10.0, "10.0"),
            (1e16, "1e+16"),
        ] {
            assert_eq!(canonical_float(value), text, "{value:e}");
        }
    }

    #[test]
    fn negotiation_follows_accept() {
        assert_eq!(Format::negotiate(None), Format::Text004);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text004);
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text004
        );
        // Prometheus with native histograms on asks for protobuf first.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(native)), Format::Protobuf);
        // By q, not by order; and only the delimited MetricFamily stream is protobuf here.
        let text_first = "text/plain;q=0.9,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.95";
        assert_eq!(Format::negotiate(Some(text_first)), Format::Protobuf);
        let other =
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text";
        assert_eq!(Format::negotiate(Some(other)), Format::Text004);
        assert_eq!(Format::negotiate(Some(";;,,=;q=x")), Format::Text004);
    }

    #[test]
    fn values_print_integers_plainly() {
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(0.5), "0.5");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
    }
}
