//! End-to-end: when the syscalls probe's maps fill, its series still agree with each
//! other. A call goes with its error and its latency to its process's series, or with
//! them to the overflow series: no series shows more errors than calls, and with every
//! call timed a histogram counts as many calls as its counter. The same holds once the
//! processes have exited and their series folded into per-executable aggregates.

use std::collections::BTreeMap;

use crate::common::{have_root, kernel_lock, Agent, Helper, Metrics};

/// Labels of a series, less `errno` and `le`: the calls an error or a histogram belongs to.
type Labels = BTreeMap<String, String>;

const NAME: &str = "pscagree";
const CHILDREN: u64 = 40;

/// Forks CHILDREN processes named `pscagree`. Child i makes, through libc (one syscall
/// each): 3 + i % 5 kill(2) that succeed and i % 4 that fail with ESRCH; 1 + i % 3
/// openat(2) that fail with ENOENT; i % 6 getppid(2); 1 + i % 2 close(2) that fail with
/// EBADF. Then it tells the parent and waits to be released. The helper prints "done"
/// once all children have worked, and again once they have exited and been reaped.
const WORKLOAD: &str = r#"
import ctypes, os, sys
children = int(sys.argv[1])
libc = ctypes.CDLL(None)
prctl, kill, open_, getppid, close = libc.prctl, libc.kill, libc.open, libc.getppid, libc.close
print("ready", flush=True)
sys.stdin.readline()
worked_r, worked_w = os.pipe()
release_r, release_w = os.pipe()
pids = []
for i in range(children):
    pid = os.fork()
    if pid == 0:
        prctl(15, b"pscagree", 0, 0, 0)
        me = os.getpid()
        for _ in range(3 + i % 5):
            kill(me, 0)
        for _ in range(i % 4):
            kill(4194305, 0)
        for _ in range(1 + i % 3):
            open_(b"/nonexistent/periscope-agree", 0)
        for _ in range(i % 6):
            getppid()
        for _ in range(1 + i % 2):
            close(999)
        os.write(worked_w, b"x")
        os.read(release_r, 1)
        os._exit(0)
    pids.append(pid)
for _ in pids:
    os.read(worked_r, 1)
print("done", flush=True)
sys.stdin.readline()
os.write(release_w, b"x" * len(pids))
for pid in pids:
    os.waitpid(pid, 0)
print("done", flush=True)
sys.stdin.readline()
"#;

/// What the children make in all, by syscall: (calls, errors, errno).
fn expected() -> Vec<(&'static str, u64, u64, &'static str)> {
    let sum = |f: fn(u64) -> u64| (0..CHILDREN).map(f).sum::<u64>();
    let failed_kills = sum(|i| i % 4);
    vec![
        ("kill", sum(|i| 3 + i % 5) + failed_kills, failed_kills, "ESRCH"),
        ("openat", sum(|i| 1 + i % 3), sum(|i| 1 + i % 3), "ENOENT"),
        ("getppid", sum(|i| i % 6), 0, ""),
        ("close", sum(|i| 1 + i % 2), sum(|i| 1 + i % 2), "EBADF"),
    ]
}

/// The labels of a sample without `errno` and `le`.
fn calls_labels(labels: &Labels) -> Labels {
    let mut labels = labels.clone();
    labels.remove("errno");
    labels.remove("le");
    labels
}

/// Every series agrees with its calls: errors, summed over errno, never above them; a
/// histogram's count equal to them (every call of a timed syscall is timed here).
/// Returns how many error and histogram series were checked.
fn assert_series_agree(metrics: &Metrics, what: &str) -> (usize, usize) {
    let mut calls: BTreeMap<Labels, f64> = BTreeMap::new();
    for (_, labels, value) in metrics.find("syscalls_total", &[]) {
        assert!(
            calls.insert(labels.clone(), *value).is_none(),
            "{what}: two syscalls_total samples with {labels:?}"
        );
    }
    let mut errors: BTreeMap<Labels, f64> = BTreeMap::new();
    for (_, labels, value) in metrics.find("syscall_errors_total", &[]) {
        *errors.entry(calls_labels(labels)).or_default() += value;
    }
    for (labels, errors) in &errors {
        let calls = calls.get(labels).copied().unwrap_or(0.0);
        assert!(
            *errors <= calls,
            "{what}: {errors} errors against {calls} calls for {labels:?}"
        );
    }
    let mut timed: BTreeMap<Labels, f64> = BTreeMap::new();
    for (_, labels, value) in metrics.find("syscall_duration_seconds_count", &[]) {
        assert!(
            timed.insert(labels.clone(), *value).is_none(),
            "{what}: two histogram counts with {labels:?}"
        );
    }
    for (labels, count) in &timed {
        let calls = calls.get(labels).copied().unwrap_or(0.0);
        assert_eq!(
            *count, calls,
            "{what}: a histogram of {count} calls against a counter of {calls} for {labels:?}"
        );
    }
    // And the other way: a timed syscall's counter has its histogram.
    for (labels, calls) in &calls {
        let syscall = labels.get("syscall").map(String::as_str);
        if matches!(syscall, Some("kill" | "openat")) && *calls > 0.0 {
            assert_eq!(
                timed.get(labels).copied(),
                Some(*calls),
                "{what}: {calls} timed calls without as many in a histogram for {labels:?}"
            );
        }
    }
    (errors.len(), timed.len())
}

/// Totals across all series, overflow and aggregates included, are the workload's.
fn assert_totals_exact(metrics: &Metrics, what: &str) {
    for (syscall, calls, errors, errno) in expected() {
        let this = [("syscall", syscall)];
        assert_eq!(
            metrics.sum("syscalls_total", &this),
            calls as f64,
            "{what}: {syscall} calls"
        );
        assert_eq!(
            metrics.sum("syscall_errors_total", &this),
            errors as f64,
            "{what}: {syscall} errors"
        );
        if errors > 0 {
            assert_eq!(
                metrics.sum(
                    "syscall_errors_total",
                    &[("syscall", syscall), ("errno", errno)]
                ),
                errors as f64,
                "{what}: {syscall} errors are all {errno}"
            );
        }
        let timed = if matches!(syscall, "kill" | "openat") {
            calls
        } else {
            0
        };
        assert_eq!(
            metrics.sum("syscall_duration_seconds_count", &this),
            timed as f64,
            "{what}: {syscall} calls timed"
        );
    }
}

fn folded(metrics: &Metrics, map: &str) -> f64 {
    metrics.one(
        "periscope_series_folded_total",
        &[("probe", "syscalls"), ("map", map)],
    )
}

/// Many processes with errors and timed calls against tiny caps: each map refuses some
/// calls, and still every series agrees with its calls and totals are exact, for live
/// processes and for the aggregates they fold into when they exit.
#[test]
fn full_maps_keep_errors_and_latency_with_their_calls() {
    if !have_root("full_maps_keep_errors_and_latency_with_their_calls") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(&format!(
        "processes:\n  exited_ttl_secs: 0\nprobes:\n  process: {{enabled: false}}\n  tcp: {{enabled: false}}\n  syscalls:\n    include_executables: [{NAME}]\n    latency_syscalls: [kill, openat]\n    latency_sampling: always\n    latency_per_process: true\n    per_cpu_slots: 1\n    max_series: 32\n    max_error_series: 4\n    max_latency_series: 4\n"
    ));
    let mut helper = Helper::spawn(WORKLOAD, &[CHILDREN.to_string()]);
    helper.run();

    let live = agent.metrics();
    // Each map refused calls: the checks below cover every way a call can fold.
    for map in ["counts", "errors", "latency"] {
        assert!(folded(&live, map) > 0.0, "the {map} map refused some calls");
    }
    let overflow = [("process_executable_name", "__overflow__")];
    assert!(live.sum("syscall_errors_total", &overflow) > 0.0);
    assert!(live.sum("syscall_duration_seconds_count", &overflow) > 0.0);
    let with_pid = live
        .find("syscall_errors_total", &[])
        .filter(|(_, labels, value)| labels.contains_key("process_pid") && *value > 0.0)
        .count();
    assert!(with_pid > 0, "some processes kept their own error series");
    let (errors, timed) = assert_series_agree(&live, "live processes");
    assert!(errors > 1 && timed > 1, "{errors} error and {timed} histogram series");
    assert_totals_exact(&live, "live processes");

    // The children exit; with a TTL of 0 the next scrape folds their series.
    helper.go();
    helper.expect_line("done");
    let exited = agent.metrics();
    let pids = exited
        .find("syscalls_total", &[("process_executable_name", NAME)])
        .filter(|(_, labels, _)| labels.contains_key("process_pid"))
        .count();
    assert_eq!(pids, 0, "every child's series folded into the aggregate");
    assert!(
        exited.sum("syscall_errors_total", &[("process_executable_name", NAME)]) > 0.0,
        "the aggregate has errors"
    );
    let (errors, timed) = assert_series_agree(&exited, "exited processes");
    assert!(errors > 1 && timed > 1, "{errors} error and {timed} histogram series");
    assert_totals_exact(&exited, "exited processes");
    helper.finish();
}
