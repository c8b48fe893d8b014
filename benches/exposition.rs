//! Scrape size and encode time of 10,000 series in each format `/metrics` serves: the
//! text format 0.0.4 (the baseline), OpenMetrics and protobuf, in the same run; and in
//! protobuf, histograms classic only, classic and native (as served), and native only.
//! Half the series are counters, half duration histograms with the default 12 classic
//! buckets, labelled as per-process syscall series are. Each histogram holds 100
//! durations spread evenly over the logarithms from 2 to 64 us (five powers of two).
//!
//! `cargo bench --bench exposition`

use std::hint::black_box;
use std::time::{Duration, Instant};

use periscope::export::prometheus::encode::{encode_bytes, Format};
use periscope::model::native::KernelHistogram;
use periscope::model::{Family, MetricKind, Value};

const SERIES: u32 = 10_000;
const ROUNDS: u32 = 50;

fn families() -> Vec<Family> {
    let bounds = vec![
        0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
        1.0,
    ];
    let nanos: Vec<u64> = bounds.iter().map(|s| (s * 1e9) as u64).collect();
    // A fixed pseudo-random sequence, so every run encodes the same histograms.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let labels = |n: u32| {
        vec![
            ("process_pid", (100_000 + n / 10).to_string()),
            ("process_executable_name", format!("worker-{}", n / 10)),
            (
                "syscall",
                ["read", "write", "openat", "close", "futex"][n as usize % 5].into(),
            ),
        ]
    };
    let mut counters = Family::new("syscalls", "Syscalls completed.", MetricKind::Counter);
    let mut histograms = Family::new(
        "syscall_duration_seconds",
        "Syscall latency.",
        MetricKind::Histogram,
    );
    for n in 0..SERIES / 2 {
        counters.push(labels(n), Value::Counter(f64::from(n) * 7.0));
        let mut hist = KernelHistogram::default();
        for _ in 0..100 {
            hist.record((2_000.0 * (next() * 5.0).exp2()) as u64);
        }
        histograms.push(
            labels(n),
            Value::Histogram(hist.to_classic(&nanos, &bounds)),
        );
    }
    vec![counters, histograms]
}

/// The same families with native buckets only: no classic bounds.
fn native_only(families: &[Family]) -> Vec<Family> {
    let mut families = families.to_vec();
    for series in families.iter_mut().flat_map(|f| f.series.iter_mut()) {
        if let Value::Histogram(h) = &mut series.value {
            h.bounds.clear();
            h.cumulative.clear();
        }
    }
    families
}

/// The median time of `ROUNDS` encodings, and the size of one.
fn measure(families: &[Family], format: Format, native_schema: Option<i8>) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        size = black_box(encode_bytes(families, format, native_schema)).len();
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], size)
}

fn main() {
    let families = families();
    let native = native_only(&families);
    let (base_time, base_size) = measure(&families, Format::Text004, None);
    println!("{SERIES} series (half counters, half 12-bucket histograms), median of {ROUNDS}");
    println!("| format | encode time | x text time | bytes | x text bytes |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, families, format, schema) in [
        ("text 0.0.4", &families, Format::Text004, None),
        ("OpenMetrics", &families, Format::OpenMetrics, None),
        ("protobuf, classic", &families, Format::Protobuf, None),
        (
            "protobuf, classic + native schema 3",
            &families,
            Format::Protobuf,
            Some(3),
        ),
        (
            "protobuf, classic + native schema 0",
            &families,
            Format::Protobuf,
            Some(0),
        ),
        (
            "protobuf, native schema 3 only",
            &native,
            Format::Protobuf,
            Some(3),
        ),
        (
            "protobuf, native schema 0 only",
            &native,
            Format::Protobuf,
            Some(0),
        ),
    ] {
        let (time, size) = measure(families, format, schema);
        println!(
            "| {name} | {:.2} ms | {:.2} | {size} | {:.2} |",
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / base_time.as_secs_f64(),
            size as f64 / base_size as f64
        );
    }
}
