//! End-to-end: the sched probe gives a process that sleeps and wakes N times exactly N
//! run-queue samples, keeps them when the executable goes idle and leaves the kernel's
//! map, and folds executables beyond its cap into the overflow series.
//!
//! The sleepers run under SCHED_FIFO (`chrt -f`), so that other tasks rarely preempt
//! them, and report how many times a CPU took them up meanwhile, by the kernel's own
//! count (`/proc/self/schedstat`, its third field): a sleep whose timer fires before
//! the task blocks (a virtual CPU paused for a millisecond) wakes nothing. Each of those
//! arrivals ends one wait on a run queue.
//!
//! Measured here, the probe's samples fall short of the kernel's arrivals by about one
//! in a thousand (6 of 6,250), and by one in two hundred with two CPU-bound tasks
//! competing (16 of 3,000). Counting in the programs themselves shows the
//! `sched_switch` tracepoint firing fewer times for the sleeper than the kernel counts
//! arrivals, with as many wakeups as switch-ins and no recursion miss: the shortfall is
//! between the two kernel counts, not in the probe's maps. Until that is understood,
//! the tests allow a shortfall of 1% and never an excess, over enough sleeps that
//! 1% is more than a handful.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use crate::common::{compile_static_c, eventually, have_root, kernel_lock, Agent, Metrics, TempDir};

const COUNT: &str = "sched_runqueue_latency_seconds_count";
const SUM: &str = "sched_runqueue_latency_seconds_sum";

/// Only the sched probe, so that the other probes' work does not slow the tests.
fn config(extra: &str) -> String {
    format!(
        "probes:\n  syscalls: {{enabled: false}}\n  process: {{enabled: false}}\n  tcp: {{enabled: false}}\n  sched:\n    enabled: true\n{extra}"
    )
}

/// A static C program that sleeps a millisecond as many times as its argument says and
/// prints how many times a CPU took it up meanwhile.
fn build_sleeper(dir: &Path) -> PathBuf {
    compile_static_c(
        dir,
        "sleeper",
        "#include <stdio.h>\n#include <stdlib.h>\n#include <time.h>\n\
         static unsigned long long arrivals(void) {\n\
           unsigned long long run, wait, count = 0;\n\
           FILE *f = fopen(\"/proc/self/schedstat\", \"r\");\n\
           if (!f || fscanf(f, \"%llu %llu %llu\", &run, &wait, &count) != 3) exit(2);\n\
           fclose(f);\n\
           return count;\n}\n\
         int main(int argc, char **argv) {\n\
           struct timespec ms = {0, 1000000};\n\
           unsigned long long before = arrivals();\n\
           for (int i = 0, n = atoi(argv[1]); i < n; i++) nanosleep(&ms, 0);\n\
           printf(\"%llu\\n\", arrivals() - before);\n\
           return 0;\n}\n",
    )
}

/// What every test starts from: the kernel to itself, and the sleeper built in a folder
/// of the test's own.
struct Bench {
    dir: TempDir,
    sleeper: PathBuf,
    _kernel: MutexGuard<'static, ()>,
}

impl Bench {
    /// The bench, and then the agent, started with `config`.
    fn start(tag: &str, config: &str) -> (Bench, Agent) {
        let kernel = kernel_lock();
        let dir = TempDir::new(tag);
        let sleeper = build_sleeper(dir.path());
        let bench = Bench {
            dir,
            sleeper,
            _kernel: kernel,
        };
        (bench, Agent::start(config))
    }

    /// The sleeper under its own executable name, unique to this test run.
    fn named_sleeper(&self, tag: &str) -> (String, PathBuf) {
        let name = format!("psc{tag}{}", std::process::id() % 100_000);
        assert!(name.len() <= 15, "{name} is longer than a comm");
        let path = self.dir.path().join(&name);
        std::fs::copy(&self.sleeper, &path).expect("copy the sleeper");
        (name, path)
    }
}

/// Runs the sleeper under SCHED_FIFO, sleeping `times` times; returns how many times a
/// CPU took it up, and its wall time.
fn sleep_times(path: &Path, times: u32) -> (f64, Duration) {
    let started = Instant::now();
    let output = Command::new("chrt")
        .args(["-f", "10"])
        .arg(path)
        .arg(times.to_string())
        .output()
        .expect("run chrt");
    assert!(output.status.success(), "the sleeper failed");
    let arrivals: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the sleeper prints its arrivals");
    // Nearly every sleep blocks: the count is of real wakeups, not of a busy loop.
    assert!(
        arrivals >= f64::from(times) * 0.9 && arrivals <= f64::from(times) + 5.0,
        "{arrivals} arrivals for {times} sleeps"
    );
    (arrivals, started.elapsed())
}

/// The shortfall allowed against the kernel's arrivals: 1%, or one.
fn allowed(arrivals: f64) -> f64 {
    (arrivals / 100.0).floor().max(1.0)
}

/// The probe's samples against the kernel's arrivals: never more, and at most 1% (or
/// one) fewer (see the top of this file).
fn assert_samples(samples: f64, arrivals: f64, what: &str) {
    assert!(
        samples <= arrivals && samples >= arrivals - allowed(arrivals),
        "{what}: {samples} samples for {arrivals} arrivals"
    );
}

fn samples(metrics: &Metrics, name: &str) -> f64 {
    metrics.sum(COUNT, &[("process_executable_name", name)])
}

#[test]
fn a_process_that_wakes_n_times_has_n_samples() {
    if !have_root("a_process_that_wakes_n_times_has_n_samples") {
        return;
    }
    let (bench, agent) = Bench::start("sched-exact", &config(""));
    let (name, path) = bench.named_sleeper("sl");

    let (first, first_wall) = sleep_times(&path, 1500);
    let (second, second_wall) = sleep_times(&path, 300);
    let (expected, wall) = (first + second, first_wall + second_wall);
    let metrics = eventually(&agent, |m| samples(m, &name) >= expected - allowed(expected));
    let labels = [("process_executable_name", name.as_str())];
    let count = metrics.one(COUNT, &labels);
    assert_samples(count, expected, &name);
    assert_eq!(
        metrics.one(
            "sched_runqueue_latency_seconds_bucket",
            &[("process_executable_name", &name), ("le", "+Inf")]
        ),
        count
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
    let (bench, agent) = Bench::start(
        "sched-idle",
        &format!("processes:\n  exited_ttl_secs: 1\n{}", config("")),
    );
    let (name, path) = bench.named_sleeper("id");
    let expired = |m: &Metrics| m.sum("periscope_series_expired_total", &[("probe", "sched")]);

    sleep_times(&path, 30);
    // Everything the run gave has been read before it idles.
    std::thread::sleep(Duration::from_millis(300));
    let first = samples(&agent.metrics(), &name);
    assert!(first > 0.0);
    let before = expired(&agent.metrics());
    // Idle for longer than the TTL: the kernel's entry is retired at a collection.
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = eventually(&agent, |m| expired(m) > before);
    assert!(expired(&metrics) > before, "nothing was retired");
    assert_eq!(samples(&metrics, &name), first);
    // Back again: it adds to what it counted.
    let (second, _) = sleep_times(&path, 20);
    let metrics = eventually(&agent, |m| samples(m, &name) >= first + second - allowed(second));
    assert_samples(samples(&metrics, &name) - first, second, &name);
}

#[test]
fn executables_beyond_the_cap_fold_into_the_overflow_series() {
    if !have_root("executables_beyond_the_cap_fold_into_the_overflow_series") {
        return;
    }
    let (bench, agent) = Bench::start("sched-cap", &config("    max_series: 8\n"));
    let names: Vec<(String, PathBuf)> = (0..20)
        .map(|i| bench.named_sleeper(&format!("c{i}")))
        .collect();
    let arrivals: Vec<f64> = names
        .iter()
        .map(|(_, path)| sleep_times(path, 10).0)
        .collect();
    let metrics = eventually(&agent, |m| {
        m.sum("periscope_series_folded_total", &[("map", "sched_latency")]) > 0.0
    });
    let mut kept = 0;
    let mut folded_samples = 0.0;
    for ((name, _), arrivals) in names.iter().zip(&arrivals) {
        match samples(&metrics, name) {
            0.0 => folded_samples += arrivals - 1.0,
            // A series that got a slot holds the samples of its executable.
            count => {
                assert_samples(count, *arrivals, name);
                kept += 1;
            }
        }
    }
    assert!(kept < names.len(), "the cap of 8 held {kept} names");
    let overflow = samples(&metrics, "__overflow__");
    assert!(
        overflow >= folded_samples,
        "{overflow} samples in the overflow series for {folded_samples} of folded names"
    );
    assert_eq!(
        metrics.one(
            "periscope_bpf_map_entries",
            &[("probe", "sched"), ("map", "sched_latency")]
        ),
        8.0
    );
}
