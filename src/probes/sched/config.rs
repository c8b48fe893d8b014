//! The sched probe's settings, under `probes.sched` (documented in config.yaml).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::probes::ProbeSettings;
use crate::settings::{nonzero, Buckets, Range};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedConfig {
    pub enabled: bool,
    /// (executable, cgroup) series in the kernel, at most; beyond, the overflow series.
    pub max_series: NonZeroU32,
    /// `le` bounds of `sched_runqueue_latency_seconds`.
    pub duration_buckets_seconds: Buckets,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            enabled: false,
            max_series: nonzero(1024),
            duration_buckets_seconds: Buckets::default_durations(),
        }
    }
}

impl ProbeSettings for SchedConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn ranges(&self) -> Vec<Range> {
        vec![Range::entries("max_series", self.max_series)]
    }
}
