//! Containers, end to end: real Docker and containerd containers, and hand-made cgroups
//! of the systemd layouts, run known workloads; their series must carry the container's
//! and pod's exact ids and names, with exact counts.
//!
//! Nothing is pulled from a registry: the containers run a root filesystem built here
//! from Debian's busybox-static and a static build of `bench/getppid_loop.c`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{
    docker_ready, eventually, free_port, have_root, kernel_lock, run_ok as run, Agent,
    HandMadeCgroup, Metrics,
};

const CONFIG: &str = "probes:\n  process:\n    enabled: false\n  tcp:\n    enabled: true\n    sample_interval_secs: 0\n";
const CONTAINERD: &str = "/run/docker/containerd/containerd.sock";
const POD_UID: &str = "0f3e6a1c-6f4b-4b1e-9a1e-2f8c9d7b6a51";

/// The test root filesystem: busybox and a static getppid loop, built once.
fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        // Under the build's own scratch directory: rebuilt by each run, never piling up.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containers-rootfs");
        let _ = std::fs::remove_dir_all(&root);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("rootfs dir");
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("busybox (scripts/setup.sh --test installs busybox-static)");
        for applet in ["sh", "sleep", "nc", "cat", "echo"] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/getppid_loop.c");
        run(Command::new("cc")
            .args(["-O2", "-static", "-o"])
            .arg(bin.join("getppid_loop"))
            .arg(source));
        root
    })
}

/// The rootfs as a Docker image, imported once.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = "periscope-test-busybox:e2e".to_string();
        let tar_file = rootfs().with_extension("tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(rootfs())
            .arg("-cf")
            .arg(&tar_file)
            .arg("."));
        run(Command::new("docker")
            .args(["import", "--change", "LABEL periscope.test=1"])
            .arg(&tar_file)
            .arg(&tag));
        let _ = std::fs::remove_file(&tar_file);
        // The previous run's image lost the tag: remove it.
        run(Command::new("docker").args([
            "image",
            "prune",
            "--force",
            "--filter",
            "label=periscope.test=1",
        ]));
        tag
    })
}

/// A Docker container, removed when dropped.
struct DockerContainer {
    id: String,
}

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Accepts and closes every connection on a loopback port, until the test ends.
fn closing_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    port
}

fn wait_for_log(container: &str, line: &str) {
    for _ in 0..200 {
        let logs = run(Command::new("docker").args(["logs", container]));
        if logs.lines().any(|l| l == line) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("container {container} never printed {line:?}");
}

fn labels_of<'a>(
    metrics: &'a Metrics,
    name: &'a str,
    want: &'a [(&'a str, &'a str)],
) -> Vec<&'a std::collections::BTreeMap<String, String>> {
    metrics
        .find(name, want)
        .map(|(_, labels, _)| labels)
        .collect()
}

#[test]
fn a_docker_containers_series_carry_its_id_and_name() {
    let _kernel = kernel_lock();
    if !have_root("a_docker_containers_series_carry_its_id_and_name")
        || !docker_ready("a_docker_containers_series_carry_its_id_and_name")
    {
        return;
    }
    let port = closing_listener();
    let agent = Agent::start(CONFIG);
    let name = format!("periscope-e2e-live-{}", std::process::id());
    let script = format!(
        "getppid_loop 4321 >/dev/null; for i in 1 2 3 4 5; do nc 127.0.0.1 {port} </dev/null; done; echo done; sleep 600"
    );
    let container = DockerContainer {
        id: run(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            image(),
            "sh",
            "-c",
            &script,
        ])),
    };
    wait_for_log(&container.id, "done");
    let id = container.id.as_str();
    let port_text = port.to_string();
    let ours = [("container_id", id), ("container_name", name.as_str())];
    let getppid = [
        ours[0],
        ours[1],
        ("process_executable_name", "getppid_loop"),
        ("syscall", "getppid"),
    ];
    let connects = [
        ours[0],
        ours[1],
        ("direction", "outbound"),
        ("peer_port", port_text.as_str()),
    ];
    let metrics = eventually(&agent, |m| {
        m.sum("syscalls_total", &getppid) == 4321.0
            && m.sum("tcp_connections_opened_total", &connects) == 5.0
    });
    assert_eq!(metrics.one("syscalls_total", &getppid), 4321.0);
    assert_eq!(metrics.sum("tcp_connections_opened_total", &connects), 5.0);
    // The accepting side is this test, on the host: no container labels.
    let inbound = [
        ("direction", "inbound"),
        ("server_port", port_text.as_str()),
    ];
    assert_eq!(metrics.sum("tcp_connections_opened_total", &inbound), 5.0);
    for labels in labels_of(&metrics, "tcp_connections_opened_total", &inbound) {
        assert!(!labels.contains_key("container_id"), "{labels:?}");
    }
    // Every series of the container's processes carries both labels.
    for (family, labels, _) in &metrics.samples {
        if labels.get("container_id").map(String::as_str) == Some(id) {
            assert_eq!(
                labels.get("container_name"),
                Some(&name),
                "{family} {labels:?}"
            );
        }
    }
}

#[test]
fn a_containers_process_gone_before_the_scrape_keeps_its_labels() {
    let _kernel = kernel_lock();
    if !have_root("a_containers_process_gone_before_the_scrape_keeps_its_labels")
        || !docker_ready("a_containers_process_gone_before_the_scrape_keeps_its_labels")
    {
        return;
    }
    let agent = Agent::start(CONFIG);
    let name = format!("periscope-e2e-exited-{}", std::process::id());
    let container = DockerContainer {
        id: run(Command::new("docker").args([
            "create",
            "--name",
            &name,
            "--network",
            "none",
            image(),
            "sh",
            "-c",
            "getppid_loop 777 >/dev/null; echo done",
        ])),
    };
    // Runs to its end: the process and its cgroup are gone before the agent reads them,
    // so its container can only come from what the kernel recorded.
    run(Command::new("docker").args(["start", "-a", &container.id]));
    let getppid = [
        ("container_id", container.id.as_str()),
        ("container_name", name.as_str()),
        ("process_executable_name", "getppid_loop"),
        ("syscall", "getppid"),
    ];
    let metrics = eventually(&agent, |m| m.sum("syscalls_total", &getppid) == 777.0);
    assert_eq!(metrics.one("syscalls_total", &getppid), 777.0);
}

/// A fake kubelet: serves `/pods` with one pod on a loopback port until dropped.
struct FakeKubelet {
    child: std::process::Child,
    port: u16,
}

/// TLS for a fake kubelet: its certificate and key, and the token it wants.
struct KubeletTls<'a> {
    cert: &'a Path,
    key: &'a Path,
    token: &'a str,
}

impl FakeKubelet {
    fn start(pod_uid: &str, container_id: &str) -> FakeKubelet {
        FakeKubelet::start_with(pod_uid, container_id, None)
    }

    fn start_with(pod_uid: &str, container_id: &str, tls: Option<KubeletTls>) -> FakeKubelet {
        let port = free_port();
        let pods = format!(
            r#"{{"kind":"PodList","apiVersion":"v1","items":[{{"metadata":{{"name":"checkout-7d4b9","namespace":"shop","uid":"{pod_uid}"}},"spec":{{"nodeName":"node-1"}},"status":{{"phase":"Running","containerStatuses":[{{"name":"payments","containerID":"containerd://{container_id}","ready":true}}]}}}}]}}"#
        );
        let script = r#"
import http.server, ssl, sys
body = sys.argv[2].encode()
token = sys.argv[5] if len(sys.argv) > 5 else None
class Pods(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if token is not None and self.headers.get("Authorization") != "Bearer " + token:
            self.send_error(401)
            return
        if self.path != "/pods":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Pods)
if len(sys.argv) > 3:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
        let mut command = Command::new("python3");
        command.args(["-c", script, &port.to_string(), &pods]);
        if let Some(tls) = &tls {
            command.arg(tls.cert).arg(tls.key).arg(tls.token);
        }
        let child = command.spawn().expect("python3");
        // Dropped (and so killed) if it never listens.
        let kubelet = FakeKubelet { child, port };
        assert!(
            common::listening_soon(port),
            "the fake kubelet did not start"
        );
        kubelet
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A containerd container in a Kubernetes cgroup layout, removed when dropped.
struct CtrContainer {
    id: String,
    child: std::process::Child,
}

impl CtrContainer {
    fn start(id: &str, cgroup: &str, script: &str) -> CtrContainer {
        let child = Command::new("ctr")
            .args(["-a", CONTAINERD, "-n", "k8s.io", "run", "--rm", "--rootfs"])
            .args(["--env", "PATH=/bin", "--cgroup", cgroup, "--net-host"])
            .arg(rootfs())
            .args([id, "/bin/sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ctr (docker.io brings containerd and ctr)");
        CtrContainer {
            id: id.to_string(),
            child,
        }
    }

    fn wait_line(&mut self, want: &str) {
        let stdout = self.child.stdout.take().expect("stdout");
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("container output");
        assert_eq!(line.trim(), want, "the container's first line");
    }
}

impl Drop for CtrContainer {
    fn drop(&mut self) {
        let ctr = |args: &[&str]| {
            let _ = Command::new("ctr")
                .args(["-a", CONTAINERD, "-n", "k8s.io"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        let _ = self.child.wait();
        ctr(&["task", "delete", "-f", &self.id]);
        ctr(&["container", "delete", &self.id]);
    }
}

fn container_id(seed: u32) -> String {
    format!("{:064x}", 0xc0ffee_u64 << 32 | u64::from(seed))
}

#[test]
fn a_containerd_pod_container_gets_its_pod_names_from_the_kubelet() {
    let _kernel = kernel_lock();
    if !have_root("a_containerd_pod_container_gets_its_pod_names_from_the_kubelet")
        || !docker_ready("a_containerd_pod_container_gets_its_pod_names_from_the_kubelet")
    {
        return;
    }
    let id = container_id(std::process::id());
    let kubelet = FakeKubelet::start(POD_UID, &id);
    let config = format!(
        "{CONFIG}workloads:\n  kubelet_url: \"http://127.0.0.1:{}\"\n  refresh_secs: 1\n",
        kubelet.port
    );
    let agent = Agent::start(&config);
    assert_pod_names_from_the_kubelet(&agent, &id, 2468);
}

/// Runs `calls` getppid calls in a containerd container `id` of the pod the fake kubelet
/// serves, and checks they carry the pod's names, with no failed lookup.
fn assert_pod_names_from_the_kubelet(agent: &Agent, id: &str, calls: u32) {
    let mut container = CtrContainer::start(
        id,
        &format!("/kubepods/burstable/pod{POD_UID}/{id}"),
        &format!("getppid_loop {calls} >/dev/null; echo done; sleep 600"),
    );
    container.wait_line("done");
    let want = [
        ("container_id", id),
        ("container_name", "payments"),
        ("k8s_namespace_name", "shop"),
        ("k8s_pod_name", "checkout-7d4b9"),
        ("k8s_pod_uid", POD_UID),
        ("k8s_container_name", "payments"),
        ("process_executable_name", "getppid_loop"),
        ("syscall", "getppid"),
    ];
    let calls = f64::from(calls);
    let metrics = eventually(agent, |m| m.sum("syscalls_total", &want) == calls);
    assert_eq!(metrics.one("syscalls_total", &want), calls);
    assert_eq!(
        metrics.one(
            "periscope_workload_lookups_total",
            &[("source", "kubelet"), ("outcome", "failure")]
        ),
        0.0
    );
}

#[test]
fn with_the_kubelet_down_pod_labels_fall_back_to_ids() {
    let _kernel = kernel_lock();
    if !have_root("with_the_kubelet_down_pod_labels_fall_back_to_ids")
        || !docker_ready("with_the_kubelet_down_pod_labels_fall_back_to_ids")
    {
        return;
    }
    let id = container_id(std::process::id() + 1);
    // Nothing listens on this port.
    let config = format!(
        "{CONFIG}workloads:\n  kubelet_url: \"http://127.0.0.1:{}\"\n  refresh_secs: 1\n  timeout_ms: 200\n",
        free_port()
    );
    let agent = Agent::start(&config);
    let mut container = CtrContainer::start(
        &id,
        &format!("/kubepods/besteffort/pod{POD_UID}/{id}"),
        "getppid_loop 1357 >/dev/null; echo done; sleep 600",
    );
    container.wait_line("done");
    let want = [
        ("container_id", id.as_str()),
        ("k8s_pod_uid", POD_UID),
        ("process_executable_name", "getppid_loop"),
        ("syscall", "getppid"),
    ];
    let failures = [("source", "kubelet"), ("outcome", "failure")];
    let metrics = eventually(&agent, |m| {
        m.sum("syscalls_total", &want) == 1357.0
            && m.sum("periscope_workload_lookups_total", &failures) >= 1.0
    });
    assert_eq!(metrics.one("syscalls_total", &want), 1357.0);
    for labels in labels_of(&metrics, "syscalls_total", &want) {
        for name in ["k8s_pod_name", "k8s_namespace_name", "k8s_container_name"] {
            assert!(!labels.contains_key(name), "{labels:?}");
        }
    }
    assert!(metrics.sum("periscope_workload_lookups_total", &failures) >= 1.0);
    assert!(
        common::http_get(agent.port, "/healthz", None).is_some_and(|(status, _)| status == 200),
        "the agent keeps serving"
    );
}

#[test]
fn systemd_style_cgroups_are_recognised_end_to_end() {
    let _kernel = kernel_lock();
    if !have_root("systemd_style_cgroups_are_recognised_end_to_end") {
        return;
    }
    let agent = Agent::start(CONFIG);
    let uid_in_slice = POD_UID.replace('-', "_");
    let layouts = [
        (
            container_id(11),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_in_slice}.slice/cri-containerd-{}.scope", container_id(11)),
            Some(POD_UID),
        ),
        (
            container_id(12),
            format!("/kubepods.slice/kubepods-pod{uid_in_slice}.slice/crio-{}.scope", container_id(12)),
            Some(POD_UID),
        ),
        (
            container_id(13),
            format!("/machine.slice/libpod-{}.scope", container_id(13)),
            None,
        ),
    ];
    let loop_bin = rootfs().join("bin/getppid_loop");
    for (n, (id, path, pod)) in layouts.iter().enumerate() {
        let cgroup = HandMadeCgroup::create(path);
        // The shell waits until it is in the cgroup, then runs the loop in a child (the
        // shell itself calls getppid).
        let mut child = Command::new("sh")
            .args(["-c", "read go; \"$0\" \"$1\" >/dev/null"])
            .arg(&loop_bin)
            .arg((1000 + n).to_string())
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        std::fs::write(cgroup.leaf().join("cgroup.procs"), child.id().to_string())
            .expect("move into the cgroup");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"go\n").expect("go");
        assert!(child.wait().expect("wait").success());
        let calls = (1000 + n).to_string();
        let mut want = vec![
            ("container_id", id.as_str()),
            ("process_executable_name", "getppid_loop"),
            ("syscall", "getppid"),
        ];
        if let Some(uid) = pod {
            want.push(("k8s_pod_uid", uid));
        }
        let metrics = eventually(&agent, |m| {
            m.sum("syscalls_total", &want) == (1000 + n) as f64
        });
        assert_eq!(
            metrics.one("syscalls_total", &want),
            (1000 + n) as f64,
            "{path}: {calls}"
        );
        if pod.is_none() {
            for labels in labels_of(&metrics, "syscalls_total", &want) {
                assert!(!labels.contains_key("k8s_pod_uid"), "{labels:?}");
            }
        }
    }
}

/// Starts `program args` under pid `pid`, with no input or output.
fn spawn_with_pid(pid: u32, program: &Path, args: &[&str]) -> std::process::Child {
    common::spawn_as_pid(pid, || {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    })
}

#[test]
fn a_reused_pid_never_takes_the_old_processs_labels() {
    let _kernel = kernel_lock();
    if !have_root("a_reused_pid_never_takes_the_old_processs_labels") {
        return;
    }
    let agent = Agent::start(CONFIG);
    let id = container_id(21);
    let cgroup = HandMadeCgroup::create(&format!("/docker/{id}"));
    let loop_bin = rootfs().join("bin/getppid_loop");
    // The old process: in a container, gone before the agent ever reads it.
    let mut old = Command::new(&loop_bin);
    old.arg("500").stdout(Stdio::null());
    cgroup.enter_before_exec(&mut old);
    let mut old = old.spawn().expect("the old process");
    let pid = old.id();
    assert!(old.wait().expect("wait").success());
    // Start times are told apart to the clock tick (10 ms).
    std::thread::sleep(Duration::from_millis(50));
    // The new process: same pid, on the host.
    let mut new = spawn_with_pid(pid, &loop_bin, &["300"]);
    assert!(new.wait().expect("wait").success());

    // Both are gone: each keeps a series of its own under the pid, with its own labels.
    let pid_text = pid.to_string();
    let ours = [("process_pid", pid_text.as_str()), ("syscall", "getppid")];
    let old_series = [ours[0], ours[1], ("container_id", id.as_str())];
    let metrics = eventually(&agent, |m| {
        m.sum("syscalls_total", &ours) == 800.0 && m.sum("syscalls_total", &old_series) == 500.0
    });
    assert_eq!(metrics.one("syscalls_total", &old_series), 500.0);
    let new: Vec<_> = metrics
        .find("syscalls_total", &ours)
        .filter(|(_, labels, _)| !labels.contains_key("container_id"))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].2, 300.0);
}

#[test]
fn a_reused_pids_connections_keep_their_own_labels() {
    let _kernel = kernel_lock();
    if !have_root("a_reused_pids_connections_keep_their_own_labels") {
        return;
    }
    let port = closing_listener();
    let agent = Agent::start(CONFIG);
    let id = container_id(22);
    let cgroup = HandMadeCgroup::create(&format!("/docker/{id}"));
    let busybox = rootfs().join("bin/busybox");
    let target = ["nc", "127.0.0.1", &port.to_string()].map(String::from);
    // The old process connects from a container, and is gone before the agent reads it.
    let mut old = Command::new(&busybox);
    old.args(&target).stdin(Stdio::null()).stdout(Stdio::null());
    cgroup.enter_before_exec(&mut old);
    let mut old = old.spawn().expect("the old process");
    let pid = old.id();
    assert!(old.wait().expect("wait").success());
    std::thread::sleep(Duration::from_millis(50));
    let target: Vec<&str> = target.iter().map(String::as_str).collect();
    let mut new = spawn_with_pid(pid, &busybox, &target);
    assert!(new.wait().expect("wait").success());

    let pid_text = pid.to_string();
    let port_text = port.to_string();
    let ours = [
        ("process_pid", pid_text.as_str()),
        ("direction", "outbound"),
        ("peer_port", port_text.as_str()),
    ];
    let metrics = eventually(&agent, |m| {
        m.sum("tcp_connections_opened_total", &ours) == 2.0
    });
    let series: Vec<_> = metrics
        .find("tcp_connections_opened_total", &ours)
        .collect();
    assert_eq!(series.len(), 2, "{series:?}");
    let in_container: Vec<_> = series
        .iter()
        .filter(|(_, labels, _)| labels.get("container_id") == Some(&id))
        .collect();
    assert_eq!(in_container.len(), 1, "{series:?}");
    assert_eq!(in_container[0].2, 1.0);
    assert!(
        series.iter().all(|(_, _, value)| *value == 1.0),
        "{series:?}"
    );
}

/// Runs the getppid loop `calls` times inside `cgroup` (moved there before its exec);
/// returns its pid once it has exited.
fn loop_in_cgroup(cgroup: &HandMadeCgroup, calls: u32) -> u32 {
    let mut command = Command::new(rootfs().join("bin/getppid_loop"));
    command.arg(calls.to_string()).stdout(Stdio::null());
    cgroup.enter_before_exec(&mut command);
    let mut child = command.spawn().expect("the loop");
    let pid = child.id();
    assert!(child.wait().expect("wait").success());
    pid
}

/// Tenant rules for the cgroups `*/noisy` and `*/quiet`.
const NOISY_AND_QUIET: &str = "tenants:\n  rules:\n    - tenant: noisy\n      cgroup_path: \"*/noisy\"\n    - tenant: quiet\n      cgroup_path: \"*/quiet\"\n";

/// Runs getppid loops of 100, 200, ... `noisy_runs` x 100 calls in the noisy cgroup, then
/// one of 700 in the quiet one. Returns the metrics once both tenants' getppid totals
/// are in, and the quiet loop's pid.
fn noisy_then_quiet(
    agent: &Agent,
    noisy: &HandMadeCgroup,
    quiet: &HandMadeCgroup,
    noisy_runs: u32,
) -> (Metrics, String) {
    for n in 1..=noisy_runs {
        loop_in_cgroup(noisy, n * 100);
    }
    let quiet_pid = loop_in_cgroup(quiet, 700).to_string();
    let noisy_total = f64::from(100 * noisy_runs * (noisy_runs + 1) / 2);
    let noisy_getppid = [("tenant", "noisy"), ("syscall", "getppid")];
    let quiet_getppid = [
        ("tenant", "quiet"),
        ("syscall", "getppid"),
        ("process_pid", quiet_pid.as_str()),
    ];
    let metrics = eventually(agent, |m| {
        m.sum("syscalls_total", &noisy_getppid) == noisy_total
            && m.sum("syscalls_total", &quiet_getppid) == 700.0
    });
    (metrics, quiet_pid)
}

#[test]
fn each_tenant_has_its_own_series_cap() {
    let _kernel = kernel_lock();
    if !have_root("each_tenant_has_its_own_series_cap") {
        return;
    }
    let base = format!("/periscope-tenants-{}", std::process::id());
    let noisy = HandMadeCgroup::create(&format!("{base}/noisy"));
    let quiet = HandMadeCgroup::create(&format!("{base}/quiet"));
    let config = format!("{CONFIG}{NOISY_AND_QUIET}  max_series_per_tenant: 30\n");
    let agent = Agent::start(&config);
    // Six processes of about fifteen syscalls each: far more series than the cap.
    let (metrics, quiet_pid) = noisy_then_quiet(&agent, &noisy, &quiet, 6);
    let noisy_getppid = [("tenant", "noisy"), ("syscall", "getppid")];
    let quiet_getppid = [
        ("tenant", "quiet"),
        ("syscall", "getppid"),
        ("process_pid", quiet_pid.as_str()),
    ];
    // The noisy tenant's totals stay exact, partly in its own overflow series.
    assert_eq!(metrics.sum("syscalls_total", &noisy_getppid), 2100.0);
    let noisy_series = metrics
        .find("syscalls_total", &[("tenant", "noisy")])
        .count();
    assert!(
        noisy_series <= 30 + 30,
        "{noisy_series} series: the cap and the overflow"
    );
    let overflow = [
        ("tenant", "noisy"),
        ("process_executable_name", "__overflow__"),
    ];
    assert!(metrics.find("syscalls_total", &overflow).count() > 0);
    assert!(metrics.one("periscope_tenant_overflow_series", &[("tenant", "noisy")]) > 0.0);
    // The quiet tenant keeps every series under its own labels.
    assert_eq!(metrics.one("syscalls_total", &quiet_getppid), 700.0);
    let quiet_overflow = [
        ("tenant", "quiet"),
        ("process_executable_name", "__overflow__"),
    ];
    assert_eq!(metrics.find("syscalls_total", &quiet_overflow).count(), 0);
}

/// In the kernel too, a noisy tenant cannot take the map its neighbours need: each
/// tenant, and the processes of none, holds at most an equal share of each keyed map.
#[test]
fn each_tenant_has_its_own_share_of_the_kernel_maps() {
    let _kernel = kernel_lock();
    if !have_root("each_tenant_has_its_own_share_of_the_kernel_maps") {
        return;
    }
    let base = format!("/periscope-shares-{}", std::process::id());
    let noisy = HandMadeCgroup::create(&format!("{base}/noisy"));
    let quiet = HandMadeCgroup::create(&format!("{base}/quiet"));
    // 90 entries in the count map, a third per slot; one slot per CPU before it, so
    // that nearly every series reaches the map.
    let config =
        format!("{CONFIG}  syscalls:\n    max_series: 90\n    per_cpu_slots: 1\n{NOISY_AND_QUIET}");
    let agent = Agent::start(&config);
    let known = [("probe", "syscalls"), ("map", "cgroup_tenants")];
    eventually(&agent, |m| {
        m.sum("periscope_bpf_map_entries", &known) == 2.0
    });
    // Eight processes of about fifteen syscalls each: far more than a share. They stay
    // in the map (exited processes are kept for the TTL) while the quiet tenant runs.
    let (metrics, quiet_pid) = noisy_then_quiet(&agent, &noisy, &quiet, 8);
    let noisy_getppid = [("tenant", "noisy"), ("syscall", "getppid")];
    let quiet_getppid = [
        ("tenant", "quiet"),
        ("syscall", "getppid"),
        ("process_pid", quiet_pid.as_str()),
    ];
    // The noisy tenant's totals stay exact, partly in its own overflow series, which
    // the kernel filled: the export cap (2,000 series) was never reached.
    assert_eq!(metrics.sum("syscalls_total", &noisy_getppid), 3600.0);
    let noisy_overflow = [
        ("tenant", "noisy"),
        ("process_executable_name", "__overflow__"),
    ];
    assert!(metrics.sum("syscalls_total", &noisy_overflow) > 0.0);
    let refused = [
        ("probe", "syscalls"),
        ("map", "counts"),
        ("tenant", "noisy"),
    ];
    assert!(metrics.one("periscope_tenant_share_folded_total", &refused) > 0.0);
    assert_eq!(
        metrics.sum("periscope_tenant_overflow_series", &[("tenant", "noisy")]),
        0.0
    );
    // The quiet tenant keeps every series of its process under its own labels.
    assert_eq!(metrics.one("syscalls_total", &quiet_getppid), 700.0);
    let quiet_overflow = [
        ("tenant", "quiet"),
        ("process_executable_name", "__overflow__"),
    ];
    assert_eq!(metrics.find("syscalls_total", &quiet_overflow).count(), 0);
    assert_eq!(
        metrics.sum(
            "periscope_tenant_share_folded_total",
            &[("tenant", "quiet")]
        ),
        0.0
    );
    assert!(
        metrics
            .find("syscalls_total", &[("process_pid", quiet_pid.as_str())])
            .count()
            >= 5
    );
}

/// Connects once to a loopback port from a new process in `cgroup`.
fn connect_from(cgroup: &HandMadeCgroup, port: u16) {
    let mut nc = Command::new(rootfs().join("bin/busybox"));
    nc.args(["nc", "127.0.0.1", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cgroup.enter_before_exec(&mut nc);
    let mut nc = nc.spawn().expect("nc");
    assert!(nc.wait().expect("wait").success());
}

#[test]
fn each_tenant_has_its_own_share_of_the_connection_series() {
    let _kernel = kernel_lock();
    if !have_root("each_tenant_has_its_own_share_of_the_connection_series") {
        return;
    }
    let base = format!("/periscope-tcp-shares-{}", std::process::id());
    let noisy = HandMadeCgroup::create(&format!("{base}/noisy"));
    let quiet = HandMadeCgroup::create(&format!("{base}/quiet"));
    let port = closing_listener();
    // 30 series in the kernel, ten per slot.
    let config = format!("{CONFIG}    max_series: 30\n{NOISY_AND_QUIET}");
    let agent = Agent::start(&config);
    let known = [("probe", "tcp"), ("map", "cgroup_tenants")];
    eventually(&agent, |m| {
        m.sum("periscope_bpf_map_entries", &known) == 2.0
    });
    // Twelve processes, a series each: two more than the share.
    for _ in 0..12 {
        connect_from(&noisy, port);
    }
    for _ in 0..3 {
        connect_from(&quiet, port);
    }
    let noisy_out = [("tenant", "noisy"), ("direction", "outbound")];
    let quiet_out = [("tenant", "quiet"), ("direction", "outbound")];
    let metrics = eventually(&agent, |m| {
        m.sum("tcp_connections_opened_total", &noisy_out) == 12.0
            && m.sum("tcp_connections_opened_total", &quiet_out) == 3.0
    });
    assert_eq!(
        metrics.sum("tcp_connections_opened_total", &noisy_out),
        12.0
    );
    let noisy_overflow = [
        ("tenant", "noisy"),
        ("direction", "outbound"),
        ("process_executable_name", "__overflow__"),
    ];
    assert_eq!(
        metrics.sum("tcp_connections_opened_total", &noisy_overflow),
        2.0
    );
    let refused = [("probe", "tcp"), ("map", "series"), ("tenant", "noisy")];
    assert_eq!(
        metrics.one("periscope_tenant_share_folded_total", &refused),
        2.0
    );
    // The quiet tenant's three connections keep their own series.
    let quiet_series: Vec<_> = metrics
        .find("tcp_connections_opened_total", &quiet_out)
        .collect();
    assert_eq!(quiet_series.len(), 3, "{quiet_series:?}");
    for (_, labels, value) in &quiet_series {
        assert_eq!(*value, 1.0);
        assert!(labels.contains_key("process_pid"), "{labels:?}");
        assert_eq!(
            labels.get("process_executable_name").map(String::as_str),
            Some("busybox")
        );
    }
}

/// A process that listens on `ports` loopback ports, accepting and closing every
/// connection until dropped.
struct Listeners {
    child: std::process::Child,
    ports: Vec<u16>,
}

impl Listeners {
    fn start_in(cgroup: &HandMadeCgroup, ports: usize) -> Listeners {
        let script = r#"
import select, socket, sys
servers = []
for _ in range(int(sys.argv[1])):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    servers.append(server)
print(" ".join(str(s.getsockname()[1]) for s in servers), flush=True)
while True:
    ready, _, _ = select.select(servers, [], [])
    for server in ready:
        server.accept()[0].close()
"#;
        let mut command = Command::new("python3");
        command
            .args(["-c", script, &ports.to_string()])
            .stdout(Stdio::piped());
        cgroup.enter_before_exec(&mut command);
        let mut child = command.spawn().expect("python3");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        }
        let ports = line
            .split_whitespace()
            .filter_map(|port| port.parse().ok())
            .collect();
        Listeners { child, ports }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that was listening before the agent started (its listeners are found in
/// /proc) and before the agent knew its cgroup: its accepted connections still count in
/// its tenant's share, which the kernel asks at each accept.
#[test]
fn accepted_connections_count_in_the_listeners_tenants_share() {
    let _kernel = kernel_lock();
    if !have_root("accepted_connections_count_in_the_listeners_tenants_share") {
        return;
    }
    let base = format!("/periscope-listener-shares-{}", std::process::id());
    let noisy = HandMadeCgroup::create(&format!("{base}/noisy"));
    let _quiet = HandMadeCgroup::create(&format!("{base}/quiet"));
    let server = Listeners::start_in(&noisy, 12);
    assert_eq!(server.ports.len(), 12, "the server's ports");
    let config = format!("{CONFIG}    max_series: 30\n{NOISY_AND_QUIET}");
    let agent = Agent::start(&config);
    let known = [("probe", "tcp"), ("map", "cgroup_tenants")];
    eventually(&agent, |m| {
        m.sum("periscope_bpf_map_entries", &known) == 2.0
    });
    // A series per port: two more than the share of ten.
    for port in &server.ports {
        drop(std::net::TcpStream::connect(("127.0.0.1", *port)).expect("connect"));
    }
    let noisy_in = [("tenant", "noisy"), ("direction", "inbound")];
    let metrics = eventually(&agent, |m| {
        m.sum("tcp_connections_opened_total", &noisy_in) == 12.0
    });
    let own: Vec<_> = metrics
        .find("tcp_connections_opened_total", &noisy_in)
        .filter(|(_, labels, _)| labels.contains_key("process_pid"))
        .collect();
    assert_eq!(own.len(), 10, "{own:?}");
    let overflow = [
        ("tenant", "noisy"),
        ("direction", "inbound"),
        ("process_executable_name", "__overflow__"),
    ];
    assert_eq!(metrics.sum("tcp_connections_opened_total", &overflow), 2.0);
    let refused = [("probe", "tcp"), ("map", "series"), ("tenant", "noisy")];
    assert_eq!(
        metrics.one("periscope_tenant_share_folded_total", &refused),
        2.0
    );
}

#[test]
fn a_dropped_tenant_produces_no_series() {
    let _kernel = kernel_lock();
    if !have_root("a_dropped_tenant_produces_no_series") {
        return;
    }
    let base = format!("/periscope-drop-{}", std::process::id());
    let dropped = HandMadeCgroup::create(&format!("{base}/dropped"));
    let kept = HandMadeCgroup::create(&format!("{base}/kept"));
    let config = format!(
        "{CONFIG}tenants:\n  rules:\n    - tenant: batch\n      cgroup_path: \"*/dropped\"\n      drop: true\n    - tenant: web\n      cgroup_path: \"*/kept\"\n"
    );
    let agent = Agent::start(&config);
    // The agent finds the dropped tenant's cgroups as it collects, and tells the kernel.
    let known = [("probe", "syscalls"), ("map", "cgroup_tenants")];
    let metrics = eventually(&agent, |m| {
        m.sum("periscope_bpf_map_entries", &known) == 2.0
    });
    assert_eq!(metrics.one("periscope_bpf_map_entries", &known), 2.0);
    let dropped_pid = loop_in_cgroup(&dropped, 1000).to_string();
    let kept_pid = loop_in_cgroup(&kept, 400).to_string();
    let kept_getppid = [("process_pid", kept_pid.as_str()), ("syscall", "getppid")];
    let metrics = eventually(&agent, |m| m.sum("syscalls_total", &kept_getppid) == 400.0);
    assert_eq!(metrics.one("syscalls_total", &kept_getppid), 400.0);
    assert!(metrics.find("syscalls_total", &[("tenant", "web")]).count() > 0);
    for (family, labels, _) in &metrics.samples {
        assert_ne!(
            labels.get("tenant").map(String::as_str),
            Some("batch"),
            "{family}"
        );
    }
    // Once in its cgroup the process was not counted at all (what it did before the
    // move, in this test's cgroup, was).
    let dropped_getppid = [
        ("process_pid", dropped_pid.as_str()),
        ("syscall", "getppid"),
    ];
    assert_eq!(metrics.sum("syscalls_total", &dropped_getppid), 0.0);
    // The kernel did it, not the export: its syscalls before the move are there, under
    // the test's own cgroup (the exec that would have recorded the move was skipped).
    assert!(
        metrics
            .find("syscalls_total", &[("process_pid", dropped_pid.as_str())])
            .count()
            > 0
    );
}

#[test]
fn a_systemd_services_processes_are_named_by_their_service() {
    let _kernel = kernel_lock();
    if !have_root("a_systemd_services_processes_are_named_by_their_service") {
        return;
    }
    let agent = Agent::start(CONFIG);
    let unit = format!("periscope-e2e-{}", std::process::id());
    let cgroup = HandMadeCgroup::create(&format!("/periscope-e2e.slice/{unit}.service"));
    let pid = loop_in_cgroup(&cgroup, 321).to_string();
    let want = [
        ("process_pid", pid.as_str()),
        ("process_executable_name", "getppid_loop"),
        ("service_name", unit.as_str()),
        ("syscall", "getppid"),
    ];
    let metrics = eventually(&agent, |m| m.sum("syscalls_total", &want) == 321.0);
    assert_eq!(metrics.one("syscalls_total", &want), 321.0);
    for labels in labels_of(&metrics, "syscalls_total", &want) {
        assert!(!labels.contains_key("container_id"), "{labels:?}");
    }
}

/// A self-signed certificate for 127.0.0.1, valid for a day, and its key.
fn self_signed(cert: &Path, key: &Path, subject: &str) {
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", subject, "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert));
}

#[test]
fn pod_names_come_from_a_kubelet_over_https_with_a_token() {
    let _kernel = kernel_lock();
    let test = "pod_names_come_from_a_kubelet_over_https_with_a_token";
    if !have_root(test) || !docker_ready(test) {
        return;
    }
    let dir = common::TempDir::new("kubelet-tls");
    // A cluster CA, and a kubelet serving certificate it signed.
    let path = |name: &str| dir.path().join(name);
    let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
    let (cert, key, csr) = (path("cert.pem"), path("key.pem"), path("kubelet.csr"));
    self_signed(&ca, &ca_key, "/CN=periscope-test-ca");
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let extensions = dir.write(
        "kubelet.ext",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .args(["-CAcreateserial", "-out"])
        .arg(&cert)
        .arg("-extfile")
        .arg(&extensions));
    let token_file = dir.write("token", "s3cr3t-token\n");
    let id = container_id(std::process::id() + 2);
    let kubelet = FakeKubelet::start_with(
        POD_UID,
        &id,
        Some(KubeletTls {
            cert: &cert,
            key: &key,
            token: "s3cr3t-token",
        }),
    );
    // The address comes from the environment, as a DaemonSet gives it the node's IP.
    let config = format!(
        "{CONFIG}workloads:\n  kubelet_url: \"https://${{PERISCOPE_TEST_KUBELET}}\"\n  kubelet_token_file: \"{}\"\n  kubelet_ca_file: \"{}\"\n  refresh_secs: 1\n",
        token_file.display(),
        ca.display()
    );
    let address = format!("127.0.0.1:{}", kubelet.port);
    let agent = Agent::start_with_env(&config, &[("PERISCOPE_TEST_KUBELET", address.as_str())]);
    assert_pod_names_from_the_kubelet(&agent, &id, 1111);
}

#[test]
fn the_kubelets_certificate_is_checked_unless_told_not_to() {
    let _kernel = kernel_lock();
    let test = "the_kubelets_certificate_is_checked_unless_told_not_to";
    if !have_root(test) || !docker_ready(test) {
        return;
    }
    let dir = common::TempDir::new("kubelet-self-signed");
    let path = |name: &str| dir.path().join(name);
    // The kubelet serves a self-signed certificate, as kubelets usually do; the agent
    // is given another CA.
    let (cert, key) = (path("kubelet.pem"), path("kubelet.key"));
    let (other_ca, other_key) = (path("other-ca.pem"), path("other-ca.key"));
    self_signed(&cert, &key, "/CN=127.0.0.1");
    self_signed(&other_ca, &other_key, "/CN=another-ca");
    let token_file = dir.write("token", "t0ken\n");
    let id = container_id(std::process::id() + 3);
    let kubelet = FakeKubelet::start_with(
        POD_UID,
        &id,
        Some(KubeletTls {
            cert: &cert,
            key: &key,
            token: "t0ken",
        }),
    );
    // Busy all along, for each agent in turn to see.
    let mut container = CtrContainer::start(
        &id,
        &format!("/kubepods/burstable/pod{POD_UID}/{id}"),
        "echo started; while true; do getppid_loop 10 >/dev/null; sleep 0.1; done",
    );
    container.wait_line("started");
    let ids_only = [
        ("container_id", id.as_str()),
        ("k8s_pod_uid", POD_UID),
        ("syscall", "getppid"),
    ];
    let named = [
        ("container_id", id.as_str()),
        ("k8s_pod_name", "checkout-7d4b9"),
        ("syscall", "getppid"),
    ];
    let failures = [("source", "kubelet"), ("outcome", "failure")];
    let config = |trust: String| {
        format!(
            "{CONFIG}workloads:\n  kubelet_url: \"https://127.0.0.1:{}\"\n  kubelet_token_file: \"{}\"\n  refresh_secs: 1\n{trust}",
            kubelet.port,
            token_file.display()
        )
    };
    {
        // Checked against a CA that did not sign it: refused, and the labels stay ids.
        let agent = Agent::start(&config(format!(
            "  kubelet_ca_file: \"{}\"\n",
            other_ca.display()
        )));
        let metrics = eventually(&agent, |m| {
            m.sum("syscalls_total", &ids_only) > 0.0
                && m.sum("periscope_workload_lookups_total", &failures) >= 1.0
        });
        assert!(metrics.sum("periscope_workload_lookups_total", &failures) >= 1.0);
        assert!(metrics.sum("syscalls_total", &ids_only) > 0.0);
        assert_eq!(metrics.sum("syscalls_total", &named), 0.0);
    }
    // Told to accept any certificate: the names arrive.
    let agent = Agent::start(&config("  kubelet_insecure_skip_verify: true\n".into()));
    let metrics = eventually(&agent, |m| m.sum("syscalls_total", &named) > 0.0);
    assert!(metrics.sum("syscalls_total", &named) > 0.0);
}
