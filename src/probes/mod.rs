//! The probe framework and the list of built-in probes.
//!
//! A probe is a folder: its BPF C program, the Rust that loads it and reads its maps, its
//! metric definitions and its tests. Probes produce model families; they know nothing of
//! exporters.

pub mod http;
pub mod process;
pub mod syscalls;
pub mod tcp;

pub mod kit;
mod util;

use std::os::fd::BorrowedFd;
use std::time::Instant;

use crate::config::Config;
use crate::enrich::Workloads;
use crate::kernel::KernelFeatures;
use crate::model::span::Span;
use crate::model::Family;

pub use util::{MapFill, ProbeError};

/// A built-in probe, before it is loaded.
pub trait ProbeSpec: Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn enabled(&self, config: &Config) -> bool;
    /// Loads the BPF programs (the kernel's verifier is the real capability check) and,
    /// when `attach` is set, attaches them.
    fn load(
        &self,
        config: &Config,
        kernel: &mut KernelFeatures,
        attach: bool,
        workloads: &Workloads,
    ) -> Result<Box<dyn Probe>, ProbeError>;
}

/// A loaded probe.
pub trait Probe {
    fn name(&self) -> &'static str;
    /// How it hooks the kernel, for logs and `periscope probes`.
    fn attach_method(&self) -> String;
    /// Reads the kernel's aggregates into families; also does the probe's upkeep
    /// (expiring exited processes).
    fn collect(&mut self, now: Instant, out: &mut Vec<Family>);
    /// The probe's loaded programs, for the kernel's run-time statistics.
    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)>;
    /// Fill of its keyed maps against their caps, as of the last `collect`.
    fn map_fill(&self) -> Vec<MapFill>;
    /// New keys each map refused because it was full (their data went to overflow series).
    fn folded(&self) -> Vec<(&'static str, u64)>;
    /// Series of exited processes folded into the per-executable aggregate.
    fn expired_series(&self) -> u64 {
        0
    }
    /// Does scheduled work (switching sampled measurements on and off) and says when it
    /// next wants to be called.
    fn tick(&mut self, _now: Instant) -> Option<Instant> {
        None
    }
    /// Events the kernel could not hand over (full ring buffer); none for pure aggregators.
    fn events_lost(&self) -> u64 {
        0
    }
    /// Moves the spans finished since the last call into `out`.
    fn take_spans(&mut self, _out: &mut Vec<Span>) {}
    /// The tenant of each cgroup (v2 id) the probe's BPF programs should know from now
    /// on: a slot (TenantSlots), or DROPPED_SLOT for those whose processes they skip.
    /// The full set each time, sorted by id.
    fn set_cgroup_tenants(&mut self, _cgroups: &[(u64, u32)]) {}
    /// New keys each tenant's full share of a kernel map refused (their data went to the
    /// tenant's overflow series): map, tenant (None: no tenant's), count.
    fn tenant_folded(&self) -> Vec<(&'static str, Option<String>, u64)> {
        Vec::new()
    }
    /// The features it runs without, because the kernel refused their programs.
    fn degraded(&self) -> &[kit::programs::Degraded] {
        &[]
    }
    /// Spans the probe dropped because nobody took them in time.
    fn spans_dropped(&self) -> u64 {
        0
    }
}

pub static BUILT_IN: &[&dyn ProbeSpec] = &[
    &syscalls::SyscallsSpec,
    &process::ProcessSpec,
    &http::HttpSpec,
    &tcp::TcpSpec,
];
