//! Tenants on what the probes collected: each tenant has its own series cap per metric
//! family, beyond which its new series fold into its own overflow series (totals stay
//! exact, and one tenant cannot crowd out another's series); dropped tenants' series
//! are removed. The kernel side (BPF programs skipping the cgroups of dropped tenants,
//! and each tenant's share of their maps, bpf/tenants.h) is the probes' part; the slots
//! that tell tenants apart there are defined here.

mod config;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use config::{TenantRule, TenantsConfig};

use crate::model::{Family, Labels, MetricKind, Series, Value, OVERFLOW};

/// Labels that tell one process or workload from another: an overflow series has none
/// of them but the tenant's, so it is one series per tenant and remaining labels.
const PROCESS_LABELS: &[&str] = &[
    "process_pid",
    "container_id",
    "container_name",
    "k8s_namespace_name",
    "k8s_pod_name",
    "k8s_pod_uid",
    "k8s_container_name",
];

/// Tenants the BPF programs tell apart (PSC_MAX_TENANT_SLOTS of bpf/tenants.h), at
/// most, with slot 0 for the processes of no tenant.
pub use crate::model::layout::MAX_TENANT_SLOTS;
/// What a cgroup's entry in a program's `cgroup_tenants` says of a dropped tenant.
pub const DROPPED_SLOT: u32 = crate::model::layout::TENANT_DROPPED;

/// The slot of each kept tenant in the BPF programs' per-tenant shares and overflow
/// series: 1 and up, by name; slot 0 is the processes of no tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSlots {
    names: Vec<String>,
}

impl TenantSlots {
    pub fn new(config: &TenantsConfig) -> TenantSlots {
        let mut names: Vec<String> = config
            .rules
            .iter()
            .filter(|rule| !rule.drop)
            .map(|rule| rule.tenant.clone())
            .collect();
        names.sort_unstable();
        names.dedup();
        TenantSlots { names }
    }

    /// Kept tenants.
    pub fn kept(&self) -> usize {
        self.names.len()
    }

    /// Slots in use, slot 0 included: 1 without kept tenants.
    pub fn count(&self) -> u32 {
        (self.names.len() as u32 + 1).min(MAX_TENANT_SLOTS)
    }

    pub fn slot_of(&self, tenant: &str) -> u32 {
        self.names
            .binary_search_by(|name| name.as_str().cmp(tenant))
            .ok()
            .map(|index| index as u32 + 1)
            .filter(|slot| *slot < self.count())
            .unwrap_or(0)
    }

    /// The tenant of a slot: None for slot 0.
    pub fn name_of(&self, slot: u32) -> Option<&str> {
        let index = usize::try_from(slot.checked_sub(1)?).ok()?;
        self.names.get(index).map(String::as_str)
    }
}

#[derive(Debug)]
pub struct TenantLimits {
    cap: usize,
    dropped: HashSet<String>,
    /// The series each (family, tenant) keeps under its own labels: once kept, a series
    /// stays kept while it is collected, so a new series never pushes an old one out.
    kept: HashMap<(&'static str, String), HashSet<Labels>>,
    /// The series folded into their tenant's overflow: once folded, a series stays
    /// folded while it is collected, so the overflow series never loses counts to a
    /// place that opened up.
    overflowed: HashMap<(&'static str, String), HashSet<Labels>>,
    /// Series folded into each tenant's overflow at the last collection.
    folded: BTreeMap<String, u64>,
}

impl TenantLimits {
    /// None without tenant rules: nothing to do.
    pub fn new(config: &TenantsConfig) -> Option<TenantLimits> {
        if config.rules.is_empty() {
            return None;
        }
        Some(TenantLimits {
            cap: config.max_series_per_tenant.get() as usize,
            dropped: config
                .rules
                .iter()
                .filter(|rule| rule.drop)
                .map(|rule| rule.tenant.clone())
                .collect(),
            kept: HashMap::new(),
            overflowed: HashMap::new(),
            folded: BTreeMap::new(),
        })
    }

    pub fn apply(&mut self, families: &mut [Family]) {
        self.folded.clear();
        let mut seen: HashMap<(&'static str, String), HashSet<Labels>> = HashMap::new();
        let mut seen_folded: HashMap<(&'static str, String), HashSet<Labels>> = HashMap::new();
        for family in families.iter_mut() {
            if !family
                .series
                .iter()
                .any(|s| s.labels.iter().any(|(name, _)| *name == "tenant"))
            {
                continue;
            }
            let mut overflow: BTreeMap<Labels, Series> = BTreeMap::new();
            let series = std::mem::take(&mut family.series);
            for one in series {
                let Some(tenant) = tenant_of(&one.labels).map(str::to_string) else {
                    family.series.push(one);
                    continue;
                };
                if self.dropped.contains(&tenant) {
                    continue;
                }
                // What the kernel folded into the tenant's overflow (its share of a
                // map was full) joins what the cap folds here: one series.
                if is_overflow(&one.labels) {
                    match overflow.get_mut(&one.labels) {
                        Some(existing) => merge(existing, &one),
                        None => {
                            overflow.insert(one.labels.clone(), one);
                        }
                    }
                    continue;
                }
                let key = (family.name, tenant.clone());
                let was_folded = self
                    .overflowed
                    .get(&key)
                    .is_some_and(|folded| folded.contains(&one.labels));
                let kept = self.kept.entry(key.clone()).or_default();
                if !was_folded && (kept.contains(&one.labels) || kept.len() < self.cap) {
                    kept.insert(one.labels.clone());
                    seen.entry(key).or_default().insert(one.labels.clone());
                    family.series.push(one);
                    continue;
                }
                *self.folded.entry(tenant).or_default() += 1;
                seen_folded
                    .entry(key.clone())
                    .or_default()
                    .insert(one.labels.clone());
                self.overflowed
                    .entry(key)
                    .or_default()
                    .insert(one.labels.clone());
                let labels = overflow_labels(&one.labels);
                match overflow.get_mut(&labels) {
                    Some(existing) => merge(existing, &one),
                    None => {
                        overflow.insert(labels.clone(), Series { labels, ..one });
                    }
                }
            }
            family.series.extend(overflow.into_values());
        }
        self.overflowed.retain(|key, folded| {
            let Some(now) = seen_folded.get(key) else {
                return false;
            };
            folded.retain(|labels| now.contains(labels));
            true
        });
        // Series no longer collected (folded into an exited aggregate, say) free their
        // place.
        self.kept.retain(|key, kept| {
            let Some(now) = seen.get(key) else {
                return false;
            };
            kept.retain(|labels| now.contains(labels));
            true
        });
    }

    /// `periscope_tenant_overflow_series{tenant}`: what the caps folded at the last
    /// collection.
    pub fn families(&self) -> Vec<Family> {
        let mut family = Family::new(
            "periscope_tenant_overflow_series",
            "Series folded into their tenant's overflow series at the last collection, because the tenant had tenants.max_series_per_tenant series of that metric.",
            MetricKind::Gauge,
        );
        for (tenant, count) in &self.folded {
            family.push(
                vec![("tenant", tenant.clone())],
                Value::Gauge(*count as f64),
            );
        }
        vec![family]
    }
}

fn tenant_of(labels: &Labels) -> Option<&str> {
    labels
        .iter()
        .find(|(name, _)| *name == "tenant")
        .map(|(_, value)| value.as_str())
}

/// A tenant's overflow series already: no process, and the overflow executable.
fn is_overflow(labels: &Labels) -> bool {
    labels
        .iter()
        .all(|(name, _)| !PROCESS_LABELS.contains(name))
        && labels
            .iter()
            .any(|(name, value)| *name == "process_executable_name" && value == OVERFLOW)
}

fn overflow_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(name, _)| !PROCESS_LABELS.contains(name))
        .map(|(name, value)| match *name {
            "process_executable_name" | "service_name" => (*name, OVERFLOW.to_string()),
            _ => (*name, value.clone()),
        })
        .collect()
}

fn merge(into: &mut Series, from: &Series) {
    into.created = match (into.created, from.created) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match (&mut into.value, &from.value) {
        (Value::Counter(a), Value::Counter(b)) | (Value::Gauge(a), Value::Gauge(b)) => *a += b,
        (Value::Histogram(a), Value::Histogram(b)) if a.bounds == b.bounds => {
            for (mine, theirs) in a.cumulative.iter_mut().zip(&b.cumulative) {
                *mine += theirs;
            }
            a.count += b.count;
            a.sum += b.sum;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cap: u32) -> TenantsConfig {
        serde_yaml::from_str(&format!(
            "rules:\n  - tenant: a\n    cgroup_path: \"/a*\"\n  - tenant: gone\n    cgroup_path: \"/g*\"\n    drop: true\nmax_series_per_tenant: {cap}\n"
        ))
        .expect("config")
    }

    fn series(pid: u32, tenant: &str, value: f64) -> Series {
        Series {
            labels: vec![
                ("process_pid", pid.to_string()),
                ("process_executable_name", "loop".into()),
                ("service_name", "loop".into()),
                ("container_id", format!("c{pid}")),
                ("tenant", tenant.into()),
                ("syscall", "getppid".into()),
            ],
            value: Value::Counter(value),
            created: None,
        }
    }

    #[test]
    fn a_tenant_over_its_cap_folds_into_its_own_overflow() {
        let mut limits = TenantLimits::new(&config(2)).expect("rules");
        let mut family = Family::new("syscalls", "", MetricKind::Counter);
        for pid in 1..=4 {
            family.series.push(series(pid, "a", f64::from(pid)));
        }
        family.series.push(series(9, "b", 9.0));
        family.series.push(series(10, "gone", 10.0));
        let mut families = vec![family];
        limits.apply(&mut families);
        let out = &families[0].series;
        let total: f64 = out
            .iter()
            .filter(|s| tenant_of(&s.labels) == Some("a"))
            .map(|s| match s.value {
                Value::Counter(v) => v,
                _ => 0.0,
            })
            .sum();
        assert_eq!(total, 10.0, "a's total stays exact");
        let overflow: Vec<_> = out
            .iter()
            .filter(|s| {
                s.labels
                    .contains(&("process_executable_name", OVERFLOW.into()))
            })
            .collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(
            overflow[0].labels,
            vec![
                ("process_executable_name", OVERFLOW.to_string()),
                ("service_name", OVERFLOW.to_string()),
                ("tenant", "a".to_string()),
                ("syscall", "getppid".to_string()),
            ]
        );
        assert!(matches!(overflow[0].value, Value::Counter(v) if v == 7.0));
        assert!(out.iter().any(|s| tenant_of(&s.labels) == Some("b")));
        assert!(out.iter().all(|s| tenant_of(&s.labels) != Some("gone")));
        assert_eq!(limits.folded.get("a"), Some(&2));

        // A kept series stays kept; a new one still folds.
        let mut family = Family::new("syscalls", "", MetricKind::Counter);
        family.series.push(series(5, "a", 5.0));
        family.series.push(series(1, "a", 1.0));
        family.series.push(series(2, "a", 2.0));
        let mut families = vec![family];
        limits.apply(&mut families);
        let pids: Vec<&str> = families[0]
            .series
            .iter()
            .filter_map(|s| s.labels.iter().find(|(n, _)| *n == "process_pid"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(pids, ["1", "2"]);
    }

    #[test]
    fn kept_tenants_get_slots_by_name_and_dropped_ones_none() {
        let slots = TenantSlots::new(&serde_yaml::from_str(
            "rules:\n  - tenant: web\n    cgroup_path: \"/w*\"\n  - tenant: batch\n    cgroup_path: \"/b*\"\n  - tenant: web\n    k8s_namespace: web\n  - tenant: gone\n    cgroup_path: \"/g*\"\n    drop: true\n",
        ).expect("config"));
        assert_eq!(slots.count(), 3);
        assert_eq!(slots.slot_of("batch"), 1);
        assert_eq!(slots.slot_of("web"), 2);
        assert_eq!(slots.slot_of("gone"), 0);
        assert_eq!(slots.name_of(0), None);
        assert_eq!(slots.name_of(2), Some("web"));
        assert_eq!(slots.name_of(3), None);
        assert_eq!(TenantSlots::default().count(), 1);
    }
}
