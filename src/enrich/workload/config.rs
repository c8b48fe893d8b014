//! The workloads' settings, under `workloads` (documented in the default
//! configuration).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::settings::{nonzero, Invalid, Range, DAY};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadsConfig {
    /// Label per-process series with their container, pod and systemd service.
    pub enabled: bool,
    /// The Docker Engine API socket, for container names; empty: none asked.
    pub docker_socket: String,
    /// The node's kubelet (`https://${NODE_IP}:10250`), for pod names; empty: none
    /// asked. `${NAME}` is taken from the environment.
    pub kubelet_url: String,
    /// A bearer token sent to the kubelet (a service account token).
    pub kubelet_token_file: String,
    /// CA certificates (PEM) that signed the kubelet's serving certificate.
    pub kubelet_ca_file: String,
    /// Accept any kubelet certificate (kubelets often serve a self-signed one).
    pub kubelet_insecure_skip_verify: bool,
    /// How often the kubelet's pod list is fetched again.
    pub refresh_secs: u64,
    /// Containers whose names are kept, at most; beyond, the least recently used goes.
    pub max_containers: NonZeroU32,
    /// How long one lookup may take.
    pub timeout_ms: u64,
}

impl Default for WorkloadsConfig {
    fn default() -> Self {
        WorkloadsConfig {
            enabled: true,
            docker_socket: "/var/run/docker.sock".into(),
            kubelet_url: String::new(),
            kubelet_token_file: String::new(),
            kubelet_ca_file: String::new(),
            kubelet_insecure_skip_verify: false,
            refresh_secs: 30,
            max_containers: nonzero(4096),
            timeout_ms: 2000,
        }
    }
}

impl WorkloadsConfig {
    /// Every number with the range it must fall in, keyed below `workloads`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("refresh_secs", self.refresh_secs, 1, DAY),
            Range::entries("max_containers", self.max_containers),
            Range::new("timeout_ms", self.timeout_ms, 1, 60_000),
        ]
    }

    /// How the kubelet is reached: a URL of its scheme, and its certificate checked
    /// one way only.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.kubelet_insecure_skip_verify && !self.kubelet_ca_file.is_empty() {
            return Err((
                "kubelet_insecure_skip_verify",
                "set either kubelet_ca_file (check the kubelet's certificate) or kubelet_insecure_skip_verify, not both".into(),
            ));
        }
        let kubelet = &self.kubelet_url;
        if !kubelet.is_empty()
            && !kubelet.starts_with("http://")
            && !kubelet.starts_with("https://")
        {
            return Err((
                "kubelet_url",
                format!("`{kubelet}`: must start with https:// or http://"),
            ));
        }
        if kubelet.starts_with("https://")
            && self.kubelet_ca_file.is_empty()
            && !self.kubelet_insecure_skip_verify
        {
            return Err((
                "kubelet_url",
                format!("`{kubelet}`: https needs kubelet_ca_file, or kubelet_insecure_skip_verify: true for a self-signed kubelet certificate"),
            ));
        }
        Ok(())
    }
}

/// `${NAME}` replaced by the environment variable NAME (empty when unset).
pub(super) fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('}') {
            Some(end) => {
                let name = &rest[start + 2..start + 2 + end];
                out.push_str(&std::env::var(name).unwrap_or_default());
                rest = &rest[start + 3 + end..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_in_urls() {
        std::env::set_var("PERISCOPE_TEST_NODE", "10.0.0.7");
        assert_eq!(
            expand_env("https://${PERISCOPE_TEST_NODE}:10250"),
            "https://10.0.0.7:10250"
        );
        assert_eq!(expand_env("http://a/${"), "http://a/${");
        assert_eq!(expand_env("${PERISCOPE_TEST_UNSET_VAR}x"), "x");
    }
}
