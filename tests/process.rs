//! End-to-end: the process probe counts execs and exits of a burst of short-lived children.

mod common;

use std::process::Command;

use common::{have_root, kernel_lock, Agent, Metrics, TempDir};

#[test]
fn exact_exec_and_exit_counts_for_a_burst_of_children() {
    if !have_root("exact_exec_and_exit_counts_for_a_burst_of_children") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("");
    let dir = TempDir::new("burst");
    // Unique executable names, so other processes on the machine cannot add to the counts.
    let tag = std::process::id() % 100_000;
    let ok_name = format!("pscok{tag}");
    let err_name = format!("pscerr{tag}");
    let sig_name = format!("pscsig{tag}");
    let ok = dir.path().join(&ok_name);
    let err = dir.path().join(&err_name);
    let sig = dir.path().join(&sig_name);
    std::fs::copy("/bin/true", &ok).expect("copy true");
    std::fs::copy("/bin/false", &err).expect("copy false");
    std::fs::copy("/bin/sleep", &sig).expect("copy sleep");

    let (k_ok, k_err, k_sig) = (25, 7, 3);
    for _ in 0..k_ok {
        assert!(Command::new(&ok).status().expect("run").success());
    }
    for _ in 0..k_err {
        assert_eq!(Command::new(&err).status().expect("run").code(), Some(1));
    }
    for _ in 0..k_sig {
        let mut child = Command::new(&sig).arg("60").spawn().expect("run");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    let metrics = agent.metrics();
    let execs =
        |name: &str| metrics.one("process_execs_total", &[("process_executable_name", name)]);
    let exits = |name: &str, class: &str| {
        metrics.one(
            "process_exits_total",
            &[
                ("process_executable_name", name),
                ("exit_code_class", class),
            ],
        )
    };
    assert_eq!(execs(&ok_name), k_ok as f64);
    assert_eq!(exits(&ok_name, "ok"), k_ok as f64);
    assert_eq!(exits(&ok_name, "error"), 0.0);
    assert_eq!(execs(&err_name), k_err as f64);
    assert_eq!(exits(&err_name, "error"), k_err as f64);
    assert_eq!(exits(&err_name, "ok"), 0.0);
    assert_eq!(execs(&sig_name), k_sig as f64);
    assert_eq!(exits(&sig_name, "signal"), k_sig as f64);
    assert_eq!(
        metrics.one(
            "oom_kills_total",
            &[("process_executable_name", ok_name.as_str())]
        ),
        0.0
    );
}

#[test]
fn full_executables_map_folds_into_overflow_with_exact_totals() {
    if !have_root("full_executables_map_folds_into_overflow_with_exact_totals") {
        return;
    }
    let _kernel = kernel_lock();
    // The cap is tiny, and other processes on the machine take slots too: sum everything
    // with our names, overflow included, against a baseline.
    let agent = Agent::start("probes:\n  process:\n    max_executables: 3\n");
    let dir = TempDir::new("cap");
    let tag = std::process::id() % 100_000;
    let before = agent.metrics();
    let baseline_execs = before.sum("process_execs_total", &[]);
    let names: Vec<String> = (0..8).map(|i| format!("psccap{i}x{tag}")).collect();
    for name in &names {
        let path = dir.path().join(name);
        std::fs::copy("/bin/true", &path).expect("copy true");
        for _ in 0..4 {
            assert!(Command::new(&path).status().expect("run").success());
        }
    }
    let metrics = agent.metrics();
    let ours: f64 = names
        .iter()
        .map(|name| metrics.sum("process_execs_total", &[("process_executable_name", name)]))
        .sum();
    let mut folded_names = 0.0;
    for name in &names {
        match metrics
            .find("process_execs_total", &[("process_executable_name", name)])
            .next()
        {
            Some((_, _, value)) => assert_eq!(*value, 4.0, "{name} has its own exact series"),
            None => folded_names += 1.0,
        }
    }
    let overflow_before = before.sum(
        "process_execs_total",
        &[("process_executable_name", "__overflow__")],
    );
    let overflow = metrics.sum(
        "process_execs_total",
        &[("process_executable_name", "__overflow__")],
    );
    assert!(overflow > 0.0, "the overflow series exists");
    assert!(
        overflow - overflow_before >= 4.0 * folded_names,
        "every exec of a name without a series is in the overflow series"
    );
    assert!(ours < 32.0, "not every name got a series under a cap of 3");
    // All execs, named or folded, are there: ours plus whatever else ran meanwhile.
    assert!(metrics.sum("process_execs_total", &[]) - baseline_execs >= 32.0);
    assert!(
        metrics.one(
            "periscope_series_folded_total",
            &[("probe", "process"), ("map", "executables")]
        ) > 0.0
    );
    assert_eq!(
        metrics.one(
            "periscope_bpf_map_entries",
            &[("probe", "process"), ("map", "executables")]
        ),
        3.0
    );
}

/// Runs `runs` copies of /bin/true and `fails` of /bin/false under unique names, with
/// the agent refused `programs`; gives the metrics and the two names.
fn burst_with_refused(programs: &[&str], runs: usize, fails: usize) -> (Metrics, String, String) {
    let agent = Agent::start_refusing("", programs);
    let dir = TempDir::new("refused");
    let tag = std::process::id() % 100_000;
    let ok_name = format!("pscrok{tag}");
    let err_name = format!("pscrerr{tag}");
    std::fs::copy("/bin/true", dir.path().join(&ok_name)).expect("copy true");
    std::fs::copy("/bin/false", dir.path().join(&err_name)).expect("copy false");
    for _ in 0..runs {
        assert!(Command::new(dir.path().join(&ok_name))
            .status()
            .expect("run")
            .success());
    }
    for _ in 0..fails {
        assert_eq!(
            Command::new(dir.path().join(&err_name))
                .status()
                .expect("run")
                .code(),
            Some(1)
        );
    }
    (agent.metrics(), ok_name, err_name)
}

#[test]
fn without_the_exit_hook_execs_are_counted_exactly_and_exits_not_exported() {
    if !have_root("without_the_exit_hook_execs_are_counted_exactly_and_exits_not_exported") {
        return;
    }
    let _kernel = kernel_lock();
    let (m, ok, err) = burst_with_refused(&["psc_process_exit"], 12, 5);
    assert_eq!(m.degraded("process"), vec!["process exits"]);
    assert_eq!(
        m.one(
            "process_execs_total",
            &[("process_executable_name", ok.as_str())]
        ),
        12.0
    );
    assert_eq!(
        m.one(
            "process_execs_total",
            &[("process_executable_name", err.as_str())]
        ),
        5.0
    );
    assert_eq!(m.find("process_exits_total", &[]).count(), 0);
    assert_eq!(
        m.sum(
            "oom_kills_total",
            &[("process_executable_name", ok.as_str())]
        ),
        0.0
    );
    assert!(
        m.find("oom_kills_total", &[]).count() > 0,
        "OOM kills still exported"
    );
}

#[test]
fn without_the_oom_hook_execs_and_exits_are_counted_exactly() {
    if !have_root("without_the_oom_hook_execs_and_exits_are_counted_exactly") {
        return;
    }
    let _kernel = kernel_lock();
    let (m, ok, err) = burst_with_refused(&["psc_oom_victim"], 9, 4);
    assert_eq!(m.degraded("process"), vec!["OOM kills"]);
    let exits = |name: &str, class: &str| {
        m.one(
            "process_exits_total",
            &[
                ("process_executable_name", name),
                ("exit_code_class", class),
            ],
        )
    };
    assert_eq!(
        m.one(
            "process_execs_total",
            &[("process_executable_name", ok.as_str())]
        ),
        9.0
    );
    assert_eq!(exits(&ok, "ok"), 9.0);
    assert_eq!(exits(&err, "error"), 4.0);
    assert_eq!(m.find("oom_kills_total", &[]).count(), 0);
}

/// A program named like the series caps fold into cannot pass for it: its counts keep a
/// name of their own, and nothing is reported folded.
#[test]
fn a_program_named_overflow_cannot_forge_the_overflow_series() {
    if !have_root("a_program_named_overflow_cannot_forge_the_overflow_series") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("");
    let dir = TempDir::new("forged");
    let forged = dir.path().join("__overflow__");
    std::fs::copy("/bin/true", &forged).expect("copy true");
    for _ in 0..6 {
        assert!(Command::new(&forged).status().expect("run").success());
    }
    let m = agent.metrics();
    assert_eq!(
        m.one(
            "process_execs_total",
            &[("process_executable_name", "__overflow__~")]
        ),
        6.0
    );
    assert_eq!(
        m.sum(
            "process_execs_total",
            &[("process_executable_name", "__overflow__")]
        ),
        0.0,
        "the overflow series holds nothing: nothing was folded"
    );
    assert_eq!(
        m.one(
            "periscope_series_folded_total",
            &[("probe", "process"), ("map", "executables")]
        ),
        0.0
    );
}

/// Names are free to mint (prctl, or a copied binary), and the kernel's map of
/// executables is capped: names idle for the TTL leave it, so new ones are counted under
/// their own names instead of folding, and counts stay exact.
#[test]
fn idle_executables_leave_the_kernel_map_and_new_names_keep_their_own_series() {
    if !have_root("idle_executables_leave_the_kernel_map_and_new_names_keep_their_own_series") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "processes:\n  exited_ttl_secs: 0\nprobes:\n  process:\n    max_executables: 16\n",
    );
    let dir = TempDir::new("minted");
    let tag = std::process::id() % 10_000;
    let names: Vec<String> = (0..40).map(|i| format!("pscm{tag}x{i}")).collect();
    for name in &names {
        let path = dir.path().join(name);
        std::fs::copy("/bin/true", &path).expect("copy true");
        for _ in 0..3 {
            assert!(Command::new(&path).status().expect("run").success());
        }
        // A collection sees the name once; the next finds it idle and retires it.
        agent.metrics();
        agent.metrics();
    }
    let m = agent.metrics();
    for name in &names {
        assert_eq!(
            m.one(
                "process_execs_total",
                &[("process_executable_name", name.as_str())]
            ),
            3.0,
            "{name}"
        );
        assert_eq!(
            m.one(
                "process_exits_total",
                &[
                    ("process_executable_name", name.as_str()),
                    ("exit_code_class", "ok")
                ]
            ),
            3.0,
            "{name}"
        );
    }
    assert!(m.one("periscope_series_expired_total", &[("probe", "process")]) >= 40.0);
    let fill = m.one(
        "periscope_bpf_map_entries",
        &[("probe", "process"), ("map", "executables")],
    );
    assert!(fill <= 16.0, "{fill}");
}
