//! The vocabulary every module's settings share: histogram bounds, sampling windows,
//! and numbers with their allowed ranges. Each module owns its settings type; `config`
//! only assembles them from YAML and locates errors.

use std::num::NonZeroU32;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A day in seconds, the longest most intervals may be.
pub const DAY: u64 = 86_400;

/// Entries a kernel map may be given, at most.
pub const MAX_MAP_ENTRIES: u64 = 1 << 20;

/// A number of a module's settings and the range it must fall in: `key` is the path
/// below the module's own section, such as `max_series`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub key: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

impl Range {
    pub fn new(key: &'static str, value: u64, min: u64, max: u64) -> Range {
        Range {
            key,
            value,
            min,
            max,
        }
    }

    /// A cap on entries of a kernel map or table: 1 to MAX_MAP_ENTRIES.
    pub fn entries(key: &'static str, value: NonZeroU32) -> Range {
        Range::new(key, u64::from(value.get()), 1, MAX_MAP_ENTRIES)
    }

    pub fn check(&self) -> Result<(), String> {
        if (self.min..=self.max).contains(&self.value) {
            Ok(())
        } else {
            Err(format!(
                "must be from {} to {}, not {}",
                self.min, self.max, self.value
            ))
        }
    }
}

/// A setting found wrong by a check that spans more than one number: the key to blame
/// (below the module's section) and why.
pub type Invalid = (&'static str, String);

/// The coarsest native-histogram schema Prometheus takes.
pub const MIN_NATIVE_SCHEMA: i8 = -4;

/// A native-histogram schema (or OTLP exponential scale) exporters can serve: from the
/// coarsest Prometheus takes to the finest the kernel counts at.
pub fn check_native_schema(key: &'static str, schema: i8) -> Result<(), Invalid> {
    let finest = crate::model::native::KERNEL_SCHEMA as i8;
    if (MIN_NATIVE_SCHEMA..=finest).contains(&schema) {
        Ok(())
    } else {
        Err((
            key,
            format!(
                "must be from {MIN_NATIVE_SCHEMA} to {finest} (the kernel counts {} buckets per power of two), not {schema}",
                1 << finest
            ),
        ))
    }
}

pub fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Whether a costly measurement runs all the time or in windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingMode {
    Always,
    Sampled,
}

/// A sampling window must last at least a second and be shorter than its period.
pub fn check_window(
    (sample_key, sample): (&'static str, u64),
    (period_key, period): (&'static str, u64),
) -> Result<(), Invalid> {
    if sample == 0 {
        return Err((sample_key, "must be at least 1 in sampled mode".into()));
    }
    if period <= sample {
        return Err((
            period_key,
            format!("must be longer than the sample window ({sample} s)"),
        ));
    }
    Ok(())
}

/// Histogram `le` bounds: positive, finite, strictly increasing.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets(pub Vec<f64>);

impl Buckets {
    /// From a microsecond to ten seconds, 2.5 and 5 times each power of ten.
    pub fn default_durations() -> Self {
        Buckets(vec![
            0.000_001,
            0.000_002_5,
            0.000_005,
            0.000_01,
            0.000_025,
            0.000_05,
            0.000_1,
            0.000_25,
            0.000_5,
            0.001,
            0.002_5,
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
        ])
    }

    fn validate(bounds: &[f64]) -> Result<(), String> {
        if bounds.is_empty() {
            return Err("at least one bucket bound is needed".into());
        }
        if bounds.len() > 64 {
            return Err(format!(
                "{} bucket bounds given; at most 64 are allowed",
                bounds.len()
            ));
        }
        for pair in bounds.windows(2) {
            if pair[1] <= pair[0] {
                return Err(format!(
                    "bucket bounds must increase strictly, but {} follows {}",
                    pair[1], pair[0]
                ));
            }
        }
        if let Some(bad) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
            return Err(format!(
                "bucket bound {bad} must be a positive, finite number of seconds"
            ));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Buckets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bounds = Vec::<f64>::deserialize(deserializer)?;
        Buckets::validate(&bounds).map_err(de::Error::custom)?;
        Ok(Buckets(bounds))
    }
}
