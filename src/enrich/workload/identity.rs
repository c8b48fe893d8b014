//! A workload from a cgroup path: a container (with its pod), a systemd service, or
//! nothing; from `/proc` for a live process, from what BPF recorded for one gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Workloads};
use crate::enrich::cgroup::{cgroup_path_of_proc, container_of, unified_mount, CgroupPaths};

/// What a series is attributed to beyond its process. Cheap to clone and to compare:
/// probes key their series by it. The cgroup path rides along for tenant rules; it is
/// not part of the identity (a container's sub-cgroups are the same container), but
/// outside containers the tenant the path gives is (third field): processes of two
/// tenants never share a series.
#[derive(Debug, Clone, Default)]
pub struct Workload(
    pub(super) Option<Arc<WorkloadId>>,
    pub(super) Option<Arc<str>>,
    pub(super) Option<Arc<str>>,
);

impl PartialEq for Workload {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 && self.2 == other.2
    }
}

impl Eq for Workload {}

impl std::hash::Hash for Workload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.2.hash(state);
    }
}

impl PartialOrd for Workload {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Workload {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0).then_with(|| self.2.cmp(&other.2))
    }
}

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum WorkloadId {
    Container {
        id: String,
        pod_uid: Option<String>,
    },
    /// A systemd service outside any container (`nginx` for `nginx.service`).
    Service(String),
}

impl Workload {
    /// The workload of a cgroup v2 path (`/docker/<id>`, `/system.slice/nginx.service`).
    pub fn of_cgroup_path(path: &str) -> Workload {
        let path = Some(Arc::from(path));
        if let Some(container) = container_of(path.as_deref().unwrap_or_default()) {
            return Workload(
                Some(Arc::new(WorkloadId::Container {
                    id: container.container_id,
                    pod_uid: container.pod_uid,
                })),
                path,
                None,
            );
        }
        match service_of(path.as_deref().unwrap_or_default()) {
            Some(service) => Workload(Some(Arc::new(WorkloadId::Service(service))), path, None),
            None => Workload(None, path, None),
        }
    }

    /// What a tenant's overflow series belong to: the tenant alone.
    pub fn of_tenant(tenant: &str) -> Workload {
        Workload(None, None, Some(Arc::from(tenant)))
    }

    /// The cgroup path it was found from.
    pub fn cgroup_path(&self) -> Option<&str> {
        self.1.as_deref()
    }

    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// The systemd service, for a process outside containers.
    pub fn service(&self) -> Option<&str> {
        match self.0.as_deref() {
            Some(WorkloadId::Service(name)) => Some(name),
            _ => None,
        }
    }
}

/// The systemd service a cgroup belongs to: the last `<name>.service` component, so that
/// a service's own sub-cgroups belong to it. User sessions and slices are no service.
fn service_of(path: &str) -> Option<String> {
    let unit = path.split('/').rfind(|part| part.ends_with(".service"))?;
    let name = unit.strip_suffix(".service")?;
    // Instances of templates (`getty@tty1`) and the per-user managers are services too.
    (!name.is_empty()).then(|| name.to_string())
}

/// A process's cgroup as BPF recorded it (`bpf/cgroup.h`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedCgroup {
    pub id: u64,
    pub leaf: String,
    pub parent: String,
}

impl Workloads {
    /// The workload of a live process, from `/proc/<pid>/cgroup`.
    pub fn of_pid(&self, proc_root: &str, pid: u32) -> Workload {
        if !self.enabled() {
            return Workload::default();
        }
        std::fs::read_to_string(format!("{proc_root}/{pid}/cgroup"))
            .ok()
            .and_then(|text| cgroup_path_of_proc(&text))
            .map(|path| self.classified(Workload::of_cgroup_path(&path)))
            .unwrap_or_default()
    }

    /// Outside containers, a workload's tenant depends on its path alone (no names
    /// are involved), and becomes part of its identity.
    pub(super) fn classified(&self, mut workload: Workload) -> Workload {
        if workload.0.is_none() && !self.shared.tenants.is_empty() {
            workload.2 = self.tenant_of(&workload).map(|t| Arc::from(t.name));
        }
        workload
    }

    /// The workload of a process gone before /proc could be read, from what the kernel
    /// recorded of its cgroup: the names of its last two path components, which are
    /// still there after the cgroup is removed, and else its id (a directory inode in
    /// the v2 hierarchy, which leads to the path while the cgroup exists).
    pub fn of_recorded(&self, cgroup: &RecordedCgroup) -> Workload {
        if !self.enabled() {
            return Workload::default();
        }
        let tail = format!("/{}/{}", cgroup.parent, cgroup.leaf);
        let workload = Workload::of_cgroup_path(&tail);
        if !workload.is_none() || cgroup.id <= 1 {
            return self.classified(workload);
        }
        let mut cgroups = lock(&self.shared.cgroups);
        if cgroups.is_none() {
            let root = std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|text| unified_mount(&text));
            let Some(root) = root else {
                return Workload::default();
            };
            *cgroups = Some(CgroupPaths::new(
                root,
                self.shared.settings.max_containers * 4,
                Duration::from_secs(1),
            ));
        }
        cgroups
            .as_mut()
            .and_then(|paths| paths.path_of(cgroup.id, Instant::now()).map(str::to_string))
            .map(|path| self.classified(Workload::of_cgroup_path(&path)))
            .unwrap_or_else(|| self.classified(workload))
    }
}
