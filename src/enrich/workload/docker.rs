//! Container names and labels from the Docker Engine API, over its unix socket.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::http::{Client, Get, HttpError, Target};

#[derive(Debug, thiserror::Error)]
pub(super) enum LookupError {
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
pub(super) struct DockerAnswer {
    pub(super) name: Option<String>,
    pub(super) labels: BTreeMap<String, String>,
}

pub(super) fn docker_container(
    client: &Client,
    socket: &Path,
    id: &str,
) -> Result<DockerAnswer, LookupError> {
    let get = Get {
        authority: "docker",
        path: &format!("/containers/{id}/json"),
        token: None,
    };
    let response = client
        .get(Target::Unix(socket), &get)
        .map_err(|err| match err {
            HttpError::Connect(err) => LookupError::Unavailable(err.to_string()),
            err => LookupError::Failed(err.to_string()),
        })?;
    match response.status {
        200 => {
            let container: DockerContainer = serde_json::from_slice(&response.body)
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
