use std::sync::atomic::Ordering;

use super::kubelet::{parse_pods, PodInfo};
use super::tenancy::glob_matches;
use super::*;
use crate::enrich::tenant::{TenantLimits, TenantsConfig};
use crate::model::{Family, MetricKind, Series, Value, OVERFLOW};

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
    Workloads::start(&config, &TenantsConfig::default())
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
fn what_the_kernel_folded_joins_the_tenants_overflow_series() {
    let tenants: TenantsConfig = serde_yaml::from_str(
        "rules:\n  - tenant: a\n    cgroup_path: \"/a*\"\n  - tenant: gone\n    cgroup_path: \"/g*\"\n    drop: true\nmax_series_per_tenant: 1\n",
    )
    .expect("config");
    let series = |pid: u32, value: f64| Series {
        labels: vec![
            ("process_pid", pid.to_string()),
            ("process_executable_name", "loop".into()),
            ("service_name", "loop".into()),
            ("container_id", format!("c{pid}")),
            ("tenant", "a".into()),
            ("syscall", "getppid".into()),
        ],
        value: Value::Counter(value),
        created: None,
    };
    let mut limits = TenantLimits::new(&tenants).expect("rules");
    let mut family = Family::new("syscalls", "", MetricKind::Counter);
    family.series.push(series(1, 1.0));
    family.series.push(series(2, 2.0));
    // As a probe labels it: process labels of the tenant's overflow owner, then its own.
    let workloads = Workloads::start(
        &serde_yaml::from_str("enabled: true\ndocker_socket: \"\"\nkubelet_url: \"\"\n")
            .expect("workloads"),
        &tenants,
    );
    let mut kernel_overflow = workloads.process_labels(None, OVERFLOW, &Workload::of_tenant("a"));
    kernel_overflow.push(("syscall", "getppid".to_string()));
    family.series.push(Series {
        labels: kernel_overflow.clone(),
        value: Value::Counter(40.0),
        created: None,
    });
    let mut families = vec![family];
    limits.apply(&mut families);
    let out = &families[0].series;
    assert_eq!(out.len(), 2, "one kept series and one overflow: {out:?}");
    let overflow = out
        .iter()
        .find(|s| s.labels == kernel_overflow)
        .expect("one overflow series");
    assert!(matches!(overflow.value, Value::Counter(v) if v == 42.0));
    let folded: Vec<(Labels, f64)> = limits.families()[0]
        .series
        .iter()
        .map(|s| match s.value {
            Value::Gauge(v) => (s.labels.clone(), v),
            _ => (s.labels.clone(), f64::NAN),
        })
        .collect();
    assert_eq!(
        folded,
        [(vec![("tenant", "a".to_string())], 1.0)],
        "the kernel's part is not a series the cap folded"
    );
}
