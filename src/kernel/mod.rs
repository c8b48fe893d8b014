//! What the running kernel offers: BTF, program and map types, tracefs; and the kernel's
//! own run-time statistics of our BPF programs.

pub mod caps;
pub mod duty;
pub mod features;
pub mod floor;
pub mod libbpf_log;
pub mod seccomp;
pub mod stats;

use std::ffi::CString;
use std::path::Path;

use tracing::info;

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS_PATHS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// What start-up needs to know of the kernel; what it runs is found by loading
/// (`features`, and each probe's own load).
#[derive(Debug, Clone)]
pub struct KernelFeatures {
    pub release: String,
    pub btf: bool,
    /// Where tracefs is mounted, if it is (classic tracepoints need it).
    pub tracefs: Option<&'static str>,
}

impl KernelFeatures {
    pub fn probe() -> KernelFeatures {
        KernelFeatures {
            release: kernel_release(),
            btf: Path::new(BTF_PATH).exists(),
            tracefs: mounted_tracefs(),
        }
    }

    /// Mounts tracefs when it is absent, so classic tracepoints can attach.
    /// Returns where it is mounted, or why it could not be.
    pub fn ensure_tracefs(&mut self) -> Result<&'static str, String> {
        if let Some(path) = self.tracefs {
            return Ok(path);
        }
        let target = TRACEFS_PATHS[0];
        let source = CString::new("tracefs").map_err(|e| e.to_string())?;
        let dir = CString::new(target).map_err(|e| e.to_string())?;
        // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                dir.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mounting tracefs at {target} failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        info!(
            path = target,
            "tracefs was not mounted; mounted it for classic tracepoints"
        );
        self.tracefs = Some(target);
        Ok(target)
    }
}

fn mounted_tracefs() -> Option<&'static str> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    TRACEFS_PATHS.iter().copied().find(|path| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next();
            fields.next() == Some(path) && fields.next() == Some("tracefs")
        })
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The errno name of a libbpf error, for messages that name what the kernel said.
pub fn errno_name(err: &libbpf_rs::Error) -> String {
    use libbpf_rs::ErrorKind;
    match err.kind() {
        ErrorKind::PermissionDenied => "EPERM",
        ErrorKind::NotFound => "ENOENT",
        ErrorKind::InvalidInput => "EINVAL",
        ErrorKind::Unsupported => "EOPNOTSUPP",
        ErrorKind::OutOfMemory => "ENOMEM",
        ErrorKind::AlreadyExists => "EEXIST",
        _ => return err.to_string(),
    }
    .to_string()
}
