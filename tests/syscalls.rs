//! End-to-end: the syscalls probe counts a known workload exactly.

mod common;

use common::{have_root, kernel_lock, Agent, Helper, KILL_HELPER};

#[test]
fn counts_errors_and_latency_of_a_known_workload_exactly() {
    if !have_root("counts_errors_and_latency_of_a_known_workload_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("probes:\n  syscalls:\n    latency_syscalls: [kill, openat]\n    latency_sampling: always\n    latency_per_process: true\n");
    let (n, m) = (1000, 237);
    let mut helper = Helper::spawn(KILL_HELPER, &[n.to_string(), m.to_string()]);
    let pid = helper.pid().to_string();
    helper.run();

    let metrics = agent.metrics();
    let this = [("process_pid", pid.as_str()), ("syscall", "kill")];
    assert_eq!(metrics.one("syscalls_total", &this), n as f64);
    let errors: Vec<_> = metrics.find("syscall_errors_total", &this).collect();
    assert_eq!(errors.len(), 1, "only ESRCH: {errors:?}");
    assert_eq!(errors[0].1.get("errno").map(String::as_str), Some("ESRCH"));
    assert_eq!(errors[0].2, m as f64);
    assert_eq!(
        metrics.one("syscall_duration_seconds_count", &this),
        n as f64
    );
    let inf = [
        ("process_pid", pid.as_str()),
        ("syscall", "kill"),
        ("le", "+Inf"),
    ];
    assert_eq!(
        metrics.one("syscall_duration_seconds_bucket", &inf),
        n as f64
    );
    let sum = metrics.one("syscall_duration_seconds_sum", &this);
    assert!(
        sum > 0.0 && sum < 10.0,
        "sum of {n} kill(2) latencies: {sum}"
    );
    // The helper is idle now: a second scrape reads the same counts.
    let again = agent.metrics();
    assert_eq!(
        again.one("syscalls_total", &this),
        metrics.one("syscalls_total", &this),
        "stable across scrapes"
    );
    let labels = &metrics
        .find("syscalls_total", &this)
        .next()
        .expect("series")
        .1;
    assert_eq!(
        labels.get("process_executable_name").map(String::as_str),
        Some("python3")
    );
    assert_eq!(
        labels.get("service_name").map(String::as_str),
        Some("python3")
    );

    // Buckets are cumulative and end at the count.
    let buckets: Vec<f64> = metrics
        .find("syscall_duration_seconds_bucket", &this)
        .map(|(_, _, v)| *v)
        .collect();
    assert!(buckets.len() > 2, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    helper.finish();
}

#[test]
fn selection_by_executable_traces_only_that_process() {
    if !have_root("selection_by_executable_traces_only_that_process") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  syscalls:\n    include_executables: [pscselected]\n    latency_syscalls: [kill]\n    latency_sampling: always\n    latency_per_process: true\n",
    );
    let mut helper = Helper::spawn(
        KILL_HELPER,
        &["50".into(), "5".into(), "pscselected".into()],
    );
    let pid = helper.pid().to_string();
    helper.run();
    let metrics = agent.metrics();
    let pids: std::collections::BTreeSet<_> = metrics
        .find("syscalls_total", &[])
        .filter_map(|(_, labels, _)| labels.get("process_pid").cloned())
        .collect();
    assert_eq!(pids.into_iter().collect::<Vec<_>>(), vec![pid.clone()]);
    let this = [("process_pid", pid.as_str()), ("syscall", "kill")];
    assert_eq!(metrics.one("syscalls_total", &this), 50.0);
    assert_eq!(metrics.one("syscall_errors_total", &this), 5.0);
    assert_eq!(metrics.one("syscall_duration_seconds_count", &this), 50.0);
    helper.finish();
}

/// Python that forks 12 children named psccap; child i issues 10 + i kill(2) calls, i of
/// them failing with ESRCH. More processes than the test's tiny caps have room for, each
/// with a different count, so that a lost or doubled series shows in the totals.
const CAPPED_CHILDREN_HELPER: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None)
print("ready", flush=True)
sys.stdin.readline()
children = []
for i in range(12):
    pid = os.fork()
    if pid == 0:
        libc.prctl(15, b"psccap", 0, 0, 0)
        me = os.getpid()
        for _ in range(10):
            os.kill(me, 0)
        for _ in range(i):
            try:
                os.kill(4194305, 0)
            except ProcessLookupError:
                pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("done", flush=True)
sys.stdin.readline()
"#;

/// The kernel maps hold no more than their caps (max_series 4, per_cpu_slots 1): what
/// keeps the totals exact must be the overflow, not a map that grew.
fn check_maps_within_caps(metrics: &common::Metrics) {
    assert_eq!(
        metrics.one(
            "periscope_bpf_map_entries",
            &[("probe", "syscalls"), ("map", "counts")]
        ),
        4.0
    );
    let slots = metrics.one(
        "periscope_bpf_map_capacity",
        &[("probe", "syscalls"), ("map", "fast_counts")],
    );
    let taken = metrics.one(
        "periscope_bpf_map_entries",
        &[("probe", "syscalls"), ("map", "fast_counts")],
    );
    assert!(
        taken >= 1.0 && taken <= slots,
        "{taken} of one slot per CPU taken"
    );
    // Series with a pid, beyond the overflow: at most the caps (map, plus a slot per CPU).
    let with_pid = metrics
        .find("syscalls_total", &[])
        .filter(|(_, labels, _)| labels.contains_key("process_pid"))
        .count();
    assert!(
        with_pid as f64 <= 4.0 + slots,
        "{with_pid} series with a pid under a cap of 4 + {slots}"
    );
}

/// Many processes against tiny caps: totals across series, overflow included, stay exact.
#[test]
fn full_maps_fold_into_overflow_and_totals_stay_exact() {
    if !have_root("full_maps_fold_into_overflow_and_totals_stay_exact") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  syscalls:\n    include_executables: [psccap]\n    latency_syscalls: [kill]\n    per_cpu_slots: 1\n    latency_sampling: always\n    max_series: 4\n    max_error_series: 2\n    max_latency_series: 2\n",
    );
    let mut helper = Helper::spawn(CAPPED_CHILDREN_HELPER, &[]);
    helper.run();
    let total_kills: u64 = (0..12).map(|i| 10 + i).sum();
    let failed_kills: u64 = (0..12).sum();

    let metrics = agent.metrics();
    let kill = [("syscall", "kill")];
    assert_eq!(metrics.sum("syscalls_total", &kill), total_kills as f64);
    assert_eq!(
        metrics.sum(
            "syscall_errors_total",
            &[("syscall", "kill"), ("errno", "ESRCH")]
        ),
        failed_kills as f64
    );
    assert_eq!(
        metrics.sum("syscall_duration_seconds_count", &kill),
        total_kills as f64
    );
    let overflow = [
        ("process_executable_name", "__overflow__"),
        ("syscall", "kill"),
    ];
    assert!(
        metrics.sum("syscalls_total", &overflow) > 0.0,
        "an overflow series exists"
    );
    assert!(
        metrics.one(
            "periscope_series_folded_total",
            &[("probe", "syscalls"), ("map", "counts")]
        ) > 0.0
    );
    // A call that finds no place for its count goes to the overflow with its latency,
    // without asking the latency map: the overflow's histogram counts its calls.
    assert_eq!(
        metrics.sum("syscall_duration_seconds_count", &overflow),
        metrics.sum("syscalls_total", &overflow)
    );
    check_maps_within_caps(&metrics);
    helper.finish();
}

/// Exited processes' series fold, after the TTL, into per-executable series without a pid;
/// sums never drop and the kernel entries are freed.
#[test]
fn exited_processes_fold_into_per_executable_series() {
    if !have_root("exited_processes_fold_into_per_executable_series") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "processes:\n  exited_ttl_secs: 0\nprobes:\n  syscalls:\n    include_executables: [pscexit]\n    latency_syscalls: [kill]\n    latency_sampling: always\n",
    );
    for _ in 0..3 {
        let mut helper = Helper::spawn(KILL_HELPER, &["20".into(), "2".into(), "pscexit".into()]);
        helper.run();
        helper.finish();
    }
    // The first scrape notices the exits; with a TTL of 0 it folds them at once.
    let metrics = agent.metrics();
    let folded = [("process_executable_name", "pscexit"), ("syscall", "kill")];
    assert_eq!(metrics.sum("syscalls_total", &folded), 60.0);
    assert_eq!(metrics.sum("syscall_errors_total", &folded), 6.0);
    assert_eq!(metrics.sum("syscall_duration_seconds_count", &folded), 60.0);
    let metrics = agent.metrics();
    let series: Vec<_> = metrics.find("syscalls_total", &folded).collect();
    assert_eq!(series.len(), 1, "one per-executable series: {series:?}");
    assert!(!series[0].1.contains_key("process_pid"));
    assert_eq!(series[0].2, 60.0);
    assert!(metrics.one("periscope_series_expired_total", &[("probe", "syscalls")]) > 0.0);
}

/// Sampled timing: calls outside a window are counted but not timed; inside, timed.
#[test]
fn sampled_timing_times_only_calls_inside_its_window() {
    if !have_root("sampled_timing_times_only_calls_inside_its_window") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  syscalls:\n    include_executables: [pscsampled]\n    latency_syscalls: [kill]\n    latency_sampling: sampled\n    latency_sample_secs: 5\n    latency_period_secs: 8\n    latency_per_process: true\n",
    );
    let timing_on =
        |m: &common::Metrics| m.one("periscope_syscall_timing_enabled_seconds_total", &[]);
    let mut helper = Helper::spawn(
        KILL_HELPER,
        &["100".into(), "0".into(), "pscsampled".into()],
    );
    let pid = helper.pid().to_string();
    let this = [("process_pid", pid.as_str()), ("syscall", "kill")];
    // The first window opens 3 s after start: this workload runs before it.
    helper.run();
    let before = agent.metrics();
    assert_eq!(timing_on(&before), 0.0, "no window yet");
    assert_eq!(before.one("syscalls_total", &this), 100.0);
    assert_eq!(before.sum("syscall_duration_seconds_count", &this), 0.0);
    helper.finish();

    let opened = common::eventually(&agent, |m| timing_on(m) > 0.0);
    assert!(timing_on(&opened) > 0.0, "a window opened");
    let mut helper = Helper::spawn(
        KILL_HELPER,
        &["100".into(), "0".into(), "pscsampled".into()],
    );
    let pid = helper.pid().to_string();
    helper.run();
    let during = agent.metrics();
    let this = [("process_pid", pid.as_str()), ("syscall", "kill")];
    assert_eq!(during.one("syscalls_total", &this), 100.0);
    assert_eq!(during.one("syscall_duration_seconds_count", &this), 100.0);
    helper.finish();
}

/// Aggregates of exited processes are capped by executable; beyond, they fold into the
/// overflow series, and sums stay exact.
#[test]
fn exited_aggregates_beyond_their_cap_fold_into_overflow() {
    if !have_root("exited_aggregates_beyond_their_cap_fold_into_overflow") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "processes:\n  exited_ttl_secs: 0\n  max_exited_executables: 1\nprobes:\n  syscalls:\n    include_executables: [pscfirst, pscsecond]\n",
    );
    for name in ["pscfirst", "pscsecond"] {
        let mut helper = Helper::spawn(KILL_HELPER, &["30".into(), "3".into(), name.into()]);
        helper.run();
        helper.finish();
        // Fold this process before the next one exits, so the first name takes the slot.
        common::eventually(&agent, |m| {
            m.find("syscalls_total", &[("process_executable_name", name)])
                .all(|(_, labels, _)| !labels.contains_key("process_pid"))
        });
    }
    let metrics = agent.metrics();
    let kill = |exe: &str| {
        metrics.sum(
            "syscalls_total",
            &[("process_executable_name", exe), ("syscall", "kill")],
        )
    };
    assert_eq!(kill("pscfirst"), 30.0);
    assert_eq!(kill("pscsecond"), 0.0, "no aggregate beyond the cap");
    assert_eq!(kill("__overflow__"), 30.0);
    assert_eq!(
        metrics.one(
            "periscope_series_folded_total",
            &[("probe", "syscalls"), ("map", "exited_executables")]
        ),
        1.0
    );
}

/// Runs the kill helper (`n` kills, `m` of them failing) under an agent that times kill
/// and is refused `programs`; checks the counts, and the timing when `timed`.
fn kills_counted_with_refused(programs: &[&str], timed: bool) {
    let agent = Agent::start_refusing(
        "probes:\n  syscalls:\n    latency_syscalls: [kill]\n    latency_sampling: always\n    latency_per_process: true\n",
        programs,
    );
    let (n, m) = (400, 37);
    let mut helper = Helper::spawn(KILL_HELPER, &[n.to_string(), m.to_string()]);
    let pid = helper.pid().to_string();
    helper.run();
    let metrics = agent.metrics();
    let this = [("process_pid", pid.as_str()), ("syscall", "kill")];
    assert_eq!(metrics.one("syscalls_total", &this), n as f64);
    assert_eq!(
        metrics.one(
            "syscall_errors_total",
            &[
                ("process_pid", pid.as_str()),
                ("syscall", "kill"),
                ("errno", "ESRCH")
            ]
        ),
        m as f64
    );
    if timed {
        assert_eq!(metrics.degraded("syscalls"), Vec::<String>::new());
        assert_eq!(
            metrics.one("syscall_duration_seconds_count", &this),
            n as f64
        );
    } else {
        assert_eq!(metrics.degraded("syscalls"), vec!["syscall latency"]);
        assert_eq!(
            metrics
                .find("syscall_duration_seconds_count", &this)
                .count(),
            0,
            "no latency without a timing hook"
        );
    }
    helper.finish();
}

#[test]
fn without_per_syscall_tracepoints_timing_moves_to_tp_btf_sys_enter() {
    if !have_root("without_per_syscall_tracepoints_timing_moves_to_tp_btf_sys_enter") {
        return;
    }
    let _kernel = kernel_lock();
    kills_counted_with_refused(&["psc_sys_enter_tp"], true);
}

#[test]
fn without_tp_btf_sys_enter_timing_stays_on_per_syscall_tracepoints() {
    if !have_root("without_tp_btf_sys_enter_timing_stays_on_per_syscall_tracepoints") {
        return;
    }
    let _kernel = kernel_lock();
    kills_counted_with_refused(&["psc_sys_enter_btf"], true);
}

#[test]
fn without_any_enter_hook_syscalls_are_counted_exactly_but_not_timed() {
    if !have_root("without_any_enter_hook_syscalls_are_counted_exactly_but_not_timed") {
        return;
    }
    let _kernel = kernel_lock();
    kills_counted_with_refused(&["psc_sys_enter_tp", "psc_sys_enter_btf"], false);
}
