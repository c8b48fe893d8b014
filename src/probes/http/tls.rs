//! Where the OpenSSL libraries are: the plaintext of TLS connections comes from uprobes
//! on their `SSL_read`/`SSL_write` functions.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A libssl file, held open: uprobes attach to exactly this file through
/// `/proc/self/fd/N`, whatever its path becomes meanwhile.
pub struct Library {
    file: File,
    /// Where it was found, for logs.
    pub shown: PathBuf,
}

impl Library {
    /// A path that names this very file (a magic link to the open file).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The file's identity, whatever path reaches it.
    pub fn id(&self) -> Option<(u64, u64)> {
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }
}

/// Opens `path` as seen from inside `root` (a process's `/proc/PID/root`): every
/// symbolic link on the way, absolute ones too, resolves within that root
/// (openat2 with RESOLVE_IN_ROOT), so a container cannot point the agent at the host's
/// files, and magic links (`/proc/...`) are refused.
pub fn open_in_root(root: &Path, path: &str) -> std::io::Result<File> {
    let root = File::open(root)?;
    let name = std::ffi::CString::new(path)?;
    // SAFETY: open_how is plain integers, for which all zeroes is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated name and the open_how of the size given,
    // both alive for the call; the fd it returns is ours alone.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// A regular file at `path` of the host, held open.
fn open_host(path: PathBuf) -> Option<Library> {
    let file = File::open(&path).ok()?;
    file.metadata()
        .ok()?
        .is_file()
        .then_some(Library { file, shown: path })
}

/// A libssl mapped by process `proc_dir`, opened inside its root.
fn open_mapped(proc_dir: &Path, mapped: &str) -> Option<Library> {
    let file = open_in_root(&proc_dir.join("root"), mapped).ok()?;
    file.metadata().ok()?.is_file().then_some(Library {
        file,
        shown: proc_dir.join("root").join(mapped.trim_start_matches('/')),
    })
}

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
/// running process has mapped (opened inside its root, so containers' copies count
/// too). One per file, however many names it has.
pub fn libssl_paths() -> Vec<Library> {
    let mut candidates: Vec<Library> = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if is_libssl(&name.to_string_lossy()) {
                candidates.extend(open_host(entry.path()));
            }
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for proc_dir in procs.flatten() {
            let pid = proc_dir.file_name();
            if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            candidates.extend(mapped_libssl(&proc_dir.path()));
        }
    }
    let mut seen = BTreeSet::new();
    candidates
        .into_iter()
        .filter(|library| library.id().is_some_and(|id| seen.insert(id)))
        .collect()
}

/// The libssl files process `pid` maps, opened inside its root.
pub fn libssl_of(pid: u32) -> Vec<Library> {
    mapped_libssl(&PathBuf::from(format!("/proc/{pid}")))
}

fn mapped_libssl(proc_dir: &Path) -> Vec<Library> {
    let Ok(maps) = std::fs::read_to_string(proc_dir.join("maps")) else {
        return Vec::new();
    };
    let mut paths: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|f| is_libssl(&f.to_string_lossy()))
        })
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| open_mapped(proc_dir, path))
        .collect()
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
    fn links_in_a_root_resolve_inside_it_never_to_the_hosts_files() {
        let base = std::env::temp_dir().join(format!("periscope-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, host) = (base.join("root"), base.join("host"));
        std::fs::create_dir_all(root.join("lib")).expect("root");
        std::fs::create_dir_all(&host).expect("host");
        std::fs::write(host.join("libssl.so.3"), "the host's").expect("host file");
        std::fs::write(root.join("lib/real.so"), "the container's").expect("root file");
        // An absolute link to a path that exists on the host only.
        std::os::unix::fs::symlink(host.join("libssl.so.3"), root.join("lib/libssl.so.3"))
            .expect("link");
        let err = open_in_root(&root, "/lib/libssl.so.3").expect_err("not the host's");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        // Climbing out with .. stops at the root too.
        std::os::unix::fs::symlink("../../host/libssl.so.3", root.join("lib/libssl.so.1.1"))
            .expect("link");
        assert!(open_in_root(&root, "/lib/libssl.so.1.1").is_err());
        // A link inside the root resolves as the container sees it.
        std::os::unix::fs::symlink("/lib/real.so", root.join("lib/libssl.so.3.0")).expect("link");
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut open_in_root(&root, "/lib/libssl.so.3.0").expect("inside"),
            &mut text,
        )
        .expect("read");
        assert_eq!(text, "the container's");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn recognises_openssl_1_1_and_3() {
        assert!(is_libssl("libssl.so.3"));
        assert!(is_libssl("libssl.so.1.1"));
        assert!(!is_libssl("libssl.so"));
        assert!(!is_libssl("libssl3.so"));
        assert!(!is_libssl("libssl.a"));
    }
}
