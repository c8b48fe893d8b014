//! The kernel's run-time statistics of BPF programs (`BPF_ENABLE_STATS`): how often each
//! of our programs ran and for how long, so users see what tracing costs them.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

/// Keeps run-time statistics on while alive; the kernel turns them off when the last
/// holder closes its descriptor.
pub struct StatsGuard {
    _fd: OwnedFd,
}

impl StatsGuard {
    pub fn enable() -> std::io::Result<StatsGuard> {
        // SAFETY: plain syscall wrapper; a non-negative return is a new descriptor we own.
        let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
        if fd < 0 {
            return Err(std::io::Error::from_raw_os_error(-fd));
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        Ok(StatsGuard {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// Cumulative runs and run time of one program since it was loaded (run time counts only
/// while statistics are enabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_count: u64,
    pub run_time_ns: u64,
}

pub fn program_stats(fd: BorrowedFd<'_>) -> std::io::Result<ProgramStats> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a properly sized, writable bpf_prog_info and len says how large.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(ProgramStats {
        run_count: info.run_cnt,
        run_time_ns: info.run_time_ns,
    })
}
