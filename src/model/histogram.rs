//! Classic Prometheus histograms, as exporters read them, and the configured duration
//! bounds they are counted under (from the kernel's native buckets, `native.rs`).

use super::native::{KernelHistogram, NativeBuckets};

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

    /// The classic histogram of a kernel duration histogram, with its native buckets.
    pub fn classic_and_native(&self, hist: &KernelHistogram) -> ClassicHistogram {
        hist.to_classic(&self.nanos, &self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_bounds_convert_seconds_to_nanos() {
        let bounds = DurationBounds::new(&[0.000001, 0.5, 2.0]);
        assert_eq!(bounds.nanos, vec![1_000, 500_000_000, 2_000_000_000]);
    }
}
