//! The process probe's settings, under `probes.process` (documented in config.yaml).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::probes::ProbeSettings;
use crate::settings::{nonzero, Range};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    pub enabled: bool,
    /// Cap on executable names counted in the kernel.
    pub max_executables: NonZeroU32,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            enabled: true,
            max_executables: nonzero(4096),
        }
    }
}

impl ProbeSettings for ProcessConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn ranges(&self) -> Vec<Range> {
        vec![Range::entries("max_executables", self.max_executables)]
    }
}
