//! A bounded table of the processes a probe has seen: their name and start time, and when
//! they were first seen gone, which drives the exited-process expiry rule.

use std::collections::HashMap;
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

/// Processes keyed by pid (tgid). Entries leave when their probe expires them.
#[derive(Debug, Default)]
pub struct ProcessTable {
    entries: HashMap<u32, ProcessInfo>,
    proc_root: String,
    keep_first_name: bool,
    workloads: Workloads,
}

impl ProcessTable {
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
    pub fn observe(&mut self, pid: u32, now: Instant, fallback_name: Option<&str>) -> &ProcessInfo {
        self.observe_recorded(pid, now, fallback_name, None)
    }

    /// As `observe`, with the cgroup the kernel recorded for the process, which gives the
    /// workload of a process gone before /proc could be read.
    pub fn observe_recorded(
        &mut self,
        pid: u32,
        now: Instant,
        fallback_name: Option<&str>,
        fallback_cgroup: Option<&RecordedCgroup>,
    ) -> &ProcessInfo {
        let live = read_process(&self.proc_root, pid);
        let workloads = &self.workloads;
        let proc_root = &self.proc_root;
        let entry = self.entries.entry(pid).or_insert_with(|| ProcessInfo {
            name: fallback_name.unwrap_or(UNKNOWN_NAME).to_string(),
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
                // An exec may come with a move to another cgroup (a runtime starting a
                // container's process): the workload is read again with the new name.
                if entry.start_ticks.is_none() || name != entry.name {
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

    pub fn pids(&self) -> Vec<u32> {
        self.entries.keys().copied().collect()
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.entries.get(&pid)
    }

    /// Pids gone for at least `ttl`, and those taken by a newer process.
    pub fn expired(&self, now: Instant, ttl: Duration) -> Vec<u32> {
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

    pub fn remove(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.entries.remove(&pid)
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
