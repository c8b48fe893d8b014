//! cgroup v2 ids -> paths -> containers and pods.
//!
//! `bpf_get_current_cgroup_id()` gives the id of a task's cgroup in the v2 hierarchy,
//! which is the inode number of that cgroup's directory. This module finds where the
//! hierarchy is mounted (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on
//! a hybrid one), maps ids to paths with a bounded cache, and recognises the layouts
//! container runtimes and the kubelet give their cgroups.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which runtime made a container's cgroup, as far as its path says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A Kubernetes pod's container whose runtime the path does not name (the cgroupfs
    /// driver names none).
    Kubernetes,
}

/// What a cgroup path says about the container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// The full container id (64 hex digits for every runtime recognised here).
    pub container_id: String,
    /// The pod's uid, with dashes, when the cgroup is under a Kubernetes pod.
    pub pod_uid: Option<String>,
}

/// The container a cgroup v2 path belongs to, if its layout is one of:
/// - Docker, cgroupfs driver: `/docker/<id>`; systemd driver: `.../docker-<id>.scope`
/// - Kubernetes, cgroupfs driver: `/kubepods[/<qos>]/pod<uid>/<id>`; systemd driver:
///   `/kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid>.slice/<runtime>-<id>.scope`
///   where `<runtime>` is `cri-containerd`, `crio` or `docker`
/// - CRI-O outside Kubernetes: `.../crio-<id>.scope`
/// - Podman: `.../libpod-<id>.scope` (systemd), `/libpod_parent/libpod-<id>` (cgroupfs)
///
/// A container's own sub-cgroups (such as systemd's `init.scope` inside it) belong to
/// it: the last container id on the path wins. The runtimes' monitor processes
/// (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not containers.
pub fn container_of(path: &str) -> Option<ContainerRef> {
    let mut pod_uid = None;
    let mut found = None;
    let mut previous = "";
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if let Some(uid) = pod_uid_of(part) {
            pod_uid = Some(uid);
        } else if let Some((runtime, id)) = container_id_of(part, previous) {
            found = Some((runtime, id));
        }
        previous = part;
    }
    let (runtime, container_id) = found?;
    let runtime = match (runtime, &pod_uid) {
        (None, Some(_)) => Runtime::Kubernetes,
        (None, None) => return None,
        (Some(runtime), _) => runtime,
    };
    Some(ContainerRef {
        runtime,
        container_id,
        pod_uid,
    })
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice`.
fn pod_uid_of(part: &str) -> Option<String> {
    let uid = if let Some(rest) = part.strip_suffix(".slice") {
        let at = rest.rfind("-pod")?;
        if !rest.starts_with("kubepods") {
            return None;
        }
        rest[at + 4..].replace('_', "-")
    } else {
        part.strip_prefix("pod")?.to_string()
    };
    is_uid(&uid).then_some(uid)
}

/// A container id in one path component, and the runtime it names (None: a bare id,
/// which only means something under a pod or under `/docker`, as `previous` says).
fn container_id_of(part: &str, previous: &str) -> Option<(Option<Runtime>, String)> {
    if let Some(scope) = part.strip_suffix(".scope") {
        for (prefix, runtime) in [
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
            ("docker-", Runtime::Docker),
            ("libpod-", Runtime::Podman),
        ] {
            if let Some(id) = scope.strip_prefix(prefix) {
                return is_container_id(id).then(|| (Some(runtime), id.to_string()));
            }
        }
        return None;
    }
    if let Some(id) = part.strip_prefix("libpod-") {
        return is_container_id(id).then(|| (Some(Runtime::Podman), id.to_string()));
    }
    if !is_container_id(part) {
        return None;
    }
    let runtime = match previous {
        "docker" => Some(Runtime::Docker),
        _ if previous.starts_with("pod") => None,
        _ => return None,
    };
    Some((runtime, part.to_string()))
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A Kubernetes uid: 8-4-4-4-12 lower-case hex digits.
fn is_uid(uid: &str) -> bool {
    let groups: Vec<&str> = uid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Where the cgroup v2 hierarchy is mounted, from a mountinfo text (`/proc/self/mountinfo`):
/// the mount of filesystem type `cgroup2`, preferring `/sys/fs/cgroup` (pure v2) over
/// `/sys/fs/cgroup/unified` (hybrid) over any other.
pub fn unified_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut best: Option<(u8, &str)> = None;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let rank = match mount_point {
            "/sys/fs/cgroup" => 0,
            "/sys/fs/cgroup/unified" => 1,
            _ => 2,
        };
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, mount_point));
        }
    }
    best.map(|(_, mount)| PathBuf::from(unescape_mount(mount)))
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |v, d| v.wrapping_mul(8).wrapping_add(d - b'0')),
                );
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// cgroup ids -> paths relative to the v2 root (`/docker/<id>`), found by walking the
/// hierarchy: a cgroup's id is its directory's inode number. Bounded: at most
/// `capacity` ids are kept; a walk finds at most `capacity` cgroups, and an unknown id
/// makes a new walk at most once per `rescan_after`.
#[derive(Debug)]
pub struct CgroupPaths {
    root: PathBuf,
    capacity: usize,
    rescan_after: Duration,
    paths: HashMap<u64, String>,
    last_walk: Option<Instant>,
    /// Cgroups a walk found beyond the capacity: their ids resolve to nothing.
    pub refused: u64,
}

impl CgroupPaths {
    pub fn new(root: PathBuf, capacity: usize, rescan_after: Duration) -> CgroupPaths {
        CgroupPaths {
            root,
            capacity,
            rescan_after,
            paths: HashMap::new(),
            last_walk: None,
            refused: 0,
        }
    }

    /// The path of cgroup `id`, walking the hierarchy again if it is unknown and the
    /// last walk is old enough (a new container's cgroup appears after our last walk).
    pub fn path_of(&mut self, id: u64, now: Instant) -> Option<&str> {
        if !self.paths.contains_key(&id)
            && self
                .last_walk
                .is_none_or(|at| now.duration_since(at) >= self.rescan_after)
        {
            self.walk(now);
        }
        self.paths.get(&id).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Replaces the table with what the hierarchy holds now: removed cgroups leave it,
    /// so an id is never answered with the path of a cgroup that is gone.
    fn walk(&mut self, now: Instant) {
        self.last_walk = Some(now);
        let (found, refused) = walk_bounded(&self.root, self.capacity);
        self.paths = found.into_iter().collect();
        self.refused += refused;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` text: the `0::` line. Inside a cgroup
/// namespace, paths outside it start with `/..` components, which are dropped: the
/// layouts are recognised from the components that follow.
pub fn cgroup_path_of_proc(text: &str) -> Option<String> {
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let mut rest = path;
    while let Some(stripped) = rest.strip_prefix("/..") {
        rest = stripped;
    }
    Some(if rest.is_empty() { "/" } else { rest }.to_string())
}

/// The cgroup v2 id of a live process: the inode of its cgroup's directory under
/// `root`, the v2 mount. None when it cannot be read, or from inside a cgroup namespace
/// that hides the process's cgroup.
pub fn cgroup_id_of_pid(root: &Path, pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroup_path_of_proc(&text)?;
    let dir = root.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|meta| meta.ino())
}

/// Every cgroup under `root` (a v2 mount): its id (the directory's inode number) and
/// its path relative to the root (`/` for the root itself), at most `limit` of them.
pub fn walk(root: &Path, limit: usize) -> Vec<(u64, String)> {
    walk_bounded(root, limit).0
}

/// `walk`, and how many cgroups were left out by the limit.
fn walk_bounded(root: &Path, limit: usize) -> (Vec<(u64, String)>, u64) {
    let mut found = Vec::new();
    let mut refused = 0;
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, relative)) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if found.len() < limit {
            let path = if relative.is_empty() {
                "/".to_string()
            } else {
                relative.clone()
            };
            found.push((meta.ino(), path));
        } else {
            refused += 1;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                pending.push((entry.path(), format!("{relative}/{name}")));
            }
        }
    }
    (found, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
    const UID: &str = "0f3e6a1c-6f4b-4b1e-9a1e-2f8c9d7b6a51";

    #[test]
    fn proc_cgroup_lines() {
        let hybrid = format!("1:cpu:/docker/{ID}\n0::/docker/{ID}\n");
        assert_eq!(cgroup_path_of_proc(&hybrid), Some(format!("/docker/{ID}")));
        assert_eq!(
            cgroup_path_of_proc(&format!("0::/../../kubepods/pod{UID}/{ID}\n")),
            Some(format!("/kubepods/pod{UID}/{ID}"))
        );
        assert_eq!(cgroup_path_of_proc("0::/\n"), Some("/".into()));
        assert_eq!(cgroup_path_of_proc("1:cpu:/x\n"), None);
    }

    fn container(runtime: Runtime, pod: bool) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            container_id: ID.into(),
            pod_uid: pod.then(|| UID.into()),
        })
    }

    /// Each runtime's cgroup layouts, as (path with `{uid}` and `{id}` to fill, runtime, whether
    /// the path names a pod).
    const LAYOUTS: &[(&str, Runtime, bool)] = &[
        ("/docker/{id}", Runtime::Docker, false),
        ("/system.slice/docker-{id}.scope", Runtime::Docker, false),
        // systemd inside the container makes cgroups of its own below.
        ("/system.slice/docker-{id}.scope/init.scope", Runtime::Docker, false),
        ("/kubepods/burstable/pod{uid}/{id}", Runtime::Kubernetes, true),
        // Guaranteed pods have no QoS level.
        ("/kubepods/pod{uid}/{id}", Runtime::Kubernetes, true),
        // The systemd driver writes the pod's uid with underscores.
        (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope",
            Runtime::Containerd,
            true,
        ),
        ("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope", Runtime::CriO, true),
        (
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{id}.scope",
            Runtime::Docker,
            true,
        ),
        ("/machine.slice/crio-{id}.scope", Runtime::CriO, false),
        (
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{id}.scope/container",
            Runtime::Podman,
            false,
        ),
        ("/libpod_parent/libpod-{id}", Runtime::Podman, false),
    ];

    #[test]
    fn every_runtime_layout_names_its_container() {
        for (layout, runtime, pod) in LAYOUTS {
            let path = layout
                .replace("{uid_}", &UID.replace('-', "_"))
                .replace("{uid}", UID)
                .replace("{id}", ID);
            assert_eq!(container_of(&path), container(*runtime, *pod), "{path}");
        }
        // The runtimes' monitors are not the container.
        for monitor in ["libpod-conmon", "crio-conmon"] {
            assert_eq!(
                container_of(&format!("/machine.slice/{monitor}-{ID}.scope")),
                None
            );
        }
    }

    #[test]
    fn hosts_and_lookalikes_are_not_containers() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/kubepods/burstable",
            &format!("/kubepods/burstable/pod{UID}"),
            // A bare id means nothing outside /docker or a pod.
            &format!("/system.slice/{ID}"),
            // Upper-case hex and short ids are not container ids.
            &format!("/docker/{}", ID.to_uppercase()),
            "/docker/4f1b2c3d",
            "/system.slice/docker.service",
        ] {
            assert_eq!(container_of(path), None, "{path}");
        }
    }

    #[test]
    fn the_v2_mount_of_pure_and_hybrid_hosts() {
        let pure = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(unified_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            unified_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let elsewhere = "40 1 0:40 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(unified_mount(elsewhere), Some(PathBuf::from("/mnt/cg two")));
        assert_eq!(
            unified_mount("27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
    }

    #[test]
    fn ids_resolve_to_paths_within_the_capacity() {
        let root = std::env::temp_dir().join(format!("psc-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(format!("docker/{ID}"))).expect("dirs");
        let id = std::fs::metadata(root.join(format!("docker/{ID}")))
            .expect("meta")
            .ino();
        let now = Instant::now();
        let mut paths = CgroupPaths::new(root.clone(), 16, Duration::from_secs(5));
        assert_eq!(
            paths.path_of(id, now),
            Some(format!("/docker/{ID}").as_str())
        );
        assert_eq!(paths.len(), 3, "the root, /docker and the container");
        // A table too small for the hierarchy keeps what fits and counts the rest.
        let mut small = CgroupPaths::new(root.clone(), 1, Duration::from_secs(5));
        let _ = small.path_of(id, now);
        assert_eq!(small.len(), 1);
        assert_eq!(small.refused, 2);
        // A cgroup removed since is forgotten at the next walk.
        std::fs::remove_dir_all(root.join("docker")).expect("rm");
        assert_eq!(paths.path_of(u64::MAX, now + Duration::from_secs(6)), None);
        assert_eq!(paths.len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }
}
