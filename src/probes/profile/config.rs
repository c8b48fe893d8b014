//! The profile probe's settings, under `probes.profile` (documented in config.yaml).

use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer};

use crate::probes::ProbeSettings;
use crate::settings::{nonzero, Range};

/// Whether the probe runs: `auto` (the default) runs it whenever a profile receiver is
/// enabled under `exporters.profiles`, since profiles with nowhere to go cost CPU and
/// kernel memory for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
    Auto,
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(deserializer) {
            Ok(Written::Flag(true)) => Ok(Switch::On),
            Ok(Written::Flag(false)) => Ok(Switch::Off),
            Ok(Written::Word(word)) if word == "auto" => Ok(Switch::Auto),
            _ => Err(serde::de::Error::custom("expected true, false or auto")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub enabled: Switch,
    /// Whether `exporters.profiles` has a receiver on: set from the whole configuration.
    #[serde(skip)]
    pub receivers: bool,
    pub frequency_hz: u64,
    pub max_stacks: NonZeroU32,
    pub max_counts: NonZeroU32,
    pub max_cached_names: NonZeroU32,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            enabled: Switch::Auto,
            receivers: false,
            frequency_hz: 19,
            max_stacks: nonzero(16_384),
            max_counts: nonzero(16_384),
            max_cached_names: nonzero(16_384),
        }
    }
}

impl ProbeSettings for ProfileConfig {
    fn enabled(&self) -> bool {
        match self.enabled {
            Switch::On => true,
            Switch::Off => false,
            Switch::Auto => self.receivers,
        }
    }

    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("frequency_hz", self.frequency_hz, 1, 1000),
            Range::entries("max_stacks", self.max_stacks),
            Range::entries("max_counts", self.max_counts),
            Range::entries("max_cached_names", self.max_cached_names),
        ]
    }
}
