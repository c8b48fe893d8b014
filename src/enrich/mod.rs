//! Who a kernel id belongs to: pid -> process name and liveness.

pub mod process;

pub use process::{ProcessInfo, ProcessTable};
