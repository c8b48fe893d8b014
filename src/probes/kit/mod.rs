//! What every probe shares.

pub mod budget;
pub mod idle;
pub mod lifecycle;
pub mod owner;
pub mod programs;
pub mod spans;

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::settings::{nonzero, Range, DAY};

/// How processes become labels, and what happens to the series of those that exit: one
/// rule for every probe, under `processes` in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessesConfig {
    /// Put `process_pid` on per-process series. Off, series are per executable name.
    pub pid_label: bool,
    /// How long the series of an exited process stay before they fold into the
    /// per-executable aggregate of exited processes.
    pub exited_ttl_secs: u64,
    /// Cap on executables with an aggregate of exited processes; beyond it, exited
    /// processes fold into the overflow series.
    pub max_exited_executables: NonZeroU32,
    /// Samples a scrape holds of per-process and per-executable series, over every
    /// probe; beyond, new owners' series fold into the overflow series.
    pub series_budget: NonZeroU32,
}

impl Default for ProcessesConfig {
    fn default() -> Self {
        ProcessesConfig {
            pid_label: true,
            exited_ttl_secs: 300,
            max_exited_executables: nonzero(1024),
            series_budget: nonzero(10_000),
        }
    }
}

impl ProcessesConfig {
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("exited_ttl_secs", self.exited_ttl_secs, 0, 7 * DAY),
            Range::entries("max_exited_executables", self.max_exited_executables),
            Range::new(
                "series_budget",
                self.series_budget.get().into(),
                1,
                10_000_000,
            ),
        ]
    }
}
