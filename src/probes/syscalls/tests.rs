use super::*;
use crate::enrich::Workloads;

#[test]
fn names_known_syscalls_and_numbers_the_rest() {
    assert_eq!(syscall_name(0), "read");
    assert_eq!(syscall_name(257), "openat");
    assert_eq!(syscall_name(511), "syscall_511");
}

#[test]
fn names_errnos() {
    assert_eq!(errno_name(2), "ENOENT");
    assert_eq!(errno_name(3), "ESRCH");
    assert_eq!(errno_name(0), "unknown");
    assert_eq!(errno_name(4000), "E4000");
}

#[test]
fn overflow_and_exited_series_have_no_pid_label() {
    let workloads = Workloads::default();
    let none = Workload::default();
    let labels = workloads.process_labels(None, OVERFLOW_NAME, &none);
    assert!(labels.contains(&("process_executable_name", OVERFLOW_NAME.to_string())));
    assert!(labels.iter().all(|(name, _)| *name != "process_pid"));
    let labels = workloads.process_labels(Some(7), "nginx", &none);
    assert_eq!(labels[0], ("process_pid", "7".to_string()));
}

#[test]
fn histogram_layout_matches_the_kernel_header() {
    assert_eq!(std::mem::size_of::<types::psc_hist>(), 8 * (crate::model::native::KERNEL_SLOTS + 1));
}
