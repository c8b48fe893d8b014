//! Series slots of the kernel framer: which series each slot counts, and what the
//! kernel counted in it since it was last read.
//!
//! The kernel counts a framed exchange in the slot its series key (process, method,
//! status, path hash, server) maps to: its duration by native bucket, its body sizes in
//! classes of the configured bounds.
//! A key with no slot yet sends its exchange to user space instead, which frames the
//! route from the request line, counts the exchange, and installs the key here: from
//! then on, the kernel counts that key alone. Several keys (paths of one route) may share
//! a slot.

use std::collections::HashMap;
use std::hash::Hash;

use libbpf_rs::{MapCore, MapFlags};

use crate::model::histogram::{bucket_upper, LogLinearHistogram, BUCKETS};
use crate::model::native::DurationHistogram;

/// Histogram classes per slot (`PSC_HTTP_CLASSES`).
pub const CLASSES: usize = 32;

/// The class of each log-linear bucket for `bounds` (ascending): the first bound the
/// whole bucket lies under, as `LogLinearHistogram::to_classic` counts it, or
/// `bounds.len()` for +Inf.
pub fn classes(bounds: &[u64]) -> [u8; BUCKETS] {
    let mut out = [0u8; BUCKETS];
    for (idx, class) in out.iter_mut().enumerate() {
        let upper = bucket_upper(idx);
        let first = bounds
            .iter()
            .position(|bound| upper <= *bound)
            .unwrap_or(bounds.len());
        *class = first.min(CLASSES - 1) as u8;
    }
    out
}

/// For each class, a log-linear bucket that `to_classic` counts in that class and no
/// lower one: where user space puts the kernel's counts of the class.
fn representatives(classes: &[u8; BUCKETS]) -> [usize; CLASSES] {
    let mut out = [BUCKETS - 1; CLASSES];
    for (idx, class) in classes.iter().enumerate() {
        out[*class as usize] = idx;
    }
    out
}

/// One histogram of a slot, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCounts {
    pub sum: u64,
    pub counts: [u64; CLASSES],
}

impl Default for ClassCounts {
    fn default() -> Self {
        ClassCounts {
            sum: 0,
            counts: [0; CLASSES],
        }
    }
}

impl ClassCounts {
    fn add(&mut self, sum: u64, counts: &[u64]) {
        self.sum = self.sum.wrapping_add(sum);
        for (mine, theirs) in self.counts.iter_mut().zip(counts) {
            *mine = mine.wrapping_add(*theirs);
        }
    }

    /// What was counted since `before`, placed on the representatives' buckets.
    fn since(&self, before: &ClassCounts, representatives: &[usize; CLASSES]) -> LogLinearHistogram {
        let mut hist = LogLinearHistogram::default();
        for (class, (now, then)) in self.counts.iter().zip(&before.counts).enumerate() {
            hist.buckets[representatives[class]] += now.wrapping_sub(*then);
        }
        hist.sum = self.sum.wrapping_sub(before.sum);
        hist
    }
}

/// What one CPU counted in a slot (`psc_http_stats`): the durations' sum, and the body
/// sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounts {
    pub duration_sum: u64,
    pub request_body: ClassCounts,
    pub response_body: ClassCounts,
}

/// A slot's three histograms: the durations from the slot's shared native buckets and
/// the CPUs' sums, the body sizes summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotCounts {
    pub duration: DurationHistogram,
    pub request_body: ClassCounts,
    pub response_body: ClassCounts,
}

impl SlotCounts {
    /// A slot's counts from its CPUs' values and its native duration buckets.
    pub fn of(cpus: &[CpuCounts], duration_buckets: &[u64]) -> SlotCounts {
        let mut total = SlotCounts {
            duration: DurationHistogram::from_parts(duration_buckets, 0),
            ..SlotCounts::default()
        };
        for cpu in cpus {
            total.duration.sum = total.duration.sum.wrapping_add(cpu.duration_sum);
            total.request_body.add(cpu.request_body.sum, &cpu.request_body.counts);
            total.response_body.add(cpu.response_body.sum, &cpu.response_body.counts);
        }
        total
    }
}

/// What a slot counted since it was last read: duration (ns), request and response
/// body sizes (bytes).
pub struct Delta {
    pub duration: DurationHistogram,
    pub request_body: LogLinearHistogram,
    pub response_body: LogLinearHistogram,
}

impl Delta {
    pub fn count(&self) -> u64 {
        self.duration.count()
    }
}

struct Slot<S> {
    series: S,
    seen: SlotCounts,
}

/// Why a key was not given a slot: its exchanges keep coming one by one, counted exactly,
/// at a record each.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every slot counts a series already.
    SlotsFull,
    /// The kernel's key map is full.
    KeysFull,
}

/// The slots of series `S`.
pub struct SlotTable<S> {
    slots: Vec<Option<Slot<S>>>,
    by_series: HashMap<S, u32>,
    free: Vec<u32>,
    max_keys: usize,
    /// The kernel keys installed, with their slots.
    keys: HashMap<Vec<u8>, u32>,
    body_representatives: [usize; CLASSES],
    /// Keys not installed, by cause.
    pub refused: u64,
}

impl<S: Clone + Eq + Hash> SlotTable<S> {
    /// `slots` slots, `max_keys` kernel keys, with the body class table the kernel was
    /// given.
    pub fn new(slots: u32, max_keys: u32, body: &[u8; BUCKETS]) -> Self {
        SlotTable {
            slots: (0..slots).map(|_| None).collect(),
            by_series: HashMap::new(),
            free: (0..slots).rev().collect(),
            max_keys: max_keys as usize,
            keys: HashMap::new(),
            body_representatives: representatives(body),
            refused: 0,
        }
    }

    /// Kernel keys installed.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Maps kernel key `key` to the slot of `series`, taking a free slot for a new series.
    pub fn install<M: MapCore>(&mut self, keys_map: &M, key: &[u8], series: &S) -> Result<(), Refused> {
        // Exchanges of a key sent before its slot was installed find it installed.
        if self.keys.contains_key(key) {
            return Ok(());
        }
        if self.keys.len() >= self.max_keys {
            self.refused += 1;
            return Err(Refused::KeysFull);
        }
        let slot = match self.by_series.get(series) {
            Some(slot) => *slot,
            None => {
                let Some(slot) = self.free.pop() else {
                    self.refused += 1;
                    return Err(Refused::SlotsFull);
                };
                self.by_series.insert(series.clone(), slot);
                self.slots[slot as usize] = Some(Slot {
                    series: series.clone(),
                    seen: SlotCounts::default(),
                });
                slot
            }
        };
        if keys_map
            .update(key, &slot.to_ne_bytes(), MapFlags::ANY)
            .is_err()
        {
            self.refused += 1;
            return Err(Refused::KeysFull);
        }
        self.keys.insert(key.to_vec(), slot);
        Ok(())
    }

    /// What every slot counted since the last call, with its series. `read` gives a
    /// slot's counts summed over CPUs.
    pub fn deltas(&mut self, mut read: impl FnMut(u32) -> Option<SlotCounts>) -> Vec<(S, Delta)> {
        let mut out = Vec::new();
        for (idx, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else {
                continue;
            };
            let Some(now) = read(idx as u32) else {
                continue;
            };
            let delta = Delta {
                duration: since(&now.duration, &slot.seen.duration),
                request_body: now
                    .request_body
                    .since(&slot.seen.request_body, &self.body_representatives),
                response_body: now
                    .response_body
                    .since(&slot.seen.response_body, &self.body_representatives),
            };
            slot.seen = now;
            if delta.count() > 0 {
                out.push((slot.series.clone(), delta));
            }
        }
        out
    }

    /// Frees the slots of the series `gone` says are gone: their keys leave the kernel
    /// first, so that nothing counts in a slot between its last read and its reuse by
    /// another series. Returns the slots freed, whose counts the caller zeroes.
    pub fn release<M: MapCore>(&mut self, keys_map: &M, mut gone: impl FnMut(&S) -> bool) -> Vec<u32> {
        let mut freed = Vec::new();
        for (idx, entry) in self.slots.iter_mut().enumerate() {
            let Some(slot) = entry else {
                continue;
            };
            if !gone(&slot.series) {
                continue;
            }
            self.by_series.remove(&slot.series);
            *entry = None;
            freed.push(idx as u32);
        }
        if !freed.is_empty() {
            self.keys.retain(|key, slot| {
                let keep = !freed.contains(slot);
                if !keep {
                    let _ = keys_map.delete(key);
                }
                keep
            });
        }
        self.free.extend(freed.iter().copied());
        freed
    }

}

/// The durations counted between `before` and `now`.
fn since(now: &DurationHistogram, before: &DurationHistogram) -> DurationHistogram {
    let mut delta = now.clone();
    for (count, then) in delta.slots.iter_mut().zip(&before.slots) {
        *count = count.wrapping_sub(*then);
    }
    delta.sum = now.sum.wrapping_sub(before.sum);
    delta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::histogram::bucket_index;

    #[test]
    fn every_value_lands_in_the_class_to_classic_counts_it_in() {
        let bounds = [5_000_000u64, 10_000_000, 25_000_000, 1_000_000_000];
        let table = classes(&bounds);
        let reps = representatives(&table);
        for v in [0u64, 1, 4_999_999, 5_000_000, 5_000_001, 9_000_000, 30_000_000, u64::MAX / 2] {
            let class = table[bucket_index(v)] as usize;
            let mut direct = LogLinearHistogram::default();
            direct.record(v);
            let mut placed = LogLinearHistogram::default();
            placed.buckets[reps[class]] += 1;
            let exported = [5e-3, 1e-2, 2.5e-2, 1.0];
            assert_eq!(
                direct.to_classic(&bounds, &exported, 1e-9).cumulative,
                placed.to_classic(&bounds, &exported, 1e-9).cumulative,
                "value {v}"
            );
        }
    }

    #[test]
    fn deltas_count_what_was_added_since_the_last_read() {
        let table = classes(&[64, 1024]);
        let mut slots: SlotTable<&str> = SlotTable::new(2, 4, &table);
        slots.slots[0] = Some(Slot {
            series: "a",
            seen: SlotCounts::default(),
        });
        let cpus = [
            CpuCounts {
                duration_sum: 100,
                ..CpuCounts::default()
            },
            CpuCounts {
                duration_sum: 200,
                ..CpuCounts::default()
            },
        ];
        let mut buckets = vec![0u64; crate::model::native::KERNEL_SLOTS];
        buckets[7] = 3;
        let first = slots.deltas(|_| Some(SlotCounts::of(&cpus, &buckets)));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.duration.count(), 3);
        assert_eq!(first[0].1.duration.sum, 300);
        assert!(
            slots
                .deltas(|_| Some(SlotCounts::of(&cpus, &buckets)))
                .is_empty(),
            "nothing new"
        );
        buckets[7] = 5;
        let next = slots.deltas(|_| Some(SlotCounts::of(&cpus, &buckets)));
        assert_eq!(next[0].1.duration.count(), 2);
        assert_eq!(next[0].1.duration.slots[7], 2);
        assert_eq!(next[0].1.duration.sum, 0);
    }
}
