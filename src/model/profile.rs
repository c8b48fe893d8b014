//! CPU profiles: stacks of named frames and how many samples each took. Probes build
//! them; exporters write them as folded stacks, pprof or flame graphs.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::model::Labels;

/// A named frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// The function, or `module+0xoffset` when no symbol covers the address.
    pub function: String,
    /// The file it was found in, or `[kernel]`.
    pub module: String,
    /// Whether a symbol named it.
    pub symbolized: bool,
}

/// What the kernel could not keep or the probe could not name, over one profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileLosses {
    /// Samples whose user stack stopped short (no frame pointers).
    pub truncated: u64,
    /// Samples that lost a stack to a collision in the kernel's stack map.
    pub lost_stacks: u64,
    /// Samples the kernel could not count (its count map was full).
    pub uncounted: u64,
    /// Addresses no symbol covered.
    pub unsymbolized: u64,
}

/// Samples with one stack, innermost frame first: the user stack's frames on top of the
/// kernel's, where the sample was taken in the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct StackSamples {
    pub pid: u32,
    pub process: String,
    /// The process's labels as on its metrics: pid, executable, service, container, pod.
    pub labels: Labels,
    pub frames: Vec<Frame>,
    pub count: u64,
}

/// A symbolized profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub start: Option<SystemTime>,
    pub duration: Duration,
    pub frequency_hz: u64,
    pub stacks: Vec<StackSamples>,
    pub losses: ProfileLosses,
}

impl Profile {
    /// The CPU time one sample stands for.
    pub fn period_ns(&self) -> i64 {
        1_000_000_000 / self.frequency_hz.max(1) as i64
    }

    /// When sampling began, since the Unix epoch (0 when unknown).
    pub fn since_epoch(&self) -> Duration {
        self.start
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default()
    }

    /// Samples recorded in the profile.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|s| s.count).sum()
    }

    /// Folded stacks, one line per stack: `process;outermost;...;innermost count`, the
    /// format flame-graph tools read. Names keep every character but the separators:
    /// `;` becomes `:` and line breaks spaces.
    pub fn folded(&self) -> String {
        let mut out = String::new();
        for stack in &self.stacks {
            out.push_str(&folded_name(&stack.process));
            for frame in stack.frames.iter().rev() {
                out.push(';');
                out.push_str(&folded_name(&frame.function));
            }
            let _ = writeln!(out, " {}", stack.count);
        }
        out
    }
}

fn folded_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if name.is_empty() {
        "[unnamed]".into()
    } else {
        name
    }
}
