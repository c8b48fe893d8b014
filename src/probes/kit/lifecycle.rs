//! The life of the series a process owns, one rule for every probe: a live process
//! owns its series (by pid, when pid labels are on); once it has been gone for the TTL,
//! its series fold into the aggregate of its executable, at most
//! `max_exited_executables` of them, beyond which they fold into the overflow series.
//! Totals never drop, and a series' `_created` never moves while it is exported.
//!
//! Everything here is pure: a probe reads its kernel maps, then hands the rows to these
//! steps, which its unit tests drive without a kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use super::budget::ProbeBudget;
use super::idle::Accumulate;
pub use super::owner::Owner;
use crate::enrich::Workloads;
use crate::probes::util::MapFill;

/// When each owner's processes were first seen, for `SeriesCreated`.
pub type FirstSeen = HashMap<Owner, SystemTime>;

/// Adds `value` to the row `(owner, detail)` of `rows`.
pub fn add_row<D: Ord, V: Accumulate>(
    rows: &mut BTreeMap<(Owner, D), V>,
    owner: Owner,
    detail: D,
    value: &V,
) {
    rows.entry((owner, detail)).or_default().merge(value);
}

/// The executables that have an aggregate of exited processes, under the one cap.
#[derive(Debug)]
pub struct ExitedExecutables {
    kept: BTreeSet<Owner>,
    max: usize,
    /// Exited processes folded into the overflow series because the cap was reached.
    refused: u64,
}

impl ExitedExecutables {
    pub fn new(max: usize) -> Self {
        ExitedExecutables {
            kept: BTreeSet::new(),
            max,
            refused: 0,
        }
    }

    /// Where the series of an exited process fold: its executable's aggregate, or the
    /// overflow series once the cap is reached. `overflowed`: its series were already
    /// exported in the overflow series (the series budget sent them there), where they
    /// stay, so that no counter of the overflow series goes back.
    pub fn destination(&mut self, process: &Owner, overflowed: bool, overflow: Owner) -> Owner {
        if overflowed || process.is_overflow() {
            return overflow;
        }
        let executable = process.executable();
        if self.kept.contains(&executable) {
            return executable;
        }
        if self.kept.len() >= self.max {
            self.refused += 1;
            return overflow;
        }
        self.kept.insert(executable.clone());
        executable
    }

    pub fn refused(&self) -> u64 {
        self.refused
    }

    pub fn fill(&self) -> MapFill {
        MapFill {
            map: "exited_executables",
            entries: self.kept.len() as u64,
            capacity: self.max as u64,
        }
    }
}

/// When each exported owner's series started counting, for `_created` and OTLP start
/// times: a process's when it was first seen; any other owner's (an aggregate, the
/// overflow series), which holds counts from before it was first exported, when the
/// probe started counting. Kept while the owner is exported, so it never moves under
/// a series.
#[derive(Debug, Default)]
pub struct SeriesCreated {
    created: HashMap<Owner, SystemTime>,
}

impl SeriesCreated {
    /// Stamps the owners exported now, with the time each was first seen where known,
    /// else `otherwise`, and forgets those no longer exported.
    pub fn refresh<'a>(
        &mut self,
        owners: impl IntoIterator<Item = (&'a Owner, Option<SystemTime>)>,
        otherwise: SystemTime,
    ) {
        let mut kept = HashMap::with_capacity(self.created.len());
        for (owner, first_seen) in owners {
            let created = self
                .created
                .get(owner)
                .copied()
                .unwrap_or_else(|| first_seen.unwrap_or(otherwise));
            let slot = kept.entry(owner.clone()).or_insert(created);
            *slot = (*slot).min(created);
        }
        self.created = kept;
    }

    /// The creation time of an owner's series, once stamped.
    pub fn of(&self, owner: &Owner) -> Option<SystemTime> {
        self.created.get(owner).copied()
    }
}

/// A probe's series through their life: the aggregates exited processes fold into,
/// the budget live series are admitted under, and their `_created`. Rows are keyed by
/// owner and a probe's own detail `D` (syscall, peer, route...).
pub struct ProcessSeries<D, V> {
    workloads: Workloads,
    exited: ExitedExecutables,
    aggregates: BTreeMap<(Owner, D), V>,
    created: SeriesCreated,
    /// When the probe started counting.
    started: SystemTime,
    budget: ProbeBudget,
    expired_series: u64,
}

impl<D: Ord + Clone, V: Accumulate> ProcessSeries<D, V> {
    pub fn new(workloads: Workloads, max_exited_executables: usize, budget: ProbeBudget) -> Self {
        ProcessSeries {
            workloads,
            exited: ExitedExecutables::new(max_exited_executables),
            aggregates: BTreeMap::new(),
            created: SeriesCreated::default(),
            started: SystemTime::now(),
            budget,
            expired_series: 0,
        }
    }

    /// Folds the rows a process gone for the TTL exported under `owner` into their
    /// aggregate; `place` may move a row's detail within it (a probe's own caps). The
    /// owner they went to.
    pub fn fold_exited(
        &mut self,
        owner: &Owner,
        rows: impl IntoIterator<Item = (D, V)>,
        mut place: impl FnMut(&Owner, D, &BTreeMap<(Owner, D), V>) -> D,
    ) -> Owner {
        let overflow = owner.overflow_of(&self.workloads);
        let into = self
            .exited
            .destination(owner, self.budget.overflowed(owner), overflow);
        for (detail, value) in rows {
            let detail = place(&into, detail, &self.aggregates);
            add_row(&mut self.aggregates, into.clone(), detail, &value);
            self.expired_series += 1;
        }
        into
    }

    /// The series to export: `live` (the live processes' rows and the kernel's
    /// overflow rows) and the aggregates, merged by owner under the series budget;
    /// `cost` is a row's samples. `first_seen` stamps owners for `_created`.
    pub fn export(
        &mut self,
        mut live: BTreeMap<(Owner, D), V>,
        first_seen: &FirstSeen,
        cost: impl Fn(&D, &V) -> usize,
    ) -> BTreeMap<(Owner, D), V> {
        for ((owner, detail), value) in &self.aggregates {
            add_row(&mut live, owner.clone(), detail.clone(), value);
        }
        let workloads = &self.workloads;
        self.budget.begin();
        let rows = self
            .budget
            .admit(live, |owner| owner.overflow_of(workloads), cost);
        self.budget.finish();
        self.created.refresh(
            rows.keys()
                .map(|(owner, _)| (owner, first_seen.get(owner).copied())),
            self.started,
        );
        rows
    }

    /// When an exported owner's series started counting.
    pub fn created(&self, owner: &Owner) -> SystemTime {
        self.created.of(owner).unwrap_or(self.started)
    }

    /// Aggregate rows held.
    pub fn aggregates(&self) -> usize {
        self.aggregates.len()
    }

    pub fn workloads(&self) -> &Workloads {
        &self.workloads
    }

    /// Exited processes folded into overflow by the cap of executables.
    pub fn exited_refused(&self) -> u64 {
        self.exited.refused()
    }

    /// Owners the budget sent to overflow.
    pub fn budget_refused(&self) -> u64 {
        self.budget.refused()
    }

    /// The fill of the exited executables and of the budget.
    pub fn fill(&self) -> [MapFill; 2] {
        [self.exited.fill(), self.budget.fill()]
    }

    /// Rows of exited processes folded so far.
    pub fn expired_series(&self) -> u64 {
        self.expired_series
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Workload;
    use std::time::Duration;

    fn process(pid: u32, name: &str) -> Owner {
        Owner::new(Some(pid), name, Workload::default())
    }

    #[test]
    fn exited_processes_fold_into_their_executable_within_the_cap() {
        let mut exited = ExitedExecutables::new(1);
        let over = Owner::overflow(None);
        let a = exited.destination(&process(1, "a"), false, over.clone());
        assert_eq!(a, Owner::new(None, "a", Workload::default()));
        // Another process of a known executable still has its place.
        assert_eq!(exited.destination(&process(2, "a"), false, over.clone()), a);
        // A new executable beyond the cap folds into overflow.
        assert_eq!(
            exited.destination(&process(3, "b"), false, over.clone()),
            over
        );
        assert_eq!(exited.refused(), 1);
        assert_eq!(exited.fill().entries, 1);
    }

    #[test]
    fn series_already_in_overflow_stay_there() {
        let mut exited = ExitedExecutables::new(8);
        let over = Owner::overflow(None);
        assert_eq!(
            exited.destination(&process(1, "a"), true, over.clone()),
            over
        );
        assert_eq!(exited.fill().entries, 0, "no place taken for it");
        assert_eq!(exited.refused(), 0, "not the cap's doing");
    }

    #[test]
    fn created_never_moves_while_exported_and_resets_after() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let later = t0 + Duration::from_secs(60);
        let a = process(1, "a");
        let agg = a.executable();
        let mut created = SeriesCreated::default();
        created.refresh([(&a, Some(t0)), (&agg, None)], later);
        assert_eq!(created.of(&a), Some(t0));
        assert_eq!(created.of(&agg), Some(later));
        // Seen again later with another first-seen time: the first stamp stays.
        created.refresh([(&a, Some(later)), (&agg, Some(t0))], later);
        assert_eq!(created.of(&a), Some(t0));
        assert_eq!(created.of(&agg), Some(later));
        // Gone, then back: a new series, a new stamp.
        created.refresh([(&agg, None)], later);
        assert_eq!(created.of(&a), None);
        created.refresh([(&a, Some(later))], later);
        assert_eq!(created.of(&a), Some(later));
    }

    #[test]
    fn owners_merged_from_several_processes_take_the_earliest() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let t1 = t0 + Duration::from_secs(5);
        let agg = Owner::new(None, "a", Workload::default());
        let mut created = SeriesCreated::default();
        created.refresh([(&agg, Some(t1)), (&agg, Some(t0))], t1);
        assert_eq!(created.of(&agg), Some(t0));
    }

    #[test]
    fn aggregates_and_overflow_count_from_the_probe_start() {
        use crate::probes::kit::budget::SeriesBudget;
        let budget = SeriesBudget::unlimited().for_probe("p");
        let mut series: ProcessSeries<u32, u64> =
            ProcessSeries::new(Workloads::default(), 8, budget);
        let seen = SystemTime::now() + Duration::from_secs(60);
        let live = BTreeMap::from([((process(1, "a"), 7), 3u64)]);
        let first_seen = FirstSeen::from([(process(1, "a"), seen)]);
        series.export(live, &first_seen, |_, _| 1);
        assert_eq!(series.created(&process(1, "a")), seen);
        let into = series.fold_exited(&process(1, "a"), [(7, 3u64)], |_, d, _| d);
        assert_eq!(into, process(1, "a").executable());
        let rows = series.export(BTreeMap::new(), &FirstSeen::new(), |_, _| 1);
        assert_eq!(rows[&(into.clone(), 7)], 3);
        assert!(series.created(&into) < seen, "the probe's start, not now");
        assert_eq!(series.expired_series(), 1);
    }
}
