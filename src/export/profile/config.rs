//! Where profiles go, under `exporters.profiles` (documented in the default
//! configuration).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::settings::{nonzero, Invalid, Range, DAY};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// A profile of every process this often, from the profile probe.
    pub interval_secs: u64,
    /// Profiles waiting to be pushed, at most; beyond, the oldest is dropped and counted.
    pub queue_profiles: NonZeroU32,
    pub pyroscope: PyroscopeConfig,
}

/// pprof pushed to a Pyroscope-compatible `/ingest` endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PyroscopeConfig {
    pub enabled: bool,
    /// Base URL, `http://host:port` (no TLS yet); `/ingest` is appended.
    pub endpoint: String,
    pub timeout_secs: u64,
    /// A failing push is retried with backoff for this long, then dropped and counted.
    pub max_retry_secs: u64,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            interval_secs: 60,
            queue_profiles: nonzero(8),
            pyroscope: PyroscopeConfig::default(),
        }
    }
}

impl Default for PyroscopeConfig {
    fn default() -> Self {
        PyroscopeConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4040".into(),
            timeout_secs: 10,
            max_retry_secs: 60,
        }
    }
}

impl ProfilesConfig {
    /// Every number with the range it must fall in, keyed below `exporters.profiles`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("interval_secs", self.interval_secs, 1, DAY),
            Range::new("queue_profiles", self.queue_profiles.get().into(), 1, 1024),
            Range::new(
                "pyroscope.timeout_secs",
                self.pyroscope.timeout_secs,
                1,
                3600,
            ),
            Range::new(
                "pyroscope.max_retry_secs",
                self.pyroscope.max_retry_secs,
                0,
                DAY,
            ),
        ]
    }

    pub fn check(&self) -> Result<(), Invalid> {
        if self.pyroscope.enabled {
            crate::export::profile::pyroscope::Target::parse(&self.pyroscope.endpoint)
                .map_err(|message| ("pyroscope.endpoint", message))?;
        }
        Ok(())
    }
}
