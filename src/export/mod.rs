//! Exporters: each reads the model only.

pub mod prometheus;
