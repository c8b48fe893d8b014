//! Scrape size and encode time of 10,000 series in each format `/metrics` serves: the
//! text format 0.0.4 (the baseline), OpenMetrics and protobuf, in the same run. Half
//! the series are counters, half histograms with the default 12 classic buckets, labelled
//! as per-process syscall series are.
//!
//! `cargo bench --bench exposition`

use std::hint::black_box;
use std::time::{Duration, Instant};

use periscope::export::prometheus::encode::{encode_bytes, Format};
use periscope::model::{ClassicHistogram, Family, MetricKind, Value};

const SERIES: u32 = 10_000;
const ROUNDS: u32 = 50;

fn families() -> Vec<Family> {
    let bounds = vec![
        0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
        1.0,
    ];
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
        let cumulative: Vec<u64> = (0..bounds.len() as u64).map(|b| b * u64::from(n)).collect();
        let count = cumulative.last().copied().unwrap_or(0) + u64::from(n);
        histograms.push(
            labels(n),
            Value::Histogram(ClassicHistogram {
                bounds: bounds.clone(),
                cumulative,
                count,
                sum: f64::from(n) * 0.003,
            }),
        );
    }
    vec![counters, histograms]
}

/// The median time of `ROUNDS` encodings, and the size of one.
fn measure(families: &[Family], format: Format) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        size = black_box(encode_bytes(families, format)).len();
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], size)
}

fn main() {
    let families = families();
    let (base_time, base_size) = measure(&families, Format::Text004);
    println!("{SERIES} series (half counters, half 12-bucket histograms), median of {ROUNDS}");
    println!("| format | encode time | x text time | bytes | x text bytes |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, format) in [
        ("text 0.0.4", Format::Text004),
        ("OpenMetrics", Format::OpenMetrics),
        ("protobuf", Format::Protobuf),
    ] {
        let (time, size) = measure(&families, format);
        println!(
            "| {name} | {:.2} ms | {:.2} | {size} | {:.2} |",
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / base_time.as_secs_f64(),
            size as f64 / base_size as f64
        );
    }
}
