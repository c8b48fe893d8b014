//! Who a kernel id belongs to: pid -> process name and liveness, cgroup -> container.

pub mod cgroup;
mod kubelet_tls;
pub mod netns;
pub mod process;
pub mod tenant;
pub mod workload;

pub use process::{ProcessInfo, ProcessTable};
pub use workload::{Workload, Workloads};
