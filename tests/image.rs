//! The agent's own image, built here (deploy/image/build.sh, no registry) and run by
//! runc as the DaemonSet runs it: host pid namespace, read-only root, every capability dropped but
//! those the DaemonSet adds, and its host mounts. It must attach, count a workload
//! exactly, and keep only the capabilities it still needs; without one of those it
//! must stop with a line naming it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{docker_ready, free_port, have_root, http_get, kernel_lock, Metrics, TempDir};
use serde::Deserialize;

const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";

/// What the DaemonSet grants its container.
struct Grants {
    capabilities: Vec<String>,
    /// (host path, path in the container, read-only), the ConfigMap excepted.
    host_mounts: Vec<(String, String, bool)>,
}

fn daemonset_grants() -> Grants {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DAEMONSET);
    let text = std::fs::read_to_string(&path).expect("the DaemonSet manifest");
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document).expect("YAML");
        if value["kind"] != "DaemonSet" {
            continue;
        }
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(
            pod["hostPID"], true,
            "the DaemonSet runs in the host pid namespace"
        );
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["capabilities"]["drop"][0], "ALL");
        let capabilities = security["capabilities"]["add"]
            .as_sequence()
            .expect("capabilities.add")
            .iter()
            .map(|c| c.as_str().expect("a capability name").to_string())
            .collect();
        let mut host_mounts = Vec::new();
        for mount in container["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
        {
            let name = &mount["name"];
            let volume = pod["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .find(|v| &v["name"] == name)
                .expect("the mount's volume");
            let Some(host) = volume["hostPath"]["path"].as_str() else {
                continue;
            };
            host_mounts.push((
                host.to_string(),
                mount["mountPath"].as_str().expect("mountPath").to_string(),
                mount["readOnly"].as_bool().unwrap_or(false),
            ));
        }
        return Grants {
            capabilities,
            host_mounts,
        };
    }
    panic!("no DaemonSet in {DAEMONSET}");
}

/// The image, built once from the binary under test.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = "periscope-test-agent:e2e".to_string();
        let previous = image_id(&tag);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/image/build.sh");
        let out = Command::new(script)
            .arg(&tag)
            .env("PERISCOPE_BINARY", env!("CARGO_BIN_EXE_periscope"))
            .output()
            .expect("deploy/image/build.sh");
        assert!(
            out.status.success(),
            "building the image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The previous run's image lost the tag: remove it, or every run leaves one.
        if let Some(previous) = previous.filter(|id| Some(id) != image_id(&tag).as_ref()) {
            let _ = Command::new("docker")
                .args(["image", "rm", &previous])
                .output();
        }
        tag
    })
}

fn image_id(tag: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The image's file system, exported once, as the root of OCI bundles.
fn image_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-rootfs");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("rootfs dir");
        let created = Command::new("docker")
            .args(["create", image()])
            .output()
            .expect("docker create");
        assert!(created.status.success(), "docker create");
        let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
        let tar = root.with_extension("tar");
        let exported = Command::new("docker")
            .args(["export", "-o"])
            .arg(&tar)
            .arg(&id)
            .status()
            .expect("docker export");
        let _ = Command::new("docker").args(["rm", &id]).output();
        assert!(exported.success(), "docker export");
        let unpacked = Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .status()
            .expect("tar");
        assert!(unpacked.success());
        let _ = std::fs::remove_file(&tar);
        root
    })
}

/// An OCI bundle that runs the image as the DaemonSet does: host pid and network
/// namespaces, read-only root, no new privileges, exactly `capabilities`, the
/// DaemonSet's host mounts, and the configuration at /etc/periscope. It is run with
/// runc, the runtime containerd drives under Kubernetes (Docker 20.10 does not know
/// CAP_BPF and CAP_PERFMON).
struct Bundle {
    dir: TempDir,
    name: String,
}

impl Bundle {
    fn new(grants: &Grants, capabilities: &[String], config_dir: &Path) -> Bundle {
        let dir = TempDir::new("bundle");
        let status = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .status()
            .expect("runc spec (docker.io brings runc)");
        assert!(status.success());
        let path = dir.path().join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("config.json"))
                .expect("JSON");
        spec["root"] = serde_json::json!({
            "path": image_rootfs(),
            "readonly": true,
        });
        let caps: Vec<String> = capabilities.iter().map(|c| format!("CAP_{c}")).collect();
        spec["process"]["terminal"] = false.into();
        spec["process"]["noNewPrivileges"] = true.into();
        spec["process"]["args"] = serde_json::json!([
            "/usr/bin/periscope",
            "run",
            "--config",
            "/etc/periscope/periscope.yaml"
        ]);
        spec["process"]["capabilities"] = serde_json::json!({
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        });
        let namespaces = spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "pid" && ns["type"] != "network");
        let mounts = spec["mounts"].as_array_mut().expect("mounts");
        mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
        let mut bind = |source: &str, destination: &str, read_only: bool| {
            let mut options = vec!["rbind", "nosuid", "nodev"];
            if read_only {
                options.push("ro");
            }
            mounts.push(serde_json::json!({
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": options,
            }));
        };
        for (host, inside, read_only) in &grants.host_mounts {
            bind(host, inside, *read_only);
        }
        bind(&config_dir.display().to_string(), "/etc/periscope", true);
        std::fs::write(&path, spec.to_string()).expect("write config.json");
        let name = format!("periscope-e2e-{}-{}", std::process::id(), free_port());
        Bundle { dir, name }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("runc");
        command
            .args(["run", "--bundle"])
            .arg(self.dir.path())
            .arg(&self.name);
        command
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn config_dir(port: u16) -> TempDir {
    let dir = TempDir::new("image");
    dir.write(
        "periscope.yaml",
        &format!(
            "prometheus:\n  listen_address: \"127.0.0.1:{port}\"\nprobes:\n  tcp:\n    sample_interval_secs: 0\n"
        ),
    );
    dir
}

fn getppid_loop() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("getppid_loop");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/getppid_loop.c");
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(source)
        .status()
        .expect("cc");
    assert!(status.success());
    out
}

/// CapEff of every thread of a process.
fn thread_capabilities(pid: &str) -> Vec<u64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status =
            std::fs::read_to_string(task.expect("task").path().join("status")).unwrap_or_default();
        if let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
            found.push(u64::from_str_radix(hex.trim(), 16).expect("hex"));
        }
    }
    found
}

#[test]
fn the_agents_image_runs_with_exactly_the_daemonsets_grants() {
    let _kernel = kernel_lock();
    let test = "the_agents_image_runs_with_exactly_the_daemonsets_grants";
    if !have_root(test) || !docker_ready(test) {
        return;
    }
    let grants = daemonset_grants();
    let port = free_port();
    let config = config_dir(port);
    let bundle = Bundle::new(&grants, &grants.capabilities, config.path());
    let log_path = config.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut agent = bundle
        .command()
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("runc run");
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut ready = false;
    for _ in 0..300 {
        if http_get(port, "/readyz", None).is_some_and(|(status, _)| status == 200) {
            ready = true;
            break;
        }
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the agent's container exited ({status}): {}", logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ready,
        "the agent's container never became ready: {}",
        logs()
    );

    // The workload's pid, as this (host) pid namespace sees it: the container shares it.
    let mut child = Command::new(getppid_loop())
        .arg("4242")
        .stdout(Stdio::null())
        .spawn()
        .expect("the workload");
    let pid = child.id().to_string();
    assert!(child.wait().expect("wait").success());
    let want = [("process_pid", pid.as_str()), ("syscall", "getppid")];
    let mut metrics = Metrics::default();
    for _ in 0..100 {
        if let Some((200, body)) = http_get(port, "/metrics", None) {
            metrics = Metrics::parse(&body);
            if metrics.sum("syscalls_total", &want) == 4242.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metrics.one("syscalls_total", &want), 4242.0, "{}", logs());
    for probe in ["syscalls", "process", "tcp"] {
        assert_eq!(
            metrics.one("periscope_probe_up", &[("probe", probe)]),
            1.0,
            "{}",
            logs()
        );
    }
    let text = logs();
    assert!(text.contains("attached syscalls"), "{text}");

    // Once attached, every thread keeps only what the agent still needs.
    let state = Command::new("runc")
        .args(["state", &bundle.name])
        .output()
        .expect("runc state");
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("state JSON");
    let agent_pid = state["pid"]
        .as_u64()
        .expect("the container's pid")
        .to_string();
    let kept: u64 = (1 << 38) | (1 << 39) | (1 << 21); // PERFMON, BPF, SYS_ADMIN
    let threads = thread_capabilities(&agent_pid);
    assert!(threads.len() >= 3, "{threads:?}");
    // The collector, which owns the BPF objects, keeps those; every other thread (the
    // HTTP server, the name lookups) has none.
    let with_kept = threads.iter().filter(|caps| **caps == kept).count();
    let with_none = threads.iter().filter(|caps| **caps == 0).count();
    assert_eq!(
        (with_kept, with_none),
        (1, threads.len() - 1),
        "effective capabilities of the agent's threads: {threads:x?}"
    );
    let _ = Command::new("runc")
        .args(["kill", &bundle.name, "TERM"])
        .status();
    let status = agent.wait().expect("wait for the agent");
    assert!(
        status.success(),
        "the agent's exit on SIGTERM: {status}: {}",
        logs()
    );
}

#[test]
fn without_one_of_the_daemonsets_capabilities_the_agent_names_it() {
    let _kernel = kernel_lock();
    let test = "without_one_of_the_daemonsets_capabilities_the_agent_names_it";
    if !have_root(test) || !docker_ready(test) {
        return;
    }
    let grants = daemonset_grants();
    let config = config_dir(free_port());
    for missing in &grants.capabilities {
        let rest: Vec<String> = grants
            .capabilities
            .iter()
            .filter(|c| *c != missing)
            .cloned()
            .collect();
        let bundle = Bundle::new(&grants, &rest, config.path());
        let out = bundle
            .command()
            .stdin(Stdio::null())
            .output()
            .expect("runc run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ran without {missing}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("periscope: error:"))
            .unwrap_or_else(|| panic!("no error line without {missing}: {stderr}"));
        assert!(
            line.contains(&format!("missing capability CAP_{missing}")),
            "{line}"
        );
    }
}
