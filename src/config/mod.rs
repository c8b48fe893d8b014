//! Periscope's YAML configuration. Every field has a default, so no file is needed;
//! unknown keys are errors, and every error names the file, line and key.
//!
//! Each section's type belongs to the module it configures, with the ranges of its
//! numbers and its own checks, keyed below the section. This module assembles the
//! sections, checks what spans them, and locates errors in the file.

mod error;

use std::path::Path;
use std::sync::LazyLock;

use serde::Deserialize;

pub use crate::probes::{ProbesConfig, ProcessesConfig};
pub use error::ConfigError;

use crate::enrich::tenant::TenantsConfig;
use crate::enrich::workload::WorkloadsConfig;
use crate::export::jsonl::JsonLinesConfig;
use crate::export::otlp::OtlpConfig;
use crate::export::prometheus::PrometheusConfig;
use crate::probes::kit::spans::TracesConfig;
use crate::probes::BUILT_IN;
use crate::selfmetrics::SelfMetricsConfig;
use crate::settings::{Invalid, Range};

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

/// The push exporters, each section its exporter's settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExportersConfig {
    pub jsonl: JsonLinesConfig,
    pub otlp: OtlpConfig,
    pub profiles: crate::export::profile::config::ProfilesConfig,
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
        let mut config: Config = serde_path_to_error::deserialize(deserializer)
            .map_err(|err| ConfigError::from_serde(origin, text, err))?;
        // The profile probe's `auto` follows whether its profiles have somewhere to go.
        config.probes.profile.receivers = config.exporters.profiles.any();
        config
            .validate()
            .map_err(|(key, message)| ConfigError::invalid(origin, text, &key, message))?;
        Ok(config)
    }

    /// Every number of every section with the range it must fall in, keyed by its full
    /// path: beyond these, durations overflow the clock, maps exceed what the kernel
    /// allocates, and files or buffers what a node can hold.
    fn ranges(&self) -> Vec<(String, Range)> {
        let sections = [
            ("prometheus", self.prometheus.ranges()),
            ("tenants", self.tenants.ranges()),
            ("workloads", self.workloads.ranges()),
            ("traces", self.traces.ranges()),
            ("exporters.otlp", self.exporters.otlp.ranges()),
            ("exporters.jsonl", self.exporters.jsonl.ranges()),
            ("exporters.profiles", self.exporters.profiles.ranges()),
            ("self_metrics", self.self_metrics.ranges()),
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
    /// blamed by their full path. Tenants are found from cgroups, so their rules need
    /// the workloads' attribution on.
    fn check_sections(&self) -> Result<(), (String, String)> {
        let within = |section: &str, checked: Result<(), Invalid>| {
            checked.map_err(|(key, message)| (format!("{section}.{key}"), message))
        };
        within("prometheus", self.prometheus.check())?;
        within("exporters.jsonl", self.exporters.jsonl.check())?;
        within("exporters.otlp", self.exporters.otlp.check())?;
        within("exporters.profiles", self.exporters.profiles.check())?;
        within("tenants", self.tenants.check(self.workloads.enabled))?;
        within("workloads", self.workloads.check())?;
        within("traces", self.traces.check())?;
        within("self_metrics", self.self_metrics.check())
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
