//! The `syscalls` probe: per process and syscall, counts, errors by errno and latency
//! histograms, aggregated in the kernel (see `syscalls.bpf.c` for the design and costs).

pub mod config;
pub mod errno;
mod fast;
mod policy;
pub mod table;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::{Link, MapCore, MapFlags, TracepointCategory};
use tracing::{debug, info, warn};

use super::kit::programs::{load_degrading, AttemptError, Degraded, Plan, ProgramSpec};
use super::util::{self, decode, plain_bytes, MapFill, ProbeError};
use super::{BuiltIn, LoadContext, Probe};
use crate::settings::SamplingMode;
use crate::enrich::workload::RecordedCgroup;
use crate::enrich::process::UNKNOWN_NAME;
use crate::enrich::{ProcessTable, Workload};
use crate::kernel::duty::DutyCycle;
use crate::model::histogram::DurationBounds;
use crate::model::native::{KernelHistogram, Unit};
use crate::model::{Family, MetricKind, Value};
use config::SyscallsConfig;
use fast::FastTable;
use policy::{Policy, Rows, SyscallSeries};
use super::kit::idle::Accumulate;
use super::kit::lifecycle::{Owner, ProcessSeries};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/syscalls.skel.rs"));
}
use skel::{types, SyscallsSkel, SyscallsSkelBuilder};
use types::psc_syscall_folded_slot as Folded;
use types::psc_syscall_share as Share;

util::plain_types!(
    types::psc_syscall_key,
    types::psc_syscall_error_key,
    types::psc_process_key,
    types::psc_syscall_nr_err,
    types::psc_hist,
    types::psc_process,
    types::psc_fast_slot,
);

/// PSC_MAX_SYSCALLS of bpf/periscope.h, which sizes the object's `latency_index`.
const MAX_SYSCALLS: u32 = util::field_len(|r: &types::rodata| &r.latency_index) as u32;
/// Label value of the series data folds into when a map is full.
pub use crate::model::OVERFLOW as OVERFLOW_NAME;

/// The keyed maps tenants share, by their index in bpf/tenants.h's arrays.
const SHARED_MAPS: [(&str, Share); 3] = [
    ("counts", Share::PSC_SHARE_COUNTS),
    ("errors", Share::PSC_SHARE_ERRORS),
    ("latency", Share::PSC_SHARE_LATENCY),
];

/// The slots of the `folded` array, as the BPF object names them (syscalls.h).
const FOLDED_SLOTS: [(&str, Folded); 5] = [
    ("counts", Folded::PSC_FOLDED_COUNTS),
    ("errors", Folded::PSC_FOLDED_ERRORS),
    ("latency", Folded::PSC_FOLDED_LATENCY),
    ("overflow_errors", Folded::PSC_FOLDED_OVERFLOW_ERRORS),
    ("start", Folded::PSC_FOLDED_START),
];

impl BuiltIn for SyscallsProbe {
    type Settings = SyscallsConfig;
    const DESCRIPTION: &'static str =
        "per process and syscall: count, errors by errno, latency histogram";

    fn load(settings: &Self::Settings, context: &mut LoadContext<'_>) -> Result<Self, ProbeError> {
        util::check_btf()?;
        let mut timed: Vec<u32> = settings.latency_syscalls.iter().map(|s| s.0).collect();
        timed.sort_unstable();
        timed.dedup();

        // Classic tracepoints need tracefs: mounted here when absent (only checking,
        // nothing is mounted, and what would be used is said).
        let tracefs = if timed.is_empty() {
            false
        } else if !context.attach {
            context.kernel.tracefs.is_some()
        } else {
            match context.kernel.ensure_tracefs() {
                Ok(_) => true,
                Err(reason) => {
                    warn!(%reason, "timing syscalls through tp_btf/sys_enter instead of per-syscall tracepoints (costs more per syscall)");
                    false
                }
            }
        };
        let (mut probe, degraded) = load_degrading("syscalls", PROGRAMS, |plan| {
            let enter_hook = if timed.is_empty() {
                EnterHook::None
            } else if plan.loads("psc_sys_enter_tp") {
                if !tracefs {
                    return Err(AttemptError::Attach {
                        program: "psc_sys_enter_tp",
                        source: libbpf_rs::Error::from(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "tracefs is not mounted",
                        )),
                    });
                }
                EnterHook::PerSyscallTracepoints
            } else if plan.loads("psc_sys_enter_btf") {
                EnterHook::BtfSysEnter
            } else {
                EnterHook::None
            };
            Self::load_with(settings, context, &timed, enter_hook, plan)
        })?;
        probe.degraded = degraded;
        Ok(probe)
    }
}

const TIMING: &str = "syscall latency";
const TIMING_LOSS: &str =
    "syscall_duration_seconds: syscalls are counted, with their errors, but not timed";

/// Counting at exit is the probe; timing needs one of two enter hooks, the per-syscall
/// tracepoints first (they cost only the timed syscalls).
static PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec::required("psc_sys_exit", "tp_btf/sys_exit"),
    ProgramSpec::optional(
        "psc_sys_enter_tp",
        "tracepoint syscalls/sys_enter_* (tracefs) with task storage",
        TIMING,
        TIMING_LOSS,
    ),
    ProgramSpec::optional(
        "psc_sys_enter_btf",
        "tp_btf/sys_enter with task storage",
        TIMING,
        TIMING_LOSS,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnterHook {
    None,
    /// syscalls/sys_enter_<name> for each timed syscall (needs tracefs).
    PerSyscallTracepoints,
    /// tp_btf/sys_enter on every syscall, returning early for untimed ones.
    BtfSysEnter,
}

/// A process as the kernel side keys it: tgid and generation (syscalls.h).
type Proc = (u32, u16);

pub struct SyscallsProbe {
    skel: SyscallsSkel<'static>,
    fast: FastTable,
    exit_link: Option<Link>,
    /// Links of the timing hook; empty while a sampled timing window is closed.
    enter_links: Vec<Link>,
    /// The timing schedule, when timing is sampled.
    timing_duty: Option<DutyCycle>,
    timing_always_since: Option<Instant>,
    /// Features the kernel refused (syscall timing, on some kernels).
    degraded: Vec<Degraded>,
    enter_hook: EnterHook,
    timed: Vec<u32>,
    bounds: DurationBounds,
    pid_label: bool,
    exited_ttl: Duration,
    processes: ProcessTable<Proc>,
    /// Where rows of exited processes fold, what the budget admits, `_created`.
    policy: Policy,
    fill: Vec<MapFill>,
    cgroups: util::CgroupTenants,
    shares: util::TenantShares,
}

impl SyscallsProbe {

    /// One load attempt, with the enter hook `plan` leaves.
    fn load_with(
        settings: &SyscallsConfig,
        context: &LoadContext<'_>,
        timed: &[u32],
        enter_hook: EnterHook,
        plan: &Plan,
    ) -> Result<Self, AttemptError> {
        let (workloads, processes) = (context.workloads, context.processes);
        // The skeleton borrows its object storage for its whole life, which is the probe's.
        let mut open = util::open_object(SyscallsSkelBuilder::default(), "syscalls")?;

        let fast_slots = Self::configure(&mut open, settings, context, timed)?;
        plan.apply(open.open_object_mut());
        open.progs
            .psc_sys_enter_tp
            .set_autoload(enter_hook == EnterHook::PerSyscallTracepoints);
        open.progs
            .psc_sys_enter_btf
            .set_autoload(enter_hook == EnterHook::BtfSysEnter);

        let skel = open
            .load()
            .map_err(AttemptError::load("loading the syscalls BPF programs"))?;

        Self::select(&skel, settings)?;

        let fast =
            FastTable::map(skel.maps.fast_counts.as_fd(), fast_slots as usize).map_err(|err| {
                ProbeError::Unsupported(format!("mapping the per-CPU count table: {err}"))
            })?;
        let mut probe = SyscallsProbe {
            skel,
            fast,
            exit_link: None,
            enter_links: Vec::new(),
            timing_duty: None,
            timing_always_since: None,
            enter_hook,
            timed: timed.to_vec(),
            degraded: Vec::new(),
            bounds: DurationBounds::new(&settings.duration_buckets_seconds.0),
            pid_label: processes.pid_label,
            exited_ttl: Duration::from_secs(processes.exited_ttl_secs),
            // Without pids, a series is a name: a process keeps its first name, so that
            // renaming or exec never moves counts between series.
            processes: ProcessTable::new()
                .keep_first_name(!processes.pid_label)
                .with_workloads(workloads),
            policy: Policy::new(
                settings.latency_per_process,
                settings.duration_buckets_seconds.0.len(),
                ProcessSeries::new(
                    workloads.clone(),
                    processes.max_exited_executables.get() as usize,
                    context.budget.for_probe("syscalls"),
                ),
            ),
            fill: Vec::new(),
            cgroups: util::CgroupTenants::default(),
            shares: util::TenantShares::new(workloads.tenant_slots().count()),
        };
        if context.attach {
            probe.attach(settings, enter_hook)?;
        }
        Ok(probe)
    }

    /// Sets the object's constants and map caps before load; the fast table's slots.
    fn configure(
        open: &mut skel::OpenSyscallsSkel<'_>,
        settings: &SyscallsConfig,
        context: &LoadContext<'_>,
        timed: &[u32],
    ) -> Result<u32, ProbeError> {
        let workloads = context.workloads;
        let rodata =
            open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
                ProbeError::Unsupported("the syscalls object has no rodata".into())
            })?;
        for (index, nr) in timed.iter().enumerate() {
            if let Some(slot) = rodata.latency_index.get_mut(*nr as usize) {
                *slot = index as u16 + 1;
            }
        }
        rodata.timed_count = timed.len() as u32;
        rodata
            .psc_native_thresholds
            .copy_from_slice(Unit::Nanoseconds.kernel_thresholds());
        rodata.filter_by_tgid = u8::from(!settings.include_pids.is_empty());
        rodata.filter_by_comm = u8::from(!settings.include_executables.is_empty());
        rodata.filter_cgroups = u8::from(context.drops_tenants);
        let slots = workloads.tenant_slots().count();
        rodata.tenant_slots = slots;
        let caps = [
            settings.max_series.get(),
            settings.max_error_series.get(),
            settings.max_latency_series.get(),
        ];
        for (index, (_, map)) in SHARED_MAPS.iter().enumerate() {
            rodata.tenant_share[map.0 as usize] = (caps[index] / slots).max(1);
        }

        let cpus =
            libbpf_rs::num_possible_cpus().map_err(ProbeError::bpf("counting possible CPUs"))?;
        let slots_per_cpu = settings.per_cpu_slots;
        rodata.fast_slots_mask = slots_per_cpu - 1;
        let fast_slots = u32::try_from(cpus)
            .ok()
            .and_then(|cpus| cpus.checked_mul(slots_per_cpu))
            .ok_or_else(|| {
                ProbeError::Unsupported(format!(
                    "{cpus} CPUs x {slots_per_cpu} slots is too large a table"
                ))
            })?;
        let caps = [
            (&mut open.maps.fast_counts, fast_slots),
            (&mut open.maps.counts, settings.max_series.get()),
            (&mut open.maps.errors, settings.max_error_series.get()),
            (&mut open.maps.latency, settings.max_latency_series.get()),
            (&mut open.maps.comms, settings.max_series.get()),
            (&mut open.maps.overflow_counts, slots * MAX_SYSCALLS),
            (&mut open.maps.overflow_errors_any, slots * MAX_SYSCALLS),
            (
                &mut open.maps.overflow_latency,
                slots * (timed.len() as u32).max(1),
            ),
        ];
        for (map, cap) in caps {
            let name = map.name().to_string_lossy().into_owned();
            util::set_entries(map, cap, &name)?;
        }
        Ok(fast_slots)
    }

    /// Fills the selection maps the programs consult when `include_*` is set.
    fn select(skel: &SyscallsSkel<'_>, settings: &SyscallsConfig) -> Result<(), ProbeError> {
        for pid in &settings.include_pids {
            skel.maps
                .selected_tgids
                .update(&pid.to_ne_bytes(), &[1], MapFlags::ANY)
                .map_err(ProbeError::bpf("selecting a pid"))?;
        }
        for name in &settings.include_executables {
            let mut comm = [0u8; 16];
            comm[..name.0.len()].copy_from_slice(name.0.as_bytes());
            skel.maps
                .selected_comms
                .update(&comm, &[1], MapFlags::ANY)
                .map_err(ProbeError::bpf("selecting an executable"))?;
        }

        Ok(())
    }

    /// Attaches the exit hook and, when syscalls are timed, the enter hook (kept
    /// attached when timing always, else opened by the duty cycle).
    fn attach(&mut self, settings: &SyscallsConfig, enter_hook: EnterHook) -> Result<(), AttemptError> {
        self.exit_link = Some(
            self.skel
                .progs
                .psc_sys_exit
                .attach()
                .map_err(AttemptError::attach("psc_sys_exit"))?,
        );
        if enter_hook != EnterHook::None {
            let now = Instant::now();
            // Attached once here even when sampled: a kernel that refuses the hook
            // says so at start, and the other hook is tried.
            let program = match enter_hook {
                EnterHook::BtfSysEnter => "psc_sys_enter_btf",
                _ => "psc_sys_enter_tp",
            };
            let links = self
                .attach_enter()
                .map_err(AttemptError::attach(program))?;
            match settings.latency_sampling {
                SamplingMode::Always => {
                    self.enter_links = links;
                    self.timing_always_since = Some(now);
                }
                SamplingMode::Sampled => {
                    drop(links);
                    self.timing_duty = Some(DutyCycle::new(
                        Duration::from_secs(settings.latency_sample_secs),
                        Duration::from_secs(settings.latency_period_secs),
                        now,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Attaches the timing hook: the start stamps of the timed syscalls.
    fn attach_enter(&self) -> Result<Vec<Link>, libbpf_rs::Error> {
        let progs = &self.skel.progs;
        let mut links = Vec::new();
        match self.enter_hook {
            EnterHook::None => {}
            EnterHook::BtfSysEnter => links.push(progs.psc_sys_enter_btf.attach()?),
            EnterHook::PerSyscallTracepoints => {
                for nr in &self.timed {
                    let name = syscall_name(*nr);
                    let tracepoint = format!("sys_enter_{name}");
                    match progs
                        .psc_sys_enter_tp
                        .attach_tracepoint(TracepointCategory::Syscalls, &tracepoint)
                    {
                        Ok(link) => links.push(link),
                        Err(err) => {
                            warn!(syscall = %name, error = %err, "this syscall has no enter tracepoint here; it is counted but not timed")
                        }
                    }
                }
            }
        }
        debug!(links = links.len(), "syscall timing attached");
        Ok(links)
    }

    /// How long syscalls have been timed.
    fn timing_enabled_for(&self, now: Instant) -> Duration {
        match (&self.timing_duty, self.timing_always_since) {
            (Some(duty), _) => duty.on_for(now),
            (None, Some(since)) => now.saturating_duration_since(since),
            (None, None) => Duration::ZERO,
        }
    }

    /// The name and cgroup the kernel recorded for a process.
    fn recorded(&self, (tgid, gen): Proc) -> Option<(String, RecordedCgroup)> {
        let key = types::psc_process_key {
            tgid,
            gen,
            ..Default::default()
        };
        util::recorded_process!(types, self.skel.maps.comms, plain_bytes(&key))
    }

    fn owner(&self, process: Proc) -> Owner {
        let pid = self.pid_label.then_some(process.0);
        match self.processes.get(process) {
            Some(info) => Owner::new(pid, info.name.clone(), info.workload.clone()),
            None => Owner::new(pid, UNKNOWN_NAME, Workload::default()),
        }
    }

    /// Hands the rows of processes gone for the TTL to the policy, which folds them into
    /// the aggregates, and frees their kernel map entries. One pass over the reading and
    /// the per-CPU tables, however many processes expire.
    fn expire(&mut self, now: Instant, reading: &mut Reading) {
        let expired = self.processes.expired(now, self.exited_ttl);
        if expired.is_empty() {
            return;
        }
        let mut gone: HashMap<Proc, (Owner, BTreeMap<u32, SyscallSeries>)> =
            HashMap::with_capacity(expired.len());
        for process in expired {
            let owner = self.owner(process);
            if self.processes.remove(process).is_some() {
                gone.insert(process, (owner, BTreeMap::new()));
            }
        }
        reading
            .keys
            .retain(|process, _| !gone.contains_key(process));
        let maps = &self.skel.maps;
        let series_key = |(tgid, gen): Proc, nr: u32| types::psc_syscall_key {
            tgid,
            nr: nr as u16,
            gen,
        };
        for ((process, nr), count) in reading.counts.extract_pids(&gone) {
            if let Some((_, rows)) = gone.get_mut(&process) {
                rows.entry(nr)
                    .or_default()
                    .merge(&SyscallSeries::calls(count));
            }
            let _ = maps.counts.delete(plain_bytes(&series_key(process, nr)));
        }
        for ((process, nr, err), count) in reading.errors.extract_pids(&gone) {
            if let Some((_, rows)) = gone.get_mut(&process) {
                *rows.entry(nr).or_default().errors.entry(err).or_default() += count;
            }
            let key = types::psc_syscall_error_key {
                tgid: process.0,
                nr: nr as u16,
                gen: process.1,
                err,
            };
            let _ = maps.errors.delete(plain_bytes(&key));
        }
        for ((process, nr), hist) in reading.latency.extract_pids(&gone) {
            if let Some((_, rows)) = gone.get_mut(&process) {
                rows.entry(nr).or_default().latency = Some(hist);
            }
            let _ = maps.latency.delete(plain_bytes(&series_key(process, nr)));
        }
        self.fast.release(|process| gone.contains_key(&process));
        for (tgid, gen) in gone.keys() {
            let key = types::psc_process_key {
                tgid: *tgid,
                gen: *gen,
                ..Default::default()
            };
            let _ = maps.comms.delete(plain_bytes(&key));
        }
        let processes = gone.len();
        for (owner, rows) in gone.into_values() {
            self.policy.fold_exited(&owner, rows);
        }
        debug!(processes, "folded exited processes' series");
    }

    fn read(&mut self) -> Reading {
        self.shares.before_read(&self.skel.maps.tenant_added);
        let maps = &self.skel.maps;
        let shares = self.shares.enabled();
        let mut reading = Reading::default();
        // Counts last: the kernel adds a call before its error and latency, so no reading
        // holds an error whose call it missed.
        for (key, values) in util::read_percpu(&maps.errors) {
            reading.entries[2] += 1;
            if let Some(k) = decode::<types::psc_syscall_error_key>(&key) {
                reading.errors.0.insert(
                    ((k.tgid, k.gen), u32::from(k.nr), k.err),
                    util::sum_percpu_u64(&values),
                );
                if shares {
                    reading.tally((k.tgid, k.gen), Share::PSC_SHARE_ERRORS);
                }
            }
        }
        for (key, value) in util::read_shared(&maps.latency) {
            reading.entries[3] += 1;
            if let (Some(k), Some(hist)) =
                (decode::<types::psc_syscall_key>(&key), decode_hist(&value))
            {
                reading
                    .latency
                    .0
                    .insert(((k.tgid, k.gen), u32::from(k.nr)), hist);
                if shares {
                    reading.tally((k.tgid, k.gen), Share::PSC_SHARE_LATENCY);
                }
            }
        }
        for (process, nr, count) in self.fast.taken() {
            *reading.counts.0.entry((process, nr)).or_default() += count;
            reading.entries[0] += 1;
        }
        for (key, values) in util::read_percpu(&maps.counts) {
            reading.entries[1] += 1;
            if let Some(k) = decode::<types::psc_syscall_key>(&key) {
                *reading
                    .counts
                    .0
                    .entry(((k.tgid, k.gen), u32::from(k.nr)))
                    .or_default() += util::sum_percpu_u64(&values);
                if shares {
                    reading.tally((k.tgid, k.gen), Share::PSC_SHARE_COUNTS);
                }
            }
        }
        reading
    }

    /// Tells the program how many entries of each keyed map each tenant slot holds now:
    /// those of the processes still there after `expire`.
    fn count_shares(&self, reading: &Reading) {
        if !self.shares.enabled() {
            return;
        }
        let mut entries = self.shares.entries();
        let workloads = self.processes.workloads();
        for (process, maps) in &reading.keys {
            let slot = self
                .processes
                .get(*process)
                .map(|info| workloads.tenant_slot(&info.workload))
                .filter(|slot| (*slot as usize) < entries.len())
                .unwrap_or(0);
            for (mine, theirs) in entries[slot as usize].iter_mut().zip(maps) {
                *mine += theirs;
            }
        }
        self.shares
            .after_read(&self.skel.maps.tenant_base, &entries);
    }

    /// The tenant slots whose overflow series may hold something: every slot once a
    /// keyed map itself was full, else those whose share of one was. A call goes to the
    /// overflow with its error and latency when any of its maps refuses it, so each
    /// overflow map is read after a refusal by any. Reading a slot's costs a lookup per
    /// syscall.
    fn overflowed(&self) -> Vec<u32> {
        let maps = [
            Folded::PSC_FOLDED_COUNTS,
            Folded::PSC_FOLDED_ERRORS,
            Folded::PSC_FOLDED_LATENCY,
        ];
        if maps.iter().any(|map| self.folded_count(map.0) > 0) {
            return (0..self.slot_count()).collect();
        }
        let slots: BTreeSet<u32> = SHARED_MAPS
            .iter()
            .flat_map(|(_, share)| self.shares.folded(share.0))
            .map(|(slot, _)| slot)
            .collect();
        slots.into_iter().collect()
    }

    /// Tenant slots, slot 0 (no tenant) included.
    fn slot_count(&self) -> u32 {
        self.processes.workloads().tenant_slots().count()
    }

    /// The owner of a tenant slot's overflow series.
    fn overflow_owner(&self, slot: u32) -> Owner {
        Owner::overflow(self.processes.workloads().tenant_slots().name_of(slot))
    }

    fn folded_count(&self, slot: u32) -> u64 {
        util::percpu_array_u64(&self.skel.maps.folded, slot)
    }

    /// The overflow series, one set per tenant slot: only read when something folded,
    /// as they are 512 lookups per slot and map. Counts are read last: the kernel adds a
    /// call before its error and latency, so no reading holds an error whose call it
    /// missed.
    fn read_overflow(&self) -> Rows {
        let maps = &self.skel.maps;
        let mut rows = Rows::new();
        let slots = self.overflowed();
        if slots.is_empty() {
            return rows;
        }
        let mut add = |owner: &Owner, nr: u32, series: SyscallSeries| {
            rows.entry((owner.clone(), nr)).or_default().merge(&series);
        };
        let errors = |err: u32, count: u64| SyscallSeries {
            errors: BTreeMap::from([(err, count)]),
            ..Default::default()
        };
        for (key, values) in util::read_percpu(&maps.overflow_errors) {
            if let Some(k) = decode::<types::psc_syscall_nr_err>(&key) {
                let owner = self.overflow_owner(u32::from(k.tenant));
                let nr = u32::from(k.nr);
                add(&owner, nr, errors(k.err, util::sum_percpu_u64(&values)));
            }
        }
        if self.folded_count(Folded::PSC_FOLDED_OVERFLOW_ERRORS.0) > 0 {
            for slot in 0..self.slot_count() {
                let owner = self.overflow_owner(slot);
                for nr in 0..MAX_SYSCALLS {
                    let idx = slot * MAX_SYSCALLS + nr;
                    let count = util::percpu_array_u64(&maps.overflow_errors_any, idx);
                    if count > 0 {
                        add(&owner, nr, errors(0, count));
                    }
                }
            }
        }
        let timed = self.timed.len() as u32;
        for &slot in &slots {
            let owner = self.overflow_owner(slot);
            for (index, nr) in self.timed.iter().enumerate() {
                let idx = slot * timed + index as u32;
                let hist = maps
                    .overflow_latency
                    .lookup(&idx.to_ne_bytes(), MapFlags::ANY)
                    .ok()
                    .flatten()
                    .and_then(|bytes| decode_hist(&bytes));
                if let Some(hist) = hist.filter(|h| !h.is_empty()) {
                    let series = SyscallSeries {
                        latency: Some(hist),
                        ..Default::default()
                    };
                    add(&owner, *nr, series);
                }
            }
        }
        for slot in slots {
            let owner = self.overflow_owner(slot);
            for nr in 0..MAX_SYSCALLS {
                let count = util::percpu_array_u64(&maps.overflow_counts, slot * MAX_SYSCALLS + nr);
                if count > 0 {
                    add(&owner, nr, SyscallSeries::calls(count));
                }
            }
        }
        rows
    }

    /// The live processes' rows by owner, and when each owner was first seen.
    fn live_rows(&self, reading: Reading) -> (Rows, HashMap<Owner, SystemTime>) {
        let mut per_process: BTreeMap<(Proc, u32), SyscallSeries> = BTreeMap::new();
        for ((pid, nr), count) in reading.counts.0 {
            per_process
                .entry((pid, nr))
                .or_default()
                .merge(&SyscallSeries::calls(count));
        }
        for ((pid, nr, err), count) in reading.errors.0 {
            *per_process
                .entry((pid, nr))
                .or_default()
                .errors
                .entry(err)
                .or_default() += count;
        }
        for ((pid, nr), hist) in reading.latency.0 {
            per_process.entry((pid, nr)).or_default().latency = Some(hist);
        }
        let mut rows = Rows::new();
        let mut first_seen: HashMap<Owner, SystemTime> = HashMap::new();
        for ((pid, nr), series) in per_process {
            let owner = self.owner(pid);
            if let Some(info) = self.processes.get(pid) {
                for owner in [owner.clone(), owner.executable()] {
                    first_seen
                        .entry(owner)
                        .and_modify(|t| *t = (*t).min(info.first_seen))
                        .or_insert(info.first_seen);
                }
            }
            self.policy.add_process(&mut rows, &owner, nr, series);
        }
        (rows, first_seen)
    }

    /// The families of the rows the policy exports.
    fn families(&self, rows: &Rows) -> [Family; 3] {
        let mut calls = Family::new(
            "syscalls",
            "Syscalls completed, per process and syscall.",
            MetricKind::Counter,
        );
        let mut errors = Family::new(
            "syscall_errors",
            "Syscalls that returned an error, per process, syscall and errno.",
            MetricKind::Counter,
        );
        let mut durations = Family::new(
            "syscall_duration_seconds",
            "Time from syscall entry to exit, for the syscalls configured for latency (per executable unless latency_per_process).",
            MetricKind::Histogram,
        )
        .with_unit("seconds");
        let workloads = self.processes.workloads();
        for ((owner, nr), series) in rows {
            let created = self.policy.series().created(owner);
            let mut labels = owner.labels(workloads);
            labels.push(("syscall", syscall_name(*nr)));
            if let Some(count) = series.calls {
                calls.push_created(labels.clone(), Value::Counter(count as f64), created);
            }
            for (err, count) in &series.errors {
                let mut labels = labels.clone();
                labels.push(("errno", errno_name(*err)));
                errors.push_created(labels, Value::Counter(*count as f64), created);
            }
            if let Some(hist) = &series.latency {
                let value = Value::Histogram(self.bounds.classic_and_native(hist));
                durations.push_created(labels, value, created);
            }
        }
        [calls, errors, durations]
    }

    /// The fill of every capped map, from entry counts the read already took.
    fn record_fill(&mut self, entries: [u64; 4]) {
        let maps = &self.skel.maps;
        let read_fill = |map: &'static str, entries: u64, capacity: u32| MapFill {
            map,
            entries,
            capacity: u64::from(capacity),
        };
        self.fill = vec![
            MapFill {
                map: "fast_counts",
                entries: entries[0],
                capacity: self.fast.capacity() as u64,
            },
            read_fill("counts", entries[1], maps.counts.max_entries()),
            read_fill("errors", entries[2], maps.errors.max_entries()),
            read_fill("latency", entries[3], maps.latency.max_entries()),
            MapFill::of("overflow_errors", &maps.overflow_errors),
            MapFill::of("comms", &maps.comms),
            self.cgroups.fill(&maps.cgroup_tenants),
        ];
        self.fill.extend(self.policy.series().fill());
    }
}

/// One read of the kernel maps, keyed by process.
#[derive(Default)]
struct Reading {
    counts: PidKeyed<(Proc, u32), u64>,
    errors: PidKeyed<(Proc, u32, u32), u64>,
    latency: PidKeyed<(Proc, u32), KernelHistogram>,
    /// Keys of each process in the keyed maps tenants share, when they do.
    keys: HashMap<Proc, [i64; util::TENANT_MAPS as usize]>,
    /// Entries read from the per-CPU table and the counts, errors and latency maps, for
    /// the map-fill self-metrics (reading them costs a syscall per entry: once is enough).
    entries: [u64; 4],
}

impl Reading {
    fn tally(&mut self, process: Proc, map: Share) {
        self.keys.entry(process).or_default()[map.0 as usize] += 1;
    }
}

struct PidKeyed<K, V>(HashMap<K, V>);

impl<K, V> Default for PidKeyed<K, V> {
    fn default() -> Self {
        PidKeyed(HashMap::new())
    }
}

trait HasPid {
    fn pid(&self) -> Proc;
}
impl HasPid for (Proc, u32) {
    fn pid(&self) -> Proc {
        self.0
    }
}
impl HasPid for (Proc, u32, u32) {
    fn pid(&self) -> Proc {
        self.0
    }
}

impl<K: HasPid + Copy + std::hash::Hash + Eq, V> PidKeyed<K, V> {
    /// Removes and returns the entries of the given processes.
    fn extract_pids<T>(&mut self, pids: &HashMap<Proc, T>) -> Vec<(K, V)> {
        let keys: Vec<K> = self
            .0
            .keys()
            .filter(|k| pids.contains_key(&k.pid()))
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.0.remove(&k).map(|v| (k, v)))
            .collect()
    }

    fn pids(&self) -> impl Iterator<Item = Proc> + '_ {
        self.0.keys().map(HasPid::pid)
    }
}

impl Probe for SyscallsProbe {
    fn name(&self) -> &'static str {
        "syscalls"
    }

    fn attach_method(&self) -> String {
        let enter = match self.enter_hook {
            EnterHook::None => "no syscall is timed".to_string(),
            EnterHook::PerSyscallTracepoints => format!(
                "tracepoint syscalls/sys_enter_* for {} timed syscalls",
                self.timed.len()
            ),
            EnterHook::BtfSysEnter => {
                format!("tp_btf/sys_enter for {} timed syscalls", self.timed.len())
            }
        };
        let sampling = match &self.timing_duty {
            Some(_) => ", sampled",
            None => "",
        };
        format!("tp_btf/sys_exit (counts, errors); {enter}{sampling}")
    }

    fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        let changed = self.timing_duty.as_mut()?.poll(now);
        match changed {
            Some(true) => match self.attach_enter() {
                Ok(links) => self.enter_links = links,
                Err(err) => warn!(error = %err, "could not open a syscall timing window"),
            },
            Some(false) => self.enter_links.clear(),
            None => {}
        }
        self.timing_duty.as_ref().map(DutyCycle::next_change)
    }

    fn collect(&mut self, now: Instant, out: &mut Vec<Family>) {
        let mut reading = self.read();
        let entries = reading.entries;
        let mut pids: Vec<Proc> = reading
            .counts
            .pids()
            .chain(reading.errors.pids())
            .chain(reading.latency.pids())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            // The kernel's record only matters the first time a process is seen.
            let (name, cgroup) = match self.processes.get(pid) {
                Some(_) => (None, None),
                None => self.recorded(pid).unzip(),
            };
            self.processes
                .observe_recorded(pid, now, name.as_deref(), cgroup.as_ref());
        }
        self.expire(now, &mut reading);
        self.count_shares(&reading);
        self.shares.read_folded(&self.skel.maps.tenant_folded);

        let (live, first_seen) = self.live_rows(reading);
        let overflow = self.read_overflow();
        let rows = self.policy.export(live, overflow, &first_seen);
        out.extend(self.families(&rows));
        let mut timing = Family::new(
            "periscope_syscall_timing_enabled_seconds",
            "Time syscalls were timed (latency_sampling): syscall_duration_seconds holds the calls made then.",
            MetricKind::Counter,
        )
        .with_unit("seconds");
        timing.push(
            Vec::new(),
            Value::Counter(self.timing_enabled_for(now).as_secs_f64()),
        );
        out.push(timing);
        self.record_fill(entries);
    }

    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let progs = &self.skel.progs;
        let mut list = vec![("psc_sys_exit".to_string(), progs.psc_sys_exit.as_fd())];
        match self.enter_hook {
            EnterHook::None => {}
            EnterHook::PerSyscallTracepoints => list.push((
                "psc_sys_enter_tp".to_string(),
                progs.psc_sys_enter_tp.as_fd(),
            )),
            EnterHook::BtfSysEnter => list.push((
                "psc_sys_enter_btf".to_string(),
                progs.psc_sys_enter_btf.as_fd(),
            )),
        }
        list
    }

    fn map_fill(&self) -> Vec<MapFill> {
        self.fill.clone()
    }

    fn folded(&self) -> Vec<(&'static str, u64)> {
        let mut folded: Vec<_> = FOLDED_SLOTS
            .iter()
            .map(|(map, slot)| (*map, self.folded_count(slot.0)))
            .collect();
        let series = self.policy.series();
        folded.push(("exited_executables", series.exited_refused()));
        folded.push(("series_budget", series.budget_refused()));
        folded.push(("cgroup_tenants", self.cgroups.refused));
        folded
    }

    fn tenant_folded(&self) -> Vec<(&'static str, Option<String>, u64)> {
        let mut folded = Vec::new();
        for (name, map) in SHARED_MAPS {
            for (slot, count) in self.shares.folded(map.0) {
                let tenant = self
                    .processes
                    .workloads()
                    .tenant_slots()
                    .name_of(slot)
                    .map(str::to_string);
                folded.push((name, tenant, count));
            }
        }
        folded
    }

    fn set_cgroup_tenants(&mut self, cgroups: &[(u64, u32)]) {
        util::replace_cgroup_tenants!(self.cgroups, self.skel.maps, cgroups);
    }

    fn expired_series(&self) -> u64 {
        self.policy.series().expired_series()
    }
}

impl Drop for SyscallsProbe {
    fn drop(&mut self) {
        if self.exit_link.is_some() {
            info!(
                links = 1 + self.enter_links.len(),
                "detaching the syscalls probe"
            );
        }
    }
}

pub fn syscall_name(nr: u32) -> String {
    match table::SYSCALL_NAMES.get(nr as usize).copied().flatten() {
        Some(name) => name.to_string(),
        None => format!("syscall_{nr}"),
    }
}

/// `0` marks errors whose errno was lost to a full overflow map.
pub fn errno_name(err: u32) -> String {
    if err == 0 {
        return "unknown".into();
    }
    match errno::ERRNO_NAMES.get(err as usize).copied().flatten() {
        Some(name) => name.to_string(),
        None => format!("E{err}"),
    }
}

fn decode_hist(bytes: &[u8]) -> Option<KernelHistogram> {
    let hist: types::psc_hist = decode(bytes)?;
    Some(KernelHistogram::from_parts(&hist.buckets, hist.sum))
}
