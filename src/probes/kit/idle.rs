//! Keys idle in a capped kernel map leave it, so that its slots serve new keys; what
//! they counted stays in user space, and a key that comes back adds to it.
//!
//! Names are free for anyone to mint (exec, prctl), so a map keyed by them would fill
//! with names long gone. The policy here is pure: the probe reads its map, hands the
//! rows over, and deletes what `retire_idle` asks it to take.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::model::native::KernelHistogram;

/// What a kernel entry counts: values that add up.
pub trait Accumulate: Clone + Default + PartialEq {
    fn merge(&mut self, other: &Self);
}

impl Accumulate for u64 {
    fn merge(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }
}

impl Accumulate for KernelHistogram {
    fn merge(&mut self, other: &Self) {
        KernelHistogram::merge(self, other);
    }
}

/// One entry of the kernel's map as read: its raw key, the key it is exported under,
/// and what it counts.
pub struct Row<K, V> {
    pub raw: Vec<u8>,
    pub key: K,
    pub value: V,
}

pub struct IdleKeys<K, V> {
    /// Each kernel entry's value at the last read, and since when it has not moved.
    last_seen: HashMap<Vec<u8>, (V, Instant)>,
    /// What retired keys counted, at most `max_retired` keys.
    retired: BTreeMap<K, V>,
    /// What retired keys beyond `max_retired` counted, shown in the overflow series.
    retired_overflow: V,
    idle_ttl: Duration,
    max_retired: usize,
    expired: u64,
}

impl<K: Ord + Clone, V: Accumulate> IdleKeys<K, V> {
    pub fn new(idle_ttl: Duration, max_retired: usize) -> Self {
        IdleKeys {
            last_seen: HashMap::new(),
            retired: BTreeMap::new(),
            retired_overflow: V::default(),
            idle_ttl,
            max_retired,
            expired: 0,
        }
    }

    /// The series to export: the kernel's rows and the retired keys, merged by key,
    /// and the retired overflow under `overflow` when it holds anything.
    pub fn merged(&self, rows: &[Row<K, V>], overflow: K) -> BTreeMap<K, V> {
        let mut series = self.retired.clone();
        for row in rows {
            series.entry(row.key.clone()).or_default().merge(&row.value);
        }
        if self.retired_overflow != V::default() {
            series
                .entry(overflow)
                .or_default()
                .merge(&self.retired_overflow);
        }
        series
    }

    /// Retires the rows whose value has not moved for the idle TTL. `take` reads and
    /// deletes a kernel entry in one step, so that what it counted meanwhile is kept.
    pub fn retire_idle(
        &mut self,
        now: Instant,
        rows: &[Row<K, V>],
        mut take: impl FnMut(&[u8]) -> Option<V>,
    ) {
        let mut live = HashMap::with_capacity(rows.len());
        for row in rows {
            let since = match self.last_seen.get(&row.raw) {
                Some((before, since)) if *before == row.value => *since,
                _ => now,
            };
            if now.saturating_duration_since(since) < self.idle_ttl {
                live.insert(row.raw.clone(), (row.value.clone(), since));
                continue;
            }
            let Some(taken) = take(&row.raw) else {
                continue;
            };
            self.expired += 1;
            if self.retired.contains_key(&row.key) || self.retired.len() < self.max_retired {
                self.retired
                    .entry(row.key.clone())
                    .or_default()
                    .merge(&taken);
            } else {
                self.retired_overflow.merge(&taken);
            }
        }
        self.last_seen = live;
    }

    /// Kernel entries retired so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Count(u64);

    impl Accumulate for Count {
        fn merge(&mut self, other: &Self) {
            self.0 += other.0;
        }
    }

    fn row(raw: u8, key: &str, value: u64) -> Row<String, Count> {
        Row {
            raw: vec![raw],
            key: key.to_string(),
            value: Count(value),
        }
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_key_idle_for_the_ttl_is_taken_and_its_counts_stay() {
        let mut keys = IdleKeys::new(TTL, 8);
        let start = Instant::now();
        let rows = [row(1, "a", 5), row(2, "b", 1)];
        keys.retire_idle(start, &rows, |_| panic!("nothing is idle yet"));
        let rows = [row(1, "a", 5), row(2, "b", 2)];
        let mut taken = Vec::new();
        keys.retire_idle(start + TTL, &rows, |raw| {
            taken.push(raw.to_vec());
            Some(Count(5))
        });
        assert_eq!(taken, [vec![1]]);
        assert_eq!(keys.expired(), 1);
        // The kernel no longer has `a`; its count is still exported.
        let series = keys.merged(&[row(2, "b", 2)], "over".into());
        assert_eq!(series["a"], Count(5));
        assert_eq!(series["b"], Count(2));
    }

    #[test]
    fn a_key_that_comes_back_adds_to_what_it_counted() {
        let mut keys = IdleKeys::new(TTL, 8);
        let start = Instant::now();
        keys.retire_idle(start, &[row(1, "a", 3)], |_| None);
        keys.retire_idle(start + TTL, &[row(1, "a", 3)], |_| Some(Count(4)));
        let series = keys.merged(&[row(1, "a", 1)], "over".into());
        assert_eq!(series["a"], Count(5));
    }

    #[test]
    fn beyond_the_cap_retired_keys_fold_into_the_overflow_series() {
        let mut keys = IdleKeys::new(Duration::ZERO, 1);
        let rows = [row(1, "a", 1), row(2, "b", 2), row(3, "c", 3)];
        keys.retire_idle(Instant::now(), &rows, |raw| Some(Count(u64::from(raw[0]))));
        let series = keys.merged(&[], "over".into());
        assert_eq!(series["a"], Count(1));
        assert_eq!(series["over"], Count(5));
        assert!(!series.contains_key("b"));
        let total: u64 = series.values().map(|c| c.0).sum();
        assert_eq!(total, 6, "totals stay exact");
    }

    #[test]
    fn an_entry_already_gone_is_not_counted_as_retired() {
        let mut keys = IdleKeys::new(Duration::ZERO, 8);
        keys.retire_idle(Instant::now(), &[row(1, "a", 1)], |_| None);
        assert_eq!(keys.expired(), 0);
        assert!(keys.merged(&[], "over".into()).is_empty());
    }
}
