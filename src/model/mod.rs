//! What probes produce and exporters read: metric families, series, histograms and
//! spans; and the one thing exporters write for probes to read, the agent's own
//! connections.
//! Neither probes nor exporters are imported here.

pub mod agent_labels;
pub mod connections;
pub mod histogram;
pub mod layout;
pub mod native;
pub mod profile;
pub mod span;

use std::time::SystemTime;

pub use histogram::ClassicHistogram;

/// The label value of the series that data folds into when a cap is reached.
pub const OVERFLOW: &str = "__overflow__";

/// A real name as a label value, never mistaken for a reserved one: a process that
/// names itself `__overflow__` would otherwise pass for the series that caps fold into.
/// The reserved word followed by any number of `~` gets one `~` more, so real names stay
/// distinct from each other and from the reserved word; every exporter shows the same.
pub fn unreserved(name: &str) -> std::borrow::Cow<'_, str> {
    match name.strip_prefix(OVERFLOW) {
        Some(rest) if rest.bytes().all(|b| b == b'~') => format!("{name}~").into(),
        _ => name.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family. `name` is the Prometheus base name: counters carry no `_total`
/// here (exporters add it as their format requires), histograms no `_bucket`.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    /// Unit as OpenMetrics spells it (`seconds`, `bytes`); the name ends with it.
    pub unit: Option<&'static str>,
    /// The OpenTelemetry name, where a semantic convention gives one
    /// (`http.server.request.duration`); `name` otherwise.
    pub otel_name: Option<&'static str>,
    /// The OpenTelemetry attribute names of the family's own labels, as (label,
    /// attribute); the agent's labels are named in `agent_labels`, and any other label
    /// keeps its own name.
    pub otel_attributes: &'static [(&'static str, &'static str)],
    pub series: Vec<Series>,
}

impl Family {
    pub fn new(name: &'static str, help: &'static str, kind: MetricKind) -> Self {
        Family {
            name,
            help,
            kind,
            unit: None,
            otel_name: None,
            otel_attributes: &[],
            series: Vec::new(),
        }
    }

    /// A counter family of one series per value of its one label: (value, count).
    pub fn counters_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        counts: &[(&str, u64)],
    ) -> Self {
        let mut family = Family::new(name, help, MetricKind::Counter);
        for (value, count) in counts {
            family.push(
                vec![(label, value.to_string())],
                Value::Counter(*count as f64),
            );
        }
        family
    }

    pub fn with_unit(mut self, unit: &'static str) -> Self {
        self.unit = Some(unit);
        self
    }

    pub fn with_otel_name(mut self, name: &'static str) -> Self {
        self.otel_name = Some(name);
        self
    }

    /// Names the family's own labels as OpenTelemetry attributes: (label, attribute).
    pub fn with_attributes(mut self, attributes: &'static [(&'static str, &'static str)]) -> Self {
        self.otel_attributes = attributes;
        self
    }

    /// The name OpenTelemetry exporters give the family.
    pub fn otel_metric_name(&self) -> &'static str {
        self.otel_name.unwrap_or(self.name)
    }

    /// The OpenTelemetry attribute name of a label of the family's series: the
    /// family's own name for it, else the agent's, else the label itself.
    pub fn otel_attribute(&self, label: &'static str) -> &'static str {
        self.otel_attributes
            .iter()
            .find(|(name, _)| *name == label)
            .map(|(_, attribute)| *attribute)
            .or_else(|| agent_labels::otel_attribute(label))
            .unwrap_or(label)
    }

    pub fn push(&mut self, labels: Labels, value: Value) {
        self.series.push(Series {
            labels,
            value,
            created: None,
        });
    }

    pub fn push_created(&mut self, labels: Labels, value: Value, created: SystemTime) {
        self.series.push(Series {
            labels,
            value,
            created: Some(created),
        });
    }
}

/// Label names are fixed by the code; values come from the outside world and are escaped
/// by each exporter.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
pub struct Series {
    pub labels: Labels,
    pub value: Value,
    /// When the series started counting, for OpenMetrics `_created` and OTLP start times.
    pub created: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram(ClassicHistogram),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_names_never_pass_for_the_overflow_series() {
        assert_eq!(unreserved("__overflow__"), "__overflow__~");
        assert_eq!(unreserved("__overflow__~"), "__overflow__~~");
        assert_eq!(unreserved("__overflow__x"), "__overflow__x");
        assert_eq!(unreserved("nginx"), "nginx");
    }

    #[test]
    fn a_family_names_its_own_labels_and_the_agent_names_its_own() {
        let family = Family::new("d_seconds", "D.", MetricKind::Histogram)
            .with_otel_name("d.duration")
            .with_attributes(&[("route", "http.route"), ("process_pid", "own.pid")]);
        assert_eq!(family.otel_metric_name(), "d.duration");
        assert_eq!(family.otel_attribute("route"), "http.route");
        // The family's own name wins, even for a label the agent names too.
        assert_eq!(family.otel_attribute("process_pid"), "own.pid");
        assert_eq!(family.otel_attribute("container_id"), "container.id");
        assert_eq!(family.otel_attribute("reason"), "reason");
        let plain = Family::new("syscalls", "S.", MetricKind::Counter);
        assert_eq!(plain.otel_metric_name(), "syscalls");
        assert_eq!(plain.otel_attribute("process_pid"), "process.pid");
    }
}
