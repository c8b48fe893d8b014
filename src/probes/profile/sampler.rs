//! Loads the profile program, opens a CPU-clock perf event on every online CPU and runs
//! the program on each; reads back what the kernel counted.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use libbpf_rs::{Link, MapCore, MapFlags};

use super::skel::{types, ProfileSkel, ProfileSkelBuilder};
use crate::probes::kit::programs::{load_degrading, load_object, ProgramSpec};
use crate::probes::util::{self, c_string, decode, ProbeError};
use types::psc_profile_counter as Counter;

util::plain_types!(types::psc_profile_key);

static PROGRAMS: &[ProgramSpec] = &[ProgramSpec::required(
    "psc_profile_sample",
    "perf_event programs on a software CPU-clock event, with a stack-trace map",
)];

/// Frames the kernel keeps of a stack (its perf_event_max_stack default).
pub const MAX_FRAMES: usize = 127;

/// What the sampler is asked for.
#[derive(Debug, Clone)]
pub struct SamplerOptions {
    /// Samples per second on each CPU.
    pub frequency_hz: u64,
    /// Only this process; None: every process.
    pub pid: Option<u32>,
    /// Only processes of this cgroup v2 (by id); None: every cgroup.
    pub cgroup: Option<u64>,
    /// Distinct stacks the kernel keeps (user and kernel ones together).
    pub max_stacks: u32,
    /// Distinct (process, user stack, kernel stack) the kernel counts.
    pub max_counts: u32,
    /// Open the perf events and run the program on them; off, the program is only
    /// loaded (the kernel's verdict on it is all that is wanted).
    pub attach: bool,
}

/// A stack id of the kernel's: a stack kept in the stack map, none, or one lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StackRef {
    Kept(u32),
    /// The sample has no such stack: a user-mode sample's kernel stack, a kernel
    /// thread's user stack, or a user stack the kernel could not walk.
    Absent,
    /// The stack map's bucket for it held another stack.
    Lost,
}

impl StackRef {
    fn of(id: i32) -> StackRef {
        match id {
            id if id >= 0 => StackRef::Kept(id as u32),
            PSC_PROFILE_STACK_LOST => StackRef::Lost,
            _ => StackRef::Absent,
        }
    }
}

const PSC_PROFILE_STACK_LOST: i32 = -2;

/// One counted (process, user stack, kernel stack).
#[derive(Debug, Clone)]
pub struct RawSample {
    pub pid: u32,
    pub process: String,
    pub user: StackRef,
    pub kernel: StackRef,
    pub count: u64,
}

/// The kernel's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplerCounters {
    /// Samples of the processes looked at, recorded or not.
    pub samples: u64,
    /// Samples of idle CPUs, not recorded.
    pub idle: u64,
    /// Stacks lost to a collision in the stack map.
    pub collisions: u64,
    /// Samples not recorded because the count map was full.
    pub folded: u64,
}

/// What the kernel holds at one moment.
#[derive(Debug, Default)]
pub struct RawProfile {
    pub samples: Vec<RawSample>,
    /// Each kept stack's return addresses, innermost first.
    pub stacks: HashMap<u32, Vec<u64>>,
    /// Samples not counted because the count map was full, since the previous read.
    pub uncounted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("reading the online CPUs from {path}: {source}")]
    Cpus {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("opening a CPU-clock perf event on CPU {cpu}: {source}")]
    PerfEvent {
        cpu: u32,
        #[source]
        source: io::Error,
    },
    #[error("running the profile program on CPU {cpu}'s perf event: {source}")]
    Attach {
        cpu: u32,
        #[source]
        source: libbpf_rs::Error,
    },
}

/// The loaded program and its perf events; dropping it detaches everything and closes
/// the events.
pub struct Sampler {
    skel: ProfileSkel<'static>,
    links: Vec<Link>,
    /// The pair of maps the program writes to.
    buffer: u32,
    /// The kernel's count of uncounted samples at the previous read.
    uncounted_before: u64,
}

/// How long a sample that began before a flip may still be writing to the old maps: a
/// program run takes microseconds.
const FLIP_SETTLE: std::time::Duration = std::time::Duration::from_millis(5);

const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

impl Sampler {
    pub fn start(options: &SamplerOptions) -> Result<Sampler, SamplerError> {
        util::check_btf()?;
        let (skel, _) = load_degrading("profile", PROGRAMS, |plan| {
            let mut open = util::open_object(ProfileSkelBuilder::default(), "profile")?;
            util::set_entries(&mut open.maps.stacks_0, options.max_stacks, "stacks")?;
            util::set_entries(&mut open.maps.stacks_1, options.max_stacks, "stacks")?;
            util::set_entries(&mut open.maps.counts_0, options.max_counts, "counts")?;
            util::set_entries(&mut open.maps.counts_1, options.max_counts, "counts")?;
            if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                rodata.target_tgid = options.pid.unwrap_or(0);
                rodata.target_cgroup = options.cgroup.unwrap_or(0);
            }
            load_object(open, plan, "profile")
        })?;
        let text = fs::read_to_string(ONLINE_CPUS).map_err(|source| SamplerError::Cpus {
            path: ONLINE_CPUS,
            source,
        })?;
        let cpus = parse_cpu_list(text.trim()).ok_or_else(|| SamplerError::Cpus {
            path: ONLINE_CPUS,
            source: io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}")),
        })?;
        let mut links = Vec::with_capacity(cpus.len());
        for cpu in cpus.into_iter().filter(|_| options.attach) {
            let event = open_cpu_clock(cpu, options.frequency_hz)
                .map_err(|source| SamplerError::PerfEvent { cpu, source })?;
            let raw = event.into_raw_fd();
            match skel.progs.psc_profile_sample.attach_perf_event(raw) {
                // The link owns the event from here: detaching closes it.
                Ok(link) => links.push(link),
                Err(source) => {
                    // SAFETY: `raw` came from into_raw_fd above and nothing else owns it.
                    drop(unsafe { OwnedFd::from_raw_fd(raw) });
                    return Err(SamplerError::Attach { cpu, source });
                }
            }
        }
        if skel.maps.bss_data.is_none() {
            return Err(SamplerError::Probe(ProbeError::Unsupported(
                "the profile program's switch between its two map pairs is not mapped".into(),
            )));
        }
        Ok(Sampler {
            skel,
            links,
            buffer: 0,
            uncounted_before: 0,
        })
    }

    /// CPUs sampled.
    pub fn cpus(&self) -> usize {
        self.links.len()
    }

    fn counter(&self, counter: Counter) -> u64 {
        util::percpu_array_u64(&self.skel.maps.counters, counter.0)
    }

    pub fn counters(&self) -> SamplerCounters {
        SamplerCounters {
            samples: self.counter(Counter::PSC_PROFILE_SAMPLES),
            idle: self.counter(Counter::PSC_PROFILE_IDLE),
            collisions: self.counter(Counter::PSC_PROFILE_COLLISIONS),
            folded: self.counter(Counter::PSC_PROFILE_FOLDED),
        }
    }

    /// Everything counted so far, with the stacks the counts name; the maps keep it.
    pub fn read(&mut self) -> RawProfile {
        self.read_pair(self.buffer, false)
    }

    /// Everything counted since the last call: samples go to the other pair of maps
    /// from now on, and the pair read is emptied for its next turn.
    pub fn take(&mut self) -> RawProfile {
        let old = self.buffer;
        self.buffer ^= 1;
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            bss.buffer = self.buffer;
        }
        std::thread::sleep(FLIP_SETTLE);
        // Counts are read and deleted in one step each, so that a sample still landing
        // in the old pair after the settle time is kept for its next turn, not lost.
        let profile = self.read_pair(old, true);
        let (_, stacks) = self.pair(old);
        for key in stacks.keys().collect::<Vec<_>>() {
            let _ = stacks.delete(&key);
        }
        profile
    }

    fn pair(&self, buffer: u32) -> (&libbpf_rs::Map<'static>, &libbpf_rs::Map<'static>) {
        let maps = &self.skel.maps;
        if buffer & 1 == 1 {
            (&maps.counts_1, &maps.stacks_1)
        } else {
            (&maps.counts_0, &maps.stacks_0)
        }
    }

    fn read_pair(&mut self, buffer: u32, delete: bool) -> RawProfile {
        let folded = self.counter(Counter::PSC_PROFILE_FOLDED);
        let uncounted = folded.saturating_sub(self.uncounted_before);
        self.uncounted_before = folded;
        let (counts, stacks) = self.pair(buffer);
        let mut profile = RawProfile {
            uncounted,
            ..RawProfile::default()
        };
        let entries: Vec<(Vec<u8>, Vec<Vec<u8>>)> = if delete {
            counts
                .keys()
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|key| {
                    let values = util::take_percpu(counts, &key)?;
                    Some((key, values))
                })
                .collect()
        } else {
            util::read_percpu(counts)
        };
        for (raw, values) in entries {
            let Some(key) = decode::<types::psc_profile_key>(&raw) else {
                continue;
            };
            let count = util::sum_percpu_u64(&values);
            if count == 0 {
                continue;
            }
            profile.samples.push(RawSample {
                pid: key.tgid,
                process: c_string(&key.comm),
                user: StackRef::of(key.user_stack),
                kernel: StackRef::of(key.kernel_stack),
                count,
            });
        }
        let ids: Vec<u32> = profile
            .samples
            .iter()
            .flat_map(|s| [s.user, s.kernel])
            .filter_map(|r| match r {
                StackRef::Kept(id) => Some(id),
                _ => None,
            })
            .collect();
        for id in ids {
            if profile.stacks.contains_key(&id) {
                continue;
            }
            let Ok(Some(bytes)) = stacks.lookup(&id.to_ne_bytes(), MapFlags::ANY) else {
                continue;
            };
            let frames = bytes
                .chunks_exact(8)
                .map(|word| u64::from_ne_bytes(word.try_into().unwrap_or_default()))
                .take_while(|&address| address != 0)
                .collect();
            profile.stacks.insert(id, frames);
        }
        profile
    }

    /// Entries of the count map in use, and its capacity.
    pub fn fill(&self) -> (u64, u64) {
        let (counts, _) = self.pair(self.buffer);
        (counts.keys().count() as u64, u64::from(counts.max_entries()))
    }

    /// The loaded program, for the kernel's run-time statistics.
    pub fn program(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.skel.progs.psc_profile_sample.as_fd()
    }
}

/// "0-3,5,7-8" as a list of CPUs.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (from.parse::<u32>().ok()?, to.parse::<u32>().ok()?);
                if to < from || to - from > 65_536 {
                    return None;
                }
                cpus.extend(from..=to);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// The first 112 bytes of the kernel's perf_event_attr (PERF_ATTR_SIZE_VER5), which
/// every kernel since 4.1 takes.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_freq: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved: u16,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
/// perf_event_attr's `freq` bit: `sample_freq` is a frequency, not a period.
const PERF_ATTR_FREQ: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// A software CPU-clock event on `cpu`, every task's, firing `frequency_hz` times a
/// second while the CPU runs anything.
fn open_cpu_clock(cpu: u32, frequency_hz: u64) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_freq: frequency_hz,
        flags: PERF_ATTR_FREQ,
        ..PerfEventAttr::default()
    };
    // SAFETY: attr is a valid perf_event_attr of the size it states; the kernel only
    // reads it. pid -1 with a cpu: every task on that CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(vec![0, 1, 2, 3, 5, 7, 8]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
    }

    #[test]
    fn the_attr_is_the_kernels_fifth_version() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 112);
    }
}
