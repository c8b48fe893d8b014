//! What the tables the lookups fill give: the labels of containers and pods (asking
//! for names not known yet), and the service's own metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::identity::WorkloadId;
use super::kubelet::parse_pods;
use super::{lock, ContainerNames, NameTables, Workload, Workloads};
use crate::model::{agent_labels, Family, Labels, MetricKind, Value};

impl Workloads {
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
        labels.push((agent_labels::CONTAINER_ID, container_id.clone()));
        if let Some(name) = runtime_name.or_else(|| pod_container.clone()) {
            labels.push((agent_labels::CONTAINER_NAME, name));
        }
        if let Some(uid) = pod_uid {
            if let Some(pod) = &pod {
                labels.push((agent_labels::K8S_NAMESPACE_NAME, pod.namespace.clone()));
                labels.push((agent_labels::K8S_POD_NAME, pod.name.clone()));
            }
            labels.push((agent_labels::K8S_POD_UID, uid.clone()));
            if let Some(name) = pod_container {
                labels.push((agent_labels::K8S_CONTAINER_NAME, name));
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
