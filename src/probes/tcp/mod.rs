//! The `tcp` probe: connections per process and peer, opened, failed, active, their
//! connect time, bytes, retransmits and RTT, all counted in the kernel from TCP state
//! changes (see `tcp.bpf.c`); nothing runs per packet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};

use super::kit::programs::{load_degrading, AttemptError, Degraded, ProgramSpec};
use super::util::{self, MapFill, ProbeError};
use super::{BuiltIn, LoadContext, Probe};
use crate::enrich::{ProcessTable, Workload};
use crate::kernel::caps::{self, Need};
use crate::model::{ClassicHistogram, Family, Labels, MetricKind, Value, OVERFLOW};

pub mod config;

use config::TcpConfig;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcp.skel.rs"));
}
use skel::{types, TcpSkel, TcpSkelBuilder};
use types::psc_tcp_counter as Counter;

// SAFETY: plain C structs of integers, generated from the program's BTF.
unsafe impl plain::Plain for types::psc_tcp_key {}
unsafe impl plain::Plain for types::psc_process {}
unsafe impl plain::Plain for types::psc_process_key {}
unsafe impl plain::Plain for types::psc_tcp_stats {}
unsafe impl plain::Plain for types::psc_tcp_listener_key {}
unsafe impl plain::Plain for types::psc_tcp_listener {}

/// The number in a link target such as `socket:[123]` or `net:[4026531840]`.
fn bracketed_number(target: &str, prefix: &str) -> Option<u64> {
    target.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// (inode, local port) of each listening socket in a /proc/net/tcp{,6} table.
fn listening_sockets(table: &str) -> Vec<(u64, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; local_address is ADDR:PORT in hex.
            if fields.len() <= 9 || fields[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
            Some((fields[9].parse().ok()?, port))
        })
        .collect()
}

const INBOUND: u8 = 2;
const FAILURE_REASONS: [&str; 5] = ["refused", "timeout", "unreachable", "aborted", "other"];
/// The OpenTelemetry names of the probe's labels that have a semantic convention; the
/// others (`direction`, `peer_address`, `peer_port`, `reason`) keep their own.
const OTEL_ATTRIBUTES: &[(&str, &str)] = &[("server_port", "server.port")];

pub struct Tcp;

impl BuiltIn for Tcp {
    type Settings = TcpConfig;
    const DESCRIPTION: &'static str = "TCP connections per process and peer: opened, failed, active, connect time, bytes, retransmits, RTT";
    const DEFAULT_YAML: &'static str = include_str!("config.yaml");

    /// Listeners open before the agent started are found in other processes'
    /// `/proc/PID/fd`, once.
    fn capabilities(_settings: &TcpConfig) -> Vec<Need> {
        caps::reading_other_processes("find the listening sockets of processes started before the agent (probes.tcp)", false)
    }

    fn load(
        settings: &TcpConfig,
        context: &mut LoadContext<'_>,
    ) -> Result<Box<dyn Probe>, ProbeError> {
        Ok(Box::new(TcpProbe::load(settings, context)?))
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

/// Runs the walking sampler once.
fn run_walk(skel: &TcpSkel<'_>) -> Result<(), libbpf_rs::Error> {
    skel.progs
        .psc_tcp_walk
        .test_run(libbpf_rs::ProgramInput::default())
        .map(|_| ())
}

/// A series as exported: process, direction and peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SeriesKey {
    pid: Option<u32>,
    name: String,
    workload: Workload,
    inbound: bool,
    peer: String,
    port: u16,
}

/// A process as its series name it: pid (when labelled) and executable.
type ProcessGroup = (Option<u32>, String, Workload);
/// A peer as its series name it: inbound, address, port.
type Peer = (bool, String, u16);

#[derive(Debug, Clone, Default)]
struct Stats {
    opened: u64,
    active: i64,
    failures: [u64; FAILURE_REASONS.len()],
    sent: u64,
    received: u64,
    retransmits: u64,
    duration_sum_ns: u64,
    duration: Vec<u64>,
    rtt_sum_us: u64,
    rtt: Vec<u64>,
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
            duration_sum_ns: s.duration_sum_ns,
            duration: s.duration.to_vec(),
            rtt_sum_us: s.rtt_sum_us,
            rtt: s.rtt.to_vec(),
        });
    }

    /// The sum of a series' per-CPU copies: a CPU's `active` may be negative (a
    /// connection opened on one CPU and closed on another), their sum is not.
    fn from_percpu(values: &[Vec<u8>]) -> Stats {
        let mut total = Stats::default();
        for bytes in values {
            let mut raw = types::psc_tcp_stats::default();
            if plain::copy_from_bytes(&mut raw, bytes).is_ok() {
                total.add(&raw);
            }
        }
        total
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
        self.duration_sum_ns = self.duration_sum_ns.saturating_add(other.duration_sum_ns);
        self.rtt_sum_us = self.rtt_sum_us.saturating_add(other.rtt_sum_us);
        add_buckets(&mut self.duration, &other.duration);
        add_buckets(&mut self.rtt, &other.rtt);
    }
}

fn add_buckets(total: &mut Vec<u64>, more: &[u64]) {
    if total.len() < more.len() {
        total.resize(more.len(), 0);
    }
    for (t, n) in total.iter_mut().zip(more) {
        *t = t.saturating_add(*n);
    }
}

/// Kernel buckets (one per bound, then one above the last) as a classic histogram.
fn classic(buckets: &[u64], bounds: &[f64], sum: f64) -> ClassicHistogram {
    let mut cumulative = Vec::with_capacity(bounds.len());
    let mut running = 0;
    for i in 0..bounds.len() {
        running += buckets.get(i).copied().unwrap_or(0);
        cumulative.push(running);
    }
    let count = running
        + buckets
            .get(bounds.len()..)
            .map_or(0, |rest| rest.iter().sum());
    ClassicHistogram {
        bounds: bounds.to_vec(),
        cumulative,
        count,
        sum,
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
    max_peers: usize,
    duration_bounds: Vec<f64>,
    rtt_bounds: Vec<f64>,
    /// Series of exited processes, folded per executable: counters never go back.
    exited: BTreeMap<SeriesKey, Stats>,
    expired_series: u64,
    peers_folded: u64,
    started: SystemTime,
    fill: Vec<MapFill>,
    /// The sampler of open connections the kernel runs, and when it runs next.
    sampler: Option<Sampler>,
    /// Features the kernel refused (the sampler, on some kernels).
    degraded: Vec<Degraded>,
    sample_interval: Option<Duration>,
    next_sample: Instant,
    /// Listeners found in /proc at start, for the fill of `listeners`.
    seeded_listeners: u64,
    /// The peers each process reports under their own labels: once kept, a peer stays
    /// kept while the process lives, so a new peer never pushes an old one into the
    /// overflow peer (its counters would jump from one series to the other).
    kept_peers: HashMap<ProcessGroup, HashSet<Peer>>,
    /// Executables with an aggregate of exited processes, at most
    /// (processes.max_exited_executables); beyond, the overflow executable.
    max_exited: usize,
    cgroups: util::CgroupTenants,
    shares: util::TenantShares,
}

impl TcpProbe {
    fn load(settings: &TcpConfig, context: &LoadContext<'_>) -> Result<TcpProbe, ProbeError> {
        util::check_btf()?;
        let (workloads, processes, attach) = (context.workloads, context.processes, context.attach);
        let slots = workloads.tenant_slots().count();
        let duration_bounds = settings.connect_duration_buckets_seconds.0.clone();
        let rtt_bounds = settings.rtt_buckets_seconds.0.clone();
        let sampling = settings.sample_interval_secs > 0;
        let ((skel, sampler, links), degraded) = load_degrading("tcp", PROGRAMS, |plan| {
            let storage = Box::leak(Box::new(MaybeUninit::uninit()));
            let mut open = TcpSkelBuilder::default()
                .open(storage)
                .map_err(ProbeError::bpf("opening the tcp BPF object"))?;
            open.maps
                .series
                .set_max_entries(settings.max_series.get())
                .map_err(ProbeError::bpf("setting the series cap"))?;
            open.maps
                .tcp_socks
                .set_max_entries(settings.max_connections.get())
                .map_err(ProbeError::bpf("setting the connection cap"))?;
            open.maps
                .overflow
                .set_max_entries(slots * 2)
                .map_err(ProbeError::bpf("sizing the overflow series"))?;
            if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                for (slot, bound) in rodata.duration_bounds_ns.iter_mut().zip(&duration_bounds) {
                    *slot = (bound * 1e9).round() as u64;
                }
                rodata.duration_bounds_len = duration_bounds.len() as u32;
                for (slot, bound) in rodata.rtt_bounds_us.iter_mut().zip(&rtt_bounds) {
                    *slot = (bound * 1e6).round() as u64;
                }
                rodata.rtt_bounds_len = rtt_bounds.len() as u32;
                rodata.filter_cgroups = u8::from(context.drops_tenants);
                rodata.tenant_slots = slots;
                rodata.tenant_share[0] = (settings.max_series.get() / slots).max(1);
            }
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
            max_peers: settings.max_peers_per_process.get() as usize,
            duration_bounds,
            rtt_bounds,
            exited: BTreeMap::new(),
            expired_series: 0,
            peers_folded: 0,
            started: SystemTime::now(),
            fill: Vec::new(),
            cgroups: util::CgroupTenants::default(),
            shares: util::TenantShares::new(slots),
            sampler,
            degraded,
            sample_interval: sampling.then(|| Duration::from_secs(settings.sample_interval_secs)),
            next_sample: Instant::now(),
            seeded_listeners: 0,
            kept_peers: HashMap::new(),
            max_exited: processes.max_exited_executables.get() as usize,
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
            let Some(netns) = std::fs::read_link(entry.path().join("ns/net"))
                .ok()
                .and_then(|t| bracketed_number(t.to_str()?, "net:["))
                .and_then(|n| u32::try_from(n).ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let inodes: Vec<u64> = fds
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|t| bracketed_number(t.to_str()?, "socket:["))
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

    /// Adds an expired process's series to the aggregate of its executable, within the
    /// cap of executables (beyond, the overflow executable) and the peer cap (beyond,
    /// the executable's overflow peer).
    fn fold_exited(&mut self, series: SeriesKey, stats: &Stats) {
        let mut key = SeriesKey {
            pid: None,
            ..series
        };
        if !self.exited.contains_key(&key) {
            let same_executable =
                |k: &SeriesKey, key: &SeriesKey| k.name == key.name && k.workload == key.workload;
            let known = self.exited.keys().any(|k| same_executable(k, &key));
            if !known {
                let executables: HashSet<(&str, &Workload)> = self
                    .exited
                    .keys()
                    .map(|k| (k.name.as_str(), &k.workload))
                    .collect();
                if executables.len() >= self.max_exited {
                    key.name = OVERFLOW.into();
                    key.workload = Workload::default();
                }
            }
            let peers = self
                .exited
                .keys()
                .filter(|k| same_executable(k, &key) && k.peer != OVERFLOW)
                .count();
            if key.peer != OVERFLOW && peers >= self.max_peers {
                key.peer = OVERFLOW.into();
                key.port = 0;
            }
        }
        self.exited.entry(key).or_default().merge(stats);
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

    /// Reads the kernel's series; those of processes exited for the TTL (with no
    /// connection left open) are folded into `exited` and deleted from the kernel.
    fn read(&mut self, now: Instant) -> Vec<(SeriesKey, Stats)> {
        let mut rows = Vec::new();
        let mut entries = 0u64;
        self.shares.before_read(&self.skel.maps.tenant_added);
        let mut share_entries = self.shares.entries();
        for pid in self.processes.pids() {
            self.processes.observe(pid, now, None);
        }
        let expired: std::collections::HashSet<(u32, u16)> = self
            .processes
            .expired(now, self.exited_ttl)
            .into_iter()
            .collect();
        let mut still_open = std::collections::HashSet::new();
        for (key_bytes, values) in util::read_percpu(&self.skel.maps.series) {
            entries += 1;
            let mut key = types::psc_tcp_key::default();
            if plain::copy_from_bytes(&mut key, &key_bytes).is_err() {
                continue;
            }
            let stats = Stats::from_percpu(&values);
            let process = (key.tgid, key.gen);
            let record_key = types::psc_process_key {
                tgid: key.tgid,
                gen: key.gen,
                ..Default::default()
            };
            let (name, workload) = if key.tgid == 0 {
                ("unknown".to_string(), Workload::default())
            } else {
                // The kernel's record only matters the first time a pid is seen.
                let recorded = match self.processes.get(process) {
                    Some(_) => None,
                    None => util::recorded_process!(
                        types,
                        self.skel.maps.processes,
                        util::plain_bytes(&record_key)
                    ),
                };
                let (recorded_name, recorded_cgroup) = recorded.unzip();
                let info = self.processes.observe_recorded(
                    process,
                    now,
                    recorded_name.as_deref(),
                    recorded_cgroup.as_ref(),
                );
                (info.name.clone(), info.workload.clone())
            };
            let series = SeriesKey {
                pid: (self.pid_label && key.tgid != 0).then_some(key.tgid),
                name,
                workload,
                inbound: key.direction == INBOUND,
                peer: util::socket_address(key.family, &key.addr),
                port: key.port,
            };
            if expired.contains(&process) && stats.active <= 0 {
                // Taken from the kernel in one step: what landed since the read counts.
                let last = util::take_percpu(&self.skel.maps.series, &key_bytes)
                    .map(|values| Stats::from_percpu(&values))
                    .unwrap_or_else(|| {
                        let _ = self.skel.maps.series.delete(&key_bytes);
                        stats
                    });
                if last.active > 0 {
                    // A connection was accepted for it between the read and the take.
                    still_open.insert(process);
                }
                self.fold_exited(series, &last);
                self.expired_series += 1;
            } else {
                if self.shares.enabled() {
                    // A dropped tenant's series (made before the kernel knew its
                    // cgroup) took a place among those of no tenant.
                    let slot = self.processes.workloads().tenant_slot(&series.workload) as usize;
                    let slot = if slot < share_entries.len() { slot } else { 0 };
                    share_entries[slot][0] += 1;
                }
                if expired.contains(&process) {
                    // Exited, but a connection it opened is still open (a child has it,
                    // or it is closing): its labels must not change under it.
                    still_open.insert(process);
                }
                rows.push((series, stats));
            }
        }
        for process in expired {
            if !still_open.contains(&process) {
                self.processes.remove(process);
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
                // A live process that took the pid over keeps its own.
                if self
                    .processes
                    .pids()
                    .iter()
                    .all(|(pid, _)| *pid != process.0)
                {
                    self.kept_peers
                        .retain(|(kept_pid, _, _), _| *kept_pid != Some(process.0));
                }
            }
        }
        self.shares
            .after_read(&self.skel.maps.tenant_base, &share_entries);
        // The overflow series, per tenant slot (0: no tenant) and direction.
        self.shares.read_folded(&self.skel.maps.tenant_folded);
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
                let stats = Stats::from_percpu(&values);
                if stats.opened > 0 || stats.failures.iter().any(|f| *f > 0) || stats.active != 0 {
                    let workload = tenant_slots
                        .name_of(tenant_slot)
                        .map(Workload::of_tenant)
                        .unwrap_or_default();
                    rows.push((
                        SeriesKey {
                            pid: None,
                            name: OVERFLOW.into(),
                            workload,
                            inbound,
                            peer: OVERFLOW.into(),
                            port: 0,
                        },
                        stats,
                    ));
                }
            }
        }
        self.fill = vec![
            MapFill {
                map: "series",
                entries,
                capacity: u64::from(self.skel.maps.series.max_entries()),
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
        rows
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
        let rows = self.read(now);
        // Peers per process within the cap; the rest fold into the process's overflow
        // peer, so its totals stay exact.
        let mut merged: BTreeMap<SeriesKey, Stats> = self.exited.clone();
        let mut folded_now = 0;
        let mut sorted = rows;
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (mut key, stats) in sorted {
            if key.peer != OVERFLOW && key.name != OVERFLOW {
                let kept = self
                    .kept_peers
                    .entry((key.pid, key.name.clone(), key.workload.clone()))
                    .or_default();
                let peer = (key.inbound, key.peer.clone(), key.port);
                if !kept.contains(&peer) {
                    if kept.len() < self.max_peers {
                        kept.insert(peer);
                    } else {
                        key.peer = OVERFLOW.into();
                        key.port = 0;
                        folded_now += 1;
                    }
                }
            }
            merged.entry(key).or_default().merge(&stats);
        }
        // Peers over the cap at this collection; kept monotonic, as counters are.
        self.peers_folded = self.peers_folded.max(folded_now);

        let mut opened = Family::new(
            "tcp_connections_opened",
            "TCP connections established, by direction: outbound (connected by the process) or inbound (accepted on its listening port).",
            MetricKind::Counter,
        )
        .with_attributes(OTEL_ATTRIBUTES);
        let mut failures = Family::new(
            "tcp_connect_failures",
            "Outbound TCP connects that failed, by reason: refused, timeout, unreachable, aborted (closed by the process before an answer), other.",
            MetricKind::Counter,
        )
        .with_attributes(OTEL_ATTRIBUTES);
        let mut duration = Family::new(
            "tcp_connect_duration_seconds",
            "Time from SYN sent to connection established, outbound connections.",
            MetricKind::Histogram,
        )
        .with_unit("seconds")
        .with_attributes(OTEL_ATTRIBUTES);
        let mut active = Family::new(
            "tcp_active_connections",
            "TCP connections established since the agent started and not yet closed.",
            MetricKind::Gauge,
        )
        .with_attributes(OTEL_ATTRIBUTES);
        // Without a sampler (switched off, or refused by this kernel) the help says that
        // open connections count only when they close.
        let help = |sampled: &'static str, at_close: &'static str| {
            if self.sampler.is_some() {
                sampled
            } else {
                at_close
            }
        };
        let mut sent = Family::new(
            "tcp_sent_bytes",
            help(
                "Data bytes sent on TCP connections (retransmitted data once), added while they are open (every sample interval) and at their close.",
                "Data bytes sent on TCP connections (retransmitted data once), added when they close: open connections are not sampled here.",
            ),
            MetricKind::Counter,
        )
        .with_attributes(OTEL_ATTRIBUTES);
        let mut received = Family::new(
            "tcp_received_bytes",
            help(
                "Data bytes received on TCP connections, added while they are open (every sample interval) and at their close.",
                "Data bytes received on TCP connections, added when they close: open connections are not sampled here.",
            ),
            MetricKind::Counter,
        )
        .with_attributes(OTEL_ATTRIBUTES);
        let mut retransmits = Family::new(
            "tcp_retransmits",
            help(
                "Segments retransmitted on TCP connections, added while they are open (every sample interval) and at their close.",
                "Segments retransmitted on TCP connections, added when they close: open connections are not sampled here.",
            ),
            MetricKind::Counter,
        )
        .with_attributes(OTEL_ATTRIBUTES);
        let mut rtt = Family::new(
            "tcp_rtt_seconds",
            help(
                "Smoothed round-trip time of TCP connections: one sample per open connection and sample interval, and one at its close.",
                "Smoothed round-trip time of TCP connections: one sample at each close; open connections are not sampled here.",
            ),
            MetricKind::Histogram,
        )
        .with_unit("seconds")
        .with_attributes(OTEL_ATTRIBUTES);
        let created = self.started;
        for (key, stats) in &merged {
            let mut labels: Labels =
                self.processes
                    .workloads()
                    .process_labels(key.pid, &key.name, &key.workload);
            labels.push((
                "direction",
                if key.inbound { "inbound" } else { "outbound" }.to_string(),
            ));
            labels.push(("peer_address", key.peer.clone()));
            // Outbound: the peer's port; inbound: the local listening port. Never the
            // ephemeral side.
            if key.port != 0 {
                labels.push((
                    if key.inbound {
                        "server_port"
                    } else {
                        "peer_port"
                    },
                    key.port.to_string(),
                ));
            }
            opened.push_created(labels.clone(), Value::Counter(stats.opened as f64), created);
            active.push(labels.clone(), Value::Gauge(stats.active.max(0) as f64));
            sent.push_created(labels.clone(), Value::Counter(stats.sent as f64), created);
            received.push_created(
                labels.clone(),
                Value::Counter(stats.received as f64),
                created,
            );
            retransmits.push_created(
                labels.clone(),
                Value::Counter(stats.retransmits as f64),
                created,
            );
            rtt.push_created(
                labels.clone(),
                Value::Histogram(classic(
                    &stats.rtt,
                    &self.rtt_bounds,
                    stats.rtt_sum_us as f64 / 1e6,
                )),
                created,
            );
            if !key.inbound {
                for (reason, count) in FAILURE_REASONS.iter().zip(stats.failures) {
                    let mut labels = labels.clone();
                    labels.push(("reason", reason.to_string()));
                    failures.push_created(labels, Value::Counter(count as f64), created);
                }
                duration.push_created(
                    labels,
                    Value::Histogram(classic(
                        &stats.duration,
                        &self.duration_bounds,
                        stats.duration_sum_ns as f64 / 1e9,
                    )),
                    created,
                );
            }
        }
        out.extend([
            opened,
            failures,
            duration,
            active,
            sent,
            received,
            retransmits,
            rtt,
        ]);
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
            ("tcp_socks", self.counter(Counter::PSC_TCP_UNTRACKED)),
            (
                "listeners",
                self.counter(Counter::PSC_TCP_LISTENERS_REFUSED),
            ),
            ("peers", self.peers_folded),
            ("cgroup_tenants", self.cgroups.refused),
        ]
    }

    fn set_cgroup_tenants(&mut self, cgroups: &[(u64, u32)]) {
        let maps = &mut self.skel.maps;
        let version = maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cgroup_tenants_version);
        self.cgroups.replace(&maps.cgroup_tenants, version, cgroups);
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
        self.expired_series
    }
}
