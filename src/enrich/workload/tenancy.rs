//! The tenant rules applied to workloads, with what is known of them so far.

use std::collections::BTreeMap;

use super::identity::WorkloadId;
use super::{lock, Workload, Workloads};
use crate::enrich::cgroup::{self, unified_mount};
use crate::enrich::tenant::{TenantSlots, DROPPED_SLOT};

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

impl Workloads {
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
        for (id, path) in cgroup::walk(&root, limit) {
            let slot = self.tenant_slot(&Workload::of_cgroup_path(&path));
            if slot != 0 {
                found.push((id, slot));
            }
        }
        found.sort_unstable();
        found
    }
}
