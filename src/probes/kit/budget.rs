//! One series budget for the whole agent: what a scrape may hold of per-process and
//! per-executable series, over every probe. A node that spawns thousands of processes
//! would otherwise hand each scraper hundreds of thousands of samples.
//!
//! The budget is counted in samples, as a scraper stores them (a counter is its value
//! and its `_created`; a histogram is its buckets, sum, count and `_created`). Owners
//! (`lifecycle::Owner`) are admitted whole, in the order they first show up, while the
//! budget has room; the series of an owner that finds it full go to its tenant's
//! overflow series instead, so totals stay exact. A decision holds for as long as the
//! owner is exported, either way: an admitted owner keeps its series (they may grow),
//! and an owner in overflow stays there, so that no counter moves from one series to
//! another and back.
//!
//! Half the budget is held in equal shares for the probes, so that one probe seeing
//! every process (syscalls) cannot leave another (http) without room: a probe may
//! always fill its own share, and the rest of the budget is first come, first served.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use super::idle::Accumulate;
use super::owner::Owner;
use crate::probes::util::MapFill;

/// Samples a counter series costs: its value and its `_created`.
pub const COUNTER_SAMPLES: usize = 2;

/// Samples a histogram series with `bounds` finite buckets costs: its buckets and
/// `+Inf`, sum, count and `_created`.
pub fn histogram_samples(bounds: usize) -> usize {
    bounds + 4
}

/// The agent-wide budget, shared by the probes (all on the collecting thread).
#[derive(Debug, Clone)]
pub struct SeriesBudget {
    shared: Rc<RefCell<Shared>>,
}

#[derive(Debug)]
struct Shared {
    limit: usize,
    /// Samples each probe exported at its last collection, for every probe under the
    /// budget.
    used: BTreeMap<&'static str, usize>,
}

impl Shared {
    /// What each probe may always fill.
    fn share(&self) -> usize {
        self.limit / (2 * self.used.len().max(1))
    }
}

impl SeriesBudget {
    pub fn new(limit: usize) -> Self {
        SeriesBudget {
            shared: Rc::new(RefCell::new(Shared {
                limit,
                used: BTreeMap::new(),
            })),
        }
    }

    /// A budget as large as anything a test or a tool needs.
    pub fn unlimited() -> Self {
        SeriesBudget::new(usize::MAX)
    }

    pub fn for_probe(&self, probe: &'static str) -> ProbeBudget {
        self.shared.borrow_mut().used.entry(probe).or_insert(0);
        ProbeBudget {
            shared: self.shared.clone(),
            probe,
            decisions: HashMap::new(),
            seen: HashSet::new(),
            others: 0,
            share: 0,
            used: 0,
            refused: 0,
        }
    }
}

/// One probe's view of the budget, with its decisions.
#[derive(Debug)]
pub struct ProbeBudget {
    shared: Rc<RefCell<Shared>>,
    probe: &'static str,
    /// Admitted (true) or sent to overflow (false), per owner exported.
    decisions: HashMap<Owner, bool>,
    /// Owners exported in the collection under way.
    seen: HashSet<Owner>,
    /// Samples the other probes exported at their last collection, each counted as at
    /// least its share, which stays theirs.
    others: usize,
    /// What this probe may fill whatever the others hold.
    share: usize,
    /// Samples this probe exports in the collection under way.
    used: usize,
    /// Owners sent to overflow because the budget was full.
    refused: u64,
}

impl ProbeBudget {
    /// Starts a collection: every `admit` until `finish` belongs to it.
    pub fn begin(&mut self) {
        let shared = self.shared.borrow();
        self.share = shared.share();
        self.others = shared
            .used
            .iter()
            .filter(|(probe, _)| **probe != self.probe)
            .map(|(_, used)| (*used).max(self.share))
            .fold(0, usize::saturating_add);
        self.used = 0;
        self.seen.clear();
    }

    /// Rows keyed by owner, with the owners the budget has no room for moved to their
    /// overflow series (`overflow_of`). `cost` is a row's samples.
    pub fn admit<D: Ord + Clone, V: Accumulate>(
        &mut self,
        rows: BTreeMap<(Owner, D), V>,
        overflow_of: impl Fn(&Owner) -> Owner,
        cost: impl Fn(&D, &V) -> usize,
    ) -> BTreeMap<(Owner, D), V> {
        let limit = self.shared.borrow().limit;
        let mut owner_cost: BTreeMap<&Owner, usize> = BTreeMap::new();
        for ((owner, detail), value) in &rows {
            *owner_cost.entry(owner).or_default() += cost(detail, value);
        }
        // Owners already admitted, and overflow series, come first: they stay.
        for (owner, samples) in &owner_cost {
            if owner.is_overflow() || self.decisions.get(*owner) == Some(&true) {
                self.used = self.used.saturating_add(*samples);
            }
        }
        let mut admitted: HashSet<Owner> = HashSet::new();
        for (owner, samples) in owner_cost {
            let decision = if owner.is_overflow() {
                true
            } else if let Some(decision) = self.decisions.get(owner) {
                *decision
            } else {
                let wanted = self.used.saturating_add(samples);
                let room = wanted <= self.share || self.others.saturating_add(wanted) <= limit;
                if room {
                    self.used = self.used.saturating_add(samples);
                } else {
                    self.refused += 1;
                }
                self.decisions.insert(owner.clone(), room);
                room
            };
            self.seen.insert(owner.clone());
            if decision {
                admitted.insert(owner.clone());
            }
        }
        let mut out: BTreeMap<(Owner, D), V> = BTreeMap::new();
        for ((owner, detail), value) in rows {
            if admitted.contains(&owner) {
                out.entry((owner, detail)).or_default().merge(&value);
                continue;
            }
            let key = (overflow_of(&owner), detail);
            if !out.contains_key(&key) {
                // A series the overflow owner did not have yet.
                self.used = self.used.saturating_add(cost(&key.1, &value));
            }
            out.entry(key).or_default().merge(&value);
        }
        out
    }

    /// One collection of rows keyed by owner alone (a probe whose series are per
    /// executable): `admit` between `begin` and `finish`.
    pub fn admit_owners<V: Accumulate>(
        &mut self,
        rows: impl IntoIterator<Item = (Owner, V)>,
        overflow_of: impl Fn(&Owner) -> Owner,
        cost: impl Fn(&V) -> usize,
    ) -> BTreeMap<Owner, V> {
        let mut keyed: BTreeMap<(Owner, ()), V> = BTreeMap::new();
        for (owner, value) in rows {
            keyed.entry((owner, ())).or_default().merge(&value);
        }
        self.begin();
        let admitted = self.admit(keyed, overflow_of, |_, value| cost(value));
        self.finish();
        admitted
            .into_iter()
            .map(|((owner, ()), value)| (owner, value))
            .collect()
    }

    /// Ends a collection: what it exported counts against the budget, and the
    /// decisions about owners no longer exported are forgotten.
    pub fn finish(&mut self) {
        let seen = &self.seen;
        self.decisions.retain(|owner, _| seen.contains(owner));
        self.shared.borrow_mut().used.insert(self.probe, self.used);
    }

    /// The budget sent this owner's series to overflow.
    pub fn overflowed(&self, owner: &Owner) -> bool {
        self.decisions.get(owner) == Some(&false)
    }

    /// Owners sent to overflow because the budget was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// This probe's samples at its last collection, against the agent-wide budget.
    pub fn fill(&self) -> MapFill {
        let shared = self.shared.borrow();
        MapFill {
            map: "series_budget",
            entries: shared.used.get(self.probe).copied().unwrap_or(0) as u64,
            capacity: shared.limit as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Workload;

    fn owner(pid: u32) -> Owner {
        Owner::new(Some(pid), format!("p{pid}"), Workload::default())
    }

    fn rows(owners: &[(u32, u64)]) -> BTreeMap<(Owner, u32), u64> {
        let mut rows = BTreeMap::new();
        for (pid, count) in owners {
            // Two series per owner.
            rows.insert((owner(*pid), 1), *count);
            rows.insert((owner(*pid), 2), *count);
        }
        rows
    }

    fn over(_: &Owner) -> Owner {
        Owner::overflow(None)
    }

    /// One collection of `probe`: the series it exports of `input`, each owner's series
    /// costing one sample.
    fn collect(
        probe: &mut ProbeBudget,
        input: BTreeMap<(Owner, u32), u64>,
    ) -> BTreeMap<(Owner, u32), u64> {
        probe.begin();
        let out = probe.admit(input, over, |_, _| 1);
        probe.finish();
        out
    }

    fn total(rows: &BTreeMap<(Owner, u32), u64>) -> u64 {
        rows.values().sum()
    }

    #[test]
    fn owners_beyond_the_budget_fold_into_overflow_with_exact_totals() {
        let budget = SeriesBudget::new(4);
        let mut probe = budget.for_probe("p");
        let out = collect(&mut probe, rows(&[(1, 10), (2, 20), (3, 30)]));
        assert_eq!(out[&(owner(1), 1)], 10);
        assert_eq!(out[&(owner(2), 2)], 20);
        assert_eq!(out[&(Owner::overflow(None), 1)], 30);
        assert!(!out.contains_key(&(owner(3), 1)));
        assert_eq!(total(&out), 120, "totals stay exact");
        assert!(probe.overflowed(&owner(3)));
        assert_eq!(probe.refused(), 1);
        assert_eq!(probe.fill().entries, 6, "4 admitted and 2 overflow series");
    }

    #[test]
    fn decisions_hold_while_the_owner_is_exported() {
        let budget = SeriesBudget::new(4);
        let mut probe = budget.for_probe("p");
        collect(&mut probe, rows(&[(1, 1), (2, 1), (3, 1)]));
        // Owner 1 is gone, yet owner 3 stays in overflow while it is exported.
        let out = collect(&mut probe, rows(&[(2, 2), (3, 2)]));
        assert!(out.contains_key(&(owner(2), 1)));
        assert!(out.contains_key(&(Owner::overflow(None), 1)));
        assert!(!out.contains_key(&(owner(3), 1)));
        // A newcomer takes the room owner 1 left.
        let out = collect(&mut probe, rows(&[(2, 3), (3, 3), (4, 1)]));
        assert!(out.contains_key(&(owner(4), 1)));
        assert!(!out.contains_key(&(owner(3), 1)));
    }

    #[test]
    fn an_admitted_owner_keeps_its_series_as_they_grow() {
        let budget = SeriesBudget::new(2);
        let mut probe = budget.for_probe("p");
        collect(&mut probe, rows(&[(1, 1)]));
        let mut grown = rows(&[(1, 2)]);
        grown.insert((owner(1), 3), 1);
        let out = collect(&mut probe, grown);
        assert_eq!(out.len(), 3, "no series of owner 1 moves");
        assert_eq!(probe.fill().entries, 3);
    }

    #[test]
    fn the_budget_is_shared_by_every_probe() {
        let budget = SeriesBudget::new(4);
        let mut first = budget.for_probe("first");
        let mut second = budget.for_probe("second");
        collect(&mut first, rows(&[(1, 1)]));
        let out = collect(&mut second, rows(&[(2, 1), (3, 1)]));
        assert!(out.contains_key(&(owner(2), 1)));
        assert!(second.overflowed(&owner(3)));
    }

    #[test]
    fn overflow_series_are_always_exported() {
        let budget = SeriesBudget::new(0);
        let mut probe = budget.for_probe("p");
        let mut input = BTreeMap::new();
        input.insert((Owner::overflow(None), 1u32), 5u64);
        let out = collect(&mut probe, input);
        assert_eq!(out[&(Owner::overflow(None), 1)], 5);
        assert_eq!(probe.refused(), 0);
    }

    #[test]
    fn a_probe_keeps_its_share_when_another_filled_the_rest() {
        let budget = SeriesBudget::new(8);
        let mut busy = budget.for_probe("busy");
        let mut quiet = budget.for_probe("quiet");
        // Two probes: each may always fill 2; the busy one takes what the quiet one's
        // share leaves, 6.
        let out = collect(&mut busy, rows(&[(1, 1), (2, 1), (3, 1), (4, 1)]));
        assert!(busy.overflowed(&owner(4)));
        assert_eq!(out.len(), 8, "6 admitted and 2 overflow series");
        let out = collect(&mut quiet, rows(&[(5, 1), (6, 1)]));
        assert!(out.contains_key(&(owner(5), 1)), "its share is its own");
        assert!(quiet.overflowed(&owner(6)));
    }
}
