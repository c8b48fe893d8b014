//! The syscalls probe's settings, under `probes.syscalls` (documented in config.yaml).

use std::num::NonZeroU32;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::table::SYSCALL_NAMES;
use crate::probes::ProbeSettings;
use crate::settings::{check_window, nonzero, Buckets, Invalid, Range, SamplingMode, DAY};

/// Capacity of the kernel's selection maps (selected_tgids, selected_comms).
pub const MAX_SELECTED: usize = 1024;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyscallsConfig {
    pub enabled: bool,
    /// Syscalls whose latency is measured; all are counted.
    pub latency_syscalls: Vec<SyscallName>,
    /// Timing needs a hook at syscall entry, which costs on every syscall of every
    /// process: `always`, or `sampled` (on for latency_sample_secs in each
    /// latency_period_secs; histograms then hold the calls made in those windows).
    pub latency_sampling: SamplingMode,
    pub latency_sample_secs: u64,
    pub latency_period_secs: u64,
    /// Only trace processes with these executable names (comm, at most 15 bytes). Empty: all.
    pub include_executables: Vec<ExecutableName>,
    /// Only trace these process ids (besides `include_executables`). Empty: all.
    pub include_pids: Vec<u32>,
    /// Slots per CPU in the first-level count table (a power of two); pairs that find
    /// their slots taken go to the `max_series` map.
    pub per_cpu_slots: u32,
    /// Cap on (process, syscall) count series kept in the kernel's second-level map.
    pub max_series: NonZeroU32,
    /// Cap on (process, syscall, errno) error series.
    pub max_error_series: NonZeroU32,
    /// Cap on (process, syscall) latency histograms.
    pub max_latency_series: NonZeroU32,
    /// `le` bounds of `syscall_duration_seconds`.
    pub duration_buckets_seconds: Buckets,
    /// Latency histograms per process (with `process_pid`) rather than per executable.
    pub latency_per_process: bool,
}

/// Syscalls timed by default: those where an application waits on I/O. Other syscalls
/// are counted only, which keeps the per-syscall cost near the floor (BENCHMARKS.md).
pub const DEFAULT_LATENCY_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "openat",
    "fsync",
    "fdatasync",
    "connect",
    "accept",
    "accept4",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
];

impl Default for SyscallsConfig {
    fn default() -> Self {
        SyscallsConfig {
            enabled: true,
            latency_syscalls: DEFAULT_LATENCY_SYSCALLS
                .iter()
                .filter_map(|name| SyscallName::parse(name))
                .collect(),
            latency_sampling: SamplingMode::Sampled,
            latency_sample_secs: 10,
            latency_period_secs: 60,
            include_executables: Vec::new(),
            include_pids: Vec::new(),
            per_cpu_slots: 4096,
            max_series: nonzero(16384),
            max_error_series: nonzero(4096),
            max_latency_series: nonzero(4096),
            duration_buckets_seconds: Buckets::default_durations(),
            latency_per_process: false,
        }
    }
}

impl ProbeSettings for SyscallsConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("latency_sample_secs", self.latency_sample_secs, 0, DAY),
            Range::new("latency_period_secs", self.latency_period_secs, 1, 7 * DAY),
            Range::entries("max_series", self.max_series),
            Range::entries("max_error_series", self.max_error_series),
            Range::entries("max_latency_series", self.max_latency_series),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.include_pids.len() > MAX_SELECTED {
            return Err((
                "include_pids",
                format!("at most {MAX_SELECTED} pids can be selected"),
            ));
        }
        if !self.per_cpu_slots.is_power_of_two() || self.per_cpu_slots > 1 << 20 {
            return Err((
                "per_cpu_slots",
                format!(
                    "must be a power of two from 1 to 1048576, not {}",
                    self.per_cpu_slots
                ),
            ));
        }
        if self.include_executables.len() > MAX_SELECTED {
            return Err((
                "include_executables",
                format!("at most {MAX_SELECTED} executables can be selected"),
            ));
        }
        if self.latency_sampling == SamplingMode::Sampled {
            check_window(
                ("latency_sample_secs", self.latency_sample_secs),
                ("latency_period_secs", self.latency_period_secs),
            )?;
        }
        Ok(())
    }
}

/// A syscall named as in the x86_64 syscall table; stored as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallName(pub u32);

impl SyscallName {
    pub fn parse(name: &str) -> Option<Self> {
        SYSCALL_NAMES
            .iter()
            .position(|known| *known == Some(name))
            .map(|nr| SyscallName(nr as u32))
    }
}

impl<'de> Deserialize<'de> for SyscallName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        SyscallName::parse(&name).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown syscall `{name}`: use an x86_64 syscall name such as read, write, openat, connect"
            ))
        })
    }
}

/// An executable name as the kernel keeps it (comm): 1 to 15 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutableName(pub String);

impl<'de> Deserialize<'de> for ExecutableName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if name.is_empty() || name.len() > 15 {
            return Err(de::Error::custom(format!(
                "executable name `{name}` must be 1 to 15 bytes long (the kernel truncates names to 15)"
            )));
        }
        Ok(ExecutableName(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_names_resolve_to_x86_64_numbers() {
        assert_eq!(SyscallName::parse("read"), Some(SyscallName(0)));
        assert_eq!(SyscallName::parse("openat"), Some(SyscallName(257)));
        assert_eq!(SyscallName::parse("nope"), None);
    }
}
