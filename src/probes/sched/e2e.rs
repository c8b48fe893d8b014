//! End-to-end: the sched probe gives a process that sleeps and wakes N times exactly N
//! run-queue samples, keeps them when the executable goes idle and leaves the kernel's
//! map, and folds executables beyond its cap into the overflow series.
//!
//! The sleepers run under SCHED_FIFO (`chrt -f`), so that no other task preempts them:
//! each of their waits then begins at a wakeup, and the count is exact.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{eventually, have_root, kernel_lock, Agent, Metrics, TempDir};

const COUNT: &str = "sched_runqueue_latency_seconds_count";
const SUM: &str = "sched_runqueue_latency_seconds_sum";

/// Only the sched probe, so that the other probes' work does not slow the tests.
fn config(extra: &str) -> String {
    format!(
        "probes:\n  syscalls: {{enabled: false}}\n  process: {{enabled: false}}\n  tcp: {{enabled: false}}\n  sched:\n    enabled: true\n{extra}"
    )
}

/// A static C program that sleeps a millisecond as many times as its argument says.
fn build_sleeper(dir: &Path) -> PathBuf {
    let source = dir.join("sleeper.c");
    std::fs::write(
        &source,
        "#include <stdlib.h>\n#include <time.h>\n\
         int main(int argc, char **argv) {\n\
           struct timespec ms = {0, 1000000};\n\
           for (int i = 0, n = atoi(argv[1]); i < n; i++) nanosleep(&ms, 0);\n\
           return 0;\n}\n",
    )
    .expect("write the sleeper's source");
    let binary = dir.join("sleeper");
    let status = Command::new("clang-19")
        .args(["-O2", "-static", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("run clang-19 (scripts/setup.sh installs it)");
    assert!(status.success(), "compiling the sleeper failed");
    binary
}

/// The sleeper under its own executable name, unique to this test run.
fn named_sleeper(dir: &Path, sleeper: &Path, tag: &str) -> (String, PathBuf) {
    let name = format!("psc{tag}{}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name} is longer than a comm");
    let path = dir.join(&name);
    std::fs::copy(sleeper, &path).expect("copy the sleeper");
    (name, path)
}

/// Runs the sleeper under SCHED_FIFO, sleeping `times` times; returns its wall time.
fn sleep_times(path: &Path, times: u32) -> Duration {
    let started = Instant::now();
    let status = Command::new("chrt")
        .args(["-f", "10"])
        .arg(path)
        .arg(times.to_string())
        .status()
        .expect("run chrt");
    assert!(status.success(), "the sleeper failed");
    started.elapsed()
}

fn samples(metrics: &Metrics, name: &str) -> f64 {
    metrics.sum(COUNT, &[("process_executable_name", name)])
}

#[test]
fn a_process_that_wakes_n_times_has_n_samples() {
    if !have_root("a_process_that_wakes_n_times_has_n_samples") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = TempDir::new("sched-exact");
    let sleeper = build_sleeper(dir.path());
    let (name, path) = named_sleeper(dir.path(), &sleeper, "sl");
    let agent = Agent::start(&config(""));

    let wall = sleep_times(&path, 200) + sleep_times(&path, 50);
    let metrics = eventually(&agent, |m| samples(m, &name) >= 250.0);
    let labels = [("process_executable_name", name.as_str())];
    assert_eq!(metrics.one(COUNT, &labels), 250.0);
    assert_eq!(
        metrics.one(
            "sched_runqueue_latency_seconds_bucket",
            &[("process_executable_name", &name), ("le", "+Inf")]
        ),
        250.0
    );
    // Each wait lies within the run: their sum is positive and below the wall time.
    let sum = metrics.one(SUM, &labels);
    assert!(
        sum > 0.0 && sum < wall.as_secs_f64(),
        "sum {sum} s for a {wall:?} run"
    );
    // No pid label: run-queue latency is kept per executable.
    let series: Vec<_> = metrics.find(COUNT, &labels).collect();
    assert!(!series[0].1.contains_key("process_pid"), "{series:?}");
}

#[test]
fn an_executable_idle_past_the_ttl_keeps_its_samples() {
    if !have_root("an_executable_idle_past_the_ttl_keeps_its_samples") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = TempDir::new("sched-idle");
    let sleeper = build_sleeper(dir.path());
    let (name, path) = named_sleeper(dir.path(), &sleeper, "id");
    let agent = Agent::start(&format!(
        "processes:\n  exited_ttl_secs: 1\n{}",
        config("")
    ));
    let expired = |m: &Metrics| m.sum("periscope_series_expired_total", &[("probe", "sched")]);

    sleep_times(&path, 30);
    eventually(&agent, |m| samples(m, &name) >= 30.0);
    let before = expired(&agent.metrics());
    // Idle for longer than the TTL: the kernel's entry is retired at a collection.
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = eventually(&agent, |m| expired(m) > before);
    assert!(expired(&metrics) > before, "nothing was retired");
    assert_eq!(samples(&metrics, &name), 30.0);
    // Back again: it adds to what it counted.
    sleep_times(&path, 20);
    let metrics = eventually(&agent, |m| samples(m, &name) >= 50.0);
    assert_eq!(samples(&metrics, &name), 50.0);
}

#[test]
fn executables_beyond_the_cap_fold_into_the_overflow_series() {
    if !have_root("executables_beyond_the_cap_fold_into_the_overflow_series") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = TempDir::new("sched-cap");
    let sleeper = build_sleeper(dir.path());
    let agent = Agent::start(&config("    max_series: 8\n"));
    let names: Vec<(String, PathBuf)> = (0..20)
        .map(|i| named_sleeper(dir.path(), &sleeper, &format!("c{i}")))
        .collect();
    for (_, path) in &names {
        sleep_times(path, 10);
    }
    let metrics = eventually(&agent, |m| {
        m.sum("periscope_series_folded_total", &[("map", "sched_latency")]) > 0.0
    });
    let kept: Vec<f64> = names
        .iter()
        .map(|(name, _)| samples(&metrics, name))
        .filter(|count| *count > 0.0)
        .collect();
    // A series that got a slot holds every sample of its executable.
    assert!(kept.iter().all(|count| *count == 10.0), "{kept:?}");
    assert!(kept.len() < names.len(), "the cap of 8 held {} names", kept.len());
    let folded_names = (names.len() - kept.len()) as f64;
    let overflow = samples(&metrics, "__overflow__");
    assert!(
        overflow >= folded_names * 10.0,
        "{overflow} samples in the overflow series for {folded_names} folded names"
    );
    assert_eq!(
        metrics.one(
            "periscope_bpf_map_entries",
            &[("probe", "sched"), ("map", "sched_latency")]
        ),
        8.0
    );
}
