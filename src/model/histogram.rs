//! The user-space half of the kernel's log-linear buckets (`bpf/loglinear.h`) and their
//! conversion into classic Prometheus histograms with configured `le` boundaries.
//!
//! Kernel bucket `i` covers the integer range `[lower(i), upper(i)]`. A value `v` is counted
//! under a boundary `le` exactly when `v <= le`, provided no kernel bucket straddles `le`.
//! When one does (its range holds values on both sides of `le`), its values are all counted
//! at the next boundary up: a value is never reported below its true bucket, and it is
//! reported one boundary too high only when it lies within a quarter (the widest relative
//! width of a kernel bucket) below a boundary. `_count` and `_sum` are always exact.

use super::native::{DurationHistogram, NativeBuckets};

/// `PSC_LOGLIN_SUB_BITS` of `bpf/loglinear.h`.
pub const SUB_BITS: u32 = super::layout::LOGLIN_SUB_BITS;
/// `PSC_LOGLIN_BUCKETS` of `bpf/loglinear.h`.
pub const BUCKETS: usize = super::layout::LOGLIN_BUCKETS;

const SUB: u64 = 1 << SUB_BITS;

/// The kernel's bucket function, for tests and for user-space recording.
pub fn bucket_index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    let idx = (((e - 1) << SUB_BITS) as u64 + sub) as usize;
    idx.min(BUCKETS - 1)
}

/// Smallest value that lands in bucket `idx`.
pub fn bucket_lower(idx: usize) -> u64 {
    if (idx as u64) < SUB {
        return idx as u64;
    }
    let e = (idx as u32 >> SUB_BITS) + 1;
    let sub = idx as u64 & (SUB - 1);
    (SUB + sub) << (e - SUB_BITS)
}

/// Largest value that lands in bucket `idx`; the last bucket takes everything above.
pub fn bucket_upper(idx: usize) -> u64 {
    if idx + 1 >= BUCKETS {
        return u64::MAX;
    }
    bucket_lower(idx + 1) - 1
}

/// A histogram as the kernel keeps it: counts per log-linear bucket and the exact sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLinearHistogram {
    pub buckets: Vec<u64>,
    pub sum: u64,
}

impl Default for LogLinearHistogram {
    fn default() -> Self {
        LogLinearHistogram {
            buckets: vec![0; BUCKETS],
            sum: 0,
        }
    }
}

impl LogLinearHistogram {
    pub fn from_parts(buckets: &[u64], sum: u64) -> Self {
        let mut hist = LogLinearHistogram::default();
        for (slot, count) in hist.buckets.iter_mut().zip(buckets) {
            *slot = *count;
        }
        hist.sum = sum;
        hist
    }

    pub fn record(&mut self, v: u64) {
        self.buckets[bucket_index(v)] += 1;
        self.sum = self.sum.wrapping_add(v);
    }

    pub fn merge(&mut self, other: &LogLinearHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum = self.sum.wrapping_add(other.sum);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|c| *c == 0)
    }

    /// Converts to a classic histogram. `bounds` are upper bounds in the kernel's unit
    /// (ascending); `scale` turns that unit into the exported one (1e-9 for ns -> s).
    pub fn to_classic(
        &self,
        bounds: &[u64],
        exported_bounds: &[f64],
        scale: f64,
    ) -> ClassicHistogram {
        let mut cumulative = Vec::with_capacity(bounds.len());
        let mut idx = 0;
        let mut running = 0u64;
        for bound in bounds {
            while idx < BUCKETS && bucket_upper(idx) <= *bound {
                running += self.buckets[idx];
                idx += 1;
            }
            cumulative.push(running);
        }
        ClassicHistogram {
            bounds: exported_bounds.to_vec(),
            cumulative,
            count: self.count(),
            sum: self.sum as f64 * scale,
            native: None,
        }
    }
}

/// A Prometheus classic histogram: cumulative counts per `le` bound, without `+Inf`
/// (whose count is `count`); and, where the kernel counted by native buckets, those
/// too, for the exporters that serve native or exponential histograms.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicHistogram {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
    pub native: Option<NativeBuckets>,
}

/// Bucket bounds in seconds, as configured, with their nanosecond equivalents.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationBounds {
    pub seconds: Vec<f64>,
    pub nanos: Vec<u64>,
}

impl DurationBounds {
    pub fn new(seconds: &[f64]) -> Self {
        DurationBounds {
            seconds: seconds.to_vec(),
            nanos: seconds.iter().map(|s| (s * 1e9).round() as u64).collect(),
        }
    }

    pub fn classic(&self, hist: &LogLinearHistogram) -> ClassicHistogram {
        hist.to_classic(&self.nanos, &self.seconds, 1e-9)
    }

    /// The classic histogram of a kernel duration histogram, with its native buckets.
    pub fn classic_and_native(&self, hist: &DurationHistogram) -> ClassicHistogram {
        hist.to_classic(&self.nanos, &self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_line_without_gaps() {
        for idx in 0..BUCKETS - 1 {
            assert_eq!(bucket_upper(idx) + 1, bucket_lower(idx + 1), "bucket {idx}");
            assert!(bucket_lower(idx) <= bucket_upper(idx));
        }
        assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn every_boundary_value_lands_in_its_own_bucket() {
        for idx in 0..BUCKETS - 1 {
            assert_eq!(bucket_index(bucket_lower(idx)), idx, "lower of {idx}");
            assert_eq!(bucket_index(bucket_upper(idx)), idx, "upper of {idx}");
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact_and_first_sub_buckets_are_right() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(3), 3);
        assert_eq!(bucket_index(4), 4);
        assert_eq!(bucket_index(7), 7);
        assert_eq!(bucket_index(8), 8);
        assert_eq!(bucket_index(9), 8);
        assert_eq!(bucket_index(10), 9);
        assert_eq!((bucket_lower(9), bucket_upper(9)), (10, 11));
        // 1000 ns: highest bit 9, next two bits 11 -> [896, 1023].
        assert_eq!(bucket_index(1000), (8 << 2) + 3);
        assert_eq!((bucket_lower(35), bucket_upper(35)), (896, 1023));
    }

    #[test]
    fn relative_width_is_at_most_a_quarter() {
        for idx in 4..BUCKETS - 1 {
            let width = bucket_upper(idx) - bucket_lower(idx) + 1;
            assert!(width * 4 <= bucket_lower(idx), "bucket {idx}");
        }
    }

    #[test]
    fn value_equal_to_an_aligned_bound_is_counted_in_that_le_bucket() {
        // 1024 ns is where a kernel bucket starts, so 1023 is the upper end of one.
        let mut hist = LogLinearHistogram::default();
        hist.record(1023);
        hist.record(1024);
        let classic = hist.to_classic(&[1023, 1024, 2047], &[1.023, 1.024, 2.047], 1.0);
        assert_eq!(classic.cumulative, vec![1, 1, 2]);
        assert_eq!(classic.count, 2);
        assert_eq!(classic.sum, 2047.0);
    }

    #[test]
    fn straddled_bound_moves_values_up_never_down() {
        // 1000 lies inside [896, 1023]: 900 is reported at the next bound, not below its own.
        let mut hist = LogLinearHistogram::default();
        hist.record(900);
        hist.record(1500);
        let classic = hist.to_classic(&[1000, 2000], &[1000.0, 2000.0], 1.0);
        assert_eq!(classic.cumulative, vec![0, 2]);
        assert_eq!(classic.count, 2);
    }

    #[test]
    fn merge_adds_counts_and_sums() {
        let mut a = LogLinearHistogram::default();
        a.record(5);
        let mut b = LogLinearHistogram::default();
        b.record(5);
        b.record(100);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.sum, 110);
    }

    #[test]
    fn duration_bounds_convert_seconds_to_nanos() {
        let bounds = DurationBounds::new(&[0.000001, 0.5, 2.0]);
        assert_eq!(bounds.nanos, vec![1_000, 500_000_000, 2_000_000_000]);
    }
}
