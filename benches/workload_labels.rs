//! Label-resolution cost: series per second from the probes' owners to the Prometheus
//! text, with full Kubernetes labels (container id and name, namespace, pod name and
//! uid, container name in the pod: looked up in the name cache for every series) against
//! process labels alone, in the same run.
//!
//! `cargo bench --bench workload_labels`

use std::hint::black_box;
use std::time::Instant;

use periscope::enrich::tenant::TenantsConfig;
use periscope::enrich::workload::WorkloadsConfig;
use periscope::enrich::{Workload, Workloads};
use periscope::export::prometheus::encode::{encode, Format};
use periscope::model::{Family, MetricKind, Value};

const SERIES: u32 = 20_000;
const ROUNDS: u32 = 20;

/// Renders `SERIES` syscall counters, their labels made by `labels`, `ROUNDS` times;
/// series per second.
fn measure(name: &str, workloads: &Workloads, workload_of: impl Fn(u32) -> Workload) -> f64 {
    let owners: Vec<(u32, Workload)> = (0..SERIES).map(|n| (n, workload_of(n))).collect();
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let mut family = Family::new("syscalls", "Syscalls completed.", MetricKind::Counter);
        for (n, workload) in &owners {
            let mut labels = workloads.process_labels(Some(100_000 + n), "nginx", workload);
            labels.push(("syscall", "read".to_string()));
            family.push(labels, Value::Counter(f64::from(*n)));
        }
        bytes += black_box(encode(&[family], Format::Text004)).len();
    }
    let per_second = f64::from(SERIES * ROUNDS) / start.elapsed().as_secs_f64();
    println!(
        "{name:<40} {per_second:>12.0} series/s  ({} bytes per series)",
        bytes / (SERIES * ROUNDS) as usize
    );
    per_second
}

fn main() {
    let config = WorkloadsConfig {
        docker_socket: String::new(),
        max_containers: std::num::NonZeroU32::new(SERIES).expect("non-zero"),
        ..WorkloadsConfig::default()
    };
    let workloads = Workloads::start(&config, &TenantsConfig::default());
    // 1,000 pods of one container each, 20 processes per container, names known.
    let pods = 1_000u32;
    let id = |n: u32| format!("{:064x}", n % pods);
    let uid = |n: u32| format!("{:08x}-0000-4000-8000-{:012x}", n % pods, n % pods);
    let pod_list = format!(
        r#"{{"items":[{}]}}"#,
        (0..pods)
            .map(|n| format!(
                r#"{{"metadata":{{"name":"web-{n}","namespace":"shop","uid":"{}"}},"status":{{"containerStatuses":[{{"name":"nginx","containerID":"containerd://{}"}}]}}}}"#,
                uid(n),
                id(n)
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let loaded = workloads.load_pods(pod_list.as_bytes()).expect("pods");
    assert_eq!(loaded, pods as usize);
    let bare = measure("process labels only", &workloads, |_| Workload::default());
    let full = measure("with full Kubernetes labels", &workloads, |n| {
        Workload::of_cgroup_path(&format!("/kubepods/burstable/pod{}/{}", uid(n), id(n)))
    });
    println!(
        "full Kubernetes labels render at {:.2}x the series rate of process labels alone",
        full / bare
    );
}
