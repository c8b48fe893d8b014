//! The `tcp` probe: connections per process and peer, opened, failed, active, their
//! connect time, bytes, retransmits and RTT, all counted in the kernel from TCP state
//! changes (see `tcp.bpf.c`); nothing runs per packet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::{Link, MapCore, MapFlags};

use super::kit::programs::{load_degrading, AttemptError, Degraded, ProgramSpec};
use super::util::{self, MapFill, ProbeError};
use super::{BuiltIn, LoadContext, Probe};
use super::kit::lifecycle::{FirstSeen, Owner, ProcessSeries};
use crate::enrich::netns;
use crate::enrich::process::UNKNOWN_NAME;
use crate::enrich::{ProcessTable, Workload};
use crate::kernel::caps::{self, Need};
use crate::model::native::{KernelHistogram, Unit, KERNEL_SCHEMA};
use crate::model::histogram::DurationBounds;
use crate::model::{Family, Labels, OVERFLOW};

pub mod config;
mod families;
mod policy;

use config::TcpConfig;
use families::TcpFamilies;
use policy::{LiveRow, Peer, Policy, Rows};

/// An exited process's owner and series, to fold.
type ExitedProcess = (Owner, Vec<(Peer, Stats)>);

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcp.skel.rs"));
}
use skel::{types, TcpSkel, TcpSkelBuilder};
use types::psc_tcp_counter as Counter;
use types::psc_tcp_hist_layout as HistLayout;

util::plain_types!(
    types::psc_tcp_key,
    types::psc_process,
    types::psc_process_key,
    types::psc_tcp_stats,
    types::psc_tcp_histograms,
    types::psc_tcp_listener_key,
    types::psc_tcp_listener,
);

/// (inode, local port) of each listening socket in a /proc/net/tcp{,6} table.
fn listening_sockets(table: &str) -> Vec<(u64, u16)> {
    netns::tcp_sockets(table)
        .into_iter()
        .filter(|socket| socket.state == netns::TCP_LISTEN)
        .map(|socket| (socket.inode, socket.local_port))
        .collect()
}

const INBOUND: u8 = 2;
const FAILURE_REASONS: [&str; 5] = ["refused", "timeout", "unreachable", "aborted", "other"];

impl BuiltIn for TcpProbe {
    type Settings = TcpConfig;
    const DESCRIPTION: &'static str = "TCP connections per process and peer: opened, failed, active, connect time, bytes, retransmits, RTT";

    /// Listeners open before the agent started are found in other processes'
    /// `/proc/PID/fd`, once.
    fn capabilities(_settings: &TcpConfig) -> Vec<Need> {
        caps::reading_other_processes("find the listening sockets of processes started before the agent (probes.tcp)", false)
    }

    fn load(settings: &Self::Settings, context: &mut LoadContext<'_>) -> Result<Self, ProbeError> {
        util::check_btf()?;
        let (workloads, processes, attach) = (context.workloads, context.processes, context.attach);
        let slots = workloads.tenant_slots().count();
        let duration_bounds = DurationBounds::new(&settings.connect_duration_buckets_seconds.0);
        let rtt_bounds = DurationBounds::new(&settings.rtt_buckets_seconds.0);
        let sampling = settings.sample_interval_secs > 0;
        let ((skel, sampler, links), degraded) = load_degrading("tcp", PROGRAMS, |plan| {
            let mut open = util::open_object(TcpSkelBuilder::default(), "tcp")?;
            configure(&mut open, settings, context.drops_tenants, slots)?;
            plan.apply(open.open_object_mut());
            if !sampling {
                open.progs.psc_tcp_iter.set_autoload(false);
                open.progs.psc_tcp_walk.set_autoload(false);
            }
            let skel = open
                .load()
                .map_err(AttemptError::load("loading the tcp BPF program"))?;
            let mut links = Vec::new();
            if attach {
                let link = skel
                    .progs
                    .psc_tcp_state
                    .attach()
                    .map_err(AttemptError::attach("psc_tcp_state"))?;
                links.push(link);
            }
            let sampler = if !sampling {
                None
            } else if plan.loads("psc_tcp_iter") {
                let link = if attach {
                    let link = skel
                        .progs
                        .psc_tcp_iter
                        .attach_iter(skel.maps.tcp_socks.as_fd())
                        .map_err(AttemptError::attach("psc_tcp_iter"))?;
                    Some(link)
                } else {
                    None
                };
                Some(Sampler::Iterator(link))
            } else if plan.loads("psc_tcp_walk") {
                if attach {
                    // Its first run is its attach: a kernel that cannot run it says so now.
                    run_walk(&skel).map_err(AttemptError::attach("psc_tcp_walk"))?;
                }
                Some(Sampler::Walk)
            } else {
                None
            };
            Ok((skel, sampler, links))
        })?;
        let mut probe = TcpProbe {
            skel,
            _links: links,
            processes: ProcessTable::new().with_workloads(workloads),
            pid_label: processes.pid_label,
            exited_ttl: Duration::from_secs(processes.exited_ttl_secs),
            policy: Policy::new(
                settings.max_peers_per_process.get() as usize,
                (duration_bounds.seconds.len(), rtt_bounds.seconds.len()),
                ProcessSeries::new(
                    workloads.clone(),
                    processes.max_exited_executables.get() as usize,
                    context.budget.for_probe("tcp"),
                ),
            ),
            duration_bounds,
            rtt_bounds,
            fill: Vec::new(),
            cgroups: util::CgroupTenants::default(),
            shares: util::TenantShares::new(slots),
            sampler,
            degraded,
            sample_interval: sampling.then(|| Duration::from_secs(settings.sample_interval_secs)),
            next_sample: Instant::now(),
            seeded_listeners: 0,
        };
        if attach {
            if let (Some(interval), Some(_)) = (probe.sample_interval, &probe.sampler) {
                probe.next_sample = Instant::now() + interval;
            }
            // Attached first: a listen() from now on is seen by the program, and those
            // made before are found here.
            probe.seeded_listeners = probe.seed_listeners();
            tracing::debug!(
                listeners = probe.seeded_listeners,
                "listening ports of running processes"
            );
        }
        Ok(probe)
    }
}

const SAMPLER: &str = "sampling of open connections";
const SAMPLER_LOSS: &str = "bytes, retransmits and RTT of open connections between closes (counted when each connection closes)";

/// The programs of the probe: state changes are the probe; the sampler of open
/// connections has two forms, the first the kernel runs is used.
static PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec::required("psc_tcp_state", "tp_btf/inet_sock_set_state"),
    ProgramSpec::optional(
        "psc_tcp_iter",
        "iter/bpf_map_elem with bpf_spin_lock and bpf_rdonly_cast",
        SAMPLER,
        SAMPLER_LOSS,
    ),
    ProgramSpec::optional(
        "psc_tcp_walk",
        "syscall program run by BPF_PROG_TEST_RUN with bpf_for_each_map_elem, bpf_spin_lock and bpf_rdonly_cast",
        SAMPLER,
        SAMPLER_LOSS,
    ),
];

/// How the open connections are sampled.
enum Sampler {
    /// An iterator over the socket table, read to run it (None: loaded, not attached).
    Iterator(Option<Link>),
    /// The syscall program that walks the table, run on demand.
    Walk,
}

/// Sets the object's caps and constants before load.
fn configure(
    open: &mut skel::OpenTcpSkel<'_>,
    settings: &TcpConfig,
    drops_tenants: bool,
    slots: u32,
) -> Result<(), ProbeError> {
    util::set_entries(&mut open.maps.series, settings.max_series.get(), "series")?;
    util::set_entries(&mut open.maps.histograms, settings.max_series.get(), "histograms")?;
    util::set_entries(&mut open.maps.tcp_socks, settings.max_connections.get(), "tcp_socks")?;
    util::set_entries(&mut open.maps.overflow, slots * 2, "overflow")?;
    util::set_entries(&mut open.maps.overflow_histograms, slots * 2, "overflow_histograms")?;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata
            .psc_native_thresholds
            .copy_from_slice(Unit::Nanoseconds.kernel_thresholds());
        rodata.filter_cgroups = u8::from(drops_tenants);
        rodata.tenant_slots = slots;
        rodata.tenant_share[0] = (settings.max_series.get() / slots).max(1);
    }
    Ok(())
}

/// Runs the walking sampler once.
fn run_walk(skel: &TcpSkel<'_>) -> Result<(), libbpf_rs::Error> {
    skel.progs
        .psc_tcp_walk
        .test_run(libbpf_rs::ProgramInput::default())
        .map(|_| ())
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Stats {
    opened: u64,
    active: i64,
    failures: [u64; FAILURE_REASONS.len()],
    sent: u64,
    received: u64,
    retransmits: u64,
    /// Connect durations (outbound series), in nanoseconds.
    duration: KernelHistogram,
    /// Smoothed RTT samples, whole microseconds counted in nanoseconds.
    rtt: KernelHistogram,
}

/// A histogram of `struct psc_tcp_histograms`: its zero slot, then the window of kernel
/// slots from the one that holds 2^low_octave ns.
fn window_histogram(slots: &[u64], low_octave: u32, sum_ns: u64) -> KernelHistogram {
    let (zero, window) = slots.split_first().unwrap_or((&0, &[]));
    let first = 1 + ((low_octave as usize) << KERNEL_SCHEMA);
    KernelHistogram::from_window(Unit::Nanoseconds, *zero, first, window, sum_ns)
}

impl Stats {
    fn add(&mut self, s: &types::psc_tcp_stats) {
        self.merge(&Stats {
            opened: s.opened,
            active: s.active,
            failures: s.failures,
            sent: s.sent_bytes,
            received: s.received_bytes,
            retransmits: s.retransmits,
            ..Stats::default()
        });
    }

    /// Adds a series' histograms, from the bytes of its `histograms` entry.
    fn add_histograms(&mut self, bytes: &[u8]) {
        let Some(h) = util::decode::<types::psc_tcp_histograms>(bytes) else {
            return;
        };
        self.duration.merge(&window_histogram(
            &h.duration,
            HistLayout::PSC_TCP_DURATION_LOW_OCTAVE.0,
            h.duration_sum_ns,
        ));
        self.rtt.merge(&window_histogram(
            &h.rtt,
            HistLayout::PSC_TCP_RTT_LOW_OCTAVE.0,
            h.rtt_sum_us.saturating_mul(1000),
        ));
    }

    /// The sum of a series' per-CPU copies: a CPU's `active` may be negative (a
    /// connection opened on one CPU and closed on another), their sum is not.
    fn from_percpu(values: &[Vec<u8>]) -> Stats {
        util::sum_percpu(values, Stats::add)
    }

    /// Adds another's counts; kernel values are trusted to be counts, not to be small.
    fn merge(&mut self, other: &Stats) {
        self.opened = self.opened.saturating_add(other.opened);
        self.active = self.active.saturating_add(other.active);
        for (total, n) in self.failures.iter_mut().zip(other.failures) {
            *total = total.saturating_add(n);
        }
        self.sent = self.sent.saturating_add(other.sent);
        self.received = self.received.saturating_add(other.received);
        self.retransmits = self.retransmits.saturating_add(other.retransmits);
        self.duration.merge(&other.duration);
        self.rtt.merge(&other.rtt);
    }

    /// Whether the series has anything to report.
    fn is_empty(&self) -> bool {
        self.opened == 0
            && self.active == 0
            && self.failures.iter().all(|f| *f == 0)
            && self.duration.is_empty()
            && self.rtt.is_empty()
    }
}

pub struct TcpProbe {
    skel: TcpSkel<'static>,
    /// Keeps the state program attached while the probe lives.
    _links: Vec<Link>,
    /// Processes by tgid and generation (bpf/process.h).
    processes: ProcessTable<(u32, u16)>,
    pid_label: bool,
    exited_ttl: Duration,
    duration_bounds: DurationBounds,
    rtt_bounds: DurationBounds,
    /// Peer caps, where exited processes fold, what the budget admits, `_created`.
    policy: Policy,
    fill: Vec<MapFill>,
    /// The sampler of open connections the kernel runs, and when it runs next.
    sampler: Option<Sampler>,
    /// Features the kernel refused (the sampler, on some kernels).
    degraded: Vec<Degraded>,
    sample_interval: Option<Duration>,
    next_sample: Instant,
    /// Listeners found in /proc at start, for the fill of `listeners`.
    seeded_listeners: u64,
    cgroups: util::CgroupTenants,
    shares: util::TenantShares,
}

impl TcpProbe {

    /// Tells the kernel which process owns each port that was already listening when
    /// the probe attached, in every network namespace: the processes' socket fds, and
    /// the listening sockets of /proc/PID/net/tcp{,6} read once per namespace. A port
    /// the program has learned since is left as it is. The owner is the lowest pid that
    /// holds the socket (a parent that shares it with its workers). The map's fill does
    /// not drop when these close: the program never learns their socket.
    fn seed_listeners(&self) -> u64 {
        let mut sockets_of: Vec<(u32, u32, Vec<u64>)> = Vec::new(); // pid, netns, inodes
        let mut netns_pid: BTreeMap<u32, u32> = BTreeMap::new();
        let Ok(processes) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for entry in processes.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(netns) =
                netns::namespace_of(pid).and_then(|n| u32::try_from(n).ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let inodes: Vec<u64> = fds
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|t| netns::bracketed_number(t.to_str()?, "socket:["))
                .collect();
            if !inodes.is_empty() {
                netns_pid.entry(netns).or_insert(pid);
                sockets_of.push((pid, netns, inodes));
            }
        }
        // Listening sockets of each namespace: inode -> port.
        let mut listening: HashMap<(u32, u64), u16> = HashMap::new();
        for (&netns, &pid) in &netns_pid {
            for table in ["tcp", "tcp6"] {
                let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
                    continue;
                };
                for (inode, port) in listening_sockets(&text) {
                    listening.insert((netns, inode), port);
                }
            }
        }
        // (netns, port) -> the lowest pid holding a socket listening there.
        let mut found: BTreeMap<(u32, u16), u32> = BTreeMap::new();
        sockets_of.sort_by_key(|(pid, _, _)| *pid);
        for (pid, netns, inodes) in &sockets_of {
            for inode in inodes {
                if let Some(port) = listening.get(&(*netns, *inode)) {
                    found.entry((*netns, *port)).or_insert(*pid);
                }
            }
        }
        // Their cgroups give their tenants at each accept, as for listeners seen later.
        let cgroup_root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| crate::enrich::cgroup::unified_mount(&text));
        let mut seeded = 0;
        for ((netns, port), pid) in found {
            let key = types::psc_tcp_listener_key {
                netns,
                port,
                ..Default::default()
            };
            // No count of sockets: the program cannot see these close, and the next
            // listen() on the port takes it over.
            let Some(gen) = crate::enrich::process::generation_of_pid(pid) else {
                continue;
            };
            let value = types::psc_tcp_listener {
                cgroup: cgroup_root
                    .as_deref()
                    .and_then(|root| crate::enrich::cgroup::cgroup_id_of_pid(root, pid))
                    .unwrap_or(0),
                tgid: pid,
                gen,
                seeded: 1,
                ..Default::default()
            };
            if self
                .skel
                .maps
                .listeners
                .update(
                    util::plain_bytes(&key),
                    util::plain_bytes(&value),
                    MapFlags::NO_EXIST,
                )
                .is_ok()
            {
                seeded += 1;
            }
        }
        seeded
    }

    /// Runs the sampler over every open connection (it writes nothing to read).
    fn sample_open_connections(&self) {
        let outcome = match &self.sampler {
            None => return,
            Some(Sampler::Iterator(None)) => return,
            Some(Sampler::Iterator(Some(link))) => {
                libbpf_rs::Iter::new(link).and_then(|mut iter| {
                    let mut sink = Vec::new();
                    std::io::Read::read_to_end(&mut iter, &mut sink)
                        .map(|_| ())
                        .map_err(libbpf_rs::Error::from)
                })
            }
            Some(Sampler::Walk) => run_walk(&self.skel),
        };
        if let Err(err) = outcome {
            tracing::warn!(error = %err, "sampling open TCP connections failed");
        }
    }

    fn counter(&self, slot: Counter) -> u64 {
        util::percpu_array_u64(&self.skel.maps.counters, slot.0)
    }

    /// The owner of a kernel series, and when its process was first seen.
    fn owner(&mut self, key: &types::psc_tcp_key, now: Instant) -> (Owner, Option<SystemTime>) {
        if key.tgid == 0 {
            return (Owner::new(None, UNKNOWN_NAME, Workload::default()), None);
        }
        let process = (key.tgid, key.gen);
        // The kernel's record only matters the first time a pid is seen.
        let recorded = match self.processes.get(process) {
            Some(_) => None,
            None => {
                let record_key = types::psc_process_key {
                    tgid: key.tgid,
                    gen: key.gen,
                    ..Default::default()
                };
                util::recorded_process!(
                    types,
                    self.skel.maps.processes,
                    util::plain_bytes(&record_key)
                )
            }
        };
        let (recorded_name, recorded_cgroup) = recorded.unzip();
        let info = self.processes.observe_recorded(
            process,
            now,
            recorded_name.as_deref(),
            recorded_cgroup.as_ref(),
        );
        let pid = self.pid_label.then_some(key.tgid);
        let owner = Owner::new(pid, info.name.clone(), info.workload.clone());
        (owner, Some(info.first_seen))
    }

    /// Reads the kernel's series; those of processes exited for the TTL (with no
    /// connection left open) are taken from the kernel and folded by the policy. A
    /// series' histograms are in another map by the same key; one found there alone (its
    /// series taken while a sample was on its way) is a series all the same, though its
    /// process may be forgotten by then, and its sample counted for an unknown one.
    fn read(&mut self, now: Instant) -> (Vec<LiveRow>, FirstSeen) {
        let mut rows = Vec::new();
        let mut first_seen = HashMap::new();
        let mut entries = 0u64;
        self.shares.before_read(&self.skel.maps.tenant_added);
        let mut share_entries = self.shares.entries();
        for pid in self.processes.pids() {
            self.processes.observe(pid, now, None);
        }
        let expired: HashSet<(u32, u16)> = self
            .processes
            .expired(now, self.exited_ttl)
            .into_iter()
            .collect();
        let mut still_open = HashSet::new();
        let mut folding: HashMap<(u32, u16), ExitedProcess> = HashMap::new();
        let mut histograms: HashMap<Vec<u8>, Vec<u8>> =
            util::read_shared(&self.skel.maps.histograms).into_iter().collect();
        let histogram_entries = histograms.len() as u64;
        let mut series: Vec<(Vec<u8>, Stats, bool)> = util::read_percpu(&self.skel.maps.series)
            .into_iter()
            .map(|(key_bytes, values)| {
                let mut stats = Stats::from_percpu(&values);
                if let Some(hist) = histograms.remove(&key_bytes) {
                    stats.add_histograms(&hist);
                }
                (key_bytes, stats, true)
            })
            .collect();
        series.extend(histograms.into_iter().map(|(key_bytes, hist)| {
            let mut stats = Stats::default();
            stats.add_histograms(&hist);
            (key_bytes, stats, false)
        }));
        for (key_bytes, stats, in_series) in series {
            entries += u64::from(in_series);
            let Some(key) = util::decode::<types::psc_tcp_key>(&key_bytes) else {
                continue;
            };
            let process = (key.tgid, key.gen);
            let (owner, seen) = self.owner(&key, now);
            let peer = Peer {
                inbound: key.direction == INBOUND,
                address: util::socket_address(key.family, &key.addr),
                port: key.port,
            };
            if expired.contains(&process) && stats.active <= 0 {
                // Taken from the kernel in one step: what landed since the read counts.
                let last = self.take(&key_bytes).unwrap_or(stats);
                if last.active > 0 {
                    // A connection was accepted for it between the read and the take.
                    still_open.insert(process);
                }
                let (_, series) = folding
                    .entry(process)
                    .or_insert_with(|| (owner, Vec::new()));
                series.push((peer, last));
                continue;
            }
            if self.shares.enabled() && in_series {
                // A dropped tenant's series (made before the kernel knew its cgroup)
                // took a place among those of no tenant.
                let slot = self.processes.workloads().tenant_slot(&owner.workload) as usize;
                let slot = if slot < share_entries.len() { slot } else { 0 };
                share_entries[slot][0] += 1;
            }
            if expired.contains(&process) {
                // Exited, but a connection it opened is still open (a child has it, or
                // it is closing): its labels must not change under it.
                still_open.insert(process);
            }
            if let Some(seen) = seen {
                first_seen.entry(owner.clone()).or_insert(seen);
            }
            rows.push((owner, peer, stats));
        }
        for (owner, series) in folding.into_values() {
            self.policy.fold_exited(&owner, series);
        }
        for process in expired {
            if !still_open.contains(&process) {
                self.forget(process);
            }
        }
        self.shares
            .after_read(&self.skel.maps.tenant_base, &share_entries);
        self.shares.read_folded(&self.skel.maps.tenant_folded);
        rows.extend(self.read_overflow());
        self.record_fill(entries, histogram_entries);
        (rows, first_seen)
    }

    /// Takes a series and its histograms from the kernel, each in one step; None when
    /// neither is there any more or the kernel cannot take them (then they are deleted).
    fn take(&self, key_bytes: &[u8]) -> Option<Stats> {
        let maps = &self.skel.maps;
        let counters = util::take_percpu(&maps.series, key_bytes);
        let histograms = maps.histograms.lookup_and_delete(key_bytes).ok().flatten();
        if counters.is_none() && histograms.is_none() {
            let _ = maps.series.delete(key_bytes);
            let _ = maps.histograms.delete(key_bytes);
            return None;
        }
        let mut stats = counters
            .map(|values| Stats::from_percpu(&values))
            .unwrap_or_default();
        if let Some(hist) = histograms {
            stats.add_histograms(&hist);
        }
        Some(stats)
    }

    /// Forgets an exited process: its kernel record, and the peers it kept unless a live
    /// process took its pid over.
    fn forget(&mut self, process: (u32, u16)) {
        let Some(info) = self.processes.remove(process) else {
            return;
        };
        let record_key = types::psc_process_key {
            tgid: process.0,
            gen: process.1,
            ..Default::default()
        };
        let _ = self
            .skel
            .maps
            .processes
            .delete(util::plain_bytes(&record_key));
        if self
            .processes
            .pids()
            .iter()
            .all(|(pid, _)| *pid != process.0)
        {
            let pid = self.pid_label.then_some(process.0);
            self.policy
                .forget(&Owner::new(pid, info.name, info.workload));
        }
    }

    /// The overflow series, per tenant slot (0: no tenant) and direction.
    fn read_overflow(&self) -> Vec<LiveRow> {
        let mut rows = Vec::new();
        let tenant_slots = self.processes.workloads().tenant_slots();
        for tenant_slot in 0..tenant_slots.count() {
            for (direction, inbound) in [(0u32, false), (1u32, true)] {
                let idx = tenant_slot * 2 + direction;
                let Ok(Some(values)) = self
                    .skel
                    .maps
                    .overflow
                    .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
                else {
                    continue;
                };
                let mut stats = Stats::from_percpu(&values);
                if let Ok(Some(hist)) = self
                    .skel
                    .maps
                    .overflow_histograms
                    .lookup(&idx.to_ne_bytes(), MapFlags::ANY)
                {
                    stats.add_histograms(&hist);
                }
                if !stats.is_empty() {
                    let owner = Owner::overflow(tenant_slots.name_of(tenant_slot));
                    let peer = Peer {
                        inbound,
                        address: OVERFLOW.into(),
                        port: 0,
                    };
                    rows.push((owner, peer, stats));
                }
            }
        }
        rows
    }

    fn record_fill(&mut self, entries: u64, histogram_entries: u64) {
        self.fill = vec![
            MapFill {
                map: "series",
                entries,
                capacity: u64::from(self.skel.maps.series.max_entries()),
            },
            MapFill {
                map: "histograms",
                entries: histogram_entries,
                capacity: u64::from(self.skel.maps.histograms.max_entries()),
            },
            MapFill {
                map: "tcp_socks",
                entries: self
                    .counter(Counter::PSC_TCP_SOCKS_ADDED)
                    .saturating_sub(self.counter(Counter::PSC_TCP_SOCKS_REMOVED)),
                capacity: u64::from(self.skel.maps.tcp_socks.max_entries()),
            },
            MapFill {
                map: "listeners",
                entries: (self.seeded_listeners + self.counter(Counter::PSC_TCP_LISTENERS_ADDED))
                    .saturating_sub(self.counter(Counter::PSC_TCP_LISTENERS_REMOVED)),
                capacity: u64::from(self.skel.maps.listeners.max_entries()),
            },
            self.cgroups.fill(&self.skel.maps.cgroup_tenants),
        ];
        self.fill.extend(self.policy.series().fill());
    }

    /// The families of the series the policy exports.
    fn families(&self, rows: &Rows) -> [Family; 8] {
        let mut families = TcpFamilies::new(self.sampler.is_some());
        for ((owner, peer), stats) in rows {
            let created = self.policy.series().created(owner);
            let mut labels: Labels = owner.labels(self.processes.workloads());
            families::push_peer_labels(&mut labels, peer);
            let rtt = self.rtt_bounds.classic_and_native(&stats.rtt);
            let duration =
                (!peer.inbound).then(|| self.duration_bounds.classic_and_native(&stats.duration));
            families.push(labels, stats, rtt, duration, created);
        }
        families.into_array()
    }
}

impl Probe for TcpProbe {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn attach_method(&self) -> String {
        match &self.sampler {
            Some(Sampler::Iterator(_)) => {
                "tp_btf/inet_sock_set_state; open connections sampled by iter/bpf_map_elem".into()
            }
            Some(Sampler::Walk) => {
                "tp_btf/inet_sock_set_state; open connections sampled by a syscall program's walk"
                    .into()
            }
            None => "tp_btf/inet_sock_set_state".into(),
        }
    }

    fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        let interval = self.sample_interval?;
        if now >= self.next_sample {
            self.sample_open_connections();
            self.next_sample = now + interval;
        }
        Some(self.next_sample)
    }

    fn collect(&mut self, now: Instant, out: &mut Vec<Family>) {
        let (live, first_seen) = self.read(now);
        let rows = self.policy.export(live, &first_seen);
        out.extend(self.families(&rows));
    }

    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        vec![(
            "psc_tcp_state".into(),
            self.skel.progs.psc_tcp_state.as_fd(),
        )]
        .into_iter()
        .chain(self.sampler.as_ref().map(|sampler| match sampler {
            Sampler::Iterator(_) => ("psc_tcp_iter".into(), self.skel.progs.psc_tcp_iter.as_fd()),
            Sampler::Walk => ("psc_tcp_walk".into(), self.skel.progs.psc_tcp_walk.as_fd()),
        }))
        .collect()
    }

    fn map_fill(&self) -> Vec<MapFill> {
        self.fill.clone()
    }

    fn folded(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("series", self.counter(Counter::PSC_TCP_FOLDED)),
            (
                "histograms",
                self.counter(Counter::PSC_TCP_HISTOGRAMS_FOLDED),
            ),
            ("tcp_socks", self.counter(Counter::PSC_TCP_UNTRACKED)),
            (
                "listeners",
                self.counter(Counter::PSC_TCP_LISTENERS_REFUSED),
            ),
            ("peers", self.policy.peers_folded()),
            ("exited_executables", self.policy.series().exited_refused()),
            ("series_budget", self.policy.series().budget_refused()),
            ("cgroup_tenants", self.cgroups.refused),
        ]
    }

    fn set_cgroup_tenants(&mut self, cgroups: &[(u64, u32)]) {
        util::replace_cgroup_tenants!(self.cgroups, self.skel.maps, cgroups);
    }

    fn tenant_folded(&self) -> Vec<(&'static str, Option<String>, u64)> {
        let tenant_slots = self.processes.workloads().tenant_slots();
        self.shares
            .folded(0)
            .into_iter()
            .map(|(slot, count)| {
                let tenant = tenant_slots.name_of(slot).map(str::to_string);
                ("series", tenant, count)
            })
            .collect()
    }

    fn expired_series(&self) -> u64 {
        self.policy.series().expired_series()
    }
}
