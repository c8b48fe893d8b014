//! End-to-end: SIGTERM and SIGKILL leave nothing of ours attached or loaded.

mod common;

use std::time::Duration;

use common::{have_root, kernel_lock, our_programs, Agent};

fn wait_until_no_programs_of_ours() -> Vec<String> {
    // Program teardown after the last descriptor closes is deferred by the kernel (RCU).
    let mut left = our_programs();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = our_programs();
    }
    left
}

#[test]
fn sigterm_detaches_everything() {
    if !have_root("sigterm_detaches_everything") {
        return;
    }
    let _kernel = kernel_lock();
    assert_eq!(
        wait_until_no_programs_of_ours(),
        Vec::<String>::new(),
        "clean start"
    );
    let mut agent = Agent::start("");
    assert!(
        !our_programs().is_empty(),
        "the agent's programs are loaded"
    );
    agent.signal(libc::SIGTERM);
    let status = agent.child.wait().expect("agent exits");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert_eq!(wait_until_no_programs_of_ours(), Vec::<String>::new());
}

#[test]
fn sigint_detaches_everything() {
    if !have_root("sigint_detaches_everything") {
        return;
    }
    let _kernel = kernel_lock();
    let mut agent = Agent::start("");
    agent.signal(libc::SIGINT);
    let status = agent.child.wait().expect("agent exits");
    assert!(status.success(), "clean exit on SIGINT: {status}");
    assert_eq!(wait_until_no_programs_of_ours(), Vec::<String>::new());
}

#[test]
fn sigkill_leaves_nothing_behind() {
    if !have_root("sigkill_leaves_nothing_behind") {
        return;
    }
    let _kernel = kernel_lock();
    let mut agent = Agent::start("");
    assert!(!our_programs().is_empty());
    agent.signal(libc::SIGKILL);
    let _ = agent.child.wait();
    assert_eq!(wait_until_no_programs_of_ours(), Vec::<String>::new());
}

/// Every duration at the top of its range (values past it once overflowed the clock and
/// panicked the collector), and the JSON-lines exporter at its most files of the least
/// size: the agent serves, and SIGTERM stops it cleanly with nothing left attached.
#[test]
fn an_agent_at_the_top_of_every_range_runs_and_stops_cleanly() {
    if !have_root("an_agent_at_the_top_of_every_range_runs_and_stops_cleanly") {
        return;
    }
    let _kernel = kernel_lock();
    let dir = common::TempDir::new("ranges");
    let jsonl = dir.path().join("out.jsonl");
    let config = format!(
        "prometheus:\n  header_read_timeout_secs: 3600\n  max_connections: 65536\n\
         processes:\n  exited_ttl_secs: 604800\n\
         self_metrics:\n  bpf_stats: sampled\n  bpf_stats_sample_secs: 86400\n  bpf_stats_period_secs: 604800\n\
         probes:\n  syscalls:\n    latency_sample_secs: 86400\n    latency_period_secs: 604800\n  tcp:\n    sample_interval_secs: 86400\n\
         exporters:\n  jsonl:\n    enabled: true\n    path: \"{}\"\n    metrics_interval_secs: 1\n    max_files: 1000\n    max_file_bytes: 4096\n",
        jsonl.display()
    );
    let mut agent = Agent::start(&config);
    // Long enough for a few snapshots, each larger than a file: rotation at every one.
    std::thread::sleep(Duration::from_millis(2500));
    let m = agent.metrics();
    assert_eq!(m.one("periscope_probe_up", &[("probe", "syscalls")]), 1.0);
    assert!(jsonl.exists(), "the exporter writes its file");
    agent.signal(libc::SIGTERM);
    let status = agent.child.wait().expect("the agent exits");
    assert!(status.success(), "a clean exit: {status}");
    assert_eq!(wait_until_no_programs_of_ours(), Vec::<String>::new());
}

/// A symbolic link planted by an unprivileged user where the JSON-lines file goes, in a
/// directory anyone may write to: the agent (root) never writes through it.
#[test]
fn a_symlink_planted_by_another_user_is_not_followed() {
    if !have_root("a_symlink_planted_by_another_user_is_not_followed") {
        return;
    }
    let _kernel = kernel_lock();
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new("planted");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let target = dir.path().join("root-only");
    std::fs::write(&target, "root's secret\n").expect("target");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let path = shared.join("periscope.jsonl");
    let planted = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "ln", "-s"])
        .arg(&target)
        .arg(&path)
        .status()
        .expect("runuser runs");
    assert!(planted.success(), "nobody plants the link");
    let config = format!(
        "exporters:\n  jsonl:\n    enabled: true\n    path: \"{}\"\n    metrics_interval_secs: 1\n",
        path.display()
    );
    let agent = Agent::start(&config);
    std::thread::sleep(Duration::from_millis(2500));
    // Still serving, and the target is as it was.
    assert_eq!(
        agent
            .metrics()
            .one("periscope_probe_up", &[("probe", "syscalls")]),
        1.0
    );
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "root's secret\n"
    );
    assert!(std::fs::symlink_metadata(&path)
        .expect("the link")
        .file_type()
        .is_symlink());
}

/// Each thread's name, CapEff, CapBnd and NoNewPrivs, from /proc/PID/task/*/status.
fn thread_privileges(pid: u32) -> Vec<(String, u64, u64, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status =
            std::fs::read_to_string(task.expect("task").path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap_or(u64::MAX);
        found.push((
            field("Name:"),
            hex("CapEff:"),
            hex("CapBnd:"),
            field("NoNewPrivs:"),
        ));
    }
    found
}

/// Run as root outside any unit, once started every thread of the agent has
/// NoNewPrivs set and a bounding set no larger than what it kept: the threads that face
/// the network keep no capability at all, and none can come back.
#[test]
fn every_thread_runs_with_no_new_privileges_and_a_bounding_set_of_what_it_kept() {
    if !have_root("every_thread_runs_with_no_new_privileges_and_a_bounding_set_of_what_it_kept") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("exporters:\n  jsonl:\n    enabled: true\n");
    agent.metrics();
    let threads = thread_privileges(agent.pid());
    // The threads that face the network run under the seccomp filter (mode 2).
    let seccomp = |name: &str| {
        let pid = agent.pid();
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
            .filter(|status| status.lines().any(|l| l == format!("Name:\t{name}")))
            .map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Seccomp:"))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    for name in ["periscope", "jsonl"] {
        let modes = seccomp(name);
        assert!(!modes.is_empty(), "no {name} thread");
        assert!(modes.iter().all(|m| m == "2"), "{name}: {modes:?}");
    }
    assert!(threads.len() >= 2, "{threads:?}");
    for (name, effective, bounding, no_new_privs) in &threads {
        assert_eq!(no_new_privs, "1", "{name}: {threads:?}");
        assert_eq!(
            bounding & !effective,
            0,
            "{name} could regain capabilities: {threads:?}"
        );
        if name != "collector" {
            assert_eq!(*effective, 0, "{name} keeps capabilities: {threads:?}");
        }
    }
    let collector = threads
        .iter()
        .find(|(name, ..)| name == "collector")
        .expect("the collector thread");
    assert_ne!(collector.1, 0, "the collector keeps what it needs");
}
