//! Pod names, namespaces and labels from this node's kubelet (`/pods`).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::http::{Client, Get, Target};
use crate::enrich::kubelet_tls::{self, Trust};

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct PodInfo {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) labels: BTreeMap<String, String>,
    /// Container id (without the `containerd://` scheme) -> the container's name in the pod.
    pub(super) containers: HashMap<String, String>,
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
pub(super) fn parse_pods(body: &[u8]) -> Result<HashMap<String, PodInfo>, String> {
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

pub(super) fn fetch_pods(
    client: &Client,
    url: &str,
    token: Option<&str>,
    trust: Option<&Trust>,
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
    let target = if tls {
        let trust = trust.ok_or_else(|| format!("{url}: no kubelet_ca_file"))?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        Target::Tls {
            address,
            host,
            config: kubelet_tls::client_config(trust)?,
        }
    } else {
        Target::Tcp(address)
    };
    let get = Get {
        authority,
        path: &format!("{base}/pods"),
        token,
    };
    let response = client
        .get(target, &get)
        .map_err(|e| format!("{authority}: {e}"))?;
    if response.status != 200 {
        return Err(format!("HTTP status {}", response.status));
    }
    parse_pods(&response.body)
}
