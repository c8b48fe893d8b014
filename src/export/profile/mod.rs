//! Profiles written for people and tools: pprof and flame graphs, and pushed to
//! Pyroscope and OTLP receivers.

pub mod config;
pub mod flamegraph;
pub mod otlp;
pub mod pprof;
pub mod push;

#[cfg(test)]
mod tests;
