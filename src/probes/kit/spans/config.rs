//! The spans' settings, under `traces` (documented in the default configuration), and
//! the standard OpenTelemetry variables that override them.

use std::num::NonZeroU32;

use serde::Deserialize;

use super::{RootSampler, Sampler};
use crate::settings::{nonzero, Invalid, Range};

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
    /// Every number with the range it must fall in, keyed below `traces`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![Range::entries("queue_spans", self.queue_spans)]
    }

    /// What serde cannot check: the ratio.
    pub fn check(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.sampler_arg) {
            return Err((
                "sampler_arg",
                format!("{} is outside [0, 1]", self.sampler_arg),
            ));
        }
        Ok(())
    }

    pub fn sampler(&self) -> Sampler {
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
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        // As an OpenTelemetry SDK does: OTEL_TRACES_EXPORTER defaults to otlp, so an OTLP
        // endpoint in the environment is a request for traces; `none` turns them off.
        match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {
                let endpoint = [
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                ];
                if endpoint.into_iter().any(|name| set(name).is_some()) {
                    self.enabled = true;
                }
            }
            Some("none") => self.enabled = false,
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER: {other:?} is not supported (otlp or none)"
                ))
            }
        }
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
