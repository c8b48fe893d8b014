//! Where profiles go, under `exporters.profiles` (documented in the default
//! configuration).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::export::tls::TlsConfig;
use crate::settings::{nonzero, Invalid, Range, DAY};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// A profile of every process this often, from the profile probe.
    pub interval_secs: u64,
    /// Profiles waiting to be pushed, at most; beyond, the oldest is dropped and counted.
    pub queue_profiles: NonZeroU32,
    pub pyroscope: ReceiverConfig,
    /// OTLP profiles (experimental: the signal is still in development).
    pub otlp: ReceiverConfig,
}

/// A receiver of profiles.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    pub enabled: bool,
    /// Base URL, `http://host:port` or `https://host:port`; `/ingest` (Pyroscope) or
    /// `/v1development/profiles` (OTLP) is appended. Empty: the receiver's usual
    /// address on this host.
    pub endpoint: String,
    pub timeout_secs: u64,
    /// A failing push is retried with backoff for this long, then dropped and counted.
    pub max_retry_secs: u64,
    /// For an `https://` endpoint: the CA file, client certificate and key.
    pub tls: TlsConfig,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            interval_secs: 60,
            queue_profiles: nonzero(8),
            pyroscope: ReceiverConfig::default(),
            otlp: ReceiverConfig::default(),
        }
    }
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            enabled: false,
            endpoint: String::new(),
            timeout_secs: 10,
            max_retry_secs: 60,
            tls: TlsConfig::default(),
        }
    }
}

/// Where Pyroscope and an OpenTelemetry Collector listen by default.
pub const PYROSCOPE_ENDPOINT: &str = "http://127.0.0.1:4040";
pub const OTLP_ENDPOINT: &str = "http://127.0.0.1:4318";

impl ReceiverConfig {
    /// The endpoint, or `default` when none is set.
    pub fn endpoint_or<'a>(&'a self, default: &'a str) -> &'a str {
        if self.endpoint.is_empty() {
            default
        } else {
            &self.endpoint
        }
    }
}

impl ProfilesConfig {
    /// Every number with the range it must fall in, keyed below `exporters.profiles`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("interval_secs", self.interval_secs, 1, DAY),
            Range::new("queue_profiles", self.queue_profiles.get().into(), 1, 1024),
            Range::new(
                "pyroscope.timeout_secs",
                self.pyroscope.timeout_secs,
                1,
                3600,
            ),
            Range::new(
                "pyroscope.max_retry_secs",
                self.pyroscope.max_retry_secs,
                0,
                DAY,
            ),
            Range::new("otlp.timeout_secs", self.otlp.timeout_secs, 1, 3600),
            Range::new("otlp.max_retry_secs", self.otlp.max_retry_secs, 0, DAY),
        ]
    }

    pub fn check(&self) -> Result<(), Invalid> {
        for (keys, receiver, default) in [
            (
                [
                    "pyroscope.endpoint",
                    "pyroscope.tls.cert_file",
                    "pyroscope.tls.key_file",
                ],
                &self.pyroscope,
                PYROSCOPE_ENDPOINT,
            ),
            (
                ["otlp.endpoint", "otlp.tls.cert_file", "otlp.tls.key_file"],
                &self.otlp,
                OTLP_ENDPOINT,
            ),
        ] {
            if receiver.enabled {
                crate::export::endpoint::Endpoint::parse(receiver.endpoint_or(default))
                    .map_err(|message| (keys[0], message))?;
            }
            receiver.tls.check().map_err(|(key, message)| {
                (if key == "cert_file" { keys[1] } else { keys[2] }, message)
            })?;
        }
        Ok(())
    }

    /// Whether any receiver is on.
    pub fn any(&self) -> bool {
        self.pyroscope.enabled || self.otlp.enabled
    }
}
