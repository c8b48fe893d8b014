//! The `process` probe: execs, exits by exit code class and OOM kills, per executable,
//! counted in the kernel (see `process.bpf.c`).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use libbpf_rs::{Link, MapCore};

use super::kit::budget::{ProbeBudget, COUNTER_SAMPLES};
use super::kit::idle::{Accumulate, IdleKeys, Row};
use super::kit::lifecycle::Owner;
use super::kit::programs::{load_degrading, load_object, AttemptError, Degraded, ProgramSpec};
use super::util::{self, c_string, MapFill, ProbeError};
use super::{BuiltIn, LoadContext, Probe};
use crate::enrich::Workload;
use crate::model::{Family, MetricKind, Value};

pub mod config;

use config::ProcessConfig;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/process.skel.rs"));
}
use skel::{types, ProcessSkel, ProcessSkelBuilder};

util::plain_types!(
    types::psc_exe_key,
    types::psc_process_stats,
);

pub use crate::model::OVERFLOW as OVERFLOW_NAME;

impl BuiltIn for ProcessProbe {
    type Settings = ProcessConfig;
    const DESCRIPTION: &'static str = "per executable: execs, exits by exit code class, OOM kills";

    fn load(settings: &Self::Settings, context: &mut LoadContext<'_>) -> Result<Self, ProbeError> {
        let processes = context.processes;
        util::check_btf()?;
        let (mut probe, degraded) = load_degrading("process", PROGRAMS, |plan| {
            let mut open = util::open_object(ProcessSkelBuilder::default(), "process")?;
            util::set_entries(&mut open.maps.executables, settings.max_executables.get(), "executables")?;
            let skel = load_object(open, plan, "process")?;
            let mut probe = ProcessProbe {
                skel,
                links: Vec::new(),
                started: SystemTime::now(),
                fill: Vec::new(),
                exits: plan.loads("psc_process_exit"),
                oom_kills: plan.loads("psc_oom_victim"),
                degraded: Vec::new(),
                idle: IdleKeys::new(
                    Duration::from_secs(processes.exited_ttl_secs),
                    processes.max_exited_executables.get() as usize,
                ),
                budget: context.budget.for_probe("process"),
            };
            if context.attach {
                let progs = &probe.skel.progs;
                for (name, prog) in [
                    ("psc_process_exec", &progs.psc_process_exec),
                    ("psc_process_exit", &progs.psc_process_exit),
                    ("psc_oom_victim", &progs.psc_oom_victim),
                ] {
                    if !plan.loads(name) {
                        continue;
                    }
                    let link = prog.attach().map_err(AttemptError::attach(name))?;
                    probe.links.push(link);
                }
            }
            Ok(probe)
        })?;
        probe.degraded = degraded;
        Ok(probe)
    }
}

/// Execs are the probe; exits and OOM kills each add a family.
static PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec::required("psc_process_exec", "tp_btf/sched_process_exec"),
    ProgramSpec::optional(
        "psc_process_exit",
        "tp_btf/sched_process_exit",
        "process exits",
        "process_exits_total (not exported)",
    ),
    ProgramSpec::optional(
        "psc_oom_victim",
        "tp_btf/mark_victim",
        "OOM kills",
        "oom_kills_total (not exported)",
    ),
];

pub struct ProcessProbe {
    skel: ProcessSkel<'static>,
    links: Vec<Link>,
    started: SystemTime,
    fill: Vec<MapFill>,
    /// Whether the kernel runs the exit and OOM programs: a family it cannot count is
    /// not exported, rather than exported as zeros.
    exits: bool,
    oom_kills: bool,
    degraded: Vec<Degraded>,
    /// Executables idle for `processes.exited_ttl_secs` leave the kernel's map, so
    /// that its slots serve new names; their counts stay.
    idle: IdleKeys<String, Stats>,
    budget: ProbeBudget,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Stats {
    execs: u64,
    exits_ok: u64,
    exits_error: u64,
    exits_signal: u64,
    oom_kills: u64,
}

impl Accumulate for Stats {
    fn merge(&mut self, other: &Stats) {
        self.execs += other.execs;
        self.exits_ok += other.exits_ok;
        self.exits_error += other.exits_error;
        self.exits_signal += other.exits_signal;
        self.oom_kills += other.oom_kills;
    }
}

impl Stats {
    fn add(&mut self, s: &types::psc_process_stats) {
        self.execs += s.execs;
        self.exits_ok += s.exits_ok;
        self.exits_error += s.exits_error;
        self.exits_signal += s.exits_signal;
        self.oom_kills += s.oom_kills;
    }

    fn from_percpu(values: &[Vec<u8>]) -> Stats {
        util::sum_percpu(values, Stats::add)
    }
}

impl Probe for ProcessProbe {
    fn name(&self) -> &'static str {
        "process"
    }

    fn attach_method(&self) -> String {
        let mut hooks = vec!["tp_btf/sched_process_exec"];
        if self.exits {
            hooks.push("tp_btf/sched_process_exit");
        }
        if self.oom_kills {
            hooks.push("tp_btf/mark_victim");
        }
        hooks.join(", ")
    }

    fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    fn collect(&mut self, now: Instant, out: &mut Vec<Family>) {
        let mut kernel_rows = Vec::new();
        for (raw, values) in util::read_percpu(&self.skel.maps.executables) {
            let mut k = types::psc_exe_key::default();
            if plain::copy_from_bytes(&mut k, &raw).is_ok() {
                let key = crate::model::unreserved(&c_string(&k.comm)).into_owned();
                let value = Stats::from_percpu(&values);
                kernel_rows.push(Row { raw, key, value });
            }
        }
        let entries = kernel_rows.len() as u64;
        // A name back after it was retired adds to its old counts: counters never go back.
        let mut rows = self.idle.merged(&kernel_rows, OVERFLOW_NAME.to_string());
        let executables = &self.skel.maps.executables;
        self.idle.retire_idle(now, &kernel_rows, |raw| {
            util::take_percpu(executables, raw).map(|values| Stats::from_percpu(&values))
        });
        let maps = &self.skel.maps;
        if util::percpu_array_u64(&maps.folded, 0) > 0 {
            let overflow = maps
                .overflow
                .lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
                .ok()
                .flatten()
                .map(|values| Stats::from_percpu(&values))
                .unwrap_or_default();
            rows.entry(OVERFLOW_NAME.to_string())
                .or_default()
                .merge(&overflow);
        }

        let mut execs = Family::new(
            "process_execs",
            "Programs executed (successful execve), per executable name.",
            MetricKind::Counter,
        );
        let mut exits = Family::new(
            "process_exits",
            "Processes exited, per executable name and exit code class (ok, error, signal).",
            MetricKind::Counter,
        );
        let mut ooms = Family::new(
            "oom_kills",
            "Processes chosen as OOM-killer victims, per executable name.",
            MetricKind::Counter,
        );
        // Counters per executable: execs, each exit class, OOM kills.
        let samples = COUNTER_SAMPLES
            * (1 + if self.exits { 3 } else { 0 } + usize::from(self.oom_kills));
        let owners = rows
            .into_iter()
            .map(|(name, stats)| (Owner::new(None, name, Workload::default()), stats));
        let rows = self
            .budget
            .admit_owners(owners, |_| Owner::overflow(None), |_| samples);
        for (owner, stats) in rows {
            let labels = vec![("process_executable_name", owner.name)];
            execs.push_created(
                labels.clone(),
                Value::Counter(stats.execs as f64),
                self.started,
            );
            for (class, count) in [
                ("ok", stats.exits_ok),
                ("error", stats.exits_error),
                ("signal", stats.exits_signal),
            ] {
                let mut labels = labels.clone();
                labels.push(("exit_code_class", class.to_string()));
                exits.push_created(labels, Value::Counter(count as f64), self.started);
            }
            ooms.push_created(labels, Value::Counter(stats.oom_kills as f64), self.started);
        }
        out.push(execs);
        if self.exits {
            out.push(exits);
        }
        if self.oom_kills {
            out.push(ooms);
        }
        self.fill = vec![
            MapFill {
                map: "executables",
                entries,
                capacity: u64::from(maps.executables.max_entries()),
            },
            self.budget.fill(),
        ];
    }

    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let progs = &self.skel.progs;
        let mut programs = vec![("psc_process_exec".into(), progs.psc_process_exec.as_fd())];
        if self.exits {
            programs.push(("psc_process_exit".into(), progs.psc_process_exit.as_fd()));
        }
        if self.oom_kills {
            programs.push(("psc_oom_victim".into(), progs.psc_oom_victim.as_fd()));
        }
        programs
    }

    fn map_fill(&self) -> Vec<MapFill> {
        self.fill.clone()
    }

    fn folded(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "executables",
                util::percpu_array_u64(&self.skel.maps.folded, 0),
            ),
            ("series_budget", self.budget.refused()),
        ]
    }

    fn expired_series(&self) -> u64 {
        self.idle.expired()
    }
}
