//! Profiles written for people and tools: pprof and flame graphs, and pushed to
//! Pyroscope.

pub mod config;
pub mod flamegraph;
pub mod pprof;
pub mod pyroscope;

#[cfg(test)]
mod tests;
