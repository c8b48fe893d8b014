//! End-to-end: a real Prometheus (the Debian package) scrapes the agent, and PromQL over
//! the scraped series returns the workload's exact numbers.

mod common;

use common::{have_root, kernel_lock, Agent, Helper, Prometheus, KILL_HELPER};

#[test]
fn prometheus_scrapes_exact_counts() {
    if !have_root("prometheus_scrapes_exact_counts") {
        return;
    }
    exact_counts_through(&[], "openmetrics");
}

/// With native histograms on, Prometheus asks for the protobuf format first: the same
/// exact numbers arrive through it.
#[test]
fn prometheus_scrapes_exact_counts_over_protobuf() {
    if !have_root("prometheus_scrapes_exact_counts_over_protobuf") {
        return;
    }
    exact_counts_through(&["--enable-feature=native-histograms"], "protobuf");
}

fn exact_counts_through(flags: &[&str], format: &str) {
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
    let count = format!("syscall_duration_seconds_count{{process_pid=\"{pid}\",syscall=\"kill\"}}");
    assert_eq!(prometheus.wait_for(&count, &[300.0]), vec![300.0]);
    // The scrape itself is healthy in Prometheus's eyes.
    assert_eq!(
        prometheus.wait_for("up{job=\"periscope\"}", &[1.0]),
        vec![1.0]
    );
    // A quantile over the in-kernel histogram is computable.
    let p99 = format!(
        "histogram_quantile(0.99, sum by (le) (syscall_duration_seconds_bucket{{process_pid=\"{pid}\",syscall=\"kill\"}}))"
    );
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
