//! Periscope's YAML configuration. Every field has a default, so no file is needed;
//! unknown keys are errors, and every error names the file, line and key.

mod error;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;

use std::sync::LazyLock;

use serde::Deserialize;

pub use crate::kernel::stats::StatsMode;
pub use crate::probes::{ProbesConfig, ProcessesConfig};
pub use error::ConfigError;

use crate::enrich::tenant::TenantsConfig;
use crate::enrich::workload::WorkloadsConfig;
use crate::probes::BUILT_IN;
use crate::settings::{check_window, nonzero, Invalid, Range, DAY};

/// The settings outside the probes; each probe's own come from its folder.
const BASE_DEFAULT_YAML: &str = include_str!("default.yaml");

/// The configuration used when no file is given, as a user would write it: the base
/// settings, then each built-in probe's documented defaults.
pub static DEFAULT_CONFIG_YAML: LazyLock<String> =
    LazyLock::new(|| format!("{BASE_DEFAULT_YAML}{}", crate::probes::default_yaml()));

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Prometheus pull endpoint.
    pub prometheus: PrometheusConfig,
    /// How processes become labels, and what happens to the series of those that exit.
    pub processes: ProcessesConfig,
    /// Each built-in probe's settings.
    pub probes: ProbesConfig,
    /// The agent's own metrics.
    pub self_metrics: SelfMetricsConfig,
    /// Spans of the requests probes see.
    pub traces: TracesConfig,
    /// Where metrics and spans are pushed, besides the Prometheus endpoint.
    pub exporters: ExportersConfig,
    /// Container, pod and service labels on per-process series.
    pub workloads: WorkloadsConfig,
    /// Tenants: who a workload belongs to, each with its own series cap.
    pub tenants: TenantsConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Make a span of every HTTP request the http probe sees.
    pub enabled: bool,
    /// Which spans are kept (the OpenTelemetry SDK samplers; `OTEL_TRACES_SAMPLER`
    /// overrides it).
    pub sampler: SamplerName,
    /// The ratio of the ratio samplers (`OTEL_TRACES_SAMPLER_ARG` overrides it).
    pub sampler_arg: f64,
    /// Spans waiting for the exporters, at most; beyond, the oldest are dropped and
    /// counted in `periscope_spans_dropped_total`.
    pub queue_spans: NonZeroU32,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            enabled: false,
            sampler: SamplerName::ParentbasedAlwaysOn,
            sampler_arg: 1.0,
            queue_spans: nonzero(65536),
        }
    }
}

impl TracesConfig {
    pub fn sampler(&self) -> crate::model::span::Sampler {
        use crate::model::span::{RootSampler, Sampler};
        let ratio = self.sampler_arg.clamp(0.0, 1.0);
        match self.sampler {
            SamplerName::AlwaysOn => Sampler::AlwaysOn,
            SamplerName::AlwaysOff => Sampler::AlwaysOff,
            SamplerName::Traceidratio => Sampler::TraceIdRatio(ratio),
            SamplerName::ParentbasedAlwaysOn => Sampler::ParentBased(RootSampler::AlwaysOn),
            SamplerName::ParentbasedAlwaysOff => Sampler::ParentBased(RootSampler::AlwaysOff),
            SamplerName::ParentbasedTraceidratio => {
                Sampler::ParentBased(RootSampler::TraceIdRatio(ratio))
            }
        }
    }

    /// Applies `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(name) = env("OTEL_TRACES_SAMPLER") {
            self.sampler = SamplerName::deserialize(serde::de::value::StrDeserializer::<
                serde::de::value::Error,
            >::new(name.trim()))
            .map_err(|_| {
                format!("OTEL_TRACES_SAMPLER: unknown sampler {name:?} (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")
            })?;
        }
        if let Some(arg) = env("OTEL_TRACES_SAMPLER_ARG") {
            let ratio: f64 = arg
                .trim()
                .parse()
                .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG: {arg:?} is not a number"))?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG: {ratio} is outside [0, 1]"
                ));
            }
            self.sampler_arg = ratio;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerName {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExportersConfig {
    pub jsonl: JsonLinesConfig,
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Push spans and metrics over OTLP. Setting `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
    /// per-signal variables) turns it on.
    pub enabled: bool,
    /// Base URL: `/v1/traces` and `/v1/metrics` are appended (http/protobuf); the
    /// receiver's address (grpc). Empty: `http://127.0.0.1:4318` for http/protobuf,
    /// `http://127.0.0.1:4317` for grpc.
    pub endpoint: String,
    /// Full URLs per signal, used as given (empty: from `endpoint`).
    pub traces_endpoint: String,
    pub metrics_endpoint: String,
    /// `http/protobuf` or `grpc`.
    pub protocol: String,
    /// Extra request headers (authentication).
    pub headers: std::collections::BTreeMap<String, String>,
    /// `gzip` or `none`.
    pub compression: String,
    pub timeout_secs: u64,
    /// A metrics export this often; 0: no metrics.
    pub metrics_interval_secs: u64,
    /// Spans per request, at most.
    pub batch_spans: NonZeroU32,
    /// A failing export is retried for this long, then its data is dropped and counted.
    pub max_retry_secs: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: false,
            endpoint: String::new(),
            traces_endpoint: String::new(),
            metrics_endpoint: String::new(),
            protocol: "http/protobuf".into(),
            headers: Default::default(),
            compression: "gzip".into(),
            timeout_secs: 10,
            metrics_interval_secs: 60,
            batch_spans: nonzero(512),
            max_retry_secs: 60,
        }
    }
}

impl OtlpConfig {
    /// The base endpoint, defaulted by protocol.
    pub fn base_endpoint(&self) -> &str {
        match (self.endpoint.as_str(), self.protocol.as_str()) {
            ("", "grpc") => "http://127.0.0.1:4317",
            ("", _) => "http://127.0.0.1:4318",
            (endpoint, _) => endpoint,
        }
    }

    /// Applies the standard `OTEL_EXPORTER_OTLP_*` and `OTEL_METRIC_EXPORT_INTERVAL`
    /// variables from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(endpoint) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.endpoint = endpoint.trim().to_string();
            self.enabled = true;
        }
        if let Some(endpoint) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.traces_endpoint = endpoint.trim().to_string();
            self.enabled = true;
        }
        if let Some(endpoint) = set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            self.metrics_endpoint = endpoint.trim().to_string();
            self.enabled = true;
        }
        if let Some(protocol) = set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            self.protocol = protocol.trim().to_string();
        }
        if let Some(headers) = set("OTEL_EXPORTER_OTLP_HEADERS") {
            self.headers
                .extend(crate::export::otlp::parse_headers(&headers));
        }
        if let Some(compression) = set("OTEL_EXPORTER_OTLP_COMPRESSION") {
            self.compression = compression.trim().to_string();
        }
        let millis = |name: &str| -> Result<Option<u64>, String> {
            set(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{name}: {v:?} is not a number of milliseconds"))
                })
                .transpose()
        };
        if let Some(ms) = millis("OTEL_EXPORTER_OTLP_TIMEOUT")? {
            self.timeout_secs = ms.div_ceil(1000).max(1);
        }
        if let Some(ms) = millis("OTEL_METRIC_EXPORT_INTERVAL")? {
            self.metrics_interval_secs = ms.div_ceil(1000);
        }
        self.check()
            .map_err(|(key, message)| format!("{key} (from the environment): {message}"))
    }

    /// What serde cannot check: the protocol, the compression, and the URLs; returns
    /// the key to blame and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.protocol != "http/protobuf" && self.protocol != "grpc" {
            return Err((
                "exporters.otlp.protocol",
                format!("{:?}: use \"http/protobuf\" or \"grpc\"", self.protocol),
            ));
        }
        if self.compression != "gzip" && self.compression != "none" {
            return Err((
                "exporters.otlp.compression",
                format!("{:?}: use \"gzip\" or \"none\"", self.compression),
            ));
        }
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::try_from(name.as_str()).is_err()
                || hyper::header::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err((
                    "exporters.otlp.headers",
                    format!("{name:?} is not a valid HTTP header name and value"),
                ));
            }
        }
        for (key, url) in [
            ("exporters.otlp.endpoint", &self.endpoint),
            ("exporters.otlp.traces_endpoint", &self.traces_endpoint),
            ("exporters.otlp.metrics_endpoint", &self.metrics_endpoint),
        ] {
            if !url.is_empty() {
                crate::export::otlp::Endpoint::parse(url).map_err(|e| (key, e))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonLinesConfig {
    /// Write spans and metric snapshots as JSON lines (docs/jsonl-schema.md).
    pub enabled: bool,
    /// A file, or `-` for standard output.
    pub path: String,
    /// A file is rotated when it reaches this size: `path` becomes `path.1`, and so on.
    pub max_file_bytes: NonZeroU32,
    /// Rotated files kept, at most.
    pub max_files: u32,
    /// A snapshot of every metric this often; 0: spans only.
    pub metrics_interval_secs: u64,
    /// Permissions of the files, in octal; never world-writable.
    pub file_mode: String,
}

impl JsonLinesConfig {
    /// `file_mode` as permission bits; None when it is not octal or allows others to
    /// write.
    pub fn mode(&self) -> Option<u32> {
        u32::from_str_radix(self.file_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777 && mode & 0o002 == 0)
    }
}

impl Default for JsonLinesConfig {
    fn default() -> Self {
        JsonLinesConfig {
            enabled: false,
            path: "-".into(),
            max_file_bytes: nonzero(100 << 20),
            max_files: 5,
            metrics_interval_secs: 60,
            file_mode: "0640".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelfMetricsConfig {
    /// Kernel run-time statistics of our BPF programs: `always`, `sampled` or `off`.
    /// They cost about as much as the syscalls probe itself, hence sampled by default.
    pub bpf_stats: StatsMode,
    /// In `sampled` mode, statistics are on for this long...
    pub bpf_stats_sample_secs: u64,
    /// ...once in each period of this length.
    pub bpf_stats_period_secs: u64,
}

impl Default for SelfMetricsConfig {
    fn default() -> Self {
        SelfMetricsConfig {
            bpf_stats: StatsMode::Sampled,
            bpf_stats_sample_secs: 5,
            bpf_stats_period_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Address and port `/metrics`, `/healthz` and `/readyz` are served on.
    pub listen_address: SocketAddr,
    /// Open connections at most; when a new one comes, the one idle longest is closed.
    pub max_connections: NonZeroU32,
    /// Time a client has to send a request head, counted from the connection's start or
    /// its last response: keep-alive connections idle longer are closed.
    pub header_read_timeout_secs: u64,
    /// The Prometheus exporter-toolkit web configuration (TLS, basic auth); empty:
    /// plain HTTP without authentication. `--web.config.file` overrides it.
    pub web_config_file: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            listen_address: SocketAddr::from(([0, 0, 0, 0], 9101)),
            max_connections: NonZeroU32::new(256).expect("256 is not zero"),
            header_read_timeout_secs: 10,
            web_config_file: String::new(),
        }
    }
}

/// A configuration file is a few kilobytes; anything near this is not one.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Deepest nesting of flow collections (`[` and `{`) a configuration may have: ours
/// needs three, and the YAML parser slows down sharply on deep nesting.
const MAX_FLOW_DEPTH: usize = 32;

/// A file larger than a configuration can be, refused at its start.
fn check_size(bytes: usize) -> Result<(), (usize, usize, String)> {
    if bytes > MAX_CONFIG_BYTES {
        return Err((
            1,
            1,
            format!(
                "the file is {bytes} bytes; a configuration may have {MAX_CONFIG_BYTES} at most"
            ),
        ));
    }
    Ok(())
}

/// What the YAML parser would accept but a configuration must not have, found before it
/// parses: more than one document, tags (`!name`), flow collections nested too deep.
/// Gives the line, column and why.
fn precheck(text: &str) -> Result<(), (usize, usize, String)> {
    check_size(text.len())?;
    let mut depth = 0usize;
    let mut seen_content = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.starts_with("---") && line[3..].trim().is_empty() || line.starts_with("--- ") {
            if seen_content {
                return Err((
                    number,
                    1,
                    "a second YAML document: a configuration is one document".into(),
                ));
            }
            continue;
        }
        if line.starts_with("...") && line[3..].trim().is_empty() {
            continue;
        }
        let mut quote: Option<char> = None;
        let mut previous = ' ';
        for (column, c) in line.chars().enumerate() {
            match quote {
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '#' if previous.is_whitespace() => break,
                    '"' | '\'' if matches!(previous, ' ' | '[' | '{' | ',' | ':' | '-') => {
                        quote = Some(c)
                    }
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_FLOW_DEPTH {
                            return Err((
                                number,
                                column + 1,
                                format!("collections nested deeper than {MAX_FLOW_DEPTH} levels"),
                            ));
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    '!' if matches!(previous, ' ' | '[' | '{' | ',' | '-') || column == 0 => {
                        return Err((
                            number,
                            column + 1,
                            "YAML tags (`!name`) are not part of a configuration".into(),
                        ));
                    }
                    _ => {}
                },
            }
            if !c.is_whitespace() {
                seen_content = true;
            }
            previous = c;
        }
        // Quotes end with their line here; a multi-line quoted value is not one of ours.
    }
    Ok(())
}

impl Config {
    /// Parses YAML text; `origin` names the file in errors.
    pub fn from_yaml(origin: &str, text: &str) -> Result<Config, ConfigError> {
        precheck(text)
            .map_err(|(line, column, message)| ConfigError::at(origin, line, column, message))?;
        // A file with only comments or nothing at all means "all defaults".
        let is_empty = serde_yaml::from_str::<serde_yaml::Value>(text)
            .map(|value| value.is_null())
            .unwrap_or(false);
        if is_empty {
            return Ok(Config::default());
        }
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer)
            .map_err(|err| ConfigError::from_serde(origin, text, err))?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::invalid(origin, text, &key, message))?;
        Ok(config)
    }

    /// Every number of every section with the range it must fall in, keyed by its full
    /// path: beyond these, durations overflow the clock, maps exceed what the kernel
    /// allocates, and files or buffers what a node can hold.
    fn ranges(&self) -> Vec<(String, Range)> {
        let exporters = &self.exporters;
        let sections = [
            (
                "prometheus",
                vec![
                    Range::new(
                        "max_connections",
                        u64::from(self.prometheus.max_connections.get()),
                        1,
                        65_536,
                    ),
                    Range::new(
                        "header_read_timeout_secs",
                        self.prometheus.header_read_timeout_secs,
                        1,
                        3600,
                    ),
                ],
            ),
            ("tenants", self.tenants.ranges()),
            ("workloads", self.workloads.ranges()),
            (
                "traces",
                vec![Range::entries("queue_spans", self.traces.queue_spans)],
            ),
            (
                "exporters.otlp",
                vec![
                    Range::new("timeout_secs", exporters.otlp.timeout_secs, 1, 300),
                    Range::new(
                        "metrics_interval_secs",
                        exporters.otlp.metrics_interval_secs,
                        0,
                        DAY,
                    ),
                    Range::new(
                        "batch_spans",
                        u64::from(exporters.otlp.batch_spans.get()),
                        1,
                        65_536,
                    ),
                    Range::new("max_retry_secs", exporters.otlp.max_retry_secs, 0, DAY),
                ],
            ),
            (
                "exporters.jsonl",
                vec![
                    Range::new(
                        "max_file_bytes",
                        u64::from(exporters.jsonl.max_file_bytes.get()),
                        4096,
                        u64::from(u32::MAX),
                    ),
                    Range::new("max_files", u64::from(exporters.jsonl.max_files), 0, 1000),
                    Range::new(
                        "metrics_interval_secs",
                        exporters.jsonl.metrics_interval_secs,
                        0,
                        DAY,
                    ),
                ],
            ),
            (
                "self_metrics",
                vec![
                    Range::new(
                        "bpf_stats_sample_secs",
                        self.self_metrics.bpf_stats_sample_secs,
                        0,
                        DAY,
                    ),
                    Range::new(
                        "bpf_stats_period_secs",
                        self.self_metrics.bpf_stats_period_secs,
                        1,
                        7 * DAY,
                    ),
                ],
            ),
            ("processes", self.processes.ranges()),
        ];
        let mut ranges: Vec<(String, Range)> = sections
            .into_iter()
            .flat_map(|(section, ranges)| {
                ranges
                    .into_iter()
                    .map(move |range| (format!("{section}.{}", range.key), range))
            })
            .collect();
        for spec in BUILT_IN {
            ranges.extend(
                spec.ranges(&self.probes)
                    .into_iter()
                    .map(|range| (format!("probes.{}.{}", spec.name(), range.key), range)),
            );
        }
        ranges
    }

    /// Checks that span several keys; returns the key to blame and why.
    fn validate(&self) -> Result<(), (String, String)> {
        for (key, range) in self.ranges() {
            range.check().map_err(|message| (key, message))?;
        }
        for spec in BUILT_IN {
            spec.check(&self.probes)
                .map_err(|(key, message)| (format!("probes.{}.{key}", spec.name()), message))?;
        }
        self.check_sections()
    }

    /// Each section's own checks, in the order of the file; a section's keys are
    /// blamed by their full path.
    fn check_sections(&self) -> Result<(), (String, String)> {
        let within = |section: &str, checked: Result<(), Invalid>| {
            checked.map_err(|(key, message)| (format!("{section}.{key}"), message))
        };
        if self.exporters.jsonl.mode().is_none() {
            return Err((
                "exporters.jsonl.file_mode".into(),
                format!(
                    "`{}`: must be octal permissions such as \"0640\", not writable by others",
                    self.exporters.jsonl.file_mode
                ),
            ));
        }
        self.exporters
            .otlp
            .check()
            .map_err(|(key, message)| (key.to_string(), message))?;
        within("tenants", self.tenants.check(self.workloads.enabled))?;
        within("workloads", self.workloads.check())?;
        if !(0.0..=1.0).contains(&self.traces.sampler_arg) {
            return Err((
                "traces.sampler_arg".into(),
                format!("{} is outside [0, 1]", self.traces.sampler_arg),
            ));
        }
        let stats = &self.self_metrics;
        if stats.bpf_stats == StatsMode::Sampled {
            within(
                "self_metrics",
                check_window(
                    ("bpf_stats_sample_secs", stats.bpf_stats_sample_secs),
                    ("bpf_stats_period_secs", stats.bpf_stats_period_secs),
                ),
            )?;
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            file: origin.clone(),
            source,
        })?;
        // Before decoding: a huge file is refused for its size whatever it holds.
        check_size(bytes.len())
            .map_err(|(line, column, message)| ConfigError::at(&origin, line, column, message))?;
        let text = String::from_utf8(bytes).map_err(|err| {
            let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let column = valid.len()
                - valid
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |at| at + 1)
                + 1;
            ConfigError::at(
                &origin,
                line,
                column,
                "the file is not valid UTF-8 here".into(),
            )
        })?;
        Config::from_yaml(&origin, &text)
    }

    pub fn embedded_default() -> Config {
        Config::from_yaml("<embedded default>", &DEFAULT_CONFIG_YAML).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
