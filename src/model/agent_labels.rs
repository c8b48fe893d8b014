//! The labels the agent itself puts on every probe's per-process series and on spans'
//! resources (the process and workload labelling in `enrich`), whatever the probe, with
//! their OpenTelemetry resource attribute names. Kept here, beside the families, so
//! that exporters find every name in the model; a probe's own labels are named by its
//! families (`Family::with_attributes`).

pub const PROCESS_PID: &str = "process_pid";
pub const PROCESS_EXECUTABLE_NAME: &str = "process_executable_name";
pub const SERVICE_NAME: &str = "service_name";
pub const CONTAINER_ID: &str = "container_id";
pub const CONTAINER_NAME: &str = "container_name";
pub const K8S_NAMESPACE_NAME: &str = "k8s_namespace_name";
pub const K8S_POD_NAME: &str = "k8s_pod_name";
pub const K8S_POD_UID: &str = "k8s_pod_uid";
pub const K8S_CONTAINER_NAME: &str = "k8s_container_name";

/// The resource conventions' names of the labels above. `tenant` is the agent's too but
/// has no convention: it keeps its own name.
const OTEL_ATTRIBUTES: &[(&str, &str)] = &[
    (PROCESS_PID, "process.pid"),
    (PROCESS_EXECUTABLE_NAME, "process.executable.name"),
    (SERVICE_NAME, "service.name"),
    (CONTAINER_ID, "container.id"),
    (CONTAINER_NAME, "container.name"),
    (K8S_NAMESPACE_NAME, "k8s.namespace.name"),
    (K8S_POD_NAME, "k8s.pod.name"),
    (K8S_POD_UID, "k8s.pod.uid"),
    (K8S_CONTAINER_NAME, "k8s.container.name"),
];

/// The OpenTelemetry attribute name of one of the agent's labels; `None` for any other
/// label.
pub fn otel_attribute(label: &str) -> Option<&'static str> {
    OTEL_ATTRIBUTES
        .iter()
        .find(|(name, _)| *name == label)
        .map(|(_, attribute)| *attribute)
}

/// The OpenTelemetry name of a label of a span's resource (its workload's labels, all
/// the agent's): the convention's where there is one, its own otherwise.
pub fn resource_attribute(label: &'static str) -> &'static str {
    otel_attribute(label).unwrap_or(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_labels_have_their_resource_conventions_names() {
        assert_eq!(resource_attribute(PROCESS_PID), "process.pid");
        assert_eq!(resource_attribute(K8S_POD_UID), "k8s.pod.uid");
        assert_eq!(resource_attribute("tenant"), "tenant");
        assert_eq!(otel_attribute("http_route"), None);
    }
}
