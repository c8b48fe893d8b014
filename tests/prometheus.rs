//! End-to-end: a real Prometheus (the Debian package) scrapes the agent, and PromQL over
//! the scraped series returns the workload's exact numbers.

mod common;

use common::{have_root, kernel_lock, Agent, Helper, Prometheus, KILL_HELPER, SLEEP_HELPER};

#[test]
fn prometheus_scrapes_exact_counts() {
    if !have_root("prometheus_scrapes_exact_counts") {
        return;
    }
    exact_counts_through(&[], "openmetrics", false);
}

/// With native histograms on, Prometheus asks for the protobuf format first: the same
/// exact numbers arrive through it, the latency as a native histogram.
#[test]
fn prometheus_scrapes_exact_counts_over_protobuf() {
    if !have_root("prometheus_scrapes_exact_counts_over_protobuf") {
        return;
    }
    exact_counts_through(&["--enable-feature=native-histograms"], "protobuf", true);
}

fn exact_counts_through(flags: &[&str], format: &str, native: bool) {
    let _kernel = kernel_lock();
    let agent =
        Agent::start("probes:\n  syscalls:\n    latency_syscalls: [kill, read, write, openat]\n    latency_sampling: always\n    latency_per_process: true\n");
    let prometheus = Prometheus::start_flagged(agent.port, None, "", flags);
    let mut helper = Helper::spawn(KILL_HELPER, &["300".into(), "30".into()]);
    let pid = helper.pid();
    helper.run();

    let calls = format!("syscalls_total{{process_pid=\"{pid}\",syscall=\"kill\"}}");
    assert_eq!(prometheus.wait_for(&calls, &[300.0]), vec![300.0]);
    let errors = format!(
        "sum(syscall_errors_total{{process_pid=\"{pid}\",syscall=\"kill\",errno=\"ESRCH\"}})"
    );
    assert_eq!(prometheus.wait_for(&errors, &[30.0]), vec![30.0]);
    let this = format!("{{process_pid=\"{pid}\",syscall=\"kill\"}}");
    let count = if native {
        format!("histogram_count(syscall_duration_seconds{this})")
    } else {
        format!("syscall_duration_seconds_count{this}")
    };
    assert_eq!(prometheus.wait_for(&count, &[300.0]), vec![300.0]);
    // The scrape itself is healthy in Prometheus's eyes.
    assert_eq!(
        prometheus.wait_for("up{job=\"periscope\"}", &[1.0]),
        vec![1.0]
    );
    // A quantile over the in-kernel histogram is computable.
    let p99 = if native {
        format!("histogram_quantile(0.99, syscall_duration_seconds{this})")
    } else {
        format!("histogram_quantile(0.99, sum by (le) (syscall_duration_seconds_bucket{this}))")
    };
    let quantile = prometheus.values(&p99);
    assert_eq!(quantile.len(), 1, "{quantile:?}");
    assert!(quantile[0] > 0.0 && quantile[0] < 1.0, "{quantile:?}");
    // Every scrape Prometheus made was in the format it prefers. A scrape counts only
    // in the next one's numbers, so the counter is awaited first.
    let served = format!("periscope_scrapes_total{{format=\"{format}\"}}");
    assert_eq!(
        prometheus.wait_for(&format!("{served} >= bool 1"), &[1.0]),
        vec![1.0],
        "{format}"
    );
    let others = format!("sum(periscope_scrapes_total) - sum({served})");
    assert_eq!(prometheus.values(&others), vec![0.0], "{format}");
    helper.finish();
}

/// The classic bucket (le) a quantile falls in: the first bound at or above it.
fn classic_bucket(bounds: &[f64], quantile: f64) -> f64 {
    bounds
        .iter()
        .copied()
        .find(|le| quantile <= *le)
        .unwrap_or(f64::INFINITY)
}

/// Two Prometheus servers scrape one agent, one with native histograms on (protobuf,
/// native buckets) and one without (classic buckets). For sleeps of a known length, the
/// 95th percentile over each falls in the same classic bucket, and the native one is
/// within a native bucket's width of what the sleeping process measured itself.
#[test]
fn native_and_classic_quantiles_fall_in_the_same_bucket() {
    if !have_root("native_and_classic_quantiles_fall_in_the_same_bucket") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  syscalls:\n    latency_syscalls: [clock_nanosleep]\n    latency_sampling: always\n    latency_per_process: true\n",
    );
    let native = Prometheus::start_native(agent.port);
    let classic = Prometheus::start_flagged(agent.port, None, "", &[]);
    // One first sleep of 100 us makes the series; both servers scrape it before the
    // workload, so the rate over the window holds the workload alone.
    let (n, sleep_ns) = (200u32, 3_000_000u64);
    let mut helper = Helper::spawn(
        SLEEP_HELPER,
        &["100000".into(), n.to_string(), sleep_ns.to_string()],
    );
    let pid = helper.pid();
    helper.run();
    let this = format!("{{process_pid=\"{pid}\",syscall=\"clock_nanosleep\"}}");
    let native_count = format!("histogram_count(syscall_duration_seconds{this})");
    let classic_count = format!("syscall_duration_seconds_count{this}");
    assert_eq!(native.wait_for(&native_count, &[1.0]), vec![1.0]);
    assert_eq!(classic.wait_for(&classic_count, &[1.0]), vec![1.0]);
    helper.go();
    let client_p95: f64 = helper.read_line().parse::<f64>().expect("the helper's p95") * 1e-9;
    helper.expect_line("done");
    let total = f64::from(n + 1);
    assert_eq!(native.wait_for(&native_count, &[total]), vec![total]);
    assert_eq!(classic.wait_for(&classic_count, &[total]), vec![total]);

    let native_p95 = native.values(&format!(
        "histogram_quantile(0.95, rate(syscall_duration_seconds{this}[1m]))"
    ));
    let classic_p95 = classic.values(&format!(
        "histogram_quantile(0.95, sum by (le) (rate(syscall_duration_seconds_bucket{this}[1m])))"
    ));
    assert_eq!(
        (native_p95.len(), classic_p95.len()),
        (1, 1),
        "{native_p95:?} {classic_p95:?}"
    );
    let bounds = [
        0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
        0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    eprintln!(
        "p95 of {n} sleeps: the process measured {client_p95} s, native {} s, classic {} s",
        native_p95[0], classic_p95[0]
    );
    assert_eq!(
        classic_bucket(&bounds, native_p95[0]),
        classic_bucket(&bounds, classic_p95[0]),
        "native p95 {} s, classic p95 {} s",
        native_p95[0],
        classic_p95[0]
    );
    assert_eq!(
        classic_bucket(&bounds, client_p95),
        classic_bucket(&bounds, native_p95[0])
    );
    // A native bucket at schema 3 is 9.05 % wide; the process's own timing of a sleep
    // also holds a few microseconds of Python around the call.
    let off = (native_p95[0] - client_p95).abs() / client_p95;
    assert!(
        off < 0.10,
        "native p95 {} s against the client's {client_p95} s",
        native_p95[0]
    );
    helper.finish();
}
