//! The `sched` probe: run-queue latency per executable, measured in the kernel between
//! a task becoming runnable and a CPU running it (see `sched.bpf.c`).

pub mod config;

#[cfg(test)]
mod tests;

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use libbpf_rs::{Link, MapCore, MapFlags};

use super::kit::budget::{histogram_samples, ProbeBudget};
use super::kit::idle::{IdleKeys, Row};
use super::kit::lifecycle::Owner;
use super::kit::programs::{load_degrading, load_object, AttemptError, ProgramSpec};
use super::util::{self, c_string, decode, MapFill, ProbeError};
use super::{BuiltIn, LoadContext, Probe};
use crate::enrich::workload::RecordedCgroup;
use crate::enrich::{Workload, Workloads};
use crate::model::histogram::DurationBounds;
use crate::model::native::{KernelHistogram, Unit};
use crate::model::{Family, MetricKind, Value, OVERFLOW};
use config::SchedConfig;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/sched.skel.rs"));
}
use skel::{types, SchedSkel, SchedSkelBuilder};
use types::psc_sched_counter as Counter;

util::plain_types!(
    types::psc_sched_key,
    types::psc_hist,
);

impl BuiltIn for SchedProbe {
    type Settings = SchedConfig;
    const DESCRIPTION: &'static str =
        "per executable: run-queue latency, the wait of runnable tasks for a CPU";

    fn load(settings: &Self::Settings, context: &mut LoadContext<'_>) -> Result<Self, ProbeError> {
        util::check_btf()?;
        let ((skel, links), _) = load_degrading("sched", PROGRAMS, |plan| {
            let mut open = util::open_object(SchedSkelBuilder::default(), "sched")?;
            util::set_entries(&mut open.maps.latency, settings.max_series.get(), "latency")?;
            let rodata = open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
                ProbeError::Unsupported("the sched object has no rodata".into())
            })?;
            rodata
                .psc_native_thresholds
                .copy_from_slice(Unit::Nanoseconds.kernel_thresholds());
            let skel = load_object(open, plan, "sched")?;
            let mut links = Vec::new();
            if context.attach {
                let progs = &skel.progs;
                // The switch first: a wait stamped by a wakeup is then always measured.
                for (name, prog) in [
                    ("psc_sched_switch", &progs.psc_sched_switch),
                    ("psc_sched_wakeup", &progs.psc_sched_wakeup),
                    ("psc_sched_wakeup_new", &progs.psc_sched_wakeup_new),
                ] {
                    links.push(prog.attach().map_err(AttemptError::attach(name))?);
                }
            }
            Ok((skel, links))
        })?;
        let processes = context.processes;
        Ok(SchedProbe {
            skel,
            _links: links,
            workloads: context.workloads.clone(),
            bounds: DurationBounds::new(&settings.duration_buckets_seconds.0),
            started: SystemTime::now(),
            budget: context.budget.for_probe("sched"),
            idle: IdleKeys::new(
                Duration::from_secs(processes.exited_ttl_secs),
                processes.max_exited_executables.get() as usize,
            ),
            fill: Vec::new(),
        })
    }
}

/// A wait is measured from a wakeup, or from a switch that leaves the task runnable.
static PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec::required("psc_sched_wakeup", "tp_btf/sched_wakeup with task storage"),
    ProgramSpec::required(
        "psc_sched_wakeup_new",
        "tp_btf/sched_wakeup_new with task storage",
    ),
    ProgramSpec::required("psc_sched_switch", "tp_btf/sched_switch with task storage"),
];

/// A series: an executable within a cgroup v2 (its container or service).
type SeriesKey = (String, u64);

pub struct SchedProbe {
    skel: SchedSkel<'static>,
    _links: Vec<Link>,
    workloads: Workloads,
    bounds: DurationBounds,
    started: SystemTime,
    budget: ProbeBudget,
    idle: IdleKeys<SeriesKey, KernelHistogram>,
    fill: Vec<MapFill>,
}

impl SchedProbe {

    /// The kernel's series, as (raw key, series key, histogram).
    fn read(&self) -> Vec<Row<SeriesKey, KernelHistogram>> {
        util::read_shared(&self.skel.maps.latency)
            .into_iter()
            .filter_map(|(raw, value)| {
                let key: types::psc_sched_key = decode(&raw)?;
                let name = crate::model::unreserved(&c_string(&key.comm)).into_owned();
                Some(Row {
                    raw,
                    key: (name, key.cgroup),
                    value: decode_hist(&value)?,
                })
            })
            .collect()
    }

    fn counter(&self, counter: Counter) -> u64 {
        util::percpu_array_u64(&self.skel.maps.counters, counter.0)
    }

    fn workload_of(&self, cgroup: u64) -> Workload {
        if cgroup == 0 {
            return Workload::default();
        }
        self.workloads.of_recorded(&RecordedCgroup {
            id: cgroup,
            leaf: String::new(),
            parent: String::new(),
        })
    }
}

impl Probe for SchedProbe {
    fn name(&self) -> &'static str {
        "sched"
    }

    fn attach_method(&self) -> String {
        "tp_btf/sched_wakeup, tp_btf/sched_wakeup_new, tp_btf/sched_switch".into()
    }

    fn collect(&mut self, now: Instant, out: &mut Vec<Family>) {
        let rows = self.read();
        let entries = rows.len() as u64;
        let mut series = self.idle.merged(&rows, (OVERFLOW.to_string(), 0));
        let latency = &self.skel.maps.latency;
        self.idle.retire_idle(now, &rows, |raw| {
            latency
                .lookup_and_delete(raw)
                .ok()
                .flatten()
                .and_then(|value| decode_hist(&value))
        });
        if self.counter(Counter::PSC_SCHED_FOLDED) > 0 {
            let overflow = self
                .skel
                .maps
                .overflow
                .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .and_then(|value| decode_hist(&value))
                .unwrap_or_default();
            series
                .entry((OVERFLOW.to_string(), 0))
                .or_default()
                .merge(&overflow);
        }
        let owners: Vec<(Owner, KernelHistogram)> = series
            .into_iter()
            .map(|((name, cgroup), hist)| {
                let owner = if name == OVERFLOW && cgroup == 0 {
                    Owner::overflow(None)
                } else {
                    Owner::new(None, name, self.workload_of(cgroup))
                };
                (owner, hist)
            })
            .collect();
        let workloads = &self.workloads;
        let samples = histogram_samples(self.bounds.seconds.len());
        let series =
            self.budget
                .admit_owners(owners, |owner| owner.overflow_of(workloads), |_| samples);
        let mut family = Family::new(
            "sched_runqueue_latency_seconds",
            "Time runnable tasks waited on a run queue before a CPU ran them, per executable.",
            MetricKind::Histogram,
        )
        .with_unit("seconds");
        for (owner, hist) in &series {
            family.push_created(
                owner.labels(workloads),
                Value::Histogram(self.bounds.classic_and_native(hist)),
                self.started,
            );
        }
        out.push(family);
        self.fill = vec![
            MapFill {
                map: "sched_latency",
                entries,
                capacity: u64::from(latency.max_entries()),
            },
            self.budget.fill(),
        ];
    }

    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let progs = &self.skel.progs;
        vec![
            ("psc_sched_wakeup".into(), progs.psc_sched_wakeup.as_fd()),
            (
                "psc_sched_wakeup_new".into(),
                progs.psc_sched_wakeup_new.as_fd(),
            ),
            ("psc_sched_switch".into(), progs.psc_sched_switch.as_fd()),
        ]
    }

    fn folded(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("sched_latency", self.counter(Counter::PSC_SCHED_FOLDED)),
            ("sched_queued_at", self.counter(Counter::PSC_SCHED_UNSTAMPED)),
            ("series_budget", self.budget.refused()),
        ]
    }

    fn map_fill(&self) -> Vec<MapFill> {
        self.fill.clone()
    }

    fn expired_series(&self) -> u64 {
        self.idle.expired()
    }
}

fn decode_hist(bytes: &[u8]) -> Option<KernelHistogram> {
    let hist: types::psc_hist = decode(bytes)?;
    Some(KernelHistogram::from_parts(&hist.buckets, hist.sum))
}
