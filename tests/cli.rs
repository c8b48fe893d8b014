//! The command line: config errors are precise and fatal; help exists for each command.

mod common;

use std::process::Command;

use common::{periscope_bin, TempDir};

fn check_config(contents: &str) -> (bool, String, String) {
    let dir = TempDir::new("cli");
    let path = dir.write("bad.yaml", contents);
    let out = Command::new(periscope_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("periscope runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn unknown_key_is_fatal_and_located() {
    let (ok, stderr, path) = check_config("prometheus:\n  listen_adress: \"127.0.0.1:1\"\n");
    assert!(!ok);
    assert!(stderr.contains(&format!("{path}:2:")), "{stderr}");
    assert!(
        stderr.contains("key `prometheus.listen_adress`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("expected one of `listen_address`"),
        "{stderr}"
    );
}

#[test]
fn wrong_type_is_fatal_and_located() {
    let (ok, stderr, path) =
        check_config("probes:\n  syscalls:\n    enabled: true\n    max_series: lots\n");
    assert!(!ok);
    assert!(stderr.contains(&format!("{path}:4:")), "{stderr}");
    assert!(
        stderr.contains("key `probes.syscalls.max_series`"),
        "{stderr}"
    );
    assert!(stderr.contains("invalid type"), "{stderr}");
}

#[test]
fn bad_yaml_is_fatal_and_located() {
    let (ok, stderr, path) = check_config("probes:\n  syscalls: {enabled: true\n  process: x\n");
    assert!(!ok);
    assert!(stderr.contains(&format!("{path}:")), "{stderr}");
    assert!(stderr.contains("error"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_config_before_loading_anything() {
    let dir = TempDir::new("cli-run");
    let path = dir.write("bad.yaml", "processes:\n  pid_label: 3\n");
    let out = Command::new(periscope_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("periscope runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("processes.pid_label"), "{stderr}");
}

#[test]
fn valid_config_passes_check() {
    let dir = TempDir::new("cli-ok");
    let path = dir.write("ok.yaml", "probes:\n  process:\n    enabled: false\n");
    let out = Command::new(periscope_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("periscope runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["probes", "--help"],
        vec!["check-config", "--help"],
    ] {
        let out = Command::new(periscope_bin())
            .args(&args)
            .output()
            .expect("periscope runs");
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn probes_lists_each_probe_with_its_attach_method() {
    if !common::have_root("probes_lists_each_probe_with_its_attach_method") {
        return;
    }
    let _kernel = common::kernel_lock();
    let stdout = probes_output(&[], &[]);
    assert!(stdout.contains("BTF:              yes"), "{stdout}");
    let syscalls = stdout
        .lines()
        .find(|l| l.starts_with("syscalls "))
        .expect("syscalls row");
    assert!(
        syscalls.contains("yes") && syscalls.contains("tp_btf/sys_exit"),
        "{syscalls}"
    );
    let process = stdout
        .lines()
        .find(|l| l.starts_with("process "))
        .expect("process row");
    assert!(process.contains("tp_btf/sched_process_exec"), "{process}");
}

/// Runs `periscope probes ARGS` with `env`; its stdout.
fn probes_output(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(periscope_bin())
        .arg("probes")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("periscope runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn probes_features_are_what_real_loads_say_and_match_the_probes_choices() {
    if !common::have_root("probes_features_are_what_real_loads_say_and_match_the_probes_choices") {
        return;
    }
    let _kernel = common::kernel_lock();
    let stdout = probes_output(&["--features"], &[]);
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in {stdout}"))
            .to_string()
    };
    for feature in [
        "tp_btf",
        "raw_tp",
        "uprobes",
        "kprobes",
        "fentry",
        "ring buffer",
        "task storage",
        "socket storage",
        "bpf_dynptr_from_skb",
        "cgroup_skb",
        "iter/task ",
        "iter/tcp",
        "iter/bpf_map_elem",
    ] {
        let line = row(feature);
        assert!(
            line.contains(" yes ") || line.contains(" no ("),
            "each feature is answered yes or no (why): {line}"
        );
    }
    // Every probe stands on tp_btf: the machines that run this suite have it.
    assert!(row("tp_btf").contains(" yes "));
    // The tcp probe samples with the first form the kernel takes.
    let tcp = row("tcp ");
    if row("iter/bpf_map_elem").contains(" yes ") {
        assert!(tcp.contains("iter/bpf_map_elem"), "{tcp}");
    } else {
        assert!(tcp.contains("syscall program's walk"), "{tcp}");
    }
}

#[test]
fn probes_shows_each_degraded_feature() {
    if !common::have_root("probes_shows_each_degraded_feature") {
        return;
    }
    let _kernel = common::kernel_lock();
    let stdout = probes_output(
        &[],
        &[(
            "PERISCOPE_TEST_REFUSE_PROGRAMS",
            "psc_tcp_iter,psc_tcp_walk,psc_oom_victim",
        )],
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let tcp = lines
        .iter()
        .position(|l| l.starts_with("tcp "))
        .expect("tcp row");
    assert!(lines[tcp].contains("degraded"), "{stdout}");
    assert!(
        lines[tcp + 1].contains("without sampling of open connections")
            && lines[tcp + 1].contains("psc_tcp_walk"),
        "{stdout}"
    );
    let process = lines
        .iter()
        .position(|l| l.starts_with("process "))
        .expect("process row");
    assert!(lines[process].contains("degraded"), "{stdout}");
    assert!(lines[process + 1].contains("without OOM kills"), "{stdout}");
    let syscalls = lines
        .iter()
        .find(|l| l.starts_with("syscalls "))
        .expect("syscalls row");
    assert!(!syscalls.contains("degraded"), "{stdout}");
}

#[test]
fn a_refused_required_program_disables_only_its_probe_and_names_the_kernel_feature() {
    if !common::have_root(
        "a_refused_required_program_disables_only_its_probe_and_names_the_kernel_feature",
    ) {
        return;
    }
    let _kernel = common::kernel_lock();
    let stdout = probes_output(&[], &[("PERISCOPE_TEST_REFUSE_PROGRAMS", "psc_tcp_state")]);
    let tcp = stdout
        .lines()
        .find(|l| l.starts_with("tcp "))
        .expect("tcp row");
    assert!(
        tcp.contains(" no ")
            && tcp.contains("psc_tcp_state")
            && tcp.contains("tp_btf/inet_sock_set_state")
            && tcp.contains("EPERM"),
        "{tcp}"
    );
    let syscalls = stdout
        .lines()
        .find(|l| l.starts_with("syscalls "))
        .expect("syscalls row");
    assert!(syscalls.contains(" yes "), "{syscalls}");
}

#[test]
fn invalid_utf8_and_oversized_files_are_located() {
    let dir = TempDir::new("cli");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, b"probes:\n  syscalls:\n    enabled: tr\xffue\n").expect("write");
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, vec![b'#'; 2 << 20]).expect("write");
    for (path, want) in [
        (&bad, ":3:16: the file is not valid UTF-8"),
        (&huge, ":1:1: the file is 2097152 bytes"),
    ] {
        let out = Command::new(periscope_bin())
            .arg("check-config")
            .arg(path)
            .output()
            .expect("periscope runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!("{}{want}", path.display())),
            "{stderr}"
        );
    }
}
