//! Series slots of the kernel framer: which series each slot counts, and what the
//! kernel counted in it since it was last read.
//!
//! The kernel counts a framed exchange in the slot its series key (process, method,
//! status, path hash, server) maps to: its duration and body sizes by native bucket.
//! A key with no slot yet sends its exchange to user space instead, which frames the
//! route from the request line, counts the exchange, and installs the key here: from
//! then on, the kernel counts that key alone. Several keys (paths of one route) may share
//! a slot.

use std::collections::HashMap;
use std::hash::Hash;

use libbpf_rs::{MapCore, MapFlags};

use crate::model::native::{KernelHistogram, Unit};

/// What one CPU counted in a slot (`psc_http_stats`): the sums of the durations and
/// body sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounts {
    pub duration_sum: u64,
    pub request_body_sum: u64,
    pub response_body_sum: u64,
}

/// A slot's three histograms: the buckets it shares across CPUs (`psc_http_native`)
/// with the CPUs' sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCounts {
    pub duration: KernelHistogram,
    pub request_body: KernelHistogram,
    pub response_body: KernelHistogram,
}

impl Default for SlotCounts {
    fn default() -> Self {
        SlotCounts {
            duration: KernelHistogram::new(Unit::Nanoseconds),
            request_body: KernelHistogram::new(Unit::Bytes),
            response_body: KernelHistogram::new(Unit::Bytes),
        }
    }
}

impl SlotCounts {
    /// A slot's counts from its CPUs' sums and its buckets: durations, request bodies,
    /// response bodies.
    pub fn of(cpus: &[CpuCounts], buckets: [&[u64]; 3]) -> SlotCounts {
        let sum = |part: fn(&CpuCounts) -> u64| {
            cpus.iter()
                .fold(0u64, |total, cpu| total.wrapping_add(part(cpu)))
        };
        let [duration, request_body, response_body] = buckets;
        SlotCounts {
            duration: KernelHistogram::from_parts_in(
                Unit::Nanoseconds,
                duration,
                sum(|c| c.duration_sum),
            ),
            request_body: KernelHistogram::from_parts_in(
                Unit::Bytes,
                request_body,
                sum(|c| c.request_body_sum),
            ),
            response_body: KernelHistogram::from_parts_in(
                Unit::Bytes,
                response_body,
                sum(|c| c.response_body_sum),
            ),
        }
    }
}

/// What a slot counted since it was last read: duration (ns), request and response
/// body sizes (bytes).
pub struct Delta {
    pub duration: KernelHistogram,
    pub request_body: KernelHistogram,
    pub response_body: KernelHistogram,
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
    /// Keys not installed, by cause.
    pub refused: u64,
}

impl<S: Clone + Eq + Hash> SlotTable<S> {
    /// `slots` slots, `max_keys` kernel keys.
    pub fn new(slots: u32, max_keys: u32) -> Self {
        SlotTable {
            slots: (0..slots).map(|_| None).collect(),
            by_series: HashMap::new(),
            free: (0..slots).rev().collect(),
            max_keys: max_keys as usize,
            keys: HashMap::new(),
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
                duration: now.duration.since(&slot.seen.duration),
                request_body: now.request_body.since(&slot.seen.request_body),
                response_body: now.response_body.since(&slot.seen.response_body),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::native::KERNEL_SLOTS;

    #[test]
    fn deltas_count_what_was_added_since_the_last_read() {
        let mut slots: SlotTable<&str> = SlotTable::new(2, 4);
        slots.slots[0] = Some(Slot {
            series: "a",
            seen: SlotCounts::default(),
        });
        let cpus = [
            CpuCounts {
                duration_sum: 100,
                request_body_sum: 10,
                response_body_sum: 0,
            },
            CpuCounts {
                duration_sum: 200,
                request_body_sum: 5,
                response_body_sum: 7,
            },
        ];
        let mut durations = vec![0u64; KERNEL_SLOTS];
        let mut bodies = vec![0u64; KERNEL_SLOTS];
        durations[7] = 3;
        bodies[2] = 3;
        let read = |d: &[u64], b: &[u64]| SlotCounts::of(&cpus, [d, b, b]);
        let first = slots.deltas(|_| Some(read(&durations, &bodies)));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.duration.count(), 3);
        assert_eq!(first[0].1.duration.sum, 300);
        assert_eq!(first[0].1.request_body.sum, 15);
        assert_eq!(first[0].1.response_body.unit, Unit::Bytes);
        assert_eq!(first[0].1.response_body.sum, 7);
        assert!(
            slots.deltas(|_| Some(read(&durations, &bodies))).is_empty(),
            "nothing new"
        );
        durations[7] = 5;
        bodies[2] = 5;
        let next = slots.deltas(|_| Some(read(&durations, &bodies)));
        assert_eq!(next[0].1.duration.count(), 2);
        assert_eq!(next[0].1.duration.slot(7), 2);
        assert_eq!(next[0].1.request_body.slot(2), 2);
        assert_eq!(next[0].1.duration.sum, 0);
    }
}
