//! What the tcp probe exports, decided without the kernel: peers within each process's
//! cap, where the series of exited processes fold, and what the series budget admits.
//! `mod.rs` reads the kernel and hands the rows over.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Stats;
use crate::model::OVERFLOW;
use crate::probes::kit::budget::{histogram_samples, COUNTER_SAMPLES};
use crate::probes::kit::idle::Accumulate;
use crate::probes::kit::lifecycle::{add_row, FirstSeen, Owner, ProcessSeries};

/// The other end of a process's series: direction, address, and port (outbound: the
/// peer's; inbound: the local listening port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub inbound: bool,
    pub address: String,
    pub port: u16,
}

impl Peer {
    /// The series a process's peers beyond its cap fold into.
    fn overflow(inbound: bool) -> Peer {
        Peer {
            inbound,
            address: OVERFLOW.into(),
            port: 0,
        }
    }

    fn is_overflow(&self) -> bool {
        self.address == OVERFLOW
    }
}

pub type Rows = BTreeMap<(Owner, Peer), Stats>;

/// A series as read from the kernel, before the caps and the budget.
pub type LiveRow = (Owner, Peer, Stats);

/// Failure reasons an outbound series reports.
const FAILURE_SERIES: usize = super::FAILURE_REASONS.len();

pub struct Policy {
    max_peers: usize,
    /// The peers each owner reports under their own labels: once kept, a peer stays
    /// kept while the process lives, so a new peer never pushes an old one into the
    /// overflow peer (its counters would jump from one series to the other).
    kept_peers: HashMap<Owner, HashSet<Peer>>,
    peers_folded: u64,
    duration_bounds: usize,
    rtt_bounds: usize,
    series: ProcessSeries<Peer, Stats>,
}

impl Policy {
    pub fn new(
        max_peers: usize,
        (duration_bounds, rtt_bounds): (usize, usize),
        series: ProcessSeries<Peer, Stats>,
    ) -> Self {
        Policy {
            max_peers,
            kept_peers: HashMap::new(),
            peers_folded: 0,
            duration_bounds,
            rtt_bounds,
            series,
        }
    }

    /// Folds the series of a process gone for the TTL, with no connection left open,
    /// into the aggregate of its executable, within the cap of executables (beyond,
    /// the overflow series) and the peer cap (beyond, the executable's overflow peer).
    pub fn fold_exited(&mut self, owner: &Owner, rows: Vec<(Peer, Stats)>) {
        let max_peers = self.max_peers;
        self.series.fold_exited(owner, rows, |into, peer, aggregates| {
            if peer.is_overflow() || aggregates.contains_key(&(into.clone(), peer.clone())) {
                return peer;
            }
            let peers = aggregates
                .keys()
                .filter(|(owner, peer)| owner == into && !peer.is_overflow())
                .count();
            if peers >= max_peers {
                Peer::overflow(peer.inbound)
            } else {
                peer
            }
        });
    }

    /// Forgets the peers a process kept, once it is gone and no live process took its
    /// pid over.
    pub fn forget(&mut self, owner: &Owner) {
        self.kept_peers.remove(owner);
    }

    /// The series to export: the live rows with peers within each process's cap, the
    /// aggregates and the kernel's overflow rows, under the series budget.
    pub fn export(&mut self, mut live: Vec<LiveRow>, first_seen: &FirstSeen) -> Rows {
        let mut rows = Rows::new();
        let mut folded_now = 0;
        live.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (owner, mut peer, stats) in live {
            if !peer.is_overflow() && !owner.is_overflow() {
                let kept = self.kept_peers.entry(owner.clone()).or_default();
                if !kept.contains(&peer) {
                    if kept.len() < self.max_peers {
                        kept.insert(peer.clone());
                    } else {
                        peer = Peer::overflow(peer.inbound);
                        folded_now += 1;
                    }
                }
            }
            add_row(&mut rows, owner, peer, &stats);
        }
        // Peers over the cap at this collection; kept monotonic, as counters are.
        self.peers_folded = self.peers_folded.max(folded_now);
        let (duration, rtt) = (
            histogram_samples(self.duration_bounds),
            histogram_samples(self.rtt_bounds),
        );
        let cost = |peer: &Peer, _: &Stats| {
            if peer.inbound {
                inbound_samples(rtt)
            } else {
                outbound_samples(duration, rtt)
            }
        };
        self.series.export(rows, first_seen, cost)
    }

    pub fn peers_folded(&self) -> u64 {
        self.peers_folded
    }

    pub fn series(&self) -> &ProcessSeries<Peer, Stats> {
        &self.series
    }
}

/// Samples of an inbound series: opened, active, sent, received, retransmits, RTTs.
fn inbound_samples(rtt: usize) -> usize {
    4 * COUNTER_SAMPLES + 1 + rtt
}

/// Samples of an outbound series: an inbound one's, plus a failure counter per reason
/// and connect durations.
fn outbound_samples(duration: usize, rtt: usize) -> usize {
    inbound_samples(rtt) + FAILURE_SERIES * COUNTER_SAMPLES + duration
}

impl Accumulate for Stats {
    fn merge(&mut self, other: &Self) {
        Stats::merge(self, other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{Workload, Workloads};
    use crate::probes::kit::budget::SeriesBudget;

    fn policy(max_peers: usize, max_exited: usize, budget: usize) -> Policy {
        let budget = SeriesBudget::new(budget).for_probe("tcp");
        let series = ProcessSeries::new(Workloads::default(), max_exited, budget);
        Policy::new(max_peers, (10, 10), series)
    }

    fn process(pid: u32, name: &str) -> Owner {
        Owner::new(Some(pid), name, Workload::default())
    }

    fn peer(address: &str) -> Peer {
        Peer {
            inbound: false,
            address: address.into(),
            port: 80,
        }
    }

    fn opened(n: u64) -> Stats {
        Stats {
            opened: n,
            ..Default::default()
        }
    }

    fn total(rows: &Rows) -> u64 {
        rows.values().map(|s| s.opened).sum()
    }

    #[test]
    fn peers_beyond_the_cap_fold_into_the_overflow_peer_and_kept_ones_stay() {
        let mut policy = policy(1, 8, usize::MAX);
        let a = process(1, "a");
        let live = vec![(a.clone(), peer("10.0.0.1"), opened(1))];
        policy.export(live, &HashMap::new());
        // A new peer sorts first, yet the kept one stays under its own labels.
        let live = vec![
            (a.clone(), peer("10.0.0.1"), opened(2)),
            (a.clone(), peer("10.0.0.0"), opened(5)),
        ];
        let rows = policy.export(live, &HashMap::new());
        assert_eq!(rows[&(a.clone(), peer("10.0.0.1"))].opened, 2);
        assert_eq!(rows[&(a.clone(), Peer::overflow(false))].opened, 5);
        assert_eq!(policy.peers_folded(), 1);
        assert_eq!(total(&rows), 7);
    }

    #[test]
    fn exited_processes_fold_per_executable_within_both_caps() {
        let mut policy = policy(1, 1, usize::MAX);
        policy.fold_exited(
            &process(1, "a"),
            vec![(peer("10.0.0.1"), opened(1)), (peer("10.0.0.2"), opened(2))],
        );
        policy.fold_exited(&process(2, "b"), vec![(peer("10.0.0.1"), opened(4))]);
        let rows = policy.export(Vec::new(), &HashMap::new());
        let a = process(1, "a").executable();
        assert_eq!(rows[&(a.clone(), peer("10.0.0.1"))].opened, 1);
        assert_eq!(rows[&(a, Peer::overflow(false))].opened, 2);
        assert_eq!(rows[&(Owner::overflow(None), peer("10.0.0.1"))].opened, 4);
        assert_eq!(policy.series().exited_refused(), 1);
        assert_eq!(policy.series().expired_series(), 3);
        assert_eq!(total(&rows), 7);
    }

    #[test]
    fn the_budget_keeps_totals_and_a_process_in_overflow_folds_there() {
        // Room for one series.
        let mut policy = policy(8, 8, outbound_samples(14, 14));
        let live = vec![
            (process(1, "a"), peer("10.0.0.1"), opened(1)),
            (process(2, "b"), peer("10.0.0.1"), opened(3)),
        ];
        let rows = policy.export(live, &HashMap::new());
        assert_eq!(rows[&(Owner::overflow(None), peer("10.0.0.1"))].opened, 3);
        policy.fold_exited(&process(2, "b"), vec![(peer("10.0.0.1"), opened(3))]);
        let live = vec![(process(1, "a"), peer("10.0.0.1"), opened(1))];
        let rows = policy.export(live, &HashMap::new());
        assert_eq!(rows[&(Owner::overflow(None), peer("10.0.0.1"))].opened, 3);
        assert_eq!(total(&rows), 4);
    }
}
