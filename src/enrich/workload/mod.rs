//! Who a process works for: its container, its Kubernetes pod, or its systemd service,
//! from its cgroup; and the names of those, from the node's own container runtime and
//! kubelet.
//!
//! Identities come from the cgroup path alone and never wait on anything. Names arrive
//! later from a background thread that asks the Docker Engine API (one container at a
//! time) and the kubelet's `/pods` (the pods of this node only); until they do, or when
//! neither answers, series carry the ids. Every table here is bounded.
//!
//! Here, the registry every probe holds; `identity` makes a workload of a cgroup path,
//! `names` keeps and hands out what was learnt of containers and pods, `lookups` is the
//! background thread that learns it from `docker` and `kubelet` over `http`, and
//! `tenancy` applies the tenant rules.

mod config;
mod docker;
mod http;
mod identity;
mod kubelet;
mod lookups;
mod names;
mod tenancy;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;

use super::cgroup::CgroupPaths;
use super::kubelet_tls::Trust;
use super::tenant::{TenantRule, TenantSlots, TenantsConfig};
use crate::model::{agent_labels, Labels};

pub use config::WorkloadsConfig;
pub use identity::{RecordedCgroup, Workload};
pub use tenancy::{glob_matches, Tenant};

use config::expand_env;
use docker::DockerAnswer;
use kubelet::PodInfo;
use lookups::Backoff;

/// Names learnt for a container, from the runtime and from the kubelet.
#[derive(Debug, Clone, Default)]
struct ContainerNames {
    /// The runtime's name (Docker's, without its leading `/`).
    runtime_name: Option<String>,
    /// The runtime's labels of the container, for tenant rules.
    labels: BTreeMap<String, String>,
    last_used: Option<Instant>,
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
                .spawn(move || lookups::lookup_loop(weak));
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

    /// The labels of a process's series: `process_pid` (when given),
    /// `process_executable_name`, `service_name` (its systemd service outside containers,
    /// else its executable), then its container's and pod's.
    pub fn process_labels(&self, pid: Option<u32>, name: &str, workload: &Workload) -> Labels {
        let mut labels = Labels::with_capacity(9);
        if let Some(pid) = pid {
            labels.push((agent_labels::PROCESS_PID, pid.to_string()));
        }
        labels.push((agent_labels::PROCESS_EXECUTABLE_NAME, name.to_string()));
        labels.push((
            agent_labels::SERVICE_NAME,
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
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these tables inconsistent: use them as they are.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
