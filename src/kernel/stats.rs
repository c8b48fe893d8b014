//! The kernel's run-time statistics of BPF programs (`BPF_ENABLE_STATS`): how often each
//! of our programs ran and for how long, so users see what tracing costs them.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use libbpf_rs::libbpf_sys;

use super::duty::DutyCycle;

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
    /// Runs the kernel skipped because the program was already running on that CPU
    /// (a softirq interrupting it): the events those runs would have seen are missed.
    /// Counted whether statistics are on or not.
    pub recursion_misses: u64,
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
        recursion_misses: info.recursion_misses,
    })
}

/// When the kernel's run-time statistics are on. They cost two clock reads per program
/// run (about 100 ns per syscall on our machines, more than the syscalls probe itself),
/// so by default they are sampled: on for a short window in each period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsMode {
    Always,
    Sampled,
    Off,
}

/// Turns statistics on and off on schedule and keeps how long they were on, so rates
/// can be computed over the sampled time.
pub struct StatsSampler {
    mode: StatsMode,
    duty: Option<DutyCycle>,
    guard: Option<StatsGuard>,
    always_since: Option<Instant>,
}

impl StatsSampler {
    pub fn start(mode: StatsMode, sample: Duration, period: Duration, now: Instant) -> Self {
        let mut sampler = StatsSampler {
            mode,
            duty: None,
            guard: None,
            always_since: None,
        };
        match mode {
            StatsMode::Always => {
                if sampler.enable() {
                    sampler.always_since = Some(now);
                }
            }
            StatsMode::Sampled => sampler.duty = Some(DutyCycle::new(sample, period, now)),
            StatsMode::Off => {}
        }
        sampler
    }

    fn enable(&mut self) -> bool {
        match StatsGuard::enable() {
            Ok(guard) => {
                self.guard = Some(guard);
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "BPF run-time statistics unavailable; program run counts and times stay 0");
                self.mode = StatsMode::Off;
                self.duty = None;
                false
            }
        }
    }

    /// Opens or closes the sampling window when its time has come.
    pub fn tick(&mut self, now: Instant) {
        let Some(changed) = self.duty.as_mut().and_then(|duty| duty.poll(now)) else {
            return;
        };
        if changed {
            self.enable();
        } else {
            self.guard = None;
        }
    }

    pub fn next_change(&self) -> Option<Instant> {
        self.duty.as_ref().map(DutyCycle::next_change)
    }

    /// How long statistics have been on in total.
    pub fn enabled_for(&self, now: Instant) -> Duration {
        match (&self.duty, self.always_since) {
            (Some(duty), _) => duty.on_for(now),
            (None, Some(since)) => now.saturating_duration_since(since),
            (None, None) => Duration::ZERO,
        }
    }

    pub fn mode(&self) -> StatsMode {
        self.mode
    }
}
