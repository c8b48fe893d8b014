//! Profiles written for people and tools: pprof and flame graphs.

pub mod flamegraph;
pub mod pprof;

#[cfg(test)]
mod tests;
