//! Container names and labels from the Docker Engine API, over its unix socket.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::http::http_get;

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
    socket: &Path,
    id: &str,
    timeout: Duration,
) -> Result<DockerAnswer, LookupError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| LookupError::Unavailable(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let (status, body) = http_get(
        &mut stream,
        "docker",
        &format!("/containers/{id}/json"),
        None,
    )
    .map_err(LookupError::Failed)?;
    match status {
        200 => {
            let container: DockerContainer = serde_json::from_slice(&body)
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
