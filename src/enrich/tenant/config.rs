//! The tenants' settings, under `tenants` (documented in the default configuration).

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use serde::Deserialize;

use super::{TenantSlots, MAX_TENANT_SLOTS};
use crate::settings::{nonzero, Invalid, Range};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    /// Tried in order; the first rule that matches names a process's tenant.
    pub rules: Vec<TenantRule>,
    /// Series per metric family and tenant, at most; beyond, a tenant's new series
    /// fold into its own overflow series.
    pub max_series_per_tenant: NonZeroU32,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        TenantsConfig {
            rules: Vec::new(),
            max_series_per_tenant: nonzero(2000),
        }
    }
}

/// A rule matches when every matcher it gives matches (at least one must be given).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TenantRule {
    /// The `tenant` label of what matches.
    pub tenant: String,
    /// A glob (`*`, `?`) over the cgroup v2 path, as in /proc/PID/cgroup.
    pub cgroup_path: Option<String>,
    /// A glob over the Kubernetes namespace.
    pub k8s_namespace: Option<String>,
    /// Labels the pod must carry (from the kubelet).
    pub pod_labels: BTreeMap<String, String>,
    /// Labels the container must carry (from the Docker Engine API).
    pub container_labels: BTreeMap<String, String>,
    /// Drop the tenant: no series, and the BPF programs skip its processes.
    pub drop: bool,
}

impl TenantsConfig {
    /// Every number with the range it must fall in, keyed below `tenants`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![Range::entries(
            "max_series_per_tenant",
            self.max_series_per_tenant,
        )]
    }

    /// Checks that span rules. A tenant is found from a process's cgroup, so rules
    /// need the workloads' attribution on (`workloads_enabled`).
    pub fn check(&self, workloads_enabled: bool) -> Result<(), Invalid> {
        for (index, rule) in self.rules.iter().enumerate() {
            rule.check(index + 1)?;
        }
        if !self.rules.is_empty() && !workloads_enabled {
            return Err((
                "rules",
                "tenants need workloads.enabled: true (a tenant is found from a process's cgroup)"
                    .into(),
            ));
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if let Some(other) = self.rules[..index]
                .iter()
                .find(|other| other.tenant == rule.tenant && other.drop != rule.drop)
            {
                return Err((
                    "rules",
                    format!(
                        "tenant `{}` is dropped by one rule and kept by another: give every rule of a tenant the same `drop`",
                        other.tenant
                    ),
                ));
            }
        }
        let kept = TenantSlots::new(self).kept();
        let most = MAX_TENANT_SLOTS as usize - 1;
        if kept > most {
            return Err((
                "rules",
                format!("{kept} tenants are kept; at most {most} can be (the BPF programs give each its own share of their maps)"),
            ));
        }
        Ok(())
    }
}

impl TenantRule {
    /// A rule names its tenant and matches something; `position` counts from 1.
    fn check(&self, position: usize) -> Result<(), Invalid> {
        if self.tenant.is_empty() {
            return Err(("rules", format!("rule {position} has no `tenant` name")));
        }
        if self.cgroup_path.is_none()
            && self.k8s_namespace.is_none()
            && self.pod_labels.is_empty()
            && self.container_labels.is_empty()
        {
            return Err((
                "rules",
                format!(
                    "rule {position} (tenant `{}`) matches nothing: give cgroup_path, k8s_namespace, pod_labels or container_labels",
                    self.tenant
                ),
            ));
        }
        Ok(())
    }
}
