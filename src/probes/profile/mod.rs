//! The `profile` probe: CPU samples of every process with their kernel and user stacks,
//! counted in the kernel (see `profile.bpf.c`), symbolized in user space, written as
//! folded stacks or pprof.

pub mod flamegraph;
pub mod pprof;
pub mod sampler;
pub mod symbols;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use sampler::{RawProfile, SamplerCounters, StackRef};
use symbols::{Frame, Symbols};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/profile.skel.rs"));
}

/// Functions a complete user stack ends in: where a process or thread starts. A stack
/// that ends elsewhere was cut short, by a frame without a frame pointer.
const STACK_ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
];

/// Samples with one stack, innermost frame first: the user stack's frames on top of the
/// kernel's, where the sample was taken in the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct StackSamples {
    pub pid: u32,
    pub process: String,
    pub frames: Vec<Frame>,
    pub count: u64,
    /// Whether its user stack stopped short of where its thread started.
    pub truncated: bool,
}

/// A symbolized profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub start: Option<SystemTime>,
    pub duration: Duration,
    pub frequency_hz: u64,
    pub stacks: Vec<StackSamples>,
    pub counters: SamplerCounters,
    /// Samples whose user stack stopped short (no frame pointers).
    pub truncated: u64,
    /// Samples that lost a stack to a collision in the kernel's stack map.
    pub lost_stacks: u64,
    /// Addresses no symbol covered.
    pub unsymbolized: u64,
}

impl Profile {
    /// Symbolizes what the kernel counted. Stacks are merged by their frames' names.
    pub fn build(
        raw: &RawProfile,
        symbols: &mut Symbols,
        start: SystemTime,
        duration: Duration,
        frequency_hz: u64,
    ) -> Profile {
        let before = symbols.unsymbolized;
        let no_frames = Vec::new();
        let frames_of = |stack: StackRef| match stack {
            StackRef::Kept(id) => raw.stacks.get(&id).unwrap_or(&no_frames),
            _ => &no_frames,
        };
        // Every address a stack returns to is named by the call before it: address - 1.
        let lookups = |frames: &[u64]| -> Vec<u64> {
            frames
                .iter()
                .enumerate()
                .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
                .collect()
        };
        let mut kernel_addresses = HashSet::new();
        let mut user_addresses: HashMap<u32, HashSet<u64>> = HashMap::new();
        for sample in &raw.samples {
            kernel_addresses.extend(lookups(frames_of(sample.kernel)));
            user_addresses
                .entry(sample.pid)
                .or_default()
                .extend(lookups(frames_of(sample.user)));
        }
        let kernel_addresses: Vec<u64> = kernel_addresses.into_iter().collect();
        let kernel_names = symbols.kernel(&kernel_addresses);
        let user_names: HashMap<u32, HashMap<u64, Frame>> = user_addresses
            .into_iter()
            .map(|(pid, addresses)| {
                let addresses: Vec<u64> = addresses.into_iter().collect();
                (pid, symbols.user(pid, &addresses))
            })
            .collect();

        let mut merged: BTreeMap<(u32, String, Vec<Frame>), (u64, bool)> = BTreeMap::new();
        let mut profile = Profile {
            start: Some(start),
            duration,
            frequency_hz,
            counters: raw.counters,
            ..Profile::default()
        };
        for sample in &raw.samples {
            let mut frames = Vec::new();
            for address in lookups(frames_of(sample.kernel)) {
                if let Some(frame) = kernel_names.get(&address) {
                    frames.push(frame.clone());
                }
            }
            let user = lookups(frames_of(sample.user));
            let names = user_names.get(&sample.pid);
            for address in &user {
                if let Some(frame) = names.and_then(|n| n.get(address)) {
                    frames.push(frame.clone());
                }
            }
            let truncated = !user.is_empty()
                && !frames
                    .last()
                    .is_some_and(|f| STACK_ROOTS.contains(&f.function.as_str()));
            if truncated {
                profile.truncated += sample.count;
            }
            if sample.user == StackRef::Lost || sample.kernel == StackRef::Lost {
                profile.lost_stacks += sample.count;
            }
            let entry = merged
                .entry((sample.pid, sample.process.clone(), frames))
                .or_insert((0, truncated));
            entry.0 += sample.count;
        }
        profile.stacks = merged
            .into_iter()
            .map(
                |((pid, process, frames), (count, truncated))| StackSamples {
                    pid,
                    process,
                    frames,
                    count,
                    truncated,
                },
            )
            .collect();
        profile.unsymbolized = symbols.unsymbolized - before;
        profile
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

/// Samples every CPU (or one process) for `duration` and symbolizes what was counted:
/// the command line's one-shot profile.
pub fn one_shot(
    options: &sampler::SamplerOptions,
    duration: Duration,
) -> Result<(Profile, usize), sampler::SamplerError> {
    let start = SystemTime::now();
    let sampler = sampler::Sampler::start(options)?;
    std::thread::sleep(duration);
    let raw = sampler.read();
    let cpus = sampler.cpus();
    drop(sampler);
    let mut symbols = Symbols::new();
    let elapsed = start.elapsed().unwrap_or(duration);
    Ok((
        Profile::build(&raw, &mut symbols, start, elapsed, options.frequency_hz),
        cpus,
    ))
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
