//! The OTLP exporter's settings, under `exporters.otlp` (documented in the default
//! configuration), and the standard OpenTelemetry variables that override them.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use serde::Deserialize;

use crate::export::tls::TlsConfig;
use crate::settings::{check_native_schema, nonzero, Invalid, Range, DAY};

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
    pub headers: BTreeMap<String, String>,
    /// `gzip` or `none`.
    pub compression: String,
    pub timeout_secs: u64,
    /// A metrics export this often; 0: no metrics.
    pub metrics_interval_secs: u64,
    /// Spans per request, at most.
    pub batch_spans: NonZeroU32,
    /// A failing export is retried for this long, then its data is dropped and counted.
    pub max_retry_secs: u64,
    /// How histograms with native buckets are sent.
    pub histograms: HistogramKind,
    /// The scale of exponential histograms (as a Prometheus schema).
    pub exponential_scale: i8,
    /// For `https://` endpoints: the CA file, client certificate and key.
    pub tls: TlsConfig,
    /// Per signal; each field left empty is taken from `tls`.
    pub traces_tls: TlsConfig,
    pub metrics_tls: TlsConfig,
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
            histograms: HistogramKind::Explicit,
            exponential_scale: 3,
            tls: TlsConfig::default(),
            traces_tls: TlsConfig::default(),
            metrics_tls: TlsConfig::default(),
        }
    }
}

/// OTLP's two histogram kinds: explicit bucket bounds, or exponential buckets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HistogramKind {
    Explicit,
    Exponential,
}

/// The full key of a TLS setting below `exporters.otlp`, for errors.
fn tls_key(section: &str, key: &str) -> &'static str {
    const KEYS: [&str; 6] = [
        "tls.cert_file",
        "tls.key_file",
        "traces_tls.cert_file",
        "traces_tls.key_file",
        "metrics_tls.cert_file",
        "metrics_tls.key_file",
    ];
    KEYS.into_iter()
        .find(|full| full.split_once('.') == Some((section, key)))
        .unwrap_or("tls")
}

impl OtlpConfig {
    /// Every number with the range it must fall in, keyed below `exporters.otlp`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("timeout_secs", self.timeout_secs, 1, 300),
            Range::new("metrics_interval_secs", self.metrics_interval_secs, 0, DAY),
            Range::new("batch_spans", u64::from(self.batch_spans.get()), 1, 65_536),
            Range::new("max_retry_secs", self.max_retry_secs, 0, DAY),
        ]
    }

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
            self.headers.extend(super::parse_headers(&headers));
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
        self.tls.apply_env("OTEL_EXPORTER_OTLP_", &env);
        self.traces_tls
            .apply_env("OTEL_EXPORTER_OTLP_TRACES_", &env);
        self.metrics_tls
            .apply_env("OTEL_EXPORTER_OTLP_METRICS_", &env);
        if let Some(ms) = millis("OTEL_EXPORTER_OTLP_TIMEOUT")? {
            self.timeout_secs = ms.div_ceil(1000).max(1);
        }
        if let Some(ms) = millis("OTEL_METRIC_EXPORT_INTERVAL")? {
            self.metrics_interval_secs = ms.div_ceil(1000);
        }
        self.check().map_err(|(key, message)| {
            format!("exporters.otlp.{key} (from the environment): {message}")
        })
    }

    /// What serde cannot check: the protocol, the compression, and the URLs; returns
    /// the key to blame (below `exporters.otlp`) and why.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.protocol != "http/protobuf" && self.protocol != "grpc" {
            return Err((
                "protocol",
                format!("{:?}: use \"http/protobuf\" or \"grpc\"", self.protocol),
            ));
        }
        if self.compression != "gzip" && self.compression != "none" {
            return Err((
                "compression",
                format!("{:?}: use \"gzip\" or \"none\"", self.compression),
            ));
        }
        check_native_schema("exponential_scale", self.exponential_scale)?;
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::try_from(name.as_str()).is_err()
                || hyper::header::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err((
                    "headers",
                    format!("{name:?} is not a valid HTTP header name and value"),
                ));
            }
        }
        for (section, tls) in [
            ("tls", &self.tls),
            ("traces_tls", &self.traces_tls.or(&self.tls)),
            ("metrics_tls", &self.metrics_tls.or(&self.tls)),
        ] {
            tls.check()
                .map_err(|(key, why)| (tls_key(section, key), why))?;
        }
        for (key, url) in [
            ("endpoint", &self.endpoint),
            ("traces_endpoint", &self.traces_endpoint),
            ("metrics_endpoint", &self.metrics_endpoint),
        ] {
            if !url.is_empty() {
                super::Endpoint::parse(url).map_err(|e| (key, e))?;
            }
        }
        Ok(())
    }
}
