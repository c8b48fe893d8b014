//! What the syscalls probe exports, decided without the kernel: which owner each row of
//! the maps belongs to, where the rows of exited processes fold, and what the series
//! budget admits. `mod.rs` reads the kernel and hands the rows over.

use std::collections::BTreeMap;

use crate::model::native::KernelHistogram;
use crate::probes::kit::budget::{histogram_samples, COUNTER_SAMPLES};
use crate::probes::kit::idle::Accumulate;
use crate::probes::kit::lifecycle::{add_row, FirstSeen, Owner, ProcessSeries};

/// One owner's series of one syscall. A call, its error and its latency sample travel
/// together: rows merge whole, so that in every series errors never outnumber calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyscallSeries {
    /// Calls; None for a row that only holds latency (kept per executable).
    pub calls: Option<u64>,
    /// Errors by errno (0: errno unknown).
    pub errors: BTreeMap<u32, u64>,
    pub latency: Option<KernelHistogram>,
}

impl Accumulate for SyscallSeries {
    fn merge(&mut self, other: &Self) {
        if let Some(calls) = other.calls {
            *self.calls.get_or_insert(0) += calls;
        }
        for (err, count) in &other.errors {
            *self.errors.entry(*err).or_default() += count;
        }
        if let Some(hist) = &other.latency {
            self.latency.get_or_insert_with(Default::default).merge(hist);
        }
    }
}

impl SyscallSeries {
    pub fn calls(calls: u64) -> Self {
        SyscallSeries {
            calls: Some(calls),
            ..Default::default()
        }
    }

    /// Splits off the latency, which may belong to another owner.
    fn take_latency(&mut self) -> Option<SyscallSeries> {
        let latency = self.latency.take()?;
        Some(SyscallSeries {
            latency: Some(latency),
            ..Default::default()
        })
    }

    fn is_empty(&self) -> bool {
        self.calls.is_none() && self.errors.is_empty() && self.latency.is_none()
    }
}

/// Rows by owner and syscall number.
pub type Rows = BTreeMap<(Owner, u32), SyscallSeries>;

pub struct Policy {
    latency_per_process: bool,
    /// Finite buckets of the latency histograms, for their cost in samples.
    latency_bounds: usize,
    series: ProcessSeries<u32, SyscallSeries>,
}

impl Policy {
    pub fn new(latency_per_process: bool, latency_bounds: usize, series: ProcessSeries<u32, SyscallSeries>) -> Self {
        Policy {
            latency_per_process,
            latency_bounds,
            series,
        }
    }

    /// Adds a process's rows to `rows`, its latency under the owner latency is kept by.
    pub fn add_process(&self, rows: &mut Rows, owner: &Owner, nr: u32, mut series: SyscallSeries) {
        if !self.latency_per_process {
            if let Some(latency) = series.take_latency() {
                add_row(rows, owner.executable(), nr, &latency);
            }
        }
        if !series.is_empty() {
            add_row(rows, owner.clone(), nr, &series);
        }
    }

    /// Folds the rows of a process gone for the TTL into the aggregate of its
    /// executable, where its totals stay: each under the owner it was exported by (the
    /// process, and its executable for latency).
    pub fn fold_exited(&mut self, owner: &Owner, rows: BTreeMap<u32, SyscallSeries>) {
        let mut process_rows = Rows::new();
        for (nr, series) in rows {
            self.add_process(&mut process_rows, owner, nr, series);
        }
        let mut by_owner: BTreeMap<Owner, Vec<(u32, SyscallSeries)>> = BTreeMap::new();
        for ((exported_as, nr), series) in process_rows {
            by_owner.entry(exported_as).or_default().push((nr, series));
        }
        for (exported_as, rows) in by_owner {
            self.series.fold_exited(&exported_as, rows, |_, nr, _| nr);
        }
    }

    /// The series to export: the live processes' rows, the aggregates and the kernel's
    /// overflow rows, merged by owner under the series budget.
    pub fn export(&mut self, mut live: Rows, overflow: Rows, first_seen: &FirstSeen) -> Rows {
        for ((owner, nr), series) in overflow {
            add_row(&mut live, owner, nr, &series);
        }
        let latency_samples = histogram_samples(self.latency_bounds);
        let cost = |_: &u32, series: &SyscallSeries| {
            series.calls.map_or(0, |_| COUNTER_SAMPLES)
                + series.errors.len() * COUNTER_SAMPLES
                + series.latency.as_ref().map_or(0, |_| latency_samples)
        };
        self.series.export(live, first_seen, cost)
    }

    pub fn series(&self) -> &ProcessSeries<u32, SyscallSeries> {
        &self.series
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{Workload, Workloads};
    use crate::probes::kit::budget::SeriesBudget;
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    const READ: u32 = 0;

    fn policy(per_process: bool, max_exited: usize, budget: usize) -> Policy {
        let budget = SeriesBudget::new(budget).for_probe("syscalls");
        let series = ProcessSeries::new(Workloads::default(), max_exited, budget);
        Policy::new(per_process, 22, series)
    }

    fn process(pid: u32, name: &str) -> Owner {
        Owner::new(Some(pid), name, Workload::default())
    }

    fn series(calls: u64, errors: u64, latency: u64) -> SyscallSeries {
        let mut hist = KernelHistogram::default();
        for _ in 0..latency {
            hist.record(1000);
        }
        SyscallSeries {
            calls: Some(calls),
            errors: if errors > 0 {
                BTreeMap::from([(11, errors)])
            } else {
                BTreeMap::new()
            },
            latency: (latency > 0).then_some(hist),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn errors_never_outnumber_calls(rows: &Rows) {
        for ((owner, nr), series) in rows {
            let errors: u64 = series.errors.values().sum();
            assert!(
                errors <= series.calls.unwrap_or(0),
                "{owner:?} {nr}: {series:?}"
            );
        }
    }

    #[test]
    fn latency_is_kept_per_executable_by_default() {
        let policy = policy(false, 8, usize::MAX);
        let mut rows = Rows::new();
        policy.add_process(&mut rows, &process(1, "a"), READ, series(3, 1, 3));
        policy.add_process(&mut rows, &process(2, "a"), READ, series(2, 0, 2));
        let executable = (process(1, "a").executable(), READ);
        assert_eq!(rows[&executable].latency.as_ref().map(|h| h.count()), Some(5));
        assert_eq!(rows[&executable].calls, None, "calls stay per process");
        assert_eq!(rows[&(process(1, "a"), READ)].calls, Some(3));
        assert!(rows[&(process(1, "a"), READ)].latency.is_none());
    }

    #[test]
    fn exited_processes_fold_whole_into_their_executable() {
        let mut policy = policy(true, 8, usize::MAX);
        policy.fold_exited(&process(1, "a"), BTreeMap::from([(READ, series(5, 2, 5))]));
        policy.fold_exited(&process(2, "a"), BTreeMap::from([(READ, series(1, 0, 1))]));
        let rows = policy.export(Rows::new(), Rows::new(), &HashMap::new());
        let aggregate = &rows[&(process(1, "a").executable(), READ)];
        assert_eq!(aggregate.calls, Some(6));
        assert_eq!(aggregate.errors[&11], 2);
        assert_eq!(aggregate.latency.as_ref().map(|h| h.count()), Some(6));
        assert_eq!(policy.series().expired_series(), 2);
    }

    #[test]
    fn beyond_the_exited_cap_processes_fold_into_overflow_with_their_errors() {
        let mut policy = policy(false, 1, usize::MAX);
        policy.fold_exited(&process(1, "a"), BTreeMap::from([(READ, series(5, 0, 0))]));
        policy.fold_exited(
            &process(2, "b"),
            BTreeMap::from([(READ, series(1, 1, 0)), (READ + 1, series(1, 0, 0))]),
        );
        let rows = policy.export(Rows::new(), Rows::new(), &HashMap::new());
        let overflow = &rows[&(Owner::overflow(None), READ)];
        assert_eq!(overflow.calls, Some(1));
        assert_eq!(overflow.errors[&11], 1);
        // One process refused, however many of its series.
        assert_eq!(policy.series().exited_refused(), 1);
        errors_never_outnumber_calls(&rows);
    }

    #[test]
    fn the_budget_sends_whole_processes_to_overflow_and_they_stay_there() {
        // Room for one process's calls and errors (4 samples), not two.
        let mut policy = policy(true, 8, 4);
        let mut live = Rows::new();
        live.insert((process(1, "a"), READ), series(10, 1, 0));
        live.insert((process(2, "b"), READ), series(7, 3, 0));
        let rows = policy.export(live, Rows::new(), &HashMap::new());
        assert_eq!(rows[&(process(1, "a"), READ)].calls, Some(10));
        let overflow = &rows[&(Owner::overflow(None), READ)];
        assert_eq!((overflow.calls, overflow.errors[&11]), (Some(7), 3));
        errors_never_outnumber_calls(&rows);
        // Process 2 exits: its totals stay in overflow, not in a new aggregate.
        policy.fold_exited(&process(2, "b"), BTreeMap::from([(READ, series(8, 3, 0))]));
        let mut live = Rows::new();
        live.insert((process(1, "a"), READ), series(11, 1, 0));
        let rows = policy.export(live, Rows::new(), &HashMap::new());
        assert_eq!(rows[&(Owner::overflow(None), READ)].calls, Some(8));
        assert!(!rows.contains_key(&(process(2, "b").executable(), READ)));
    }

    #[test]
    fn created_is_the_first_sighting_of_the_process_and_stays() {
        let mut policy = policy(true, 8, usize::MAX);
        let seen = now() - Duration::from_secs(30);
        let owner = process(1, "a");
        let first_seen = HashMap::from([(owner.clone(), seen)]);
        let mut live = Rows::new();
        live.insert((owner.clone(), READ), series(1, 0, 0));
        policy.export(live.clone(), Rows::new(), &first_seen);
        assert_eq!(policy.series().created(&owner), seen);
        policy.export(live, Rows::new(), &HashMap::new());
        assert_eq!(policy.series().created(&owner), seen);
    }
}
