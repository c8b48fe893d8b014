//! Periscope: an eBPF observability agent. Kernel maps -> probes -> model -> exporters.

pub mod agent;
pub mod config;
pub mod enrich;
pub mod export;
pub mod kernel;
pub mod model;
pub mod probes;
pub mod selfmetrics;
pub mod settings;
