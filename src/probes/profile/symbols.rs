//! Names for sampled addresses: blazesym for ELF and DWARF symbols of processes (through
//! `/proc/PID/map_files`, so binaries in containers resolve too), a compact table of
//! `/proc/kallsyms` for the kernel's. An address no symbol covers is named by its module and offset.
//!
//! Names are kept in a bounded cache keyed by the binary's build id (or its device and
//! inode where it has none) and the file offset, so a binary that runs in many processes,
//! or in many containers, is read once. The symbolizer itself, with the binaries it has
//! parsed, is dropped by `release` after each round.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::Pid;

use super::kallsyms::KernelTable;
use crate::model::profile::Frame;

/// A mapping of a process's address space: where a file's bytes sit.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    device: u64,
    inode: u64,
    path: String,
}

/// The mappings of `/proc/PID/maps` that hold files, by address; empty once the process
/// is gone.
fn read_mappings(pid: u32) -> Vec<Mapping> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_mapping).collect();
    mappings.sort_by_key(|m| m.start);
    mappings
}

fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?;
    let path: Vec<&str> = fields.collect();
    let path = path.join(" ");
    if path.is_empty() {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        device: (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
    })
}

fn mapping_of(mappings: &[Mapping], address: u64) -> Option<&Mapping> {
    let after = mappings.partition_point(|m| m.start <= address);
    mappings[..after].last().filter(|m| address < m.end)
}

fn base_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(path)
}

/// What a binary is known by: its build id, or where it sits when it has none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Binary {
    BuildId(Arc<[u8]>),
    Inode { device: u64, inode: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum NameKey {
    Kernel(u64),
    File(Binary, u64),
}

/// Names already found, at most `capacity`; a full cache is emptied and filled again
/// from what is seen next, and what it dropped is counted.
#[derive(Debug)]
struct NameCache {
    names: HashMap<NameKey, Frame>,
    /// Build ids of the files seen, by device and inode (no build id: None).
    binaries: HashMap<(u64, u64), Option<Arc<[u8]>>>,
    capacity: usize,
    evicted: u64,
}

impl NameCache {
    fn get(&self, key: &NameKey) -> Option<&Frame> {
        self.names.get(key)
    }

    fn insert(&mut self, key: NameKey, frame: Frame) {
        if self.names.len() >= self.capacity {
            self.evicted += self.names.len() as u64;
            self.names.clear();
        }
        self.names.insert(key, frame);
    }

    /// The binary a mapping holds, its build id read once per device and inode.
    fn binary(&mut self, pid: u32, mapping: &Mapping) -> Option<Binary> {
        if mapping.inode == 0 {
            return None; // [vdso], [heap] and the like: not files
        }
        let file = (mapping.device, mapping.inode);
        if !self.binaries.contains_key(&file) {
            if self.binaries.len() >= self.capacity {
                self.evicted += self.binaries.len() as u64;
                self.binaries.clear();
            }
            let path = format!("/proc/{pid}/map_files/{:x}-{:x}", mapping.start, mapping.end);
            let build_id = blazesym::helper::read_elf_build_id(&path)
                .ok()
                .flatten()
                .filter(|id| !id.is_empty())
                .map(|id| Arc::from(&*id));
            self.binaries.insert(file, build_id);
        }
        Some(match self.binaries.get(&file).cloned().flatten() {
            Some(id) => Binary::BuildId(id),
            None => Binary::Inode {
                device: mapping.device,
                inode: mapping.inode,
            },
        })
    }
}

/// Names addresses, one process (or the kernel) at a time.
pub struct Symbols {
    symbolizer: Option<Symbolizer>,
    kernel: Option<KernelTable>,
    cache: NameCache,
    /// Addresses no symbol covered, counted at every naming.
    pub unsymbolized: u64,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new(DEFAULT_CACHED_NAMES)
    }
}

/// Frame names a `Symbols` keeps unless told otherwise.
pub const DEFAULT_CACHED_NAMES: usize = 16_384;

impl Symbols {
    /// Keeps at most `cached_names` frame names between rounds.
    pub fn new(cached_names: usize) -> Symbols {
        Symbols {
            symbolizer: None,
            kernel: None,
            cache: NameCache {
                names: HashMap::new(),
                binaries: HashMap::new(),
                capacity: cached_names.max(1),
                evicted: 0,
            },
            unsymbolized: 0,
        }
    }

    /// Names, and build ids of binaries, dropped from the full caches so far.
    pub fn evicted(&self) -> u64 {
        self.cache.evicted
    }

    /// Drops the symbolizer and the binaries it parsed, keeping the names found, and
    /// hands the freed memory back to the system.
    pub fn release(&mut self) {
        self.symbolizer = None;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Frames for the return addresses of one process's stacks, innermost first: the
    /// first is where the sample was taken, each other one is an address a call returns
    /// to, named by the call before it.
    pub fn user(&mut self, pid: u32, addresses: &[u64]) -> HashMap<u64, Frame> {
        let mappings = read_mappings(pid);
        let mut named = HashMap::with_capacity(addresses.len());
        let mut missing = Vec::new();
        for &address in addresses {
            let key = mapping_of(&mappings, address).and_then(|m| {
                let binary = self.cache.binary(pid, m)?;
                Some(NameKey::File(binary, address - m.start + m.offset))
            });
            match key.as_ref().and_then(|key| self.cache.get(key)) {
                Some(frame) => {
                    self.unsymbolized += u64::from(!frame.symbolized);
                    named.insert(address, frame.clone());
                }
                None => missing.push((address, key)),
            }
        }
        if missing.is_empty() {
            return named;
        }
        let mut process = Process::new(Pid::from(pid));
        process.perf_map = false;
        let lookups: Vec<u64> = missing.iter().map(|&(address, _)| address).collect();
        let found = self.lookup(&Source::Process(process), &lookups);
        for ((address, key), found) in missing.into_iter().zip(found) {
            let frame = match found {
                Some(frame) if frame.module.is_empty() => Frame {
                    module: unsymbolized_user(&mappings, address).module,
                    ..frame
                },
                Some(frame) => frame,
                None => unsymbolized_user(&mappings, address),
            };
            self.unsymbolized += u64::from(!frame.symbolized);
            if let Some(key) = key {
                self.cache.insert(key, frame.clone());
            }
            named.insert(address, frame);
        }
        named
    }

    pub fn kernel(&mut self, addresses: &[u64]) -> HashMap<u64, Frame> {
        self.kernel_from(Path::new("/proc/kallsyms"), Path::new("/proc/modules"), addresses)
    }

    fn kernel_from(
        &mut self,
        table: &Path,
        modules: &Path,
        addresses: &[u64],
    ) -> HashMap<u64, Frame> {
        let mut named = HashMap::with_capacity(addresses.len());
        let mut missing = Vec::new();
        for &address in addresses {
            match self.cache.get(&NameKey::Kernel(address)) {
                Some(frame) => {
                    named.insert(address, frame.clone());
                }
                None => missing.push(address),
            }
        }
        if !missing.is_empty() && self.kernel.as_ref().is_none_or(|t| t.stale(modules)) {
            self.kernel = KernelTable::read(table, modules)
                .inspect_err(|err| tracing::debug!(error = %err, "reading the kernel's symbols"))
                .ok();
        }
        for address in missing {
            let name = self.kernel.as_ref().and_then(|t| t.name(address));
            let frame = match name {
                Some(name) => {
                    let frame = Frame {
                        function: name.to_string(),
                        module: "[kernel]".into(),
                        symbolized: true,
                    };
                    self.cache.insert(NameKey::Kernel(address), frame.clone());
                    frame
                }
                // Not cached: a table read again may name it next time.
                None => Frame {
                    function: format!("[kernel]+{address:#x}"),
                    module: "[kernel]".into(),
                    symbolized: false,
                },
            };
            named.insert(address, frame);
        }
        self.unsymbolized += named.values().filter(|f| !f.symbolized).count() as u64;
        named
    }

    /// Each address's symbol, or None.
    fn lookup(&mut self, source: &Source<'_>, addresses: &[u64]) -> Vec<Option<Frame>> {
        let symbolizer = self.symbolizer.get_or_insert_with(|| {
            Symbolizer::builder()
                .enable_code_info(false)
                .enable_inlined_fns(false)
                .build()
        });
        let Ok(found) = symbolizer.symbolize(source, Input::AbsAddr(addresses)) else {
            return vec![None; addresses.len()];
        };
        found
            .into_iter()
            .map(|symbolized| match symbolized {
                Symbolized::Sym(sym) => Some(Frame {
                    function: sym.name.into_owned(),
                    module: sym
                        .module
                        .map(|m| base_name(&m.to_string_lossy()).to_string())
                        .unwrap_or_default(),
                    symbolized: true,
                }),
                Symbolized::Unknown(_) => None,
            })
            .collect()
    }
}

/// `module+0xoffset` (the offset in the file), or the bare address outside any file.
fn unsymbolized_user(mappings: &[Mapping], address: u64) -> Frame {
    match mappings
        .iter()
        .find(|m| m.start <= address && address < m.end)
    {
        Some(m) => {
            let module = base_name(&m.path).to_string();
            Frame {
                function: format!("{module}+{:#x}", address - m.start + m.offset),
                module,
                symbolized: false,
            }
        }
        None => Frame {
            function: format!("[unknown]+{address:#x}"),
            module: "[unknown]".into(),
            symbolized: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_outside_symbols_is_named_by_its_module_and_file_offset() {
        let line = "7f0000001000-7f0000003000 r-xp 00002000 08:01 1234   /usr/lib/libweird name.so";
        let mapping = parse_mapping(line).expect("a file mapping");
        assert_eq!(mapping.path, "/usr/lib/libweird name.so");
        let frame = unsymbolized_user(&[mapping], 0x7f0000001010);
        assert_eq!(frame.function, "libweird name.so+0x2010");
        assert!(!frame.symbolized);
        assert_eq!(unsymbolized_user(&[], 0x10).function, "[unknown]+0x10");
        assert!(parse_mapping("7f00-7f01 rw-p 00000000 00:00 0").is_none());
    }

    #[test]
    fn kernel_names_are_cached_and_a_full_cache_is_emptied_and_counted() {
        let dir = std::env::temp_dir().join(format!("periscope-symcache-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let (table, modules) = (dir.join("kallsyms"), dir.join("modules"));
        fs::write(
            &table,
            "ffffffff81000000 T first\nffffffff81000100 T second\nffffffff81000200 T third\n",
        )
        .expect("write table");
        let mut symbols = Symbols::new(2);
        let named = symbols.kernel_from(&table, &modules, &[0xffffffff81000010, 0xffffffff81000110]);
        assert_eq!(named[&0xffffffff81000010].function, "first");
        assert_eq!(named[&0xffffffff81000110].function, "second");

        // A third name does not fit: the two are dropped and counted.
        let named = symbols.kernel_from(&table, &modules, &[0xffffffff81000210]);
        assert_eq!(named[&0xffffffff81000210].function, "third");
        assert_eq!((symbols.evicted(), symbols.unsymbolized), (2, 0));

        // A module loaded: the table is read again, and names what it now holds.
        fs::write(&table, "ffffffff81000000 T renamed\n").expect("write table");
        fs::write(&modules, "some_mod 16384 0 - Live 0x0\n").expect("write modules");
        let named = symbols.kernel_from(&table, &modules, &[0xffffffff81000010]);
        assert_eq!(named[&0xffffffff81000010].function, "renamed");

        // An unreadable table names nothing, and the address is counted.
        fs::remove_file(&table).expect("remove table");
        fs::remove_file(&modules).expect("remove modules");
        let named = symbols.kernel_from(&table, &modules, &[0xffffffff81000020]);
        assert_eq!(named[&0xffffffff81000020].function, "[kernel]+0xffffffff81000020");
        assert_eq!(symbols.unsymbolized, 1);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_binary_in_two_processes_is_read_once() {
        // This test binary runs as one process; its own text is named, and named again
        // from the cache by build id and file offset.
        let here = a_binary_in_two_processes_is_read_once as *const () as u64;
        let mut symbols = Symbols::new(64);
        let first = symbols.user(std::process::id(), &[here]);
        assert!(first[&here].function.contains("a_binary_in_two_processes_is_read_once"));
        assert_eq!(symbols.cache.names.len(), 1);
        let mappings = read_mappings(std::process::id());
        let mapping = mapping_of(&mappings, here).expect("our text is mapped");
        let binary = symbols.cache.binary(std::process::id(), mapping);
        assert!(matches!(binary, Some(Binary::BuildId(_))), "{binary:?}");
        symbols.release();
        let again = symbols.user(std::process::id(), &[here]);
        assert_eq!(again[&here], first[&here]);
        assert!(symbols.symbolizer.is_none(), "a cached name needs no symbolizer");
    }
}
