//! What the running kernel offers: BTF, program and map types, tracefs; and the kernel's
//! own run-time statistics of our BPF programs.

pub mod caps;
pub mod duty;
pub mod floor;
pub mod stats;

use std::ffi::CString;
use std::path::Path;

use libbpf_rs::libbpf_sys;
use tracing::info;

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS_PATHS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Kernel capabilities, probed once at start-up.
#[derive(Debug, Clone)]
pub struct KernelFeatures {
    pub release: String,
    pub btf: bool,
    pub ring_buffer: bool,
    pub raw_tracepoint: bool,
    pub tracepoint: bool,
    pub task_storage: bool,
    /// Where tracefs is mounted, if it is (classic tracepoints need it).
    pub tracefs: Option<&'static str>,
}

impl KernelFeatures {
    pub fn probe() -> KernelFeatures {
        KernelFeatures {
            release: kernel_release(),
            btf: Path::new(BTF_PATH).exists(),
            ring_buffer: map_type_supported(libbpf_sys::BPF_MAP_TYPE_RINGBUF),
            raw_tracepoint: prog_type_supported(libbpf_sys::BPF_PROG_TYPE_RAW_TRACEPOINT),
            tracepoint: prog_type_supported(libbpf_sys::BPF_PROG_TYPE_TRACEPOINT),
            task_storage: map_type_supported(libbpf_sys::BPF_MAP_TYPE_TASK_STORAGE),
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

fn prog_type_supported(prog_type: libbpf_sys::bpf_prog_type) -> bool {
    // SAFETY: a plain query; libbpf loads and unloads a trivial program.
    unsafe { libbpf_sys::libbpf_probe_bpf_prog_type(prog_type, std::ptr::null()) == 1 }
}

fn map_type_supported(map_type: libbpf_sys::bpf_map_type) -> bool {
    // SAFETY: a plain query; libbpf creates and closes a small map.
    unsafe { libbpf_sys::libbpf_probe_bpf_map_type(map_type, std::ptr::null()) == 1 }
}
