//! The profile probe's settings, under `probes.profile` (documented in config.yaml).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::probes::ProbeSettings;
use crate::settings::{nonzero, Range};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub enabled: bool,
    pub frequency_hz: u64,
    pub max_stacks: NonZeroU32,
    pub max_counts: NonZeroU32,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            enabled: false,
            frequency_hz: 19,
            max_stacks: nonzero(16_384),
            max_counts: nonzero(16_384),
        }
    }
}

impl ProbeSettings for ProfileConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("frequency_hz", self.frequency_hz, 1, 1000),
            Range::entries("max_stacks", self.max_stacks),
            Range::entries("max_counts", self.max_counts),
        ]
    }
}
