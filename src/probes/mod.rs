//! The probe framework and the list of built-in probes.
//!
//! A probe is a folder: its BPF C program, the Rust that loads it and reads its maps, its
//! metric definitions and its tests. Probes produce model families; they know nothing of
//! exporters.

pub mod kit;
mod util;

use std::fmt::Debug;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use serde::de::DeserializeOwned;

use crate::enrich::Workloads;
use crate::kernel::caps::Need;
use crate::kernel::KernelFeatures;
use crate::model::connections::AgentConnections;
use crate::model::span::Span;
use crate::model::Family;
use crate::probes::kit::spans::Sampler;
use crate::settings::{Invalid, Range};
use kit::budget::SeriesBudget;

pub use kit::ProcessesConfig;
pub use util::{MapFill, ProbeError};

/// Declares the built-in probes: their modules, the `probes` section of the
/// configuration, and the list the agent loads from.
macro_rules! built_in_probes {
    ($($name:ident => $probe:ty),* $(,)?) => {
        $(pub mod $name;)*

        /// Each built-in probe's settings, under `probes.<name>`.
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ProbesConfig {
            $(pub $name: <$probe as BuiltIn>::Settings,)*
        }

        mod settings_of {
            use super::*;
            $(
                pub fn $name(probes: &ProbesConfig) -> &<$probe as BuiltIn>::Settings {
                    &probes.$name
                }
            )*
        }

        /// Every built-in probe, in the order they load and are listed.
        pub static BUILT_IN: &[&dyn ProbeSpec] = &[
            $(&Registered::<$probe> {
                name: stringify!($name),
                settings: settings_of::$name,
                default_yaml: include_str!(concat!(stringify!($name), "/config.yaml")),
            },)*
        ];
    };
}

// The built-in probes, one line each: `probes.<name>` in the configuration is the
// folder's settings type, and the folder's `config.yaml` its documented defaults.
built_in_probes! {
    syscalls => syscalls::SyscallsProbe,
    process => process::ProcessProbe,
    http => http::HttpProbe,
    tcp => tcp::TcpProbe,
    sched => sched::SchedProbe,
    profile => profile::ProfileProbe,
}

/// A probe's own settings, under `probes.<name>`.
pub trait ProbeSettings: DeserializeOwned + Default + Clone + PartialEq + Debug {
    fn enabled(&self) -> bool;
    /// Every number with the range it must fall in, keyed below `probes.<name>`.
    fn ranges(&self) -> Vec<Range> {
        Vec::new()
    }
    /// Checks that span more than one number.
    fn check(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

/// What a probe loads with besides its own settings.
pub struct LoadContext<'a> {
    /// The one rule for process labels and exited processes.
    pub processes: &'a ProcessesConfig,
    /// Some tenant is dropped: programs that can skip cgroups must skip its own.
    pub drops_tenants: bool,
    /// How spans are sampled; None: no spans are made.
    pub spans: Option<Sampler>,
    pub kernel: &'a mut KernelFeatures,
    /// Attach the programs once loaded; off, only the kernel's verdict is wanted.
    pub attach: bool,
    pub workloads: &'a Workloads,
    /// The agent-wide series budget every probe's owners are admitted under.
    pub budget: &'a SeriesBudget,
    /// The connections the agent's own exporters open: probes make no spans of them.
    pub agent_connections: &'a AgentConnections,
    /// How often a probe that makes profiles hands one over.
    pub profile_interval: std::time::Duration,
}

/// A built-in probe: the entry point of its folder, implemented by the probe itself.
pub trait BuiltIn: Probe + Sized + 'static {
    type Settings: ProbeSettings;
    const DESCRIPTION: &'static str;
    /// Capabilities it needs besides those of loading and attaching BPF programs.
    fn capabilities(_settings: &Self::Settings) -> Vec<Need> {
        Vec::new()
    }
    /// Loads the BPF programs (the kernel's verifier is the real capability check) and,
    /// when the context says so, attaches them.
    fn load(settings: &Self::Settings, context: &mut LoadContext<'_>) -> Result<Self, ProbeError>;
}

/// A registered built-in probe, whatever its settings type.
pub trait ProbeSpec: Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn default_yaml(&self) -> &'static str;
    fn enabled(&self, probes: &ProbesConfig) -> bool;
    fn capabilities(&self, probes: &ProbesConfig) -> Vec<Need>;
    fn ranges(&self, probes: &ProbesConfig) -> Vec<Range>;
    fn check(&self, probes: &ProbesConfig) -> Result<(), Invalid>;
    fn load(
        &self,
        probes: &ProbesConfig,
        context: &mut LoadContext<'_>,
    ) -> Result<Box<dyn Probe>, ProbeError>;
}

struct Registered<P: BuiltIn> {
    name: &'static str,
    settings: fn(&ProbesConfig) -> &P::Settings,
    /// The folder's `config.yaml`: its settings' documented defaults.
    default_yaml: &'static str,
}

impl<P: BuiltIn> ProbeSpec for Registered<P> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn description(&self) -> &'static str {
        P::DESCRIPTION
    }
    fn default_yaml(&self) -> &'static str {
        self.default_yaml
    }
    fn enabled(&self, probes: &ProbesConfig) -> bool {
        (self.settings)(probes).enabled()
    }
    fn capabilities(&self, probes: &ProbesConfig) -> Vec<Need> {
        P::capabilities((self.settings)(probes))
    }
    fn ranges(&self, probes: &ProbesConfig) -> Vec<Range> {
        (self.settings)(probes).ranges()
    }
    fn check(&self, probes: &ProbesConfig) -> Result<(), Invalid> {
        (self.settings)(probes).check()
    }
    fn load(
        &self,
        probes: &ProbesConfig,
        context: &mut LoadContext<'_>,
    ) -> Result<Box<dyn Probe>, ProbeError> {
        Ok(Box::new(P::load((self.settings)(probes), context)?))
    }
}

/// The `probes` section of the embedded default configuration: each probe's
/// `config.yaml`, in the order of the list.
pub fn default_yaml() -> String {
    let mut yaml = String::from("probes:\n");
    for spec in BUILT_IN {
        yaml.push_str(&format!("  {}:\n", spec.name()));
        for line in spec.default_yaml().lines() {
            if line.is_empty() {
                yaml.push('\n');
            } else {
                yaml.push_str(&format!("    {line}\n"));
            }
        }
    }
    yaml
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
    /// Moves the profiles made since the last call into `out`.
    fn take_profiles(&mut self, _out: &mut Vec<crate::model::profile::Profile>) {}
    /// Makes what the probe holds for its next hand-over ready now: the agent is
    /// stopping.
    fn flush(&mut self) {}
}
