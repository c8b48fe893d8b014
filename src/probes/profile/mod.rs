//! The `profile` probe: CPU samples of every process with their kernel and user stacks,
//! counted in the kernel (see `profile.bpf.c`), symbolized in user space into the
//! model's profiles.

pub mod sampler;
pub mod symbols;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::model::profile::{Frame, Profile, ProfileLosses, StackSamples};
use crate::model::Labels;
use sampler::{RawProfile, StackRef};
use symbols::Symbols;

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

/// Symbolizes what the kernel counted, each process labelled by `labels_of` (called
/// once per process). Stacks are merged by their frames' names.
pub fn build(
    raw: &RawProfile,
    symbols: &mut Symbols,
    labels_of: &mut dyn FnMut(u32) -> Labels,
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
        losses: ProfileLosses {
            uncounted: raw.counters.folded,
            ..ProfileLosses::default()
        },
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
            profile.losses.truncated += sample.count;
        }
        if sample.user == StackRef::Lost || sample.kernel == StackRef::Lost {
            profile.losses.lost_stacks += sample.count;
        }
        let entry = merged
            .entry((sample.pid, sample.process.clone(), frames))
            .or_insert((0, truncated));
        entry.0 += sample.count;
    }
    let mut labels: HashMap<u32, Labels> = HashMap::new();
    profile.stacks = merged
        .into_iter()
        .map(
            |((pid, process, frames), (count, truncated))| StackSamples {
                pid,
                process,
                labels: labels.entry(pid).or_insert_with(|| labels_of(pid)).clone(),
                frames,
                count,
                truncated,
            },
        )
        .collect();
    profile.losses.unsymbolized = symbols.unsymbolized - before;
    profile
}

/// What the sampler counted since `start`, symbolized: the sampler stops first, so the
/// profile's end is where sampling ended.
pub fn finish(sampler: sampler::Sampler, start: SystemTime, frequency_hz: u64) -> Profile {
    let raw = sampler.read();
    let elapsed = start.elapsed().unwrap_or_default();
    drop(sampler);
    build(
        &raw,
        &mut Symbols::new(),
        &mut |_| Labels::new(),
        start,
        elapsed,
        frequency_hz,
    )
}
