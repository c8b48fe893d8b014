//! Who a process works for: its container, its Kubernetes pod, or its systemd service,
//! from its cgroup; and the names of those, from the node's own container runtime and
//! kubelet.
//!
//! Identities come from the cgroup path alone and never wait on anything. Names arrive
//! later from a background thread that asks the Docker Engine API (one container at a
//! time) and the kubelet's `/pods` (the pods of this node only); until they do, or when
//! neither answers, series carry the ids. Every table here is bounded.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::{debug, info, warn};

use super::cgroup::{cgroup_path_of_proc, container_of, unified_mount, CgroupPaths};
use super::kubelet_tls::{self, Trust};
use super::tenant::{TenantSlots, DROPPED_SLOT};
use crate::config::{TenantRule, TenantsConfig, WorkloadsConfig};
use crate::model::{Family, Labels, MetricKind, Value};

/// What a series is attributed to beyond its process. Cheap to clone and to compare:
/// probes key their series by it. The cgroup path rides along for tenant rules; it is
/// not part of the identity (a container's sub-cgroups are the same container), but
/// outside containers the tenant the path gives is (third field): processes of two
/// tenants never share a series.
#[derive(Debug, Clone, Default)]
pub struct Workload(Option<Arc<WorkloadId>>, Option<Arc<str>>, Option<Arc<str>>);

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
enum WorkloadId {
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

/// `${NAME}` replaced by the environment variable NAME (empty when unset).
fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('}') {
            Some(end) => {
                let name = &rest[start + 2..start + 2 + end];
                out.push_str(&std::env::var(name).unwrap_or_default());
                rest = &rest[start + 3 + end..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A tenant, as the rules name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub dropped: bool,
}

/// `*` matches any run of characters (`/` included), `?` any one.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A process's cgroup as BPF recorded it (`bpf/cgroup.h`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedCgroup {
    pub id: u64,
    pub leaf: String,
    pub parent: String,
}

/// Names learnt for a container, from the runtime and from the kubelet.
#[derive(Debug, Clone, Default)]
struct ContainerNames {
    /// The runtime's name (Docker's, without its leading `/`).
    runtime_name: Option<String>,
    /// The runtime's labels of the container, for tenant rules.
    labels: BTreeMap<String, String>,
    last_used: Option<Instant>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct PodInfo {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    /// Container id (without the `containerd://` scheme) -> the container's name in the pod.
    containers: HashMap<String, String>,
}

/// Exponential backoff between failed attempts at one source.
#[derive(Debug)]
struct Backoff {
    next_try: Option<Instant>,
    delay: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next_try: None,
            delay: Duration::from_secs(1),
            max,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|at| now >= at)
    }

    fn failed(&mut self, now: Instant) {
        self.next_try = Some(now + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }

    fn succeeded(&mut self) {
        self.next_try = None;
        self.delay = Duration::from_secs(1);
    }
}

#[derive(Debug)]
struct NameTables {
    containers: HashMap<String, ContainerNames>,
    /// Containers whose runtime name is wanted, in the order they were first seen.
    docker_pending: VecDeque<String>,
    docker_backoff: Backoff,
    pods: HashMap<String, PodInfo>,
    /// A pod uid was seen that the last `/pods` did not hold: fetch again (after the
    /// backoff) instead of waiting for the refresh.
    pods_wanted: HashSet<String>,
    pods_fetched: Option<Instant>,
    /// Pods the last list did not hold (deleted, or an exited process's): not asked for
    /// again before the next regular refresh.
    pods_unlisted: HashSet<String>,
    kubelet_backoff: Backoff,
    /// Answers that arrived since the last collection began: applied when the next one
    /// begins, so that all series of one collection see the same names.
    docker_arrived: Vec<(String, DockerAnswer)>,
    pods_arrived: Option<HashMap<String, PodInfo>>,
}

#[derive(Debug, Default)]
struct Counters {
    docker_ok: AtomicU64,
    docker_failed: AtomicU64,
    kubelet_ok: AtomicU64,
    kubelet_failed: AtomicU64,
    evicted: AtomicU64,
}

struct Shared {
    settings: Settings,
    tenants: Vec<TenantRule>,
    tenant_slots: TenantSlots,
    names: Mutex<NameTables>,
    wake: Condvar,
    cgroups: Mutex<Option<CgroupPaths>>,
    counters: Counters,
}

#[derive(Debug, Clone)]
struct Settings {
    enabled: bool,
    docker_socket: Option<PathBuf>,
    kubelet_url: Option<String>,
    kubelet_token_file: Option<PathBuf>,
    kubelet_trust: Option<Trust>,
    refresh: Duration,
    max_containers: usize,
    timeout: Duration,
}

/// The shared attribution service: one per agent, cloned into every probe.
#[derive(Clone)]
pub struct Workloads {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("settings", &self.shared.settings)
            .finish()
    }
}

impl Default for Workloads {
    /// Attribution off: no labels, no lookups.
    fn default() -> Self {
        Workloads::build(Settings {
            enabled: false,
            docker_socket: None,
            kubelet_url: None,
            kubelet_token_file: None,
            kubelet_trust: None,
            refresh: Duration::from_secs(30),
            max_containers: 0,
            timeout: Duration::from_secs(2),
        })
    }
}

impl Workloads {
    /// Starts the name lookups in the background when a source is configured.
    pub fn start(config: &WorkloadsConfig, tenants: &TenantsConfig) -> Workloads {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let mut workloads = Workloads::build(Settings {
            enabled: config.enabled,
            docker_socket: non_empty(&config.docker_socket).map(PathBuf::from),
            kubelet_url: non_empty(expand_env(&config.kubelet_url).trim_end_matches('/')),
            kubelet_token_file: non_empty(&config.kubelet_token_file).map(PathBuf::from),
            kubelet_trust: if config.kubelet_insecure_skip_verify {
                Some(Trust::Anything)
            } else {
                non_empty(&config.kubelet_ca_file).map(|file| Trust::CaFile(file.into()))
            },
            refresh: Duration::from_secs(config.refresh_secs.max(1)),
            max_containers: config.max_containers.get() as usize,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        });
        if let Some(shared) = Arc::get_mut(&mut workloads.shared) {
            shared.tenants = tenants.rules.clone();
            shared.tenant_slots = TenantSlots::new(tenants);
        }
        let settings = &workloads.shared.settings;
        if settings.enabled && (settings.docker_socket.is_some() || settings.kubelet_url.is_some())
        {
            let weak = Arc::downgrade(&workloads.shared);
            let spawned = std::thread::Builder::new()
                .name("periscope-names".into())
                .spawn(move || lookup_loop(weak));
            if let Err(err) = spawned {
                warn!(error = %err, "could not start the container name lookups; series carry ids only");
            }
        }
        workloads
    }

    fn build(settings: Settings) -> Workloads {
        let max_backoff = settings.refresh.max(Duration::from_secs(1)) * 10;
        Workloads {
            shared: Arc::new(Shared {
                names: Mutex::new(NameTables {
                    containers: HashMap::new(),
                    docker_pending: VecDeque::new(),
                    docker_backoff: Backoff::new(max_backoff),
                    pods: HashMap::new(),
                    pods_wanted: HashSet::new(),
                    pods_fetched: None,
                    pods_unlisted: HashSet::new(),
                    kubelet_backoff: Backoff::new(max_backoff),
                    docker_arrived: Vec::new(),
                    pods_arrived: None,
                }),
                wake: Condvar::new(),
                cgroups: Mutex::new(None),
                tenants: Vec::new(),
                tenant_slots: TenantSlots::default(),
                settings,
                counters: Counters::default(),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.shared.settings.enabled
    }

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
    fn classified(&self, mut workload: Workload) -> Workload {
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

    /// The labels of a process's series: `process_pid` (when given),
    /// `process_executable_name`, `service_name` (its systemd service outside containers,
    /// else its executable), then its container's and pod's.
    pub fn process_labels(&self, pid: Option<u32>, name: &str, workload: &Workload) -> Labels {
        let mut labels = Labels::with_capacity(9);
        if let Some(pid) = pid {
            labels.push(("process_pid", pid.to_string()));
        }
        labels.push(("process_executable_name", name.to_string()));
        labels.push((
            "service_name",
            workload.service().unwrap_or(name).to_string(),
        ));
        labels.extend(self.workload_labels(workload));
        labels
    }

    /// A workload's own labels: its container's and pod's, and its tenant. Spans carry
    /// them as resource attributes.
    pub fn workload_labels(&self, workload: &Workload) -> Labels {
        let mut labels = Labels::new();
        self.append_labels(workload, &mut labels);
        if let Some(tenant) = self.tenant_of(workload) {
            labels.push(("tenant", tenant.name));
        }
        labels
    }

    /// The tenant of a workload: the first rule that matches what is known of it now
    /// (names and labels may arrive later, and change the answer).
    pub fn tenant_of(&self, workload: &Workload) -> Option<Tenant> {
        if self.shared.tenants.is_empty() {
            return None;
        }
        if let (None, None, Some(tenant)) = (&workload.0, &workload.1, &workload.2) {
            return Some(Tenant {
                name: tenant.to_string(),
                dropped: false,
            });
        }
        let (container_id, pod_uid) = match workload.0.as_deref() {
            Some(WorkloadId::Container { id, pod_uid }) => (Some(id), pod_uid.as_ref()),
            _ => (None, None),
        };
        let names = lock(&self.shared.names);
        let pod = pod_uid.and_then(|uid| names.pods.get(uid));
        let container_labels = container_id
            .and_then(|id| names.containers.get(id))
            .map(|known| &known.labels);
        let subset = |want: &BTreeMap<String, String>, have: Option<&BTreeMap<String, String>>| {
            want.iter()
                .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
        };
        self.shared
            .tenants
            .iter()
            .find(|rule| {
                rule.cgroup_path.as_deref().is_none_or(|glob| {
                    workload
                        .cgroup_path()
                        .is_some_and(|p| glob_matches(glob, p))
                }) && rule
                    .k8s_namespace
                    .as_deref()
                    .is_none_or(|glob| pod.is_some_and(|pod| glob_matches(glob, &pod.namespace)))
                    && subset(&rule.pod_labels, pod.map(|pod| &pod.labels))
                    && subset(&rule.container_labels, container_labels)
            })
            .map(|rule| Tenant {
                name: rule.tenant.clone(),
                dropped: rule.drop,
            })
    }

    /// The BPF programs' slots of the kept tenants (bpf/tenants.h).
    pub fn tenant_slots(&self) -> &TenantSlots {
        &self.shared.tenant_slots
    }

    /// The slot of a workload's tenant: 0 for none, DROPPED_SLOT for a dropped one.
    pub fn tenant_slot(&self, workload: &Workload) -> u32 {
        match self.tenant_of(workload) {
            None => 0,
            Some(tenant) if tenant.dropped => DROPPED_SLOT,
            Some(tenant) => self.shared.tenant_slots.slot_of(&tenant.name),
        }
    }

    /// The cgroups of tenants, by id, with their slot (or DROPPED_SLOT), sorted: found
    /// by walking the cgroup v2 hierarchy (at most `limit` cgroups are looked at).
    /// Cgroups of no tenant are left out.
    pub fn cgroup_tenants(&self, limit: usize) -> Vec<(u64, u32)> {
        if self.shared.tenants.is_empty() {
            return Vec::new();
        }
        let Some(root) = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| unified_mount(&text))
        else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for (id, path) in super::cgroup::walk(&root, limit) {
            let slot = self.tenant_slot(&Workload::of_cgroup_path(&path));
            if slot != 0 {
                found.push((id, slot));
            }
        }
        found.sort_unstable();
        found
    }

    /// Appends a container's labels, with the names known so far. Asks for the names
    /// that are missing.
    pub fn append_labels(&self, workload: &Workload, labels: &mut Labels) {
        let Some(WorkloadId::Container {
            id: container_id,
            pod_uid,
        }) = workload.0.as_deref()
        else {
            return;
        };
        let mut names = lock(&self.shared.names);
        let now = Instant::now();
        let mut wake = false;
        let runtime_name = match names.containers.get_mut(container_id) {
            Some(known) => {
                known.last_used = Some(now);
                known.runtime_name.clone()
            }
            None => {
                self.remember(&mut names, container_id, now);
                wake = self.shared.settings.docker_socket.is_some();
                None
            }
        };
        let pod = pod_uid.as_ref().and_then(|uid| {
            let pod = names.pods.get(uid).cloned();
            if pod.is_none()
                && self.shared.settings.kubelet_url.is_some()
                && !names.pods_unlisted.contains(uid)
            {
                wake |= names.pods_wanted.insert(uid.clone());
            }
            pod
        });
        drop(names);
        if wake {
            self.shared.wake.notify_one();
        }
        let pod_container = pod
            .as_ref()
            .and_then(|pod| pod.containers.get(container_id).cloned());
        labels.push(("container_id", container_id.clone()));
        if let Some(name) = runtime_name.or_else(|| pod_container.clone()) {
            labels.push(("container_name", name));
        }
        if let Some(uid) = pod_uid {
            if let Some(pod) = &pod {
                labels.push(("k8s_namespace_name", pod.namespace.clone()));
                labels.push(("k8s_pod_name", pod.name.clone()));
            }
            labels.push(("k8s_pod_uid", uid.clone()));
            if let Some(name) = pod_container {
                labels.push(("k8s_container_name", name));
            }
        }
    }

    /// A new container in the names table; at the cap, the one unused the longest
    /// leaves (its names are asked again if it comes back).
    fn remember(&self, names: &mut NameTables, container_id: &str, now: Instant) {
        let cap = self.shared.settings.max_containers;
        if cap == 0 {
            return;
        }
        if names.containers.len() >= cap {
            let oldest = names
                .containers
                .iter()
                .min_by_key(|(_, known)| known.last_used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                names.containers.remove(&oldest);
                names.docker_pending.retain(|id| *id != oldest);
                self.shared.counters.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        names.containers.insert(
            container_id.to_string(),
            ContainerNames {
                runtime_name: None,
                labels: BTreeMap::new(),
                last_used: Some(now),
            },
        );
        if self.shared.settings.docker_socket.is_some() {
            names.docker_pending.push_back(container_id.to_string());
        }
    }

    /// Makes the names that arrived since the last collection visible: called as a
    /// collection begins, so that a name never appears halfway through one.
    pub fn begin_collection(&self) {
        let mut names = lock(&self.shared.names);
        let names = &mut *names;
        for (id, answer) in names.docker_arrived.drain(..) {
            if let Some(known) = names.containers.get_mut(&id) {
                known.runtime_name = answer.name;
                known.labels = answer.labels;
            }
        }
        if let Some(pods) = names.pods_arrived.take() {
            names.pods = pods;
        }
    }

    /// Takes the pods of a kubelet `/pods` body as the lookups would (for benchmarks and
    /// tests that have no kubelet); how many pods it held.
    pub fn load_pods(&self, body: &[u8]) -> Result<usize, String> {
        let pods = parse_pods(body)?;
        let count = pods.len();
        lock(&self.shared.names).pods = pods;
        Ok(count)
    }

    /// The attribution service's own metrics.
    pub fn families(&self) -> Vec<Family> {
        if !self.enabled() {
            return Vec::new();
        }
        let counters = &self.shared.counters;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let mut lookups = Family::new(
            "periscope_workload_lookups",
            "Name lookups of containers and pods, by source and outcome. Failed lookups are retried with backoff; meanwhile series carry ids.",
            MetricKind::Counter,
        );
        for (source, ok, failed) in [
            ("docker", &counters.docker_ok, &counters.docker_failed),
            ("kubelet", &counters.kubelet_ok, &counters.kubelet_failed),
        ] {
            for (outcome, value) in [("success", ok), ("failure", failed)] {
                lookups.push(
                    vec![("source", source.into()), ("outcome", outcome.into())],
                    Value::Counter(load(value)),
                );
            }
        }
        let (containers, pods) = {
            let names = lock(&self.shared.names);
            (names.containers.len(), names.pods.len())
        };
        let mut entries = Family::new(
            "periscope_workload_cache_entries",
            "Entries in the container and pod name caches.",
            MetricKind::Gauge,
        );
        entries.push(
            vec![("cache", "containers".into())],
            Value::Gauge(containers as f64),
        );
        entries.push(vec![("cache", "pods".into())], Value::Gauge(pods as f64));
        let mut capacity = Family::new(
            "periscope_workload_cache_capacity",
            "Containers the name cache holds at most (workloads.max_containers).",
            MetricKind::Gauge,
        );
        capacity.push(
            Vec::new(),
            Value::Gauge(self.shared.settings.max_containers as f64),
        );
        let mut evicted = Family::new(
            "periscope_workload_cache_evictions",
            "Containers pushed out of the full name cache (the least recently used); their names are looked up again when they come back.",
            MetricKind::Counter,
        );
        evicted.push(Vec::new(), Value::Counter(load(&counters.evicted)));
        vec![lookups, entries, capacity, evicted]
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these tables inconsistent: use them as they are.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The background lookups: ends when the last handle of the service is dropped.
fn lookup_loop(weak: Weak<Shared>) {
    // Sockets and HTTP need no capability: this thread gives up what it inherited.
    if let Err(err) = crate::kernel::caps::keep_only(&[]) {
        warn!(error = %err, "the name lookup thread keeps its capabilities");
    }
    let mut announced = (false, false);
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let settings = shared.settings.clone();
        let now = Instant::now();
        if let Some(socket) = &settings.docker_socket {
            lookup_docker(&shared, socket, now, &mut announced.0);
        }
        if let Some(url) = &settings.kubelet_url {
            lookup_kubelet(&shared, url, now, &mut announced.1);
        }
        let names = lock(&shared.names);
        let _ = shared
            .wake
            .wait_timeout(names, Duration::from_secs(1))
            .map(|(guard, _)| drop(guard));
    }
}

fn lookup_docker(shared: &Shared, socket: &Path, now: Instant, announced: &mut bool) {
    loop {
        let id = {
            let mut names = lock(&shared.names);
            if !names.docker_backoff.ready(now) {
                return;
            }
            match names.docker_pending.pop_front() {
                Some(id) => id,
                None => return,
            }
        };
        let outcome = docker_container(socket, &id, shared.settings.timeout);
        let mut names = lock(&shared.names);
        match outcome {
            Ok(answer) => {
                shared.counters.docker_ok.fetch_add(1, Ordering::Relaxed);
                names.docker_backoff.succeeded();
                if !*announced {
                    info!(socket = %socket.display(), "container names from the Docker Engine API");
                    *announced = true;
                }
                if names.containers.contains_key(&id) {
                    names.docker_arrived.push((id, answer));
                }
            }
            Err(LookupError::Unavailable(err)) => {
                // No Docker here (or not yet): try again later, without counting each
                // container as a failure.
                debug!(socket = %socket.display(), error = %err, "Docker Engine API not reachable");
                names.docker_pending.push_front(id);
                names.docker_backoff.failed(now);
                return;
            }
            Err(LookupError::Failed(err)) => {
                shared
                    .counters
                    .docker_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(container = %id, error = %err, "Docker lookup failed");
                if names.containers.contains_key(&id) {
                    names.docker_pending.push_back(id);
                }
                names.docker_backoff.failed(now);
                return;
            }
        }
    }
}

fn lookup_kubelet(shared: &Shared, url: &str, now: Instant, announced: &mut bool) {
    {
        let names = lock(&shared.names);
        // A pod not in the last list makes a new fetch, at most every few seconds.
        let due = names.pods_fetched.is_none_or(|at| {
            let age = now.duration_since(at);
            age >= shared.settings.refresh
                || (!names.pods_wanted.is_empty() && age >= WANTED_POD_REFETCH)
        });
        if !due || !names.kubelet_backoff.ready(now) {
            return;
        }
    }
    let token = shared
        .settings
        .kubelet_token_file
        .as_ref()
        .and_then(|file| std::fs::read_to_string(file).ok())
        .map(|t| t.trim().to_string());
    let outcome = fetch_pods(
        url,
        token.as_deref(),
        shared.settings.kubelet_trust.as_ref(),
        shared.settings.timeout,
    );
    let mut names = lock(&shared.names);
    match outcome {
        Ok(pods) => {
            shared.counters.kubelet_ok.fetch_add(1, Ordering::Relaxed);
            if !*announced {
                info!(url, pods = pods.len(), "pod names from the kubelet");
                *announced = true;
            }
            names.kubelet_backoff.succeeded();
            names.pods_fetched = Some(now);
            let unknown: Vec<String> = names
                .pods_wanted
                .iter()
                .filter(|uid| !pods.contains_key(*uid))
                .cloned()
                .collect();
            names.pods_arrived = Some(pods);
            names.pods_wanted.clear();
            if !unknown.is_empty() {
                // Pods the kubelet does not list (yet, or any more): wait for the next
                // refresh.
                debug!(pods = unknown.len(), "pods not listed by the kubelet");
            }
            names.pods_unlisted = unknown.into_iter().collect();
        }
        Err(err) => {
            shared
                .counters
                .kubelet_failed
                .fetch_add(1, Ordering::Relaxed);
            warn!(url, error = %err, "kubelet /pods lookup failed; pod labels fall back to ids");
            names.kubelet_backoff.failed(now);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Deserialize)]
struct DockerContainer {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: DockerConfig,
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// What the Docker Engine API says of a container.
#[derive(Debug)]
struct DockerAnswer {
    name: Option<String>,
    labels: BTreeMap<String, String>,
}

fn docker_container(
    socket: &Path,
    id: &str,
    timeout: Duration,
) -> Result<DockerAnswer, LookupError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| LookupError::Unavailable(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let (status, body) = http_get(
        &mut stream,
        "docker",
        &format!("/containers/{id}/json"),
        None,
    )
    .map_err(LookupError::Failed)?;
    match status {
        200 => {
            let container: DockerContainer = serde_json::from_slice(&body)
                .map_err(|e| LookupError::Failed(format!("bad container JSON: {e}")))?;
            let name = container.name.trim_start_matches('/').to_string();
            Ok(DockerAnswer {
                name: (!name.is_empty()).then_some(name),
                labels: container.config.labels.unwrap_or_default(),
            })
        }
        // Not a Docker container (containerd's own, or gone): no name, no retry.
        404 => Ok(DockerAnswer {
            name: None,
            labels: BTreeMap::new(),
        }),
        other => Err(LookupError::Failed(format!("HTTP status {other}"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodList {
    items: Vec<Pod>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Pod {
    metadata: PodMetadata,
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodMetadata {
    name: String,
    namespace: String,
    uid: String,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    container_statuses: Vec<ContainerStatus>,
    init_container_statuses: Vec<ContainerStatus>,
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID")]
    container_id: String,
}

/// The pods of the kubelet's `/pods`, by uid.
fn parse_pods(body: &[u8]) -> Result<HashMap<String, PodInfo>, String> {
    let list: PodList = serde_json::from_slice(body).map_err(|e| format!("bad /pods JSON: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|pod| !pod.metadata.uid.is_empty())
        .map(|pod| {
            let containers = pod
                .status
                .container_statuses
                .iter()
                .chain(&pod.status.init_container_statuses)
                .chain(&pod.status.ephemeral_container_statuses)
                .filter_map(|status| {
                    // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
                    let id = status.container_id.rsplit("://").next()?;
                    (!id.is_empty()).then(|| (id.to_string(), status.name.clone()))
                })
                .collect();
            (
                pod.metadata.uid,
                PodInfo {
                    name: pod.metadata.name,
                    namespace: pod.metadata.namespace,
                    labels: pod.metadata.labels,
                    containers,
                },
            )
        })
        .collect())
}

fn fetch_pods(
    url: &str,
    token: Option<&str>,
    trust: Option<&Trust>,
    timeout: Duration,
) -> Result<HashMap<String, PodInfo>, String> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(format!("{url}: not an http:// or https:// URL")),
    };
    let (authority, base) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("{authority}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let path = format!("{base}/pods");
    let (status, body) = if tls {
        let trust = trust.ok_or_else(|| format!("{url}: no kubelet_ca_file"))?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut tls = kubelet_tls::connect(kubelet_tls::client_config(trust)?, host, stream)?;
        http_get(&mut tls, authority, &path, token)?
    } else {
        http_get(&mut stream, authority, &path, token)?
    };
    if status != 200 {
        return Err(format!("HTTP status {status}"));
    }
    parse_pods(&body)
}

const WANTED_POD_REFETCH: Duration = Duration::from_secs(2);

/// Largest response read: a node's `/pods` with a few hundred pods is a few MiB.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// One HTTP/1.0 GET (the server closes the connection after the response, so no
/// chunked bodies): the status and the body.
fn http_get(
    stream: &mut (impl Read + Write),
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}Accept: application/json\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut response = Vec::new();
    match stream
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut response)
    {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: the HTTP/1.0 response ends with
        // the connection all the same.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(format!("reading the response: {e}")),
    }
    if response.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
    }
    let split = memchr::memmem::find(&response, b"\r\n\r\n")
        .ok_or_else(|| "response without a header end".to_string())?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", head.lines().next()))?;
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Err("chunked response to an HTTP/1.0 request".into());
    }
    Ok((status, response[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TenantsConfig, WorkloadsConfig};

    const ID: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
    const UID: &str = "0f3e6a1c-6f4b-4b1e-9a1e-2f8c9d7b6a51";

    fn labels(workloads: &Workloads, workload: &Workload) -> Labels {
        let mut out = Vec::new();
        workloads.append_labels(workload, &mut out);
        out
    }

    fn enabled(max_containers: u32) -> Workloads {
        let mut config = WorkloadsConfig::default();
        config.docker_socket.clear();
        config.kubelet_url.clear();
        config.max_containers = std::num::NonZeroU32::new(max_containers).expect("non-zero");
        Workloads::start(&config, &crate::config::TenantsConfig::default())
    }

    #[test]
    fn services_and_containers_from_paths() {
        let workloads = enabled(8);
        let nginx = Workload::of_cgroup_path("/system.slice/nginx.service");
        assert!(labels(&workloads, &nginx).is_empty());
        assert_eq!(
            workloads.process_labels(Some(7), "nginx-worker", &nginx),
            vec![
                ("process_pid", "7".to_string()),
                ("process_executable_name", "nginx-worker".to_string()),
                ("service_name", "nginx".to_string()),
            ]
        );
        assert!(Workload::of_cgroup_path("/user.slice/user-0.slice/session-3.scope").is_none());
        assert!(Workload::of_cgroup_path("/").is_none());
        let docker = Workload::of_cgroup_path(&format!("/docker/{ID}"));
        assert_eq!(
            labels(&workloads, &docker),
            vec![("container_id", ID.to_string())]
        );
        let pod = Workload::of_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(
            labels(&workloads, &pod),
            vec![
                ("container_id", ID.to_string()),
                ("k8s_pod_uid", UID.to_string())
            ]
        );
        assert_ne!(docker, pod);
        assert_eq!(
            docker,
            Workload::of_cgroup_path(&format!("/docker/{ID}/init.scope"))
        );
    }

    #[test]
    fn environment_in_urls() {
        std::env::set_var("PERISCOPE_TEST_NODE", "10.0.0.7");
        assert_eq!(
            expand_env("https://${PERISCOPE_TEST_NODE}:10250"),
            "https://10.0.0.7:10250"
        );
        assert_eq!(expand_env("http://a/${"), "http://a/${");
        assert_eq!(expand_env("${PERISCOPE_TEST_UNSET_VAR}x"), "x");
    }

    #[test]
    fn globs() {
        assert!(glob_matches("payments-*", "payments-eu"));
        assert!(glob_matches(
            "/system.slice/*.service",
            "/system.slice/nginx.service"
        ));
        assert!(glob_matches("a?c", "abc"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("payments-*", "payment"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*b*b", "abxbb"));
    }

    #[test]
    fn the_first_matching_rule_names_the_tenant() {
        let rules: TenantsConfig = serde_yaml::from_str(
            "rules:\n  - tenant: shop\n    k8s_namespace: \"shop*\"\n    pod_labels: {team: web}\n  - tenant: batch\n    cgroup_path: \"/kubepods*\"\n    drop: true\n",
        )
        .expect("rules");
        let workloads = Workloads::start(
            &WorkloadsConfig {
                docker_socket: String::new(),
                ..WorkloadsConfig::default()
            },
            &rules,
        );
        let workload = Workload::of_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        // The pod is not known yet: only the path rule matches.
        assert_eq!(
            workloads.tenant_of(&workload),
            Some(Tenant {
                name: "batch".into(),
                dropped: true
            })
        );
        let mut pod = PodInfo {
            name: "web-1".into(),
            namespace: "shop".into(),
            ..PodInfo::default()
        };
        pod.labels.insert("team".into(), "web".into());
        lock(&workloads.shared.names).pods.insert(UID.into(), pod);
        assert_eq!(
            workloads.tenant_of(&workload).map(|t| t.name),
            Some("shop".into())
        );
        let labels = workloads.process_labels(None, "nginx", &workload);
        assert_eq!(labels.last(), Some(&("tenant", "shop".to_string())));
        // Outside containers, two tenants never share a series; one tenant's paths do.
        let outside = |path: &str| workloads.classified(Workload::of_cgroup_path(path));
        assert_ne!(outside("/kubepods-x/a"), outside("/user.slice/b"));
        assert_eq!(outside("/user.slice/b"), outside("/user.slice/c"));
    }

    #[test]
    fn names_from_pods() {
        let body = format!(
            r#"{{"kind":"PodList","items":[{{"metadata":{{"name":"web-1","namespace":"shop","uid":"{UID}"}},
            "status":{{"containerStatuses":[{{"name":"nginx","containerID":"containerd://{ID}"}},
            {{"name":"waiting","containerID":""}}]}}}}]}}"#
        );
        let pods = parse_pods(body.as_bytes()).expect("parses");
        let pod = &pods[UID];
        assert_eq!(
            (pod.name.as_str(), pod.namespace.as_str()),
            ("web-1", "shop")
        );
        assert_eq!(pod.containers.get(ID).map(String::as_str), Some("nginx"));
        assert_eq!(pod.containers.len(), 1);

        let workloads = enabled(8);
        lock(&workloads.shared.names).pods = pods;
        let workload = Workload::of_cgroup_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(
            labels(&workloads, &workload),
            vec![
                ("container_id", ID.to_string()),
                ("container_name", "nginx".to_string()),
                ("k8s_namespace_name", "shop".to_string()),
                ("k8s_pod_name", "web-1".to_string()),
                ("k8s_pod_uid", UID.to_string()),
                ("k8s_container_name", "nginx".to_string()),
            ]
        );
        assert!(parse_pods(b"{not json").is_err());
    }

    #[test]
    fn the_names_table_is_bounded() {
        let workloads = enabled(2);
        for n in 0..5u8 {
            let id = format!("{:064x}", n + 1);
            labels(
                &workloads,
                &Workload::of_cgroup_path(&format!("/docker/{id}")),
            );
        }
        assert_eq!(lock(&workloads.shared.names).containers.len(), 2);
        assert_eq!(workloads.shared.counters.evicted.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn http_responses() {
        let mut io = std::io::Cursor::new(Vec::new());
        // The cursor is written then read: fake a server by preloading the response.
        io.get_mut()
            .extend_from_slice(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}");
        let (status, body) = http_get(&mut ReadOnly(io), "h", "/p", None).expect("parses");
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert!(http_get(
            &mut ReadOnly(std::io::Cursor::new(chunked.to_vec())),
            "h",
            "/",
            None
        )
        .is_err());
    }

    /// Reads a canned response and swallows the request.
    struct ReadOnly(std::io::Cursor<Vec<u8>>);

    impl Read for ReadOnly {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for ReadOnly {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
