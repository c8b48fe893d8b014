//! What every probe shares.

pub mod programs;
