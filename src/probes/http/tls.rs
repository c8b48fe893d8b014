//! Where the OpenSSL libraries are: the plaintext of TLS connections comes from uprobes
//! on their `SSL_read`/`SSL_write` functions.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories where distributions install libssl.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// Every dynamically linked libssl (1.1 and 3.x): the system's, and any other that a
/// running process has mapped (seen through /proc/<pid>/root, so containers' copies
/// count too). One path per file, however many names it has.
pub fn libssl_paths() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_libssl(&name) {
                candidates.push(entry.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for proc_dir in procs.flatten() {
            let pid = proc_dir.file_name();
            if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(maps) = std::fs::read_to_string(proc_dir.path().join("maps")) else {
                continue;
            };
            for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
                let file = Path::new(path)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned());
                if file.is_some_and(|f| is_libssl(&f)) {
                    // The path as the process sees it, reached through its root.
                    let mut through_root = proc_dir.path().join("root");
                    through_root.push(path.trim_start_matches('/'));
                    candidates.push(through_root);
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    candidates
        .into_iter()
        .filter(|path| {
            std::fs::metadata(path)
                .map(|m| m.is_file() && seen.insert((m.dev(), m.ino())))
                .unwrap_or(false)
        })
        .collect()
}

/// The libssl files process `pid` maps, as paths through its root.
pub fn libssl_of(pid: u32) -> Vec<PathBuf> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(maps) = std::fs::read_to_string(proc_dir.join("maps")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|f| is_libssl(&f.to_string_lossy()))
        })
        .map(|path| proc_dir.join("root").join(path.trim_start_matches('/')))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A file's identity, whatever path reaches it.
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `libssl.so.3`, `libssl.so.1.1` (not the unversioned development link, not NSS's
/// `libssl3.so`).
fn is_libssl(name: &str) -> bool {
    name.strip_prefix("libssl.so.")
        .is_some_and(|version| version.starts_with('1') || version.starts_with('3'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_openssl_1_1_and_3() {
        assert!(is_libssl("libssl.so.3"));
        assert!(is_libssl("libssl.so.1.1"));
        assert!(!is_libssl("libssl.so"));
        assert!(!is_libssl("libssl3.so"));
        assert!(!is_libssl("libssl.a"));
    }
}
