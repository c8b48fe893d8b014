//! The `profile` probe: CPU samples of every process with their kernel and user stacks,
//! counted in the kernel (see `profile.bpf.c`), symbolized in user space into the
//! model's profiles.

pub mod config;
mod kallsyms;
pub mod sampler;
pub mod symbols;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant, SystemTime};

use super::util::{MapFill, ProbeError};
use super::{BuiltIn, LoadContext, Probe};
use crate::enrich::Workloads;
use crate::kernel::caps::{self, Need};
use crate::model::profile::{Frame, Profile, ProfileLosses, StackSamples};
use crate::model::{Family, Labels, MetricKind, Value};
use config::ProfileConfig;
use sampler::{RawProfile, Sampler, SamplerError, SamplerOptions, StackRef};
use symbols::Symbols;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/profile.skel.rs"));
}

/// Functions a complete user stack ends in: where a process or thread starts. A stack
/// that ends elsewhere was cut short, by a frame without a frame pointer.
const STACK_ROOTS: &[&str] = &[
    "runtime.goexit",
    "runtime.mstart",
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
];

/// Symbolizes what the kernel counted, each process labelled by `labels_of` (called
/// once per process, with its pid and name). Stacks are merged by their frames' names.
pub fn build(
    raw: &RawProfile,
    symbols: &mut Symbols,
    labels_of: &mut dyn FnMut(u32, &str) -> Labels,
    start: SystemTime,
    duration: Duration,
    frequency_hz: u64,
) -> Profile {
    let before = symbols.unsymbolized;
    // Every address a stack returns to is named by the call before it: address - 1.
    let stacks: HashMap<u32, Vec<u64>> = raw
        .stacks
        .iter()
        .map(|(&id, frames)| {
            let lookups = frames
                .iter()
                .enumerate()
                .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
                .collect();
            (id, lookups)
        })
        .collect();
    let frames_of = |stack: StackRef| match stack {
        StackRef::Kept(id) => stacks.get(&id).map_or(&[][..], Vec::as_slice),
        _ => &[],
    };
    let mut kernel_addresses = HashSet::new();
    let mut user_addresses: HashMap<u32, HashSet<u64>> = HashMap::new();
    for sample in &raw.samples {
        kernel_addresses.extend(frames_of(sample.kernel));
        user_addresses
            .entry(sample.pid)
            .or_default()
            .extend(frames_of(sample.user));
    }
    let kernel_addresses: Vec<u64> = kernel_addresses.into_iter().collect();
    let kernel_names = symbols.kernel(&kernel_addresses);
    let user_names: HashMap<u32, HashMap<u64, Frame>> = user_addresses
        .into_iter()
        .map(|(pid, addresses)| {
            let addresses: Vec<u64> = addresses.into_iter().collect();
            (pid, symbols.user(pid, &addresses))
        })
        .collect();

    let mut merged: BTreeMap<(u32, String, Vec<Frame>), u64> = BTreeMap::new();
    let mut profile = Profile {
        start: Some(start),
        duration,
        frequency_hz,
        losses: ProfileLosses {
            uncounted: raw.uncounted,
            ..ProfileLosses::default()
        },
        ..Profile::default()
    };
    for sample in &raw.samples {
        let mut frames = Vec::new();
        for address in frames_of(sample.kernel) {
            if let Some(frame) = kernel_names.get(address) {
                frames.push(frame.clone());
            }
        }
        let user = frames_of(sample.user);
        let names = user_names.get(&sample.pid);
        for address in user {
            if let Some(frame) = names.and_then(|n| n.get(address)) {
                frames.push(frame.clone());
            }
        }
        let truncated = !user.is_empty()
            && !frames
                .last()
                .is_some_and(|f| STACK_ROOTS.contains(&f.function.as_str()));
        if truncated {
            profile.losses.truncated += sample.count;
        }
        if sample.user == StackRef::Lost || sample.kernel == StackRef::Lost {
            profile.losses.lost_stacks += sample.count;
        }
        *merged
            .entry((sample.pid, sample.process.clone(), frames))
            .or_default() += sample.count;
    }
    let mut labels: HashMap<u32, Labels> = HashMap::new();
    profile.stacks = merged
        .into_iter()
        .map(|((pid, process, frames), count)| StackSamples {
            labels: labels
                .entry(pid)
                .or_insert_with(|| labels_of(pid, &process))
                .clone(),
            pid,
            process,
            frames,
            count,
        })
        .collect();
    profile.losses.unsymbolized = symbols.unsymbolized - before;
    profile
}

/// What the sampler counted since `start`, symbolized: the sampler stops first, so the
/// profile's end is where sampling ended.
pub fn finish(mut sampler: sampler::Sampler, start: SystemTime, frequency_hz: u64) -> Profile {
    let raw = sampler.read();
    let elapsed = start.elapsed().unwrap_or_default();
    drop(sampler);
    build(
        &raw,
        &mut Symbols::default(),
        &mut |_, _| Labels::new(),
        start,
        elapsed,
        frequency_hz,
    )
}

/// Profiles made and not yet taken, at most: the exporters take them every collector
/// round, so more wait only while the collector is busy.
const MAX_PENDING: usize = 4;

impl BuiltIn for ProfileProbe {
    type Settings = ProfileConfig;
    const DESCRIPTION: &'static str =
        "CPU profiles: every process's kernel and user stacks, sampled on every CPU";

    /// Naming frames reads every process's binaries through /proc/PID/map_files, which
    /// the kernel opens only to CAP_SYS_ADMIN, and its maps, which need ptrace access.
    fn capabilities(_settings: &ProfileConfig) -> Vec<Need> {
        let mut needs = caps::reading_other_processes(
            "read every process's memory map to name its frames (probes.profile)",
            true,
        );
        needs.push(Need {
            capability: caps::SYS_ADMIN,
            why: "open the binaries of every process, in containers too, through /proc/PID/map_files (probes.profile)",
            after_start: true,
        });
        // /proc/kallsyms shows its addresses only to CAP_SYSLOG where
        // perf_event_paranoid is above 1, as distributions set it.
        needs.push(Need {
            capability: caps::SYSLOG,
            why: "read the kernel's symbol addresses in /proc/kallsyms to name kernel frames (probes.profile)",
            after_start: true,
        });
        needs
    }

    fn load(settings: &Self::Settings, context: &mut LoadContext<'_>) -> Result<Self, ProbeError> {
        let options = SamplerOptions {
            frequency_hz: settings.frequency_hz,
            pid: None,
            cgroup: None,
            max_stacks: settings.max_stacks.get(),
            max_counts: settings.max_counts.get(),
            attach: context.attach,
        };
        let sampler = Sampler::start(&options).map_err(|err| match err {
            SamplerError::Probe(err) => err,
            other => ProbeError::Unsupported(other.to_string()),
        })?;
        Ok(ProfileProbe {
            sampler,
            symbols: Symbols::new(settings.max_cached_names.get() as usize),
            workloads: context.workloads.clone(),
            interval: context.profile_interval,
            frequency_hz: settings.frequency_hz,
            next: Instant::now() + context.profile_interval,
            window_start: SystemTime::now(),
            pending: VecDeque::new(),
            dropped: 0,
            losses: ProfileLosses::default(),
            fill: Vec::new(),
        })
    }
}

/// The loaded probe: a profile of every interval waits in `pending` for the exporters.
pub struct ProfileProbe {
    sampler: Sampler,
    symbols: Symbols,
    workloads: Workloads,
    interval: Duration,
    frequency_hz: u64,
    next: Instant,
    window_start: SystemTime,
    pending: VecDeque<Profile>,
    /// Profiles given up because nobody took them.
    dropped: u64,
    /// What was lost over every profile so far.
    losses: ProfileLosses,
    fill: Vec<MapFill>,
}

impl ProfileProbe {
    /// The interval's profile: what the kernel counted since the last one.
    fn take_interval(&mut self) {
        let raw = self.sampler.take();
        let start = std::mem::replace(&mut self.window_start, SystemTime::now());
        let duration = self.window_start.duration_since(start).unwrap_or_default();
        let workloads = &self.workloads;
        let profile = build(
            &raw,
            &mut self.symbols,
            &mut |pid, name| {
                let name = crate::model::unreserved(name);
                workloads.process_labels(Some(pid), &name, &workloads.of_pid("/proc", pid))
            },
            start,
            duration,
            self.frequency_hz,
        );
        // The binaries parsed this round are not kept: their names are, in the cache.
        self.symbols.release();
        let losses = &mut self.losses;
        losses.truncated += profile.losses.truncated;
        losses.lost_stacks += profile.losses.lost_stacks;
        losses.unsymbolized += profile.losses.unsymbolized;
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(profile);
    }

    fn counter(name: &'static str, help: &'static str, value: u64) -> Family {
        let mut family = Family::new(name, help, MetricKind::Counter);
        family.push(Vec::new(), Value::Counter(value as f64));
        family
    }
}

impl Probe for ProfileProbe {
    fn name(&self) -> &'static str {
        "profile"
    }

    fn attach_method(&self) -> String {
        let cpus = match self.sampler.cpus() {
            0 => "every online CPU".to_string(),
            n => format!("{n} CPUs"),
        };
        format!(
            "perf_event CPU clock at {} Hz on {cpus}, stack maps",
            self.frequency_hz
        )
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        if now >= self.next {
            self.take_interval();
            self.next = now + self.interval;
        }
        Some(self.next)
    }

    fn take_profiles(&mut self, out: &mut Vec<Profile>) {
        out.extend(self.pending.drain(..));
    }

    fn flush(&mut self) {
        self.take_interval();
    }

    fn collect(&mut self, _now: Instant, out: &mut Vec<Family>) {
        let counters = self.sampler.counters();
        out.push(Self::counter(
            "periscope_profile_samples",
            "CPU samples of processes taken by the profile probe, recorded or not.",
            counters.samples,
        ));
        let mut lost = Family::new(
            "periscope_profile_stacks_lost",
            "Stacks or samples the kernel could not keep: a stack whose slot in the stack map held another (collision), a sample the count map had no room for (count_map_full).",
            MetricKind::Counter,
        );
        lost.push(
            vec![("reason", "collision".into())],
            Value::Counter(counters.collisions as f64),
        );
        lost.push(
            vec![("reason", "count_map_full".into())],
            Value::Counter(counters.folded as f64),
        );
        out.push(lost);
        out.push(Self::counter(
            "periscope_profile_truncated_stacks",
            "Samples whose user stack stopped short of where its thread started: code without frame pointers, or deeper than 127 frames.",
            self.losses.truncated,
        ));
        out.push(Self::counter(
            "periscope_profile_symbolization_failures",
            "Frame addresses no symbol covered, named by their module and offset instead.",
            self.losses.unsymbolized,
        ));
        out.push(Self::counter(
            "periscope_profile_symbol_cache_evictions",
            "Frame names, and binaries' build ids, dropped from the profile probe's full caches (probes.profile.max_cached_names each); they are looked up again when seen.",
            self.symbols.evicted(),
        ));
        out.push(Self::counter(
            "periscope_profiles_dropped",
            "Interval profiles given up because no exporter took them in time.",
            self.dropped,
        ));
        let (entries, capacity) = self.sampler.fill();
        self.fill = vec![MapFill {
            map: "profile_counts",
            entries,
            capacity,
        }];
    }

    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        vec![("psc_profile_sample".into(), self.sampler.program())]
    }

    fn map_fill(&self) -> Vec<MapFill> {
        self.fill.clone()
    }

    fn folded(&self) -> Vec<(&'static str, u64)> {
        vec![("profile_counts", self.sampler.counters().folded)]
    }
}

/// The cgroup v2 id of the running container whose id starts with `id` (at least 4
/// characters), found from the processes' `/proc/PID/cgroup`.
pub fn container_cgroup(id: &str) -> Result<u64, String> {
    use crate::enrich::cgroup::{cgroup_id_of_pid, cgroup_path_of_proc, container_of, unified_mount};

    if id.len() < 4 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{id:?} is not a container id (at least 4 hex digits)"));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let root = unified_mount(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("reading /proc: {e}"))?;
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let ours = cgroup_path_of_proc(&text)
            .and_then(|path| container_of(&path))
            .is_some_and(|c| c.container_id.starts_with(id));
        if ours {
            if let Some(cgroup) = cgroup_id_of_pid(&root, pid) {
                return Ok(cgroup);
            }
        }
    }
    Err(format!("no running process in a container {id}"))
}
