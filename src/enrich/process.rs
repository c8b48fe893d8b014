//! A bounded table of the processes a probe has seen: their name and start time, and when
//! they were first seen gone, which drives the exited-process expiry rule.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant, SystemTime};

use super::workload::{RecordedCgroup, Workload, Workloads};

/// Shown when a process exited before its name could be read.
pub const UNKNOWN_NAME: &str = "unknown";

#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub name: String,
    /// Start time in clock ticks since boot (field 22 of /proc/<pid>/stat), to tell a
    /// reused pid from the process that had it before.
    pub start_ticks: Option<u64>,
    pub first_seen: SystemTime,
    pub gone_since: Option<Instant>,
    /// Its container, pod or service, read when first seen and again after an exec.
    pub workload: Workload,
    /// Its pid now belongs to a newer process: its series end now, whatever the TTL, so
    /// the newcomer never runs under its labels.
    pub superseded: bool,
}

/// How a probe's kernel side names a process: by pid (tgid) alone, or by pid and
/// generation (start time in clock ticks, modulo 2^16), which tells a reused pid's new
/// process from the old one.
pub trait ProcessKey: Copy + Eq + Hash + Debug + Default {
    fn pid(&self) -> u32;
    fn generation(&self) -> Option<u16> {
        None
    }
}

impl ProcessKey for u32 {
    fn pid(&self) -> u32 {
        *self
    }
}

impl ProcessKey for (u32, u16) {
    fn pid(&self) -> u32 {
        self.0
    }

    fn generation(&self) -> Option<u16> {
        Some(self.1)
    }
}

/// Nanoseconds per clock tick: /proc/PID/stat gives start times in ticks of USER_HZ, 100
/// per second on every architecture Linux runs BPF on.
const NS_PER_TICK: u64 = 10_000_000;

/// Whether a process that started `start_ticks` clock ticks after boot has generation
/// `gen`: its start time in units of 2^`GENERATION_SHIFT` ns, modulo 2^16 (the BPF side
/// shifts the nanoseconds; a tick spans at most two such units).
pub fn generation_matches(start_ticks: u64, gen: u16) -> bool {
    let first = start_ticks.saturating_mul(NS_PER_TICK) >> GENERATION_SHIFT;
    let last = (start_ticks.saturating_add(1).saturating_mul(NS_PER_TICK) - 1) >> GENERATION_SHIFT;
    (first..=last).any(|unit| unit as u16 == gen)
}

/// A generation of live process `pid`: the first 2^24 ns unit of its start tick. BPF
/// programs read the exact start time, which may fall in the next unit; both match it
/// (`generation_matches`), as the same process.
pub fn generation_of_pid(pid: u32) -> Option<u16> {
    let (_, ticks) = read_process("/proc", pid)?;
    Some((ticks.saturating_mul(NS_PER_TICK) >> GENERATION_SHIFT) as u16)
}

/// PSC_GENERATION_SHIFT (bpf/process.h).
pub const GENERATION_SHIFT: u32 = crate::model::layout::GENERATION_SHIFT;

/// Processes keyed by pid (tgid), or by pid and generation. Entries leave when their
/// probe expires them.
#[derive(Debug, Default)]
pub struct ProcessTable<K: ProcessKey = u32> {
    entries: HashMap<K, ProcessInfo>,
    proc_root: String,
    keep_first_name: bool,
    workloads: Workloads,
}

impl<K: ProcessKey> ProcessTable<K> {
    pub fn new() -> Self {
        ProcessTable {
            entries: HashMap::new(),
            proc_root: "/proc".into(),
            keep_first_name: false,
            workloads: Workloads::default(),
        }
    }

    /// Attributes processes to their workloads through `workloads`.
    pub fn with_workloads(mut self, workloads: &Workloads) -> Self {
        self.workloads = workloads.clone();
        self
    }

    pub fn workloads(&self) -> &Workloads {
        &self.workloads
    }

    /// Keeps the name a process had when first seen, instead of following exec and
    /// renames.
    pub fn keep_first_name(mut self, keep: bool) -> Self {
        self.keep_first_name = keep;
        self
    }

    /// Refreshes what is known of `pid`: its current name while it lives (names change on
    /// exec and prctl), and the moment it was first seen gone. `fallback_name` is used for
    /// a process that is already gone when first seen (e.g. the name the kernel recorded).
    pub fn observe(&mut self, key: K, now: Instant, fallback_name: Option<&str>) -> &ProcessInfo {
        self.observe_recorded(key, now, fallback_name, None)
    }

    /// As `observe`, with the cgroup the kernel recorded for the process, which gives the
    /// workload of a process gone before /proc could be read.
    pub fn observe_recorded(
        &mut self,
        key: K,
        now: Instant,
        fallback_name: Option<&str>,
        fallback_cgroup: Option<&RecordedCgroup>,
    ) -> &ProcessInfo {
        let pid = key.pid();
        let mut live = read_process(&self.proc_root, pid);
        // With a generation in the key, the live process under this pid is ours only if
        // it started when ours did.
        let taken_by_another = match (key.generation(), &live) {
            (Some(gen), Some((_, ticks))) => !generation_matches(*ticks, gen),
            _ => false,
        };
        if taken_by_another {
            live = None;
        }
        let workloads = &self.workloads;
        let proc_root = &self.proc_root;
        let entry = self.entries.entry(key).or_insert_with(|| ProcessInfo {
            name: crate::model::unreserved(fallback_name.unwrap_or(UNKNOWN_NAME)).into_owned(),
            start_ticks: None,
            first_seen: SystemTime::now(),
            gone_since: None,
            workload: Workload::default(),
            superseded: false,
        });
        // A process first seen already gone keeps no start time: whatever lives under
        // its pid later is another process, and must not take over its series.
        let first_seen_gone = entry.start_ticks.is_none() && entry.gone_since.is_some();
        match live {
            Some((name, start_ticks))
                if !first_seen_gone
                    && (entry.start_ticks.is_none() || entry.start_ticks == Some(start_ticks)) =>
            {
                let name = crate::model::unreserved(&name).into_owned();
                // An exec may come with a move to another cgroup (a runtime starting a
                // container's process): the workload is read again with the new name,
                // unless names are kept from first sight (then counts must not move).
                if entry.start_ticks.is_none() || (name != entry.name && !self.keep_first_name) {
                    entry.workload = workloads.of_pid(proc_root, pid);
                }
                if entry.start_ticks.is_none() || !self.keep_first_name {
                    entry.name = name;
                }
                entry.start_ticks = Some(start_ticks);
                entry.gone_since = None;
            }
            // Gone, or the pid now belongs to a newer process: the one we knew has exited.
            Some(_) if entry.start_ticks.is_some() => {
                entry.superseded = true;
                entry.gone_since.get_or_insert(now);
            }
            _ => {
                if taken_by_another {
                    entry.superseded = true;
                }
                if entry.gone_since.is_none() {
                    entry.gone_since = Some(now);
                    if entry.start_ticks.is_none() {
                        if let Some(cgroup) = fallback_cgroup {
                            entry.workload = workloads.of_recorded(cgroup);
                        }
                    }
                }
            }
        }
        entry
    }

    pub fn pids(&self) -> Vec<K> {
        self.entries.keys().copied().collect()
    }

    pub fn get(&self, key: K) -> Option<&ProcessInfo> {
        self.entries.get(&key)
    }

    /// Pids gone for at least `ttl`, and those taken by a newer process.
    pub fn expired(&self, now: Instant, ttl: Duration) -> Vec<K> {
        self.entries
            .iter()
            .filter(|(_, info)| {
                info.superseded
                    || info
                        .gone_since
                        .is_some_and(|gone| now.saturating_duration_since(gone) >= ttl)
            })
            .map(|(pid, _)| *pid)
            .collect()
    }

    pub fn remove(&mut self, key: K) -> Option<ProcessInfo> {
        self.entries.remove(&key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Name and start time of a live process, from /proc.
fn read_process(proc_root: &str, pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read(format!("{proc_root}/{pid}/stat")).ok()?;
    let (name, start_ticks) = parse_stat(&stat)?;
    Some((name, start_ticks))
}

/// Parses `pid (comm) state ... starttime ...`. The comm may hold any byte, spaces and
/// parentheses included, so it runs to the last `)`.
pub fn parse_stat(stat: &[u8]) -> Option<(String, u64)> {
    let open = stat.iter().position(|b| *b == b'(')?;
    let close = stat.iter().rposition(|b| *b == b')')?;
    if close < open {
        return None;
    }
    let name = String::from_utf8_lossy(&stat[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // After the comm: state is field 3, so starttime (field 22) is the 20th field here.
    let start_ticks = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some((name, start_ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hostile_names() {
        let stat = b"42 (a) b\n\"{c}\\ (x) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        let (name, start) = parse_stat(stat).expect("parses");
        assert_eq!(name, "a) b\n\"{c}\\ (x");
        assert_eq!(start, 98765);
    }

    #[test]
    fn refuses_truncated_stat() {
        assert!(parse_stat(b"42 (a").is_none());
        assert!(parse_stat(b"42 (a) S 1").is_none());
    }

    #[test]
    fn own_process_is_alive_and_named() {
        let mut table = ProcessTable::new();
        let pid = std::process::id();
        let info = table.observe(pid, Instant::now(), None);
        assert!(info.gone_since.is_none());
        assert_ne!(info.name, UNKNOWN_NAME);
    }

    #[test]
    fn a_pid_first_seen_gone_is_not_taken_over_by_a_live_process() {
        let mut table = ProcessTable::new();
        let t0 = Instant::now();
        table.proc_root = "/nonexistent".into();
        let pid = std::process::id();
        assert!(table.observe(pid, t0, Some("old")).gone_since.is_some());
        table.proc_root = "/proc".into();
        let info = table.observe(pid, t0, None);
        assert_eq!(info.name, "old");
        assert!(
            info.gone_since.is_some(),
            "the live process under this pid is another one"
        );
    }

    #[test]
    fn generations_match_the_start_tick() {
        // A start at 1234.567 s since boot: tick 123456, and 2^24 ns unit 73586.
        let ns: u64 = 1_234_567_000_000;
        let gen = (ns >> GENERATION_SHIFT) as u16;
        assert!(generation_matches(ns / NS_PER_TICK, gen));
        assert!(!generation_matches(ns / NS_PER_TICK, gen.wrapping_add(2)));
        assert!(!generation_matches(ns / NS_PER_TICK + 5, gen));
    }

    #[test]
    fn a_generation_keyed_process_is_only_the_one_that_started_then() {
        let mut table: ProcessTable<(u32, u16)> = ProcessTable::new();
        let pid = std::process::id();
        let ticks = read_process("/proc", pid).expect("alive").1;
        let gen = ((ticks * NS_PER_TICK) >> GENERATION_SHIFT) as u16;
        let t0 = Instant::now();
        assert!(table.observe((pid, gen), t0, None).gone_since.is_none());
        let other = table.observe((pid, gen.wrapping_add(100)), t0, Some("old"));
        assert!(
            other.superseded,
            "an older process under a pid someone else holds now"
        );
        assert_eq!(other.name, "old");
        assert_eq!(
            table.expired(t0, Duration::from_secs(300)),
            vec![(pid, gen.wrapping_add(100))]
        );
    }

    #[test]
    fn gone_process_expires_after_ttl() {
        let mut table = ProcessTable::new();
        let t0 = Instant::now();
        // Pid numbers above pid_max (at most 2^22) never exist.
        let info = table.observe(u32::MAX - 1, t0, Some("ghost"));
        assert_eq!(info.name, "ghost");
        assert!(table.expired(t0, Duration::from_secs(5)).is_empty());
        assert_eq!(
            table.expired(t0 + Duration::from_secs(5), Duration::from_secs(5)),
            vec![u32::MAX - 1]
        );
    }
}
