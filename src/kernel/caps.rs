//! Linux capabilities: which ones the configuration needs to load and attach, a clear
//! error naming any that is missing, and dropping all but the few still needed once the
//! probes are attached.
//!
//! Capabilities belong to threads: each thread of the agent drops its own. Threads
//! started after a drop inherit the smaller set.

use crate::kernel::stats::StatsMode;

/// One capability: its number (linux/capability.h) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub number: u32,
    pub name: &'static str,
}

impl Capability {
    const fn new(number: u32, name: &'static str) -> Capability {
        Capability { number, name }
    }
}

pub const DAC_READ_SEARCH: Capability = Capability::new(2, "CAP_DAC_READ_SEARCH");
pub const SYS_PTRACE: Capability = Capability::new(19, "CAP_SYS_PTRACE");
pub const SYS_ADMIN: Capability = Capability::new(21, "CAP_SYS_ADMIN");
pub const SYSLOG: Capability = Capability::new(34, "CAP_SYSLOG");
pub const PERFMON: Capability = Capability::new(38, "CAP_PERFMON");
pub const BPF: Capability = Capability::new(39, "CAP_BPF");

/// A capability the configuration needs, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub capability: Capability,
    pub why: &'static str,
    /// Still needed after start-up (for work the agent repeats while it runs).
    pub after_start: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("missing capability {}: {}; grant it (a DaemonSet's securityContext.capabilities.add, or run as root) or turn off what needs it", names(.0), reasons(.0))]
    Missing(Vec<Need>),
    #[error("reading this thread's capabilities: {0}")]
    Get(std::io::Error),
    #[error("dropping capabilities: {0}")]
    Set(std::io::Error),
}

fn names(needs: &[Need]) -> String {
    needs
        .iter()
        .map(|n| n.capability.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn reasons(needs: &[Need]) -> String {
    needs
        .iter()
        .map(|n| format!("{} is needed to {}", n.capability.name, n.why))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a probe needs to read other processes' `/proc/PID/fd` and `/proc/PID/root`:
/// `why` says what for; `after_start` when it reads them while it runs.
pub fn reading_other_processes(why: &'static str, after_start: bool) -> Vec<Need> {
    vec![
        Need {
            capability: SYS_PTRACE,
            why,
            after_start,
        },
        Need {
            capability: DAC_READ_SEARCH,
            why: "read the /proc/PID entries of processes of other users",
            after_start,
        },
    ]
}

/// What the agent needs: any probe needs BPF and PERFMON (tracing programs), the
/// kernel's run-time statistics need SYS_ADMIN, and each probe adds its own needs
/// (`probe_needs`). A capability two probes need is kept after start when either keeps it.
pub fn needed(any_probe: bool, bpf_stats: StatsMode, probe_needs: Vec<Need>) -> Vec<Need> {
    let mut needs = Vec::new();
    if any_probe {
        needs.push(Need {
            capability: BPF,
            why: "load BPF programs and maps",
            after_start: true,
        });
        needs.push(Need {
            capability: PERFMON,
            why: "load and attach tracing programs",
            after_start: true,
        });
    }
    if any_probe && bpf_stats != StatsMode::Off {
        needs.push(Need {
            capability: SYS_ADMIN,
            why: "switch the kernel's BPF run-time statistics on (self_metrics.bpf_stats; `off` needs no CAP_SYS_ADMIN) and mount tracefs when absent",
            after_start: true,
        });
    }
    needs.extend(probe_needs);
    // Before Linux 5.8 (no CAP_BPF or CAP_PERFMON), CAP_SYS_ADMIN covers both.
    merge(needs, last_cap().unwrap_or(BPF.number))
}

/// The highest capability number this kernel knows.
fn last_cap() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok()?;
    text.trim().parse().ok()
}

/// One need per capability, in first-need order: capabilities beyond `last_cap` become
/// SYS_ADMIN, and a capability is kept after start when any of its needs says so.
fn merge(needs: Vec<Need>, last_cap: u32) -> Vec<Need> {
    let mut merged: Vec<Need> = Vec::new();
    for mut need in needs {
        if need.capability.number > last_cap {
            need.capability = SYS_ADMIN;
        }
        match merged.iter_mut().find(|m| m.capability == need.capability) {
            Some(existing) => existing.after_start |= need.after_start,
            None => merged.push(need),
        }
    }
    merged
}

/// The capabilities of the calling thread: (effective, permitted) as bit masks.
pub fn current() -> Result<(u64, u64), CapsError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData for version 3, which `data` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(CapsError::Get(std::io::Error::last_os_error()));
    }
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Fails, naming them, when needed capabilities are not in the effective set.
pub fn check(needs: &[Need]) -> Result<(), CapsError> {
    let (effective, _) = current()?;
    let missing: Vec<Need> = needs
        .iter()
        .filter(|need| effective & (1 << need.capability.number) == 0)
        .copied()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError::Missing(missing))
    }
}

/// The capabilities still needed once started.
pub fn kept_after_start(needs: &[Need]) -> Vec<Capability> {
    let mut kept: Vec<Capability> = Vec::new();
    for need in needs.iter().filter(|n| n.after_start) {
        if !kept.contains(&need.capability) {
            kept.push(need.capability);
        }
    }
    kept
}

/// Reduces the calling thread's effective, permitted and inheritable sets to `keep`
/// (those of them it has), and clears its ambient set.
pub fn keep_only(keep: &[Capability]) -> Result<(), CapsError> {
    let (_, permitted) = current()?;
    let wanted = keep.iter().fold(0u64, |mask, cap| mask | (1 << cap.number)) & permitted;
    // No exec from this thread (or any it starts) can gain privileges again: setuid
    // binaries and file capabilities are ignored from now on.
    // SAFETY: a plain prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    // Nor can any capability not kept come back: it leaves the bounding set. That needs
    // CAP_SETPCAP, still held here; where it is not (a unit that withheld it), the
    // bounding set is what the unit left.
    let last = last_cap().unwrap_or(40).min(63);
    for number in (0..=last).filter(|n| wanted & (1 << n) == 0) {
        // SAFETY: a plain prctl with integer arguments.
        unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, number as libc::c_ulong, 0, 0, 0);
        }
    }
    // SAFETY: a plain prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |mask: u64| [mask as u32, (mask >> 32) as u32];
    let [low, high] = split(wanted);
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads two CapData for version 3, which `data` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(CapsError::Set(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Names of the capabilities in a mask, for logs.
pub fn describe(keep: &[Capability]) -> String {
    if keep.is_empty() {
        "none".into()
    } else {
        keep.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    }
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_two_probes_need_is_kept_when_either_keeps_it() {
        let mut needs = reading_other_processes("start", false);
        needs.extend(reading_other_processes("run", true));
        let merged = merge(needs, BPF.number);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().all(|n| n.after_start));
        assert_eq!(merged[0].why, "start");
    }

    #[test]
    fn old_kernels_need_sys_admin_for_bpf_and_perfmon() {
        let needs = needed(true, StatsMode::Off, Vec::new());
        let merged = merge(needs, SYS_ADMIN.number + 1);
        let names: Vec<&str> = merged.iter().map(|n| n.capability.name).collect();
        assert_eq!(names, ["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn without_probes_nothing_is_needed() {
        assert!(needed(false, StatsMode::Sampled, Vec::new()).is_empty());
    }

    #[test]
    fn this_threads_capabilities_can_be_read() {
        let (effective, permitted) = current().expect("capget");
        assert_eq!(effective & !permitted, 0);
    }
}
